//! The verdict: the server's ledger held against ground truth and the tariff.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parkpay_protocol::plate::match_key;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{Charge, ChargeStatus, Session, SessionStatus};
use crate::truth::CarTruth;

/// The tariff's fee for a stay (entry, exit), in fen. Injected, so a run prices ground truth
/// independently of the server (normally with [`crate::reference_tariff::fee`]).
pub type FeeFn = Arc<dyn Fn(DateTime<Utc>, DateTime<Utc>) -> i64 + Send + Sync>;

/// What the server wrote down, as fetched through its API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub sessions: Vec<Session>,
    pub charges: Vec<Charge>,
}

/// The summary a run ends with. A correct system reports `entries == exits == cars`,
/// `charged_fen == expected_fen` and no mismatches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Cars in ground truth.
    pub cars: u64,
    /// The server's sessions for these cars with an entry.
    pub entries: u64,
    /// ...and with an exit.
    pub exits: u64,
    /// The server's charges of a non-zero amount for these cars (waived ones excluded),
    /// whatever became of them.
    pub charged: u64,
    /// The tariff over every ground-truth stay.
    pub expected_fen: i64,
    /// The amounts of those charges.
    pub charged_fen: i64,
    /// Cars whose outcome differs from what the tariff and their wallet say it should be.
    pub mismatches: u64,
}

/// One car the server got wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub car: u32,
    pub plate: String,
    pub kind: MismatchKind,
    pub reason: String,
}

/// What kind of wrong a mismatch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// Something that happened is missing: a car kept in or out, a stay or a charge not
    /// recorded, a session left open.
    Lost,
    /// A stay recorded, or charged, more than once.
    Double,
    /// Recorded once, but wrongly: another amount, another status, paid the wrong way.
    Wrong,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "car {} ({}): {}", self.car, self.plate, self.reason)
    }
}

/// The report and the reasons behind its mismatch count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub report: Report,
    pub mismatches: Vec<Mismatch>,
}

/// The ledger rows that belong to one car. Plates are unique per car after confusable folding,
/// so a session belongs to the car whose folded plate it carries, even when read wrongly.
struct CarLedger<'a> {
    sessions: Vec<&'a Session>,
    charges: Vec<&'a Charge>,
}

fn carve<'a>(car: &CarTruth, ledger: &'a Ledger) -> CarLedger<'a> {
    let key = match_key(&car.plate);
    let sessions: Vec<&Session> = ledger
        .sessions
        .iter()
        .filter(|s| match_key(&s.plate) == key)
        .collect();
    let ids: HashSet<Uuid> = sessions.iter().map(|s| s.id).collect();
    let charges = ledger
        .charges
        .iter()
        .filter(|c| {
            ids.contains(&c.session_id) || (c.driver_id.is_some() && c.driver_id == car.driver_id)
        })
        .collect();
    CarLedger { sessions, charges }
}

/// The exit instant a car's stay is priced at: the one its single session was closed on, when
/// that is one of the car's own exit captures up to the one the arm opened for (the car was at
/// the exit then; its barrier did not open and it came back); otherwise `None`, and the stay is
/// priced at the capture the arm opened for.
fn priced_exit(car: &CarTruth, rows: &CarLedger<'_>) -> Option<DateTime<Utc>> {
    let [s] = rows.sessions.as_slice() else {
        return None;
    };
    let closed = s.exit_at?;
    let opened = car.exit_at?;
    car.exit_tries
        .iter()
        .filter(|t| **t <= opened)
        .find(|t| {
            (closed - **t)
                .num_microseconds()
                .is_some_and(|us| us.abs() < 1000)
        })
        .copied()
}

/// Money that was actually asked of somebody.
fn is_money(c: &Charge) -> bool {
    c.amount.minor > 0 && c.status != ChargeStatus::Waived
}

/// What went wrong for one car, if anything.
fn judge(car: &CarTruth, rows: &CarLedger<'_>, fee: &FeeFn) -> Option<(MismatchKind, String)> {
    use MismatchKind::{Double, Lost, Wrong};
    let (Some(entry), Some(exit)) = (car.entry_at, car.exit_at) else {
        return Some((
            Lost,
            if car.let_in() {
                "never let out".to_string()
            } else {
                "never let in".to_string()
            },
        ));
    };
    match rows.sessions.as_slice() {
        [s] if s.status == SessionStatus::Closed => {}
        [s] => return Some((Lost, format!("session is {:?}, not closed", s.status))),
        other => {
            let kind = if other.is_empty() { Lost } else { Double };
            return Some((
                kind,
                format!("{} sessions on the server, expected 1", other.len()),
            ));
        }
    }
    let due = fee(entry, priced_exit(car, rows).unwrap_or(exit));
    let money: Vec<&&Charge> = rows.charges.iter().filter(|c| is_money(c)).collect();
    if due == 0 {
        return (!money.is_empty()).then(|| {
            (
                Wrong,
                format!("charged {} for a free stay", money[0].amount),
            )
        });
    }
    let [charge] = money.as_slice() else {
        let kind = if money.is_empty() { Lost } else { Double };
        return Some((
            kind,
            format!("{} charges, expected one of {due} fen", money.len()),
        ));
    };
    if charge.amount.minor != due {
        return Some((
            Wrong,
            format!("charged {} fen, tariff says {due}", charge.amount.minor),
        ));
    }
    let (expected, held_ok) = if !car.has_mandate {
        (ChargeStatus::Succeeded, true)
    } else if car.wallet_fen >= due {
        (ChargeStatus::Succeeded, false)
    } else {
        (ChargeStatus::Arrears, false)
    };
    if charge.status != expected {
        return Some((
            Wrong,
            format!("charge is {:?}, expected {expected:?}", charge.status),
        ));
    }
    // Being held for a no-read is the lane doing its job; being asked to pay is not.
    if car.has_mandate && car.paid_at_exit {
        return Some((
            Wrong,
            "asked to pay at the exit despite a mandate".to_string(),
        ));
    }
    if held_ok && !car.paid_at_exit {
        return Some((Wrong, "let out without paying at the exit".to_string()));
    }
    None
}

impl Report {
    pub fn compute(cars: &[CarTruth], ledger: &Ledger, fee: &FeeFn) -> Report {
        audit(cars, ledger, fee).report
    }
}

/// Holds the ledger against ground truth, car by car.
pub fn audit(cars: &[CarTruth], ledger: &Ledger, fee: &FeeFn) -> Audit {
    let mut report = Report {
        cars: cars.len() as u64,
        ..Report::default()
    };
    let mut mismatches = Vec::new();
    let mut counted: HashSet<Uuid> = HashSet::new();
    for car in cars {
        let rows = carve(car, ledger);
        for s in &rows.sessions {
            report.entries += u64::from(s.entry_at.is_some());
            report.exits += u64::from(s.exit_at.is_some());
        }
        for c in rows.charges.iter().filter(|c| is_money(c)) {
            // A charge reached both by session and by driver is still one charge.
            if counted.insert(c.id) {
                report.charged += 1;
                report.charged_fen += c.amount.minor;
            }
        }
        if let (Some(entry), Some(exit)) = (car.entry_at, car.exit_at) {
            report.expected_fen += fee(entry, priced_exit(car, &rows).unwrap_or(exit));
        }
        if let Some((kind, reason)) = judge(car, &rows, fee) {
            mismatches.push(Mismatch {
                car: car.car,
                plate: car.plate.clone(),
                kind,
                reason,
            });
        }
    }
    report.mismatches = mismatches.len() as u64;
    Audit { report, mismatches }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use parkpay_protocol::{Money, PlateColour};

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    /// Free for 15 minutes, then 100 fen per started hour.
    fn fee() -> FeeFn {
        Arc::new(|a: DateTime<Utc>, b: DateTime<Utc>| {
            let m = (b - a).num_minutes();
            if m < 15 {
                0
            } else {
                (m + 59) / 60 * 100
            }
        })
    }

    fn car(n: u32, plate: &str, mandate: bool, wallet: i64, stay: Option<(i64, i64)>) -> CarTruth {
        CarTruth {
            car: n,
            plate: plate.to_string(),
            colour: PlateColour::Blue,
            has_mandate: mandate,
            wallet_fen: wallet,
            driver_id: Some(Uuid::from_u128(u128::from(n))),
            entry_at: stay.map(|(a, _)| t(a)),
            entry_lane: stay.map(|_| "in-1".to_string()),
            exit_at: stay.map(|(_, b)| t(b)),
            exit_lane: stay.map(|_| "out-1".to_string()),
            exit_tries: stay.map(|(_, b)| vec![t(b)]).unwrap_or_default(),
            exit_held: !mandate,
            paid_at_exit: !mandate,
            paid_not_let_out: 0,
        }
    }

    fn session(n: u128, plate: &str, stay: (i64, i64)) -> Session {
        Session {
            id: Uuid::from_u128(1000 + n),
            lot: "lot1".into(),
            plate: plate.into(),
            status: SessionStatus::Closed,
            entry_at: Some(t(stay.0)),
            exit_at: Some(t(stay.1)),
            fee: None,
            charge_id: None,
        }
    }

    fn charge(n: u128, fen: i64, status: ChargeStatus) -> Charge {
        Charge {
            id: Uuid::from_u128(2000 + n),
            session_id: Uuid::from_u128(1000 + n),
            driver_id: Some(Uuid::from_u128(n)),
            amount: Money::cny(fen),
            status,
            method: None,
        }
    }

    #[test]
    fn a_correct_ledger_has_no_mismatches_and_adds_up() {
        let cars = vec![
            car(1, "京A12345", true, 100_000, Some((0, 150))), // 300 fen, deducted
            car(2, "京A22345", true, 0, Some((10, 75))),       // 200 fen, arrears
            car(3, "京A32345", false, 0, Some((20, 80))),      // 100 fen, paid at exit
            car(4, "京A42345", true, 100_000, Some((30, 40))), // grace
        ];
        let ledger = Ledger {
            sessions: vec![
                session(1, "京A12345", (0, 150)),
                // Read wrongly at the entry; the folded plate still ties it to car 2.
                session(2, "京AZ2345", (10, 75)),
                session(3, "京A32345", (20, 80)),
                session(4, "京A42345", (30, 40)),
                session(9, "沪B99999", (0, 10)), // another run's car: not ours
            ],
            charges: vec![
                charge(1, 300, ChargeStatus::Succeeded),
                charge(2, 200, ChargeStatus::Arrears),
                Charge {
                    driver_id: None,
                    ..charge(3, 100, ChargeStatus::Succeeded)
                },
                charge(4, 0, ChargeStatus::Succeeded),
                charge(9, 700, ChargeStatus::Succeeded),
            ],
        };
        let a = audit(&cars, &ledger, &fee());
        assert_eq!(a.mismatches, vec![]);
        assert_eq!(
            a.report,
            Report {
                cars: 4,
                entries: 4,
                exits: 4,
                charged: 3,
                expected_fen: 600,
                charged_fen: 600,
                mismatches: 0,
            }
        );
        let json = serde_json::to_value(a.report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cars":4,"entries":4,"exits":4,"charged":3,
                "expected_fen":600,"charged_fen":600,"mismatches":0})
        );
    }

    #[test]
    fn a_stay_is_priced_at_the_exit_it_was_closed_on_if_the_car_was_there() {
        // Car 1 was at the exit at 80 (its barrier did not open) and left at 200: the stay
        // closed at 80 is right. Car 2's stay closed at 100, when it was not at the exit.
        let came_back = |n, plate: &str| CarTruth {
            exit_tries: vec![t(80), t(200)],
            ..car(n, plate, true, 100_000, Some((20, 200)))
        };
        let ledger = Ledger {
            sessions: vec![
                session(1, "京A12345", (20, 80)),
                session(2, "京A22345", (20, 100)),
            ],
            charges: vec![
                charge(1, 100, ChargeStatus::Succeeded),
                charge(2, 200, ChargeStatus::Succeeded),
            ],
        };
        let a = audit(
            &[came_back(1, "京A12345"), came_back(2, "京A22345")],
            &ledger,
            &fee(),
        );
        let broken: Vec<(u32, MismatchKind)> =
            a.mismatches.iter().map(|m| (m.car, m.kind)).collect();
        assert_eq!(
            broken,
            vec![(2, MismatchKind::Wrong)],
            "{:#?}",
            a.mismatches
        );
        // Car 2 is expected at its real exit (20 to 200: 300 fen).
        assert_eq!(a.report.expected_fen, 100 + 300);
    }

    #[test]
    fn a_stay_recorded_or_charged_twice_is_double() {
        let cars = vec![
            car(1, "京A12345", true, 100_000, Some((0, 150))),
            car(2, "京A22345", true, 100_000, Some((0, 150))),
        ];
        let ledger = Ledger {
            sessions: vec![
                session(1, "京A12345", (0, 150)),
                session(2, "京A22345", (0, 150)),
                Session {
                    id: Uuid::from_u128(1003),
                    ..session(2, "京A22345", (0, 150))
                },
            ],
            charges: vec![
                charge(1, 300, ChargeStatus::Succeeded),
                Charge {
                    id: Uuid::from_u128(2999),
                    ..charge(1, 300, ChargeStatus::Succeeded)
                },
                charge(2, 300, ChargeStatus::Succeeded),
            ],
        };
        let a = audit(&cars, &ledger, &fee());
        let kinds: Vec<(u32, MismatchKind)> =
            a.mismatches.iter().map(|m| (m.car, m.kind)).collect();
        assert_eq!(
            kinds,
            vec![(1, MismatchKind::Double), (2, MismatchKind::Double)],
            "{:#?}",
            a.mismatches
        );
    }

    #[test]
    fn every_kind_of_wrong_outcome_is_counted_once_per_car() {
        let cars = vec![
            car(1, "京A12345", true, 100_000, Some((0, 150))), // overcharged
            car(2, "京A22345", true, 0, Some((10, 75))),       // charge succeeded from nothing
            car(3, "京A32345", false, 0, Some((20, 80))),      // no charge at all
            car(4, "京A42345", true, 100_000, Some((30, 40))), // charged in grace
            car(5, "京A52345", true, 100_000, None),           // never let in
            CarTruth {
                exit_at: None,
                ..car(6, "京A62345", true, 100_000, Some((0, 90)))
            }, // kept inside
        ];
        let ledger = Ledger {
            sessions: vec![
                session(1, "京A12345", (0, 150)),
                session(2, "京A22345", (10, 75)),
                session(3, "京A32345", (20, 80)),
                session(4, "京A42345", (30, 40)),
            ],
            charges: vec![
                charge(1, 400, ChargeStatus::Succeeded),
                charge(2, 200, ChargeStatus::Succeeded),
                charge(4, 100, ChargeStatus::Succeeded),
            ],
        };
        let a = audit(&cars, &ledger, &fee());
        let broken: Vec<u32> = a.mismatches.iter().map(|m| m.car).collect();
        assert_eq!(broken, vec![1, 2, 3, 4, 5, 6], "{:#?}", a.mismatches);
        use MismatchKind::{Lost, Wrong};
        let kinds: Vec<MismatchKind> = a.mismatches.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, vec![Wrong, Wrong, Lost, Wrong, Lost, Lost]);
        assert_eq!(a.report.cars, 6);
        assert_eq!(a.report.charged, 3);
        assert_eq!(a.report.charged_fen, 700);
        // Cars 5 and 6 have no complete stay to price: 300 + 200 + 100 + 0.
        assert_eq!(a.report.expected_fen, 600);
        assert_eq!(a.report.mismatches, 6);
    }
}
