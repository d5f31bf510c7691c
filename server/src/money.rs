//! The money desk and what the provider tells us: notifications applied to charges and
//! refunds, refunds (full or partial, several per charge, never more than it took), waiving and
//! retrying a debt, and reconciliation of a day's bill against our ledger.
//!
//! Everything here moves money states only forward and by conditional updates, so a duplicate,
//! late or out-of-order notification, a poll racing a notification, or two instances doing the
//! same thing, change nothing twice.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use parkpay_protocol::Money;
use uuid::Uuid;

use crate::app::{App, AppError, AppResult};
use crate::domain::*;
use crate::live::LiveEvent;
use crate::payments::{
    bill_day_bounds, Bill, Notice, ProviderEvent, ProviderOutcome, RefundOutcome, RefundRequest,
};
use crate::store::{ProviderResult, StoreError};

/// A refund asked for at the money desk.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub amount: Money,
    pub reason: String,
    /// The caller's number for this refund; a retry with the same number is the same refund.
    pub out_refund_no: Option<String>,
}

fn audit(app: &App, actor: &str, action: &str, subject: String, detail: String) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        at: app.clock.now(),
        actor: actor.to_string(),
        action: action.to_string(),
        subject,
        detail,
    }
}

/// The `charge_failed` exception a debt raises.
pub fn charge_failed(c: &Charge, plate: Option<String>, detail: String) -> ExceptionRecord {
    ExceptionRecord {
        id: Uuid::now_v7(),
        lot: c.lot.clone(),
        lane: None,
        kind: ExceptionKind::ChargeFailed,
        plate,
        event_id: None,
        session_id: Some(c.session_id),
        charge_id: Some(c.id),
        detail,
        created_at: c.updated_at,
        resolved_at: None,
        resolution: None,
    }
}

impl App {
    /// Registers a stay with a provider that tracks stays (WeChat's parking entry), off the
    /// barrier's time. A failure is logged: the debit registers the stay itself if needed.
    pub fn register_stay(&self, session: Uuid) {
        if !self.provider.tracks_stays() {
            return;
        }
        let app = self.clone();
        tokio::spawn(async move {
            let Some(stay) = crate::payments::stay_of(&app, session).await else {
                return;
            };
            match app.provider.entered(&stay).await {
                Ok(Some(p)) if p.state == ParkingState::Blocked => tracing::info!(
                    %session, reason = p.block_reason.as_deref().unwrap_or(""),
                    "the provider will not deduct for this stay"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%session, error = %e, "could not register the stay with the provider; the exit registers it")
                }
            }
        });
    }

    /// Acts on a verified provider notification and keeps it by its id. `false`: it was seen
    /// before. Applying is idempotent (every change is conditional on the state it moves
    /// from), so it is applied first and kept after: a failure here answers the provider with
    /// an error, and it sends the notification again.
    pub async fn apply_notice(&self, n: &Notice) -> AppResult<bool> {
        let provider = self.provider.name();
        self.apply_event(&n.event).await?;
        let fresh = self
            .store
            .insert_notification(
                &format!("{provider}:{}", n.id),
                provider,
                &n.event_type,
                &n.resource,
                self.clock.now(),
            )
            .await?;
        if fresh {
            tracing::info!(id = %n.id, event = %n.event_type, "provider notification applied");
        } else {
            tracing::info!(id = %n.id, event = %n.event_type, "provider notification seen before; nothing changed");
        }
        Ok(fresh)
    }

    async fn apply_event(&self, e: &ProviderEvent) -> AppResult<()> {
        let now = self.clock.now();
        match e {
            ProviderEvent::Trade {
                key,
                amount_minor,
                outcome,
            } => {
                let Some(c) = self.store.charge_by_key(key).await? else {
                    tracing::warn!(out_trade_no = %key, "notification for a trade we do not know");
                    return Ok(());
                };
                if *amount_minor != c.amount.minor {
                    tracing::error!(charge = %c.id, ours = c.amount.minor, theirs = amount_minor, "the provider reports another amount; left for reconciliation");
                    return Ok(());
                }
                self.record_outcome(&c, outcome.clone(), "notification")
                    .await
            }
            ProviderEvent::PaidBack { key } => {
                let Some(c) = self.store.charge_by_key(key).await? else {
                    return Ok(());
                };
                if c.status.is_worker_owned() {
                    self.record_outcome(
                        &c,
                        ProviderOutcome::Succeeded {
                            txn: c.provider_txn.clone().unwrap_or_default(),
                            advanced: false,
                            at: None,
                        },
                        "notification",
                    )
                    .await?;
                } else if self.store.clear_advance(c.id, now).await? {
                    tracing::info!(charge = %c.id, "the driver repaid what the provider advanced");
                }
                self.publish_charge(c.id).await;
                Ok(())
            }
            ProviderEvent::Refund {
                out_refund_no,
                outcome,
            } => {
                if let Some(r) = self.store.refund_by_no(out_refund_no).await? {
                    self.record_refund(&r, outcome.clone()).await?;
                }
                Ok(())
            }
            ProviderEvent::Parking {
                parking_id,
                state,
                reason,
            } => {
                self.store
                    .set_parking_state(parking_id, *state, reason.as_deref(), now)
                    .await?;
                Ok(())
            }
            ProviderEvent::Other => Ok(()),
        }
    }

    /// Records what the provider said of a debit outside the worker (a notification).
    async fn record_outcome(&self, c: &Charge, o: ProviderOutcome, via: &str) -> AppResult<()> {
        let now = self.clock.now();
        let attempt = |outcome: &str, detail: String| ChargeAttempt {
            attempt: c.attempts.max(1),
            at: now,
            outcome: outcome.to_string(),
            detail: format!("{detail} ({via})"),
        };
        let r = match o {
            ProviderOutcome::Succeeded { txn, advanced, at } => ProviderResult {
                charge_id: c.id,
                status: ChargeStatus::Succeeded,
                provider_txn: Some(txn.clone()).filter(|t| !t.is_empty()),
                settled_at: Some(at.unwrap_or(now)),
                advanced,
                last_error: None,
                attempt: attempt("succeeded", txn),
                exception: None,
            },
            ProviderOutcome::Failed { reason } => {
                let plate = self.store.session(c.session_id).await?.map(|s| s.plate);
                let mut failed = c.clone();
                failed.updated_at = now;
                ProviderResult {
                    charge_id: c.id,
                    status: ChargeStatus::Arrears,
                    provider_txn: None,
                    settled_at: None,
                    advanced: false,
                    last_error: Some(reason.clone()),
                    attempt: attempt("failed", reason.clone()),
                    exception: Some(charge_failed(
                        &failed,
                        plate,
                        format!("{} not collected: {reason}", c.amount),
                    )),
                }
            }
            // Nothing final to record.
            ProviderOutcome::Accepted { .. } | ProviderOutcome::Declined { .. } => return Ok(()),
        };
        if self.store.record_provider_result(&r).await? {
            self.metrics.charge(r.status);
            self.publish_charge(c.id).await;
        } else if r.status == ChargeStatus::Succeeded && !r.advanced && c.advanced {
            self.store.clear_advance(c.id, now).await?;
        }
        Ok(())
    }

    async fn publish_charge(&self, id: Uuid) {
        if let Ok(Some(c)) = self.store.charge(id).await {
            self.live.send(LiveEvent::charge(&c));
        }
    }

    async fn record_refund(&self, r: &Refund, o: RefundOutcome) -> AppResult<Refund> {
        let now = self.clock.now();
        let (status, provider_ref, error) = match o {
            RefundOutcome::Succeeded { refund_id } => {
                (RefundStatus::Succeeded, Some(refund_id), None)
            }
            RefundOutcome::Processing { refund_id } => {
                (RefundStatus::Processing, Some(refund_id), None)
            }
            RefundOutcome::Closed { reason } | RefundOutcome::Refused { reason } => {
                (RefundStatus::Closed, None, Some(reason))
            }
            RefundOutcome::Abnormal { reason } => (RefundStatus::Abnormal, None, Some(reason)),
        };
        if status != r.status || provider_ref.is_some() {
            self.store
                .update_refund(r.id, status, provider_ref.as_deref(), error.as_deref(), now)
                .await?;
        }
        self.publish_charge(r.charge_id).await;
        Ok(self.store.refund(r.id).await?.unwrap_or_else(|| r.clone()))
    }

    /// Gives money back on a collected charge. The amount is reserved against the charge
    /// first (never more than it took, in total); then the provider is asked. A provider that
    /// cannot be reached leaves the refund pending: the payment worker asks again under the same
    /// `out_refund_no`. Asking again with the same number returns the same refund.
    pub async fn refund_charge(
        &self,
        charge_id: Uuid,
        n: NewRefund,
        actor: &str,
    ) -> AppResult<Refund> {
        let reason = n.reason.trim();
        if reason.is_empty() {
            return Err(AppError::Unprocessable(
                "reason: say why the money goes back".into(),
            ));
        }
        if n.amount.minor <= 0 {
            return Err(AppError::Unprocessable(
                "amount: must be more than zero".into(),
            ));
        }
        let out_refund_no = match n.out_refund_no {
            Some(no) => {
                let no = no.trim().to_string();
                if no.is_empty()
                    || no.len() > 64
                    || !no
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
                {
                    return Err(AppError::Unprocessable(
                        "out_refund_no: 1 to 64 of letters, digits and _-|*@".into(),
                    ));
                }
                no
            }
            None => Uuid::now_v7().simple().to_string(),
        };
        let charge = self
            .store
            .charge(charge_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge {charge_id}")))?;
        if let Some(seen) = self.store.refund_by_no(&out_refund_no).await? {
            if seen.charge_id != charge_id || seen.amount != n.amount {
                return Err(AppError::Conflict(format!(
                    "out_refund_no {out_refund_no} is already a refund of {} on charge {}",
                    seen.amount, seen.charge_id
                )));
            }
            return Ok(seen);
        }
        if n.amount.currency != charge.amount.currency {
            return Err(AppError::Unprocessable(format!(
                "amount: the charge is in {}",
                charge.amount.currency.as_str()
            )));
        }
        let now = self.clock.now();
        let refund = Refund {
            id: Uuid::now_v7(),
            charge_id,
            out_refund_no: out_refund_no.clone(),
            amount: n.amount,
            reason: reason.to_string(),
            status: RefundStatus::Pending,
            provider_ref: None,
            last_error: None,
            actor: actor.to_string(),
            created_at: now,
            updated_at: now,
            settled_at: None,
        };
        let a = audit(
            self,
            actor,
            "charge.refund",
            format!("charge {charge_id}"),
            format!(
                "{} of {} back ({out_refund_no}): {reason}",
                n.amount, charge.amount
            ),
        );
        match self.store.insert_refund(&refund, &a).await {
            Ok(()) => {}
            Err(StoreError::Duplicate(_)) => {
                return self
                    .store
                    .refund_by_no(&out_refund_no)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("refund {out_refund_no}")));
            }
            Err(StoreError::Conflict(_)) => {
                let left = charge.amount.minor - charge.refunded.minor;
                return Err(AppError::Conflict(
                    if charge.status != ChargeStatus::Succeeded {
                        format!(
                            "charge {charge_id} is {}: only a collected charge can be refunded",
                            charge.status
                        )
                    } else {
                        format!(
                            "{} would refund more than the charge took: at most {} is left",
                            n.amount,
                            Money::new(left.max(0), charge.amount.currency)
                        )
                    },
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.submit_refund(&refund, &charge).await
    }

    async fn submit_refund(&self, r: &Refund, c: &Charge) -> AppResult<Refund> {
        let req = RefundRequest {
            out_refund_no: r.out_refund_no.clone(),
            trade_key: c.idempotency_key.clone(),
            amount: r.amount,
            total: c.amount,
            reason: r.reason.clone(),
        };
        let asked = if r.status == RefundStatus::Pending {
            self.provider.refund(&req).await
        } else {
            self.provider.refund_status(&req).await
        };
        match asked {
            Ok(o) => self.record_refund(r, o).await,
            Err(e) => {
                tracing::warn!(refund = %r.out_refund_no, error = %e, "refund not confirmed; asked again later under the same number");
                Ok(r.clone())
            }
        }
    }

    /// Moves pending and processing refunds on: the worker's share of refunds.
    pub async fn finish_refunds(&self) {
        let Ok(open) = self.store.unfinished_refunds(32).await else {
            return;
        };
        for r in open {
            if let Ok(Some(c)) = self.store.charge(r.charge_id).await {
                let _ = self.submit_refund(&r, &c).await;
            }
        }
    }

    /// An operator lets a debt or a held fee go (with a reason; audited). A car held at the
    /// exit for it is let out.
    pub async fn waive_charge(
        &self,
        charge_id: Uuid,
        reason: &str,
        actor: &str,
    ) -> AppResult<Charge> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(AppError::Unprocessable(
                "reason: say why the fee is waived".into(),
            ));
        }
        self.settle_directly(charge_id, ChargeStatus::Waived, None, actor, reason)
            .await
    }

    /// An operator sends a debt back to the provider: the worker debits it again (same
    /// number; a provider that already took it answers with that).
    pub async fn retry_charge(&self, charge_id: Uuid, actor: &str) -> AppResult<Charge> {
        let a = audit(
            self,
            actor,
            "charge.retry",
            format!("charge {charge_id}"),
            "debit the mandate again".into(),
        );
        self.store
            .retry_charge(charge_id, self.clock.now(), &a)
            .await?;
        self.charges_due.notify_one();
        let c = self
            .store
            .charge(charge_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("charge {charge_id}")))?;
        self.live.send(LiveEvent::charge(&c));
        Ok(c)
    }

    /// Compares the provider's bill of `date` with the charges and refunds we recorded as
    /// settled that day, and keeps the result. A bill not out yet is a run with status
    /// `not_ready`; a provider that cannot be reached, `failed`.
    pub async fn reconcile(&self, date: NaiveDate, actor: &str) -> AppResult<ReconRun> {
        let mut run = ReconRun {
            id: Uuid::now_v7(),
            provider: self.provider.name().to_string(),
            bill_date: date,
            ran_at: self.clock.now(),
            actor: actor.to_string(),
            status: "done".into(),
            detail: String::new(),
            matched: 0,
            differences: 0,
        };
        let lines = match self.provider.bill(date).await {
            Ok(Bill::Lines(lines)) => lines,
            Ok(Bill::NotReady) => {
                run.status = "not_ready".into();
                run.detail = "the provider has not published this day's bill yet".into();
                self.store.insert_reconciliation(&run, &[]).await?;
                return Ok(run);
            }
            Err(e) => {
                run.status = "failed".into();
                run.detail = e.to_string();
                self.store.insert_reconciliation(&run, &[]).await?;
                return Ok(run);
            }
        };
        let (from, to) = bill_day_bounds(date);
        // (entry, reference) -> (amount, charge)
        let mut ours: BTreeMap<(&'static str, String), (i64, Option<Uuid>)> = BTreeMap::new();
        for c in self.store.deducted_between(from, to).await? {
            ours.insert(
                ("trade", c.idempotency_key.clone()),
                (c.amount.minor, Some(c.id)),
            );
        }
        for (r, _) in self.store.refunds_settled_between(from, to).await? {
            ours.insert(
                ("refund", r.out_refund_no.clone()),
                (r.amount.minor, Some(r.charge_id)),
            );
        }
        let mut theirs: BTreeMap<(&'static str, String), i64> = BTreeMap::new();
        for l in lines {
            *theirs.entry((l.entry, l.reference)).or_insert(0) += l.amount_minor;
        }
        let mut items = Vec::new();
        for ((entry, reference), (amount, charge)) in &ours {
            let (kind, theirs_minor, detail) = match theirs.get(&(*entry, reference.clone())) {
                Some(t) if t == amount => (ReconKind::Matched, Some(*t), String::new()),
                Some(t) => (
                    ReconKind::AmountDiffers,
                    Some(*t),
                    format!("we recorded {amount} fen, the bill says {t} fen"),
                ),
                None => (
                    ReconKind::MissingAtProvider,
                    None,
                    "settled here, absent from the provider's bill".to_string(),
                ),
            };
            items.push(ReconItem {
                kind,
                entry: entry.to_string(),
                reference: reference.clone(),
                charge_id: *charge,
                ours_minor: Some(*amount),
                theirs_minor,
                detail,
            });
        }
        for ((entry, reference), amount) in &theirs {
            if ours.contains_key(&(*entry, reference.clone())) {
                continue;
            }
            // What we have under that number, if anything (not settled that day, or at all).
            let (charge, detail) = if *entry == "trade" {
                match self.store.charge_by_key(reference).await? {
                    Some(c) => (
                        Some(c.id),
                        format!(
                            "our charge is {}{}",
                            c.status,
                            c.settled_at
                                .map(|t| format!(", settled {t}"))
                                .unwrap_or_default()
                        ),
                    ),
                    None => (None, "no charge of ours has this number".to_string()),
                }
            } else {
                match self.store.refund_by_no(reference).await? {
                    Some(r) => (Some(r.charge_id), format!("our refund is {}", r.status)),
                    None => (None, "no refund of ours has this number".to_string()),
                }
            };
            items.push(ReconItem {
                kind: ReconKind::MissingHere,
                entry: entry.to_string(),
                reference: reference.clone(),
                charge_id: charge,
                ours_minor: None,
                theirs_minor: Some(*amount),
                detail,
            });
        }
        run.matched = items
            .iter()
            .filter(|i| i.kind == ReconKind::Matched)
            .count() as i64;
        run.differences = items.len() as i64 - run.matched;
        run.detail = format!(
            "{} of ours, {} on the bill: {} matched, {} differences",
            ours.len(),
            theirs.len(),
            run.matched,
            run.differences
        );
        self.store.insert_reconciliation(&run, &items).await?;
        if run.differences > 0 {
            tracing::warn!(date = %date, differences = run.differences, "reconciliation found differences");
        }
        Ok(run)
    }
}

/// The reconciliation as CSV: one line per item, with a header.
pub fn recon_csv(run: &ReconRun, items: &[ReconItem]) -> String {
    let esc = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let yuan = |m: Option<i64>| {
        m.map(|m| {
            format!(
                "{}{}.{:02}",
                if m < 0 { "-" } else { "" },
                m.abs() / 100,
                m.abs() % 100
            )
        })
        .unwrap_or_default()
    };
    let mut out =
        String::from("bill_date,kind,entry,reference,charge_id,ours_cny,theirs_cny,detail\n");
    for i in items {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            run.bill_date,
            i.kind,
            i.entry,
            esc(&i.reference),
            i.charge_id.map(|c| c.to_string()).unwrap_or_default(),
            yuan(i.ours_minor),
            yuan(i.theirs_minor),
            esc(&i.detail)
        ));
    }
    out
}

/// Reconciles yesterday's bill once a day, once the provider has published it (10:00 China
/// Standard Time), until a run is done; a bill not out yet is asked for again each round.
pub async fn run_nightly(
    app: App,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cst = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
        let now = app.clock.now().with_timezone(&cst);
        if now.time() < chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap_or_default() {
            continue;
        }
        let Some(yesterday) = now.date_naive().pred_opt() else {
            continue;
        };
        let done = match app.store.reconciliations(50).await {
            Ok(runs) => runs
                .iter()
                .any(|r| r.bill_date == yesterday && r.status == "done"),
            Err(_) => continue,
        };
        if !done {
            match app.reconcile(yesterday, "nightly").await {
                Ok(run) => {
                    tracing::info!(date = %yesterday, status = %run.status, detail = %run.detail, "nightly reconciliation")
                }
                Err(e) => tracing::warn!(error = %e, "nightly reconciliation failed"),
            }
        }
    }
}
