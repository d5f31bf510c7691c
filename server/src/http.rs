//! The HTTP API (JSON), the operator dashboard, the driver's pay page and the operational
//! endpoints. Handlers are thin: parse, call one use case or one store query, answer.
//! Errors have one status table (`ApiError`); internal detail is logged, never sent.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use futures::Stream;
use parkpay_protocol::{LaneId, LotId, Money, Plate, PlateColour};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::app::{App, AppError, NewLane};
use crate::domain::*;
use crate::store::{ChargeFilter, SessionFilter, StoreError};
use crate::tariff::{self, Tariff};

#[derive(Clone)]
struct Ctx {
    app: App,
    mqtt_connected: Arc<AtomicBool>,
}

pub fn router(app: App, mqtt_connected: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/pay/{session}", get(pay_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/lots", post(create_lot).get(list_lots))
        .route("/api/lots/{lot}", get(get_lot))
        .route("/api/lots/{lot}/tariff", put(put_tariff))
        .route("/api/lots/{lot}/tariff/preview", get(preview))
        .route("/api/lots/{lot}/lanes", get(lanes).post(put_lane))
        .route(
            "/api/lots/{lot}/lanes/{lane}",
            axum::routing::delete(delete_lane),
        )
        .route("/api/lots/{lot}/lanes/{lane}/open", post(open_lane))
        .route("/api/gateways", get(gateways))
        .route("/api/drivers", post(create_driver))
        .route("/api/drivers/{id}", get(get_driver))
        .route("/api/drivers/{id}/vehicles", post(add_vehicle))
        .route("/api/drivers/{id}/mandates", post(add_mandate))
        .route("/api/mandates/{id}/revoke", post(revoke_mandate))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/sessions/{id}/pay", post(pay_session))
        .route("/api/charges", get(list_charges))
        .route("/api/charges/{id}", get(get_charge))
        .route("/api/charges/{id}/pay", post(pay_charge))
        .route("/api/exceptions", get(exceptions))
        .route("/api/exceptions/{id}/correct", post(correct_plate))
        .route("/api/audit", get(audit))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/stats", get(stats))
        .route("/api/stream", get(stream))
        .route("/api/sandbox/wallets", post(put_wallet))
        .route("/api/sandbox/wallets/{reference}", get(get_wallet))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(Ctx {
            app,
            mqtt_connected,
        })
}

// ---- errors -----------------------------------------------------------------------------

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                )
            }
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::BadRequest(m) => ApiError::BadRequest(m),
            AppError::NotFound(m) => ApiError::NotFound(m),
            AppError::Conflict(m) => ApiError::Conflict(m),
            AppError::Unprocessable(m) => ApiError::Unprocessable(m),
            AppError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        AppError::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON body whose rejections use our error shape.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Query string whose rejections use our error shape.
struct Q<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

fn id(s: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::BadRequest(format!("{what} {s:?} is not a UUID")))
}

fn lot_id(s: String) -> ApiResult<LotId> {
    LotId::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn lot_or_404(ctx: &Ctx, lot: &LotId) -> ApiResult<Lot> {
    ctx.app
        .store
        .lot(lot)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("lot {lot}")))
}

// ---- operational ------------------------------------------------------------------------

async fn readyz(State(ctx): State<Ctx>) -> Response {
    let db = ctx.app.store.ping().await.is_ok();
    let mqtt = ctx.mqtt_connected.load(Ordering::Relaxed);
    let status = if db && mqtt {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "database": db, "mqtt": mqtt }))).into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.app.metrics.render(),
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn pay_page(Path(session): Path<String>) -> Html<String> {
    Html(include_str!("pay.html").replace("{{SESSION}}", &session_token(&session)))
}

/// Keeps only what a session id can contain, so the page never echoes markup.
fn session_token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

// ---- lots and lanes ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLot {
    id: String,
    name: String,
    #[serde(default)]
    capacity: i64,
    tariff: Tariff,
    /// The lot's lanes: which gateway serves each, and which way cars pass.
    #[serde(default)]
    lanes: Vec<NewLane>,
}

fn lot_json(lot: &Lot, occupancy: Option<i64>) -> Value {
    json!({
        "id": lot.id, "name": lot.name, "capacity": lot.capacity, "tariff": lot.tariff,
        "tariff_version": lot.tariff_version, "created_at": lot.created_at, "occupancy": occupancy,
    })
}

async fn create_lot(
    State(ctx): State<Ctx>,
    Body(n): Body<NewLot>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let lot = Lot {
        id: lot_id(n.id)?,
        name: n.name,
        capacity: n.capacity,
        tariff: n.tariff,
        tariff_version: 1,
        created_at: ctx.app.clock.now(),
    };
    let lot = ctx.app.create_lot(lot, n.lanes, "operator").await?;
    Ok((StatusCode::CREATED, Json(lot_json(&lot, Some(0)))))
}

async fn list_lots(State(ctx): State<Ctx>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        ctx.app
            .store
            .lots()
            .await?
            .iter()
            .map(|l| lot_json(l, None))
            .collect(),
    ))
}

async fn get_lot(State(ctx): State<Ctx>, Path(lot): Path<String>) -> ApiResult<Json<Value>> {
    let lot = lot_or_404(&ctx, &lot_id(lot)?).await?;
    let stats = ctx
        .app
        .store
        .lot_stats(&lot.id, today_start(&ctx, &lot))
        .await?;
    Ok(Json(lot_json(&lot, Some(stats.occupancy))))
}

async fn put_tariff(
    State(ctx): State<Ctx>,
    Path(lot): Path<String>,
    Body(t): Body<Tariff>,
) -> ApiResult<Json<Value>> {
    let lot = ctx.app.put_tariff(&lot_id(lot)?, t, "operator").await?;
    Ok(Json(lot_json(&lot, None)))
}

#[derive(Deserialize)]
struct PreviewQuery {
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
}

async fn preview(
    State(ctx): State<Ctx>,
    Path(lot): Path<String>,
    Q(q): Q<PreviewQuery>,
) -> ApiResult<Json<tariff::Quote>> {
    let lot = lot_or_404(&ctx, &lot_id(lot)?).await?;
    tariff::quote(&lot.tariff, q.entry, q.exit)
        .map(Json)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// The lot's configured lanes, each with what its gateway last reported.
async fn lanes(State(ctx): State<Ctx>, Path(lot): Path<String>) -> ApiResult<Json<Value>> {
    let lot = lot_id(lot)?;
    let live = ctx.app.live.lanes_of(lot.as_str());
    let online: std::collections::HashMap<String, bool> = ctx
        .app
        .live
        .gateways()
        .into_iter()
        .filter(|g| g.lot == lot.as_str())
        .map(|g| (g.gateway, g.online))
        .collect();
    let lanes: Vec<Value> = ctx
        .app
        .store
        .lanes(&lot)
        .await?
        .into_iter()
        .map(|l| {
            // What a gateway reports about a lane it does not serve is not shown.
            let state = live
                .iter()
                .find(|v| v.lane == l.id.as_str() && v.gateway == l.gateway.as_str());
            json!({
                "lot": l.lot, "lane": l.id, "direction": l.direction, "gateway": l.gateway,
                "arm": state.map(|v| v.arm), "vehicle_present": state.is_some_and(|v| v.vehicle_present),
                "gateway_online": online.get(l.gateway.as_str()).copied().unwrap_or(false),
                "updated_at": state.map(|v| v.updated_at),
            })
        })
        .collect();
    Ok(Json(json!(lanes)))
}

async fn put_lane(
    State(ctx): State<Ctx>,
    Path(lot): Path<String>,
    Body(lane): Body<NewLane>,
) -> ApiResult<(StatusCode, Json<Lane>)> {
    let lane = ctx.app.put_lane(&lot_id(lot)?, lane, "operator").await?;
    Ok((StatusCode::CREATED, Json(lane)))
}

async fn delete_lane(
    State(ctx): State<Ctx>,
    Path((lot, lane)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let lane = LaneId::parse(lane).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    ctx.app
        .delete_lane(&lot_id(lot)?, &lane, "operator")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn gateways(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!(ctx.app.live.gateways()))
}

#[derive(Deserialize)]
struct OpenLane {
    reason: String,
    operator: String,
}

async fn open_lane(
    State(ctx): State<Ctx>,
    Path((lot, lane)): Path<(String, String)>,
    Body(b): Body<OpenLane>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let lot = lot_id(lot)?;
    let lane = LaneId::parse(lane).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let command_id = ctx
        .app
        .open_lane(&lot, &lane, &b.reason, &b.operator)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "command_id": command_id })),
    ))
}

// ---- drivers ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDriver {
    name: String,
    #[serde(default)]
    phone: Option<String>,
}

async fn create_driver(
    State(ctx): State<Ctx>,
    Body(n): Body<NewDriver>,
) -> ApiResult<(StatusCode, Json<Driver>)> {
    if n.name.trim().is_empty() {
        return Err(ApiError::Unprocessable("name must not be empty".into()));
    }
    let d = Driver {
        id: Uuid::now_v7(),
        name: n.name,
        phone: n.phone,
        created_at: ctx.app.clock.now(),
    };
    ctx.app.store.insert_driver(&d).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

async fn driver_or_404(ctx: &Ctx, id: Uuid) -> ApiResult<Driver> {
    ctx.app
        .store
        .driver(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("driver {id}")))
}

async fn get_driver(State(ctx): State<Ctx>, Path(id_s): Path<String>) -> ApiResult<Json<Value>> {
    let d = driver_or_404(&ctx, id(&id_s, "driver")?).await?;
    let vehicles = ctx.app.store.vehicles_of(d.id).await?;
    let mandates = ctx.app.store.mandates_of(d.id).await?;
    let arrears = ctx.app.store.arrears_of(d.id).await?;
    Ok(Json(json!({
        "id": d.id, "name": d.name, "phone": d.phone, "created_at": d.created_at,
        "vehicles": vehicles, "mandates": mandates, "arrears": Money::cny(arrears),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVehicle {
    plate: String,
    #[serde(default)]
    colour: Option<PlateColour>,
}

async fn add_vehicle(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
    Body(n): Body<NewVehicle>,
) -> ApiResult<(StatusCode, Json<Vehicle>)> {
    let driver = driver_or_404(&ctx, id(&id_s, "driver")?).await?;
    let plate = Plate::parse(&n.plate).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let v = Vehicle {
        plate: plate.as_str().to_string(),
        colour: n.colour.unwrap_or_default(),
        driver_id: driver.id,
        created_at: ctx.app.clock.now(),
    };
    ctx.app.store.insert_vehicle(&v, &plate.match_key()).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMandate {
    provider: String,
    provider_ref: String,
    #[serde(default)]
    per_charge_cap: Option<Money>,
    #[serde(default)]
    monthly_cap: Option<Money>,
    #[serde(default)]
    channel: Option<String>,
}

async fn add_mandate(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
    Body(n): Body<NewMandate>,
) -> ApiResult<(StatusCode, Json<Mandate>)> {
    let driver = driver_or_404(&ctx, id(&id_s, "driver")?).await?;
    if n.provider != "sandbox" {
        return Err(ApiError::Unprocessable(format!(
            "provider {:?} is not available; use \"sandbox\"",
            n.provider
        )));
    }
    if n.provider_ref.trim().is_empty() {
        return Err(ApiError::Unprocessable(
            "provider_ref must not be empty".into(),
        ));
    }
    for cap in [n.per_charge_cap, n.monthly_cap].into_iter().flatten() {
        if cap.minor <= 0 {
            return Err(ApiError::Unprocessable("caps must be positive".into()));
        }
    }
    let now = ctx.app.clock.now();
    let m = Mandate {
        id: Uuid::now_v7(),
        driver_id: driver.id,
        provider: n.provider,
        provider_ref: n.provider_ref,
        // The sandbox signs at once; a real provider answers asynchronously.
        status: MandateStatus::Active,
        per_charge_cap: n.per_charge_cap,
        monthly_cap: n.monthly_cap,
        channel: n.channel.unwrap_or_else(|| "api".into()),
        signed_at: now,
        revoked_at: None,
    };
    ctx.app.store.insert_mandate(&m).await?;
    ctx.app.allowlists_due.notify_one();
    Ok((StatusCode::CREATED, Json(m)))
}

async fn revoke_mandate(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Mandate>> {
    let mid = id(&id_s, "mandate")?;
    Ok(Json(ctx.app.revoke_mandate(mid).await?))
}

// ---- sessions, charges ------------------------------------------------------------------

#[derive(Deserialize)]
struct SessionQuery {
    lot: Option<String>,
    plate: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_sessions(
    State(ctx): State<Ctx>,
    Q(q): Q<SessionQuery>,
) -> ApiResult<Json<Vec<Session>>> {
    let status = q
        .status
        .map(|s| {
            SessionStatus::parse(&s)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown session status {s:?}")))
        })
        .transpose()?;
    let plate = q.plate.map(|p| {
        Plate::parse(&p)
            .map(|p| p.as_str().to_string())
            .unwrap_or(p)
    });
    let f = SessionFilter {
        lot: q.lot.map(lot_id).transpose()?,
        plate,
        status,
        limit: q.limit.unwrap_or(100).clamp(1, 100_000),
    };
    Ok(Json(ctx.app.store.sessions(&f).await?))
}

async fn get_session(State(ctx): State<Ctx>, Path(id_s): Path<String>) -> ApiResult<Json<Value>> {
    let sid = id(&id_s, "session")?;
    let s = ctx
        .app
        .store
        .session(sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {sid}")))?;
    let charge = ctx.app.store.charge_for_session(sid).await?;
    let mut v = json!(s);
    v["charge"] = json!(charge);
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
struct PayBody {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    actor: Option<String>,
}

fn pay_method(b: &PayBody) -> ApiResult<ChargeMethod> {
    match b.method.as_deref().unwrap_or("qr") {
        "qr" => Ok(ChargeMethod::Qr),
        other => Err(ApiError::Unprocessable(format!(
            "payment method {other:?} is not supported; use \"qr\""
        ))),
    }
}

/// The pay body is optional: an empty body means a QR payment by the driver.
fn pay_body(bytes: &[u8]) -> ApiResult<PayBody> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PayBody::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Unprocessable(format!("invalid body: {e}")))
}

async fn pay_session(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Charge>> {
    let b = pay_body(&body)?;
    let actor = b.actor.clone().unwrap_or_else(|| "driver".into());
    Ok(Json(
        ctx.app
            .pay_session(id(&id_s, "session")?, pay_method(&b)?, &actor)
            .await?,
    ))
}

#[derive(Deserialize)]
struct ChargeQuery {
    status: Option<String>,
    driver: Option<String>,
    session: Option<String>,
    limit: Option<i64>,
}

async fn list_charges(
    State(ctx): State<Ctx>,
    Q(q): Q<ChargeQuery>,
) -> ApiResult<Json<Vec<Charge>>> {
    let status = q
        .status
        .map(|s| {
            ChargeStatus::parse(&s)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown charge status {s:?}")))
        })
        .transpose()?;
    let f = ChargeFilter {
        status,
        driver: q.driver.as_deref().map(|d| id(d, "driver")).transpose()?,
        session: q.session.as_deref().map(|s| id(s, "session")).transpose()?,
        limit: q.limit.unwrap_or(100).clamp(1, 100_000),
    };
    Ok(Json(ctx.app.store.charges(&f).await?))
}

async fn get_charge(State(ctx): State<Ctx>, Path(id_s): Path<String>) -> ApiResult<Json<Value>> {
    let cid = id(&id_s, "charge")?;
    let c = ctx
        .app
        .store
        .charge(cid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge {cid}")))?;
    let mut v = json!(c);
    v["history"] = json!(ctx.app.store.charge_attempts(cid).await?);
    Ok(Json(v))
}

async fn pay_charge(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Charge>> {
    let b = pay_body(&body)?;
    let actor = b.actor.clone().unwrap_or_else(|| "driver".into());
    Ok(Json(
        ctx.app
            .pay_charge(id(&id_s, "charge")?, pay_method(&b)?, &actor)
            .await?,
    ))
}

// ---- operations -------------------------------------------------------------------------

#[derive(Deserialize)]
struct ListQuery {
    lot: Option<String>,
    open: Option<bool>,
    limit: Option<i64>,
}

async fn exceptions(
    State(ctx): State<Ctx>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<ExceptionRecord>>> {
    let lot = q.lot.map(lot_id).transpose()?;
    Ok(Json(
        ctx.app
            .store
            .exceptions(
                lot.as_ref(),
                q.open.unwrap_or(false),
                q.limit.unwrap_or(100).clamp(1, 100_000),
            )
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Correction {
    plate: String,
    operator: String,
    /// For an exit held as `no_entry`: the open session (one of the look-alikes the exception
    /// names) that this car, whose entry was misread, really belongs to.
    #[serde(default)]
    session: Option<Uuid>,
}

async fn correct_plate(
    State(ctx): State<Ctx>,
    Path(id_s): Path<String>,
    Body(c): Body<Correction>,
) -> ApiResult<Json<parkpay_protocol::Decision>> {
    let xid = id(&id_s, "exception")?;
    Ok(Json(
        ctx.app
            .correct_plate(xid, &c.plate, c.session, &c.operator)
            .await?,
    ))
}

async fn audit(State(ctx): State<Ctx>, Q(q): Q<ListQuery>) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(
        ctx.app
            .store
            .audit(q.limit.unwrap_or(100).clamp(1, 100_000))
            .await?,
    ))
}

async fn dead_letters(
    State(ctx): State<Ctx>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    Ok(Json(
        ctx.app
            .store
            .dead_letters(q.limit.unwrap_or(100).clamp(1, 100_000))
            .await?,
    ))
}

/// Midnight today in the lot's time zone.
fn today_start(ctx: &Ctx, lot: &Lot) -> DateTime<Utc> {
    let tz = lot.tariff.time_zone;
    let local = ctx.app.clock.now().with_timezone(&tz).date_naive();
    local
        .and_hms_opt(0, 0, 0)
        .and_then(|t| tz.from_local_datetime(&t).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| ctx.app.clock.now())
}

async fn stats(State(ctx): State<Ctx>) -> ApiResult<Json<Value>> {
    let mut lots = Vec::new();
    for lot in ctx.app.store.lots().await? {
        let s = ctx
            .app
            .store
            .lot_stats(&lot.id, today_start(&ctx, &lot))
            .await?;
        lots.push(json!({
            "lot": lot.id, "name": lot.name, "capacity": lot.capacity, "occupancy": s.occupancy,
            "free": (lot.capacity - s.occupancy).max(0),
            "revenue_today": Money::new(s.revenue_minor, lot.tariff.currency), "passages_today": s.passages,
        }));
    }
    Ok(Json(
        json!({ "now": ctx.app.clock.now(), "lots": lots, "gateways": ctx.app.live.gateways() }),
    ))
}

async fn stream(State(ctx): State<Ctx>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = BroadcastStream::new(ctx.app.live.subscribe()).filter_map(|e| {
        // A lagging dashboard skips what it missed; the next stats poll catches it up.
        let e = e.ok()?;
        Some(Ok(Event::default().event(e.kind).data(e.data.to_string())))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

// ---- sandbox provider -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWallet {
    reference: String,
    balance: Money,
    #[serde(default)]
    fail_next: i64,
}

async fn put_wallet(
    State(ctx): State<Ctx>,
    Body(n): Body<NewWallet>,
) -> ApiResult<(StatusCode, Json<Wallet>)> {
    if n.reference.trim().is_empty() {
        return Err(ApiError::Unprocessable(
            "reference must not be empty".into(),
        ));
    }
    if n.balance.minor < 0 || n.fail_next < 0 {
        return Err(ApiError::Unprocessable(
            "balance and fail_next must not be negative".into(),
        ));
    }
    let w = Wallet {
        reference: n.reference,
        balance: n.balance,
        fail_next: n.fail_next,
    };
    ctx.app.store.put_wallet(&w, ctx.app.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(w)))
}

async fn get_wallet(
    State(ctx): State<Ctx>,
    Path(reference): Path<String>,
) -> ApiResult<Json<Wallet>> {
    ctx.app
        .store
        .wallet(&reference)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("wallet {reference}")))
}
