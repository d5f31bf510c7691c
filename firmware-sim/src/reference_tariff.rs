//! A second, deliberately naive reading of the tariff rules, used as ground truth.
//!
//! The simulator judges the server's ledger against what each stay should have cost. Asking the
//! server's own engine (`parkpay_server::tariff::quote`) for that answer cannot catch a bug in the
//! engine, so this module prices a stay again, from the rules in docs/tariffs.md and nothing else.
//! It takes the same [`Tariff`] definition as input data but shares no code with the engine: it
//! walks the stay one billing unit at a time, converts each unit's start to the lot's wall clock,
//! finds the unit's band by scanning the band list, adds the price into a map keyed by the
//! unit's daily-cap window, and applies the caps at the end. It is slow on purpose and only meant
//! for stays of days, not years.
//!
//! The rules, as operators expect them:
//! 1. A stay of at most `grace_minutes` (measured exactly, to the nanosecond) is free: 0.
//! 2. Otherwise the whole stay is charged from entry, grace minutes included.
//! 3. With a first period, its flat price is charged once (even for a shorter stay) and counts in
//!    the daily-cap window of the entry; billing units start where the first period ends.
//! 4. Billing units are elapsed time (`unit_minutes` of real time, also across a DST change);
//!    a unit that has started is charged whole.
//! 5. A unit costs the `unit_price` of the band that contains its start minute on the lot's wall
//!    clock (bands are `[start, end)`, wrap past midnight, and `start == end` is the whole day).
//! 6. A unit belongs to the daily-cap window in which it starts: the lot's calendar day of its
//!    start (`calendar`), or the n-th consecutive 24 h of real time from entry (`rolling24h`).
//!    Each window's sum is cut to the daily cap.
//! 7. The sum of the windows is cut to the stay cap, then raised to the minimum charge, where the
//!    minimum is itself never above the stay cap.
//! 8. A unit that starts on a holiday (a date of the lot's calendar) costs nothing when the
//!    holiday is free, else the price of the holiday band containing its start. A first period
//!    that starts on a free holiday is free.
//!
//! And for a stay under a vehicle's lists and class ([`fee_with`]):
//! 9. The parts of the stay outside every covered window (white list, pass, free visitor grant)
//!    are priced each as a stay of its own by rules 1 to 8; covered parts are free.
//! 10. The sum is multiplied by the class's percent and rounded down, then the visitor discount
//!     is taken off and the result rounded down.
//! 11. Merchant validations: their minutes come off the end of the stay before anything else
//!     (rule 9 prices the shortened stay), and their amount comes off last, down to zero.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Timelike, Utc};
use parkpay_server::tariff::{Band, CapBasis, Tariff, VehicleClass};

use crate::report::FeeFn;

/// The daily-cap window a unit is summed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WindowKey {
    /// A calendar day on the lot's wall clock.
    Day(NaiveDate),
    /// The n-th 24 hours after entry, counting from 0.
    Rolling(u32),
}

/// The fee for a stay from `entry` to `exit`, in minor units of the tariff's currency.
///
/// The tariff is assumed valid (`Tariff::validate`), and the stay a few days long at most: this is
/// a test oracle, not a price engine. A stay whose exit is not after its entry costs nothing.
pub fn fee(tariff: &Tariff, entry: DateTime<Utc>, exit: DateTime<Utc>) -> i64 {
    if exit <= entry {
        return 0;
    }
    // Rule 1: grace.
    if exit - entry <= TimeDelta::minutes(i64::from(tariff.grace_minutes)) {
        return 0;
    }

    // Sums per window, in i128 so this code never has to think about overflow.
    let mut windows: HashMap<WindowKey, i128> = HashMap::new();

    // Rule 3: the first period, in the entry's window.
    let mut unit_start = entry;
    if let Some(fp) = &tariff.first_period {
        let free_day = holiday_of(tariff, entry).is_some_and(|free| free);
        let price = if free_day { 0 } else { fp.price.minor };
        *windows.entry(window_of(tariff, entry, entry)).or_insert(0) += i128::from(price);
        unit_start = entry + TimeDelta::minutes(i64::from(fp.minutes));
    }

    // Rules 4 to 6: every unit that starts before exit is charged whole.
    let unit = TimeDelta::minutes(i64::from(tariff.unit_minutes));
    while unit_start < exit {
        let price = match holiday_of(tariff, unit_start) {
            Some(true) => 0,
            Some(false) => {
                band_in(&tariff.holiday_bands, tariff, unit_start)
                    .unit_price
                    .minor
            }
            None => band_at(tariff, unit_start).unit_price.minor,
        };
        *windows
            .entry(window_of(tariff, entry, unit_start))
            .or_insert(0) += i128::from(price);
        unit_start += unit;
    }

    // Rule 6: each window is cut to the daily cap.
    let mut total: i128 = 0;
    for sum in windows.values() {
        total += match &tariff.daily_cap {
            Some(cap) => (*sum).min(i128::from(cap.amount.minor)),
            None => *sum,
        };
    }

    // Rule 7: the stay cap, then the minimum charge (never above the stay cap).
    if let Some(cap) = tariff.stay_cap {
        total = total.min(i128::from(cap.minor));
    }
    if let Some(minimum) = tariff.minimum_charge {
        let mut floor = i128::from(minimum.minor);
        if let Some(cap) = tariff.stay_cap {
            floor = floor.min(i128::from(cap.minor));
        }
        total = total.max(floor);
    }
    i64::try_from(total).expect("a test stay's fee fits in i64")
}

/// What the lists and the class of a vehicle change in the price of its stay.
#[derive(Debug, Clone, Default)]
pub struct StayTerms {
    pub class: Option<VehicleClass>,
    /// Windows `[from, until)` in which the stay is free (`until` `None`: no end).
    pub covered: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    pub percent_off: Option<u32>,
    /// Merchant validations: minutes off the end of the stay, then an amount off the fee.
    pub validation_minutes: u32,
    pub validation_amount: i64,
}

/// The fee for a stay under `terms` (rules 9 and 10).
pub fn fee_with(
    tariff: &Tariff,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
    terms: &StayTerms,
) -> i64 {
    // Rule 11: the stay is priced as if it ended the validation's minutes earlier.
    let exit = exit - TimeDelta::minutes(i64::from(terms.validation_minutes));
    if exit <= entry {
        return 0;
    }
    // Every window boundary inside the stay, in order: between two of them, the stay is either
    // covered throughout or not at all.
    let mut cuts: Vec<DateTime<Utc>> = vec![entry, exit];
    for (from, until) in &terms.covered {
        cuts.push(*from);
        if let Some(u) = until {
            cuts.push(*u);
        }
    }
    cuts.retain(|t| *t >= entry && *t <= exit);
    cuts.sort();
    cuts.dedup();
    let covered_at = |t: DateTime<Utc>| {
        terms
            .covered
            .iter()
            .any(|(from, until)| *from <= t && until.is_none_or(|u| t < u))
    };
    // Consecutive uncovered pieces are one gap, priced as one stay.
    let mut total: i128 = 0;
    let mut gap_start: Option<DateTime<Utc>> = None;
    for &a in &cuts[..cuts.len().saturating_sub(1)] {
        if covered_at(a) {
            if let Some(start) = gap_start.take() {
                total += i128::from(fee(tariff, start, a));
            }
        } else if gap_start.is_none() {
            gap_start = Some(a);
        }
    }
    if let Some(start) = gap_start {
        total += i128::from(fee(tariff, start, exit));
    }
    let class = terms.class.unwrap_or(VehicleClass::Small);
    let percent = tariff
        .classes
        .iter()
        .find(|c| c.class == class)
        .map_or(100, |c| c.percent);
    total = total * i128::from(percent) / 100;
    if let Some(off) = terms.percent_off {
        total = total * i128::from(100 - off.min(100)) / 100;
    }
    total = (total - i128::from(terms.validation_amount)).max(0);
    i64::try_from(total).expect("a test stay's fee fits in i64")
}

/// `Some(free)` when `instant` falls on a holiday of the lot's calendar.
fn holiday_of(tariff: &Tariff, instant: DateTime<Utc>) -> Option<bool> {
    let date = instant.with_timezone(&tariff.time_zone).date_naive();
    tariff
        .holidays
        .iter()
        .find(|h| h.date == date)
        .map(|h| h.free)
}

/// [`fee`] under `tariff`, as the fee function a run's report prices ground truth with.
pub fn fee_fn(tariff: Tariff) -> FeeFn {
    Arc::new(move |entry, exit| fee(&tariff, entry, exit))
}

/// The band containing the wall-clock minute of `instant` in the lot's zone, found by trying each
/// band in turn.
fn band_at(tariff: &Tariff, instant: DateTime<Utc>) -> &Band {
    band_in(&tariff.bands, tariff, instant)
}

fn band_in<'b>(bands: &'b [Band], tariff: &Tariff, instant: DateTime<Utc>) -> &'b Band {
    let wall = instant.with_timezone(&tariff.time_zone);
    let minute = wall.time().num_seconds_from_midnight() / 60;
    bands
        .iter()
        .find(|band| band_contains(band, minute))
        .expect("a valid tariff's bands cover every minute of the day")
}

/// Whether the band `[start, end)` holds `minute` (0..1440) of the day.
fn band_contains(band: &Band, minute: u32) -> bool {
    // "24:00" is midnight too.
    let start = u32::from(band.start.minutes()) % 1440;
    let end = u32::from(band.end.minutes()) % 1440;
    if start == end {
        true
    } else if start < end {
        start <= minute && minute < end
    } else {
        minute >= start || minute < end
    }
}

/// The daily-cap window of a unit starting at `at`. Without a daily cap the windows do not
/// matter; calendar days are used then.
fn window_of(tariff: &Tariff, entry: DateTime<Utc>, at: DateTime<Utc>) -> WindowKey {
    match tariff.daily_cap.map(|c| c.basis) {
        Some(CapBasis::Rolling24h) => {
            // Count whole 24 h periods that have ended by `at`, one by one.
            let mut n = 0;
            while entry + TimeDelta::hours(24) * (n + 1) as i32 <= at {
                n += 1;
            }
            WindowKey::Rolling(n)
        }
        Some(CapBasis::Calendar) | None => {
            WindowKey::Day(at.with_timezone(&tariff.time_zone).date_naive())
        }
    }
}

#[cfg(test)]
mod tests;
