//! The reference against hand-worked fees, against the engine on random tariffs and stays, and
//! the worked examples of docs/tariffs.md against both.

use chrono::{NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use parkpay_protocol::{Currency, Money};
use parkpay_server::tariff::{
    quote, quote_with, ClassRule, Cover, DailyCap, Discount, FirstPeriod, Holiday, Terms,
    TimeOfDay, ValidationTerms, MAX_PRICE_MINOR,
};
use proptest::prelude::*;

use super::*;

fn local(tz: Tz, s: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .expect("test times are well formed");
    tz.from_local_datetime(&naive)
        .single()
        .expect("test times are unambiguous")
        .with_timezone(&Utc)
}

fn sh(s: &str) -> DateTime<Utc> {
    local(chrono_tz::Asia::Shanghai, s)
}

fn tod(s: &str) -> TimeOfDay {
    s.parse().expect("test times of day are well formed")
}

#[test]
fn hand_worked_fees_of_the_example_tariff() {
    let t = Tariff::example_cn();
    // Grace is inclusive; one second more costs the first period.
    assert_eq!(fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:15")), 0);
    assert_eq!(
        fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 10:15:01")),
        500
    );
    // A started unit is charged whole.
    assert_eq!(
        fee(&t, sh("2026-11-25 10:00"), sh("2026-11-25 11:00:01")),
        800
    );
    // 500 + two day units + two night units.
    assert_eq!(
        fee(&t, sh("2026-11-25 18:00"), sh("2026-11-25 21:00")),
        1300
    );
    // A unit from 19:45 to 20:15 is a day unit: it starts in the day band.
    assert_eq!(fee(&t, sh("2026-11-25 18:45"), sh("2026-11-25 20:45")), 900);
    // 25th: 500 + 6600 + 800 capped to 4000; 26th: 1600 + 1200.
    assert_eq!(
        fee(&t, sh("2026-11-25 08:00"), sh("2026-11-26 10:00")),
        6800
    );
    let mut rolling = t.clone();
    rolling.daily_cap = Some(DailyCap {
        amount: Money::cny(4000),
        basis: CapBasis::Rolling24h,
    });
    // First 24 h: 500 + 6600 + 2400 capped to 4000; then four day units.
    assert_eq!(
        fee(&rolling, sh("2026-11-25 08:00"), sh("2026-11-26 10:00")),
        5200
    );
    let mut capped = t.clone();
    capped.stay_cap = Some(Money::cny(10_000));
    assert_eq!(
        fee(&capped, sh("2026-11-23 10:00"), sh("2026-11-30 10:00")),
        10_000
    );
    let mut minimum = t.clone();
    minimum.first_period = None;
    minimum.minimum_charge = Some(Money::cny(500));
    assert_eq!(
        fee(&minimum, sh("2026-11-25 10:00"), sh("2026-11-25 10:20")),
        500
    );
    minimum.stay_cap = Some(Money::cny(400));
    assert_eq!(
        fee(&minimum, sh("2026-11-25 10:00"), sh("2026-11-25 10:20")),
        400
    );
}

#[test]
fn units_are_elapsed_time_across_a_dst_change() {
    let berlin = chrono_tz::Europe::Berlin;
    let eur = |c| Money::new(c, Currency::EUR);
    let t = Tariff {
        currency: Currency::EUR,
        time_zone: berlin,
        grace_minutes: 0,
        unit_minutes: 60,
        first_period: None,
        bands: vec![
            Band {
                name: None,
                start: tod("08:00"),
                end: tod("20:00"),
                unit_price: eur(200),
            },
            Band {
                name: None,
                start: tod("20:00"),
                end: tod("08:00"),
                unit_price: eur(100),
            },
        ],
        daily_cap: None,
        stay_cap: None,
        minimum_charge: None,
        holidays: Vec::new(),
        holiday_bands: Vec::new(),
        classes: Vec::new(),
        pass_month_price: None,
        exit_window_minutes: parkpay_server::tariff::DEFAULT_EXIT_WINDOW_MINUTES,
    };
    // Spring forward: 22:00 to 10:00 on the wall clock is 11 hours: 9 night, 2 day.
    assert_eq!(
        fee(
            &t,
            local(berlin, "2026-03-28 22:00"),
            local(berlin, "2026-03-29 10:00")
        ),
        1300
    );
    // Fall back: midnight to 08:00 is 9 hours, all night.
    assert_eq!(
        fee(
            &t,
            local(berlin, "2026-10-25 00:00"),
            local(berlin, "2026-10-25 08:00")
        ),
        900
    );
}

// ---- the engine against the reference -----------------------------------------------------

const ZONES: &[Tz] = &[
    chrono_tz::Asia::Shanghai,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
];

/// The 2026 DST changes of the zones above, as UTC instants.
fn dst_changes() -> Vec<DateTime<Utc>> {
    [
        "2026-03-29T01:00:00Z", // Berlin, spring forward
        "2026-10-25T01:00:00Z", // Berlin, fall back
        "2026-03-08T07:00:00Z", // New York, spring forward
        "2026-11-01T06:00:00Z", // New York, fall back
        "2026-04-04T15:00:00Z", // Lord Howe, back half an hour
        "2026-10-03T15:30:00Z", // Lord Howe, forward half an hour
    ]
    .iter()
    .map(|s| s.parse().expect("well-formed instant"))
    .collect()
}

const TEN_DAYS: i64 = 10 * 86_400;

fn price() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..1000,
        1 => Just(0i64),
        1 => Just(MAX_PRICE_MINOR),
    ]
}

/// Bands cut at 1 to 4 random minutes of the day; a cut at midnight is sometimes written 24:00
/// as an end, and a single cut gives one band covering the whole day from that minute.
fn arb_bands() -> impl Strategy<Value = Vec<Band>> {
    (
        proptest::collection::btree_set(0u16..1440, 1..5),
        proptest::collection::vec(price(), 4),
        any::<bool>(),
    )
        .prop_map(|(cuts, prices, midnight_as_24)| {
            let cuts: Vec<u16> = cuts.into_iter().collect();
            let at = |m: u16| TimeOfDay::new(m / 60, m % 60).expect("minute of the day");
            (0..cuts.len())
                .map(|i| {
                    let end = cuts[(i + 1) % cuts.len()];
                    Band {
                        name: None,
                        start: at(cuts[i]),
                        end: if end == 0 && midnight_as_24 && cuts.len() > 1 {
                            TimeOfDay::new(24, 0).expect("24:00 is allowed")
                        } else {
                            at(end)
                        },
                        unit_price: Money::cny(prices[i]),
                    }
                })
                .collect()
        })
}

fn arb_tariff() -> impl Strategy<Value = Tariff> {
    (
        0..ZONES.len(),
        0u32..=30,
        1u32..=60,
        prop::option::of((1u32..=180, price())),
        arb_bands(),
        prop::option::of((0i64..10_000, any::<bool>())),
        prop::option::of(0i64..50_000),
        prop::option::of(prop_oneof![Just(0i64), Just(300), 0i64..6000]),
    )
        .prop_map(
            |(zone, grace, unit, first, bands, daily, stay, minimum)| Tariff {
                currency: Currency::CNY,
                time_zone: ZONES[zone],
                grace_minutes: grace,
                unit_minutes: unit,
                first_period: first.map(|(minutes, price)| FirstPeriod {
                    minutes,
                    price: Money::cny(price),
                }),
                bands,
                daily_cap: daily.map(|(amount, rolling)| DailyCap {
                    amount: Money::cny(amount),
                    basis: if rolling {
                        CapBasis::Rolling24h
                    } else {
                        CapBasis::Calendar
                    },
                }),
                stay_cap: stay.map(Money::cny),
                minimum_charge: minimum.map(Money::cny),
                holidays: Vec::new(),
                holiday_bands: Vec::new(),
                classes: Vec::new(),
                pass_month_price: None,
                exit_window_minutes: parkpay_server::tariff::DEFAULT_EXIT_WINDOW_MINUTES,
            },
        )
}

/// An entry anywhere in 2026, a few days before or after a DST change, or a few minutes either
/// side of one of the tariff's band edges on some day.
fn arb_entry(t: &Tariff) -> impl Strategy<Value = DateTime<Utc>> {
    let base: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("instant");
    let anywhere = (0i64..365 * 86_400).prop_map(move |s| base + TimeDelta::seconds(s));
    let near_dst = (
        prop::sample::select(dst_changes()),
        -3 * 86_400i64..3 * 86_400,
    )
        .prop_map(|(change, s)| change + TimeDelta::seconds(s));
    let tz = t.time_zone;
    let edges: Vec<u16> = t.bands.iter().map(|b| b.start.minutes() % 1440).collect();
    let near_edge = (
        prop::sample::select(edges),
        0i64..365,
        -180i64..=180,
        prop::sample::select(vec![0i64, 0, 0, 59, 61, 301]),
    )
        .prop_map(move |(edge, day, offset_s, extra)| {
            let date = base.date_naive() + TimeDelta::days(day);
            let wall = date.and_time(chrono::NaiveTime::MIN) + TimeDelta::minutes(i64::from(edge));
            // A wall time in a DST gap has no instant: take the UTC reading instead.
            let at = tz
                .from_local_datetime(&wall)
                .earliest()
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(|| wall.and_utc());
            at + TimeDelta::seconds(offset_s + extra)
        });
    prop_oneof![anywhere, near_dst, near_edge]
}

/// A stay's length in seconds: anything up to ten days, short stays around grace and the first
/// period, and exact unit boundaries give or take a second.
fn arb_stay(t: &Tariff) -> impl Strategy<Value = i64> {
    let grace = i64::from(t.grace_minutes) * 60;
    let first = t.first_period.map_or(0, |f| i64::from(f.minutes) * 60);
    let unit = i64::from(t.unit_minutes) * 60;
    prop_oneof![
        3 => 1i64..TEN_DAYS,
        2 => 1i64..4 * 3600,
        2 => (0i64..200, -1i64..=1).prop_map(move |(n, d)| (first + n * unit + d).max(1)),
        1 => (-1i64..=1).prop_map(move |d| (grace + d).max(1)),
    ]
}

fn arb_case() -> impl Strategy<Value = (Tariff, DateTime<Utc>, i64)> {
    arb_tariff().prop_flat_map(|t| {
        let entry = arb_entry(&t);
        let stay = arb_stay(&t);
        (Just(t), entry, stay)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_engine_agrees_with_the_reference((t, entry, secs) in arb_case()) {
        prop_assert_eq!(t.validate(), Ok(()));
        let exit = entry + TimeDelta::seconds(secs);
        let q = quote(&t, entry, exit).expect("a valid tariff prices a ten-day stay");
        let expected = fee(&t, entry, exit);
        prop_assert_eq!(q.total.minor, expected, "quote {:#?}", q);
        let lines: i64 = q.lines.iter().map(|l| l.amount.minor).sum();
        prop_assert_eq!(lines, q.total.minor, "the lines must add up to the total");
    }
}

/// A tariff with holidays near `entry` (some free, some by holiday bands) and class rules, and
/// the terms of one stay: its class, up to two covered windows and maybe a visitor discount.
fn arb_rules_case() -> impl Strategy<Value = (Tariff, DateTime<Utc>, i64, StayTerms)> {
    arb_case().prop_flat_map(|(t, entry, secs)| {
        let holidays = prop::collection::vec((-1i64..12, any::<bool>()), 0..4);
        let classes = prop::collection::vec((0usize..4, 0u32..=400), 0..4);
        let covers = prop::collection::vec(
            (-3 * 86_400i64..TEN_DAYS, prop::option::of(1i64..5 * 86_400)),
            0..3,
        );
        let discount = prop::option::of(1u32..=99);
        let class = prop::option::of(0usize..4);
        let validation = prop::option::of((0u32..600, 0i64..3000));
        (
            Just((t, entry, secs)),
            holidays,
            arb_bands(),
            classes,
            covers,
            (discount, class, validation),
        )
            .prop_map(
                |(
                    (mut t, entry, secs),
                    holidays,
                    holiday_bands,
                    classes,
                    covers,
                    (off, class, validation),
                )| {
                    let all = [
                        VehicleClass::Small,
                        VehicleClass::Large,
                        VehicleClass::NewEnergy,
                        VehicleClass::Motorcycle,
                    ];
                    let day0 = entry.with_timezone(&t.time_zone).date_naive();
                    for (day, free) in holidays {
                        let date = day0 + TimeDelta::days(day);
                        if t.holidays.iter().all(|h| h.date != date) {
                            t.holidays.push(Holiday {
                                date,
                                name: None,
                                free,
                            });
                        }
                    }
                    if t.holidays.iter().any(|h| !h.free) {
                        t.holiday_bands = holiday_bands;
                    }
                    for (c, percent) in classes {
                        if t.classes.iter().all(|r| r.class != all[c]) {
                            t.classes.push(ClassRule {
                                class: all[c],
                                percent,
                            });
                        }
                    }
                    let terms = StayTerms {
                        class: class.map(|c| all[c]),
                        covered: covers
                            .into_iter()
                            .map(|(from, len)| {
                                let from = entry + TimeDelta::seconds(from);
                                (from, len.map(|l| from + TimeDelta::seconds(l)))
                            })
                            .collect(),
                        percent_off: off,
                        validation_minutes: validation.map_or(0, |v| v.0),
                        validation_amount: validation.map_or(0, |v| v.1),
                    };
                    (t, entry, secs, terms)
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_engine_agrees_with_the_reference_on_holidays_classes_and_lists(
        (t, entry, secs, terms) in arb_rules_case()
    ) {
        prop_assert_eq!(t.validate(), Ok(()));
        let exit = entry + TimeDelta::seconds(secs);
        let engine_terms = Terms {
            class: terms.class,
            covered: terms
                .covered
                .iter()
                .map(|&(from, until)| Cover { from, until, label: "pass".into() })
                .collect(),
            discount: terms.percent_off.map(|percent| Discount { percent, label: "visitor".into() }),
            validation: (terms.validation_minutes > 0 || terms.validation_amount > 0).then(|| {
                ValidationTerms {
                    minutes_off: terms.validation_minutes,
                    amount_off: terms.validation_amount,
                    label: "validation".into(),
                }
            }),
        };
        let q = quote_with(&t, entry, exit, &engine_terms).expect("a valid tariff prices the stay");
        let expected = fee_with(&t, entry, exit, &terms);
        prop_assert_eq!(q.total.minor, expected, "quote {:#?}", q);
        let lines: i64 = q.lines.iter().map(|l| l.amount.minor).sum();
        prop_assert_eq!(lines, q.total.minor, "the lines must add up to the total");
    }
}

// ---- the worked examples of docs/tariffs.md -------------------------------------------------

/// One receipt line as the doc writes it: `label  units × unit price = amount`.
fn parse_line(row: &str) -> (String, u64, i64, i64) {
    let bad = || format!("doc quote line {row:?} is not `label  n × price = amount`");
    let (left, amount) = row.rsplit_once('=').unwrap_or_else(|| panic!("{}", bad()));
    let (left, price) = left.rsplit_once('×').unwrap_or_else(|| panic!("{}", bad()));
    let (label, units) = left
        .trim()
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("{}", bad()));
    let num = |s: &str| {
        s.trim()
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("{}", bad()))
    };
    let units = u64::try_from(num(units)).unwrap_or_else(|_| panic!("{}", bad()));
    (label.trim().to_string(), units, num(price), num(amount))
}

#[test]
fn the_worked_examples_in_the_docs_hold() {
    let doc = include_str!("../../../docs/tariffs.md");
    let mut tariff: Option<Tariff> = None;
    let mut checked = 0;
    let mut block: Option<(String, Vec<&str>)> = None;
    for row in doc.lines() {
        match (&mut block, row.strip_prefix("```")) {
            (None, Some(info)) => block = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => {
                let (info, rows) = block.take().expect("inside a block");
                let text = rows.join("\n");
                if info == "json tariff" {
                    let t: Tariff = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("doc tariff does not parse: {e}\n{text}"));
                    t.validate().expect("doc tariff is valid");
                    tariff = Some(t);
                } else if info == "text quote" {
                    let t = tariff.as_ref().expect("a doc quote follows a doc tariff");
                    check_doc_quote(t, &rows);
                    checked += 1;
                }
            }
            (Some((_, rows)), None) => rows.push(row),
            (None, None) => {}
        }
    }
    assert!(
        checked >= 9,
        "docs/tariffs.md has {checked} worked examples"
    );
}

fn check_doc_quote(t: &Tariff, rows: &[&str]) {
    let mut entry = None;
    let mut exit = None;
    let mut total = None;
    let mut lines = Vec::new();
    let mut terms = Terms::default();
    let mut reference = StayTerms::default();
    for row in rows.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        // The stay's terms: `class large`, `covered pass FROM UNTIL`, `discount visitor 40`,
        // `merchant NAME MINUTES AMOUNT`.
        if let Some(v) = row.strip_prefix("merchant ") {
            let parts: Vec<&str> = v.split_whitespace().collect();
            let [name @ .., minutes, amount] = &parts[..] else {
                panic!("doc `merchant NAME MINUTES AMOUNT`: {row:?}");
            };
            let minutes: u32 = minutes.parse().expect("doc merchant minutes");
            let amount: i64 = amount.parse().expect("doc merchant amount");
            terms.validation = Some(ValidationTerms {
                minutes_off: minutes,
                amount_off: amount,
                label: format!("validation {}", name.join(" ")),
            });
            reference.validation_minutes = minutes;
            reference.validation_amount = amount;
        } else if let Some(v) = row.strip_prefix("class ") {
            let class = VehicleClass::parse(v.trim()).expect("doc class is a class");
            terms.class = Some(class);
            reference.class = Some(class);
        } else if let Some(v) = row.strip_prefix("covered ") {
            let parts: Vec<&str> = v.split_whitespace().collect();
            let [label, from, until] = parts[..] else {
                panic!("doc `covered LABEL FROM UNTIL`: {row:?}");
            };
            let instant = |s: &str| {
                DateTime::parse_from_rfc3339(s)
                    .expect("doc cover instants are RFC 3339")
                    .with_timezone(&Utc)
            };
            terms.covered.push(Cover {
                from: instant(from),
                until: Some(instant(until)),
                label: label.to_string(),
            });
            reference
                .covered
                .push((instant(from), Some(instant(until))));
        } else if let Some(v) = row.strip_prefix("discount ") {
            let (label, percent) = v.trim().rsplit_once(' ').expect("doc `discount LABEL N`");
            let percent: u32 = percent.parse().expect("doc discount is a percent");
            terms.discount = Some(Discount {
                percent,
                label: label.to_string(),
            });
            reference.percent_off = Some(percent);
        } else if let Some(v) = row.strip_prefix("entry") {
            entry = Some(DateTime::parse_from_rfc3339(v.trim()).expect("doc entry is RFC 3339"));
        } else if let Some(v) = row.strip_prefix("exit") {
            exit = Some(DateTime::parse_from_rfc3339(v.trim()).expect("doc exit is RFC 3339"));
        } else if let Some(v) = row.strip_prefix("total") {
            total = Some(v.trim().parse::<i64>().expect("doc total is minor units"));
        } else {
            lines.push(parse_line(row));
        }
    }
    let (Some(entry), Some(exit), Some(total)) = (entry, exit, total) else {
        panic!("a doc quote needs entry, exit and total: {rows:?}");
    };
    let (entry, exit) = (entry.with_timezone(&Utc), exit.with_timezone(&Utc));
    let q = quote_with(t, entry, exit, &terms).expect("the doc's stay prices");
    let engine: Vec<(String, u64, i64, i64)> = q
        .lines
        .iter()
        .map(|l| (l.label.clone(), l.units, l.unit_price.minor, l.amount.minor))
        .collect();
    assert_eq!(engine, lines, "doc lines for {entry} to {exit}");
    assert_eq!(q.total.minor, total, "doc total for {entry} to {exit}");
    assert_eq!(
        fee_with(t, entry, exit, &reference),
        total,
        "reference for {entry} to {exit}"
    );
}
