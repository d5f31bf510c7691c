//! The money desk's routes (refunds, waiving, retrying, reconciliation) and the provider's
//! notification endpoint.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parkpay_protocol::Money;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{id, require, require_on, ApiError, ApiResult, Body, Ctx, Text};
use crate::auth::{Action, Identity};
use crate::money::NewRefund;
use crate::payments::NoticeError;

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/providers/{provider}/notify", post(notify))
        .route("/api/charges/{id}/refunds", post(refund).get(refunds))
        .route("/api/charges/{id}/waive", post(waive))
        .route("/api/charges/{id}/retry", post(retry))
        .route("/api/reconciliations", post(reconcile).get(reconciliations))
        .route("/api/reconciliations/{id}", get(reconciliation))
        .route("/api/reconciliations/{id}/csv", get(reconciliation_csv))
}

/// A notification from the payment provider. Believed only once its signature verifies;
/// answered at once (the provider waits at most 5 s), 204 when taken (also when seen before),
/// 401 when not believed, 400 when it cannot be read, 500 when it could not be recorded (the
/// provider sends it again). Error bodies are the provider's own shape: `{"code","message"}`.
async fn notify(
    State(ctx): State<Ctx>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fail = |status: StatusCode, message: String| {
        (status, Json(json!({ "code": "FAIL", "message": message }))).into_response()
    };
    if provider != ctx.app.provider.name() {
        return fail(
            StatusCode::NOT_FOUND,
            format!("this server does not take {provider} notifications"),
        );
    }
    let notice = match ctx.app.provider.notice(&headers, &body) {
        Ok(n) => n,
        Err(e) => {
            ctx.app.metrics.notification(match e {
                NoticeError::Signature(_) => "refused",
                _ => "malformed",
            });
            tracing::warn!(%provider, error = %e, bytes = body.len(), "provider notification not believed; nothing changed");
            return match e {
                NoticeError::Signature(m) => fail(StatusCode::UNAUTHORIZED, m),
                NoticeError::Malformed(m) => fail(StatusCode::BAD_REQUEST, m),
                NoticeError::Unsupported => fail(
                    StatusCode::NOT_FOUND,
                    "this provider sends no notifications".into(),
                ),
            };
        }
    };
    match ctx.app.apply_notice(&notice).await {
        Ok(fresh) => {
            ctx.app
                .metrics
                .notification(if fresh { "applied" } else { "duplicate" });
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::warn!(id = %notice.id, error = %e, "provider notification could not be applied; the provider sends it again");
            fail(StatusCode::INTERNAL_SERVER_ERROR, "try again".into())
        }
    }
}

async fn charge_for(
    ctx: &Ctx,
    me: &Identity,
    id_s: &str,
    action: Action,
) -> ApiResult<crate::domain::Charge> {
    let cid = id(id_s, "charge")?;
    let c = ctx
        .app
        .store
        .charge(cid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge {cid}")))?;
    require_on(me, action, &c.lot)?;
    Ok(c)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    amount: Money,
    reason: Text<500>,
    #[serde(default)]
    out_refund_no: Option<String>,
}

async fn refund(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<RefundBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let c = charge_for(&ctx, &me, &id_s, Action::ManageMoney).await?;
    let r = ctx
        .app
        .refund_charge(
            c.id,
            NewRefund {
                amount: b.amount,
                reason: b.reason.0,
                out_refund_no: b.out_refund_no,
            },
            &me.name,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(r))))
}

async fn refunds(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = charge_for(&ctx, &me, &id_s, Action::View).await?;
    Ok(Json(json!(ctx.app.store.refunds_of(c.id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaiveBody {
    reason: Text<500>,
}

async fn waive(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<WaiveBody>,
) -> ApiResult<Json<Value>> {
    let c = charge_for(&ctx, &me, &id_s, Action::ManageMoney).await?;
    Ok(Json(json!(
        ctx.app.waive_charge(c.id, &b.reason.0, &me.name).await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn retry(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(_): Body<Empty>,
) -> ApiResult<Json<Value>> {
    let c = charge_for(&ctx, &me, &id_s, Action::ManageMoney).await?;
    Ok(Json(json!(ctx.app.retry_charge(c.id, &me.name).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileBody {
    /// YYYY-MM-DD, the bill's day.
    date: String,
}

async fn reconcile(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(b): Body<ReconcileBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&me, Action::ManageMoney)?;
    if me.grant.lots.is_some() {
        return Err(ApiError::Forbidden(
            "reconciliation covers every lot; it needs access to every lot".into(),
        ));
    }
    let date = chrono::NaiveDate::parse_from_str(b.date.trim(), "%Y-%m-%d")
        .map_err(|_| ApiError::Unprocessable("date: use YYYY-MM-DD".into()))?;
    let today = ctx
        .app
        .clock
        .now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
        .date_naive();
    if date > today {
        return Err(ApiError::Unprocessable(format!(
            "date: {date} has not happened yet"
        )));
    }
    let run = ctx.app.reconcile(date, &me.name).await?;
    Ok((StatusCode::CREATED, Json(json!(run))))
}

async fn reconciliations(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Value>> {
    require(&me, Action::ManageMoney)?;
    Ok(Json(json!(ctx.app.store.reconciliations(60).await?)))
}

type Report = (crate::domain::ReconRun, Vec<crate::domain::ReconItem>);

async fn report(ctx: &Ctx, me: &Identity, id_s: &str) -> ApiResult<Report> {
    require(me, Action::ManageMoney)?;
    let rid = id(id_s, "reconciliation")?;
    ctx.app
        .store
        .reconciliation(rid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("reconciliation {rid}")))
}

async fn reconciliation(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    let (run, items) = report(&ctx, &me, &id_s).await?;
    let mut v = json!(run);
    v["items"] = json!(items);
    Ok(Json(v))
}

async fn reconciliation_csv(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Response> {
    let (run, items) = report(&ctx, &me, &id_s).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"reconciliation-{}.csv\"",
                    run.bill_date
                ),
            ),
        ],
        crate::money::recon_csv(&run, &items),
    )
        .into_response())
}
