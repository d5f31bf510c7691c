//! Evidence pictures and the exception desk around them: how long pictures are kept (the purge
//! job), what a plate correction would do (the preview an operator checks against the picture)
//! and who handles an exception (assignment).
//!
//! Pictures arrive over MQTT ([`crate::ingest`], topic `.../lanes/{lane}/evidence`) and are kept
//! by their passage's event id; `GET /api/passages/{event}/evidence` serves them
//! ([`crate::http`]). They are personal data: nothing keeps them longer than
//! `evidence.retention_days`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{reason_label, App, AppError, AppResult, PlannedCorrection};
use crate::config::EvidenceConfig;
use crate::decide::{Collect, Effect};
use crate::domain::{Assignment, AuditEntry};

impl App {
    /// Deletes the pictures received more than `retention` ago; returns how many.
    pub async fn purge_evidence(&self, retention: chrono::TimeDelta) -> AppResult<u64> {
        let before: DateTime<Utc> = self.clock.now() - retention;
        let gone = self.store.purge_evidence(before).await?;
        if gone > 0 {
            tracing::info!(pictures = gone, %before, "evidence pictures past retention deleted");
        }
        Ok(gone)
    }

    /// Gives an open exception to `to`, who must be allowed to correct plates on its lot (an
    /// enabled account, or the caller itself); audited under `actor`.
    pub async fn assign_exception(
        &self,
        exception_id: Uuid,
        to: &str,
        actor: &str,
    ) -> AppResult<Assignment> {
        let x = self
            .store
            .exception(exception_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("exception {exception_id}")))?;
        if to != actor {
            let (account, _) =
                self.store.account_by_name(to).await?.ok_or_else(|| {
                    AppError::Unprocessable(format!("there is no account {to:?}"))
                })?;
            let allowed = account.disabled_at.is_none()
                && crate::auth::allows(account.grant.role, crate::auth::Action::CorrectPlates)
                && account.grant.covers(&x.lot);
            if !allowed {
                return Err(AppError::Unprocessable(format!(
                    "account {to:?} may not correct plates on lot {}",
                    x.lot
                )));
            }
        }
        let now = self.clock.now();
        let a = Assignment {
            exception_id,
            assigned_to: to.to_string(),
            assigned_by: actor.to_string(),
            assigned_at: now,
        };
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: "exception.assigned".into(),
            subject: format!("exception {exception_id}"),
            detail: format!("assigned to {to}"),
        };
        self.store.assign_exception(&a, &audit).await?;
        Ok(a)
    }

    /// What correcting an exception's plate would do, for the operator to check against the
    /// picture: the same decision the correction would make now, described.
    pub async fn preview_correction(
        &self,
        exception_id: Uuid,
        plate: &str,
        session: Option<Uuid>,
    ) -> AppResult<Value> {
        let planned = self.plan_correction(exception_id, plate, session).await?;
        let stay = match &planned.plan.effect {
            Effect::Close { session, .. } => self.store.session(*session).await?,
            Effect::MoveHeldExit { session } => self.store.session(*session).await?,
            Effect::None | Effect::Open { .. } => None,
        };
        let has_evidence = match planned.exception.event_id {
            Some(e) => !self.store.events_with_evidence(&[e]).await?.is_empty(),
            None => false,
        };
        Ok(describe(&planned, stay.as_ref(), has_evidence))
    }
}

/// The preview as the API answers it (`docs/api.md`, "Exceptions").
fn describe(p: &PlannedCorrection, stay: Option<&crate::domain::Session>, evidence: bool) -> Value {
    let plan = &p.plan;
    let (collect, driver, opens) = match &plan.effect {
        Effect::Close {
            collect, driver, ..
        } => (
            collect.map(|c| match c {
                Collect::Mandate(_) => "mandate",
                Collect::PayAtExit => "pay_at_exit",
            }),
            *driver,
            false,
        ),
        Effect::Open { driver, .. } => (None, *driver, true),
        Effect::MoveHeldExit { .. } => (Some("pay_at_exit"), None, false),
        Effect::None => (None, None, false),
    };
    let warning = p.needs_confirmation();
    json!({
        "exception_id": p.exception.id,
        "plate": p.plate.as_str(),
        "plate_display": p.plate.display(),
        "layout": p.plate.region().as_str(),
        "lot": p.event.lot,
        "lane": p.event.lane,
        "direction": p.event.direction,
        "action": plan.action,
        "reason": reason_label(plan.reason),
        "stay": stay.map(|s| json!({
            "id": s.id,
            "plate": s.plate,
            "lot": s.lot,
            "entry_at": s.entry_at,
            "entry_lane": s.entry_lane,
        })),
        "opens_stay": opens,
        "fee": plan.fee,
        "owed": plan.owed,
        "collect": collect,
        "driver_id": driver,
        "raises": plan.issues.iter().map(|i| i.kind.to_string()).collect::<Vec<_>>(),
        "needs_confirmation": warning.is_some(),
        "warning": warning,
        "has_evidence": evidence,
    })
}

/// Deletes pictures past their retention now and then, until `cancel`.
pub async fn run_purge(app: App, config: EvidenceConfig, cancel: CancellationToken) {
    let every = Duration::from_secs(config.purge_interval_secs.max(1));
    loop {
        if let Err(e) = app.purge_evidence(config.retention()).await {
            tracing::warn!(error = %e, "evidence purge failed; trying again later");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
