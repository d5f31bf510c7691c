//! Reports over one lot and a range of days: occupancy by hour of the day, takings per day and
//! payment method, length of stay, and turnover. Days and hours are the lot's wall clock: their
//! edges are computed here with the lot's time zone (a day of a daylight-saving change has 23 or
//! 25 hours), and the database sums over them ([`ReportStore`]), so no row is loaded to be
//! counted in Rust. Each report is JSON or CSV (`docs/api.md`, "Reports").

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use parkpay_protocol::{Currency, LotId, Money};
use serde::Serialize;

use crate::domain::{ChargeMethod, Lot};
use crate::store::{MoneyKind, ReportStore, Span, StoreResult};

/// The longest range a report covers, in days.
pub const MAX_REPORT_DAYS: i64 = 62;

/// Days of the lot's calendar, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DayRange {
    /// Reads `from` and `to` (`YYYY-MM-DD`); the message names the field at fault.
    pub fn parse(from: &str, to: &str) -> Result<DayRange, String> {
        let date = |s: &str, name: &str| {
            NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map_err(|_| format!("{name}: use a date as YYYY-MM-DD, not {s:?}"))
        };
        let (from, to) = (date(from, "from")?, date(to, "to")?);
        if to < from {
            return Err(format!("to: {to} is before from ({from})"));
        }
        let days = (to - from).num_days() + 1;
        if days > MAX_REPORT_DAYS {
            return Err(format!(
                "to: a report covers at most {MAX_REPORT_DAYS} days, not {days}"
            ));
        }
        Ok(DayRange { from, to })
    }

    pub fn days(&self) -> impl Iterator<Item = NaiveDate> {
        self.from.iter_days().take_while({
            let to = self.to;
            move |d| *d <= to
        })
    }
}

/// The instant a wall-clock time names in `tz`: the earlier one when the clock goes back, and
/// the first minute after the gap when it goes forward past it.
fn wall(tz: Tz, t: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = t;
    // A gap is at most a few hours long; past a day something is wrong with the zone data.
    for _ in 0..(24 * 60) {
        if let Some(at) = tz.from_local_datetime(&probe).earliest() {
            return at.with_timezone(&Utc);
        }
        probe += Duration::minutes(1);
    }
    Utc.from_utc_datetime(&t)
}

fn midnight(date: NaiveDate) -> NaiveDateTime {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight is a valid time of day")
}

/// Each day of the range on the lot's wall clock, from its midnight to the next.
pub fn day_spans(tz: Tz, range: DayRange) -> Vec<(NaiveDate, Span)> {
    range
        .days()
        .map(|d| {
            let next = d.succ_opt().unwrap_or(d);
            (
                d,
                Span {
                    lo: wall(tz, midnight(d)),
                    hi: wall(tz, midnight(next)),
                },
            )
        })
        .collect()
}

/// Each hour of each day of the range on the lot's wall clock, as (day, hour of the day, span).
/// An hour the clock skips is left out; an hour it repeats lasts two.
pub fn hour_spans(tz: Tz, range: DayRange) -> Vec<(NaiveDate, u32, Span)> {
    let mut out = Vec::new();
    for (day, whole) in day_spans(tz, range) {
        let starts: Vec<(u32, DateTime<Utc>)> = (0..24u32)
            .filter_map(|h| {
                let t = midnight(day) + Duration::hours(i64::from(h));
                tz.from_local_datetime(&t)
                    .earliest()
                    .map(|at| (h, at.with_timezone(&Utc)))
            })
            .collect();
        for (i, (h, lo)) in starts.iter().enumerate() {
            let hi = starts.get(i + 1).map(|(_, t)| *t).unwrap_or(whole.hi);
            if *lo < hi {
                out.push((day, *h, Span { lo: *lo, hi }));
            }
        }
    }
    out
}

/// `num / den` to two decimals, rounded half up (both non-negative), for counts of cars.
fn ratio(num: i64, den: i64) -> Option<f64> {
    if den <= 0 {
        return None;
    }
    let hundredths = (i128::from(num) * 100 + i128::from(den) / 2) / i128::from(den);
    // A count of cars in hundredths is far below 2^53: exact as an f64.
    Some(hundredths as f64 / 100.0)
}

/// The head of every report: which lot and which days, in which time zone.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub lot: LotId,
    pub lot_name: String,
    pub time_zone: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Head {
    fn new(lot: &Lot, range: DayRange) -> Head {
        Head {
            lot: lot.id.clone(),
            lot_name: lot.name.clone(),
            time_zone: lot.tariff.time_zone.to_string(),
            from: range.from,
            to: range.to,
        }
    }
}

/// One hour of the day over the range.
#[derive(Debug, Clone, Serialize)]
pub struct HourRow {
    /// 0-23: the hour of the lot's wall clock.
    pub hour: u32,
    /// Cars inside on average during this hour, over the days of the range (up to now).
    pub average: Option<f64>,
    /// The highest hourly average of any one day, and that day.
    pub busiest: Option<f64>,
    pub busiest_date: Option<NaiveDate>,
    /// The time cars spent inside during this hour, summed over the days (seconds).
    pub car_seconds: i64,
    /// How long this hour lasted, summed over the days counted (seconds).
    pub span_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Occupancy {
    #[serde(flatten)]
    pub head: Head,
    pub capacity: i64,
    pub hours: Vec<HourRow>,
}

/// Cars inside per hour of the day: the average over the range and the busiest day. Hours
/// not begun yet are not counted.
pub async fn occupancy(
    store: &dyn ReportStore,
    lot: &Lot,
    range: DayRange,
    now: DateTime<Utc>,
) -> StoreResult<Occupancy> {
    let spans: Vec<(NaiveDate, u32, Span)> = hour_spans(lot.tariff.time_zone, range)
        .into_iter()
        .filter(|(_, _, s)| s.lo < now)
        .map(|(d, h, s)| {
            // The hour still running counts up to now.
            let hi = s.hi.min(now);
            (d, h, Span { lo: s.lo, hi })
        })
        .collect();
    let only: Vec<Span> = spans.iter().map(|(_, _, s)| *s).collect();
    let inside = store.presence(&lot.id, &only, now).await?;
    let mut hours = Vec::new();
    for hour in 0..24u32 {
        let mut car_ms = 0i64;
        let mut span_ms = 0i64;
        let mut busiest: Option<(i64, i64, NaiveDate)> = None;
        for ((day, h, span), ms) in spans.iter().zip(&inside) {
            if *h != hour {
                continue;
            }
            let len = (span.hi - span.lo).num_milliseconds();
            car_ms += ms;
            span_ms += len;
            // Compare ms / len across days without dividing: a / b > c / d  <=>  a d > c b.
            let higher = busiest.is_none_or(|(bm, bl, _)| {
                i128::from(*ms) * i128::from(bl) > i128::from(bm) * i128::from(len)
            });
            if higher {
                busiest = Some((*ms, len, *day));
            }
        }
        hours.push(HourRow {
            hour,
            average: ratio(car_ms, span_ms),
            busiest: busiest.and_then(|(m, l, _)| ratio(m, l)),
            busiest_date: busiest.map(|(_, _, d)| d),
            car_seconds: car_ms / 1000,
            span_seconds: span_ms / 1000,
        });
    }
    Ok(Occupancy {
        head: Head::new(lot, range),
        capacity: lot.capacity,
        hours,
    })
}

/// One day's money, by how it came in.
#[derive(Debug, Clone, Serialize)]
pub struct TakingsRow {
    pub date: Option<NaiveDate>,
    /// Collected by deduction (a mandate: 代扣).
    pub deduction: Money,
    /// Taken in cash at the booth.
    pub cash: Money,
    /// Paid by the driver on the pay page (QR code).
    pub pay_page: Money,
    /// Given back (refunds that succeeded that day, whatever day their charge was).
    pub refunds: Money,
    /// deduction + cash + pay_page - refunds.
    pub net: Money,
    /// Let go by the money desk: not taken, shown apart.
    pub waived: Money,
    /// Charges collected that day.
    pub charges: i64,
    /// Refunds that succeeded that day.
    pub refund_count: i64,
    pub waived_count: i64,
}

impl TakingsRow {
    fn zero(date: Option<NaiveDate>, c: Currency) -> TakingsRow {
        TakingsRow {
            date,
            deduction: Money::new(0, c),
            cash: Money::new(0, c),
            pay_page: Money::new(0, c),
            refunds: Money::new(0, c),
            net: Money::new(0, c),
            waived: Money::new(0, c),
            charges: 0,
            refund_count: 0,
            waived_count: 0,
        }
    }

    fn add(&mut self, kind: MoneyKind, count: i64, minor: i64) {
        let bump = |m: &mut Money| m.minor = m.minor.saturating_add(minor);
        match kind {
            MoneyKind::Settled(method) => {
                self.charges += count;
                match method {
                    ChargeMethod::Mandate => bump(&mut self.deduction),
                    ChargeMethod::Cash => bump(&mut self.cash),
                    ChargeMethod::Qr | ChargeMethod::PayAtExit => bump(&mut self.pay_page),
                }
            }
            MoneyKind::Waived => {
                self.waived_count += count;
                bump(&mut self.waived);
            }
            MoneyKind::Refunded(_) => {
                self.refund_count += count;
                bump(&mut self.refunds);
            }
        }
        self.net.minor = self
            .deduction
            .minor
            .saturating_add(self.cash.minor)
            .saturating_add(self.pay_page.minor)
            .saturating_sub(self.refunds.minor);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Takings {
    #[serde(flatten)]
    pub head: Head,
    pub currency: Currency,
    pub days: Vec<TakingsRow>,
    pub total: TakingsRow,
}

/// Money per day of the range: collected by method, refunded, net, and waived apart. A charge
/// counts on the day it settled, a refund on the day it succeeded.
pub async fn takings(store: &dyn ReportStore, lot: &Lot, range: DayRange) -> StoreResult<Takings> {
    let c = lot.tariff.currency;
    let days = day_spans(lot.tariff.time_zone, range);
    let spans: Vec<Span> = days.iter().map(|(_, s)| *s).collect();
    let mut rows: Vec<TakingsRow> = days
        .iter()
        .map(|(d, _)| TakingsRow::zero(Some(*d), c))
        .collect();
    let mut total = TakingsRow::zero(None, c);
    for cell in store.money_by_span(&lot.id, &spans).await? {
        if let Some(row) = rows.get_mut(cell.span) {
            row.add(cell.kind, cell.count, cell.minor);
            total.add(cell.kind, cell.count, cell.minor);
        }
    }
    Ok(Takings {
        head: Head::new(lot, range),
        currency: c,
        days: rows,
        total,
    })
}

/// The buckets of the length-of-stay histogram: upper edges in minutes (the last is open).
pub const STAY_EDGES_MINUTES: [i64; 7] = [15, 30, 60, 120, 240, 480, 1440];

fn stay_label(i: usize) -> String {
    let edge = |m: i64| {
        if m < 60 {
            format!("{m} min")
        } else if m < 1440 {
            format!("{} h", m / 60)
        } else {
            "1 day".to_string()
        }
    };
    match (
        i.checked_sub(1).and_then(|p| STAY_EDGES_MINUTES.get(p)),
        STAY_EDGES_MINUTES.get(i),
    ) {
        (None, Some(hi)) => format!("<{}", edge(*hi)),
        (Some(lo), Some(hi)) if *lo < 60 && *hi <= 60 => format!("{lo}-{hi} min"),
        (Some(lo), Some(hi)) => format!("{}-{} h", lo / 60, hi / 60),
        (Some(lo), None) => format!(">{}", edge(*lo)),
        (None, None) => String::new(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LengthBucket {
    pub label: String,
    /// The bucket holds stays at least `from_minutes` and less than `to_minutes` long.
    pub from_minutes: i64,
    pub to_minutes: Option<i64>,
    pub stays: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StayLengths {
    #[serde(flatten)]
    pub head: Head,
    pub buckets: Vec<LengthBucket>,
    pub stays: i64,
}

/// How long the stays that left during the range lasted.
pub async fn stay_lengths(
    store: &dyn ReportStore,
    lot: &Lot,
    range: DayRange,
) -> StoreResult<StayLengths> {
    let days = day_spans(lot.tariff.time_zone, range);
    let span = match (days.first(), days.last()) {
        (Some((_, a)), Some((_, b))) => Span { lo: a.lo, hi: b.hi },
        _ => {
            return Ok(StayLengths {
                head: Head::new(lot, range),
                buckets: Vec::new(),
                stays: 0,
            })
        }
    };
    let edges: Vec<i64> = STAY_EDGES_MINUTES.iter().map(|m| m * 60_000).collect();
    let counts = store.stay_lengths(&lot.id, span, &edges).await?;
    let buckets: Vec<LengthBucket> = counts
        .iter()
        .enumerate()
        .map(|(i, n)| LengthBucket {
            label: stay_label(i),
            from_minutes: i
                .checked_sub(1)
                .and_then(|p| STAY_EDGES_MINUTES.get(p))
                .copied()
                .unwrap_or(0),
            to_minutes: STAY_EDGES_MINUTES.get(i).copied(),
            stays: *n,
        })
        .collect();
    Ok(StayLengths {
        head: Head::new(lot, range),
        stays: counts.iter().sum(),
        buckets,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct TurnoverRow {
    pub date: NaiveDate,
    /// Stays that began that day.
    pub stays: i64,
    /// Stays per space (the lot's capacity), to two decimals; none for a lot without a count.
    pub turnover: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Turnover {
    #[serde(flatten)]
    pub head: Head,
    pub spaces: i64,
    pub days: Vec<TurnoverRow>,
    pub stays: i64,
    /// Stays per space per day over the range.
    pub average: Option<f64>,
}

/// Stays per space per day.
pub async fn turnover(
    store: &dyn ReportStore,
    lot: &Lot,
    range: DayRange,
) -> StoreResult<Turnover> {
    let days = day_spans(lot.tariff.time_zone, range);
    let spans: Vec<Span> = days.iter().map(|(_, s)| *s).collect();
    let counts = store.entries(&lot.id, &spans).await?;
    let spaces = lot.capacity;
    let rows: Vec<TurnoverRow> = days
        .iter()
        .zip(&counts)
        .map(|((d, _), n)| TurnoverRow {
            date: *d,
            stays: *n,
            turnover: ratio(*n, spaces),
        })
        .collect();
    let stays: i64 = counts.iter().sum();
    Ok(Turnover {
        head: Head::new(lot, range),
        spaces,
        average: ratio(stays, spaces.saturating_mul(rows.len() as i64)),
        days: rows,
        stays,
    })
}

// ---- CSV --------------------------------------------------------------------------------

/// A text field of a CSV file: quoted when it holds a comma, a quote or a line break, and
/// kept from being read as a formula by a spreadsheet (a leading `=`, `+`, `-` or `@`).
pub fn csv_text(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_default()
}

fn head_fields(h: &Head) -> String {
    format!("{},{}", csv_text(h.lot.as_str()), csv_text(&h.lot_name))
}

pub fn occupancy_csv(r: &Occupancy) -> String {
    let mut out = String::from(
        "lot,lot_name,hour,average_cars,busiest_cars,busiest_date,car_seconds,span_seconds\r\n",
    );
    for h in &r.hours {
        out.push_str(&format!(
            "{},{:02}:00,{},{},{},{},{}\r\n",
            head_fields(&r.head),
            h.hour,
            opt_num(h.average),
            opt_num(h.busiest),
            h.busiest_date.map(|d| d.to_string()).unwrap_or_default(),
            h.car_seconds,
            h.span_seconds
        ));
    }
    out
}

pub fn takings_csv(r: &Takings) -> String {
    let mut out = String::from(
        "lot,lot_name,date,currency,deduction_minor,cash_minor,pay_page_minor,refunds_minor,net_minor,waived_minor,charges,refunds,waived\r\n",
    );
    for d in r.days.iter().chain(std::iter::once(&r.total)) {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
            head_fields(&r.head),
            d.date
                .map(|d| d.to_string())
                .unwrap_or_else(|| "total".into()),
            r.currency.as_str(),
            d.deduction.minor,
            d.cash.minor,
            d.pay_page.minor,
            d.refunds.minor,
            d.net.minor,
            d.waived.minor,
            d.charges,
            d.refund_count,
            d.waived_count
        ));
    }
    out
}

pub fn stay_lengths_csv(r: &StayLengths) -> String {
    let mut out = String::from("lot,lot_name,from,to,length,from_minutes,to_minutes,stays\r\n");
    for b in &r.buckets {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            head_fields(&r.head),
            r.head.from,
            r.head.to,
            csv_text(&b.label),
            b.from_minutes,
            b.to_minutes.map(|m| m.to_string()).unwrap_or_default(),
            b.stays
        ));
    }
    out
}

pub fn turnover_csv(r: &Turnover) -> String {
    let mut out = String::from("lot,lot_name,date,stays,spaces,turnover\r\n");
    for d in &r.days {
        out.push_str(&format!(
            "{},{},{},{},{}\r\n",
            head_fields(&r.head),
            d.date,
            d.stays,
            r.spaces,
            opt_num(d.turnover)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: &str, b: &str) -> DayRange {
        DayRange::parse(a, b).unwrap()
    }

    #[test]
    fn ranges_are_checked_and_name_the_field() {
        assert!(DayRange::parse("2026-11-25", "2026-11-24")
            .unwrap_err()
            .starts_with("to:"));
        assert!(DayRange::parse("yesterday", "2026-11-24")
            .unwrap_err()
            .starts_with("from:"));
        assert!(DayRange::parse("2026-01-01", "2026-12-31")
            .unwrap_err()
            .contains("at most"));
        assert_eq!(range("2026-11-25", "2026-11-25").days().count(), 1);
    }

    #[test]
    fn a_day_of_a_clock_change_has_23_or_25_hours() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let spring = hour_spans(berlin, range("2026-03-29", "2026-03-29"));
        assert_eq!(spring.len(), 23, "02:00 does not exist");
        assert!(spring.iter().all(|(_, h, _)| *h != 2));
        let autumn = hour_spans(berlin, range("2026-10-25", "2026-10-25"));
        assert_eq!(autumn.len(), 24);
        let two = autumn.iter().find(|(_, h, _)| *h == 2).unwrap().2;
        assert_eq!((two.hi - two.lo).num_hours(), 2, "02:00 happens twice");
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let d = day_spans(shanghai, range("2026-11-25", "2026-11-25"));
        assert_eq!(d[0].1.lo.to_rfc3339(), "2026-11-24T16:00:00+00:00");
    }

    #[test]
    fn csv_text_quotes_and_defuses() {
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("a, \"b\""), "\"a, \"\"b\"\"\"");
        assert_eq!(csv_text("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(stay_label(0), "<15 min");
        assert_eq!(stay_label(1), "15-30 min");
        assert_eq!(stay_label(3), "1-2 h");
        assert_eq!(stay_label(6), "8-24 h");
        assert_eq!(stay_label(7), ">1 day");
    }
}
