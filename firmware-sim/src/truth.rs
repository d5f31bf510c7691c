//! Ground truth: what physically happened, written down as it happens and never edited.
//!
//! The server's ledger is judged against this log, so it records only what the simulated world
//! knows first-hand (which car stood where, when the camera fired, whether the arm went up), never
//! what the server said about it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use parkpay_protocol::{Direction, PlateColour};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::SimError;

/// One physical fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A car exists, with its driver's arrangements.
    Car {
        car: u32,
        plate: String,
        colour: PlateColour,
        has_mandate: bool,
        wallet_fen: i64,
        driver_id: Option<Uuid>,
    },
    /// A car stood at a lane (one attempt; a car that backs out may try again).
    Passage {
        car: u32,
        direction: Direction,
        lane: String,
        attempt: u32,
        /// The camera's capture: the physical instant the stay is priced from.
        captured_at: DateTime<Utc>,
        /// What the camera published as its top candidate (smart mode).
        read: Option<String>,
        misread: bool,
        /// The arm opened for this car and it drove through.
        opened: bool,
        /// The arm did not open on arrival.
        held: bool,
        /// The driver paid by QR while standing at the barrier.
        paid: bool,
        /// What the lane's display told a held car ("line 1 / line 2"), if it told it anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shown: Option<String>,
    },
}

/// Everything ground truth knows about one car, folded from its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarTruth {
    pub car: u32,
    pub plate: String,
    pub colour: PlateColour,
    pub has_mandate: bool,
    pub wallet_fen: i64,
    pub driver_id: Option<Uuid>,
    /// The capture instant of the entry the arm opened for.
    pub entry_at: Option<DateTime<Utc>>,
    pub entry_lane: Option<String>,
    /// The capture instant of the exit the arm opened for.
    pub exit_at: Option<DateTime<Utc>>,
    pub exit_lane: Option<String>,
    /// Every exit capture of the car, in order: the arm may have opened on a later one than
    /// the server decided the stay on (the car backed out and came back).
    pub exit_tries: Vec<DateTime<Utc>>,
    /// Held at the exit at least once.
    pub exit_held: bool,
    pub paid_at_exit: bool,
    /// Exit tries on which the driver paid at the barrier and the arm still did not open.
    #[serde(default)]
    pub paid_not_let_out: u32,
}

impl CarTruth {
    pub fn let_in(&self) -> bool {
        self.entry_at.is_some()
    }

    pub fn let_out(&self) -> bool {
        self.exit_at.is_some()
    }
}

/// The append-only log, in memory and optionally as JSON lines in a file.
#[derive(Debug, Default)]
pub struct GroundTruth {
    facts: Mutex<Vec<Fact>>,
    file: Option<(PathBuf, Mutex<BufWriter<File>>)>,
}

impl GroundTruth {
    pub fn in_memory() -> GroundTruth {
        GroundTruth::default()
    }

    /// Also appends every fact to `path` (created or truncated) as one JSON line.
    pub fn with_file(path: &Path) -> Result<GroundTruth, SimError> {
        let file = File::create(path).map_err(|source| SimError::TruthLog {
            path: path.display().to_string(),
            source,
        })?;
        Ok(GroundTruth {
            facts: Mutex::default(),
            file: Some((path.to_path_buf(), Mutex::new(BufWriter::new(file)))),
        })
    }

    pub fn record(&self, fact: Fact) -> Result<(), SimError> {
        if let Some((path, file)) = &self.file {
            // Plain data; serialising it cannot fail.
            let line = serde_json::to_string(&fact).unwrap_or_default();
            // A poisoned lock means a writer panicked mid-line; keep appending regardless.
            let mut w = file.lock().unwrap_or_else(|e| e.into_inner());
            // Flushed per fact so the file is complete even if the run is cut short. Lines are
            // small, so the blocking write is cheaper than handing it to another thread.
            writeln!(w, "{line}")
                .and_then(|()| w.flush())
                .map_err(|source| SimError::TruthLog {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        self.facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fact);
        Ok(())
    }

    pub fn facts(&self) -> Vec<Fact> {
        self.facts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn cars(&self) -> Vec<CarTruth> {
        fold_cars(&self.facts())
    }
}

/// Reads back a fact log written by [`GroundTruth::with_file`]. A line that is not a fact is an
/// error naming its line number.
pub fn read_facts(path: &Path) -> Result<Vec<Fact>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::TruthLog {
        path: path.display().to_string(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| SimError::TruthLog {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: {e}", n + 1),
                ),
            })
        })
        .collect()
}

/// Folds a fact log into one summary per car, in car order.
pub fn fold_cars(facts: &[Fact]) -> Vec<CarTruth> {
    let mut cars: BTreeMap<u32, CarTruth> = BTreeMap::new();
    for f in facts {
        match f {
            Fact::Car {
                car,
                plate,
                colour,
                has_mandate,
                wallet_fen,
                driver_id,
            } => {
                cars.insert(
                    *car,
                    CarTruth {
                        car: *car,
                        plate: plate.clone(),
                        colour: *colour,
                        has_mandate: *has_mandate,
                        wallet_fen: *wallet_fen,
                        driver_id: *driver_id,
                        entry_at: None,
                        entry_lane: None,
                        exit_at: None,
                        exit_lane: None,
                        exit_tries: Vec::new(),
                        exit_held: false,
                        paid_at_exit: false,
                        paid_not_let_out: 0,
                    },
                );
            }
            Fact::Passage {
                car,
                direction,
                lane,
                captured_at,
                opened,
                held,
                paid,
                ..
            } => {
                let Some(c) = cars.get_mut(car) else {
                    continue;
                };
                match direction {
                    Direction::Entry => {
                        if *opened {
                            c.entry_at = Some(*captured_at);
                            c.entry_lane = Some(lane.clone());
                        }
                    }
                    Direction::Exit => {
                        c.exit_tries.push(*captured_at);
                        c.exit_held |= *held;
                        c.paid_at_exit |= *paid;
                        c.paid_not_let_out += u32::from(*paid && !*opened);
                        if *opened {
                            c.exit_at = Some(*captured_at);
                            c.exit_lane = Some(lane.clone());
                        }
                    }
                }
            }
        }
    }
    cars.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_try(attempt: u32, at: i64, opened: bool, paid: bool) -> Fact {
        Fact::Passage {
            car: 1,
            direction: Direction::Exit,
            lane: "out-1".into(),
            attempt,
            captured_at: DateTime::from_timestamp(at, 0).unwrap(),
            read: None,
            misread: false,
            opened,
            held: !opened,
            paid,
            shown: None,
        }
    }

    #[test]
    fn a_driver_who_paid_and_stayed_behind_the_arm_is_counted_per_try() {
        let facts = vec![
            Fact::Car {
                car: 1,
                plate: "京A12345".into(),
                colour: PlateColour::Blue,
                has_mandate: false,
                wallet_fen: 0,
                driver_id: None,
            },
            exit_try(1, 100, false, false), // held: asked to pay
            exit_try(2, 200, false, true),  // paid, the arm stayed down
            exit_try(3, 300, true, true),   // paid again (the same stay), let out
        ];
        let [car] = fold_cars(&facts).try_into().unwrap();
        assert_eq!(car.paid_not_let_out, 1);
        assert!(car.paid_at_exit && car.exit_held);
        assert_eq!(car.exit_at, DateTime::from_timestamp(300, 0));
        assert_eq!(car.exit_tries.len(), 3);
    }
}
