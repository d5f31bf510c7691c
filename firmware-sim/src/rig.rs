//! One lane's hardware and what happens physically when a car drives up to it.

use std::time::Duration;

use parkpay_protocol::{ArmPosition, DeviceId, Direction, LaneId, LotId, Plate, PlateColour};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::devices::{
    ArmConfig, ArmState, BarrierArm, Camera, CameraConfig, Capture, Display, DisplayState,
    LoopDetector,
};
use crate::error::SimError;
use crate::mqtt::DeviceContext;

/// A car as the lane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vehicle {
    pub plate: Plate,
    pub colour: PlateColour,
}

/// The device ids of one lane, derived from lot and lane so a gateway can be configured by the
/// same rule: `{lot}-{lane}-cam`, `-loop`, `-arm`, `-disp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneDeviceIds {
    pub camera: DeviceId,
    pub loop_detector: DeviceId,
    pub arm: DeviceId,
    pub display: DeviceId,
}

impl LaneDeviceIds {
    pub fn new(lot: &LotId, lane: &LaneId) -> Result<LaneDeviceIds, SimError> {
        let id = |suffix: &str| DeviceId::parse(format!("{lot}-{lane}-{suffix}"));
        Ok(LaneDeviceIds {
            camera: id("cam")?,
            loop_detector: id("loop")?,
            arm: id("arm")?,
            display: id("disp")?,
        })
    }
}

#[derive(Debug)]
pub struct LaneConfig {
    pub lot: LotId,
    pub lane: LaneId,
    pub direction: Direction,
    pub arm: ArmConfig,
    pub camera: CameraConfig,
    /// Real time a car takes to drive through once the arm is up.
    pub drive_through: Duration,
    /// How long a car waits for the arm before it counts as held.
    pub open_wait: Duration,
    /// How long the next car waits for the arm to come down after the previous one.
    pub clear_wait: Duration,
}

impl LaneConfig {
    pub fn new(lot: LotId, lane: LaneId, direction: Direction) -> LaneConfig {
        LaneConfig {
            lot,
            lane,
            direction,
            arm: ArmConfig::default(),
            camera: CameraConfig::default(),
            drive_through: Duration::from_millis(300),
            open_wait: Duration::from_secs(5),
            clear_wait: Duration::from_secs(5),
        }
    }
}

/// A lane's camera, loop detector, barrier arm and display, serving one car at a time.
#[derive(Debug)]
pub struct LaneRig {
    lot: LotId,
    lane: LaneId,
    direction: Direction,
    camera: Camera,
    loop_detector: LoopDetector,
    arm: BarrierArm,
    display: Display,
    drive_through: Duration,
    open_wait: Duration,
    clear_wait: Duration,
    /// The queue: whoever holds it is the car standing at the barrier.
    turn: Mutex<()>,
    /// The plate of the car at the barrier, as a person looking at the lane would see it.
    at_barrier: std::sync::Mutex<Option<(String, chrono::DateTime<chrono::Utc>)>>,
}

impl LaneRig {
    /// Starts the four devices; returns once all of them are connected and subscribed.
    pub async fn start(ctx: &DeviceContext, cfg: LaneConfig) -> Result<LaneRig, SimError> {
        let ids = LaneDeviceIds::new(&cfg.lot, &cfg.lane)?;
        let (camera, loop_detector, arm, display) = tokio::try_join!(
            Camera::start(ctx, ids.camera, cfg.camera),
            LoopDetector::start(ctx, ids.loop_detector),
            BarrierArm::start(ctx, ids.arm, cfg.arm),
            Display::start(ctx, ids.display),
        )?;
        Ok(LaneRig {
            lot: cfg.lot,
            lane: cfg.lane,
            direction: cfg.direction,
            camera,
            loop_detector,
            arm,
            display,
            drive_through: cfg.drive_through,
            open_wait: cfg.open_wait,
            clear_wait: cfg.clear_wait,
            turn: Mutex::new(()),
            at_barrier: std::sync::Mutex::new(None),
        })
    }

    /// The true plate of the car standing at the barrier and when it was captured, if one is.
    pub fn car_at_barrier(&self) -> Option<(String, chrono::DateTime<chrono::Utc>)> {
        self.at_barrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn lot(&self) -> &LotId {
        &self.lot
    }

    pub fn lane(&self) -> &LaneId {
        &self.lane
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn arm(&self) -> &BarrierArm {
        &self.arm
    }

    pub fn display(&self) -> &Display {
        &self.display
    }

    pub fn camera(&self) -> &Camera {
        &self.camera
    }

    pub fn loop_detector(&self) -> &LoopDetector {
        &self.loop_detector
    }

    /// How long a car waits for the arm before it counts as held.
    pub fn open_wait(&self) -> Duration {
        self.open_wait
    }

    /// A car drives up: it queues for the lane, stands on the loop and is photographed. The
    /// returned passage holds the lane until the car drives through or backs out.
    pub async fn arrive(&self, vehicle: &Vehicle) -> Result<Passage<'_>, SimError> {
        let turn = self.turn.lock().await;
        let mut arm = self.arm.watch();
        // Nobody drives up to an arm that is still up for the car before.
        let down = matches!(
            tokio::time::timeout(
                self.clear_wait,
                arm.wait_for(|s| s.position == ArmPosition::Closed),
            )
            .await,
            Ok(Ok(_))
        );
        if !down {
            tracing::warn!(lane = %self.lane, "arm still up when the next car arrived");
        }
        let opens_before = self.arm.state().opens;
        let display_seen = self.display.state().updates;
        self.arm.vehicle(true);
        self.loop_detector.set(true).await?;
        let capture = self.camera.capture(&vehicle.plate, vehicle.colour).await?;
        *self.at_barrier.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((vehicle.plate.as_str().to_string(), capture.captured_at));
        Ok(Passage {
            rig: self,
            _turn: turn,
            capture,
            opens_before,
            display_seen,
            display_arrival: display_seen,
            arrived: Instant::now(),
            opened: false,
            held: false,
            paid_prompt: None,
        })
    }

    /// The whole passage without paying: drive up, wait for the arm, drive through; a car the
    /// arm does not open for within the lane's `open_wait` backs out and is reported held.
    pub async fn pass(&self, vehicle: &Vehicle) -> Result<PassageOutcome, SimError> {
        let mut p = self.arrive(vehicle).await?;
        if p.wait_open(self.open_wait).await {
            p.drive_through().await
        } else {
            p.back_out().await
        }
    }

    /// Disconnects every device cleanly.
    pub async fn shutdown(self) {
        tokio::join!(
            self.camera.shutdown(),
            self.loop_detector.shutdown(),
            self.arm.shutdown(),
            self.display.shutdown(),
        );
    }
}

/// What a waiting car notices first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// The arm is up for this car.
    Opened,
    /// The display shows a pay link (the QR code) for this car.
    PayRequested { qr: String },
    /// Nothing happened within the bound.
    TimedOut,
}

/// A car standing at the barrier. Holds the lane until it drives through or backs out.
#[derive(Debug)]
pub struct Passage<'a> {
    rig: &'a LaneRig,
    _turn: MutexGuard<'a, ()>,
    capture: Capture,
    opens_before: u64,
    display_seen: u64,
    /// The display's update count when the car drove up.
    display_arrival: u64,
    arrived: Instant,
    opened: bool,
    held: bool,
    paid_prompt: Option<String>,
}

impl Passage<'_> {
    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    /// What the display shows now, if it changed since the car drove up: "line 1 / line 2".
    pub fn shown(&self) -> Option<String> {
        let s = self.rig.display.state();
        (s.updates > self.display_arrival).then(|| {
            if s.text.line2.is_empty() {
                s.text.line1.clone()
            } else {
                format!("{} / {}", s.text.line1, s.text.line2)
            }
        })
    }

    /// The pay link the display showed to this car, if it showed one.
    pub fn pay_prompt(&self) -> Option<&str> {
        self.paid_prompt.as_deref()
    }

    /// Waits, at most `bound`, for the arm to open for this car or the display to ask it to pay.
    pub async fn wait(&mut self, bound: Duration) -> Waited {
        let mut arm = self.rig.arm.watch();
        let mut display = self.rig.display.watch();
        let before = self.opens_before;
        let seen = self.display_seen;
        let opened = |s: &ArmState| s.opens > before && s.position == ArmPosition::Open;
        let prompt = |s: &DisplayState| s.updates > seen && s.qr.is_some();
        let outcome = tokio::select! {
            r = arm.wait_for(opened) => match r {
                Ok(_) => Waited::Opened,
                // The arm's sender lives as long as the rig this passage borrows.
                Err(_) => Waited::TimedOut,
            },
            r = display.wait_for(prompt) => match r {
                Ok(s) => {
                    self.display_seen = s.updates;
                    Waited::PayRequested { qr: s.qr.clone().unwrap_or_default() }
                }
                Err(_) => Waited::TimedOut,
            },
            _ = tokio::time::sleep(bound) => Waited::TimedOut,
        };
        match &outcome {
            Waited::Opened => self.opened = true,
            Waited::PayRequested { qr } => {
                self.held = true;
                self.paid_prompt = Some(qr.clone());
            }
            Waited::TimedOut => self.held = true,
        }
        outcome
    }

    /// Waits, at most `bound` in all, for the arm alone; pay prompts are noted and waited past.
    pub async fn wait_open(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(left).await {
                Waited::Opened => return true,
                Waited::PayRequested { .. } if !left.is_zero() => continue,
                Waited::PayRequested { .. } | Waited::TimedOut => return false,
            }
        }
    }

    /// The car drives under the raised arm and off the loop.
    pub async fn drive_through(self) -> Result<PassageOutcome, SimError> {
        tokio::time::sleep(self.rig.drive_through).await;
        self.leave().await
    }

    /// The car gives up and reverses off the loop without passing.
    pub async fn back_out(self) -> Result<PassageOutcome, SimError> {
        self.leave().await
    }

    async fn leave(self) -> Result<PassageOutcome, SimError> {
        self.rig.arm.vehicle(false);
        *self
            .rig
            .at_barrier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.rig.loop_detector.set(false).await?;
        Ok(PassageOutcome {
            lane: self.rig.lane.clone(),
            direction: self.rig.direction,
            capture: self.capture,
            opened: self.opened,
            held: self.held,
            waited: self.arrived.elapsed(),
        })
    }
}

/// What physically happened at the lane.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageOutcome {
    pub lane: LaneId,
    pub direction: Direction,
    pub capture: Capture,
    /// The arm opened for this car and it drove through.
    pub opened: bool,
    /// The arm did not open on the car's arrival: it was asked to pay or kept waiting.
    pub held: bool,
    /// Real time from arrival to leaving the loop.
    pub waited: Duration,
}
