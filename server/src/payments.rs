//! Charging by deduction: providers behind one trait, and the worker that moves charges
//! through their lifecycle. The barrier never waits for any of this.
//!
//! pending -> (debit) -> succeeded | accepted (poll later) | failed (retry with backoff, same
//! idempotency key) -> after the last attempt, arrears, which block "open now" until paid. A
//! last attempt whose answer was lost asks the provider about the order before any arrears.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDate, Utc};
use parkpay_protocol::{Clock, Money, PlateColour};
use uuid::Uuid;

use crate::app::App;
use crate::domain::*;
use crate::live::LiveEvent;
use crate::store::{ChargeUpdate, DebitResult, SandboxRefund, Store, StoreError};

/// A stay as a provider that tracks stays (WeChat Pay's parking service) needs it.
#[derive(Debug, Clone)]
pub struct Stay {
    pub session_id: Uuid,
    pub plate: String,
    pub colour: PlateColour,
    pub lot_name: String,
    pub lane: String,
    pub entry_at: DateTime<Utc>,
    pub exit_at: Option<DateTime<Utc>>,
    pub free_minutes: i64,
    /// The driver at the provider (WeChat's openid), from the driver's active mandate.
    pub payer_ref: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DebitRequest {
    /// Fixed for the life of a charge; the provider deduplicates on it (WeChat's
    /// `out_trade_no`: 32 hex digits).
    pub idempotency_key: String,
    pub provider_ref: String,
    pub amount: Money,
    pub description: String,
    /// The stay being charged; `None` for what is not a stay (a pass).
    pub stay: Option<Stay>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    Succeeded {
        txn: String,
        /// The provider advanced the money (垫资): the driver owes it to the provider.
        advanced: bool,
        /// When the provider says the money moved, if it says.
        at: Option<DateTime<Utc>>,
    },
    /// Taken, not yet debited (WeChat's ACCEPTED): the result comes by notification, or by
    /// asking again.
    Accepted {
        txn: String,
    },
    Declined {
        reason: String,
    },
    /// The provider tried and the money did not move (WeChat's PAY_FAIL): final for this
    /// order; the charge becomes arrears at once.
    Failed {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Timeouts, outages: try again with the same key.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider does not offer this.
    #[error("not supported by this provider: {0}")]
    Unsupported(&'static str),
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    /// Ours, fixed for the life of the refund: a retry reuses it.
    pub out_refund_no: String,
    /// The charge's idempotency key (the trade's `out_trade_no`).
    pub trade_key: String,
    pub amount: Money,
    /// What the charge took.
    pub total: Money,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded {
        refund_id: String,
    },
    Processing {
        refund_id: String,
    },
    /// Closed or abnormal at the provider, or refused outright: the money did not go back.
    Closed {
        reason: String,
    },
    Abnormal {
        reason: String,
    },
    Refused {
        reason: String,
    },
}

/// One line of a provider's daily bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillLine {
    /// trade or refund
    pub entry: &'static str,
    /// out_trade_no or out_refund_no
    pub reference: String,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bill {
    /// The provider has not produced the day's bill yet (WeChat Pay: after 10:00 next day).
    NotReady,
    Lines(Vec<BillLine>),
}

/// What a verified provider notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// A debit's result (Succeeded or Failed), for the charge with this key.
    Trade {
        key: String,
        amount_minor: i64,
        outcome: ProviderOutcome,
    },
    /// The driver paid back an advanced debit.
    PaidBack { key: String },
    Refund {
        out_refund_no: String,
        outcome: RefundOutcome,
    },
    /// The provider changed whether it will deduct for a car inside.
    Parking {
        parking_id: String,
        state: ParkingState,
        reason: Option<String>,
    },
    /// Verified, but of a kind we do not act on.
    Other,
}

#[derive(Debug, Clone)]
pub struct Notice {
    /// The provider's notification id: a notification is acted on once.
    pub id: String,
    pub event_type: String,
    /// The decrypted resource, kept as received.
    pub resource: String,
    pub event: ProviderEvent,
}

/// Why a notification was not believed.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// Signature missing, unknown key, wrong, a probe, or a timestamp outside the window.
    #[error("signature: {0}")]
    Signature(String),
    /// Signed, but not a notification we can read (bad JSON, decryption failed).
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("this provider sends no notifications")]
    Unsupported,
}

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether the provider wants to hear of every entry ([`PaymentProvider::entered`]).
    fn tracks_stays(&self) -> bool {
        false
    }

    /// A car entered: a provider that tracks stays registers it. `None`: this provider does
    /// not track stays.
    async fn entered(&self, _stay: &Stay) -> Result<Option<ProviderParking>, ProviderError> {
        Ok(None)
    }

    async fn debit(&self, req: &DebitRequest) -> Result<ProviderOutcome, ProviderError>;

    /// What became of a debit (polling, when a notification is late or lost). `None`: the
    /// provider never took it.
    async fn query(&self, req: &DebitRequest) -> Result<Option<ProviderOutcome>, ProviderError>;

    async fn refund(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError>;

    /// What became of a refund.
    async fn refund_status(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError>;

    /// The provider's bill of `date` (its own calendar day).
    async fn bill(&self, date: NaiveDate) -> Result<Bill, ProviderError>;

    /// Verifies and reads a notification as received over HTTP.
    fn notice(&self, _headers: &HeaderMap, _body: &[u8]) -> Result<Notice, NoticeError> {
        Err(NoticeError::Unsupported)
    }
}

/// The bill's calendar: China Standard Time, as WeChat Pay's bills (and the sandbox's) use.
pub fn bill_day_bounds(date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let cst = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    let start = date
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(cst).single())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    (start, start + chrono::Duration::days(1))
}

/// In-process wallets with balances, scripted transient failures and a configurable latency.
/// State lives in the database so it survives a restart like a real provider would.
///
/// With a fault rate, a debit that took effect is answered, with that probability, by a failure
/// (`Unavailable`, after `late`) instead of its success: a provider's 5xx or a timeout after the
/// call went through. The worker must then retry under the same idempotency key and not charge
/// twice.
pub struct SandboxProvider {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    latency: Duration,
    fault_rate: f64,
    late: Duration,
}

impl SandboxProvider {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, latency: Duration) -> SandboxProvider {
        SandboxProvider {
            store,
            clock,
            latency,
            fault_rate: 0.0,
            late: Duration::ZERO,
        }
    }

    /// Answers a debit that took effect with a failure, `late`, with probability `rate` (0..1;
    /// out of range values are clamped).
    pub fn with_faults(mut self, rate: f64, late: Duration) -> SandboxProvider {
        self.fault_rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.late = late;
        self
    }
}

#[async_trait]
impl PaymentProvider for SandboxProvider {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn debit(&self, req: &DebitRequest) -> Result<ProviderOutcome, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let r = self
            .store
            .sandbox_debit(
                &req.idempotency_key,
                &req.provider_ref,
                req.amount,
                self.clock.now(),
            )
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        if matches!(r, DebitResult::Succeeded { .. })
            && self.fault_rate > 0.0
            && rand::random::<f64>() < self.fault_rate
        {
            // The debit is recorded under its idempotency key; the caller hears only a failure.
            tracing::warn!(
                idempotency_key = %req.idempotency_key,
                "sandbox: injected fault after the debit took effect"
            );
            if !self.late.is_zero() {
                tokio::time::sleep(self.late).await;
            }
            return Err(ProviderError::Unavailable(
                "injected fault: the debit took effect, the answer was lost".into(),
            ));
        }
        Ok(match r {
            DebitResult::Succeeded { txn_id } => ProviderOutcome::Succeeded {
                txn: txn_id,
                advanced: false,
                at: None,
            },
            DebitResult::Declined { reason } => ProviderOutcome::Declined { reason },
            DebitResult::Unavailable => {
                return Err(ProviderError::Unavailable("scripted failure".into()))
            }
        })
    }

    async fn query(&self, req: &DebitRequest) -> Result<Option<ProviderOutcome>, ProviderError> {
        let r = self
            .store
            .sandbox_lookup(&req.idempotency_key)
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(match r {
            Some(DebitResult::Succeeded { txn_id }) => Some(ProviderOutcome::Succeeded {
                txn: txn_id,
                advanced: false,
                at: None,
            }),
            _ => None,
        })
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        let r = self
            .store
            .sandbox_refund(
                &req.out_refund_no,
                &req.trade_key,
                req.amount.minor,
                self.clock.now(),
            )
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(match r {
            SandboxRefund::Done { refund_id } => RefundOutcome::Succeeded { refund_id },
            SandboxRefund::Refused { reason } => RefundOutcome::Refused { reason },
        })
    }

    async fn refund_status(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        // Sandbox refunds finish at once and are idempotent: asking again is the same call.
        self.refund(req).await
    }

    async fn bill(&self, date: NaiveDate) -> Result<Bill, ProviderError> {
        let (from, to) = bill_day_bounds(date);
        if self.clock.now() < to {
            return Ok(Bill::NotReady);
        }
        let rows = self
            .store
            .sandbox_ledger(from, to)
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(Bill::Lines(
            rows.into_iter()
                .map(|r| BillLine {
                    entry: r.entry,
                    reference: r.reference,
                    amount_minor: r.amount_minor,
                })
                .collect(),
        ))
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub instance: String,
    /// Attempts before a charge becomes arrears.
    pub max_attempts: i64,
    /// First retry delay, in clock time; doubles each attempt.
    pub retry_base: Duration,
    /// How long an accepted charge waits before it is asked about again, in clock time.
    pub accepted_poll: Duration,
    /// How often the worker looks for due charges when nobody wakes it, in real time.
    pub poll_interval: Duration,
    /// How long a lease lasts, in clock time; a crashed worker's charges come back after it at
    /// the latest.
    pub lease: Duration,
    /// How often this instance says it is alive, in real time.
    pub beat_interval: Duration,
    /// How long another instance may go without a heartbeat, in real time, before its leases
    /// are freed for this one.
    pub dead_after: Duration,
}

fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Keeps leases from outliving the worker that took them: at start, frees the leases this
/// instance held before a restart (a new process has nothing in hand); then beats every
/// `beat_interval` and frees the leases of any other instance whose beat has not moved for
/// `dead_after`, so its charges are taken over in seconds rather than after `lease`.
///
/// Freeing a lease never risks a second debit: the charge keeps its idempotency key, so the
/// provider answers a retry with the first debit's result, and a worker that was only slow
/// finds its lease gone when it records the outcome.
pub async fn run_liveness(
    app: App,
    s: WorkerSettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use std::collections::HashMap;
    use tokio::time::Instant;

    match app.store.release_leases_of(&s.instance).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                freed = n,
                "took back the charges this instance had leased before it restarted"
            );
            app.charges_due.notify_one();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not free this instance's old leases; they run out by themselves")
        }
    }
    // Per other instance: the last beat count seen, when it last moved, and whether its leases
    // were freed since.
    let mut peers: HashMap<String, (i64, Instant, bool)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(s.beat_interval) => {}
        }
        let beats = match app.store.beat(&s.instance, app.clock.now()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not record this instance's heartbeat");
                continue;
            }
        };
        let now = Instant::now();
        peers.retain(|name, _| beats.iter().any(|(n, _)| n == name));
        for (name, beat) in beats {
            if name == s.instance {
                continue;
            }
            let seen = peers.entry(name.clone()).or_insert((beat, now, false));
            if seen.0 != beat {
                *seen = (beat, now, false);
                continue;
            }
            if seen.2 || now.duration_since(seen.1) < s.dead_after {
                continue;
            }
            match app.store.release_leases_of(&name).await {
                Ok(n) => {
                    seen.2 = true;
                    if n > 0 {
                        tracing::warn!(instance = %name, freed = n, "an instance stopped beating; took over its charges");
                        app.charges_due.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "could not free a silent instance's leases")
                }
            }
        }
    }
}

/// Runs until `shutdown` resolves, finishing the charge in hand before returning.
pub async fn run_worker(
    app: App,
    provider: Arc<dyn PaymentProvider>,
    s: WorkerSettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = app.charges_due.notified() => {}
            _ = tokio::time::sleep(s.poll_interval) => {}
        }
        loop {
            let now = app.clock.now();
            let token = format!("{}:{}", s.instance, Uuid::new_v4().simple());
            let due = match app
                .store
                .lease_due_charges(&token, now, later(now, s.lease), 32)
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "could not lease charges");
                    break;
                }
            };
            if due.is_empty() {
                break;
            }
            let work = due
                .into_iter()
                .map(|c| charge_once(&app, provider.as_ref(), &s, &token, c));
            futures::future::join_all(work).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
        app.finish_refunds().await;
    }
}

async fn charge_once(
    app: &App,
    provider: &dyn PaymentProvider,
    s: &WorkerSettings,
    token: &str,
    c: Charge,
) {
    let attempt = c.attempts + 1;
    let mandate = match c.mandate_id {
        Some(id) => match app.store.mandate(id).await {
            Ok(m) => m,
            Err(e) => {
                // Not knowing the mandate is not a declined debit: no attempt is counted, the
                // lease runs out and the charge is tried again.
                tracing::warn!(charge = %c.id, error = %e, "cannot read the mandate; the charge waits for its lease to expire");
                return;
            }
        },
        None => None,
    };
    let req = DebitRequest {
        idempotency_key: c.idempotency_key.clone(),
        provider_ref: mandate
            .as_ref()
            .map(|m| m.provider_ref.clone())
            .unwrap_or_default(),
        amount: c.amount,
        description: format!("parking session {}", c.session_id),
        stay: stay_of(app, c.session_id).await,
    };
    let result = match &mandate {
        // An accepted debit is asked about, not made again; if the provider never took it,
        // it is made (under the same key).
        Some(m) if m.status == MandateStatus::Active && c.status == ChargeStatus::Accepted => {
            match provider.query(&req).await {
                Ok(Some(outcome)) => Ok(outcome),
                Ok(None) => provider.debit(&req).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Some(m) if m.status == MandateStatus::Active => {
            provider.debit(&req).await.map_err(|e| e.to_string())
        }
        Some(m) => Ok(ProviderOutcome::Declined {
            reason: format!("mandate is {}", m.status),
        }),
        None => Ok(ProviderOutcome::Declined {
            reason: "no mandate".into(),
        }),
    };
    // The last attempt's answer was lost (a timeout, a 5xx): the debit may have taken effect.
    // Arrears ask the driver to pay again, so they follow only from the provider's word: ask it
    // about the order first. If it cannot be asked either, the outcome stays unknown and the
    // charge is tried again later (under the same key, so never debited twice).
    let mut unknown = false;
    let result = match result {
        Err(lost) if attempt >= s.max_attempts => {
            match provider.query(&req).await {
                Ok(Some(outcome)) => Ok(outcome),
                // The provider never took the debit: nothing moved.
                Ok(None) => Err(lost),
                Err(e) => {
                    unknown = true;
                    Err(format!(
                        "outcome unknown ({lost}); asking about the order failed too: {e}"
                    ))
                }
            }
        }
        r => r,
    };
    let now = app.clock.now();
    let final_failure = matches!(result, Ok(ProviderOutcome::Failed { .. }));
    let mut u = ChargeUpdate {
        id: c.id,
        lease_owner: token.to_string(),
        status: c.status,
        attempts: attempt,
        next_attempt_at: None,
        provider_txn: None,
        last_error: None,
        settled_at: None,
        advanced: false,
        attempt: ChargeAttempt {
            attempt,
            at: now,
            outcome: String::new(),
            detail: String::new(),
        },
        exception: None,
    };
    match result {
        Ok(ProviderOutcome::Succeeded { txn, advanced, at }) => {
            u.status = ChargeStatus::Succeeded;
            u.settled_at = Some(at.unwrap_or(now));
            u.attempt.outcome = "succeeded".into();
            u.attempt.detail = if advanced {
                format!("{txn} (advanced by the provider)")
            } else {
                txn.clone()
            };
            u.advanced = advanced;
            u.provider_txn = Some(txn);
        }
        Ok(ProviderOutcome::Accepted { txn }) => {
            u.status = ChargeStatus::Accepted;
            u.next_attempt_at = Some(later(now, s.accepted_poll));
            u.attempt.outcome = "accepted".into();
            u.attempt.detail = txn.clone();
            u.provider_txn = Some(txn);
            // Asking again is not a new attempt.
            u.attempts = c.attempts;
        }
        Ok(ProviderOutcome::Declined { reason })
        | Ok(ProviderOutcome::Failed { reason })
        | Err(reason) => {
            let last = (attempt >= s.max_attempts && !unknown) || final_failure;
            u.last_error = Some(reason.clone());
            u.attempt.outcome = "failed".into();
            u.attempt.detail = reason.clone();
            if last {
                u.status = ChargeStatus::Arrears;
                let plate = app
                    .store
                    .session(c.session_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| s.plate);
                let mut failed = c.clone();
                failed.updated_at = now;
                u.exception = Some(crate::money::charge_failed(
                    &failed,
                    plate,
                    format!(
                        "{} not collected after {attempt} attempts: {reason}",
                        c.amount
                    ),
                ));
            } else {
                u.status = ChargeStatus::Failed;
                // An unknown outcome is asked about again at the last attempt's pace, not
                // ever more slowly.
                let step = (attempt - 1).min(s.max_attempts - 1).clamp(0, 16);
                let backoff = s
                    .retry_base
                    .saturating_mul(2u32.saturating_pow(step as u32));
                u.next_attempt_at = Some(later(now, backoff));
            }
        }
    }
    match app.store.update_charge(&u).await {
        Ok(()) => {
            app.metrics.charge(u.status);
            if let Ok(Some(updated)) = app.store.charge(c.id).await {
                app.live.send(LiveEvent::charge(&updated));
            }
        }
        Err(StoreError::Conflict(why)) => {
            tracing::info!(charge = %c.id, %why, "charge moved on without us")
        }
        Err(e) => {
            tracing::warn!(charge = %c.id, error = %e, "could not record the charge attempt; the lease will expire and it is retried")
        }
    }
}

/// The stay a charge is for, as a provider that tracks stays needs it. `None` when the session
/// cannot be read now: the provider then works from what it registered at entry.
pub async fn stay_of(app: &App, session: Uuid) -> Option<Stay> {
    let s = app.store.session(session).await.ok().flatten()?;
    let lot = app.store.lot(&s.lot).await.ok().flatten();
    let payer_ref = match s.driver_id {
        Some(d) => app
            .store
            .mandates_of(d)
            .await
            .ok()
            .and_then(|ms| ms.into_iter().find(|m| m.status == MandateStatus::Active))
            .map(|m| m.provider_ref),
        None => None,
    };
    Some(Stay {
        payer_ref,
        session_id: s.id,
        colour: colour_of_plate(&s.plate),
        plate: s.plate,
        lot_name: lot
            .as_ref()
            .map(|l| l.name.clone())
            .unwrap_or_else(|| s.lot.to_string()),
        lane: s
            .exit_lane
            .as_ref()
            .or(s.entry_lane.as_ref())
            .map(|l| l.to_string())
            .unwrap_or_default(),
        entry_at: s.entry_at,
        exit_at: s.exit_at,
        free_minutes: lot.map(|l| i64::from(l.tariff.grace_minutes)).unwrap_or(0),
    })
}

/// The plate's colour as the provider wants it: 8 characters is a new-energy (green) plate,
/// anything else is taken as blue; a registered vehicle's own colour wins where known.
pub fn colour_of_plate(plate: &str) -> PlateColour {
    if plate.chars().count() == 8 {
        PlateColour::Green
    } else {
        PlateColour::Blue
    }
}
