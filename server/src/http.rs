//! The HTTP API (JSON), the operator dashboard and sign-in page, the driver's pay page and the
//! operational endpoints. Handlers are thin: check who asks, parse, call one use case or one
//! store query, answer. Errors have one status table (`ApiError`); internal detail is logged,
//! never sent.
//!
//! Every route but the driver's pay page (`/pay/{session}`, `/api/pay/{session}`), the sign-in
//! page and `/healthz`/`/readyz` needs an [`Identity`]: a session cookie from `POST /api/login`
//! (whose writes must echo the CSRF token in `X-CSRF-Token`) or an API token
//! (`Authorization: Bearer ppt_...`). What each role may do is [`auth::allows`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use futures::Stream;
use parkpay_protocol::{LaneId, LotId, Money, Plate, PlateColour};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use tower_http::set_header::SetResponseHeaderLayer;
use uuid::Uuid;

use crate::app::{App, AppError, NewLane};
use crate::auth::{self, Action, Identity, RateLimiter, Via};
use crate::config::HttpConfig;
use crate::domain::*;
use crate::lists::{NewListEntry, NewPurchase};
use crate::merchants::NewMerchant;
use crate::store::{ChargeFilter, ListFilter, SessionFilter, StoreError};
use crate::tariff::{self, Tariff};

mod evidence;
mod history;
mod money;
mod portal;
mod reports;

/// The longest stay a tariff preview prices.
pub const MAX_PREVIEW_DAYS: i64 = 400;

/// The session cookie's name.
const COOKIE: &str = "parkpay_session";

#[derive(Clone)]
struct Ctx {
    app: App,
    mqtt_connected: Arc<AtomicBool>,
    logins: Arc<RateLimiter>,
    public: Arc<RateLimiter>,
    /// Tariff previews run one at a time, off the async workers the lanes use.
    previews: Arc<Semaphore>,
    session_ttl: chrono::Duration,
}

/// The dashboard, the sign-in page and the pay page, each with a Content-Security-Policy that
/// allows exactly its own inline script (by hash) and nothing from elsewhere.
struct Page {
    html: String,
    csp: HeaderValue,
}

impl Page {
    fn new(html: &str) -> Page {
        use base64::Engine;
        let mut hashes = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find("<script>") {
            let after = &rest[start + "<script>".len()..];
            let Some(end) = after.find("</script>") else {
                break;
            };
            let digest = Sha256::digest(&after.as_bytes()[..end]);
            hashes.push(format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
            rest = &after[end..];
        }
        let csp = format!(
            "default-src 'none'; script-src 'self' {}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            hashes.join(" ")
        );
        Page {
            html: html.to_string(),
            csp: HeaderValue::from_str(&csp)
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
        }
    }

    fn respond(&self, html: String) -> Response {
        let mut r = Html(html).into_response();
        r.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        r
    }
}

/// Every page the server serves, by name (its file in `server/src/`).
const PAGE_FILES: &[(&str, &str)] = &[
    ("dashboard", include_str!("dashboard.html")),
    ("pay", include_str!("pay.html")),
    ("login", include_str!("login.html")),
    ("ticket", include_str!("ticket.html")),
    ("validation", include_str!("validation.html")),
    ("receipt", include_str!("receipt.html")),
    ("history", include_str!("history.html")),
    ("portal", include_str!("portal.html")),
    ("find", include_str!("find.html")),
    ("reports", include_str!("reports.html")),
    ("tariffs", include_str!("tariffs.html")),
];

/// The page named `name` in [`PAGE_FILES`], with its policy computed once.
fn page(name: &str) -> &'static Page {
    static PAGES: std::sync::OnceLock<Vec<(&'static str, Page)>> = std::sync::OnceLock::new();
    let pages = PAGES.get_or_init(|| {
        PAGE_FILES
            .iter()
            .map(|(name, html)| (*name, Page::new(html)))
            .collect()
    });
    pages
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| p)
        .expect("every page named in the code is in PAGE_FILES")
}

/// The script every page shares: translations (zh-CN, English) and the language switch.
const I18N_JS: &str = include_str!("static/i18n.js");

async fn i18n_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        I18N_JS,
    )
        .into_response()
}

pub fn router(app: App, mqtt_connected: Arc<AtomicBool>, http: &HttpConfig) -> Router {
    let ctx = Ctx {
        app,
        mqtt_connected,
        logins: Arc::new(RateLimiter::new(
            http.login_attempts,
            Duration::from_secs(15 * 60),
        )),
        public: Arc::new(RateLimiter::new(
            http.public_rate_per_minute,
            Duration::from_secs(60),
        )),
        previews: Arc::new(Semaphore::new(1)),
        session_ttl: chrono::Duration::hours(i64::from(http.session_hours)),
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page))
        .route("/history", get(history_page))
        .route("/audit", get(history_page))
        .route("/pay/{session}", get(pay_page))
        .route("/ticket/{event}", get(ticket_page))
        .route("/v/{code}", get(validation_page))
        .route("/api/tickets", post(take_ticket))
        .route("/api/tickets/exit", post(leave_with_ticket))
        .route("/api/tickets/passage/{event}", get(ticket_passage))
        .route("/static/i18n.js", get(i18n_js))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/accounts", post(create_account).get(list_accounts))
        .route("/api/accounts/{username}/disable", post(disable_account))
        .route("/api/tokens", post(create_token).get(list_tokens))
        .route("/api/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/pay/{session}", get(pay_view))
        .route("/api/lots", post(create_lot).get(list_lots))
        .route("/api/lots/{lot}", get(get_lot))
        .route("/api/lots/{lot}/tariff", put(put_tariff))
        .route(
            "/api/lots/{lot}/tariff/preview",
            get(preview).post(reports::preview_draft),
        )
        .route("/api/lots/{lot}/lanes", get(lanes).post(put_lane))
        .route(
            "/api/lots/{lot}/lanes/{lane}",
            axum::routing::delete(delete_lane),
        )
        .route("/api/lots/{lot}/lanes/{lane}/{action}", post(open_lane))
        .route("/api/gateways", get(gateways))
        .route("/api/drivers", post(create_driver))
        .route("/api/drivers/{id}", get(get_driver))
        .route("/api/drivers/{id}/vehicles", post(add_vehicle))
        .route("/api/drivers/{id}/mandates", post(add_mandate))
        .route("/api/mandates/{id}/revoke", post(revoke_mandate))
        .route("/api/vehicles/{plate}/{action}", post(lock_vehicle))
        .route("/api/lists", post(add_list_entry).get(list_entries))
        .route("/api/lists/{id}/revoke", post(revoke_list_entry))
        .route("/api/passes", post(buy_pass))
        .route("/api/lots/{lot}/spaces", put(put_spaces))
        .route(
            "/api/lots/{lot}/merchants",
            post(create_merchant).get(list_merchants),
        )
        .route("/api/merchants/{id}/disable", post(disable_merchant))
        .route("/api/validations", post(validate_plate).get(my_validations))
        .route("/api/validations/codes", post(validation_code))
        .route("/api/validations/claim", post(claim_validation))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/sessions/{id}/cash", post(cash_for_session))
        .route("/api/charges", get(list_charges))
        .route("/api/charges/{id}", get(get_charge))
        .route("/api/charges/{id}/cash", post(cash_for_charge))
        .route("/api/exceptions", get(exceptions))
        .route("/api/exceptions/{id}/correct", post(correct_plate))
        .route("/api/exceptions/{id}/dismiss", post(dismiss_exception))
        .route("/api/audit", get(audit))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/stats", get(stats))
        .route("/api/stream", get(stream))
        .route("/api/sandbox/settle", post(sandbox_settle))
        .route("/api/sandbox/wallets", post(put_wallet))
        .route("/api/sandbox/wallets/{reference}", get(get_wallet))
        .route("/receipt/{session}", get(receipt_page))
        .merge(money::routes())
        .merge(history::routes())
        .merge(portal::routes())
        .merge(reports::routes())
        .merge(evidence::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::MethodNotAllowed(format!("{method} is not allowed on this route"))
        })
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

// ---- errors -----------------------------------------------------------------------------

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    TooLarge(String),
    Unprocessable(String),
    TooManyRequests(Duration),
    /// The database failed in a way that passes by itself (a connection cut, a restart, a busy
    /// lock): the client may send the same request again.
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m)
            }
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m),
            ApiError::TooManyRequests(wait) => {
                retry_after = Some(wait.as_secs().max(1));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    format!(
                        "too many requests; try again in {} s",
                        wait.as_secs().max(1)
                    ),
                )
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "request failed on a passing database fault");
                retry_after = Some(1);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable for a moment; try again".to_string(),
                )
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                )
            }
        };
        let mut r = (status, Json(json!({ "error": code, "message": message }))).into_response();
        if let Some(secs) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::BadRequest(m) => ApiError::BadRequest(m),
            AppError::NotFound(m) => ApiError::NotFound(m),
            AppError::Conflict(m) => ApiError::Conflict(m),
            AppError::Unprocessable(m) => ApiError::Unprocessable(m),
            AppError::Store(e) if e.is_transient() => ApiError::Unavailable(e.to_string()),
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

/// JSON body whose rejections use our error shape: 413 over the size limit, 422 for a body of
/// the wrong shape (a field too long, a control character), 400 for what is not JSON.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge(
                "the request body is larger than this server accepts".into(),
            )),
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

/// A text field from outside: at most `MAX` characters, not blank, no control characters (a
/// NUL would not even fit in a PostgreSQL text column).
#[derive(Debug, Clone)]
pub struct Text<const MAX: usize>(pub String);

/// Why a text from outside is refused, if it is.
pub fn text_problem(s: &str, max: usize) -> Option<String> {
    if s.trim().is_empty() {
        return Some("must not be empty".into());
    }
    if s.chars().count() > max {
        return Some(format!("must be at most {max} characters"));
    }
    if s.chars().any(char::is_control) {
        return Some("must not contain control characters".into());
    }
    None
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match text_problem(&s, MAX) {
            Some(why) => Err(serde::de::Error::custom(why)),
            None => Ok(Text(s)),
        }
    }
}

/// A text from a path or query string, checked like [`Text`].
fn param<'a>(s: &'a str, what: &str, max: usize) -> ApiResult<&'a str> {
    match text_problem(s, max) {
        Some(why) => Err(ApiError::Unprocessable(format!("{what} {why}"))),
        None => Ok(s),
    }
}

fn id(s: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::BadRequest(format!("{what} is not a UUID")))
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

// ---- who is asking ------------------------------------------------------------------------

fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Ctx> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let now = ctx.app.clock.now();
        if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
            let token = v
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::Unauthorized("use Authorization: Bearer <token>".into())
                })?;
            let t = ctx
                .app
                .store
                .api_token(&auth::token_hash(token))
                .await?
                .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API token".into()))?;
            return Ok(Identity {
                name: format!("token:{}", t.name),
                grant: t.grant,
                via: Via::Token,
            });
        }
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(ApiError::Unauthorized("sign in first".into()));
        };
        let hash = auth::token_hash(token);
        let (login, account) =
            ctx.app.store.login(&hash, now).await?.ok_or_else(|| {
                ApiError::Unauthorized("the session has ended; sign in again".into())
            })?;
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth::same_secret(sent, &login.csrf) {
                return Err(ApiError::Forbidden(
                    "missing or wrong X-CSRF-Token header".into(),
                ));
            }
        }
        Ok(Identity {
            name: account.username,
            grant: account.grant,
            via: Via::Session {
                csrf: login.csrf,
                token_hash: hash,
            },
        })
    }
}

/// A plate to filter by: its canonical form when it parses, else as given (bounded).
fn plate_query(p: String) -> ApiResult<String> {
    param(&p, "plate", 16)?;
    Ok(Plate::parse(&p)
        .map(|p| p.as_str().to_string())
        .unwrap_or(p))
}

/// 403 unless the caller's role allows `action`.
fn require(me: &Identity, action: Action) -> ApiResult<()> {
    if me.may(action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "role {} may not {}",
            me.grant.role,
            action.describe()
        )))
    }
}

/// 403 unless the caller may do `action` on `lot`.
fn require_on(me: &Identity, action: Action, lot: &LotId) -> ApiResult<()> {
    require(me, action)?;
    if me.grant.covers(lot) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("no access to lot {lot}")))
    }
}

/// 403 unless the caller's grant covers every lot (for records not tied to one lot).
fn require_all_lots(me: &Identity, action: Action) -> ApiResult<()> {
    require(me, action)?;
    if me.grant.lots.is_none() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{} needs access to every lot",
            action.describe()
        )))
    }
}

/// Removes what identifies a driver from a record, for callers who may not see drivers.
fn without_driver(mut v: Value, me: &Identity) -> Value {
    if !me.may(Action::SeeDrivers) {
        strip_driver(&mut v);
    }
    v
}

fn strip_driver(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["driver_id", "mandate_id", "provider_ref", "phone"] {
                m.remove(k);
            }
            for child in m.values_mut() {
                strip_driver(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_driver),
        _ => {}
    }
}

/// The lot a JSON record belongs to, if it names one.
fn lot_of(v: &Value) -> Option<&str> {
    v.get("lot").and_then(Value::as_str)
}

/// Keeps only the records in the caller's lots.
fn in_scope(me: &Identity, v: &Value) -> bool {
    match (&me.grant.lots, lot_of(v)) {
        (None, _) => true,
        (Some(lots), Some(lot)) => lots.iter().any(|l| l.as_str() == lot),
        (Some(_), None) => false,
    }
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

async fn metrics(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Response> {
    require_all_lots(&me, Action::View)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.app.metrics.render(),
    )
        .into_response())
}

async fn dashboard() -> Response {
    let p = page("dashboard");
    p.respond(p.html.clone())
}

/// Stays, passages and (for those who may read it) the audit log.
async fn history_page() -> Response {
    let p = page("history");
    p.respond(p.html.clone())
}

async fn login_page() -> Response {
    let p = page("login");
    p.respond(p.html.clone())
}

async fn pay_page(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(session): Path<String>,
) -> ApiResult<Response> {
    public_page(&ctx, &ip, page("pay"), "{{SESSION}}", &session)
}

/// A page for drivers (no sign-in, limited per client address) with the id from its path put in
/// place of `placeholder`, reduced to what an id can hold so the page never echoes markup.
fn public_page(ctx: &Ctx, ip: &str, p: &Page, placeholder: &str, id: &str) -> ApiResult<Response> {
    ctx.public.hit(ip).map_err(ApiError::TooManyRequests)?;
    Ok(p.respond(p.html.replace(placeholder, &session_token(id))))
}

/// A paid stay's e-receipt (the driver's copy): what was charged, how, and what went back.
async fn receipt_page(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(session): Path<String>,
) -> ApiResult<Response> {
    public_page(&ctx, &ip, page("receipt"), "{{SESSION}}", &session)
}

/// The page a plateless car's driver opens from the code on a held lane's display.
async fn ticket_page(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(event): Path<String>,
) -> ApiResult<Response> {
    public_page(&ctx, &ip, page("ticket"), "{{EVENT}}", &event)
}

/// The page a merchant's validation code (a QR code on a receipt) leads to.
async fn validation_page(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    public_page(&ctx, &ip, page("validation"), "{{CODE}}", &code)
}

async fn ticket_passage(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(event): Path<String>,
) -> ApiResult<Json<crate::tickets::HeldPassage>> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    let eid = id(&event, "passage")?;
    Ok(Json(ctx.app.ticket_passage(eid).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeTicket {
    event_id: Uuid,
}

/// A plateless car's driver takes a ticket at a held entry: no sign-in (the car is at the
/// barrier, and the passage must be held for an unread plate and recent).
async fn take_ticket(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(b): Body<TakeTicket>,
) -> ApiResult<(StatusCode, Json<crate::tickets::Ticket>)> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    Ok((
        StatusCode::CREATED,
        Json(ctx.app.take_ticket(b.event_id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UseTicket {
    ticket: Text<64>,
    event_id: Uuid,
}

async fn leave_with_ticket(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(b): Body<UseTicket>,
) -> ApiResult<Json<parkpay_protocol::Decision>> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    Ok(Json(
        ctx.app.leave_with_ticket(&b.ticket.0, b.event_id).await?,
    ))
}

/// The client's address, or "unknown" where the server was not told it (tests that call the
/// router directly).
struct ConnectInfoOpt(String);

impl<S: Send + Sync> FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ConnectInfoOpt(client_ip(parts)))
    }
}

/// Keeps only what a session id can contain, so the page never echoes markup.
fn session_token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(36)
        .collect()
}

// ---- signing in ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: Text<64>,
    password: Text<256>,
}

fn me_json(me_name: &str, grant: &Grant, csrf: Option<&str>) -> Value {
    json!({ "username": me_name, "role": grant.role, "lots": grant.lots, "csrf": csrf })
}

async fn login(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(c): Body<Credentials>,
) -> ApiResult<Response> {
    let by_user = format!("user:{}", c.username.0);
    let by_ip = format!("ip:{ip}");
    ctx.logins
        .blocked(&by_user)
        .and(ctx.logins.blocked(&by_ip))
        .map_err(ApiError::TooManyRequests)?;
    let found = ctx.app.store.account_by_name(&c.username.0).await?;
    let stored = found
        .as_ref()
        .filter(|(a, _)| a.disabled_at.is_none())
        .map(|(_, h)| h.clone());
    let password = c.password.0.clone();
    let ok =
        tokio::task::spawn_blocking(move || auth::verify_password(&password, stored.as_deref()))
            .await
            .unwrap_or(false);
    let Some((account, _)) = found.filter(|_| ok) else {
        let _ = ctx.logins.hit(&by_user);
        let _ = ctx.logins.hit(&by_ip);
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    ctx.logins.clear(&by_user);
    let (login, token) = ctx.app.sign_in(&account, ctx.session_ttl).await?;
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ctx.session_ttl.num_seconds(),
        if ctx.app.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut r = Json(me_json(
        &account.username,
        &account.grant,
        Some(&login.csrf),
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn logout(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Response> {
    if let Via::Session { token_hash, .. } = &me.via {
        ctx.app.store.delete_login(token_hash).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("parkpay_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(r)
}

async fn me(me: Identity) -> Json<Value> {
    let csrf = match &me.via {
        Via::Session { csrf, .. } => Some(csrf.as_str()),
        Via::Token => None,
    };
    Json(me_json(&me.name, &me.grant, csrf))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    username: Text<64>,
    password: Text<256>,
    role: Role,
    #[serde(default)]
    lots: Option<Vec<LotId>>,
}

async fn create_account(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewAccount>,
) -> ApiResult<(StatusCode, Json<Account>)> {
    require_all_lots(&me, Action::ManageAccess)?;
    let a = ctx
        .app
        .create_account(
            &n.username.0,
            &n.password.0,
            Grant {
                role: n.role,
                lots: n.lots,
            },
            &me.name,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(a)))
}

async fn list_accounts(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Vec<Account>>> {
    require_all_lots(&me, Action::ManageAccess)?;
    Ok(Json(ctx.app.store.accounts().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: Text<64>,
    role: Role,
    #[serde(default)]
    lots: Option<Vec<LotId>>,
}

async fn create_token(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_all_lots(&me, Action::ManageAccess)?;
    let (t, secret) = ctx
        .app
        .create_token(
            &n.name.0,
            Grant {
                role: n.role,
                lots: n.lots,
            },
            &me.name,
        )
        .await?;
    let mut v = json!(t);
    v["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_tokens(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Vec<ApiToken>>> {
    require_all_lots(&me, Action::ManageAccess)?;
    Ok(Json(ctx.app.store.api_tokens().await?))
}

/// An audit row for a write the caller makes now.
fn audit_entry(ctx: &Ctx, me: &Identity, action: &str, subject: String) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        at: ctx.app.clock.now(),
        actor: me.name.clone(),
        action: action.to_string(),
        subject,
        detail: String::new(),
    }
}

/// Revokes an API token at once: its next request is refused.
async fn revoke_token(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<StatusCode> {
    require_all_lots(&me, Action::ManageAccess)?;
    let tid = id(&id_s, "token")?;
    let audit = audit_entry(&ctx, &me, "token.revoked", format!("token {tid}"));
    ctx.app.store.revoke_api_token(tid, &audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disables an account and ends its sign-ins at once.
async fn disable_account(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    require_all_lots(&me, Action::ManageAccess)?;
    param(&username, "username", 64)?;
    let audit = audit_entry(&ctx, &me, "account.disabled", format!("account {username}"));
    ctx.app.store.disable_account(&username, &audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- the driver's pay page ----------------------------------------------------------------

/// What the pay page shows about the one stay its QR code names: nothing about the driver.
async fn pay_view(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    let sid = id(&id_s, "session")?;
    let s = ctx
        .app
        .store
        .session(sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {sid}")))?;
    let charge = ctx.app.store.charge_for_session(sid).await?;
    let refunds = match &charge {
        Some(c) => ctx.app.store.refunds_of(c.id).await?,
        None => Vec::new(),
    };
    let lot = ctx.app.store.lot(&s.lot).await?;
    Ok(Json(json!({
        "id": s.id, "lot": s.lot, "plate": s.plate, "status": s.status,
        "lot_name": lot.as_ref().map(|l| l.name.clone()),
        "time_zone": lot.as_ref().map(|l| l.tariff.time_zone.to_string()),
        "entry_at": s.entry_at, "exit_at": s.exit_at, "fee": s.fee, "quote": s.quote,
        "charge": charge.map(|c| json!({
            "id": c.id, "amount": c.amount, "status": c.status, "method": c.method,
            "created_at": c.created_at, "settled_at": c.settled_at,
            "provider_txn": c.provider_txn, "refunded": c.refunded,
        })),
        "refunds": refunds.iter().map(|r| json!({
            "amount": r.amount, "status": r.status, "reason": r.reason,
            "created_at": r.created_at, "settled_at": r.settled_at,
        })).collect::<Vec<_>>(),
    })))
}

// ---- lots and lanes ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLot {
    id: String,
    name: Text<120>,
    #[serde(default)]
    capacity: i64,
    #[serde(default)]
    reserved_spaces: i64,
    tariff: Tariff,
    /// The lot's lanes: which gateway serves each, and which way cars pass.
    #[serde(default)]
    lanes: Vec<NewLane>,
}

fn lot_json(lot: &Lot, occupancy: Option<i64>) -> Value {
    json!({
        "id": lot.id, "name": lot.name, "capacity": lot.capacity,
        "reserved_spaces": lot.reserved_spaces, "tariff": lot.tariff,
        "tariff_version": lot.tariff_version, "created_at": lot.created_at, "occupancy": occupancy,
    })
}

async fn create_lot(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewLot>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = lot_id(n.id)?;
    require_on(&me, Action::Configure, &id)?;
    if n.capacity < 0 || !(0..=n.capacity.max(0)).contains(&n.reserved_spaces) {
        return Err(ApiError::Unprocessable(
            "capacity must be >= 0 (0: not counted) and reserved_spaces within 0..=capacity".into(),
        ));
    }
    let lot = Lot {
        id,
        name: n.name.0,
        capacity: n.capacity,
        reserved_spaces: n.reserved_spaces,
        tariff: n.tariff,
        tariff_version: 1,
        created_at: ctx.app.clock.now(),
    };
    let lot = ctx.app.create_lot(lot, n.lanes, &me.name).await?;
    Ok((StatusCode::CREATED, Json(lot_json(&lot, Some(0)))))
}

async fn list_lots(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Vec<Value>>> {
    require(&me, Action::View)?;
    Ok(Json(
        ctx.app
            .store
            .lots()
            .await?
            .iter()
            .filter(|l| me.grant.covers(&l.id))
            .map(|l| lot_json(l, None))
            .collect(),
    ))
}

async fn get_lot(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
) -> ApiResult<Json<Value>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::View, &lot)?;
    let lot = lot_or_404(&ctx, &lot).await?;
    let stats = ctx
        .app
        .store
        .lot_stats(&lot.id, today_start(&ctx, &lot))
        .await?;
    Ok(Json(lot_json(&lot, Some(stats.occupancy))))
}

async fn put_tariff(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
    Body(t): Body<Tariff>,
) -> ApiResult<Json<Value>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::Configure, &lot)?;
    let lot = ctx.app.put_tariff(&lot, t, &me.name).await?;
    Ok(Json(lot_json(&lot, None)))
}

#[derive(Deserialize)]
struct PreviewQuery {
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
    /// Price as this plate's stay: its lists (white, pass, visitor) and its class apply.
    plate: Option<String>,
    /// Price as this class (overrides the plate's).
    class: Option<String>,
}

/// Prices a stay under the lot's tariff. The stay is bounded ([`MAX_PREVIEW_DAYS`]) and the
/// pricing runs one preview at a time on a blocking thread, so previews cannot slow the lanes.
async fn preview(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
    Q(q): Q<PreviewQuery>,
) -> ApiResult<Json<tariff::Quote>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::View, &lot)?;
    let lot = lot_or_404(&ctx, &lot).await?;
    if q.exit - q.entry > chrono::Duration::days(MAX_PREVIEW_DAYS) {
        return Err(ApiError::Unprocessable(format!(
            "a preview prices at most {MAX_PREVIEW_DAYS} days"
        )));
    }
    let mut terms = tariff::Terms::default();
    if let Some(p) = &q.plate {
        param(p, "plate", 16)?;
        let plate = Plate::parse(p).map_err(|e| ApiError::Unprocessable(format!("plate: {e}")))?;
        let lists = ctx
            .app
            .store
            .lists_of_plate(plate.as_str(), &lot.id)
            .await?;
        let vehicle = ctx.app.store.vehicle(plate.as_str()).await?;
        let class = class_of(
            vehicle.as_ref().and_then(|v| v.class),
            plate.as_str(),
            vehicle.map(|v| v.colour),
        );
        terms = crate::decide::terms_for(&lists, &[], class, q.entry, q.exit);
    }
    if let Some(c) = &q.class {
        terms.class = Some(VehicleClass::parse(c).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown class {c:?}: small, large, new_energy or motorcycle"
            ))
        })?);
    }
    let _turn = ctx
        .previews
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || tariff::quote_with(&lot.tariff, q.entry, q.exit, &terms))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// The lot's configured lanes, each with what its gateway last reported.
async fn lanes(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
) -> ApiResult<Json<Value>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::View, &lot)?;
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
    me: Identity,
    Path(lot): Path<String>,
    Body(lane): Body<NewLane>,
) -> ApiResult<(StatusCode, Json<Lane>)> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::Configure, &lot)?;
    let lane = ctx.app.put_lane(&lot, lane, &me.name).await?;
    Ok((StatusCode::CREATED, Json(lane)))
}

async fn delete_lane(
    State(ctx): State<Ctx>,
    me: Identity,
    Path((lot, lane)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::Configure, &lot)?;
    let lane = LaneId::parse(lane).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    ctx.app.delete_lane(&lot, &lane, &me.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn gateways(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Value>> {
    require(&me, Action::View)?;
    let all: Vec<Value> = ctx
        .app
        .live
        .gateways()
        .into_iter()
        .map(|g| json!(g))
        .filter(|g| in_scope(&me, g))
        .collect();
    Ok(Json(json!(all)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenLane {
    reason: Text<200>,
}

async fn open_lane(
    State(ctx): State<Ctx>,
    me: Identity,
    Path((lot, lane, action)): Path<(String, String, String)>,
    Body(b): Body<OpenLane>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::OperateLanes, &lot)?;
    let lane = LaneId::parse(lane).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let command_id = match action.as_str() {
        "open" => {
            ctx.app
                .open_lane(&lot, &lane, &b.reason.0, &me.name)
                .await?
        }
        "close" => {
            ctx.app
                .close_lane(&lot, &lane, &b.reason.0, &me.name)
                .await?
        }
        _ => return Err(ApiError::NotFound("no such route".into())),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "command_id": command_id })),
    ))
}

// ---- drivers ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDriver {
    name: Text<120>,
    #[serde(default)]
    phone: Option<Text<32>>,
}

/// Records who made a change that has no use case of its own.
/// How many times an audit entry is written when the database fails in a way that passes.
const AUDIT_TRIES: u32 = 3;

/// Records an operator's change, after the change itself committed. A passing database fault
/// (a connection cut) is tried again on a fresh connection, so a change that was made is not
/// answered as failed because its audit entry lost its connection; the entry's id makes a
/// repeated write land once.
async fn audit_write(ctx: &Ctx, me: &Identity, action: &str, subject: String) -> ApiResult<()> {
    let entry = audit_entry(ctx, me, action, subject);
    let mut tries = 0;
    loop {
        tries += 1;
        match ctx.app.store.insert_audit(&entry).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && tries < AUDIT_TRIES => {
                tracing::info!(error = %e, tries, "an audit entry's write failed; trying again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn create_driver(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewDriver>,
) -> ApiResult<(StatusCode, Json<Driver>)> {
    require_all_lots(&me, Action::ManageDrivers)?;
    let d = Driver {
        id: Uuid::now_v7(),
        name: n.name.0,
        phone: n.phone.map(|p| p.0),
        created_at: ctx.app.clock.now(),
    };
    ctx.app.store.insert_driver(&d).await?;
    audit_write(&ctx, &me, "driver.created", format!("driver {}", d.id)).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

async fn driver_or_404(ctx: &Ctx, id: Uuid) -> ApiResult<Driver> {
    ctx.app
        .store
        .driver(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("driver {id}")))
}

async fn get_driver(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    require_all_lots(&me, Action::SeeDrivers)?;
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
    plate: Text<16>,
    #[serde(default)]
    colour: Option<PlateColour>,
    /// The registered class; left out, the plate says (docs/tariffs.md).
    #[serde(default)]
    class: Option<VehicleClass>,
}

async fn add_vehicle(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(n): Body<NewVehicle>,
) -> ApiResult<(StatusCode, Json<Vehicle>)> {
    require_all_lots(&me, Action::ManageDrivers)?;
    let driver = driver_or_404(&ctx, id(&id_s, "driver")?).await?;
    let plate = Plate::parse(&n.plate.0).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let v = Vehicle {
        plate: plate.as_str().to_string(),
        colour: n.colour.unwrap_or_default(),
        driver_id: driver.id,
        class: n.class,
        locked_at: None,
        created_at: ctx.app.clock.now(),
    };
    match ctx.app.store.insert_vehicle(&v, &plate.match_key()).await {
        Ok(()) => {}
        // The same request again (its first answer was lost): the plate is this driver's
        // already, and saying so is the answer.
        Err(StoreError::Duplicate(why)) => {
            return match ctx.app.store.vehicle(&v.plate).await? {
                Some(bound) if bound.driver_id == driver.id => Ok((StatusCode::OK, Json(bound))),
                _ => Err(ApiError::Conflict(why)),
            };
        }
        Err(e) => return Err(e.into()),
    }
    audit_write(&ctx, &me, "vehicle.added", format!("driver {}", driver.id)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMandate {
    provider: Text<32>,
    provider_ref: Text<128>,
    #[serde(default)]
    per_charge_cap: Option<Money>,
    #[serde(default)]
    monthly_cap: Option<Money>,
    #[serde(default)]
    channel: Option<Text<32>>,
}

async fn add_mandate(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(n): Body<NewMandate>,
) -> ApiResult<(StatusCode, Json<Mandate>)> {
    require_all_lots(&me, Action::ManageDrivers)?;
    let driver = driver_or_404(&ctx, id(&id_s, "driver")?).await?;
    let (provider, provider_ref, channel) =
        (n.provider.0, n.provider_ref.0, n.channel.map(|c| c.0));
    let deducts_with = ctx.app.provider.name();
    if provider != deducts_with {
        return Err(ApiError::Unprocessable(format!(
            "provider {provider:?} is not available; this server deducts through \"{deducts_with}\""
        )));
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
        provider,
        provider_ref,
        // The sandbox signs at once; a real provider answers asynchronously.
        status: MandateStatus::Active,
        per_charge_cap: n.per_charge_cap,
        monthly_cap: n.monthly_cap,
        channel: channel.unwrap_or_else(|| "api".into()),
        signed_at: now,
        revoked_at: None,
    };
    ctx.app.store.insert_mandate(&m).await?;
    audit_write(&ctx, &me, "mandate.added", format!("mandate {}", m.id)).await?;
    ctx.app.allowlists_due.notify_one();
    Ok((StatusCode::CREATED, Json(m)))
}

async fn revoke_mandate(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Mandate>> {
    require_all_lots(&me, Action::ManageDrivers)?;
    let mid = id(&id_s, "mandate")?;
    let m = ctx.app.revoke_mandate(mid).await?;
    audit_write(&ctx, &me, "mandate.revoked", format!("mandate {mid}")).await?;
    Ok(Json(m))
}

/// `POST /api/vehicles/{plate}/lock` and `/unlock`.
async fn lock_vehicle(
    State(ctx): State<Ctx>,
    me: Identity,
    Path((plate, action)): Path<(String, String)>,
) -> ApiResult<Json<Vehicle>> {
    let lock = match action.as_str() {
        "lock" => true,
        "unlock" => false,
        _ => return Err(ApiError::NotFound("no such route".into())),
    };
    require_all_lots(&me, Action::ManageDrivers)?;
    param(&plate, "plate", 16)?;
    Ok(Json(ctx.app.lock_vehicle(&plate, lock, &me.name).await?))
}

// ---- plate lists and spaces -------------------------------------------------------------

async fn add_list_entry(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewListEntry>,
) -> ApiResult<(StatusCode, Json<ListEntry>)> {
    match &n.lot {
        Some(lot) => require_on(&me, Action::ManageLists, lot)?,
        None => require_all_lots(&me, Action::ManageLists)?,
    }
    let e = ctx.app.add_list_entry(n, &me.name).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

#[derive(Deserialize)]
struct PlateListQuery {
    kind: Option<String>,
    lot: Option<String>,
    plate: Option<String>,
    /// `true`: only entries in force or still to come (not revoked, not ended).
    current: Option<bool>,
    limit: Option<i64>,
}

async fn list_entries(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<PlateListQuery>,
) -> ApiResult<Json<Vec<ListEntry>>> {
    require(&me, Action::View)?;
    let kind = q
        .kind
        .map(|k| {
            ListKind::parse(&k).ok_or_else(|| {
                ApiError::BadRequest(format!("unknown list {k:?}: white, black, pass or visitor"))
            })
        })
        .transpose()?;
    let lot = q.lot.map(lot_id).transpose()?;
    if let Some(lot) = &lot {
        require_on(&me, Action::View, lot)?;
    }
    let plate = q.plate.map(plate_query).transpose()?;
    let f = ListFilter {
        kind,
        lot,
        plate,
        current_at: q.current.unwrap_or(false).then(|| ctx.app.clock.now()),
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    Ok(Json(
        ctx.app
            .list_entries(&f)
            .await?
            .into_iter()
            .filter(|e| e.lot.as_ref().is_none_or(|l| me.grant.covers(l)))
            .collect(),
    ))
}

async fn revoke_list_entry(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<ListEntry>> {
    let eid = id(&id_s, "list entry")?;
    let e = ctx
        .app
        .store
        .list_entry(eid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("list entry {eid}")))?;
    match &e.lot {
        Some(lot) => require_on(&me, Action::ManageLists, lot)?,
        None => require_all_lots(&me, Action::ManageLists)?,
    }
    Ok(Json(ctx.app.revoke_list_entry(eid, &me.name).await?))
}

/// The driver app's backend buys (or renews) a pass for a driver's plate: `201` for a new
/// purchase, `200` for a repeat of one already made under the same `purchase_id`.
async fn buy_pass(
    State(ctx): State<Ctx>,
    me: Identity,
    Body(n): Body<NewPurchase>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_all_lots(&me, Action::ManageDrivers)?;
    let (purchase, pass, replay) = ctx.app.buy_pass(n, &me.name).await?;
    let status = if replay {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({ "purchase": without_driver(json!(purchase), &me), "pass": pass })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spaces {
    capacity: i64,
    #[serde(default)]
    reserved_spaces: i64,
}

async fn put_spaces(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
    Body(n): Body<Spaces>,
) -> ApiResult<Json<Value>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::Configure, &lot)?;
    let l = ctx
        .app
        .set_spaces(&lot, n.capacity, n.reserved_spaces, &me.name)
        .await?;
    let occupancy = ctx.app.store.occupancy(&lot).await?;
    Ok(Json(lot_json(&l, Some(occupancy))))
}

// ---- merchant validations ----------------------------------------------------------------

async fn create_merchant(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
    Body(n): Body<NewMerchant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::Configure, &lot)?;
    let (m, key) = ctx.app.create_merchant(&lot, n, &me.name).await?;
    let mut v = json!(m);
    v["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_merchants(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
) -> ApiResult<Json<Vec<Merchant>>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::View, &lot)?;
    Ok(Json(ctx.app.store.merchants(&lot).await?))
}

async fn disable_merchant(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<StatusCode> {
    let mid = id(&id_s, "merchant")?;
    let m = ctx
        .app
        .store
        .merchant(mid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("merchant {mid}")))?;
    require_on(&me, Action::Configure, &m.lot)?;
    let audit = AuditEntry {
        id: Uuid::now_v7(),
        at: ctx.app.clock.now(),
        actor: me.name.clone(),
        action: "merchant.disabled".into(),
        subject: format!("merchant {mid} ({})", m.name),
        detail: String::new(),
    };
    ctx.app
        .store
        .disable_merchant(mid, ctx.app.clock.now(), &audit)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A merchant, by the key it was given (`Authorization: Bearer pmk_...`).
struct MerchantKey(Merchant);

impl FromRequestParts<Ctx> for MerchantKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| k.starts_with("pmk_"))
            .ok_or_else(|| {
                ApiError::Unauthorized("use Authorization: Bearer <merchant key>".into())
            })?;
        ctx.app
            .merchant_by_key(key)
            .await?
            .map(MerchantKey)
            .ok_or_else(|| ApiError::Unauthorized("unknown or disabled merchant key".into()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlateBody {
    plate: Text<16>,
}

async fn validate_plate(
    State(ctx): State<Ctx>,
    MerchantKey(m): MerchantKey,
    Body(b): Body<PlateBody>,
) -> ApiResult<(StatusCode, Json<Validation>)> {
    let v = ctx.app.validate_plate(&m, &b.plate.0).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn validation_code(
    State(ctx): State<Ctx>,
    MerchantKey(m): MerchantKey,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v = ctx.app.validation_code(&m).await?;
    let url = format!(
        "{}/v/{}",
        ctx.app.settings.public_url.trim_end_matches('/'),
        v.code.as_deref().unwrap_or_default()
    );
    let mut body = json!(v);
    body["url"] = json!(url);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn my_validations(
    State(ctx): State<Ctx>,
    MerchantKey(m): MerchantKey,
) -> ApiResult<Json<Vec<Validation>>> {
    Ok(Json(ctx.app.store.validations(m.id, 500).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    code: Text<64>,
    plate: Text<16>,
}

/// A driver claims a validation code for their parked car: no sign-in, the code is the secret.
async fn claim_validation(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(b): Body<ClaimBody>,
) -> ApiResult<Json<Validation>> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    Ok(Json(ctx.app.claim_validation(&b.code.0, &b.plate.0).await?))
}

// ---- sessions, charges ------------------------------------------------------------------

#[derive(Deserialize)]
struct SessionQuery {
    lot: Option<String>,
    plate: Option<String>,
    /// A plate as someone remembers or misreads it: stays whose plate folds alike.
    search: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

/// An exception an operator may handle: it exists and lies in a lot of theirs.
async fn exception_to_handle(ctx: &Ctx, me: &Identity, id_s: &str) -> ApiResult<ExceptionRecord> {
    let xid = id(id_s, "exception")?;
    let x = ctx
        .app
        .store
        .exception(xid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("exception {xid}")))?;
    require_on(me, Action::CorrectPlates, &x.lot)?;
    Ok(x)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DismissBody {
    reason: Text<500>,
}

/// An operator closes an exception that needs nothing more (a car that turned back, a test
/// at the lane), with a reason; audited. Debts are not dismissed: they are paid, waived or
/// retried at the money desk.
async fn dismiss_exception(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<DismissBody>,
) -> ApiResult<Json<Value>> {
    let x = exception_to_handle(&ctx, &me, &id_s).await?;
    let xid = x.id;
    if x.kind == ExceptionKind::ChargeFailed {
        return Err(ApiError::Conflict(
            "a debt is settled at the money desk (pay, waive or retry), not dismissed".into(),
        ));
    }
    let now = ctx.app.clock.now();
    ctx.app
        .store
        .resolve_exception(
            xid,
            &format!("dismissed by {}: {}", me.name, b.reason.0),
            now,
        )
        .await?;
    audit_write(
        &ctx,
        &me,
        "exception.dismissed",
        format!("exception {xid}: {}", b.reason.0),
    )
    .await?;
    let x = ctx.app.store.exception(xid).await?;
    Ok(Json(json!(x)))
}

async fn list_sessions(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<SessionQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    require(&me, Action::View)?;
    let status = q
        .status
        .map(|s| {
            SessionStatus::parse(&s)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown session status {s:?}")))
        })
        .transpose()?;
    let plate = q.plate.map(plate_query).transpose()?;
    let lot = q.lot.map(lot_id).transpose()?;
    if let Some(lot) = &lot {
        require_on(&me, Action::View, lot)?;
    }
    let key = match q.search {
        Some(text) => {
            param(&text, "search", 16)?;
            let key = parkpay_protocol::plate::match_key(&text.to_uppercase());
            if key.is_empty() {
                return Err(ApiError::Unprocessable(
                    "search: give some letters or digits of the plate".into(),
                ));
            }
            Some(key)
        }
        None => None,
    };
    let f = SessionFilter {
        lot,
        plate,
        key,
        status,
        limit: q.limit.unwrap_or(100).clamp(1, 100_000),
    };
    Ok(Json(
        ctx.app
            .store
            .sessions(&f)
            .await?
            .into_iter()
            .map(|s| without_driver(json!(s), &me))
            .filter(|v| in_scope(&me, v))
            .collect(),
    ))
}

async fn get_session(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    require(&me, Action::View)?;
    let sid = id(&id_s, "session")?;
    let s = ctx
        .app
        .store
        .session(sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {sid}")))?;
    require_on(&me, Action::View, &s.lot)?;
    let charge = ctx.app.store.charge_for_session(sid).await?;
    let mut v = json!(s);
    v["charge"] = json!(charge);
    // The stay as the payment provider knows it (WeChat Pay's parking entry), if it does.
    v["provider_parking"] = json!(ctx.app.store.provider_parking(sid).await?);
    Ok(Json(without_driver(v, &me)))
}

/// What the cashier took: it must be the amount due, so a stale screen cannot settle a
/// different fee.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CashBody {
    amount: Money,
}

async fn take_cash(ctx: &Ctx, me: &Identity, charge: Charge, amount: Money) -> ApiResult<Charge> {
    require_on(me, Action::TakeCash, &charge.lot)?;
    if amount != charge.amount {
        return Err(ApiError::Conflict(format!(
            "{} is due, not {amount}",
            charge.amount
        )));
    }
    Ok(ctx
        .app
        .pay_charge(charge.id, ChargeMethod::Cash, &me.name)
        .await?)
}

/// A cashier takes the fee of a car held at the exit in cash: the charge settles and the
/// barrier opens. Audited under the cashier's identity.
async fn cash_for_session(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<CashBody>,
) -> ApiResult<Json<Charge>> {
    require(&me, Action::TakeCash)?;
    let sid = id(&id_s, "session")?;
    let charge = ctx
        .app
        .store
        .charge_for_session(sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge for session {sid}")))?;
    Ok(Json(take_cash(&ctx, &me, charge, b.amount).await?))
}

/// A cashier takes a payable charge (arrears, or a fee held at the exit) in cash.
async fn cash_for_charge(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(b): Body<CashBody>,
) -> ApiResult<Json<Charge>> {
    require(&me, Action::TakeCash)?;
    let cid = id(&id_s, "charge")?;
    let charge = ctx
        .app
        .store
        .charge(cid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge {cid}")))?;
    Ok(Json(take_cash(&ctx, &me, charge, b.amount).await?))
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
    me: Identity,
    Q(q): Q<ChargeQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    require(&me, Action::View)?;
    if q.driver.is_some() {
        require(&me, Action::SeeDrivers)?;
    }
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
    Ok(Json(
        ctx.app
            .store
            .charges(&f)
            .await?
            .into_iter()
            .map(|c| without_driver(json!(c), &me))
            .filter(|v| in_scope(&me, v))
            .collect(),
    ))
}

async fn get_charge(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    require(&me, Action::View)?;
    let cid = id(&id_s, "charge")?;
    let c = ctx
        .app
        .store
        .charge(cid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge {cid}")))?;
    require_on(&me, Action::View, &c.lot)?;
    let mut v = json!(c);
    v["history"] = json!(ctx.app.store.charge_attempts(cid).await?);
    Ok(Json(without_driver(v, &me)))
}

// ---- operations -------------------------------------------------------------------------

#[derive(Deserialize)]
struct ListQuery {
    lot: Option<String>,
    open: Option<bool>,
    limit: Option<i64>,
    /// Exceptions: only those assigned to the caller.
    #[serde(default)]
    mine: bool,
}

async fn exceptions(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    require(&me, Action::View)?;
    let lot = q.lot.map(lot_id).transpose()?;
    if let Some(lot) = &lot {
        require_on(&me, Action::View, lot)?;
    }
    let (open, limit) = (
        q.open.unwrap_or(false),
        q.limit.unwrap_or(100).clamp(1, 100_000),
    );
    let list = if q.mine {
        ctx.app
            .store
            .exceptions_assigned_to(&me.name, lot.as_ref(), open, limit)
            .await?
    } else {
        ctx.app.store.exceptions(lot.as_ref(), open, limit).await?
    };
    let list = list
        .into_iter()
        .map(|x| without_driver(json!(x), &me))
        .filter(|v| in_scope(&me, v))
        .collect();
    Ok(Json(evidence::annotate(&ctx, list).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Correction {
    plate: Text<16>,
    /// For an exit held as `no_entry`: the open session (one of the look-alikes the exception
    /// names) that this car, whose entry was misread, really belongs to.
    #[serde(default)]
    session: Option<Uuid>,
    /// Only say what the correction would do; change nothing.
    #[serde(default)]
    preview: bool,
    /// The operator checked the plate against the picture: a correction that settles nothing
    /// (or whose plate fits no national layout) goes ahead anyway.
    #[serde(default)]
    confirmed: bool,
}

/// An attendant reads the plate off the evidence of a held passage. The corrected passage may
/// charge a mandate, so this needs the operator role on the exception's lot.
async fn correct_plate(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(id_s): Path<String>,
    Body(c): Body<Correction>,
) -> ApiResult<Json<Value>> {
    require(&me, Action::CorrectPlates)?;
    let xid = exception_to_handle(&ctx, &me, &id_s).await?.id;
    if c.preview {
        let v = ctx
            .app
            .preview_correction(xid, &c.plate.0, c.session)
            .await?;
        return Ok(Json(without_driver(v, &me)));
    }
    Ok(Json(json!(
        ctx.app
            .correct_plate(xid, &c.plate.0, c.session, c.confirmed, &me.name)
            .await?
    )))
}

async fn audit(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    require_all_lots(&me, Action::ReadAudit)?;
    Ok(Json(
        ctx.app
            .store
            .audit(q.limit.unwrap_or(100).clamp(1, 100_000))
            .await?,
    ))
}

async fn dead_letters(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    require_all_lots(&me, Action::ReadAudit)?;
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

async fn stats(State(ctx): State<Ctx>, me: Identity) -> ApiResult<Json<Value>> {
    require(&me, Action::View)?;
    let mut lots = Vec::new();
    for lot in ctx.app.store.lots().await? {
        if !me.grant.covers(&lot.id) {
            continue;
        }
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
    let gateways: Vec<Value> = ctx
        .app
        .live
        .gateways()
        .into_iter()
        .map(|g| json!(g))
        .filter(|g| in_scope(&me, g))
        .collect();
    Ok(Json(
        json!({ "now": ctx.app.clock.now(), "lots": lots, "gateways": gateways }),
    ))
}

/// The live stream, limited to the caller's lots and without driver identifiers for those who
/// may not see drivers.
async fn stream(
    State(ctx): State<Ctx>,
    me: Identity,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    require(&me, Action::View)?;
    let events = BroadcastStream::new(ctx.app.live.subscribe()).filter_map(move |e| {
        // A lagging dashboard skips what it missed; the next stats poll catches it up.
        let e = e.ok()?;
        if !in_scope(&me, &e.data) {
            return None;
        }
        let data = without_driver(e.data, &me);
        Some(Ok(Event::default().event(e.kind).data(data.to_string())))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// ---- sandbox provider -------------------------------------------------------------------
//
// These calls stand for the payment provider's side (its notification that a driver paid, its
// wallets). They exist only when the sandbox is the configured provider with its own secret,
// and require that secret as a bearer token: no operator account or token opens them.

fn sandbox(ctx: &Ctx, headers: &HeaderMap) -> ApiResult<()> {
    let Some(secret) = &ctx.app.settings.sandbox_secret else {
        return Err(ApiError::NotFound("no such route".into()));
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if auth::same_secret(sent.trim(), secret) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the sandbox provider's secret is required".into(),
        ))
    }
}

/// The sandbox provider reports that the driver paid a charge (by QR, in the provider's app):
/// the only way, besides a cashier, that a fee held at the exit is settled.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settle {
    #[serde(default)]
    session: Option<Uuid>,
    #[serde(default)]
    charge: Option<Uuid>,
    amount: Money,
}

async fn sandbox_settle(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Body(b): Body<Settle>,
) -> ApiResult<Json<Charge>> {
    sandbox(&ctx, &headers)?;
    let charge = match (b.charge, b.session) {
        (Some(c), None) => ctx.app.store.charge(c).await?,
        (None, Some(s)) => ctx.app.store.charge_for_session(s).await?,
        _ => {
            return Err(ApiError::Unprocessable(
                "name exactly one of charge or session".into(),
            ))
        }
    }
    .ok_or_else(|| ApiError::NotFound("no such charge".into()))?;
    if b.amount != charge.amount {
        return Err(ApiError::Conflict(format!(
            "{} is due, not {}",
            charge.amount, b.amount
        )));
    }
    Ok(Json(
        ctx.app
            .pay_charge(charge.id, ChargeMethod::Qr, "provider:sandbox")
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWallet {
    reference: Text<128>,
    balance: Money,
    #[serde(default)]
    fail_next: i64,
}

async fn put_wallet(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Body(n): Body<NewWallet>,
) -> ApiResult<(StatusCode, Json<Wallet>)> {
    sandbox(&ctx, &headers)?;
    if n.balance.minor < 0 || n.fail_next < 0 {
        return Err(ApiError::Unprocessable(
            "balance and fail_next must not be negative".into(),
        ));
    }
    let w = Wallet {
        reference: n.reference.0,
        balance: n.balance,
        fail_next: n.fail_next,
    };
    ctx.app.store.put_wallet(&w, ctx.app.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(w)))
}

async fn get_wallet(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> ApiResult<Json<Wallet>> {
    sandbox(&ctx, &headers)?;
    param(&reference, "reference", 128)?;
    ctx.app
        .store
        .wallet(&reference)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("wallet {reference}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("a small body");
        (status, retry, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn a_passing_database_fault_is_503_with_retry_after() {
        let e = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        let (status, retry, body) = answer(e).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["error"], "unavailable");
        let e = ApiError::from(StoreError::Database(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))));
        assert_eq!(answer(e).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_lasting_database_fault_is_500_and_names_no_detail() {
        let e = ApiError::from(StoreError::Corrupt("currency \"XYZ\"".into()));
        let (status, retry, body) = answer(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry, None);
        assert_eq!(body["error"], "internal");
        assert!(!body.to_string().contains("XYZ"), "{body}");
    }
}
