//! The barrier arm: moves when told, takes real time to do it, and never comes down on a car.

use std::time::Duration;

use parkpay_protocol::{
    decode, ArmCommand, ArmPosition, BarrierCommand, BarrierStateReport, DeviceId, Release, Topic,
};
use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::SimError;
use crate::mqtt::{DeviceContext, Link, Publisher, Task};

#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// Real time the arm takes to rise.
    pub open_time: Duration,
    /// Real time the arm takes to come down.
    pub close_time: Duration,
    /// Come down by itself once the car has left the loop, as gate controllers wired to their
    /// loop do ("车过自动落杆"); otherwise only a close command lowers it.
    pub auto_close: bool,
    /// With `auto_close`, an arm left open with no car over the loop comes down after this long.
    pub idle_close: Duration,
}

impl Default for ArmConfig {
    fn default() -> Self {
        ArmConfig {
            open_time: Duration::from_millis(600),
            close_time: Duration::from_millis(600),
            auto_close: true,
            idle_close: Duration::from_secs(10),
        }
    }
}

/// What the owner of an arm can see of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmState {
    pub position: ArmPosition,
    /// Times the arm reached the open position.
    pub opens: u64,
    /// Open commands flagged as a manual ("abnormal") lift.
    pub abnormal_releases: u64,
    /// Whether the arm's own loop input sees a vehicle under it.
    pub vehicle_present: bool,
}

enum Input {
    Command(BarrierCommand),
    Vehicle(bool),
}

/// A running barrier arm device.
#[derive(Debug)]
pub struct BarrierArm {
    link: Link,
    state: watch::Receiver<ArmState>,
    inputs: mpsc::UnboundedSender<Input>,
    _tasks: [Task; 2],
}

impl BarrierArm {
    /// Starts the arm closed; returns once its command subscription is acknowledged.
    pub async fn start(
        ctx: &DeviceContext,
        id: DeviceId,
        cfg: ArmConfig,
    ) -> Result<BarrierArm, SimError> {
        let (link, mut inbox) =
            Link::start(ctx, id.clone(), vec![Topic::BarrierCommand(id.clone())]).await?;
        let publisher = link.publisher();
        // Announce the resting position so a gateway that just subscribed knows it.
        report(&publisher, ArmPosition::Closed).await;
        let (state_tx, state) = watch::channel(ArmState {
            position: ArmPosition::Closed,
            opens: 0,
            abnormal_releases: 0,
            vehicle_present: false,
        });
        let (inputs, input_rx) = mpsc::unbounded_channel();
        let forward_to = inputs.clone();
        let device = id.clone();
        let forward = tokio::spawn(async move {
            while let Some(p) = inbox.recv().await {
                match decode::<BarrierCommand>(&p.payload, None) {
                    Ok(cmd) => {
                        if forward_to.send(Input::Command(cmd.body)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%device, error = %e, "ignoring malformed barrier command")
                    }
                }
            }
        });
        let mover = tokio::spawn(run_arm(cfg, input_rx, state_tx, publisher));
        Ok(BarrierArm {
            link,
            state,
            inputs,
            _tasks: [Task(forward), Task(mover)],
        })
    }

    pub fn id(&self) -> &DeviceId {
        self.link.device()
    }

    /// A live view of the arm; wait on it with `wait_for` instead of sleeping.
    pub fn watch(&self) -> watch::Receiver<ArmState> {
        self.state.clone()
    }

    pub fn state(&self) -> ArmState {
        *self.state.borrow()
    }

    /// The arm's own loop input (wired to the controller, not over MQTT): a car under the arm.
    pub fn vehicle(&self, present: bool) {
        // The mover only ends when the arm is dropped, and then nobody can call this.
        let _ = self.inputs.send(Input::Vehicle(present));
    }

    /// Disconnects cleanly, leaving a retained offline status.
    pub async fn shutdown(self) {
        let BarrierArm { link, _tasks, .. } = self;
        drop(_tasks);
        link.shutdown().await;
    }
}

async fn report(publisher: &Publisher, arm: ArmPosition) {
    let msg = BarrierStateReport {
        device: publisher.device().clone(),
        arm,
        at: publisher.now(),
    };
    let topic = Topic::BarrierState(publisher.device().clone());
    // A lost report is what a flaky arm does; the physical position is still right.
    if let Err(e) = publisher
        .publish(&topic, &msg, QoS::AtLeastOnce, false)
        .await
    {
        tracing::warn!(device = %publisher.device(), error = %e, "barrier state not sent");
    }
}

/// The arm's controller: one task owns the position so commands and the loop input never race.
struct Mover {
    cfg: ArmConfig,
    state: watch::Sender<ArmState>,
    publisher: Publisher,
    /// When the current movement (opening or closing) completes.
    moving_until: Option<Instant>,
    /// A close that waits for the car under the arm to leave.
    close_pending: bool,
    /// With auto close, when an arm open over an empty lane comes down.
    idle_until: Option<Instant>,
}

impl Mover {
    fn position(&self) -> ArmPosition {
        self.state.borrow().position
    }

    async fn set(&mut self, position: ArmPosition, opened: bool) {
        self.state.send_modify(|s| {
            s.position = position;
            if opened {
                s.opens += 1;
            }
        });
        report(&self.publisher, position).await;
    }

    async fn start_opening(&mut self) {
        self.close_pending = false;
        self.idle_until = None;
        match self.position() {
            ArmPosition::Closed | ArmPosition::Closing => {
                self.moving_until = Some(Instant::now() + self.cfg.open_time);
                self.set(ArmPosition::Opening, false).await;
            }
            ArmPosition::Opening | ArmPosition::Open | ArmPosition::Fault => {}
        }
    }

    async fn start_closing(&mut self) {
        if self.state.borrow().vehicle_present {
            self.close_pending = true;
            return;
        }
        self.idle_until = None;
        match self.position() {
            ArmPosition::Open | ArmPosition::Opening => {
                self.moving_until = Some(Instant::now() + self.cfg.close_time);
                self.set(ArmPosition::Closing, false).await;
            }
            ArmPosition::Closed | ArmPosition::Closing | ArmPosition::Fault => {}
        }
    }

    async fn finish_move(&mut self) {
        self.moving_until = None;
        match self.position() {
            ArmPosition::Opening => {
                self.set(ArmPosition::Open, true).await;
                if self.cfg.auto_close && !self.state.borrow().vehicle_present {
                    self.idle_until = Some(Instant::now() + self.cfg.idle_close);
                }
            }
            ArmPosition::Closing => self.set(ArmPosition::Closed, false).await,
            ArmPosition::Closed | ArmPosition::Open | ArmPosition::Fault => {}
        }
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Command(cmd) => match cmd.action {
                ArmCommand::Open => {
                    if cmd.release == Release::Abnormal {
                        self.state.send_modify(|s| s.abnormal_releases += 1);
                    }
                    self.start_opening().await;
                }
                ArmCommand::Close => self.start_closing().await,
            },
            Input::Vehicle(present) => {
                let was = self.state.borrow().vehicle_present;
                self.state.send_modify(|s| s.vehicle_present = present);
                if present {
                    self.idle_until = None;
                    // Never come down on a car: a closing arm goes back up.
                    if self.position() == ArmPosition::Closing {
                        self.start_opening().await;
                        self.close_pending = true;
                    }
                } else if was {
                    let open = matches!(self.position(), ArmPosition::Open | ArmPosition::Opening);
                    if open && (self.close_pending || self.cfg.auto_close) {
                        self.start_closing().await;
                    }
                    self.close_pending = false;
                }
            }
        }
    }
}

async fn run_arm(
    cfg: ArmConfig,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    state: watch::Sender<ArmState>,
    publisher: Publisher,
) {
    let mut m = Mover {
        cfg,
        state,
        publisher,
        moving_until: None,
        close_pending: false,
        idle_until: None,
    };
    loop {
        let deadline = m.moving_until.or(m.idle_until);
        tokio::select! {
            input = inputs.recv() => match input {
                Some(i) => m.on_input(i).await,
                None => return,
            },
            _ = sleep_until(deadline) => {
                if m.moving_until.is_some() {
                    m.finish_move().await;
                } else {
                    m.idle_until = None;
                    m.start_closing().await;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
