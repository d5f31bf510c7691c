//! The use cases, one function each: a passage (entry or exit), paying at the exit, paying
//! arrears, an operator's manual lift. Business logic lives here, once, above the storage seam.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use parkpay_protocol::{
    encode, BarrierAction, Clock, Decision, DecisionReason, Direction, DisplayText, LaneAction,
    LaneId, LotId, Money, OperatorCommand, PassageEvent, Plate, ReadQuality, Topic,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::*;
use crate::live::{Live, LiveEvent};
use crate::matching::{self, Match};
use crate::metrics::Metrics;
use crate::mqtt::Publisher;
use crate::store::*;
use crate::tariff::{self, Tariff};

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
            StoreError::Duplicate(what) => AppError::Conflict(format!("{what} already exists")),
            StoreError::Conflict(what) => AppError::Conflict(what),
            other => AppError::Store(other),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Base URL drivers are sent to for paying at the exit.
    pub public_url: String,
}

/// Everything a use case may touch. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub publisher: Publisher,
    pub live: Live,
    pub metrics: Arc<Metrics>,
    pub charges_due: Arc<Notify>,
    /// Wakes the allowlist publisher: a gateway came online or a mandate changed.
    pub allowlists_due: Arc<Notify>,
    pub settings: Arc<AppSettings>,
}

/// A decision with the writes that make it true, not yet committed.
struct Plan {
    write: PassageWrite,
    new_charge: bool,
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

    fn decision(
        &self,
        ev: &PassageEvent,
        action: BarrierAction,
        reason: DecisionReason,
        plate: Option<&str>,
    ) -> Decision {
        let shown = plate.map(|p| {
            Plate::parse(p)
                .map(|p| p.display())
                .unwrap_or_else(|_| p.to_string())
        });
        let line1 = shown.clone().unwrap_or_else(|| "--".to_string());
        let line2 = match reason {
            DecisionReason::Entered => "Welcome",
            DecisionReason::Grace => "Free stay, goodbye",
            DecisionReason::Whitelisted | DecisionReason::Pass => "Goodbye",
            DecisionReason::Mandate => "Charged to your account",
            DecisionReason::Paid => "Paid, goodbye",
            DecisionReason::PaymentRequired => "Scan to pay",
            DecisionReason::Arrears => "Unpaid arrears: scan to pay",
            DecisionReason::NoEntry => "No entry record: staff coming",
            DecisionReason::Unreadable => "Plate not read: staff coming",
            DecisionReason::Ambiguous => "Please wait: staff coming",
            DecisionReason::Blacklisted => "Entry refused",
            DecisionReason::Operator => "Opened by staff",
            DecisionReason::UnknownLot => "Lane not configured",
        };
        Decision {
            event_id: ev.event_id,
            lot: ev.lot.clone(),
            lane: ev.lane.clone(),
            action,
            reason,
            plate: plate.map(str::to_string),
            session_id: None,
            fee: None,
            pay_url: None,
            display: DisplayText {
                line1,
                line2: line2.to_string(),
            },
            decided_at: self.clock.now(),
        }
    }

    fn exception(
        &self,
        ev: &PassageEvent,
        kind: ExceptionKind,
        plate: Option<&str>,
        session: Option<Uuid>,
        detail: String,
    ) -> ExceptionRecord {
        ExceptionRecord {
            id: new_id(),
            lot: ev.lot.clone(),
            lane: Some(ev.lane.clone()),
            kind,
            plate: plate.map(str::to_string),
            event_id: Some(ev.event_id.0),
            session_id: session,
            charge_id: None,
            detail,
            created_at: self.clock.now(),
            resolved_at: None,
            resolution: None,
        }
    }

    fn write(
        &self,
        ev: &PassageEvent,
        payload: &str,
        decision: Decision,
        session_id: Option<Uuid>,
    ) -> PassageWrite {
        PassageWrite {
            event: NewEvent {
                event_id: ev.event_id.0,
                lot: ev.lot.clone(),
                lane: ev.lane.to_string(),
                gateway: ev.gateway.to_string(),
                direction: ev.direction.as_str().to_string(),
                captured_at: ev.captured_at,
                received_at: self.clock.now(),
                plate: ev.candidates.first().map(|c| c.plate.clone()),
                quality: ev.quality.as_str().to_string(),
                resent: ev.resent,
                payload: payload.to_string(),
            },
            session_id,
            outbox: self.outbox(&decision),
            decision,
            sessions: Vec::new(),
            charge: None,
            exceptions: Vec::new(),
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
        if let Some(stored) = self.store.event_decision(ev.event_id.0).await? {
            self.metrics.event("duplicate");
            self.publish_decision(&stored, None).await;
            return Ok(stored);
        }
        // A conflict means another instance (or a concurrent duplicate) changed what we read:
        // read again and decide again; constraints guarantee nothing is written twice.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let plan = match ev.direction {
                Direction::Entry => self.plan_entry(ev, payload).await?,
                Direction::Exit => self.plan_exit(ev, payload).await?,
            };
            match self.store.commit_passage(&plan.write).await {
                Ok(PassageOutcome::Committed) => {
                    let d = plan.write.decision.clone();
                    self.metrics.event(reason_label(d.reason));
                    self.metrics
                        .decision_latency
                        .observe(received.elapsed().as_secs_f64());
                    self.publish_decision(&d, Some(plan.write.outbox.id)).await;
                    if plan.new_charge {
                        self.charges_due.notify_one();
                    }
                    self.live.send(LiveEvent::passage(ev, &d));
                    return Ok(d);
                }
                Ok(PassageOutcome::Duplicate(stored)) => {
                    self.metrics.event("duplicate");
                    self.publish_decision(&stored, None).await;
                    return Ok(*stored);
                }
                Err(StoreError::Conflict(why)) if attempts < 4 => {
                    tracing::debug!(event = %ev.event_id, %why, "passage conflicted; deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn publish_decision(&self, d: &Decision, outbox: Option<Uuid>) {
        let topic = Topic::Decisions(d.lot.clone(), d.lane.clone()).to_string();
        match self
            .publisher
            .publish(&topic, encode(d, self.clock.now(), None))
            .await
        {
            Ok(()) => {
                if let Some(id) = outbox {
                    if let Err(e) = self.store.mark_published(id, self.clock.now()).await {
                        tracing::warn!(error = %e, "could not mark decision published; the outbox will resend it");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "decision not published now; the outbox will resend it")
            }
        }
    }

    /// Parsed candidates, best first: (canonical plate, match key).
    fn reads(ev: &PassageEvent) -> Vec<(String, String)> {
        ev.candidates
            .iter()
            .filter_map(|c| Plate::parse(&c.plate).ok())
            .map(|p| (p.as_str().to_string(), p.match_key()))
            .collect()
    }

    async fn unreadable(&self, ev: &PassageEvent, payload: &str) -> Plan {
        let kind = match ev.quality {
            ReadQuality::LowConfidence if !ev.candidates.is_empty() => ExceptionKind::LowConfidence,
            _ => ExceptionKind::Unreadable,
        };
        let top = ev.candidates.first().map(|c| c.plate.as_str());
        let d = self.decision(ev, BarrierAction::Hold, DecisionReason::Unreadable, top);
        let mut w = self.write(ev, payload, d, None);
        let detail = format!(
            "{} read at {} {}",
            ev.quality.as_str(),
            ev.direction.as_str(),
            ev.lane
        );
        w.exceptions
            .push(self.exception(ev, kind, top, None, detail));
        Plan {
            write: w,
            new_charge: false,
        }
    }

    async fn unknown_lot(&self, ev: &PassageEvent, payload: &str) -> Plan {
        let top = ev.candidates.first().map(|c| c.plate.as_str());
        let d = self.decision(ev, BarrierAction::Hold, DecisionReason::UnknownLot, top);
        let mut w = self.write(ev, payload, d, None);
        w.exceptions.push(self.exception(
            ev,
            ExceptionKind::UnknownLot,
            top,
            None,
            format!("lot {} is not configured", ev.lot),
        ));
        Plan {
            write: w,
            new_charge: false,
        }
    }

    async fn plan_entry(&self, ev: &PassageEvent, payload: &str) -> AppResult<Plan> {
        if self.store.lot(&ev.lot).await?.is_none() {
            return Ok(self.unknown_lot(ev, payload).await);
        }
        let reads = Self::reads(ev);
        let Some((plate, key)) = reads
            .first()
            .filter(|_| ev.quality == ReadQuality::Confident)
            .cloned()
        else {
            return Ok(self.unreadable(ev, payload).await);
        };
        let driver_id = self.driver_of(&[(plate.clone(), key.clone())]).await?;
        let session_id = new_id();
        let mut d = self.decision(
            ev,
            BarrierAction::Open,
            DecisionReason::Entered,
            Some(&plate),
        );
        d.session_id = Some(session_id);
        let mut w = self.write(ev, payload, d, Some(session_id));
        // A plate already inside means we missed its exit (or a misread made two sessions):
        // close the stale session as an exception rather than keep two open.
        for stale in self.store.open_sessions_by_key(&ev.lot, &key).await? {
            w.sessions.push(SessionChange::MarkStale { id: stale.id });
            let detail = format!(
                "{} entered again while session {} was open",
                plate, stale.id
            );
            w.exceptions.push(self.exception(
                ev,
                ExceptionKind::StaleEntry,
                Some(&stale.plate),
                Some(stale.id),
                detail,
            ));
        }
        w.sessions.push(SessionChange::Open(
            Session {
                id: session_id,
                lot: ev.lot.clone(),
                plate: plate.clone(),
                status: SessionStatus::Open,
                driver_id,
                entry_event_id: Some(ev.event_id.0),
                entry_lane: Some(ev.lane.clone()),
                entry_at: ev.captured_at,
                exit_event_id: None,
                exit_lane: None,
                exit_at: None,
                fee: None,
                quote: None,
                updated_at: self.clock.now(),
            },
            key,
        ));
        Ok(Plan {
            write: w,
            new_charge: false,
        })
    }

    async fn find_session(&self, lot: &LotId, reads: &[(String, String)]) -> AppResult<Match> {
        let mut near: Vec<OpenSession> = Vec::new();
        for (plate, key) in reads {
            near.extend(self.store.open_sessions_by_plate(lot, plate).await?);
            near.extend(self.store.open_sessions_by_key(lot, key).await?);
        }
        near.sort_by_key(|s| s.id);
        near.dedup_by_key(|s| s.id);
        match matching::find(reads, &near) {
            Match::NotFound => Ok(matching::find(reads, &self.store.open_sessions(lot).await?)),
            found => Ok(found),
        }
    }

    async fn plan_exit(&self, ev: &PassageEvent, payload: &str) -> AppResult<Plan> {
        let Some(lot) = self.store.lot(&ev.lot).await? else {
            return Ok(self.unknown_lot(ev, payload).await);
        };
        let reads = Self::reads(ev);
        if reads.is_empty() || ev.quality != ReadQuality::Confident {
            return Ok(self.unreadable(ev, payload).await);
        }
        let read_plate = reads[0].0.clone();
        let session_id = match self.find_session(&ev.lot, &reads).await? {
            Match::Found { session, .. } => session,
            Match::NotFound => {
                let d = self.decision(
                    ev,
                    BarrierAction::Hold,
                    DecisionReason::NoEntry,
                    Some(&read_plate),
                );
                let mut w = self.write(ev, payload, d, None);
                let detail = format!("exit of {read_plate} at {} with no open session", ev.lane);
                w.exceptions.push(self.exception(
                    ev,
                    ExceptionKind::NoEntry,
                    Some(&read_plate),
                    None,
                    detail,
                ));
                return Ok(Plan {
                    write: w,
                    new_charge: false,
                });
            }
            Match::Ambiguous(ids) => {
                let d = self.decision(
                    ev,
                    BarrierAction::Hold,
                    DecisionReason::Ambiguous,
                    Some(&read_plate),
                );
                let mut w = self.write(ev, payload, d, None);
                let detail = format!(
                    "{read_plate} is equally close to {} open sessions",
                    ids.len()
                );
                w.exceptions.push(self.exception(
                    ev,
                    ExceptionKind::Ambiguous,
                    Some(&read_plate),
                    None,
                    detail,
                ));
                return Ok(Plan {
                    write: w,
                    new_charge: false,
                });
            }
        };
        let session = self
            .store
            .session(session_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("session {session_id}")))?;
        let plate = session.plate.clone();
        let exit_at = ev
            .captured_at
            .max(session.entry_at + chrono::Duration::milliseconds(1));
        let quote = tariff::quote(&lot.tariff, session.entry_at, exit_at).map_err(|e| {
            AppError::Unprocessable(format!("lot {} tariff cannot price this stay: {e}", lot.id))
        })?;
        let fee = quote.total;
        let quote_json =
            serde_json::to_string(&quote).map_err(|e| AppError::Unprocessable(e.to_string()))?;
        let driver_id = match session.driver_id {
            Some(d) => Some(d),
            None => {
                let mut known = vec![(plate.clone(), parkpay_protocol::plate::match_key(&plate))];
                known.extend(reads.iter().cloned());
                self.driver_of(&known).await?
            }
        };
        let close = |status| SessionChange::Close {
            id: session.id,
            status,
            exit_event_id: ev.event_id.0,
            exit_lane: ev.lane.to_string(),
            exit_at,
            fee,
            quote_json: quote_json.clone(),
            driver_id,
        };

        if fee.is_zero() {
            let mut d = self.decision(ev, BarrierAction::Open, DecisionReason::Grace, Some(&plate));
            d.session_id = Some(session.id);
            d.fee = Some(fee);
            let mut w = self.write(ev, payload, d, Some(session.id));
            w.sessions.push(close(SessionStatus::Closed));
            return Ok(Plan {
                write: w,
                new_charge: false,
            });
        }

        let (mandate, arrears) = match driver_id {
            Some(driver) => (
                self.usable_mandate(driver, fee, &lot.tariff).await?,
                self.store.arrears_of(driver).await?,
            ),
            None => (None, 0),
        };
        let now = self.clock.now();
        let charge_id = new_id();
        let mut charge = Charge {
            id: charge_id,
            session_id: session.id,
            lot: ev.lot.clone(),
            driver_id,
            mandate_id: None,
            amount: fee,
            status: ChargeStatus::Pending,
            method: ChargeMethod::Mandate,
            // Fixed for the life of the charge: every retry reuses it (WeChat's out_trade_no, <= 32).
            idempotency_key: charge_id.simple().to_string(),
            attempts: 0,
            next_attempt_at: None,
            provider_txn: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            settled_at: None,
        };
        let (status, d) = match mandate {
            Some(m) if arrears == 0 => {
                charge.mandate_id = Some(m.id);
                (
                    SessionStatus::Closed,
                    self.decision(
                        ev,
                        BarrierAction::Open,
                        DecisionReason::Mandate,
                        Some(&plate),
                    ),
                )
            }
            _ => {
                charge.status = ChargeStatus::AwaitingPayment;
                charge.method = ChargeMethod::PayAtExit;
                let reason = if arrears > 0 {
                    DecisionReason::Arrears
                } else {
                    DecisionReason::PaymentRequired
                };
                let mut d = self.decision(ev, BarrierAction::Hold, reason, Some(&plate));
                d.pay_url = Some(format!(
                    "{}/pay/{}",
                    self.settings.public_url.trim_end_matches('/'),
                    session.id
                ));
                (SessionStatus::AwaitingPayment, d)
            }
        };
        let mut d = d;
        d.session_id = Some(session.id);
        d.fee = Some(fee);
        d.display.line1 = format!("{}  {}", d.display.line1, fee);
        let new_charge = charge.status == ChargeStatus::Pending;
        let mut w = self.write(ev, payload, d, Some(session.id));
        w.sessions.push(close(status));
        w.charge = Some(charge);
        Ok(Plan {
            write: w,
            new_charge,
        })
    }

    /// Whose car this is: the exact plate's owner first, then the one vehicle whose plate folds to
    /// the same key. Two owners with confusable plates means we do not know, and nobody is charged
    /// by deduction.
    async fn driver_of(&self, reads: &[(String, String)]) -> AppResult<Option<Uuid>> {
        for (plate, _) in reads {
            if let Some(v) = self.store.vehicle(plate).await? {
                return Ok(Some(v.driver_id));
            }
        }
        for (_, key) in reads {
            let owners = self.store.vehicles_by_key(key).await?;
            if let [only] = owners.as_slice() {
                return Ok(Some(only.driver_id));
            }
        }
        Ok(None)
    }

    /// The driver's active mandate, if it may carry this fee (per-charge and monthly caps).
    async fn usable_mandate(
        &self,
        driver: Uuid,
        fee: Money,
        tariff: &Tariff,
    ) -> AppResult<Option<Mandate>> {
        for m in self.store.mandates_of(driver).await? {
            if m.status != MandateStatus::Active {
                continue;
            }
            if m.per_charge_cap.is_some_and(|cap| fee.minor > cap.minor) {
                continue;
            }
            if let Some(cap) = m.monthly_cap {
                let spent = self
                    .store
                    .mandate_spend_since(m.id, month_start(self.clock.now(), tariff))
                    .await?;
                if spent + fee.minor > cap.minor {
                    continue;
                }
            }
            return Ok(Some(m));
        }
        Ok(None)
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
        let charge = self
            .store
            .charge(charge_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge {charge_id}")))?;
        if !charge.status.is_payable() {
            return Err(AppError::Conflict(format!(
                "charge {charge_id} is {}, nothing to pay",
                charge.status
            )));
        }
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
                    reason: DecisionReason::Paid,
                    plate: Some(s.plate.clone()),
                    session_id: Some(s.id),
                    fee: Some(charge.amount),
                    pay_url: None,
                    display: DisplayText {
                        line1: format!(
                            "{}  {}",
                            Plate::parse(&s.plate)
                                .map(|p| p.display())
                                .unwrap_or_else(|_| s.plate.clone()),
                            charge.amount
                        ),
                        line2: "Paid, goodbye".into(),
                    },
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
            action: "charge.paid".into(),
            subject: format!("charge {charge_id}"),
            detail: format!("{} paid by {}", charge.amount, method.as_str()),
        };
        self.store
            .pay_directly(&DirectPayment {
                charge_id,
                method,
                at: now,
                release: release.clone(),
                audit,
            })
            .await?;
        if let Some((_, d, outbox)) = release {
            self.publish_decision(&d, Some(outbox.id)).await;
            self.live.send(LiveEvent::decision(&d));
        }
        self.metrics.charge(ChargeStatus::Succeeded);
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
    /// (the original keeps its record), and the lane gets the new decision.
    pub async fn correct_plate(
        &self,
        exception_id: Uuid,
        plate: &str,
        operator: &str,
    ) -> AppResult<Decision> {
        if operator.trim().is_empty() {
            return Err(AppError::BadRequest("operator is required".into()));
        }
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
            ExceptionKind::StaleEntry | ExceptionKind::ChargeFailed | ExceptionKind::UnknownLot => {
                return Err(AppError::Conflict(format!(
                    "a {} exception is not resolved by correcting a plate",
                    x.kind
                )));
            }
        }
        let event_id = x
            .event_id
            .ok_or_else(|| AppError::Conflict("the exception has no passage".into()))?;
        let payload = self
            .store
            .event_payload(event_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("event {event_id}")))?;
        let mut ev = parkpay_protocol::decode::<PassageEvent>(payload.as_bytes(), None)
            .map_err(|e| AppError::Unprocessable(format!("stored event {event_id}: {e}")))?
            .body;
        ev.event_id = parkpay_protocol::EventId::new();
        ev.candidates = vec![parkpay_protocol::PlateCandidate {
            plate: plate.as_str().to_string(),
            confidence: 1.0,
            colour: ev.candidates.first().map(|c| c.colour).unwrap_or_default(),
        }];
        ev.quality = ReadQuality::Confident;
        ev.resent = false;
        let now = self.clock.now();
        let corrected = String::from_utf8_lossy(&encode(&ev, now, None)).into_owned();
        self.store
            .resolve_exception(
                exception_id,
                &format!("plate corrected to {} by {operator}", plate.as_str()),
                now,
            )
            .await?;
        self.store
            .insert_audit(&AuditEntry {
                id: new_id(),
                at: now,
                actor: operator.to_string(),
                action: "exception.plate_corrected".into(),
                subject: format!("exception {exception_id}"),
                detail: format!(
                    "event {event_id} read as {}; decided again as event {}",
                    plate.as_str(),
                    ev.event_id
                ),
            })
            .await?;
        self.handle_passage(&ev, &corrected, Instant::now()).await
    }

    /// An operator lifts a lane's barrier by hand. Always audited; a reason is required.
    pub async fn open_lane(
        &self,
        lot: &LotId,
        lane: &LaneId,
        reason: &str,
        operator: &str,
    ) -> AppResult<Uuid> {
        if reason.trim().is_empty() {
            return Err(AppError::BadRequest(
                "a reason is required for a manual lift".into(),
            ));
        }
        if operator.trim().is_empty() {
            return Err(AppError::BadRequest("operator is required".into()));
        }
        if self.store.lot(lot).await?.is_none() {
            return Err(AppError::NotFound(format!("lot {lot}")));
        }
        let now = self.clock.now();
        let cmd = OperatorCommand {
            command_id: new_id(),
            lot: lot.clone(),
            lane: lane.clone(),
            action: LaneAction::OpenBarrier,
            reason: reason.to_string(),
            operator: operator.to_string(),
            issued_at: now,
        };
        self.store
            .insert_audit(&AuditEntry {
                id: new_id(),
                at: now,
                actor: operator.to_string(),
                action: "lane.manual_open".into(),
                subject: format!("{lot}/{lane}"),
                detail: format!("command {}: {reason}", cmd.command_id),
            })
            .await?;
        let topic = Topic::Commands(lot.clone(), lane.clone()).to_string();
        self.publisher
            .publish(&topic, encode(&cmd, now, None))
            .await
            .map_err(|e| AppError::Conflict(format!("the broker did not take the command: {e}")))?;
        Ok(cmd.command_id)
    }
}

fn reason_label(r: DecisionReason) -> &'static str {
    match r {
        DecisionReason::Entered => "entered",
        DecisionReason::Grace => "grace",
        DecisionReason::Whitelisted => "whitelisted",
        DecisionReason::Pass => "pass",
        DecisionReason::Mandate => "mandate",
        DecisionReason::Paid => "paid",
        DecisionReason::PaymentRequired => "payment_required",
        DecisionReason::Arrears => "arrears",
        DecisionReason::NoEntry => "no_entry",
        DecisionReason::Unreadable => "unreadable",
        DecisionReason::Ambiguous => "ambiguous",
        DecisionReason::Blacklisted => "blacklisted",
        DecisionReason::Operator => "operator",
        DecisionReason::UnknownLot => "unknown_lot",
    }
}

/// The first instant of the current calendar month in the lot's time zone.
fn month_start(now: DateTime<Utc>, tariff: &Tariff) -> DateTime<Utc> {
    let tz = tariff.time_zone;
    let local = now.with_timezone(&tz);
    tz.with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}
