//! The traffic generator: who comes, when, for how long, and how each car behaves at a lane.
//!
//! Planning is pure and seeded ([`plan`]), so the same seed gives the same cars, plates, stays
//! and wallets. Running a plan ([`run_car`]) is where time, MQTT and HTTP come in: a car sets up
//! its driver account, waits for its arrival, enters, stays, and leaves, paying at the exit by
//! QR code when it has no mandate.

use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::plate::match_key;
use parkpay_protocol::{Clock, Direction, Money, PlateColour};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::api::{Api, SessionStatus};
use crate::error::SimError;
use crate::plates::PlateBook;
use crate::rig::{LaneRig, Vehicle, Waited};
use crate::tally::Tally;
use crate::truth::{Fact, GroundTruth};

/// What kind of stay a car makes; the tariff treats each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StayKind {
    /// Within the free period.
    Grace,
    /// An errand to an afternoon.
    Short,
    /// Into the next day.
    Overnight,
    /// Several days.
    MultiDay,
}

/// One band of the dwell-time mix: its share of cars and its range of stays (simulated time).
#[derive(Debug, Clone, PartialEq)]
pub struct DwellBand {
    pub kind: StayKind,
    pub share: f64,
    pub min: Duration,
    pub max: Duration,
}

/// How long cars stay, as a mix of bands.
#[derive(Debug, Clone, PartialEq)]
pub struct DwellMix {
    pub bands: Vec<DwellBand>,
}

const MIN: u64 = 60;
const HOUR: u64 = 60 * MIN;

impl Default for DwellMix {
    /// Some in the 15-minute grace period, most from 30 minutes to 6 hours, some overnight and a
    /// few over several days.
    fn default() -> Self {
        let band = |kind, share, min: u64, max: u64| DwellBand {
            kind,
            share,
            min: Duration::from_secs(min),
            max: Duration::from_secs(max),
        };
        DwellMix {
            bands: vec![
                band(StayKind::Grace, 0.12, 7 * MIN, 12 * MIN),
                band(StayKind::Short, 0.70, 30 * MIN, 6 * HOUR),
                band(StayKind::Overnight, 0.13, 10 * HOUR, 16 * HOUR),
                band(StayKind::MultiDay, 0.05, 26 * HOUR, 50 * HOUR),
            ],
        }
    }
}

impl DwellMix {
    pub fn sample(&self, rng: &mut impl Rng) -> (StayKind, Duration) {
        let total: f64 = self.bands.iter().map(|b| b.share).sum();
        let mut x = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
        let last = self.bands.len().saturating_sub(1);
        for (i, b) in self.bands.iter().enumerate() {
            if x < b.share || i == last {
                let span = b.max.saturating_sub(b.min).as_secs_f64();
                return (
                    b.kind,
                    b.min + Duration::from_secs_f64(rng.gen_range(0.0..=span)),
                );
            }
            x -= b.share;
        }
        // Only reached with no bands at all: everybody drops in for an hour.
        (StayKind::Short, Duration::from_secs(HOUR))
    }
}

/// The traffic: how many cars, how they arrive and stay, and who can pay how.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub cars: u32,
    pub seed: u64,
    /// Mean gap between arrivals (simulated time); arrivals are a Poisson process.
    pub mean_interarrival: Duration,
    pub dwell: DwellMix,
    /// Drivers with an active deduction mandate.
    pub mandate_share: f64,
    /// Drivers whose sandbox wallet holds nothing.
    pub empty_wallet_share: f64,
    /// Green new-energy plates among the cars.
    pub green_share: f64,
    /// Balance of a wallet that is not empty, in fen.
    pub wallet_fen: i64,
    /// Times a car that is not let through backs up and tries again.
    pub retries: u32,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            cars: 40,
            seed: 1,
            mean_interarrival: Duration::from_secs(4 * MIN),
            dwell: DwellMix::default(),
            mandate_share: 0.7,
            empty_wallet_share: 0.1,
            green_share: 0.2,
            wallet_fen: 1_000_000,
            retries: 2,
        }
    }
}

/// One car's part in the run, fixed before anything moves.
#[derive(Debug, Clone, PartialEq)]
pub struct CarPlan {
    pub car: u32,
    pub vehicle: Vehicle,
    pub has_mandate: bool,
    pub wallet_fen: i64,
    /// When the car reaches the entry lane, after the start (simulated time).
    pub arrives_after: Duration,
    pub kind: StayKind,
    /// From entry capture to exit arrival (simulated time).
    pub dwell: Duration,
    /// Indexes into the entry lanes and the exit lanes.
    pub entry_lane: usize,
    pub exit_lane: usize,
}

/// Plans every car of a run. Pure: the same config gives the same plan.
pub fn plan(cfg: &TrafficConfig, entry_lanes: usize, exit_lanes: usize) -> Vec<CarPlan> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut book = PlateBook::new();
    let mut at = Duration::ZERO;
    let mean = cfg.mean_interarrival.as_secs_f64();
    (0..cfg.cars)
        .map(|car| {
            // Exponential gaps: 1 - U lies in (0, 1], so the logarithm is finite.
            let u: f64 = rng.gen();
            at += Duration::from_secs_f64(-(1.0 - u).ln() * mean);
            let colour = if rng.gen_bool(cfg.green_share.clamp(0.0, 1.0)) {
                PlateColour::Green
            } else {
                PlateColour::Blue
            };
            let plate = book.issue(&mut rng, colour);
            let has_mandate = rng.gen_bool(cfg.mandate_share.clamp(0.0, 1.0));
            let empty = rng.gen_bool(cfg.empty_wallet_share.clamp(0.0, 1.0));
            let (kind, dwell) = cfg.dwell.sample(&mut rng);
            CarPlan {
                car,
                vehicle: Vehicle { plate, colour },
                has_mandate,
                wallet_fen: if empty { 0 } else { cfg.wallet_fen },
                arrives_after: at,
                kind,
                dwell,
                entry_lane: rng.gen_range(0..entry_lanes.max(1)),
                exit_lane: rng.gen_range(0..exit_lanes.max(1)),
            }
        })
        .collect()
}

/// What one car needs while it runs.
#[derive(Debug, Clone)]
pub struct CarContext {
    pub api: Api,
    pub clock: Arc<dyn Clock>,
    pub truth: Arc<GroundTruth>,
    pub entry_lanes: Arc<Vec<LaneRig>>,
    pub exit_lanes: Arc<Vec<LaneRig>>,
    pub retries: u32,
    /// Prefix of wallet references, so runs with different seeds never share a wallet.
    pub wallet_prefix: String,
    /// The real instant the run started; arrivals are scheduled from it.
    pub start: Instant,
    /// Live counts for whoever watches the run.
    pub tally: Arc<Tally>,
    /// An outside payment provider to tell of each mandated driver.
    pub enrol: Option<crate::world::Enrol>,
}

/// Registers the car's driver, then lives its plan: arrive, enter, stay, leave.
pub async fn run_car(ctx: &CarContext, plan: &CarPlan) -> Result<(), SimError> {
    let lived = live(ctx, plan).await;
    ctx.tally.done();
    lived
}

async fn live(ctx: &CarContext, plan: &CarPlan) -> Result<(), SimError> {
    // Drivers sign up just before they first drive in, not all at once: a long run plans
    // many thousands of cars, and registering them together would exhaust connections.
    tokio::time::sleep_until(ctx.start + ctx.clock.real(plan.arrives_after)).await;
    let driver = register(ctx, plan).await?;
    ctx.truth.record(Fact::Car {
        car: plan.car,
        plate: plan.vehicle.plate.as_str().to_string(),
        colour: plan.vehicle.colour,
        has_mandate: plan.has_mandate,
        wallet_fen: plan.wallet_fen,
        driver_id: Some(driver),
    })?;
    let Some(entry) = ctx.entry_lanes.get(plan.entry_lane) else {
        return Err(SimError::Config("no entry lane".into()));
    };
    let Some(exit) = ctx.exit_lanes.get(plan.exit_lane) else {
        return Err(SimError::Config("no exit lane".into()));
    };
    let Some(entered) = go_through(ctx, plan, entry, false).await? else {
        tracing::info!(car = plan.car, plate = %plan.vehicle.plate, "turned away at the entry");
        return Ok(());
    };
    // The stay runs from the entry capture; physics may make it a little longer than planned.
    tokio::time::sleep_until(entered + ctx.clock.real(plan.dwell)).await;
    if go_through(ctx, plan, exit, true).await?.is_none() {
        tracing::warn!(car = plan.car, plate = %plan.vehicle.plate, "never let out");
    }
    Ok(())
}

async fn register(ctx: &CarContext, plan: &CarPlan) -> Result<uuid::Uuid, SimError> {
    let name = format!("Driver {}", plan.car);
    let phone = format!("138{:08}", plan.car);
    let driver = ctx.api.create_driver(&name, &phone).await?;
    ctx.api
        .add_vehicle(driver, plan.vehicle.plate.as_str(), plan.vehicle.colour)
        .await?;
    let wallet = format!("{}-{}", ctx.wallet_prefix, plan.car);
    if let Some(enrol) = &ctx.enrol {
        if plan.has_mandate {
            let colour = match plan.vehicle.colour {
                parkpay_protocol::PlateColour::Green => "GREEN",
                parkpay_protocol::PlateColour::Yellow => "YELLOW",
                _ => "BLUE",
            };
            (enrol.0)(
                plan.vehicle.plate.as_str(),
                colour,
                &wallet,
                plan.wallet_fen,
            );
            ctx.api
                .create_mandate_with(driver, "wechat", &wallet)
                .await?;
        }
        return Ok(driver);
    }
    ctx.api
        .create_wallet(&wallet, Money::cny(plan.wallet_fen))
        .await?;
    if plan.has_mandate {
        ctx.api.create_mandate(driver, &wallet).await?;
    }
    Ok(driver)
}

/// Drives up to a lane until the arm opens or the car gives up. Returns the real instant of the
/// capture the arm opened for.
async fn go_through(
    ctx: &CarContext,
    plan: &CarPlan,
    lane: &LaneRig,
    exiting: bool,
) -> Result<Option<Instant>, SimError> {
    for attempt in 0..=ctx.retries {
        let mut p = lane.arrive(&plan.vehicle).await?;
        let captured_real = Instant::now();
        let mut paid = false;
        let mut opened = matches!(p.wait(lane.open_wait()).await, Waited::Opened);
        // Counted as held until the car drives through or backs out.
        let held = (!opened).then(|| ctx.tally.hold());
        if !opened && exiting {
            let read = p.capture().read.clone();
            let prompt = p.pay_prompt().map(str::to_string);
            paid = pay_at_exit(ctx, plan, read.as_deref(), prompt.as_deref()).await;
            if paid {
                // After paying, only the arm matters; a repeated prompt is the display catching up.
                opened = p.wait_open(lane.open_wait()).await;
            }
        }
        let shown = if opened { None } else { p.shown() };
        let outcome = if opened {
            p.drive_through().await?
        } else {
            p.back_out().await?
        };
        drop(held);
        if outcome.opened {
            match lane.direction() {
                Direction::Entry => ctx.tally.entered(),
                Direction::Exit => ctx.tally.left(),
            }
        }
        ctx.truth.record(Fact::Passage {
            car: plan.car,
            direction: lane.direction(),
            lane: lane.lane().to_string(),
            attempt,
            captured_at: outcome.capture.captured_at,
            read: outcome.capture.read.clone(),
            misread: outcome.capture.misread,
            opened: outcome.opened,
            held: outcome.held,
            paid,
            shown,
        })?;
        if outcome.opened {
            return Ok(Some(captured_real));
        }
    }
    Ok(None)
}

/// A held driver pays the stay the server is waiting on, by QR. The pay link on the display names
/// the stay when it carries an id; otherwise the driver looks the stay up by the plate on the car,
/// then by what the camera made of it, then among all waiting stays by the folded plate (the
/// entry may have been misread). True when a payment went through, or may have (its answer was
/// lost on the way).
async fn pay_at_exit(
    ctx: &CarContext,
    plan: &CarPlan,
    read: Option<&str>,
    prompt: Option<&str>,
) -> bool {
    if let Some(id) = prompt.and_then(session_in_link) {
        match ctx.api.pay_session(id).await {
            Ok(_) => return true,
            // The answer was lost (the server went down meanwhile): the payment may have gone
            // through, as the driver's phone would find out later.
            Err(e @ SimError::Http { .. }) => {
                tracing::warn!(car = plan.car, error = %e, "the payment's answer was lost");
                return true;
            }
            Err(e) => {
                tracing::warn!(car = plan.car, error = %e, "the pay link was refused; looking the stay up")
            }
        }
    }
    let own = plan.vehicle.plate.as_str();
    let mut lookups: Vec<Option<&str>> = vec![Some(own)];
    lookups.extend(read.filter(|r| *r != own).map(Some));
    lookups.push(None);
    let key = plan.vehicle.plate.match_key();
    for plate in lookups {
        let sessions = match ctx
            .api
            .sessions(None, plate, Some(SessionStatus::AwaitingPayment))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(car = plan.car, error = %e, "could not look up the stay to pay");
                continue;
            }
        };
        let Some(session) = sessions.iter().find(|s| match_key(&s.plate) == key) else {
            continue;
        };
        match ctx.api.pay_session(session.id).await {
            Ok(_) => return true,
            Err(e @ SimError::Http { .. }) => {
                tracing::warn!(car = plan.car, error = %e, "the payment's answer was lost");
                return true;
            }
            Err(e) => {
                tracing::warn!(car = plan.car, error = %e, "payment at the exit failed");
                return false;
            }
        }
    }
    tracing::warn!(
        car = plan.car,
        plate = own,
        "found no stay awaiting payment to pay at the exit"
    );
    false
}

/// The first UUID in a pay link's path or query, which is what a phone scanning it would open.
fn session_in_link(link: &str) -> Option<uuid::Uuid> {
    link.split(['/', '?', '&', '=', '#'])
        .find_map(|part| uuid::Uuid::parse_str(part).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn pay_links_name_their_stay() {
        let id = uuid::Uuid::from_u128(7);
        assert_eq!(session_in_link(&format!("http://h/pay/{id}")), Some(id));
        assert_eq!(
            session_in_link(&format!("http://h/pay?session={id}&x=1")),
            Some(id)
        );
        assert_eq!(session_in_link("http://h/pay/abc"), None);
    }

    #[test]
    fn dwell_mix_proportions_hold_on_a_fixed_seed() {
        let mix = DwellMix::default();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let n = 20_000;
        let mut counts: HashMap<StayKind, u32> = HashMap::new();
        for _ in 0..n {
            let (kind, d) = mix.sample(&mut rng);
            let band = mix.bands.iter().find(|b| b.kind == kind).unwrap();
            assert!(
                d >= band.min && d <= band.max,
                "{kind:?} stay {d:?} out of band"
            );
            *counts.entry(kind).or_default() += 1;
        }
        for b in &mix.bands {
            let got = f64::from(counts[&b.kind]) / f64::from(n);
            assert!(
                (got - b.share).abs() < 0.02,
                "{:?}: {got} vs {}",
                b.kind,
                b.share
            );
        }
        // Grace stays really are inside the 15-minute free period.
        assert!(mix.bands[0].max < Duration::from_secs(15 * MIN));
    }

    #[test]
    fn plans_are_reproducible_and_mix_as_configured() {
        let cfg = TrafficConfig {
            cars: 2000,
            seed: 9,
            ..TrafficConfig::default()
        };
        let a = plan(&cfg, 2, 2);
        assert_eq!(a, plan(&cfg, 2, 2));
        let plates: HashSet<_> = a.iter().map(|c| c.vehicle.plate.clone()).collect();
        assert_eq!(plates.len(), a.len());
        let share = |f: &dyn Fn(&CarPlan) -> bool| {
            a.iter().filter(|c| f(c)).count() as f64 / a.len() as f64
        };
        assert!((share(&|c| c.has_mandate) - 0.7).abs() < 0.04);
        assert!((share(&|c| c.wallet_fen == 0) - 0.1).abs() < 0.03);
        assert!((share(&|c| c.vehicle.colour == PlateColour::Green) - 0.2).abs() < 0.03);
        assert!(a
            .windows(2)
            .all(|w| w[0].arrives_after <= w[1].arrives_after));
        let mean_gap = a.last().unwrap().arrives_after.as_secs_f64() / a.len() as f64;
        assert!((mean_gap / cfg.mean_interarrival.as_secs_f64() - 1.0).abs() < 0.1);
        assert!(a.iter().all(|c| c.entry_lane < 2 && c.exit_lane < 2));
    }
}
