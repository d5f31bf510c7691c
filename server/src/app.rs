//! The use cases, one function each: a passage (entry or exit), paying at the exit, paying
//! arrears, correcting a plate, an operator's manual lift, the lot's configuration. Business
//! logic lives here, once, above the storage seam; the rules themselves are the pure functions
//! of [`crate::decide`]. Each use case loads the facts it needs, lets the rules decide, commits
//! once, and publishes through the [`Outbound`] port (MQTT in production, anything in tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use parkpay_protocol::{
    encode, BarrierAction, Clock, Decision, DecisionReason, Direction, GatewayId, LaneAction,
    LaneId, LotId, OperatorCommand, PassageEvent, Plate, PlateColour, ReadQuality, Topic,
};
use tokio::sync::Notify;
use uuid::Uuid;

use parkpay_protocol::plate::{edit_distance, match_key};

use crate::decide::{
    self, Collect, Effect, EntryFacts, ExitFacts, MandateFacts, Plan, Spaces, TimeLimits,
};
use crate::domain::*;
use crate::live::{Live, LiveEvent};
use crate::metrics::Metrics;
use crate::store::*;
use crate::tariff::Tariff;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(what),
            StoreError::Duplicate(what) => AppError::Conflict(what),
            StoreError::Conflict(what) => AppError::Conflict(what),
            other => AppError::Store(other),
        }
    }
}

impl AppError {
    /// True for failures that may pass by themselves (the database restarting, a dropped
    /// connection, a busy lock): the work is tried again rather than given up.
    pub fn is_transient(&self) -> bool {
        matches!(self, AppError::Store(e) if e.is_transient())
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Where the server's messages to the lanes go: the MQTT broker in production.
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// Publishes at QoS 1; `retain` keeps it as the topic's latest state.
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String>;
}

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Base URL drivers are sent to for paying at the exit.
    pub public_url: String,
    /// How far capture instants may lie from our clock.
    pub limits: TimeLimits,
    /// Session cookies carry `Secure` (only sent over HTTPS, or to localhost).
    pub secure_cookies: bool,
    /// The sandbox provider's own secret, which its settle and wallet calls require; `None`
    /// when the sandbox is not the configured provider (the calls do not exist then).
    pub sandbox_secret: Option<String>,
}

/// Everything a use case may touch. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub outbound: Arc<dyn Outbound>,
    /// Gateway keys: events are checked, and messages to gateways signed, with them.
    pub keys: Arc<crate::keys::KeyRing>,
    pub live: Live,
    pub metrics: Arc<Metrics>,
    pub charges_due: Arc<Notify>,
    /// Lots and lanes as the hot path reads them (kept for a moment).
    pub config: Arc<crate::cache::Configured>,
    /// Decisions handed to the broker, to be marked published in the outbox.
    pub published: Published,
    /// Wakes the allowlist publisher: a gateway came online or a mandate changed.
    pub allowlists_due: Arc<Notify>,
    /// The payment provider, for what is paid at once (a pass): stays are charged by the worker.
    pub provider: Arc<dyn crate::payments::PaymentProvider>,
    pub settings: Arc<AppSettings>,
    /// The driver portal's SMS sender and limits.
    pub portal: Arc<crate::portal::PortalSettings>,
}

/// Outbox rows the broker has taken. They are marked published in batches, off the barrier's
/// time, by [`Published::run`]; a row whose mark is lost (a crash first) is simply sent again by
/// the outbox resender, and the gateway ignores a decision for a passage it already has.
#[derive(Clone)]
pub struct Published(tokio::sync::mpsc::UnboundedSender<Uuid>);

impl Published {
    pub fn channel() -> (Published, tokio::sync::mpsc::UnboundedReceiver<Uuid>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Published(tx), rx)
    }

    pub fn mark(&self, id: Uuid) {
        // Nobody marking (an administration command): the resender covers it.
        let _ = self.0.send(id);
    }

    /// Marks what was published, as many rows per statement as have gathered meanwhile, until
    /// `stop`; then marks what is left.
    pub async fn run(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
        store: Arc<dyn crate::store::Store>,
        clock: Arc<dyn Clock>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        const BATCH: usize = 500;
        const GATHER: Duration = Duration::from_millis(50);
        let mut ids = Vec::with_capacity(BATCH);
        loop {
            let open = tokio::select! {
                n = rx.recv_many(&mut ids, BATCH) => n > 0,
                _ = stop.cancelled() => {
                    while let Ok(id) = rx.try_recv() {
                        ids.push(id);
                    }
                    false
                }
            };
            if open && ids.len() < BATCH {
                // Let the marks of a busy moment gather: one commit for many rows. (The
                // resender leaves a row alone until it has been unmarked for 2 s.)
                tokio::select! {
                    _ = tokio::time::sleep(GATHER) => {}
                    _ = stop.cancelled() => {}
                }
                while ids.len() < BATCH {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
            }
            if !ids.is_empty() {
                if let Err(e) = store.mark_published(&ids, clock.now()).await {
                    tracing::warn!(error = %e, rows = ids.len(), "could not mark decisions published; the outbox will resend them");
                }
                ids.clear();
            }
            if !open {
                return;
            }
        }
    }
}

/// A plate correction as it would be decided now, before anything is written.
#[derive(Debug, Clone)]
pub struct PlannedCorrection {
    pub exception: ExceptionRecord,
    pub plate: Plate,
    /// The passage as corrected, under the new event id it would be decided as.
    pub event: PassageEvent,
    /// The held passage's own event id.
    pub original: parkpay_protocol::EventId,
    pub plan: Plan,
}

impl PlannedCorrection {
    /// Why this correction must first be confirmed against the picture, if it must: its plate
    /// fits no national layout, or it is an exit that would close no open stay (so it would
    /// settle nothing and only hold the car again).
    pub fn needs_confirmation(&self) -> Option<String> {
        let plate = self.plate.as_str();
        if self.plate.region() == parkpay_protocol::Region::Generic {
            return Some(format!(
                "{plate} fits no national plate layout; check it against the picture and \
                 confirm the correction (\"confirmed\": true)"
            ));
        }
        let closes = matches!(self.plan.effect, Effect::Close { .. });
        if self.event.direction == Direction::Exit && !closes {
            return Some(format!(
                "no open stay in lot {} matches {plate}: the car would be held again ({}); \
                 check the plate against the picture and confirm the correction \
                 (\"confirmed\": true)",
                self.event.lot,
                reason_label(self.plan.reason)
            ));
        }
        None
    }
}

/// Writes that ride along with a passage in its transaction.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) resolves: Option<(Uuid, String)>,
    pub(crate) audit: Vec<AuditEntry>,
    /// The capture instant was already checked when the event first arrived (a correction).
    pub(crate) time_checked: bool,
    /// The open session an attendant matched this exit to (its entry was misread), or the one
    /// a plateless car's ticket opened.
    pub(crate) session: Option<Uuid>,
    /// What the passage is decided as having read, instead of its candidates (a ticket number).
    pub(crate) reads: Option<Vec<decide::Read>>,
    /// A ticket to issue with the stay an entry opens: the secret's SHA-256 and the held entry.
    pub(crate) ticket: Option<(String, Uuid)>,
}

fn new_id() -> Uuid {
    Uuid::now_v7()
}

impl App {
    fn outbox(&self, decision: &Decision) -> OutboxMessage {
        OutboxMessage {
            id: new_id(),
            topic: Topic::Decisions(decision.lot.clone(), decision.lane.clone()).to_string(),
            payload: encode(decision, self.clock.now(), None),
        }
    }

    /// A lot as the hot path sees it: read at most every [`crate::cache::TTL`].
    pub async fn lot(&self, id: &LotId) -> AppResult<Option<Arc<Lot>>> {
        Ok(self.config.lot(self.store.as_ref(), id).await?)
    }

    /// A lane's configuration as ingest sees it: read at most every [`crate::cache::TTL`].
    pub async fn lane(
        &self,
        lot: &LotId,
        lane: &LaneId,
    ) -> crate::store::StoreResult<Option<Lane>> {
        self.config.lane(self.store.as_ref(), lot, lane).await
    }

    fn audit(&self, actor: &str, action: &str, subject: String, detail: String) -> AuditEntry {
        AuditEntry {
            id: new_id(),
            at: self.clock.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            subject,
            detail,
        }
    }

    /// Handles one passage event: decides, commits, publishes the decision. A duplicate event id
    /// replays the stored decision and changes nothing.
    pub async fn handle_passage(
        &self,
        ev: &PassageEvent,
        payload: &str,
        received: Instant,
    ) -> AppResult<Decision> {
        self.passage(ev, payload, received, Extra::default()).await
    }

    pub(crate) async fn passage(
        &self,
        ev: &PassageEvent,
        payload: &str,
        received: Instant,
        extra: Extra,
    ) -> AppResult<Decision> {
        // A duplicate event id is found by the transaction (its first statement inserts the
        // event), which then hands back the stored decision: no lookup ahead of every event.
        // A conflict means another instance (or a concurrent duplicate) changed what we read:
        // read again and decide again; constraints guarantee nothing is written twice.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let limits = if extra.time_checked {
                TimeLimits::unbounded()
            } else {
                self.settings.limits
            };
            let reads = extra.reads.clone().unwrap_or_else(|| decide::reads(ev));
            let plan = match ev.direction {
                Direction::Entry => self.plan_entry(ev, limits, reads).await?,
                Direction::Exit => self.plan_exit(ev, limits, reads, extra.session).await?,
            };
            let (mut write, new_charge) = self.write(ev, payload, &plan);
            write.resolves = extra.resolves.clone();
            write.audit = extra.audit.clone();
            if let (Some((hash, held)), Some(session)) = (&extra.ticket, write.session_id) {
                write.ticket = Some(NewTicket {
                    secret_hash: hash.clone(),
                    session_id: session,
                    entry_event_id: *held,
                });
            }
            for v in &write.redeem {
                write.audit.push(self.audit(
                    "system",
                    "validation.redeemed",
                    format!("validation {v}"),
                    format!("by the exit {} at {}", ev.event_id, ev.lane),
                ));
            }
            match self.store.commit_passage(&write).await {
                Ok(PassageOutcome::Committed) => {
                    let d = write.decision.clone();
                    self.metrics.event(reason_label(d.reason));
                    self.metrics
                        .decision_latency
                        .observe(received.elapsed().as_secs_f64());
                    self.publish_decision(&d, Some(write.outbox.id)).await;
                    if new_charge {
                        self.charges_due.notify_one();
                    }
                    if ev.direction == Direction::Entry && d.session_id.is_some() {
                        // A car parked: its plate may belong on this lot's allowlist now.
                        self.allowlists_due.notify_one();
                        if let Some(session) = d.session_id {
                            self.register_stay(session);
                        }
                    }
                    self.live.send(LiveEvent::passage(ev, &d));
                    self.live.send(LiveEvent::decision(&d));
                    return Ok(d);
                }
                Ok(PassageOutcome::Duplicate(stored)) => {
                    self.metrics.event("duplicate");
                    self.publish_decision(&stored, None).await;
                    return Ok(*stored);
                }
                Err(StoreError::Conflict(why)) if attempts < 4 && extra.resolves.is_none() => {
                    tracing::debug!(event = %ev.event_id, %why, "passage conflicted; deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Tells the lane that an event it sent could not be processed (it is a dead letter), so
    /// the car is held for an attendant instead of waiting for an answer that will not come.
    pub async fn reject_passage(&self, ev: &PassageEvent) {
        let plate = decide::reads(ev).first().map(|r| r.plate.clone());
        let reason = DecisionReason::Rejected;
        let d = Decision {
            event_id: ev.event_id,
            lot: ev.lot.clone(),
            lane: ev.lane.clone(),
            action: BarrierAction::Hold,
            reason,
            display: decide::display(reason, plate.as_deref(), None, None),
            plate,
            session_id: None,
            fee: None,
            owed: None,
            pay_url: None,
            decided_at: self.clock.now(),
        };
        self.metrics.event(reason_label(reason));
        self.publish_decision(&d, None).await;
        self.live.send(LiveEvent::decision(&d));
    }

    async fn publish_decision(&self, d: &Decision, outbox: Option<Uuid>) {
        let topic = Topic::Decisions(d.lot.clone(), d.lane.clone()).to_string();
        match self
            .outbound
            .publish(&topic, encode(d, self.clock.now(), None), false)
            .await
        {
            Ok(()) => {
                if let Some(id) = outbox {
                    self.published.mark(id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "decision not published now; the outbox will resend it")
            }
        }
    }

    async fn plan_entry(
        &self,
        ev: &PassageEvent,
        limits: TimeLimits,
        reads: Vec<decide::Read>,
    ) -> AppResult<Plan> {
        let lot = self.lot(&ev.lot).await?;
        let lot_known = lot.is_some();
        let (mut owner, mut inside, mut lists, mut spaces) = (None, None, Vec::new(), None);
        if let (Some(lot), ReadQuality::Confident, Some(top)) = (&lot, ev.quality, reads.first()) {
            // Independent reads, all at once: one round trip's wait instead of four.
            let occupancy = async {
                if lot.capacity > 0 {
                    self.store.occupancy(&ev.lot).await.map(Some)
                } else {
                    Ok(None)
                }
            };
            let (plate, occupied, open) = tokio::try_join!(
                self.store.plate_facts(&top.plate, &ev.lot),
                occupancy,
                self.store.open_session_of(&ev.lot, &top.plate),
            )?;
            owner = plate.vehicle.map(|v| v.driver_id);
            lists = plate.lists;
            spaces = occupied.map(|occupancy| Spaces {
                occupancy,
                capacity: lot.capacity,
                reserved: lot.reserved_spaces,
            });
            inside = open.map(|s| OpenSession {
                id: s.id,
                plate_key: top.key.clone(),
                plate: s.plate,
            });
        }
        Ok(decide::decide_entry(&EntryFacts {
            now: self.clock.now(),
            limits,
            event: ev,
            lot_known,
            reads: &reads,
            owner,
            inside,
            lists: &lists,
            spaces,
        }))
    }

    /// The exit's facts are read in two rounds of concurrent reads: what the read plate leads
    /// to (its open stay with the stay's validations and provider state, its vehicle and its
    /// lists: two statements for a plain exit), then what the payer leads to (one more).
    async fn plan_exit(
        &self,
        ev: &PassageEvent,
        limits: TimeLimits,
        reads: Vec<decide::Read>,
        matched: Option<Uuid>,
    ) -> AppResult<Plan> {
        let lot = self.lot(&ev.lot).await?;
        let top = reads
            .first()
            .filter(|_| ev.quality == ReadQuality::Confident)
            .filter(|_| lot.is_some());
        let stay = async {
            match (top, matched) {
                (Some(_), Some(id)) => self.matched_stay(id, &ev.lot).await,
                (Some(top), None) => self.store.open_stay_of(&ev.lot, &top.plate).await,
                _ => Ok(None),
            }
        };
        // The vehicle registered with exactly the read plate (its owner, lock and class) and
        // the plate's lists.
        let plate = async {
            match top {
                Some(top) => self.store.plate_facts(&top.plate, &ev.lot).await,
                None => Ok(PlateFacts::default()),
            }
        };
        let (stay, PlateFacts { vehicle, lists }) = tokio::try_join!(stay, plate)?;
        let (session, validations, provider) = match stay {
            Some(s) => (Some(s.session), s.validations, s.provider),
            None => (None, Vec::new(), None),
        };
        let owner = vehicle.as_ref().map(|v| v.driver_id);
        let driver = match (&session, top) {
            // A matched session's driver came from the misread entry plate: the car is the
            // owner's of the plate the attendant read, and nobody else's.
            (Some(_), Some(_)) if matched.is_some() => owner,
            (Some(s), Some(top)) if s.plate == top.plate => s.driver_id.or(owner),
            (Some(s), _) => match s.driver_id {
                Some(d) => Some(d),
                None => self.owner_of(&s.plate).await?,
            },
            (None, _) => None,
        };
        let payer = async {
            match (driver, &lot) {
                (Some(driver), Some(lot)) => self
                    .store
                    .payer_facts(driver, month_start(self.clock.now(), &lot.tariff))
                    .await
                    .map(Some),
                _ => Ok(None),
            }
        };
        // Only on the way to a hold: the scan helps the attendant, it never decides.
        let open = async {
            match (top, &session) {
                (Some(_), None) => self.store.open_sessions(&ev.lot).await.map(Some),
                _ => Ok(None),
            }
        };
        // Only without an open stay: the plate's latest stay here that ended at an exit (its
        // car may be back at an exit within the tariff's exit window).
        let settled = async {
            match (top, &session) {
                (Some(top), None) => self.store.last_exit_of(&ev.lot, &top.plate).await,
                _ => Ok(None),
            }
        };
        let (payer, open, settled) = tokio::try_join!(payer, open, settled)?;
        let look_alikes = match open {
            Some(open) => decide::look_alikes(&reads, &open),
            None => Vec::new(),
        };
        let (mut mandates, mut arrears) = (Vec::new(), 0);
        if let Some((facts, owed)) = payer {
            mandates = facts
                .into_iter()
                .map(|(mandate, spent)| MandateFacts {
                    spent_this_month: match (mandate.status, mandate.monthly_cap) {
                        (MandateStatus::Active, Some(_)) => spent,
                        _ => 0,
                    },
                    mandate,
                })
                .collect();
            arrears = owed;
        }
        let (mut class, mut locked) = (VehicleClass::Small, false);
        if let Some(top) = top {
            locked = vehicle.as_ref().is_some_and(|v| v.locked_at.is_some());
            class = class_of(
                vehicle.and_then(|v| v.class),
                &top.plate,
                colour_of(ev, &top.plate),
            );
        }
        // A stay the provider marked blocked (WeChat: PAUSE, OVERDUE, OUT_SERVICE, ...) is
        // not deducted; the exit asks for payment and says why.
        let blocked = provider
            .filter(|p| p.state == ParkingState::Blocked)
            .map(|p| p.block_reason.unwrap_or_else(|| "BLOCKED".into()));
        Ok(decide::decide_exit(&ExitFacts {
            now: self.clock.now(),
            blocked: blocked.as_deref(),
            limits,
            event: ev,
            tariff: lot.as_ref().map(|l| &l.tariff),
            reads: &reads,
            session: session.as_ref(),
            look_alikes: &look_alikes,
            settled: settled.as_ref(),
            driver,
            mandates: &mandates,
            arrears,
            lists: &lists,
            class,
            locked,
            validations: &validations,
        }))
    }

    /// The open stay an attendant matched an exit to, with its validations and provider state.
    async fn matched_stay(&self, id: Uuid, lot: &LotId) -> StoreResult<Option<OpenStay>> {
        let Some(session) = self
            .store
            .session(id)
            .await?
            .filter(|s| s.status == SessionStatus::Open && &s.lot == lot)
        else {
            return Ok(None);
        };
        let (validations, provider) = tokio::try_join!(
            self.store.validations_of_session(id),
            self.store.provider_parking(id)
        )?;
        Ok(Some(OpenStay {
            session,
            validations,
            provider,
        }))
    }

    /// The driver whose vehicle has exactly this plate. A look-alike plate is somebody else's
    /// car: it is never taken for this one.
    async fn owner_of(&self, plate: &str) -> AppResult<Option<Uuid>> {
        Ok(self.store.vehicle(plate).await?.map(|v| v.driver_id))
    }

    /// Turns a plan into the rows that make it true and the decision the lane gets.
    fn write(&self, ev: &PassageEvent, payload: &str, plan: &Plan) -> (PassageWrite, bool) {
        let now = self.clock.now();
        let mut decision = Decision {
            event_id: ev.event_id,
            lot: ev.lot.clone(),
            lane: ev.lane.clone(),
            action: plan.action,
            reason: plan.reason,
            plate: plan.plate.clone(),
            session_id: plan.session,
            fee: plan.fee,
            owed: plan.owed,
            pay_url: None,
            display: decide::display(plan.reason, plan.plate.as_deref(), plan.fee, plan.owed),
            decided_at: now,
        };
        if plan.reason == DecisionReason::Unreadable {
            // A car without a plate takes a ticket with the code on the display.
            decision.pay_url = Some(format!(
                "{}/ticket/{}",
                self.settings.public_url.trim_end_matches('/'),
                ev.event_id
            ));
        }
        let mut sessions = Vec::new();
        let mut charge = None;
        let mut redeem = Vec::new();
        match &plan.effect {
            Effect::None => {}
            Effect::MoveHeldExit { session } => {
                decision.pay_url = Some(format!(
                    "{}/pay/{session}",
                    self.settings.public_url.trim_end_matches('/')
                ));
                sessions.push(SessionChange::MoveHeldExit {
                    id: *session,
                    exit_event_id: ev.event_id.0,
                    exit_lane: ev.lane.to_string(),
                });
            }
            Effect::Open {
                read,
                driver,
                stale,
            } => {
                let id = new_id();
                decision.session_id = Some(id);
                sessions.extend(stale.iter().map(|&id| SessionChange::MarkStale { id }));
                sessions.push(SessionChange::Open(
                    Session {
                        id,
                        lot: ev.lot.clone(),
                        plate: read.plate.clone(),
                        status: SessionStatus::Open,
                        driver_id: *driver,
                        entry_event_id: Some(ev.event_id.0),
                        entry_lane: Some(ev.lane.clone()),
                        entry_at: ev.captured_at,
                        exit_event_id: None,
                        exit_lane: None,
                        exit_at: None,
                        fee: None,
                        quote: None,
                        updated_at: now,
                    },
                    read.key.clone(),
                ));
            }
            Effect::Close {
                session,
                status,
                exit_at,
                quote,
                driver,
                collect,
                rename,
                redeem: redeemed,
            } => {
                redeem.clone_from(redeemed);
                sessions.push(SessionChange::Close {
                    id: *session,
                    status: *status,
                    exit_event_id: ev.event_id.0,
                    exit_lane: ev.lane.to_string(),
                    exit_at: *exit_at,
                    fee: quote.total,
                    // A quote is plain data: serialising it cannot fail.
                    quote_json: serde_json::to_string(quote).expect("a quote serialises"),
                    driver_id: *driver,
                    plate: rename.as_ref().map(|r| (r.plate.clone(), r.key.clone())),
                });
                if let Some(collect) = collect {
                    let id = new_id();
                    let (status, method, mandate_id) = match collect {
                        Collect::Mandate(m) => {
                            (ChargeStatus::Pending, ChargeMethod::Mandate, Some(*m))
                        }
                        Collect::PayAtExit => {
                            decision.pay_url = Some(format!(
                                "{}/pay/{session}",
                                self.settings.public_url.trim_end_matches('/')
                            ));
                            (ChargeStatus::AwaitingPayment, ChargeMethod::PayAtExit, None)
                        }
                    };
                    charge = Some(Charge {
                        id,
                        session_id: *session,
                        lot: ev.lot.clone(),
                        driver_id: *driver,
                        mandate_id,
                        amount: quote.total,
                        status,
                        method,
                        // Fixed for the life of the charge: every retry reuses it (WeChat's
                        // out_trade_no, <= 32 characters).
                        idempotency_key: id.simple().to_string(),
                        attempts: 0,
                        next_attempt_at: None,
                        provider_txn: None,
                        last_error: None,
                        created_at: now,
                        updated_at: now,
                        settled_at: None,
                        refunded: parkpay_protocol::Money::new(0, quote.total.currency),
                        advanced: false,
                    });
                }
            }
        }
        let exceptions = plan
            .issues
            .iter()
            .map(|i| ExceptionRecord {
                id: new_id(),
                lot: ev.lot.clone(),
                lane: Some(ev.lane.clone()),
                kind: i.kind,
                plate: i.plate.clone(),
                event_id: Some(ev.event_id.0),
                session_id: i.session,
                charge_id: None,
                detail: i.detail.clone(),
                created_at: now,
                resolved_at: None,
                resolution: None,
            })
            .collect();
        let new_charge = charge
            .as_ref()
            .is_some_and(|c: &Charge| c.status == ChargeStatus::Pending);
        let write = PassageWrite {
            event: NewEvent {
                event_id: ev.event_id.0,
                lot: ev.lot.clone(),
                lane: ev.lane.to_string(),
                gateway: ev.gateway.to_string(),
                direction: ev.direction.as_str().to_string(),
                captured_at: ev.captured_at,
                received_at: now,
                // The parsed best read, never the raw candidate text (which may hold anything).
                plate: plan.plate.clone(),
                quality: ev.quality.as_str().to_string(),
                resent: ev.resent,
                payload: payload.to_string(),
            },
            resolves: None,
            audit: Vec::new(),
            redeem,
            ticket: None,
            session_id: decision.session_id,
            outbox: self.outbox(&decision),
            decision,
            sessions,
            charge,
            exceptions,
        };
        (write, new_charge)
    }

    /// A driver pays a fee held at the exit (by QR code): the charge settles, the session
    /// closes and the exit barrier opens.
    pub async fn pay_session(
        &self,
        session_id: Uuid,
        method: ChargeMethod,
        actor: &str,
    ) -> AppResult<Charge> {
        let session = self
            .store
            .session(session_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("session {session_id}")))?;
        if session.status != SessionStatus::AwaitingPayment {
            return Err(AppError::Conflict(format!(
                "session {session_id} is {}, not awaiting payment",
                session.status
            )));
        }
        let charge = self
            .store
            .charge_for_session(session_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge for session {session_id}")))?;
        self.pay_charge(charge.id, method, actor).await
    }

    /// Settles a payable charge: arrears, or a fee held at the exit (which also opens the lane).
    pub async fn pay_charge(
        &self,
        charge_id: Uuid,
        method: ChargeMethod,
        actor: &str,
    ) -> AppResult<Charge> {
        self.settle_directly(charge_id, ChargeStatus::Succeeded, Some(method), actor, "")
            .await
    }

    /// Closes a payable charge as paid (`Succeeded`, by `method`) or let go (`Waived`, with
    /// `note` as the reason); a car held at the exit for it is let out, and the charge's open
    /// exceptions are resolved, all in one transaction.
    pub(crate) async fn settle_directly(
        &self,
        charge_id: Uuid,
        outcome: ChargeStatus,
        method: Option<ChargeMethod>,
        actor: &str,
        note: &str,
    ) -> AppResult<Charge> {
        let charge = self
            .store
            .charge(charge_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge {charge_id}")))?;
        if !charge.status.is_payable() {
            return Err(AppError::Conflict(format!(
                "charge {charge_id} is {}, nothing to {}",
                charge.status,
                if outcome == ChargeStatus::Waived {
                    "waive"
                } else {
                    "pay"
                }
            )));
        }
        let method = method.unwrap_or(charge.method);
        let reason = if outcome == ChargeStatus::Waived {
            DecisionReason::Operator
        } else {
            DecisionReason::Paid
        };
        let now = self.clock.now();
        let session = self.store.session(charge.session_id).await?;
        let release = match &session {
            Some(s) if s.status == SessionStatus::AwaitingPayment => {
                let (Some(event), Some(lane)) = (s.exit_event_id, s.exit_lane.clone()) else {
                    return Err(AppError::Conflict(format!(
                        "session {} has no exit lane",
                        s.id
                    )));
                };
                let d = Decision {
                    event_id: parkpay_protocol::EventId(event),
                    lot: s.lot.clone(),
                    lane,
                    action: BarrierAction::Open,
                    reason,
                    plate: Some(s.plate.clone()),
                    session_id: Some(s.id),
                    fee: Some(charge.amount),
                    owed: None,
                    pay_url: None,
                    display: decide::display(reason, Some(&s.plate), Some(charge.amount), None),
                    decided_at: now,
                };
                let outbox = self.outbox(&d);
                Some((s.id, d, outbox))
            }
            _ => None,
        };
        let audit = AuditEntry {
            id: new_id(),
            at: now,
            actor: actor.to_string(),
            action: if outcome == ChargeStatus::Waived {
                "charge.waived"
            } else {
                "charge.paid"
            }
            .into(),
            subject: format!("charge {charge_id}"),
            detail: if outcome == ChargeStatus::Waived {
                format!("{} waived: {note}", charge.amount)
            } else {
                format!("{} paid by {}", charge.amount, method.as_str())
            },
        };
        self.store
            .pay_directly(&DirectPayment {
                charge_id,
                method,
                outcome,
                at: now,
                release: release.clone(),
                audit,
            })
            .await?;
        if let Some((_, d, outbox)) = release {
            self.publish_decision(&d, Some(outbox.id)).await;
            self.live.send(LiveEvent::decision(&d));
        }
        self.metrics.charge(outcome);
        let paid = self
            .store
            .charge(charge_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge {charge_id}")))?;
        self.live.send(LiveEvent::charge(&paid));
        Ok(paid)
    }

    /// An operator resolves an unreadable passage by reading the plate off the evidence: the
    /// passage is decided again as if the camera had read `plate` surely, under a new event id
    /// (the original keeps its record), and the lane gets the new decision. The resolution, the
    /// audit row and the new decision commit together, or not at all.
    ///
    /// With `session`, the attendant says more: this exit is the car of that open session,
    /// whose entry was misread. Only a look-alike of the corrected plate may be named (the
    /// exception lists them); the stay is then recorded under the corrected plate and charged to
    /// that plate's owner, never to whoever owned the misread one.
    ///
    /// A correction that would settle nothing (an exit that matches no open stay, which would
    /// only be held again as `no_entry`) or whose plate fits no national layout is refused
    /// (`Conflict`) unless the operator `confirmed` it against the picture: see
    /// [`PlannedCorrection::needs_confirmation`].
    pub async fn correct_plate(
        &self,
        exception_id: Uuid,
        plate: &str,
        session: Option<Uuid>,
        confirmed: bool,
        operator: &str,
    ) -> AppResult<Decision> {
        if operator.trim().is_empty() {
            return Err(AppError::BadRequest("operator is required".into()));
        }
        let planned = self.plan_correction(exception_id, plate, session).await?;
        if !confirmed {
            if let Some(why) = planned.needs_confirmation() {
                return Err(AppError::Conflict(why));
            }
        }
        let PlannedCorrection {
            plate,
            event: ev,
            original,
            ..
        } = planned;
        let corrected = String::from_utf8_lossy(&encode(&ev, self.clock.now(), None)).into_owned();
        let checked = if confirmed {
            ", confirmed against the picture"
        } else {
            ""
        };
        let extra = Extra {
            resolves: Some((
                exception_id,
                format!("plate corrected to {} by {operator}", plate.as_str()),
            )),
            audit: vec![self.audit(
                operator,
                "exception.plate_corrected",
                format!("exception {exception_id}"),
                match session {
                    Some(sid) => format!(
                        "event {original} read as {}, matched to session {sid}{checked}; decided again as event {}",
                        plate.as_str(),
                        ev.event_id
                    ),
                    None => format!(
                        "event {original} read as {}{checked}; decided again as event {}",
                        plate.as_str(),
                        ev.event_id
                    ),
                },
            )],
            time_checked: true,
            session,
            ..Extra::default()
        };
        let d = self.passage(&ev, &corrected, Instant::now(), extra).await?;
        self.live.send(LiveEvent::superseded(original, &d));
        Ok(d)
    }

    /// What correcting the plate of an exception's passage would do, decided exactly as the
    /// correction itself decides it, without writing anything: the preview an operator checks
    /// against the picture before confirming.
    pub async fn plan_correction(
        &self,
        exception_id: Uuid,
        plate: &str,
        session: Option<Uuid>,
    ) -> AppResult<PlannedCorrection> {
        let plate = Plate::parse(plate).map_err(|e| AppError::Unprocessable(e.to_string()))?;
        let x = self
            .store
            .exception(exception_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("exception {exception_id}")))?;
        if x.resolved_at.is_some() {
            return Err(AppError::Conflict(format!(
                "exception {exception_id} is already resolved"
            )));
        }
        match x.kind {
            ExceptionKind::Unreadable
            | ExceptionKind::LowConfidence
            | ExceptionKind::NoEntry
            | ExceptionKind::Ambiguous => {}
            ExceptionKind::StaleEntry
            | ExceptionKind::ChargeFailed
            | ExceptionKind::UnknownLot
            | ExceptionKind::ClockSkew
            | ExceptionKind::ExitBeforeEntry
            | ExceptionKind::PricingFailed
            | ExceptionKind::Blacklisted
            | ExceptionKind::LockedExit => {
                return Err(AppError::Conflict(format!(
                    "a {} exception is not resolved by correcting a plate",
                    x.kind
                )));
            }
        }
        if let Some(sid) = session {
            let s = self
                .store
                .session(sid)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("session {sid}")))?;
            let alike = s.lot == x.lot
                && (s.plate == plate.as_str()
                    || edit_distance(&match_key(&s.plate), &plate.match_key()) <= 1);
            if x.kind != ExceptionKind::NoEntry || s.status != SessionStatus::Open || !alike {
                return Err(AppError::Unprocessable(format!(
                    "session {sid} is not an open stay in lot {} with a plate like {}; only an \
                     exit held as no_entry can be matched to a look-alike",
                    x.lot,
                    plate.as_str()
                )));
            }
        }
        let mut ev = self.held_passage(&x).await?;
        let original = ev.event_id;
        ev.event_id = parkpay_protocol::EventId::new();
        ev.candidates = vec![parkpay_protocol::PlateCandidate {
            plate: plate.as_str().to_string(),
            confidence: 1.0,
            colour: ev.candidates.first().map(|c| c.colour).unwrap_or_default(),
        }];
        ev.quality = ReadQuality::Confident;
        // As `passage` decides a correction: the capture instant was checked on arrival.
        let limits = TimeLimits::unbounded();
        let reads = decide::reads(&ev);
        let plan = match ev.direction {
            Direction::Entry => self.plan_entry(&ev, limits, reads).await?,
            Direction::Exit => self.plan_exit(&ev, limits, reads, session).await?,
        };
        Ok(PlannedCorrection {
            exception: x,
            plate,
            event: ev,
            original,
            plan,
        })
    }

    /// The passage event an exception was raised for, as it was received.
    pub(crate) async fn held_passage(&self, x: &ExceptionRecord) -> AppResult<PassageEvent> {
        let event_id = x
            .event_id
            .ok_or_else(|| AppError::Conflict("the exception has no passage".into()))?;
        let payload = self
            .store
            .event_payload(event_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("event {event_id}")))?;
        Ok(
            parkpay_protocol::decode::<PassageEvent>(payload.as_bytes(), None)
                .map_err(|e| AppError::Unprocessable(format!("stored event {event_id}: {e}")))?
                .body,
        )
    }

    /// Decides a held passage again, as it was read, under a new event id, once what held it has
    /// changed (its owner unlocked the car); resolves the exception it raised. The car still at
    /// the barrier gets the new decision, as after a plate correction.
    pub async fn decide_again(
        &self,
        x: &ExceptionRecord,
        resolution: String,
        audit: AuditEntry,
    ) -> AppResult<Decision> {
        let mut ev = self.held_passage(x).await?;
        let original = ev.event_id;
        ev.event_id = parkpay_protocol::EventId::new();
        let text = String::from_utf8_lossy(&encode(&ev, self.clock.now(), None)).into_owned();
        let extra = Extra {
            resolves: Some((x.id, resolution)),
            audit: vec![audit],
            time_checked: true,
            ..Extra::default()
        };
        let d = self.passage(&ev, &text, Instant::now(), extra).await?;
        self.live.send(LiveEvent::superseded(original, &d));
        Ok(d)
    }

    /// An operator lifts a lane's barrier by hand. Always audited; a reason is required.
    pub async fn open_lane(
        &self,
        lot: &LotId,
        lane: &LaneId,
        reason: &str,
        operator: &str,
    ) -> AppResult<Uuid> {
        self.command_lane(lot, lane, LaneAction::OpenBarrier, reason, operator)
            .await
    }

    /// Lowers a lane's barrier by hand (after a lift for an empty lane, which stays up);
    /// audited like a lift.
    pub async fn close_lane(
        &self,
        lot: &LotId,
        lane: &LaneId,
        reason: &str,
        operator: &str,
    ) -> AppResult<Uuid> {
        self.command_lane(lot, lane, LaneAction::CloseBarrier, reason, operator)
            .await
    }

    async fn command_lane(
        &self,
        lot: &LotId,
        lane: &LaneId,
        action: LaneAction,
        reason: &str,
        operator: &str,
    ) -> AppResult<Uuid> {
        if reason.trim().is_empty() {
            return Err(AppError::BadRequest(
                "a reason is required for a manual lift or close".into(),
            ));
        }
        if operator.trim().is_empty() {
            return Err(AppError::BadRequest("operator is required".into()));
        }
        if self.store.lane(lot, lane).await?.is_none() {
            return Err(AppError::NotFound(format!("lane {lot}/{lane}")));
        }
        let now = self.clock.now();
        let cmd = OperatorCommand {
            command_id: new_id(),
            lot: lot.clone(),
            lane: lane.clone(),
            action,
            reason: reason.to_string(),
            operator: operator.to_string(),
            issued_at: now,
        };
        self.store
            .insert_audit(&AuditEntry {
                id: new_id(),
                at: now,
                actor: operator.to_string(),
                action: match action {
                    LaneAction::OpenBarrier => "lane.manual_open",
                    LaneAction::CloseBarrier => "lane.manual_close",
                }
                .into(),
                subject: format!("{lot}/{lane}"),
                detail: format!("command {}: {reason}", cmd.command_id),
            })
            .await?;
        let topic = Topic::Commands(lot.clone(), lane.clone()).to_string();
        self.outbound
            .publish(&topic, encode(&cmd, now, None), false)
            .await
            .map_err(|e| AppError::Conflict(format!("the broker did not take the command: {e}")))?;
        Ok(cmd.command_id)
    }

    /// Creates a lot with its tariff and lanes.
    pub async fn create_lot(&self, lot: Lot, lanes: Vec<NewLane>, actor: &str) -> AppResult<Lot> {
        lot.tariff
            .validate()
            .map_err(|e| AppError::Unprocessable(format!("tariff.{e}")))?;
        if lot.capacity < 0 {
            return Err(AppError::Unprocessable(
                "capacity must not be negative".into(),
            ));
        }
        let now = self.clock.now();
        let mut seen = std::collections::HashSet::new();
        let mut rows = Vec::new();
        for (i, l) in lanes.into_iter().enumerate() {
            if !seen.insert(l.id.clone()) {
                return Err(AppError::Unprocessable(format!(
                    "lanes[{i}].id: lane {} is listed twice",
                    l.id
                )));
            }
            rows.push(l.into_lane(lot.id.clone(), now));
        }
        self.store.insert_lot(&lot, &rows).await?;
        self.config.forget_lot(&lot.id);
        for l in &rows {
            self.config.forget_lane(&lot.id, &l.id);
        }
        let audit = self.audit(
            actor,
            "lot.created",
            format!("lot {}", lot.id),
            format!("{} lanes", rows.len()),
        );
        if let Err(e) = self.store.insert_audit(&audit).await {
            tracing::warn!(error = %e, "lot created but not audited");
        }
        Ok(lot)
    }

    /// Replaces a lot's tariff; the change and its audit row are one write.
    pub async fn put_tariff(&self, lot: &LotId, tariff: Tariff, actor: &str) -> AppResult<Lot> {
        tariff
            .validate()
            .map_err(|e| AppError::Unprocessable(format!("tariff.{e}")))?;
        // A validated tariff is plain data: serialising it cannot fail.
        let text = serde_json::to_string(&tariff).expect("a tariff serialises");
        let audit = self.audit(
            actor,
            "lot.tariff_changed",
            format!("lot {lot}"),
            text.clone(),
        );
        self.store
            .update_tariff(lot, &text, tariff.currency, &audit)
            .await?;
        self.reloaded_lot(lot).await
    }

    /// The lot as stored now, after a change: the cache forgets it on this instance at once.
    pub(crate) async fn reloaded_lot(&self, lot: &LotId) -> AppResult<Lot> {
        self.config.forget_lot(lot);
        self.store
            .lot(lot)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("lot {lot}")))
    }

    /// Configures (or reconfigures) one lane of a lot.
    pub async fn put_lane(&self, lot: &LotId, lane: NewLane, actor: &str) -> AppResult<Lane> {
        if self.store.lot(lot).await?.is_none() {
            return Err(AppError::NotFound(format!("lot {lot}")));
        }
        let row = lane.into_lane(lot.clone(), self.clock.now());
        let audit = self.audit(
            actor,
            "lane.configured",
            format!("{lot}/{}", row.id),
            format!(
                "{} lane served by gateway {}",
                row.direction.as_str(),
                row.gateway
            ),
        );
        self.store.put_lane(&row, &audit).await?;
        self.keys.forget_lane(&row.lot, &row.id);
        self.config.forget_lane(&row.lot, &row.id);
        Ok(row)
    }

    pub async fn delete_lane(&self, lot: &LotId, lane: &LaneId, actor: &str) -> AppResult<()> {
        let audit = self.audit(
            actor,
            "lane.removed",
            format!("{lot}/{lane}"),
            String::new(),
        );
        self.store.delete_lane(lot, lane, &audit).await?;
        self.keys.forget_lane(lot, lane);
        self.config.forget_lane(lot, lane);
        Ok(())
    }

    /// Revokes a mandate. Revocation is final; the check and the write are one statement.
    pub async fn revoke_mandate(&self, id: Uuid) -> AppResult<Mandate> {
        self.store
            .set_mandate_status(id, MandateStatus::Revoked, self.clock.now())
            .await?;
        self.allowlists_due.notify_one();
        self.store
            .mandate(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("mandate {id}")))
    }
}

/// A lane as an operator configures it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLane {
    pub id: LaneId,
    pub direction: Direction,
    pub gateway: GatewayId,
}

impl NewLane {
    fn into_lane(self, lot: LotId, now: DateTime<Utc>) -> Lane {
        Lane {
            lot,
            id: self.id,
            direction: self.direction,
            gateway: self.gateway,
            created_at: now,
        }
    }
}

/// The colour the camera gave for the candidate that reads as `plate`.
fn colour_of(ev: &PassageEvent, plate: &str) -> Option<PlateColour> {
    ev.candidates
        .iter()
        .find(|c| Plate::parse(&c.plate).is_ok_and(|p| p.as_str() == plate))
        .map(|c| c.colour)
}

pub fn reason_label(r: DecisionReason) -> &'static str {
    match r {
        DecisionReason::Entered => "entered",
        DecisionReason::Grace => "grace",
        DecisionReason::Whitelisted => "whitelisted",
        DecisionReason::Pass => "pass",
        DecisionReason::Visitor => "visitor",
        DecisionReason::Mandate => "mandate",
        DecisionReason::Paid => "paid",
        DecisionReason::PaymentRequired => "payment_required",
        DecisionReason::Arrears => "arrears",
        DecisionReason::DeductionBlocked => "deduction_blocked",
        DecisionReason::NoEntry => "no_entry",
        DecisionReason::Unreadable => "unreadable",
        DecisionReason::LowConfidence => "low_confidence",
        DecisionReason::Ambiguous => "ambiguous",
        DecisionReason::Blacklisted => "blacklisted",
        DecisionReason::Locked => "locked",
        DecisionReason::LotFull => "lot_full",
        DecisionReason::Operator => "operator",
        DecisionReason::UnknownLot => "unknown_lot",
        DecisionReason::ClockSkew => "clock_skew",
        DecisionReason::ExitBeforeEntry => "exit_before_entry",
        DecisionReason::CannotPrice => "cannot_price",
        DecisionReason::Rejected => "rejected",
    }
}

/// The first instant of the current calendar month in the lot's time zone.
pub(crate) fn month_start(now: DateTime<Utc>, tariff: &Tariff) -> DateTime<Utc> {
    let tz = tariff.time_zone;
    let local = now.with_timezone(&tz);
    tz.with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}
