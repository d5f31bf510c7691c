//! One lane's behaviour as a pure state machine: inputs in, outputs out, no I/O.
//!
//! The MQTT shell in [`crate::gateway`] decodes messages into [`Input`]s, feeds them to
//! [`Lane::handle`], and carries out the returned [`Output`]s (journal, then publish). Everything
//! that decides what a lane does lives here, so it is tested without a broker.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parkpay_protocol::plate::match_key;
use parkpay_protocol::{
    ArmCommand, ArmPosition, BarrierAction, BarrierCommand, CommandAck, Decision, Direction,
    DisplayCommand, DisplayText, EventId, GatewayId, LaneAction, LaneId, LaneState, LotId,
    OperatorCommand, PassageEvent, PlateCandidate, ReadQuality, Release,
};
use uuid::Uuid;

use crate::reader::vote;

/// The present moment, twice: `at` on the injected clock (timestamps, the dedupe window) and
/// `mono` in real time (network timeouts, which a scaled clock does not shorten).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: DateTime<Utc>,
    pub mono: Instant,
}

/// What a lane needs to know about itself.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    pub lot: LotId,
    pub lane: LaneId,
    pub gateway: GatewayId,
    pub direction: Direction,
    pub dedupe_window: Duration,
    pub decision_timeout: Duration,
}

/// Match keys of the plates the server allows out while it cannot be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowSet {
    keys: HashSet<String>,
    pub version: i64,
}

impl AllowSet {
    pub fn new<'a>(plates: impl IntoIterator<Item = &'a str>, version: i64) -> AllowSet {
        AllowSet {
            keys: plates.into_iter().map(match_key).collect(),
            version,
        }
    }

    pub fn allows(&self, plate: &str) -> bool {
        self.keys.contains(&match_key(plate))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    /// Plate reads of one passage: one entry per frame (a smart camera's read is one frame).
    Reads {
        captured_at: DateTime<Utc>,
        frames: Vec<Vec<PlateCandidate>>,
        evidence_digest: Option<String>,
    },
    Loop {
        present: bool,
        /// The detector's own time of the change (`LoopEvent::at`).
        at: DateTime<Utc>,
    },
    Arm(ArmPosition),
    Decision(Decision),
    Command(OperatorCommand),
    Allowlist(Arc<AllowSet>),
    /// The gateway lost the broker: loop and arm messages may have been lost meanwhile.
    BrokerLost,
    Tick,
}

/// Things worth counting that produce no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    DuplicateSuppressed,
    DecisionApplied,
    /// A decision that no longer concerns the vehicle at the barrier (the offline policy already
    /// let it out, a newer vehicle has been read since, or the event is from before a restart):
    /// only the journal is cleared.
    LateDecision,
    OfflineOpen,
    OfflineHold,
    /// An open command sent again because the arm did not report moving.
    ArmResent,
    /// A decision or command whose lot or lane is not this lane's.
    Misrouted,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Journal it, then publish it.
    Event(PassageEvent),
    /// The event is decided: drop it from the journal.
    Forget(EventId),
    Arm(BarrierCommand),
    Display(DisplayCommand),
    State(LaneState),
    Ack(CommandAck),
    Count(Count),
}

#[derive(Debug)]
struct Awaiting {
    deadline: Instant,
    top: Option<PlateCandidate>,
    quality: ReadQuality,
}

/// How many offline-opened event ids to remember, so a late decision does not move the arm for a
/// vehicle that has long left.
const OFFLINE_MEMORY: usize = 256;

/// How long an arm may take to report that it started rising before the open command goes again.
/// A command can be lost between the gateway and the arm (the arm's controller reconnecting to
/// the broker drops what was published meanwhile); the driver would wait for nothing.
pub const ARM_RESEND_AFTER: Duration = Duration::from_secs(1);
/// How many times an open command is sent again for one vehicle.
pub const ARM_RESENDS: u8 = 5;

/// An open command the arm has not answered yet.
#[derive(Debug, Clone, Copy)]
struct ArmDue {
    event: EventId,
    due: Instant,
    resent: u8,
}

/// A read the lane emitted as an event: its event, dedupe key (none for a no-read), capture
/// time, and whether the arm opened for it (on a decision or offline).
#[derive(Debug)]
struct EmittedRead {
    event: EventId,
    key: Option<String>,
    captured_at: DateTime<Utc>,
    let_out: bool,
}

#[derive(Debug)]
pub struct Lane {
    spec: LaneSpec,
    /// Match key -> when its last event was emitted.
    last_emitted: HashMap<String, DateTime<Utc>>,
    awaiting: BTreeMap<EventId, Awaiting>,
    /// The event of the vehicle at the barrier: the last one this lane emitted.
    current: Option<EventId>,
    /// `current`'s read, and the read emitted before it: which of the two a loop report of a
    /// vehicle leaving is about is told by the devices' clocks (see `on_loop`).
    current_read: Option<EmittedRead>,
    previous_read: Option<EmittedRead>,
    /// Minted when the lane was created: events older than this are from before a restart.
    started: EventId,
    offline_opened: VecDeque<EventId>,
    allow: Arc<AllowSet>,
    arm: ArmPosition,
    vehicle_present: bool,
    /// We opened the arm for a vehicle; close it once the loop clears behind that vehicle.
    close_on_clear: bool,
    /// The event the arm was last opened for, and whether its vehicle has since left the loop.
    /// The server may decide an event twice (it was resent while its first decision was on the
    /// way); the second decision must not open the arm for the next vehicle, which may already
    /// stand on the loop before its own plate has reached us.
    opened: Option<(EventId, bool)>,
    /// The open command for `opened` that the arm has not yet answered by starting to rise.
    arm_due: Option<ArmDue>,
}

impl Lane {
    pub fn new(spec: LaneSpec) -> Lane {
        Lane {
            spec,
            last_emitted: HashMap::new(),
            awaiting: BTreeMap::new(),
            current: None,
            current_read: None,
            previous_read: None,
            started: EventId::new(),
            offline_opened: VecDeque::new(),
            allow: Arc::new(AllowSet::default()),
            // Until the arm reports, assume the safe resting position.
            arm: ArmPosition::Closed,
            vehicle_present: false,
            close_on_clear: false,
            opened: None,
            arm_due: None,
        }
    }

    pub fn spec(&self) -> &LaneSpec {
        &self.spec
    }

    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Output> {
        match input {
            Input::Reads {
                captured_at,
                frames,
                evidence_digest,
            } => self.on_reads(captured_at, &frames, evidence_digest, now),
            Input::Loop { present, at } => self.on_loop(present, at, now),
            Input::Arm(pos) => self.on_arm(pos, now),
            Input::Decision(d) => self.on_decision(d, now),
            Input::Command(c) => self.on_command(c, now),
            Input::Allowlist(a) => {
                self.allow = a;
                Vec::new()
            }
            Input::BrokerLost => {
                self.on_broker_lost();
                Vec::new()
            }
            Input::Tick => self.on_tick(now),
        }
    }

    /// The lane's state as a message, for publishing after a (re)connect.
    pub fn state(&self, now: Now) -> LaneState {
        LaneState {
            lot: self.spec.lot.clone(),
            lane: self.spec.lane.clone(),
            gateway: self.spec.gateway.clone(),
            direction: self.spec.direction,
            arm: self.arm,
            vehicle_present: self.vehicle_present,
            at: now.at,
        }
    }

    fn on_reads(
        &mut self,
        captured_at: DateTime<Utc>,
        frames: &[Vec<PlateCandidate>],
        evidence_digest: Option<String>,
        now: Now,
    ) -> Vec<Output> {
        let (candidates, quality) = vote(frames);
        // A no-read has no key: two of them may be two different vehicles, so both go out.
        let key = candidates
            .first()
            .map(|c| match_key(&c.plate))
            .filter(|k| !k.is_empty());
        if let Some(key) = &key {
            if let Some(last) = self.last_emitted.get(key) {
                if within(now.at, *last, self.spec.dedupe_window) {
                    return vec![Output::Count(Count::DuplicateSuppressed)];
                }
            }
            self.last_emitted.insert(key.clone(), now.at);
        }
        let event_id = EventId::new();
        self.previous_read = self.current_read.replace(EmittedRead {
            event: event_id,
            key,
            captured_at,
            let_out: false,
        });
        let event = PassageEvent {
            event_id,
            lot: self.spec.lot.clone(),
            lane: self.spec.lane.clone(),
            gateway: self.spec.gateway.clone(),
            direction: self.spec.direction,
            captured_at,
            candidates,
            quality,
            evidence_digest,
            resent: false,
        };
        self.current = Some(event.event_id);
        if self.spec.direction == Direction::Exit {
            self.awaiting.insert(
                event.event_id,
                Awaiting {
                    deadline: now.mono + self.spec.decision_timeout,
                    top: event.candidates.first().cloned(),
                    quality,
                },
            );
        }
        vec![Output::Event(event)]
    }

    fn on_loop(&mut self, present: bool, at: DateTime<Utc>, now: Now) -> Vec<Output> {
        if present == self.vehicle_present {
            return Vec::new();
        }
        self.vehicle_present = present;
        let mut close = false;
        if !present {
            // Which vehicle left: the camera and the loop report on connections of their own,
            // so the next vehicle's read can arrive before the loop's report that the vehicle
            // before it left. A read captured after the loop cleared is of a vehicle that came
            // later; the report is then about the read before it. Everything below concerns the
            // vehicle that left, never the one that may already stand at the barrier.
            let (gone, gone_is_current) = match &self.current_read {
                Some(r) if r.captured_at > at => (self.previous_read.take(), false),
                _ => (self.current_read.take(), true),
            };
            let gone_event = gone.as_ref().map(|r| r.event);
            let gone_let_out = gone.as_ref().is_some_and(|r| r.let_out);
            if let Some((id, left)) = &mut self.opened {
                *left |= Some(*id) == gone_event;
            }
            // Nothing to open for a vehicle that is gone; an open still due for the vehicle that
            // came after it stays due.
            self.arm_due = self
                .arm_due
                .filter(|d| gone_event.is_some_and(|g| g != d.event));
            // A vehicle that backed away without the arm opening for it and comes back is a new
            // passage: its plate must reach the server again, which may by then let it out (the
            // driver paid meanwhile). One the arm opened for (on a decision, offline, or by an
            // operator while it stood at the barrier) stays deduplicated: a stray read of it
            // leaving is no new passage.
            let let_out = gone_let_out || (gone_is_current && self.close_on_clear);
            if let Some(key) = gone.and_then(|r| r.key).filter(|_| !let_out) {
                self.last_emitted.remove(&key);
            }
            // The arm closes behind the vehicle it opened for, not on the one after it when it
            // opened for that one too.
            let next_let_out = self.current_read.as_ref().is_some_and(|r| r.let_out);
            close = self.close_on_clear && (gone_is_current || (gone_let_out && !next_let_out));
        }
        let mut out = vec![Output::State(self.state(now))];
        if close {
            self.close_on_clear = false;
            out.push(Output::Arm(arm_command(
                ArmCommand::Close,
                Release::Normal,
                now,
            )));
        }
        out
    }

    /// Notes on the emitted read of `event`, if the lane still holds it, that the arm opened for
    /// it: the loop's report of that vehicle leaving may come after the next one was read.
    fn mark_let_out(&mut self, event: EventId) {
        for r in [&mut self.current_read, &mut self.previous_read]
            .into_iter()
            .flatten()
        {
            if r.event == event {
                r.let_out = true;
            }
        }
    }

    /// While the broker is gone the loop's messages are lost: the vehicle the arm opened for
    /// may have left and another taken its place on the loop, unseen. From here on the arm
    /// opens only for a newly read vehicle, never again for the one it opened for.
    fn on_broker_lost(&mut self) {
        if let Some((_, left)) = &mut self.opened {
            *left = true;
        }
        self.arm_due = None;
    }

    fn on_arm(&mut self, pos: ArmPosition, now: Now) -> Vec<Output> {
        if pos == self.arm {
            return Vec::new();
        }
        self.arm = pos;
        if matches!(pos, ArmPosition::Opening | ArmPosition::Open) {
            self.arm_due = None;
        }
        vec![Output::State(self.state(now))]
    }

    fn on_decision(&mut self, d: Decision, now: Now) -> Vec<Output> {
        if d.lot != self.spec.lot || d.lane != self.spec.lane {
            return vec![Output::Count(Count::Misrouted)];
        }
        self.awaiting.remove(&d.event_id);
        if self.is_stale(d.event_id) {
            // Moving the arm or changing the display now would act on whoever stands at the
            // barrier next; the journal entry still goes.
            // Counted before the entry goes, so an empty journal means every decision is counted.
            return vec![
                Output::Count(Count::LateDecision),
                Output::Forget(d.event_id),
            ];
        }
        let mut out = Vec::with_capacity(4);
        match d.action {
            BarrierAction::Open => {
                self.close_on_clear = true;
                self.opened = Some((d.event_id, false));
                self.mark_let_out(d.event_id);
                // An arm already up sends no report; one that is down must answer by rising.
                self.arm_due = (!matches!(self.arm, ArmPosition::Opening | ArmPosition::Open))
                    .then_some(ArmDue {
                        event: d.event_id,
                        due: now.mono + ARM_RESEND_AFTER,
                        resent: 0,
                    });
                out.push(Output::Arm(arm_command(
                    ArmCommand::Open,
                    Release::Normal,
                    now,
                )));
                out.push(Output::Display(DisplayCommand {
                    text: d.display,
                    qr: None,
                    at: now.at,
                }));
            }
            BarrierAction::Hold => out.push(Output::Display(DisplayCommand {
                text: d.display,
                qr: d.pay_url,
                at: now.at,
            })),
        }
        // The arm first: the journal is bookkeeping, the driver is waiting. Counted before the
        // entry goes, so an empty journal means every decision is counted.
        out.push(Output::Count(Count::DecisionApplied));
        out.push(Output::Forget(d.event_id));
        out
    }

    /// Whether a decision for `id` comes too late to concern the vehicle at the barrier: the
    /// offline policy already let that vehicle out, or the event is older than the current
    /// vehicle's (a resent event decided once the server is back, after the next car was read)
    /// or than the lane itself (journaled before a restart). Event ids are UUIDv7, so "older" is
    /// their order. A decision under an id newer than the current event is the server deciding
    /// for the vehicle at the barrier (an attendant's plate correction) and applies.
    /// A decision for the event the arm already opened for, once that vehicle has left the loop,
    /// is late too: the next vehicle may stand on the loop before its own plate has reached us.
    fn is_stale(&self, id: EventId) -> bool {
        if self.offline_opened.contains(&id) || self.opened == Some((id, true)) {
            return true;
        }
        match self.current {
            Some(current) => id < current,
            None => id < self.started,
        }
    }

    fn on_command(&mut self, c: OperatorCommand, now: Now) -> Vec<Output> {
        if c.lot != self.spec.lot || c.lane != self.spec.lane {
            return vec![
                Output::Ack(CommandAck {
                    command_id: c.command_id,
                    ok: false,
                    detail: format!(
                        "lane {}/{} is not {}/{}",
                        c.lot, c.lane, self.spec.lot, self.spec.lane
                    ),
                }),
                Output::Count(Count::Misrouted),
            ];
        }
        let action = match c.action {
            LaneAction::OpenBarrier => {
                // A manual lift for a waiting vehicle closes behind it like any other; one for an
                // empty lane (maintenance) stays open until the operator closes it.
                self.close_on_clear = self.vehicle_present;
                ArmCommand::Open
            }
            LaneAction::CloseBarrier => {
                self.close_on_clear = false;
                ArmCommand::Close
            }
        };
        vec![
            Output::Arm(arm_command(action, Release::Abnormal, now)),
            Output::Ack(CommandAck {
                command_id: c.command_id,
                ok: true,
                detail: String::new(),
            }),
        ]
    }

    fn on_tick(&mut self, now: Now) -> Vec<Output> {
        let window = self.spec.dedupe_window;
        self.last_emitted.retain(|_, t| within(now.at, *t, window));
        let due: Vec<EventId> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.deadline <= now.mono)
            .map(|(id, _)| *id)
            .collect();
        let mut out = self.resend_open(now);
        for id in due {
            let Some(a) = self.awaiting.remove(&id) else {
                continue;
            };
            // Only a confident read may open on our own authority: a confident wrong plate is
            // far worse than making a driver wait for the server.
            let allowed = a.quality == ReadQuality::Confident
                && a.top.as_ref().is_some_and(|c| self.allow.allows(&c.plate));
            if allowed {
                self.close_on_clear = true;
                self.mark_let_out(id);
                self.offline_opened.push_back(id);
                if self.offline_opened.len() > OFFLINE_MEMORY {
                    self.offline_opened.pop_front();
                }
                out.push(Output::Arm(arm_command(
                    ArmCommand::Open,
                    Release::Normal,
                    now,
                )));
                out.push(Output::Display(DisplayCommand {
                    text: DisplayText {
                        line1: "Goodbye".into(),
                        line2: "Offline: fee will be settled later".into(),
                    },
                    qr: None,
                    at: now.at,
                }));
                out.push(Output::Count(Count::OfflineOpen));
            } else {
                out.push(Output::Display(DisplayCommand {
                    text: DisplayText {
                        line1: "Please wait".into(),
                        line2: "An attendant will help you".into(),
                    },
                    qr: None,
                    at: now.at,
                }));
                out.push(Output::Count(Count::OfflineHold));
            }
        }
        out
    }

    /// The open command again, when the arm has not started rising for the vehicle it was meant
    /// for and that vehicle is still the one at the barrier (no newer read, the loop not cleared
    /// behind it). An open arm ignores a second open, so a lost report costs nothing.
    fn resend_open(&mut self, now: Now) -> Vec<Output> {
        let Some(due) = self.arm_due else {
            return Vec::new();
        };
        if due.due > now.mono {
            return Vec::new();
        }
        let still_here = self.current == Some(due.event) && self.opened == Some((due.event, false));
        if !still_here || due.resent >= ARM_RESENDS {
            if still_here {
                tracing::warn!(lane = %self.spec.lane, event = %due.event, "the arm never reported rising");
            }
            self.arm_due = None;
            return Vec::new();
        }
        tracing::info!(lane = %self.spec.lane, event = %due.event, "the arm did not report rising; open again");
        self.arm_due = Some(ArmDue {
            due: now.mono + ARM_RESEND_AFTER,
            resent: due.resent + 1,
            ..due
        });
        vec![
            Output::Arm(arm_command(ArmCommand::Open, Release::Normal, now)),
            Output::Count(Count::ArmResent),
        ]
    }
}

/// True when `at` is less than `window` after `since` (or before it: clocks may disagree).
fn within(at: DateTime<Utc>, since: DateTime<Utc>, window: Duration) -> bool {
    match (at - since).to_std() {
        Ok(elapsed) => elapsed < window,
        Err(_) => true,
    }
}

fn arm_command(action: ArmCommand, release: Release, now: Now) -> BarrierCommand {
    BarrierCommand {
        command_id: Uuid::now_v7(),
        action,
        release,
        at: now.at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::{DecisionReason, PlateColour};

    struct T {
        lane: Lane,
        t0: DateTime<Utc>,
        m0: Instant,
    }

    impl T {
        fn new(direction: Direction) -> T {
            T {
                lane: Lane::new(LaneSpec {
                    lot: LotId::parse("lot1").unwrap(),
                    lane: LaneId::parse("x1").unwrap(),
                    gateway: GatewayId::parse("gw").unwrap(),
                    direction,
                    dedupe_window: Duration::from_secs(60),
                    decision_timeout: Duration::from_secs(3),
                }),
                t0: DateTime::parse_from_rfc3339("2026-11-25T08:00:00Z")
                    .unwrap()
                    .into(),
                m0: Instant::now(),
            }
        }

        fn at(&self, secs: u64) -> Now {
            Now {
                at: self.t0 + chrono::Duration::seconds(secs as i64),
                mono: self.m0 + Duration::from_secs(secs),
            }
        }

        /// The loop detector reports a change at `secs`, by its own clock.
        fn detector(&mut self, secs: u64, present: bool) -> Vec<Output> {
            let at = self.at(secs).at;
            self.send(secs, Input::Loop { present, at })
        }

        /// The server's decision for `id` reaches the lane at `secs`.
        fn decide(&mut self, secs: u64, id: EventId, action: BarrierAction) -> Vec<Output> {
            let d = self.decision(id, action);
            self.send(secs, Input::Decision(d))
        }

        /// The loop's report that it cleared at `cleared` reaches the lane only at `secs`.
        fn late_clear(&mut self, secs: u64, cleared: u64) -> Vec<Output> {
            let at = self.at(cleared).at;
            self.send(secs, Input::Loop { present: false, at })
        }

        fn send(&mut self, secs: u64, input: Input) -> Vec<Output> {
            let now = self.at(secs);
            self.lane.handle(input, now)
        }

        fn read(&mut self, secs: u64, plate: &str, conf: f32) -> Vec<Output> {
            let captured_at = self.at(secs).at - chrono::Duration::milliseconds(300);
            let frames = if plate.is_empty() {
                vec![vec![]]
            } else {
                vec![vec![cand(plate, conf)]]
            };
            self.send(
                secs,
                Input::Reads {
                    captured_at,
                    frames,
                    evidence_digest: None,
                },
            )
        }

        fn decision(&self, id: EventId, action: BarrierAction) -> Decision {
            Decision {
                event_id: id,
                lot: self.lane.spec.lot.clone(),
                lane: self.lane.spec.lane.clone(),
                action,
                reason: DecisionReason::Mandate,
                plate: None,
                session_id: None,
                fee: None,
                owed: None,
                pay_url: Some("https://pay/x".into()),
                display: DisplayText {
                    line1: "Fee 5.00".into(),
                    line2: String::new(),
                },
                decided_at: self.t0,
            }
        }

        fn command(&self, action: LaneAction) -> OperatorCommand {
            OperatorCommand {
                command_id: Uuid::now_v7(),
                lot: self.lane.spec.lot.clone(),
                lane: self.lane.spec.lane.clone(),
                action,
                reason: "stuck".into(),
                operator: "alice".into(),
                issued_at: self.t0,
            }
        }
    }

    fn cand(p: &str, conf: f32) -> PlateCandidate {
        PlateCandidate {
            plate: p.into(),
            confidence: conf,
            colour: PlateColour::Blue,
        }
    }

    fn event(out: &[Output]) -> PassageEvent {
        match out {
            [Output::Event(e)] => e.clone(),
            other => panic!("expected one event, got {other:?}"),
        }
    }

    fn arms(out: &[Output]) -> Vec<(ArmCommand, Release)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Arm(c) => Some((c.action, c.release)),
                _ => None,
            })
            .collect()
    }

    /// What a late decision gives: counted, dropped from the journal, nothing moved.
    fn late(id: EventId) -> Vec<Output> {
        vec![Output::Count(Count::LateDecision), Output::Forget(id)]
    }

    fn counts(out: &[Output]) -> Vec<Count> {
        out.iter()
            .filter_map(|o| match o {
                Output::Count(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_read_becomes_an_event_with_the_cameras_capture_time() {
        let mut t = T::new(Direction::Entry);
        let e = event(&t.read(0, "京A12345", 0.95));
        assert_eq!(e.quality, ReadQuality::Confident);
        assert_eq!(
            e.captured_at,
            t.at(0).at - chrono::Duration::milliseconds(300)
        );
        assert_eq!(e.direction, Direction::Entry);
        assert_eq!(e.event_id.0.get_version_num(), 7);
        assert!(!e.resent);
    }

    #[test]
    fn the_same_plate_within_the_window_is_suppressed_then_allowed_again() {
        let mut t = T::new(Direction::Entry);
        event(&t.read(0, "京A12345", 0.95));
        assert_eq!(
            t.read(30, "京A12345", 0.9),
            vec![Output::Count(Count::DuplicateSuppressed)]
        );
        // Confusables fold to the same key: 5 and S are one plate to the dedupe.
        assert_eq!(
            counts(&t.read(31, "京A1234S", 0.9)),
            vec![Count::DuplicateSuppressed]
        );
        event(&t.read(30, "京B99999", 0.95));
        // The window runs from the emitted event, not from the suppressed reads.
        event(&t.read(61, "京A12345", 0.95));
    }

    #[test]
    fn a_vehicle_that_backed_away_and_returns_is_a_new_passage() {
        let mut t = T::new(Direction::Exit);
        t.detector(0, true);
        let first = event(&t.read(0, "湘CD98170", 0.95));
        t.decide(1, first.event_id, BarrierAction::Hold);
        // Asked to pay, the driver backs off the loop, pays, and drives up again.
        t.detector(2, false);
        t.detector(40, true);
        let again = event(&t.read(40, "湘CD98170", 0.95));
        assert_ne!(again.event_id, first.event_id);
        let out = t.decide(41, again.event_id, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
    }

    /// A held car backs away at 2 s; the next car is read at 4 s, and its read reaches the lane
    /// before the loop's report of the first car leaving (the devices' connections differ).
    fn held_car_backed_away_unreported() -> (T, PassageEvent, PassageEvent) {
        let mut t = T::new(Direction::Exit);
        t.detector(0, true);
        let held = event(&t.read(0, "湘CD98170", 0.95));
        t.decide(1, held.event_id, BarrierAction::Hold);
        let next = event(&t.read(4, "京B11111", 0.95));
        (t, held, next)
    }

    #[test]
    fn a_vehicle_that_backed_away_is_told_from_the_next_one_read_before_the_loop_reported() {
        let (mut t, held, next) = held_car_backed_away_unreported();
        t.late_clear(4, 2);
        t.detector(4, true);
        t.decide(5, next.event_id, BarrierAction::Open);
        t.send(6, Input::Arm(ArmPosition::Open));
        t.detector(8, false);
        // The first car, having paid, drives up again: a new passage.
        t.detector(20, true);
        let again = event(&t.read(20, "湘CD98170", 0.95));
        assert_ne!(again.event_id, held.event_id);
        // The next car, let out, stays deduplicated.
        assert_eq!(
            counts(&t.read(21, "京B11111", 0.9)),
            vec![Count::DuplicateSuppressed]
        );
    }

    #[test]
    fn a_late_report_of_the_vehicle_before_leaving_does_not_touch_the_one_let_out_after_it() {
        // The next car is even let out at 5 s before the report of the first car arrives.
        let (mut t, held, next) = held_car_backed_away_unreported();
        let open = t.decide(5, next.event_id, BarrierAction::Open);
        assert_eq!(arms(&open), vec![(ArmCommand::Open, Release::Normal)]);
        // The report concerns the first car: the arm stays up over the next one.
        assert_eq!(arms(&t.late_clear(6, 2)), vec![]);
        t.detector(6, true);
        // The server decided the next car twice (its event was resent): the arm is still its.
        let again = t.decide(7, next.event_id, BarrierAction::Open);
        assert_eq!(arms(&again), vec![(ArmCommand::Open, Release::Normal)]);
        // The arm never reported rising: the open is sent again for the car still under it.
        assert_eq!(
            arms(&t.send(12, Input::Tick)),
            vec![(ArmCommand::Open, Release::Normal)]
        );
        t.send(13, Input::Arm(ArmPosition::Open));
        // The next car drives through: now the arm closes behind it.
        assert_eq!(
            arms(&t.detector(14, false)),
            vec![(ArmCommand::Close, Release::Normal)]
        );
        // The first car, having paid, drives up again: a new passage.
        t.detector(20, true);
        assert_ne!(
            event(&t.read(20, "湘CD98170", 0.95)).event_id,
            held.event_id
        );
    }

    #[test]
    fn a_car_let_out_whose_leaving_is_reported_after_the_next_cars_decision_stays_deduplicated() {
        let mut t = T::new(Direction::Exit);
        t.detector(0, true);
        let first = event(&t.read(0, "京A12345", 0.95));
        t.decide(1, first.event_id, BarrierAction::Open);
        t.send(2, Input::Arm(ArmPosition::Open));
        // The first car leaves at 3 s; the next is read at 4 s and let out at 5 s before the
        // loop's report arrives.
        let next = event(&t.read(4, "京B11111", 0.95));
        t.decide(5, next.event_id, BarrierAction::Open);
        assert_eq!(arms(&t.late_clear(6, 3)), vec![]);
        // A stray read of the first car driving away is no new passage.
        assert_eq!(
            counts(&t.read(7, "京A12345", 0.9)),
            vec![Count::DuplicateSuppressed]
        );
        // Nor is a decision for it, resent, an open for the car now at the barrier.
        assert_eq!(
            t.decide(8, first.event_id, BarrierAction::Open),
            late(first.event_id)
        );
    }

    #[test]
    fn a_vehicle_let_out_stays_deduplicated_after_leaving_the_loop() {
        let mut t = T::new(Direction::Exit);
        t.detector(0, true);
        let e = event(&t.read(0, "京A12345", 0.95));
        t.decide(1, e.event_id, BarrierAction::Open);
        t.send(2, Input::Arm(ArmPosition::Open));
        t.detector(4, false);
        // A stray read of the car driving away is no new passage.
        assert_eq!(
            counts(&t.read(5, "京A12345", 0.9)),
            vec![Count::DuplicateSuppressed]
        );
        // Nor after a next vehicle, never read, stood on the loop and backed away: its loop
        // cycle must not release the plate of the vehicle before it.
        t.detector(6, true);
        t.detector(7, false);
        assert_eq!(
            counts(&t.read(8, "京A12345", 0.9)),
            vec![Count::DuplicateSuppressed]
        );
    }

    #[test]
    fn a_no_read_is_never_suppressed() {
        let mut t = T::new(Direction::Exit);
        let a = event(&t.read(0, "", 0.0));
        let b = event(&t.read(1, "", 0.0));
        assert_eq!(a.quality, ReadQuality::NoRead);
        assert!(a.candidates.is_empty());
        assert_ne!(a.event_id, b.event_id);
    }

    #[test]
    fn frames_are_voted() {
        let mut t = T::new(Direction::Entry);
        let out = t.send(
            0,
            Input::Reads {
                captured_at: t.t0,
                frames: vec![
                    vec![cand("京A12345", 0.9)],
                    vec![cand("京A12345", 0.9)],
                    vec![],
                ],
                evidence_digest: Some("ab".into()),
            },
        );
        let e = event(&out);
        assert_eq!(e.candidates[0].plate, "京A12345");
        assert_eq!(
            e.quality,
            ReadQuality::Confident,
            "two confident frames and a blank one: the blank frame does not veto"
        );
        assert_eq!(e.evidence_digest.as_deref(), Some("ab"));
    }

    #[test]
    fn open_decision_opens_the_arm_and_forgets_the_event() {
        let mut t = T::new(Direction::Exit);
        let e = event(&t.read(0, "京A12345", 0.95));
        let d = t.decision(e.event_id, BarrierAction::Open);
        let out = t.send(1, Input::Decision(d));
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        assert!(out.contains(&Output::Forget(e.event_id)));
        assert!(out.iter().any(
            |o| matches!(o, Output::Display(d) if d.text.line1 == "Fee 5.00" && d.qr.is_none())
        ));
        assert_eq!(counts(&out), vec![Count::DecisionApplied]);
        t.send(1, Input::Arm(ArmPosition::Opening));
        // Decided in time, and the arm rose: nothing left to do.
        assert!(t.send(10, Input::Tick).is_empty());
    }

    #[test]
    fn hold_shows_the_pay_link_and_a_later_paid_decision_still_opens() {
        let mut t = T::new(Direction::Exit);
        let e = event(&t.read(0, "京A12345", 0.95));
        let out = t.decide(1, e.event_id, BarrierAction::Hold);
        assert!(arms(&out).is_empty());
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Display(d) if d.qr.as_deref() == Some("https://pay/x"))));
        let mut paid = t.decision(e.event_id, BarrierAction::Open);
        paid.reason = DecisionReason::Paid;
        let out = t.send(20, Input::Decision(paid));
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        assert_eq!(counts(&out), vec![Count::DecisionApplied]);
    }

    #[test]
    fn a_decision_for_an_event_from_before_a_restart_only_clears_the_journal() {
        let old = EventId::new();
        let mut t = T::new(Direction::Exit);
        let out = t.decide(0, old, BarrierAction::Open);
        assert_eq!(
            out,
            vec![Output::Count(Count::LateDecision), Output::Forget(old)]
        );
        // Also while this lane waits for a vehicle of its own.
        let e = event(&t.read(1, "京A12345", 0.95));
        let out = t.decide(2, old, BarrierAction::Open);
        assert_eq!(
            out,
            vec![Output::Count(Count::LateDecision), Output::Forget(old)]
        );
        let out = t.decide(2, e.event_id, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
    }

    #[test]
    fn a_decision_under_a_newer_id_is_for_the_vehicle_at_the_barrier() {
        // An attendant corrects an unreadable plate: the server decides the passage again under
        // a new event id, and the car waiting at the barrier is let through.
        let mut t = T::new(Direction::Exit);
        let e = event(&t.read(0, "", 0.0));
        let out = t.decide(1, e.event_id, BarrierAction::Hold);
        assert!(arms(&out).is_empty());
        let corrected = EventId::new();
        let out = t.decide(30, corrected, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        assert_eq!(counts(&out), vec![Count::DecisionApplied]);
    }

    #[test]
    fn a_decision_for_a_vehicle_that_is_no_longer_at_the_barrier_moves_nothing() {
        // The server was away: the first car gave up, the next one is at the barrier when the
        // first car's resent event is finally decided.
        for direction in [Direction::Entry, Direction::Exit] {
            let mut t = T::new(direction);
            let gone = event(&t.read(0, "京A12345", 0.95));
            let here = event(&t.read(10, "京B54321", 0.95));
            for action in [BarrierAction::Open, BarrierAction::Hold] {
                let out = t.decide(20, gone.event_id, action);
                assert_eq!(out, late(gone.event_id), "{direction:?} {action:?}");
            }
            let out = t.decide(21, here.event_id, BarrierAction::Open);
            assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
            assert!(out.contains(&Output::Forget(here.event_id)));
        }
    }

    #[test]
    fn a_second_decision_for_a_vehicle_that_drove_through_moves_nothing() {
        // The server decided an event twice (it was resent while the first decision was on its
        // way). The second decision arrives when the next car stands on the loop and its plate
        // has not reached the gateway yet: the arm must stay down for it.
        for direction in [Direction::Entry, Direction::Exit] {
            let mut t = T::new(direction);
            t.detector(0, true);
            let e = event(&t.read(0, "京A12345", 0.95));
            let open = t.decision(e.event_id, BarrierAction::Open);
            let out = t.send(1, Input::Decision(open.clone()));
            assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
            t.detector(2, false);
            t.detector(3, true);
            for action in [BarrierAction::Open, BarrierAction::Hold] {
                let out = t.decide(4, e.event_id, action);
                assert_eq!(out, late(e.event_id), "{direction:?} {action:?}");
            }
        }
    }

    #[test]
    fn a_repeated_open_for_a_vehicle_still_on_the_loop_opens_again() {
        // The first open command was lost on the way to the arm; the car is still there.
        let mut t = T::new(Direction::Exit);
        t.detector(0, true);
        let e = event(&t.read(0, "京A12345", 0.95));
        let open = t.decision(e.event_id, BarrierAction::Open);
        t.send(1, Input::Decision(open.clone()));
        let out = t.send(5, Input::Decision(open));
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
    }

    /// A car on the loop, read, and an open decision at 1 s for it.
    fn opened_for_a_waiting_car() -> (T, EventId) {
        let mut t = T::new(Direction::Entry);
        t.detector(0, true);
        let e = event(&t.read(0, "京A12345", 0.95));
        let out = t.decide(1, e.event_id, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        (t, e.event_id)
    }

    #[test]
    fn an_arm_that_does_not_rise_is_told_again_while_its_car_waits() {
        let (mut t, _) = opened_for_a_waiting_car();
        let mut resent = 0;
        for secs in 2..=12 {
            let out = t.send(secs, Input::Tick);
            if !out.is_empty() {
                assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
                assert_eq!(counts(&out), vec![Count::ArmResent]);
                resent += 1;
            }
        }
        assert_eq!(
            resent,
            usize::from(ARM_RESENDS),
            "a bounded number of times"
        );
    }

    #[test]
    fn an_arm_that_rises_is_not_told_again() {
        let (mut t, _) = opened_for_a_waiting_car();
        t.send(1, Input::Arm(ArmPosition::Opening));
        for secs in 2..=8 {
            assert!(arms(&t.send(secs, Input::Tick)).is_empty());
        }
    }

    #[test]
    fn no_open_goes_again_once_its_car_left_or_another_was_read() {
        // The loop cleared: the car went (the arm's report lost) or backed away.
        let (mut t, _) = opened_for_a_waiting_car();
        t.detector(1, false);
        for secs in 2..=8 {
            assert!(arms(&t.send(secs, Input::Tick)).is_empty());
        }
        // A newer car was read: the open was for the one before it.
        let (mut t, _) = opened_for_a_waiting_car();
        event(&t.read(1, "京B99999", 0.95));
        for secs in 2..=8 {
            assert!(arms(&t.send(secs, Input::Tick)).is_empty());
        }
        // An arm already open sends no report: nothing is awaited from it.
        let mut t = T::new(Direction::Entry);
        t.send(0, Input::Arm(ArmPosition::Open));
        let e = event(&t.read(0, "京A12345", 0.95));
        t.decide(1, e.event_id, BarrierAction::Open);
        for secs in 2..=8 {
            assert!(arms(&t.send(secs, Input::Tick)).is_empty());
        }
    }

    #[test]
    fn after_losing_the_broker_the_arm_opens_again_only_for_a_new_read() {
        // The arm opened for a car; the broker died, and with it the loop's "clear" for that
        // car and the next car's arrival. The server then decides the first car's resent event
        // again: the car now on the loop is not the one it was for.
        let (mut t, first) = opened_for_a_waiting_car();
        assert!(t.send(1, Input::BrokerLost).is_empty());
        let again = t.decision(first, BarrierAction::Open);
        assert_eq!(t.send(3, Input::Decision(again)), late(first));
        for secs in 4..=9 {
            assert!(
                arms(&t.send(secs, Input::Tick)).is_empty(),
                "no re-sent open"
            );
        }
        // The next car's own read and decision open as usual.
        let next = event(&t.read(10, "京B99999", 0.95));
        let out = t.decide(11, next.event_id, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
    }

    #[test]
    fn the_arm_closes_when_the_loop_clears_behind_the_vehicle() {
        let mut t = T::new(Direction::Exit);
        let out = t.detector(0, true);
        assert!(matches!(&out[..], [Output::State(s)] if s.vehicle_present));
        let e = event(&t.read(0, "京A12345", 0.95));
        t.decide(1, e.event_id, BarrierAction::Open);
        let out = t.send(2, Input::Arm(ArmPosition::Open));
        assert!(matches!(&out[..], [Output::State(s)] if s.arm == ArmPosition::Open));
        assert!(
            t.send(2, Input::Arm(ArmPosition::Open)).is_empty(),
            "no change, no state"
        );
        let out = t.detector(4, false);
        assert_eq!(arms(&out), vec![(ArmCommand::Close, Release::Normal)]);
        assert!(matches!(&out[0], Output::State(s) if !s.vehicle_present));
        // Only once: the next vehicle's loop cycle without an open does not close again.
        t.detector(5, true);
        assert!(arms(&t.detector(6, false)).is_empty());
    }

    #[test]
    fn operator_commands_move_the_arm_as_abnormal_and_are_acked() {
        let mut t = T::new(Direction::Entry);
        let c = t.command(LaneAction::OpenBarrier);
        let out = t.send(0, Input::Command(c.clone()));
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Abnormal)]);
        assert!(out.contains(&Output::Ack(CommandAck {
            command_id: c.command_id,
            ok: true,
            detail: String::new()
        })));
        // An empty-lane lift stays open through loop noise until the operator closes it.
        t.detector(1, true);
        assert!(arms(&t.detector(2, false)).is_empty());
        let out = t.send(3, Input::Command(t.command(LaneAction::CloseBarrier)));
        assert_eq!(arms(&out), vec![(ArmCommand::Close, Release::Abnormal)]);

        let mut wrong = t.command(LaneAction::OpenBarrier);
        wrong.lane = LaneId::parse("other").unwrap();
        let out = t.send(4, Input::Command(wrong));
        assert!(arms(&out).is_empty());
        assert!(out.iter().any(|o| matches!(o, Output::Ack(a) if !a.ok)));
    }

    #[test]
    fn offline_policy_opens_for_allowlisted_confident_plates_and_holds_others() {
        let mut t = T::new(Direction::Exit);
        let allow = Arc::new(AllowSet::new(["京A12345", "京C77777"], 3));
        t.send(0, Input::Allowlist(allow));
        let listed = event(&t.read(0, "京A12345", 0.95));
        let unlisted = event(&t.read(0, "京B54321", 0.95));
        let unsure = event(&t.read(0, "京C77777", 0.5));
        let noread = event(&t.read(0, "", 0.0));
        assert!(t.send(2, Input::Tick).is_empty(), "before the timeout");
        let out = t.send(3, Input::Tick);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        let mut c = counts(&out);
        c.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            c,
            vec![
                Count::OfflineHold,
                Count::OfflineHold,
                Count::OfflineHold,
                Count::OfflineOpen
            ]
        );
        assert!(
            !out.iter().any(|o| matches!(o, Output::Forget(_))),
            "still journaled, so the server hears of it"
        );
        assert!(
            t.send(4, Input::Tick).is_empty(),
            "each event is decided once"
        );

        // The server's late answers: the ones let out or read before the last vehicle move
        // nothing; the held vehicle still at the barrier may still be let out.
        for (id, action) in [
            (listed.event_id, BarrierAction::Hold),
            (unlisted.event_id, BarrierAction::Open),
            (unsure.event_id, BarrierAction::Open),
        ] {
            let out = t.decide(9, id, action);
            assert_eq!(
                out,
                vec![Output::Count(Count::LateDecision), Output::Forget(id)]
            );
        }
        let out = t.decide(9, noread.event_id, BarrierAction::Open);
        assert_eq!(arms(&out), vec![(ArmCommand::Open, Release::Normal)]);
        assert_eq!(counts(&out), vec![Count::DecisionApplied]);
    }

    #[test]
    fn the_vehicle_let_out_offline_is_not_moved_for_by_its_late_decision() {
        let mut t = T::new(Direction::Exit);
        t.send(
            0,
            Input::Allowlist(Arc::new(AllowSet::new(["京A12345"], 1))),
        );
        let e = event(&t.read(0, "京A12345", 0.95));
        assert_eq!(
            counts(&t.send(3, Input::Tick)),
            vec![Count::OfflineOpen],
            "let out by the offline policy"
        );
        // Still the last vehicle read here, but it has left: the decision only clears the journal.
        let out = t.decide(30, e.event_id, BarrierAction::Open);
        assert_eq!(
            out,
            vec![
                Output::Count(Count::LateDecision),
                Output::Forget(e.event_id)
            ]
        );
    }

    #[test]
    fn entries_have_no_offline_policy() {
        let mut t = T::new(Direction::Entry);
        t.send(
            0,
            Input::Allowlist(Arc::new(AllowSet::new(["京A12345"], 1))),
        );
        event(&t.read(0, "京A12345", 0.95));
        assert!(t.send(30, Input::Tick).is_empty());
    }

    #[test]
    fn misrouted_decisions_are_ignored() {
        let mut t = T::new(Direction::Exit);
        let mut d = t.decision(EventId::new(), BarrierAction::Open);
        d.lot = LotId::parse("lot2").unwrap();
        assert_eq!(
            t.send(0, Input::Decision(d)),
            vec![Output::Count(Count::Misrouted)]
        );
    }
}
