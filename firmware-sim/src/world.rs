//! A whole run: a lot's lanes, the traffic through them, and the report at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::{Clock, Direction, LaneId, LotId};
use reqwest::Url;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{example_tariff, Api, Charge};
use crate::devices::{ArmConfig, CameraConfig, CameraMode};
use crate::error::SimError;
use crate::mqtt::{DeviceContext, MqttUrl};
use crate::reference_tariff;
use crate::report::{audit, Audit, FeeFn, Ledger, Report};
use crate::rig::{LaneConfig, LaneRig};
use crate::tally::Tally;
use crate::traffic::{plan, run_car, CarContext, TrafficConfig};
use crate::truth::GroundTruth;

/// Everything about the simulated world of one run.
#[derive(Clone)]
pub struct WorldConfig {
    pub lot: LotId,
    /// Smart cameras (plate reads) when `None`; plain cameras sending rendered frames otherwise.
    pub frames: Option<crate::devices::SceneCamera>,
    /// The lot's lanes; at least one of each direction.
    pub lanes: Vec<(LaneId, Direction)>,
    pub traffic: TrafficConfig,
    pub arm: ArmConfig,
    pub misread_rate: f64,
    pub no_read_rate: f64,
    /// Real time a car takes to drive through an open barrier.
    pub drive_through: Duration,
    /// Real time a car waits for the arm before it counts as held.
    pub open_wait: Duration,
    /// Real time to wait, after the last car, for deductions to settle.
    pub settle_wait: Duration,
    /// Also write ground truth as JSON lines to this file.
    pub truth_log: Option<PathBuf>,
    /// The fee of a stay in fen. Without one, stays are priced by [`reference_tariff::fee`] with
    /// the lot's tariff as the server holds it, never by the server's own engine.
    pub fee: Option<FeeFn>,
    /// Create the lot with the example tariff of docs/api.md if the server does not know it.
    pub create_lot: bool,
    /// The created lot's exit window (`exit_window_minutes`), when not the tariff's 15 minutes:
    /// a run on a compressed clock needs it longer, or a car that comes back to an exit after
    /// half a minute of real time comes back days later.
    pub exit_window_minutes: Option<u32>,
    /// The created lot's spaces: entries are held as `lot_full` while they are all taken.
    pub capacity: u32,
    /// Live counts of the run (cars in and out, held, exceptions), for whoever watches it.
    pub tally: Arc<Tally>,
    /// The API token the run's operator calls carry (an admin's: it registers drivers).
    pub api_token: Option<String>,
    /// The sandbox provider's secret: drivers' QR payments are settled through it.
    pub sandbox_secret: Option<String>,
    /// The HTTP client the run's API calls go through; a default one when `None`.
    pub http_client: Option<reqwest::Client>,
    /// Real time the next car waits for the arm to come down after the car before.
    pub clear_wait: Duration,
    /// The attendant also lifts, by hand, the barrier for a car that has waited
    /// [`STUCK_AFTER`] at it although the server has already decided for that very capture
    /// (the decision reached a gateway that had restarted since the car arrived).
    pub lift_stuck_cars: bool,
    /// Deduction through an outside provider (WeChat Pay): drivers get a mandate of that
    /// provider under an openid, and the provider is told of them (plate, colour, openid,
    /// balance in fen). The sandbox's wallets when `None`.
    pub enrol: Option<Enrol>,
}

/// Tells an outside payment provider of a driver: plate, colour, openid, balance in fen.
#[derive(Clone)]
pub struct Enrol(pub Arc<EnrolFn>);

/// plate, colour (BLUE, GREEN, YELLOW), openid, balance in fen.
pub type EnrolFn = dyn Fn(&str, &str, &str, i64) + Send + Sync;

impl std::fmt::Debug for Enrol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrol(..)")
    }
}

/// How long a car waits at a barrier the server decided for before the attendant lifts it.
pub const STUCK_AFTER: Duration = Duration::from_secs(8);

/// How long the attendant gives a decision it has seen to reach the arm.
const DECISION_GRACE: Duration = Duration::from_secs(2);

/// A car the attendant sees at a barrier: since when, and since when the server has decided
/// for it.
struct Waiting {
    since: Instant,
    decided: Option<Instant>,
}

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            since: Instant::now(),
            decided: None,
        }
    }
}

impl std::fmt::Debug for WorldConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldConfig")
            .field("lot", &self.lot)
            .field("lanes", &self.lanes)
            .field("traffic", &self.traffic)
            .field("arm", &self.arm)
            .field("misread_rate", &self.misread_rate)
            .field("no_read_rate", &self.no_read_rate)
            .field("fee", &self.fee.as_ref().map(|_| "injected"))
            .finish_non_exhaustive()
    }
}

impl WorldConfig {
    /// One lot with two entry and two exit lanes, tuned so a day passes in about a minute at
    /// clock speed 1440: the arm moves in 150 ms, so even a grace-period stay is physically
    /// possible between two barriers.
    pub fn four_lanes(lot: LotId) -> Result<WorldConfig, SimError> {
        WorldConfig::with_lanes(lot, 2)
    }

    /// [`WorldConfig::four_lanes`] with `pairs` entry lanes (`in-1`, `in-2`, ...) and as many
    /// exit lanes (`out-1`, ...): a bigger lot passes more cars a minute.
    pub fn with_lanes(lot: LotId, pairs: usize) -> Result<WorldConfig, SimError> {
        if pairs == 0 {
            return Err(SimError::Config(
                "a lot needs at least one entry and one exit lane".into(),
            ));
        }
        let mut lanes = Vec::with_capacity(2 * pairs);
        for (prefix, direction) in [("in", Direction::Entry), ("out", Direction::Exit)] {
            for n in 1..=pairs {
                lanes.push((LaneId::parse(format!("{prefix}-{n}"))?, direction));
            }
        }
        Ok(WorldConfig {
            lot,
            frames: None,
            lanes,
            traffic: TrafficConfig::default(),
            arm: ArmConfig {
                open_time: Duration::from_millis(150),
                close_time: Duration::from_millis(150),
                ..ArmConfig::default()
            },
            misread_rate: 0.03,
            no_read_rate: 0.02,
            drive_through: Duration::from_millis(100),
            open_wait: Duration::from_secs(3),
            settle_wait: Duration::from_secs(30),
            truth_log: None,
            fee: None,
            create_lot: false,
            exit_window_minutes: None,
            capacity: 400,
            tally: Arc::default(),
            api_token: None,
            sandbox_secret: None,
            http_client: None,
            clear_wait: Duration::from_secs(5),
            lift_stuck_cars: false,
            enrol: None,
        })
    }

    fn lane_config(&self, n: usize, lane: &LaneId, direction: Direction) -> LaneConfig {
        LaneConfig {
            arm: self.arm.clone(),
            camera: CameraConfig {
                mode: match &self.frames {
                    Some(cam) => CameraMode::Frames(Box::new(cam.clone())),
                    None => CameraMode::Smart,
                },
                misread_rate: self.misread_rate,
                no_read_rate: self.no_read_rate,
                confidence: None,
                seed: self.traffic.seed.wrapping_add(1 + n as u64),
            },
            drive_through: self.drive_through,
            open_wait: self.open_wait,
            clear_wait: self.clear_wait,
            ..LaneConfig::new(self.lot.clone(), lane.clone(), direction)
        }
    }
}

/// Starts the lanes, runs the traffic against the server at `http` and the broker at `mqtt`,
/// waits for payments to settle, and judges the server's ledger.
pub async fn drive(
    world: WorldConfig,
    http: Url,
    mqtt: MqttUrl,
    clock: Arc<dyn Clock>,
) -> Result<Report, SimError> {
    let audit = drive_audited(world, http, mqtt, clock).await?;
    for m in &audit.mismatches {
        tracing::warn!("mismatch: {m}");
    }
    Ok(audit.report)
}

/// [`drive`], keeping the reason behind every mismatch.
pub async fn drive_audited(
    world: WorldConfig,
    http: Url,
    mqtt: MqttUrl,
    clock: Arc<dyn Clock>,
) -> Result<Audit, SimError> {
    let mut api = Api::new(&http);
    if let Some(c) = &world.http_client {
        api = api.with_client(c.clone());
    }
    if let Some(t) = &world.api_token {
        api = api.with_token(t.clone());
    }
    if let Some(s) = &world.sandbox_secret {
        api = api.with_sandbox_secret(s.clone());
    }
    if world.create_lot && !api.lot_exists(world.lot.as_str()).await? {
        let gateway = crate::demo::gateway_id(&world.lot)?;
        let mut tariff = example_tariff();
        if let Some(minutes) = world.exit_window_minutes {
            tariff["exit_window_minutes"] = minutes.into();
        }
        api.create_lot(
            world.lot.as_str(),
            "Simulated lot",
            world.capacity,
            &tariff,
            &world.lanes,
            &gateway,
        )
        .await?;
    }
    let truth = Arc::new(match &world.truth_log {
        Some(path) => GroundTruth::with_file(path)?,
        None => GroundTruth::in_memory(),
    });
    let ctx = DeviceContext::new(mqtt, clock.clone());
    let (mut entries, mut exits) = (Vec::new(), Vec::new());
    for (n, (lane, direction)) in world.lanes.iter().enumerate() {
        let rig = LaneRig::start(&ctx, world.lane_config(n, lane, *direction)).await?;
        match direction {
            Direction::Entry => entries.push(rig),
            Direction::Exit => exits.push(rig),
        }
    }
    if entries.is_empty() || exits.is_empty() {
        return Err(SimError::Config(
            "a world needs at least one entry and one exit lane".into(),
        ));
    }
    let cars = plan(&world.traffic, entries.len(), exits.len());
    let car_ctx = CarContext {
        api: api.clone(),
        clock: clock.clone(),
        truth: truth.clone(),
        entry_lanes: Arc::new(entries),
        exit_lanes: Arc::new(exits),
        retries: world.traffic.retries,
        wallet_prefix: format!("sim-{}-{:x}", world.lot, world.traffic.seed),
        start: Instant::now(),
        tally: world.tally.clone(),
        enrol: world.enrol.clone(),
    };
    tracing::info!(cars = cars.len(), "traffic starts");
    let attendant = tokio::spawn(attend(
        api.clone(),
        world.lot.to_string(),
        car_ctx.entry_lanes.clone(),
        car_ctx.exit_lanes.clone(),
        world.tally.clone(),
        world.lift_stuck_cars,
    ));
    let mut running = JoinSet::new();
    for car in cars {
        let ctx = car_ctx.clone();
        running.spawn(async move { run_car(&ctx, &car).await });
    }
    let mut first_error = None;
    while let Some(done) = running.join_next().await {
        let result = done.unwrap_or_else(|e| Err(SimError::Config(format!("car task: {e}"))));
        if let Err(e) = result {
            tracing::error!(error = %e, "a car could not complete its run");
            first_error.get_or_insert(e);
        }
    }
    attendant.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    let ledger = settled_ledger(&api, &world.lot, world.settle_wait).await?;
    let cars = truth.cars();
    let fee = match world.fee.clone() {
        Some(fee) => fee,
        None => {
            let tariff = api.lot_tariff(world.lot.as_str()).await?;
            reference_tariff::fee_fn(tariff)
        }
    };
    let audit = audit(&cars, &ledger, &fee);
    shutdown(car_ctx).await;
    Ok(audit)
}

async fn shutdown(ctx: CarContext) {
    for lanes in [ctx.entry_lanes, ctx.exit_lanes] {
        if let Ok(lanes) = Arc::try_unwrap(lanes) {
            for rig in lanes {
                rig.shutdown().await;
            }
        }
    }
}

/// The ledger once no charge is still moving (or the wait is over).
async fn settled_ledger(api: &Api, lot: &LotId, wait: Duration) -> Result<Ledger, SimError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(50);
    let charges = loop {
        let charges: Vec<Charge> = api.charges().await?;
        let moving = charges
            .iter()
            .filter(|c| c.status.is_worker_owned())
            .count();
        if moving == 0 || Instant::now() >= deadline {
            if moving > 0 {
                tracing::warn!(moving, "charges still in flight when the report was made");
            }
            break charges;
        }
        // Polling the payment worker's progress; there is no event to wait on over HTTP.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    };
    let sessions = api.sessions(Some(lot.as_str()), None, None).await?;
    Ok(Ledger { sessions, charges })
}

/// The lot's attendant: watches the exception queue and, for a passage whose plate could not be
/// read while the car still waits at the barrier, reads the plate off the car (the evidence photo)
/// and corrects it, as staff do in a real lot. Every exception it sees open goes into `tally`.
async fn attend(
    api: Api,
    lot: String,
    entries: Arc<Vec<LaneRig>>,
    exits: Arc<Vec<LaneRig>>,
    tally: Arc<Tally>,
    lift_stuck: bool,
) {
    let mut handled = std::collections::HashSet::new();
    // Cars standing at an exit (lane, capture instant) and since when the attendant sees them.
    let mut waiting: std::collections::HashMap<(String, chrono::DateTime<chrono::Utc>), Waiting> =
        std::collections::HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if lift_stuck {
            lift_stuck_cars(&api, &lot, &entries, &exits, &tally, &mut waiting).await;
        }
        let Ok(open) = api.open_exceptions(&lot).await else {
            continue;
        };
        for x in open {
            tally.exception(x.id);
            // Unread and unsure plates, and exits whose read matched nobody exactly (a misread
            // is held as no entry): the attendant compares the evidence with the car.
            if handled.contains(&x.id)
                || !matches!(
                    x.kind.as_str(),
                    "unreadable" | "low_confidence" | "no_entry"
                )
            {
                continue;
            }
            let rig = entries
                .iter()
                .chain(exits.iter())
                .find(|r| Some(r.lane().as_str()) == x.lane.as_deref());
            // Only the passage of the car standing there now: an earlier car may have backed out.
            let Some((plate, _)) = rig
                .and_then(LaneRig::car_at_barrier)
                .filter(|(_, arrived)| x.created_at >= *arrived)
            else {
                continue;
            };
            // The read was right but no stay has this plate: the entry was misread. The
            // attendant compares the car with the entry photo of the one look-alike stay the
            // exception names and matches them; with none (or several), a real exit without
            // entry, there is nothing to do here.
            let session = match (x.kind.as_str(), x.plate.as_deref() == Some(plate.as_str())) {
                ("no_entry", true) => match x.session_id {
                    Some(s) => Some(s),
                    None => continue,
                },
                // An unsure or missing read, or a misread exit: read the plate off the car.
                _ => None,
            };
            let id = x.id;
            handled.insert(id);
            match api.correct_plate(id, &plate, session).await {
                Ok(_) => tally.attended(&plate),
                Err(e) => tracing::warn!(error = %e, "the attendant could not correct a plate"),
            }
        }
    }
}

/// Lifts the barrier for a car that has waited [`STUCK_AFTER`] at a lane although the server
/// has already decided for that car's very capture (an entry opened its stay with it, an exit
/// closed its stay with it): the decision was made but did not move the arm, so the car would
/// otherwise wait for ever. An operator would check the stay on the dashboard and lift the
/// barrier by hand; this is that.
async fn lift_stuck_cars(
    api: &Api,
    lot: &str,
    entries: &[LaneRig],
    exits: &[LaneRig],
    tally: &Tally,
    waiting: &mut std::collections::HashMap<(String, chrono::DateTime<chrono::Utc>), Waiting>,
) {
    use crate::api::SessionStatus;
    let same = |at: Option<chrono::DateTime<chrono::Utc>>,
                captured: chrono::DateTime<chrono::Utc>| {
        at.is_some_and(|at: chrono::DateTime<chrono::Utc>| {
            (at - captured)
                .num_microseconds()
                .is_some_and(|us| us.abs() < 1000)
        })
    };
    let mut present = std::collections::HashSet::new();
    for rig in entries.iter().chain(exits) {
        let Some((plate, captured)) = rig.car_at_barrier() else {
            continue;
        };
        let key = (rig.lane().to_string(), captured);
        present.insert(key.clone());
        let w = waiting.entry(key).or_insert_with(Waiting::new);
        if w.since.elapsed() < STUCK_AFTER
            || rig.arm().state().position != parkpay_protocol::ArmPosition::Closed
        {
            continue;
        }
        let Ok(sessions) = api.sessions(Some(lot), Some(&plate), None).await else {
            continue;
        };
        let decided = sessions.iter().any(|s| match rig.direction() {
            Direction::Entry => s.status == SessionStatus::Open && same(s.entry_at, captured),
            Direction::Exit => s.status == SessionStatus::Closed && same(s.exit_at, captured),
        });
        if !decided {
            w.decided = None;
            continue;
        }
        // The decision may be on its way to the arm right now: only a decision that has been
        // there for a while without moving the arm means the arm will not move.
        if w.decided.get_or_insert_with(Instant::now).elapsed() < DECISION_GRACE {
            continue;
        }
        tracing::warn!(lane = %rig.lane(), plate, "the server decided for this car but the barrier did not open: lifting it by hand");
        match api
            .open_barrier(
                lot,
                rig.lane().as_str(),
                "decided for this car; the barrier did not open",
            )
            .await
        {
            // The next look finds the arm moving, then the car gone; if the command was lost
            // (the broker restarting), the car is still there after another wait, and the
            // attendant lifts again.
            Ok(()) => {
                tally.lifted();
                *w = Waiting::new();
            }
            Err(e) => tracing::warn!(error = %e, "the attendant could not lift the barrier"),
        }
    }
    waiting.retain(|k, _| present.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lot_gets_as_many_exits_as_entries_and_needs_one_of_each() {
        let lot = LotId::parse("lot").unwrap();
        let w = WorldConfig::with_lanes(lot.clone(), 3).unwrap();
        let names: Vec<(String, Direction)> = w
            .lanes
            .iter()
            .map(|(l, d)| (l.as_str().to_string(), *d))
            .collect();
        assert_eq!(
            names,
            [
                ("in-1", Direction::Entry),
                ("in-2", Direction::Entry),
                ("in-3", Direction::Entry),
                ("out-1", Direction::Exit),
                ("out-2", Direction::Exit),
                ("out-3", Direction::Exit),
            ]
            .map(|(l, d)| (l.to_string(), d))
        );
        assert_eq!(WorldConfig::four_lanes(lot.clone()).unwrap().lanes.len(), 4);
        assert!(WorldConfig::with_lanes(lot, 0).is_err());
    }
}
