//! Charging by deduction: providers behind one trait, and the worker that moves charges
//! through their lifecycle. The barrier never waits for any of this.
//!
//! pending -> (debit) -> succeeded | accepted (poll later) | failed (retry with backoff, same
//! idempotency key) -> after the last attempt, arrears, which block "open now" until paid.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parkpay_protocol::{Clock, Money};
use uuid::Uuid;

use crate::app::App;
use crate::domain::*;
use crate::live::LiveEvent;
use crate::store::{ChargeUpdate, DebitResult, Store, StoreError};

#[derive(Debug, Clone)]
pub struct DebitRequest {
    /// Fixed for the life of a charge; the provider deduplicates on it.
    pub idempotency_key: String,
    pub provider_ref: String,
    pub amount: Money,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    Succeeded {
        txn: String,
    },
    /// Taken, not yet debited (WeChat's ACCEPTED): ask again later.
    Accepted {
        txn: String,
    },
    Declined {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Timeouts, outages: try again with the same key.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;
    async fn debit(&self, req: &DebitRequest) -> Result<ProviderOutcome, ProviderError>;
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
            DebitResult::Succeeded { txn_id } => ProviderOutcome::Succeeded { txn: txn_id },
            DebitResult::Declined { reason } => ProviderOutcome::Declined { reason },
            DebitResult::Unavailable => {
                return Err(ProviderError::Unavailable("scripted failure".into()))
            }
        })
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
    let result = match &mandate {
        Some(m) if m.status == MandateStatus::Active => provider
            .debit(&DebitRequest {
                idempotency_key: c.idempotency_key.clone(),
                provider_ref: m.provider_ref.clone(),
                amount: c.amount,
                description: format!("parking session {}", c.session_id),
            })
            .await
            .map_err(|e| e.to_string()),
        Some(m) => Ok(ProviderOutcome::Declined {
            reason: format!("mandate is {}", m.status),
        }),
        None => Ok(ProviderOutcome::Declined {
            reason: "no mandate".into(),
        }),
    };
    let now = app.clock.now();
    let mut u = ChargeUpdate {
        id: c.id,
        lease_owner: token.to_string(),
        status: c.status,
        attempts: attempt,
        next_attempt_at: None,
        provider_txn: None,
        last_error: None,
        settled_at: None,
        attempt: ChargeAttempt {
            attempt,
            at: now,
            outcome: String::new(),
            detail: String::new(),
        },
        exception: None,
    };
    match result {
        Ok(ProviderOutcome::Succeeded { txn }) => {
            u.status = ChargeStatus::Succeeded;
            u.settled_at = Some(now);
            u.attempt.outcome = "succeeded".into();
            u.attempt.detail = txn.clone();
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
        Ok(ProviderOutcome::Declined { reason }) | Err(reason) => {
            u.last_error = Some(reason.clone());
            u.attempt.outcome = "failed".into();
            u.attempt.detail = reason.clone();
            if attempt >= s.max_attempts {
                u.status = ChargeStatus::Arrears;
                let plate = app
                    .store
                    .session(c.session_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| s.plate);
                u.exception = Some(ExceptionRecord {
                    id: Uuid::now_v7(),
                    lot: c.lot.clone(),
                    lane: None,
                    kind: ExceptionKind::ChargeFailed,
                    plate,
                    event_id: None,
                    session_id: Some(c.session_id),
                    charge_id: Some(c.id),
                    detail: format!(
                        "{} not collected after {attempt} attempts: {reason}",
                        c.amount
                    ),
                    created_at: now,
                    resolved_at: None,
                    resolution: None,
                });
            } else {
                u.status = ChargeStatus::Failed;
                let backoff = s
                    .retry_base
                    .saturating_mul(2u32.saturating_pow((attempt - 1).clamp(0, 16) as u32));
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
