//! Evidence pictures and assigning exceptions: `GET /api/passages/{event}/evidence`,
//! `POST /api/exceptions/{id}/assign`, and what the exception list says about both.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{exception_to_handle, id, param, require, require_on, ApiError, ApiResult, Body, Ctx};
use crate::auth::{Action, Identity};

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/passages/{event}/evidence", get(picture))
        .route("/api/exceptions/{id}/assign", post(assign))
}

/// The picture of a passage, to anybody who may view its lot. 404 when there is none (a
/// confident read, a smart camera without snapshots) or it is past its retention.
async fn picture(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(event_s): Path<String>,
) -> ApiResult<Response> {
    require(&me, Action::View)?;
    let event = id(&event_s, "event")?;
    let missing = || ApiError::NotFound(format!("no picture of event {event}"));
    let p = ctx.app.store.evidence(event).await?.ok_or_else(missing)?;
    // Somebody outside the lot learns nothing, not even that a picture exists.
    if !me.grant.covers(&p.lot) {
        return Err(missing());
    }
    let content_type = match p.format.as_str() {
        "png" => "image/png",
        _ => "image/jpeg",
    };
    let mut r = p.image.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Personal data: kept by the browser of whoever may see it, never by a shared cache.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// The account to give the exception to; the caller when absent.
    #[serde(default)]
    to: Option<String>,
}

/// Gives an open exception to an account that may correct plates on its lot (or to the
/// caller); audited.
async fn assign(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<AssignBody>,
) -> ApiResult<Json<Value>> {
    let x = exception_to_handle(&ctx, &me, &id_s).await?;
    require_on(&me, Action::CorrectPlates, &x.lot)?;
    let to = match b.to {
        Some(to) => {
            param(&to, "to", 64)?;
            to
        }
        None => me.name.clone(),
    };
    let a = ctx.app.assign_exception(x.id, &to, &me.name).await?;
    Ok(Json(json!(a)))
}

/// Adds to each listed exception who has it (`assigned_to`, `assigned_at`) and whether its
/// passage has a picture (`has_evidence`).
pub(super) async fn annotate(ctx: &Ctx, mut list: Vec<Value>) -> ApiResult<Vec<Value>> {
    let uuid_of = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    let ids: Vec<Uuid> = list.iter().filter_map(|v| uuid_of(v, "id")).collect();
    let events: Vec<Uuid> = list.iter().filter_map(|v| uuid_of(v, "event_id")).collect();
    let assigned = ctx.app.store.assignments(&ids).await?;
    let pictured = ctx.app.store.events_with_evidence(&events).await?;
    for v in &mut list {
        let a = uuid_of(v, "id").and_then(|x| assigned.iter().find(|a| a.exception_id == x));
        let has = uuid_of(v, "event_id").is_some_and(|e| pictured.contains(&e));
        if let Value::Object(m) = v {
            m.insert("assigned_to".into(), json!(a.map(|a| &a.assigned_to)));
            m.insert("assigned_at".into(), json!(a.map(|a| a.assigned_at)));
            m.insert("has_evidence".into(), json!(has));
        }
    }
    Ok(list)
}
