//! The tariff engine: prices one parking stay from a lot's tariff, as a pure function.
//!
//! A [`Tariff`] is the rule set an operator configures for a lot (it is the `Tariff` JSON of the
//! HTTP API). [`quote`] takes it with the entry and exit instants and returns a [`Quote`]: the total
//! and an itemised breakdown that the receipt and the operator's price preview show. Nothing here
//! reads a clock, the database or the network, so the same inputs always give the same fee.
//!
//! How a stay is priced, in order:
//! 1. A stay no longer than the grace period is free.
//! 2. Otherwise the whole stay is charged from entry: the grace minutes are not deducted, which is
//!    the convention most Chinese lots use (free if you leave in time, full price if you do not).
//! 3. The optional first period covers the first minutes of the stay at a flat price.
//! 4. The rest is cut into billing units starting where the first period ends; a part of a unit
//!    counts as a whole unit. Each unit costs the price of the time band (in the lot's local time)
//!    in which it starts.
//! 5. Each unit belongs to the daily-cap window in which it starts (the lot's calendar day, or the
//!    24 h window counted from entry); the first period belongs to the first window. Each window's
//!    sum is capped at the daily cap, then the stay total at the stay cap, then it is raised to the
//!    minimum charge (never above the stay cap).
//!
//! Every adjustment is a line of its own, so the lines of a quote always add up to its total.
//! docs/tariffs.md is the full specification, with worked examples that a test checks against
//! this engine; the simulator prices ground truth with its own naive reading of the same rules
//! (`parkpay_sim::reference_tariff`). Start reading at [`quote`].

use std::fmt;

use chrono::{DateTime, NaiveDate, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use parkpay_protocol::{Currency, Money};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MINUTES_PER_DAY: u16 = 1440;

/// The most billing units one quote will walk. Pricing walks the stay unit by unit, and the HTTP
/// preview takes entry and exit from the caller, so an absurd stay must be refused rather than
/// spin: a million units is 28 years of 15-minute units, or two years of 1-minute ones.
pub const MAX_UNITS: u64 = 1_000_000;

/// The highest price a tariff may state, in minor units: 1 million yuan. With at most
/// [`MAX_UNITS`] units a stay, no quote's sum can come near `i64::MAX`.
pub const MAX_PRICE_MINOR: i64 = 100_000_000;

/// A lot's pricing rules. Every price is a [`Money`] in `currency`; the engine computes in its
/// integer minor units (fen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    pub currency: Currency,
    /// The lot's IANA zone: bands and calendar days are read on the lot's wall clock.
    #[serde(with = "tz_name")]
    pub time_zone: Tz,
    /// A stay of at most this long is free.
    #[serde(default)]
    pub grace_minutes: u32,
    /// The billing unit; a started unit is charged in full.
    pub unit_minutes: u32,
    #[serde(default)]
    pub first_period: Option<FirstPeriod>,
    /// Time-of-day bands covering the whole day exactly once.
    pub bands: Vec<Band>,
    #[serde(default)]
    pub daily_cap: Option<DailyCap>,
    /// The most one stay can cost, whatever its length.
    #[serde(default)]
    pub stay_cap: Option<Money>,
    /// What a chargeable stay costs at least; free stays stay free.
    #[serde(default)]
    pub minimum_charge: Option<Money>,
    /// Days of the lot's calendar priced otherwise: free, or by `holiday_bands`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<Holiday>,
    /// The bands of a holiday that is not free; they cover the day exactly once, like `bands`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holiday_bands: Vec<Band>,
    /// Price rules per vehicle class; a class not listed pays what a small car pays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassRule>,
    /// What a month's pass costs when bought through the payment provider; `None`: passes are
    /// not sold at this lot (an operator may still issue them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_month_price: Option<Money>,
    /// How long after its stay was settled at an exit a car may still leave by an exit of this
    /// lot without a new stay: a car that paid, or was let out, and whose barrier did not open
    /// (or that turned back) comes back within this window and is let out, or shown the same
    /// fee again while it is still unpaid.
    #[serde(default = "default_exit_window")]
    pub exit_window_minutes: u32,
}

/// The exit window real lots give after a payment at a kiosk or the exit.
pub const DEFAULT_EXIT_WINDOW_MINUTES: u32 = 15;
/// The longest exit window a tariff may set (a week).
pub const MAX_EXIT_WINDOW_MINUTES: u32 = 7 * 24 * 60;

fn default_exit_window() -> u32 {
    DEFAULT_EXIT_WINDOW_MINUTES
}

/// A day of the lot's calendar with its own price: units that start on it are free, or priced
/// by the tariff's `holiday_bands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holiday {
    pub date: NaiveDate,
    /// Shown on the receipt ("National Day").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub free: bool,
}

/// What a vehicle is priced as. The vehicle's registration says, or else its plate: a Chinese
/// plate of eight characters (green) is new-energy, a yellow one is large; anything else is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleClass {
    Small,
    Large,
    NewEnergy,
    Motorcycle,
}

impl VehicleClass {
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleClass::Small => "small",
            VehicleClass::Large => "large",
            VehicleClass::NewEnergy => "new_energy",
            VehicleClass::Motorcycle => "motorcycle",
        }
    }

    pub fn parse(s: &str) -> Option<VehicleClass> {
        [
            VehicleClass::Small,
            VehicleClass::Large,
            VehicleClass::NewEnergy,
            VehicleClass::Motorcycle,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    fn label(self) -> &'static str {
        match self {
            VehicleClass::Small => "small vehicle",
            VehicleClass::Large => "large vehicle",
            VehicleClass::NewEnergy => "new-energy vehicle",
            VehicleClass::Motorcycle => "motorcycle",
        }
    }
}

/// A class pays `percent` of what a small car would pay for the same stay (caps included):
/// 200 for a large vehicle, 50 for a new-energy discount. The result is rounded down to the
/// minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    pub class: VehicleClass,
    pub percent: u32,
}

/// The most a class may pay, in percent of a small car's fee.
pub const MAX_CLASS_PERCENT: u32 = 1000;

/// The first `minutes` of a chargeable stay cost a flat `price`, however short the stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstPeriod {
    pub minutes: u32,
    pub price: Money,
}

/// A time-of-day band `[start, end)` on the lot's wall clock. It wraps midnight when `end` is not
/// after `start` (`20:00`-`08:00`); `start == end` covers the whole day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Shown on receipt lines ("day 08:00-20:00"); lines show only the hours when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub start: TimeOfDay,
    pub end: TimeOfDay,
    pub unit_price: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyCap {
    pub amount: Money,
    pub basis: CapBasis,
}

/// Operators call this "restart or continue after midnight".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapBasis {
    /// One window per calendar day in the lot's zone: the cap restarts at local midnight.
    #[serde(rename = "calendar")]
    Calendar,
    /// Consecutive 24 h windows counted from the entry instant.
    #[serde(rename = "rolling24h")]
    Rolling24h,
}

/// A wall-clock time as minutes after midnight, written `"HH:MM"`. `"24:00"` is accepted so a band
/// can end at midnight either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub fn new(hour: u16, minute: u16) -> Option<TimeOfDay> {
        let total = hour.checked_mul(60)?.checked_add(minute)?;
        (minute < 60 && total <= MINUTES_PER_DAY).then_some(TimeOfDay(total))
    }

    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl std::str::FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("{s:?} is not a time of day HH:MM between 00:00 and 24:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour = h.parse::<u16>().map_err(|_| bad())?;
        let minute = m.parse::<u16>().map_err(|_| bad())?;
        TimeOfDay::new(hour, minute).ok_or_else(bad)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TimeOfDay, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The zone travels as its IANA name. Done here rather than with chrono-tz's own serde feature so
/// the engine does not depend on how the workspace configures that crate.
mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<Tz>().map_err(|_| {
            serde::de::Error::custom(format!("time_zone: {name:?} is not an IANA time zone"))
        })
    }
}

/// The priced stay, as the receipt and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub total: Money,
    /// True only for a stay within the grace period.
    pub free: bool,
    /// The stay's length in minutes, a started minute counted whole; 0 when free.
    pub billable_minutes: u64,
    /// Charges in time order, each window's daily-cap reduction right after it, then the stay-cap
    /// and minimum-charge adjustments. They add up to `total`.
    pub lines: Vec<QuoteLine>,
    /// One entry per adjustment line, e.g. "daily cap 2026-11-25", "stay cap", "minimum charge".
    pub caps_applied: Vec<String>,
}

/// One receipt line. `units * unit_price == amount` on every line; an adjustment is one unit of a
/// negative (cap) or positive (minimum charge) price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    pub label: String,
    /// Charge lines tile the stay: the first starts at entry, each starts where the one before
    /// ends, the last ends at exit (a final part unit is shown ending at exit).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub units: u64,
    pub unit_price: Money,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    /// The tariff itself is wrong; `field` names the offending field for the operator's form.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("exit {exit} is not after entry {entry}")]
    ExitNotAfterEntry {
        entry: DateTime<Utc>,
        exit: DateTime<Utc>,
    },
    #[error("the stay needs {units} billing units, more than the {max} a quote prices")]
    StayTooLong { units: u64, max: u64 },
    /// Amounts past i64 minor units, or instants past chrono's range: refused, never wrapped.
    #[error("the stay or its fee is out of the representable range")]
    Overflow,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TariffError {
    TariffError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Band {
    fn hours(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} {}", self.hours()),
            None => self.hours(),
        }
    }

    /// Minutes of the day `[start, end)` the band covers, wrapping past midnight.
    fn minutes(&self) -> impl Iterator<Item = u16> {
        let start = self.start.0 % MINUTES_PER_DAY;
        let end = self.end.0 % MINUTES_PER_DAY;
        let len = if end > start {
            end - start
        } else {
            // Wrapping band, or start == end which means the whole day.
            MINUTES_PER_DAY - start + end
        };
        (0..len).map(move |i| (start + i) % MINUTES_PER_DAY)
    }
}

impl Tariff {
    /// The demo lot: Asia/Shanghai, 15 free minutes, 30-minute units, first hour 5 yuan, day
    /// 08:00-20:00 3 yuan a unit, night 1 yuan a unit, at most 40 yuan per calendar day.
    pub fn example_cn() -> Tariff {
        Tariff {
            currency: Currency::CNY,
            time_zone: chrono_tz::Asia::Shanghai,
            grace_minutes: 15,
            unit_minutes: 30,
            first_period: Some(FirstPeriod {
                minutes: 60,
                price: Money::cny(500),
            }),
            bands: vec![
                Band {
                    name: Some("day".into()),
                    start: TimeOfDay(8 * 60),
                    end: TimeOfDay(20 * 60),
                    unit_price: Money::cny(300),
                },
                Band {
                    name: Some("night".into()),
                    start: TimeOfDay(20 * 60),
                    end: TimeOfDay(8 * 60),
                    unit_price: Money::cny(100),
                },
            ],
            daily_cap: Some(DailyCap {
                amount: Money::cny(4000),
                basis: CapBasis::Calendar,
            }),
            stay_cap: None,
            minimum_charge: None,
            holidays: Vec::new(),
            holiday_bands: Vec::new(),
            classes: Vec::new(),
            pass_month_price: None,
            exit_window_minutes: DEFAULT_EXIT_WINDOW_MINUTES,
        }
    }

    /// Checks the tariff; the error names the first bad field found.
    pub fn validate(&self) -> Result<(), TariffError> {
        self.band_table()?;
        self.holiday_table()?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in self.classes.iter().enumerate() {
            if !seen.insert(c.class) {
                return Err(invalid(
                    format!("classes[{i}].class"),
                    format!("{} is listed twice", c.class.as_str()),
                ));
            }
            if c.percent > MAX_CLASS_PERCENT {
                return Err(invalid(
                    format!("classes[{i}].percent"),
                    format!("must be at most {MAX_CLASS_PERCENT}"),
                ));
            }
        }
        Ok(())
    }

    /// The percent of a small car's fee that `class` pays.
    pub fn class_percent(&self, class: VehicleClass) -> u32 {
        self.classes
            .iter()
            .find(|c| c.class == class)
            .map_or(100, |c| c.percent)
    }

    fn holiday(&self, date: NaiveDate) -> Option<&Holiday> {
        self.holidays.iter().find(|h| h.date == date)
    }

    /// Validates the holidays; returns the holiday band table when there are holiday bands.
    fn holiday_table(&self) -> Result<Option<Vec<u16>>, TariffError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, h) in self.holidays.iter().enumerate() {
            if !seen.insert(h.date) {
                return Err(invalid(
                    format!("holidays[{i}].date"),
                    format!("{} is listed twice", h.date),
                ));
            }
        }
        let priced = self.holidays.iter().any(|h| !h.free);
        if self.holiday_bands.is_empty() {
            return if priced {
                Err(invalid(
                    "holiday_bands",
                    "a holiday that is not free is priced by holiday_bands: give them",
                ))
            } else {
                Ok(None)
            };
        }
        table_of(&self.holiday_bands, "holiday_bands", |f, p| {
            self.check_price(f, p)
        })
        .map(Some)
    }

    /// A price must be in the tariff's currency and within `0..=MAX_PRICE_MINOR`.
    fn check_price(&self, field: &str, price: Money) -> Result<(), TariffError> {
        if price.currency != self.currency {
            return Err(invalid(
                field,
                format!(
                    "currency {} differs from the tariff's {}",
                    price.currency.as_str(),
                    self.currency.as_str()
                ),
            ));
        }
        if price.minor < 0 {
            return Err(invalid(field, "must be >= 0"));
        }
        if price.minor > MAX_PRICE_MINOR {
            return Err(invalid(
                field,
                format!("must be at most {MAX_PRICE_MINOR} minor units"),
            ));
        }
        Ok(())
    }

    /// The stay cap in minor units, `i64::MAX` when there is none.
    fn stay_cap_minor(&self) -> i64 {
        self.stay_cap.map_or(i64::MAX, |c| c.minor)
    }

    /// Validates, and returns for each minute of the day the index of the band covering it, which
    /// makes the per-unit band lookup a table read.
    fn band_table(&self) -> Result<Vec<u16>, TariffError> {
        if self.unit_minutes == 0 {
            return Err(invalid("unit_minutes", "must be > 0"));
        }
        if self.exit_window_minutes > MAX_EXIT_WINDOW_MINUTES {
            return Err(invalid(
                "exit_window_minutes",
                format!("must be at most {MAX_EXIT_WINDOW_MINUTES} (a week)"),
            ));
        }
        if let Some(fp) = &self.first_period {
            if fp.minutes == 0 {
                return Err(invalid("first_period.minutes", "must be > 0"));
            }
            self.check_price("first_period.price", fp.price)?;
        }
        if let Some(cap) = &self.daily_cap {
            self.check_price("daily_cap.amount", cap.amount)?;
        }
        if let Some(cap) = self.stay_cap {
            self.check_price("stay_cap", cap)?;
        }
        if let Some(min) = self.minimum_charge {
            self.check_price("minimum_charge", min)?;
        }
        if let Some(p) = self.pass_month_price {
            self.check_price("pass_month_price", p)?;
        }
        table_of(&self.bands, "bands", |f, p| self.check_price(f, p))
    }
}

/// Checks that `bands` cover the day exactly once and returns, for each minute of the day, the
/// index of the band covering it, which makes the per-unit band lookup a table read.
fn table_of(
    bands: &[Band],
    field: &str,
    check_price: impl Fn(&str, Money) -> Result<(), TariffError>,
) -> Result<Vec<u16>, TariffError> {
    if bands.is_empty() {
        return Err(invalid(field, "at least one band must cover the day"));
    }
    // Each band covers at least one minute, so more than a day's worth must overlap; checking
    // first also keeps band indices within u16.
    if bands.len() > usize::from(MINUTES_PER_DAY) {
        return Err(invalid(field, "more bands than minutes in a day"));
    }
    const UNSET: u16 = u16::MAX;
    let mut table = vec![UNSET; usize::from(MINUTES_PER_DAY)];
    for (i, band) in bands.iter().enumerate() {
        check_price(&format!("{field}[{i}].unit_price"), band.unit_price)?;
        for m in band.minutes() {
            let slot = &mut table[usize::from(m)];
            if *slot != UNSET {
                let other = &bands[usize::from(*slot)];
                return Err(invalid(
                    field,
                    format!("{} and {} overlap", other.hours(), band.hours()),
                ));
            }
            // Cannot truncate: the length check above bounds i below 1440.
            *slot = i as u16;
        }
    }
    if let Some(first_gap) = table.iter().position(|&b| b == UNSET) {
        let len = table[first_gap..]
            .iter()
            .take_while(|&&b| b == UNSET)
            .count();
        // first_gap + len <= 1440, so both fit in u16.
        let from = TimeOfDay(first_gap as u16);
        let to = TimeOfDay((first_gap + len) as u16);
        return Err(invalid(
            field,
            format!("{from}-{to} is not covered by any band"),
        ));
    }
    Ok(table)
}

/// Reads a tariff as stored by the database. Tariffs stored before prices became Money objects
/// hold bare integers of minor units; those are read as Money in the tariff's currency (a bare
/// `minimum_charge` of 0 meant none). The HTTP API itself accepts only the Money shape.
pub fn from_stored_json(text: &str) -> Result<Tariff, serde_json::Error> {
    use serde_json::Value;
    fn wrap(price: Option<&mut Value>, currency: &Value) {
        if let Some(price) = price {
            if let Some(minor) = price.as_i64() {
                *price = serde_json::json!({ "minor": minor, "currency": currency });
            }
        }
    }
    let mut v: Value = serde_json::from_str(text)?;
    if let Some(obj) = v.as_object_mut() {
        let currency = obj.get("currency").cloned().unwrap_or(Value::Null);
        if obj.get("minimum_charge").and_then(Value::as_i64) == Some(0) {
            obj.insert("minimum_charge".into(), Value::Null);
        }
        wrap(obj.get_mut("stay_cap"), &currency);
        wrap(obj.get_mut("minimum_charge"), &currency);
        if let Some(fp) = obj.get_mut("first_period") {
            wrap(fp.get_mut("price"), &currency);
        }
        if let Some(cap) = obj.get_mut("daily_cap") {
            wrap(cap.get_mut("amount"), &currency);
        }
        if let Some(bands) = obj.get_mut("bands").and_then(Value::as_array_mut) {
            for band in bands {
                wrap(band.get_mut("unit_price"), &currency);
            }
        }
    }
    serde_json::from_value(v)
}

/// Which daily-cap window a unit falls in. Lines are also grouped per calendar day when the tariff
/// has no daily cap, so a long stay's receipt still reads day by day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Day(NaiveDate),
    Rolling(i64),
}

/// What prices a run of units: a band of the regular day, a band of a priced holiday, or a free
/// holiday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PriceKey {
    Band(u16),
    HolidayBand(u16),
    FreeHoliday,
}

struct WindowLines {
    key: Window,
    lines: Vec<QuoteLine>,
    /// The price key ([`PriceKey`]) the window's last line bills, so that a next unit priced
    /// alike extends it.
    last_band: Option<PriceKey>,
}

/// Prices a stay from `entry` to `exit` under `tariff`. See the module doc for the rules; the
/// grace period is not deducted from a chargeable stay, the convention most Chinese lots use.
pub fn quote(
    tariff: &Tariff,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
) -> Result<Quote, TariffError> {
    let table = tariff.band_table()?;
    let holiday_table = tariff.holiday_table()?;
    if exit <= entry {
        return Err(TariffError::ExitNotAfterEntry { entry, exit });
    }
    let currency = tariff.currency;
    let money = |minor: i64| Money::new(minor, currency);
    let stay = exit - entry;

    if stay <= TimeDelta::minutes(i64::from(tariff.grace_minutes)) {
        return Ok(Quote {
            total: money(0),
            free: true,
            billable_minutes: 0,
            lines: vec![QuoteLine {
                label: "grace".into(),
                from: entry,
                to: exit,
                units: 0,
                unit_price: money(0),
                amount: money(0),
            }],
            caps_applied: Vec::new(),
        });
    }

    // Takes the local time too because the caller already converted it: the zone lookup is the
    // dearest step of the per-unit loop.
    let window_of = |t: DateTime<Utc>, local: &DateTime<Tz>| -> Window {
        match tariff.daily_cap.map(|c| c.basis) {
            Some(CapBasis::Rolling24h) => Window::Rolling((t - entry).num_seconds() / 86_400),
            Some(CapBasis::Calendar) | None => Window::Day(local.date_naive()),
        }
    };

    let mut windows: Vec<WindowLines> = Vec::new();
    let mut units_start = entry;
    if let Some(fp) = &tariff.first_period {
        let fp_end = entry
            .checked_add_signed(TimeDelta::minutes(i64::from(fp.minutes)))
            .ok_or(TariffError::Overflow)?;
        let entry_local = entry.with_timezone(&tariff.time_zone);
        // A first period that starts on a free holiday is free like the rest of the day.
        let (label, price) = match tariff.holiday(entry_local.date_naive()) {
            Some(h) if h.free => (format!("first period, {} (free)", holiday_name(h)), 0),
            _ => ("first period".to_string(), fp.price.minor),
        };
        windows.push(WindowLines {
            key: window_of(entry, &entry_local),
            lines: vec![QuoteLine {
                label,
                from: entry,
                to: fp_end.min(exit),
                units: 1,
                unit_price: money(price),
                amount: money(price),
            }],
            last_band: None,
        });
        units_start = fp_end;
    }

    let unit = TimeDelta::minutes(i64::from(tariff.unit_minutes));
    let units = count_units(units_start, exit, unit);
    if units > MAX_UNITS {
        return Err(TariffError::StayTooLong {
            units,
            max: MAX_UNITS,
        });
    }

    let band_ends = ends_of(&table);
    let holiday_ends = holiday_table.as_deref().map(ends_of);
    let rolling = matches!(
        tariff.daily_cap.map(|c| c.basis),
        Some(CapBasis::Rolling24h)
    );

    let mut start = units_start;
    let mut left = units;
    while left > 0 {
        let local = start.with_timezone(&tariff.time_zone);
        // hour() < 24 and minute() < 60, so the index is below 1440.
        let minute = (local.hour() * 60 + local.minute()) as usize;
        let key = window_of(start, &local);
        // Runs never cross midnight (every band table ends at 1440), so a run is on one date.
        let (band_idx, band_end, unit_price, label) = match (
            tariff.holiday(local.date_naive()),
            &holiday_table,
            &holiday_ends,
        ) {
            (Some(h), _, _) if h.free => (
                PriceKey::FreeHoliday,
                MINUTES_PER_DAY,
                0,
                format!("{} (free)", holiday_name(h)),
            ),
            (Some(h), Some(t), Some(ends)) => {
                let band = &tariff.holiday_bands[usize::from(t[minute])];
                (
                    PriceKey::HolidayBand(t[minute]),
                    ends[minute],
                    band.unit_price.minor,
                    format!("{} {}", holiday_name(h), band.label()),
                )
            }
            _ => {
                let band = &tariff.bands[usize::from(table[minute])];
                (
                    PriceKey::Band(table[minute]),
                    band_ends[minute],
                    band.unit_price.minor,
                    band.label(),
                )
            }
        };
        // The units from here that start in the same band and the same cap window cost the same:
        // they are added in one step, so a quote costs per band change, not per unit.
        let run = same_price_run(
            SameRun {
                start,
                local: &local,
                minute,
                band_end,
                rolling_from: rolling.then_some(entry),
                unit,
            },
            tariff.time_zone,
        )
        .min(left);
        // Checked because instants near chrono's year limit would make `+` panic.
        let end = unit
            .num_seconds()
            .checked_mul(run as i64)
            .and_then(|secs| start.checked_add_signed(TimeDelta::seconds(secs)))
            .ok_or(TariffError::Overflow)?;
        let to = end.min(exit);
        let amount = unit_price
            .checked_mul(run as i64)
            .ok_or(TariffError::Overflow)?;

        let extend = match windows.last_mut() {
            Some(w) if w.key == key && w.last_band == Some(band_idx) => w.lines.last_mut(),
            _ => None,
        };
        match extend {
            Some(line) => {
                line.units += run;
                line.amount.minor = line
                    .amount
                    .minor
                    .checked_add(amount)
                    .ok_or(TariffError::Overflow)?;
                line.to = to;
            }
            None => {
                let line = QuoteLine {
                    label,
                    from: start,
                    to,
                    units: run,
                    unit_price: money(unit_price),
                    amount: money(amount),
                };
                match windows.last_mut() {
                    Some(w) if w.key == key => {
                        w.lines.push(line);
                        w.last_band = Some(band_idx);
                    }
                    _ => windows.push(WindowLines {
                        key,
                        lines: vec![line],
                        last_band: Some(band_idx),
                    }),
                }
            }
        }
        left -= run;
        start = end;
    }

    let mut lines = Vec::new();
    let mut caps_applied = Vec::new();
    let mut total: i64 = 0;
    for w in windows {
        let sum = checked_sum(w.lines.iter().map(|l| l.amount.minor))?;
        let (from, to) = match (w.lines.first(), w.lines.last()) {
            (Some(first), Some(last)) => (first.from, last.to),
            // A window is only created together with its first line.
            _ => continue,
        };
        lines.extend(w.lines);
        let mut window_total = sum;
        if let Some(cap) = tariff.daily_cap.map(|c| c.amount.minor) {
            if sum > cap {
                let label = format!("daily cap {}", window_label(w.key, entry, tariff.time_zone));
                let cut = cap.checked_sub(sum).ok_or(TariffError::Overflow)?;
                lines.push(adjustment(&label, from, to, cut, currency));
                caps_applied.push(label);
                window_total = cap;
            }
        }
        total = total
            .checked_add(window_total)
            .ok_or(TariffError::Overflow)?;
    }

    if let Some(cap) = tariff.stay_cap.map(|c| c.minor) {
        if total > cap {
            let cut = cap.checked_sub(total).ok_or(TariffError::Overflow)?;
            lines.push(adjustment("stay cap", entry, exit, cut, currency));
            caps_applied.push("stay cap".into());
            total = cap;
        }
    }
    let floor = tariff
        .minimum_charge
        .map_or(0, |m| m.minor)
        .min(tariff.stay_cap_minor());
    if total < floor {
        let raise = floor.checked_sub(total).ok_or(TariffError::Overflow)?;
        lines.push(adjustment("minimum charge", entry, exit, raise, currency));
        caps_applied.push("minimum charge".into());
        total = floor;
    }

    Ok(Quote {
        total: money(total),
        free: false,
        billable_minutes: ceil_minutes(stay),
        lines,
        caps_applied,
    })
}

/// What besides the clock prices a stay: the vehicle's class, the windows in which a pass or a
/// free visitor grant covers it, and a visitor's percentage discount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    /// `None` prices the stay as a small car's.
    pub class: Option<VehicleClass>,
    pub covered: Vec<Cover>,
    pub discount: Option<Discount>,
    /// Merchant validations: minutes taken off the end of the stay, then an amount off the fee.
    pub validation: Option<ValidationTerms>,
}

/// What a stay's merchant validations take off, all of them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationTerms {
    pub minutes_off: u32,
    /// In the tariff's currency; 0 for none.
    pub amount_off: i64,
    /// Names the lines ("validation Cafe Mocha").
    pub label: String,
}

/// The stay is free from `from` until `until` (for ever when `None`); `label` names the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub label: String,
}

/// `percent` off the fee, rounded in the driver's favour; `label` names the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub percent: u32,
    pub label: String,
}

/// Prices a stay under `terms` (docs/tariffs.md, "Holidays, vehicle classes, passes and
/// visitors"):
/// 1. A validation's minutes come off the end of the stay: it is priced as if it ended that much
///    earlier (free if nothing is left).
/// 2. The parts of the stay outside every covered window are priced by [`quote`] each as a stay
///    of its own (with its own grace period, first period and caps); covered parts cost nothing.
/// 3. The sum is multiplied by the class's percent, rounded down to the minor unit.
/// 4. Then the visitor discount is taken off, the result rounded down.
/// 5. Then a validation's amount, down to zero at most.
///
/// Each step is a line of its own, so the lines still add up to the total.
pub fn quote_with(
    tariff: &Tariff,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
    terms: &Terms,
) -> Result<Quote, TariffError> {
    if exit <= entry {
        return Err(TariffError::ExitNotAfterEntry { entry, exit });
    }
    let currency = tariff.currency;
    let money = |minor: i64| Money::new(minor, currency);
    let minutes_off = terms.validation.as_ref().map_or(0, |v| v.minutes_off);
    let priced_until = exit
        .checked_sub_signed(TimeDelta::minutes(i64::from(minutes_off)))
        .ok_or(TariffError::Overflow)?;
    let mut q = if priced_until <= entry {
        Quote {
            total: money(0),
            free: true,
            billable_minutes: 0,
            lines: Vec::new(),
            caps_applied: Vec::new(),
        }
    } else if terms.covered.is_empty() {
        quote(tariff, entry, priced_until)?
    } else {
        covered_quote(tariff, entry, priced_until, &terms.covered)?
    };
    if let Some(v) = terms.validation.as_ref().filter(|v| v.minutes_off > 0) {
        q.lines.push(QuoteLine {
            label: format!("{} -{} min", v.label, v.minutes_off),
            from: priced_until.max(entry),
            to: exit,
            units: 0,
            unit_price: money(0),
            amount: money(0),
        });
    }
    let class = terms.class.unwrap_or(VehicleClass::Small);
    let percent = tariff.class_percent(class);
    if percent != 100 && q.total.minor > 0 {
        let scaled = scale(q.total.minor, percent)?;
        let label = format!("{} {percent} %", class.label());
        q.lines.push(adjustment(
            &label,
            entry,
            exit,
            scaled - q.total.minor,
            currency,
        ));
        q.total.minor = scaled;
    }
    if let Some(d) = &terms.discount {
        if d.percent > 0 && q.total.minor > 0 {
            let kept = scale(q.total.minor, 100 - d.percent.min(100))?;
            let label = format!("{} -{} %", d.label, d.percent.min(100));
            q.lines.push(adjustment(
                &label,
                entry,
                exit,
                kept - q.total.minor,
                currency,
            ));
            q.total.minor = kept;
        }
    }
    if let Some(v) = terms.validation.as_ref().filter(|v| v.amount_off > 0) {
        let off = v.amount_off.min(q.total.minor);
        if off > 0 {
            q.lines
                .push(adjustment(&v.label, entry, exit, -off, currency));
            q.total.minor -= off;
        }
    }
    Ok(q)
}

/// `minor * percent / 100`, rounded down.
fn scale(minor: i64, percent: u32) -> Result<i64, TariffError> {
    i64::try_from(i128::from(minor) * i128::from(percent) / 100).map_err(|_| TariffError::Overflow)
}

/// Prices the parts of `[entry, exit)` outside the covered windows, each as a stay of its own.
fn covered_quote(
    tariff: &Tariff,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
    covers: &[Cover],
) -> Result<Quote, TariffError> {
    if exit <= entry {
        return Err(TariffError::ExitNotAfterEntry { entry, exit });
    }
    let money = |minor: i64| Money::new(minor, tariff.currency);
    // The covered windows clipped to the stay, in time order, merged where they touch.
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>, &str)> = covers
        .iter()
        .map(|c| {
            (
                c.from.max(entry),
                c.until.map_or(exit, |u| u.min(exit)),
                c.label.as_str(),
            )
        })
        .filter(|(from, to, _)| from < to)
        .collect();
    spans.sort_by_key(|s| s.0);
    let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>, &str)> = Vec::new();
    for s in spans {
        match merged.last_mut() {
            Some(last) if s.0 <= last.1 => last.1 = last.1.max(s.1),
            _ => merged.push(s),
        }
    }
    let mut q = Quote {
        total: money(0),
        free: true,
        billable_minutes: 0,
        lines: Vec::new(),
        caps_applied: Vec::new(),
    };
    let mut add = |part: Quote| -> Result<(), TariffError> {
        q.total.minor = q
            .total
            .minor
            .checked_add(part.total.minor)
            .ok_or(TariffError::Overflow)?;
        q.free &= part.free;
        q.billable_minutes += part.billable_minutes;
        q.lines.extend(part.lines);
        q.caps_applied.extend(part.caps_applied);
        Ok(())
    };
    let mut at = entry;
    for (from, to, label) in merged {
        if at < from {
            add(quote(tariff, at, from)?)?;
        }
        add(Quote {
            total: money(0),
            free: true,
            billable_minutes: 0,
            lines: vec![QuoteLine {
                label: label.to_string(),
                from,
                to,
                units: 0,
                unit_price: money(0),
                amount: money(0),
            }],
            caps_applied: Vec::new(),
        })?;
        at = at.max(to);
    }
    if at < exit {
        add(quote(tariff, at, exit)?)?;
    }
    Ok(q)
}

/// Where a run of alike-priced units starts, and what bounds it.
struct SameRun<'a> {
    start: DateTime<Utc>,
    /// `start` in the tariff's zone.
    local: &'a DateTime<Tz>,
    /// `start`'s minute of the day.
    minute: usize,
    /// The first later minute of the day in another band (1440: none before midnight).
    band_end: u16,
    /// For a rolling 24 h cap, the entry its windows count from.
    rolling_from: Option<DateTime<Utc>>,
    unit: TimeDelta,
}

/// How many consecutive units from `r.start` (at least one) start in the band and the cap window
/// of the first: before the band's next boundary, before midnight (a calendar window), and
/// before the rolling window's end. Wall minutes and instants advance together only while the
/// zone's offset holds, so across a daylight-saving change this answers one unit at a time.
fn same_price_run(r: SameRun<'_>, tz: Tz) -> u64 {
    use chrono::Offset;
    let into_minute = TimeDelta::seconds(i64::from(r.local.second()))
        + TimeDelta::nanoseconds(i64::from(r.local.nanosecond()));
    let wall = TimeDelta::minutes(i64::from(r.band_end) - r.minute as i64);
    let Some(mut boundary) = r
        .start
        .checked_sub_signed(into_minute)
        .and_then(|t| t.checked_add_signed(wall))
    else {
        return 1;
    };
    if let Some(entry) = r.rolling_from {
        let window = (r.start - entry).num_seconds() / 86_400;
        if let Some(end) = entry.checked_add_signed(TimeDelta::seconds((window + 1) * 86_400)) {
            boundary = boundary.min(end);
        }
    }
    let n = count_units(r.start, boundary, r.unit).max(1);
    let last = r
        .unit
        .num_seconds()
        .checked_mul(n as i64 - 1)
        .and_then(|secs| r.start.checked_add_signed(TimeDelta::seconds(secs)));
    match last {
        Some(last) if last.with_timezone(&tz).offset().fix() == r.local.offset().fix() => n,
        _ => 1,
    }
}

/// For each minute of the day, the first later minute (up to 1440, the end of the day) in another
/// band of `table`: consecutive units that start before it are priced alike.
fn ends_of(table: &[u16]) -> Vec<u16> {
    let mut ends = vec![MINUTES_PER_DAY; usize::from(MINUTES_PER_DAY)];
    for m in (0..usize::from(MINUTES_PER_DAY) - 1).rev() {
        ends[m] = if table[m + 1] == table[m] {
            ends[m + 1]
        } else {
            (m + 1) as u16
        };
    }
    ends
}

fn holiday_name(h: &Holiday) -> &str {
    h.name.as_deref().unwrap_or("holiday")
}

/// Units needed to cover `[from, to)`, a started unit counting whole; none when `from >= to`.
fn count_units(from: DateTime<Utc>, to: DateTime<Utc>, unit: TimeDelta) -> u64 {
    if to <= from {
        return 0;
    }
    let span = to - from;
    let unit_secs = unit.num_seconds();
    // Whole seconds first, then one more unit if the remainder (seconds or nanoseconds) is not 0.
    let whole = span.num_seconds() / unit_secs;
    let covered = TimeDelta::seconds(whole * unit_secs);
    let n = if covered < span { whole + 1 } else { whole };
    // span > 0 so n >= 1.
    n as u64
}

fn ceil_minutes(d: TimeDelta) -> u64 {
    let secs = d.num_seconds() + i64::from(d.subsec_nanos() > 0);
    // Only called for a positive stay.
    ((secs + 59) / 60) as u64
}

fn checked_sum(mut amounts: impl Iterator<Item = i64>) -> Result<i64, TariffError> {
    amounts.try_fold(0i64, |acc, a| {
        acc.checked_add(a).ok_or(TariffError::Overflow)
    })
}

fn adjustment(
    label: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    amount: i64,
    currency: Currency,
) -> QuoteLine {
    QuoteLine {
        label: label.into(),
        from,
        to,
        units: 1,
        unit_price: Money::new(amount, currency),
        amount: Money::new(amount, currency),
    }
}

fn window_label(key: Window, entry: DateTime<Utc>, tz: Tz) -> String {
    match key {
        Window::Day(date) => date.format("%Y-%m-%d").to_string(),
        Window::Rolling(i) => {
            let start = (entry + TimeDelta::days(i)).with_timezone(&tz);
            format!("24h from {}", start.format("%Y-%m-%d %H:%M"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// A wall-clock time in `tz` as a UTC instant. Test inputs avoid DST gaps and folds unless a
    /// test says otherwise.
    fn local(tz: Tz, s: &str) -> DateTime<Utc> {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
            .expect("test times are well formed");
        tz.from_local_datetime(&naive)
            .single()
            .expect("test times are unambiguous in their zone")
            .with_timezone(&Utc)
    }

    fn sh(s: &str) -> DateTime<Utc> {
        local(chrono_tz::Asia::Shanghai, s)
    }

    fn priced(t: &Tariff, entry: DateTime<Utc>, exit: DateTime<Utc>) -> Quote {
        quote(t, entry, exit).expect("test tariffs are valid and exits follow entries")
    }

    fn fee(t: &Tariff, entry: DateTime<Utc>, exit: DateTime<Utc>) -> i64 {
        priced(t, entry, exit).total.minor
    }

    fn summary(q: &Quote) -> Vec<(String, u64, i64)> {
        q.lines
            .iter()
            .map(|l| (l.label.clone(), l.units, l.amount.minor))
            .collect()
    }

    fn line(label: &str, units: u64, amount: i64) -> (String, u64, i64) {
        (label.to_string(), units, amount)
    }

    fn assert_lines_sum(q: &Quote) {
        let sum: i64 = q.lines.iter().map(|l| l.amount.minor).sum();
        assert_eq!(sum, q.total.minor, "lines must add up to the total: {q:#?}");
    }

    #[test]
    fn grace_boundary_is_inclusive() {
        let t = Tariff::example_cn();
        let q = priced(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:15:00"));
        assert!(q.free);
        assert_eq!(q.total, Money::cny(0));
        assert_eq!(summary(&q), vec![line("grace", 0, 0)]);
        assert_eq!(q.billable_minutes, 0);

        // One second over grace: the whole stay is charged from entry, so the first period.
        let q = priced(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:15:01"));
        assert!(!q.free);
        assert_eq!(q.total, Money::cny(500));
        assert_eq!(summary(&q), vec![line("first period", 1, 500)]);
        assert_eq!(q.billable_minutes, 16);
        assert_eq!(fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:16")), 500);
    }

    #[test]
    fn a_started_unit_is_charged_whole() {
        let t = Tariff::example_cn();
        let e = sh("2026-11-25 10:00");
        assert_eq!(fee(&t, e, sh("2026-11-25 11:00:00")), 500);
        assert_eq!(fee(&t, e, sh("2026-11-25 11:00:01")), 800);
        assert_eq!(fee(&t, e, sh("2026-11-25 11:30:00")), 800);
        assert_eq!(fee(&t, e, sh("2026-11-25 11:30:01")), 1100);
        let q = priced(&t, e, sh("2026-11-25 11:31"));
        assert_eq!(
            summary(&q),
            vec![
                line("first period", 1, 500),
                line("day 08:00-20:00", 2, 600)
            ]
        );
        // The last part unit is shown ending at exit.
        assert_eq!(q.lines[1].from, sh("2026-11-25 11:00"));
        assert_eq!(q.lines[1].to, sh("2026-11-25 11:31"));
    }

    #[test]
    fn crossing_20_00_prices_each_unit_by_the_band_it_starts_in() {
        let t = Tariff::example_cn();
        // Units start 19:00, 19:30 (day) and 20:00, 20:30 (night).
        let q = priced(&t, sh("2026-11-25 18:00"), sh("2026-11-25 21:00"));
        assert_eq!(
            summary(&q),
            vec![
                line("first period", 1, 500),
                line("day 08:00-20:00", 2, 600),
                line("night 20:00-08:00", 2, 200),
            ]
        );
        assert_eq!(q.total, Money::cny(1300));
        assert_eq!(q.lines[2].from, sh("2026-11-25 20:00"));

        // A unit from 19:45 to 20:15 straddles the change and is a day unit.
        let q = priced(&t, sh("2026-11-25 18:45"), sh("2026-11-25 20:45"));
        assert_eq!(
            summary(&q),
            vec![
                line("first period", 1, 500),
                line("day 08:00-20:00", 1, 300),
                line("night 20:00-08:00", 1, 100),
            ]
        );
    }

    #[test]
    fn crossing_midnight_calendar_cap_restarts_rolling_cap_continues() {
        let calendar = Tariff::example_cn();
        let e = sh("2026-11-25 08:00");
        let x = sh("2026-11-26 10:00");
        // 25th: 500 + 22 day units (6600) + 8 night units (800) = 7900, capped to 4000.
        // 26th: 16 night units (1600) + 4 day units (1200) = 2800.
        let q = priced(&calendar, e, x);
        assert_eq!(
            summary(&q),
            vec![
                line("first period", 1, 500),
                line("day 08:00-20:00", 22, 6600),
                line("night 20:00-08:00", 8, 800),
                line("daily cap 2026-11-25", 1, -3900),
                line("night 20:00-08:00", 16, 1600),
                line("day 08:00-20:00", 4, 1200),
            ]
        );
        assert_eq!(q.total, Money::cny(6800));
        assert_eq!(q.caps_applied, vec!["daily cap 2026-11-25".to_string()]);
        assert_lines_sum(&q);

        // Rolling: the first window runs 08:00 to 08:00 and holds the whole night,
        // 500 + 6600 + 24 night units (2400) = 9500 -> 4000; then 4 day units (1200).
        let mut rolling = Tariff::example_cn();
        rolling.daily_cap = Some(DailyCap {
            amount: Money::cny(4000),
            basis: CapBasis::Rolling24h,
        });
        let q = priced(&rolling, e, x);
        assert_eq!(
            summary(&q),
            vec![
                line("first period", 1, 500),
                line("day 08:00-20:00", 22, 6600),
                line("night 20:00-08:00", 24, 2400),
                line("daily cap 24h from 2026-11-25 08:00", 1, -5500),
                line("day 08:00-20:00", 4, 1200),
            ]
        );
        assert_eq!(q.total, Money::cny(5200));
        assert_lines_sum(&q);
    }

    #[test]
    fn a_week_hits_the_daily_cap_every_day() {
        let t = Tariff::example_cn();
        // Seven capped days (the first: 500 + 18 day + 8 night = 6700; the others 9600 each),
        // then the 8th from 00:00 to 10:00: 16 night + 4 day = 2800.
        let q = priced(&t, sh("2026-11-23 10:00"), sh("2026-11-30 10:00"));
        assert_eq!(q.total, Money::cny(7 * 4000 + 2800));
        assert_eq!(
            q.caps_applied,
            (23..=29)
                .map(|d| format!("daily cap 2026-11-{d}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(q.billable_minutes, 7 * 24 * 60);
        assert_lines_sum(&q);
    }

    #[test]
    fn stay_cap_limits_the_total_after_daily_caps() {
        let mut t = Tariff::example_cn();
        t.stay_cap = Some(Money::cny(10_000));
        let q = priced(&t, sh("2026-11-23 10:00"), sh("2026-11-30 10:00"));
        assert_eq!(q.total, Money::cny(10_000));
        assert_eq!(q.caps_applied.last().map(String::as_str), Some("stay cap"));
        let last = q
            .lines
            .last()
            .expect("a capped quote has an adjustment line");
        assert_eq!(
            (last.label.as_str(), last.amount.minor),
            ("stay cap", -20_800)
        );
        assert_lines_sum(&q);
    }

    #[test]
    fn minimum_charge_raises_a_small_fee_but_not_above_the_stay_cap() {
        let mut t = Tariff::example_cn();
        t.first_period = None;
        t.minimum_charge = Some(Money::cny(500));
        // One day unit (300), raised to 500.
        let q = priced(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:20"));
        assert_eq!(q.total, Money::cny(500));
        assert_eq!(
            summary(&q),
            vec![
                line("day 08:00-20:00", 1, 300),
                line("minimum charge", 1, 200)
            ]
        );
        assert_eq!(q.caps_applied, vec!["minimum charge".to_string()]);
        // Grace still wins over the minimum.
        assert_eq!(fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:10")), 0);

        t.stay_cap = Some(Money::cny(400));
        assert_eq!(fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:20")), 400);
    }

    fn eur(cents: i64) -> Money {
        Money::new(cents, Currency::EUR)
    }

    fn berlin() -> Tariff {
        Tariff {
            currency: Currency::EUR,
            time_zone: chrono_tz::Europe::Berlin,
            grace_minutes: 0,
            unit_minutes: 60,
            first_period: None,
            bands: vec![
                Band {
                    name: Some("day".into()),
                    start: TimeOfDay(8 * 60),
                    end: TimeOfDay(20 * 60),
                    unit_price: eur(200),
                },
                Band {
                    name: Some("night".into()),
                    start: TimeOfDay(20 * 60),
                    end: TimeOfDay(8 * 60),
                    unit_price: eur(100),
                },
            ],
            daily_cap: Some(DailyCap {
                amount: eur(1000),
                basis: CapBasis::Calendar,
            }),
            stay_cap: None,
            minimum_charge: None,
            holidays: Vec::new(),
            holiday_bands: Vec::new(),
            classes: Vec::new(),
            pass_month_price: None,
            exit_window_minutes: DEFAULT_EXIT_WINDOW_MINUTES,
        }
    }

    #[test]
    fn dst_spring_forward_charges_elapsed_hours_not_wall_clock_hours() {
        let t = berlin();
        let tz = t.time_zone;
        // 2026-03-29 02:00 CET jumps to 03:00 CEST: 22:00 to 10:00 is 11 hours, not 12.
        // 28th: 22:00, 23:00 night (200). 29th: 00, 01, 03, 04, 05, 06, 07 night (700),
        // 08, 09 day (400) = 1100, capped to 1000.
        let q = priced(
            &t,
            local(tz, "2026-03-28 22:00"),
            local(tz, "2026-03-29 10:00"),
        );
        assert_eq!(
            summary(&q),
            vec![
                line("night 20:00-08:00", 2, 200),
                line("night 20:00-08:00", 7, 700),
                line("day 08:00-20:00", 2, 400),
                line("daily cap 2026-03-29", 1, -100),
            ]
        );
        assert_eq!(q.total, Money::new(1200, Currency::EUR));
        assert_eq!(q.billable_minutes, 11 * 60);
    }

    #[test]
    fn dst_fall_back_day_has_25_hours() {
        let t = berlin();
        let tz = t.time_zone;
        // 2026-10-25 03:00 CEST falls back to 02:00 CET: 00:00 to 08:00 is 9 night units.
        let q = priced(
            &t,
            local(tz, "2026-10-25 00:00"),
            local(tz, "2026-10-25 08:00"),
        );
        assert_eq!(summary(&q), vec![line("night 20:00-08:00", 9, 900)]);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let err = |f: &dyn Fn(&mut Tariff)| {
            let mut t = Tariff::example_cn();
            f(&mut t);
            t.validate()
                .expect_err("the tariff was broken on purpose")
                .to_string()
        };
        assert_eq!(err(&|t| t.unit_minutes = 0), "unit_minutes: must be > 0");
        let day = |d: u32| Holiday {
            date: NaiveDate::from_ymd_opt(2026, 10, d).expect("a date"),
            name: None,
            free: false,
        };
        assert_eq!(
            err(&|t| t.holidays = vec![day(1)]),
            "holiday_bands: a holiday that is not free is priced by holiday_bands: give them"
        );
        assert_eq!(
            err(&|t| {
                t.holidays = vec![day(1), day(1)];
                t.holiday_bands = t.bands.clone();
            }),
            "holidays[1].date: 2026-10-01 is listed twice"
        );
        assert_eq!(
            err(&|t| {
                t.holidays = vec![day(2)];
                t.holiday_bands = vec![t.bands[0].clone()];
            }),
            "holiday_bands: 00:00-08:00 is not covered by any band"
        );
        let class = |class, percent| ClassRule { class, percent };
        assert_eq!(
            err(&|t| t.classes = vec![class(VehicleClass::Large, 1001)]),
            "classes[0].percent: must be at most 1000"
        );
        assert_eq!(
            err(&|t| t.classes = vec![
                class(VehicleClass::Large, 200),
                class(VehicleClass::Large, 150)
            ]),
            "classes[1].class: large is listed twice"
        );
        assert_eq!(
            err(&|t| t.pass_month_price = Some(Money::cny(-1))),
            "pass_month_price: must be >= 0"
        );
        assert_eq!(
            err(&|t| t.exit_window_minutes = MAX_EXIT_WINDOW_MINUTES + 1),
            "exit_window_minutes: must be at most 10080 (a week)"
        );
        assert_eq!(
            err(&|t| t.bands[1].start = TimeOfDay(19 * 60)),
            "bands: 08:00-20:00 and 19:00-08:00 overlap"
        );
        assert_eq!(
            err(&|t| t.bands[1].start = TimeOfDay(21 * 60)),
            "bands: 20:00-21:00 is not covered by any band"
        );
        assert_eq!(
            err(&|t| t.bands.clear()),
            "bands: at least one band must cover the day"
        );
        assert_eq!(
            err(&|t| t.bands[0].unit_price = Money::cny(-1)),
            "bands[0].unit_price: must be >= 0"
        );
        assert_eq!(
            err(&|t| t.first_period = Some(FirstPeriod {
                minutes: 0,
                price: Money::cny(500)
            })),
            "first_period.minutes: must be > 0"
        );
        assert_eq!(
            err(&|t| t.stay_cap = Some(Money::cny(-5))),
            "stay_cap: must be >= 0"
        );
        assert_eq!(
            err(&|t| t.minimum_charge = Some(Money::cny(-5))),
            "minimum_charge: must be >= 0"
        );
        // Every price is in the tariff's currency, and the error names the field.
        assert_eq!(
            err(&|t| t.bands[1].unit_price = eur(100)),
            "bands[1].unit_price: currency EUR differs from the tariff's CNY"
        );
        assert_eq!(
            err(&|t| t.first_period = Some(FirstPeriod {
                minutes: 60,
                price: eur(500)
            })),
            "first_period.price: currency EUR differs from the tariff's CNY"
        );
        assert_eq!(
            err(&|t| t.daily_cap = Some(DailyCap {
                amount: eur(4000),
                basis: CapBasis::Calendar
            })),
            "daily_cap.amount: currency EUR differs from the tariff's CNY"
        );
        assert_eq!(
            err(&|t| t.stay_cap = Some(eur(10_000))),
            "stay_cap: currency EUR differs from the tariff's CNY"
        );
        assert_eq!(
            err(&|t| t.minimum_charge = Some(eur(100))),
            "minimum_charge: currency EUR differs from the tariff's CNY"
        );
        // Prices above a million yuan are refused, so no quote can overflow.
        assert_eq!(
            err(&|t| t.bands[0].unit_price = Money::cny(MAX_PRICE_MINOR + 1)),
            "bands[0].unit_price: must be at most 100000000 minor units"
        );
        assert_eq!(
            err(&|t| t.daily_cap = Some(DailyCap {
                amount: Money::cny(i64::MAX),
                basis: CapBasis::Rolling24h
            })),
            "daily_cap.amount: must be at most 100000000 minor units"
        );
        assert_eq!(
            err(&|t| t.minimum_charge = Some(Money::cny(MAX_PRICE_MINOR + 1))),
            "minimum_charge: must be at most 100000000 minor units"
        );
        let mut at_limit = Tariff::example_cn();
        at_limit.bands[0].unit_price = Money::cny(MAX_PRICE_MINOR);
        assert_eq!(at_limit.validate(), Ok(()));

        // An invalid tariff is refused by quote too, instead of looping or dividing by zero.
        let mut t = Tariff::example_cn();
        t.unit_minutes = 0;
        assert!(matches!(
            quote(&t, sh("2026-11-25 10:00"), sh("2026-11-25 12:00")),
            Err(TariffError::Invalid { .. })
        ));
    }

    #[test]
    fn one_band_may_cover_the_whole_day() {
        let mut t = Tariff::example_cn();
        t.bands = vec![Band {
            name: None,
            start: TimeOfDay(0),
            end: TimeOfDay(MINUTES_PER_DAY),
            unit_price: Money::cny(200),
        }];
        assert_eq!(t.validate(), Ok(()));
        let q = priced(&t, sh("2026-11-25 10:00"), sh("2026-11-25 12:00"));
        assert_eq!(
            summary(&q),
            vec![line("first period", 1, 500), line("00:00-24:00", 2, 400)]
        );
    }

    #[test]
    fn exit_not_after_entry_is_an_error() {
        let t = Tariff::example_cn();
        let e = sh("2026-11-25 10:00");
        assert_eq!(
            quote(&t, e, e),
            Err(TariffError::ExitNotAfterEntry { entry: e, exit: e })
        );
        assert!(quote(&t, e, e - TimeDelta::hours(1)).is_err());
    }

    #[test]
    fn an_absurd_stay_is_refused_not_walked() {
        let mut t = Tariff::example_cn();
        t.unit_minutes = 1;
        let e = sh("2026-11-25 10:00");
        assert!(matches!(
            quote(&t, e, e + TimeDelta::days(3650)),
            Err(TariffError::StayTooLong { .. })
        ));
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let t = Tariff::example_cn();
        let exit = DateTime::<Utc>::MAX_UTC;
        let entry = exit - TimeDelta::minutes(20);
        assert_eq!(quote(&t, entry, exit), Err(TariffError::Overflow));

        // The price that used to be accepted and then failed every exit is now refused up front.
        let mut t = Tariff::example_cn();
        t.daily_cap = None;
        for b in &mut t.bands {
            b.unit_price = Money::cny(4_611_686_018_427_387_904);
        }
        assert!(matches!(
            quote(&t, sh("2026-11-25 10:00"), sh("2026-11-25 13:00")),
            Err(TariffError::Invalid { field, .. }) if field == "bands[0].unit_price"
        ));
    }

    #[test]
    fn the_dearest_valid_tariff_prices_the_longest_stay_without_overflow() {
        let mut t = Tariff::example_cn();
        let max = Money::cny(MAX_PRICE_MINOR);
        t.unit_minutes = 1;
        t.first_period = Some(FirstPeriod {
            minutes: 1,
            price: max,
        });
        t.daily_cap = None;
        for b in &mut t.bands {
            b.unit_price = max;
        }
        let entry = sh("2026-01-01 00:00");
        let units = i64::try_from(MAX_UNITS).expect("fits");
        let q = priced(&t, entry, entry + TimeDelta::minutes(1 + units));
        assert_eq!(q.total, Money::cny(MAX_PRICE_MINOR * (units + 1)));
        assert_lines_sum(&q);
    }

    #[test]
    fn a_thirty_day_stay_prices_quickly_and_exactly() {
        let mut t = Tariff::example_cn();
        t.unit_minutes = 15;
        let q = priced(&t, sh("2026-11-01 00:00"), sh("2026-12-01 00:00"));
        assert_eq!(q.total, Money::cny(30 * 4000));
        assert_eq!(q.caps_applied.len(), 30);
        assert_lines_sum(&q);
    }

    #[test]
    fn api_json_shapes() {
        let json = r#"{
          "currency": "CNY",
          "time_zone": "Asia/Shanghai",
          "grace_minutes": 15,
          "unit_minutes": 30,
          "first_period": {"minutes": 60, "price": {"minor": 500, "currency": "CNY"}},
          "bands": [
            {"start": "08:00", "end": "20:00", "unit_price": {"minor": 300, "currency": "CNY"}},
            {"start": "20:00", "end": "08:00", "unit_price": {"minor": 100, "currency": "CNY"}}
          ],
          "daily_cap": {"amount": {"minor": 4000, "currency": "CNY"}, "basis": "calendar"},
          "stay_cap": null,
          "minimum_charge": null
        }"#;
        let parsed: Tariff = serde_json::from_str(json).expect("the documented tariff parses");
        let mut expected = Tariff::example_cn();
        for b in &mut expected.bands {
            b.name = None;
        }
        assert_eq!(parsed, expected);

        let round: Tariff = serde_json::from_str(
            &serde_json::to_string(&Tariff::example_cn()).expect("serialisable"),
        )
        .expect("a serialised tariff parses back");
        assert_eq!(round, Tariff::example_cn());

        let bad_zone = json.replace("Asia/Shanghai", "Mars/Olympus");
        let e = serde_json::from_str::<Tariff>(&bad_zone).expect_err("unknown zone");
        assert!(e.to_string().contains("time_zone"), "{e}");
        assert!(serde_json::from_str::<Tariff>(&json.replace("08:00", "8am")).is_err());
        // Prices are Money objects; a bare number is refused.
        let bare = json.replace(r#""stay_cap": null"#, r#""stay_cap": 10000"#);
        assert!(serde_json::from_str::<Tariff>(&bare).is_err());
        let capped = json.replace(
            r#""stay_cap": null"#,
            r#""stay_cap": {"minor": 10000, "currency": "CNY"}"#,
        );
        let capped: Tariff = serde_json::from_str(&capped).expect("a Money stay cap parses");
        assert_eq!(capped.stay_cap, Some(Money::cny(10_000)));
        let v = serde_json::to_value(&capped).expect("serialisable");
        assert_eq!(
            v["bands"][0]["unit_price"],
            serde_json::json!({"minor": 300, "currency": "CNY"})
        );

        let q = priced(&parsed, sh("2026-11-25 18:00"), sh("2026-11-25 21:00"));
        let v = serde_json::to_value(&q).expect("a quote serialises");
        assert_eq!(
            v["total"],
            serde_json::json!({"minor": 1300, "currency": "CNY"})
        );
        assert_eq!(v["free"], false);
        assert_eq!(v["billable_minutes"], 180);
        assert_eq!(v["lines"][1]["label"], "08:00-20:00");
        assert_eq!(v["lines"][1]["from"], "2026-11-25T11:00:00Z");
        assert_eq!(v["lines"][1]["units"], 2);
        assert_eq!(v["lines"][1]["unit_price"]["minor"], 300);
        assert_eq!(v["caps_applied"], serde_json::json!([]));
    }

    #[test]
    fn tariffs_stored_with_bare_prices_are_read_as_money() {
        let old = r#"{"currency":"CNY","time_zone":"Asia/Shanghai","grace_minutes":15,
            "unit_minutes":30,"first_period":{"minutes":60,"price":500},
            "bands":[{"name":"day","start":"08:00","end":"20:00","unit_price":300},
                     {"name":"night","start":"20:00","end":"08:00","unit_price":100}],
            "daily_cap":{"amount":4000,"basis":"calendar"},"stay_cap":null,"minimum_charge":0}"#;
        assert_eq!(
            from_stored_json(old).expect("old shape"),
            Tariff::example_cn()
        );
        let capped = old
            .replace(r#""stay_cap":null"#, r#""stay_cap":9000"#)
            .replace(r#""minimum_charge":0"#, r#""minimum_charge":300"#);
        let t = from_stored_json(&capped).expect("old shape with caps");
        assert_eq!(t.stay_cap, Some(Money::cny(9000)));
        assert_eq!(t.minimum_charge, Some(Money::cny(300)));
        let new = serde_json::to_string(&t).expect("serialisable");
        assert_eq!(from_stored_json(&new).expect("new shape"), t);
        // The API's own decoder stays strict.
        assert!(serde_json::from_str::<Tariff>(old).is_err());
    }

    const ZONES: &[Tz] = &[
        chrono_tz::Asia::Shanghai,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::UTC,
    ];

    prop_compose! {
        fn arb_bands()(cuts in proptest::collection::btree_set(0u16..MINUTES_PER_DAY, 1..5),
                       prices in proptest::collection::vec(0i64..1000, 4)) -> Vec<Band> {
            let cuts: Vec<u16> = cuts.into_iter().collect();
            (0..cuts.len())
                .map(|i| Band {
                    name: None,
                    start: TimeOfDay(cuts[i]),
                    end: TimeOfDay(cuts[(i + 1) % cuts.len()]),
                    unit_price: Money::cny(prices[i]),
                })
                .collect()
        }
    }

    prop_compose! {
        fn arb_tariff()(
            zone in 0..ZONES.len(),
            grace_minutes in 0u32..60,
            unit_minutes in prop::sample::select(vec![1u32, 5, 15, 30, 60, 90]),
            first_period in prop::option::of((1u32..180, 0i64..2000)),
            bands in arb_bands(),
            daily_cap in prop::option::of((0i64..10_000, any::<bool>())),
            stay_cap in prop::option::of(0i64..50_000),
            minimum_charge in prop::sample::select(vec![None, Some(0i64), Some(300), Some(5000)]),
        ) -> Tariff {
            Tariff {
                currency: Currency::CNY,
                time_zone: ZONES[zone],
                grace_minutes,
                unit_minutes,
                first_period: first_period
                    .map(|(minutes, price)| FirstPeriod { minutes, price: Money::cny(price) }),
                bands,
                daily_cap: daily_cap.map(|(amount, rolling)| DailyCap {
                    amount: Money::cny(amount),
                    basis: if rolling { CapBasis::Rolling24h } else { CapBasis::Calendar },
                }),
                stay_cap: stay_cap.map(Money::cny),
                minimum_charge: minimum_charge.map(Money::cny),
                holidays: Vec::new(),
                holiday_bands: Vec::new(),
                classes: Vec::new(),
                pass_month_price: None,
                exit_window_minutes: DEFAULT_EXIT_WINDOW_MINUTES,
            }
        }
    }

    /// Entries spread over 2026, so stays cross DST changes in the zones that have them.
    fn arb_entry() -> impl Strategy<Value = DateTime<Utc>> {
        let base = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("UTC has no gaps");
        (0i64..365 * 86_400).prop_map(move |s| base + TimeDelta::seconds(s))
    }

    fn windows_touched(t: &Tariff, entry: DateTime<Utc>, exit: DateTime<Utc>) -> i64 {
        match t.daily_cap.map(|c| c.basis) {
            Some(CapBasis::Rolling24h) => ((exit - entry).num_seconds() + 86_399) / 86_400,
            _ => {
                let day = |i: DateTime<Utc>| i.with_timezone(&t.time_zone).date_naive();
                (day(exit - TimeDelta::nanoseconds(1)) - day(entry)).num_days() + 1
            }
        }
    }

    const TEN_DAYS: i64 = 10 * 86_400;

    /// The example tariff's JSON with one number or string replaced by a hostile value.
    fn mutated_example(path: usize, value: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::to_value(Tariff::example_cn()).unwrap();
        let mut leaves = Vec::new();
        fn walk(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, c) in m {
                        walk(c, format!("{at}/{k}"), out);
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, c) in a.iter().enumerate() {
                        walk(c, format!("{at}/{i}"), out);
                    }
                }
                _ => out.push(at),
            }
        }
        walk(&v, String::new(), &mut leaves);
        let at = &leaves[path % leaves.len()];
        if let Some(slot) = v.pointer_mut(at) {
            *slot = value;
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn hostile_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::Value::Null),
            ".{0,12}".prop_map(serde_json::Value::from),
            Just(serde_json::json!("24:00")),
            Just(serde_json::json!("Mars/Olympus")),
            Just(serde_json::json!({"minor": -1, "currency": "CNY"})),
        ]
    }

    proptest! {
        /// Whatever bytes an operator (or attacker) sends as a tariff: an error naming the
        /// problem, or a tariff that validates and prices any stay without panicking.
        #[test]
        fn hostile_tariff_json_never_panics(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..400),
                (any::<usize>(), hostile_value()).prop_map(|(p, v)| mutated_example(p, v)),
            ],
            entry in arb_entry(),
            secs in 1i64..TEN_DAYS,
        ) {
            if let Ok(t) = serde_json::from_slice::<Tariff>(&bytes) {
                if t.validate().is_ok() {
                    let _ = quote(&t, entry, entry + TimeDelta::seconds(secs));
                } else {
                    prop_assert!(quote(&t, entry, entry + TimeDelta::seconds(secs)).is_err());
                }
            }
        }

        #[test]
        fn valid_generated_tariffs(t in arb_tariff()) {
            prop_assert_eq!(t.validate(), Ok(()));
        }

        #[test]
        fn fee_is_monotone_in_exit_time(
            t in arb_tariff(), entry in arb_entry(), a in 1i64..TEN_DAYS, b in 1i64..TEN_DAYS,
        ) {
            let (short, long) = (a.min(b), a.max(b));
            let f_short = fee(&t, entry, entry + TimeDelta::seconds(short));
            let f_long = fee(&t, entry, entry + TimeDelta::seconds(long));
            prop_assert!(f_short <= f_long, "{} then {}", f_short, f_long);
        }

        #[test]
        fn quote_invariants(t in arb_tariff(), entry in arb_entry(), secs in 1i64..TEN_DAYS) {
            let exit = entry + TimeDelta::seconds(secs);
            let q = priced(&t, entry, exit);
            let total = q.total.minor;

            prop_assert!(total >= 0);
            prop_assert_eq!(q.lines.iter().map(|l| l.amount.minor).sum::<i64>(), total);
            for l in &q.lines {
                prop_assert_eq!(l.units as i64 * l.unit_price.minor, l.amount.minor);
                prop_assert!(l.from < l.to);
            }
            if let Some(cap) = t.stay_cap {
                prop_assert!(total <= cap.minor);
            }
            if let Some(cap) = t.daily_cap {
                // The first period sits in the first window and is capped with it, so the bound
                // needs no first-period term; only the minimum charge can lift a fee above it.
                let floor = t.minimum_charge.map_or(0, |m| m.minor).min(t.stay_cap_minor());
                let bound = (windows_touched(&t, entry, exit) * cap.amount.minor).max(floor);
                prop_assert!(total <= bound, "{} > {}", total, bound);
            }
            let within_grace = secs <= i64::from(t.grace_minutes) * 60;
            prop_assert_eq!(q.free, within_grace);
            if within_grace {
                prop_assert_eq!(total, 0);
            }
            // Charge lines tile the stay from entry to exit.
            let charges: Vec<&QuoteLine> = q.lines.iter().filter(|l| l.amount.minor >= 0
                && !q.caps_applied.contains(&l.label)).collect();
            prop_assert_eq!(charges.first().map(|l| l.from), Some(entry));
            prop_assert_eq!(charges.last().map(|l| l.to), Some(exit));
            for pair in charges.windows(2) {
                prop_assert_eq!(pair[0].to, pair[1].from);
            }
        }
    }
}
