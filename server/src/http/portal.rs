//! The driver portal's routes: signing in by phone and one-time code, the signed-in driver's
//! own plates, mandates, stays and debts, and the public look-up of a plate's open stay.
//!
//! A driver's sign-in is the `parkpay_driver` cookie, checked against `driver_logins`; it is
//! never an operator's [`crate::auth::Identity`], so no operator route accepts it, and no
//! portal route accepts an operator's. Paying goes the pay page's way: the driver pays in the
//! payment app, the provider tells the server, and [`crate::app::App::pay_charge`] settles
//! the charge (opening the barrier for a car held at the exit); the portal follows the stay
//! through `/api/pay/{session}` as the pay page does.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use parkpay_protocol::{Money, Plate};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{cookie, id, page, param, ApiError, ApiResult, Body, ConnectInfoOpt, Ctx, Text, Q};
use crate::auth::{same_secret, token_hash};
use crate::domain::*;
use crate::portal::{driver_actor, DriverLogin, Phone, StayView};
use crate::store::{ChargeFilter, SessionFilter};

/// The driver's sign-in cookie: apart from the operators' `parkpay_session`.
const DRIVER_COOKIE: &str = "parkpay_driver";

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/me", get(portal_page))
        .route("/find", get(find_page))
        .route("/api/find", get(find))
        .route("/api/portal/code", post(send_code))
        .route("/api/portal/login", post(login))
        .route("/api/portal/logout", post(logout))
        .route("/api/portal/me", get(overview))
        .route("/api/portal/stays/{session}", get(stay))
}

async fn portal_page() -> Response {
    let p = page("portal");
    p.respond(p.html.clone())
}

async fn find_page(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
) -> ApiResult<Response> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    let p = page("find");
    Ok(p.respond(p.html.clone()))
}

/// A signed-in driver: their sign-in and the driver records registered with its phone.
pub(super) struct DriverSession {
    login: DriverLogin,
    drivers: Vec<Driver>,
}

impl DriverSession {
    fn actor(&self) -> String {
        driver_actor(&self.drivers)
    }

    fn owns(&self, driver: Option<Uuid>) -> bool {
        driver.is_some_and(|d| self.drivers.iter().any(|x| x.id == d))
    }
}

impl FromRequestParts<Ctx> for DriverSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let Some(token) = cookie(&parts.headers, DRIVER_COOKIE) else {
            return Err(ApiError::Unauthorized(
                "sign in with your phone number first".into(),
            ));
        };
        let login = ctx
            .app
            .store
            .driver_login(&token_hash(token), ctx.app.clock.now())
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the session has ended; sign in again".into()))?;
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(sent, &login.csrf) {
                return Err(ApiError::Forbidden(
                    "missing or wrong X-CSRF-Token header".into(),
                ));
            }
        }
        let drivers = ctx.app.store.drivers_with_phone(&login.phone).await?;
        if drivers.is_empty() {
            // The number was taken off every driver record since signing in.
            return Err(ApiError::Unauthorized(
                "no driver is registered with this number any more".into(),
            ));
        }
        Ok(DriverSession { login, drivers })
    }
}

fn phone(raw: &str) -> ApiResult<Phone> {
    Phone::parse(raw).map_err(ApiError::Unprocessable)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    phone: Text<32>,
}

/// Sends a sign-in code. The answer is the same whether or not the number is registered.
async fn send_code(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(b): Body<CodeRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let phone = phone(&b.phone.0)?;
    ctx.app
        .portal
        .per_address
        .hit(&ip)
        .map_err(ApiError::TooManyRequests)?;
    ctx.app
        .request_portal_code(&phone)
        .await?
        .map_err(|w| ApiError::TooManyRequests(w.0))?;
    let p = &ctx.app.portal;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": "if this number is registered, a code is on its way",
            "phone": phone.masked(),
            "valid_secs": p.code_ttl.num_seconds(),
            "resend_after_secs": p.resend_after.num_seconds(),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeLogin {
    phone: Text<32>,
    code: Text<16>,
}

async fn login(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Body(b): Body<CodeLogin>,
) -> ApiResult<Response> {
    let phone = phone(&b.phone.0)?;
    ctx.app
        .portal
        .tries_per_address
        .hit(&ip)
        .map_err(ApiError::TooManyRequests)?;
    let code = b.code.0.trim();
    if code.len() != 6 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::Unprocessable("code: 6 digits".into()));
    }
    let Some((login, token, drivers)) = ctx.app.verify_portal_code(&phone, code).await? else {
        return Err(ApiError::Unauthorized(
            "wrong or expired code; ask for a new one".into(),
        ));
    };
    let ttl = ctx.app.portal.session_ttl;
    let cookie = format!(
        "{DRIVER_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.num_seconds(),
        if ctx.app.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut r = Json(json!({
        "phone": phone.masked(),
        "csrf": login.csrf,
        "expires_at": login.expires_at,
        "drivers": drivers.len(),
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn logout(State(ctx): State<Ctx>, me: DriverSession) -> ApiResult<Response> {
    ctx.app
        .sign_out_driver(&me.login.token_hash, &me.actor())
        .await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("parkpay_driver=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(r)
}

fn charge_json(c: &Charge) -> Value {
    json!({
        "id": c.id, "amount": c.amount, "status": c.status,
        "created_at": c.created_at, "settled_at": c.settled_at, "refunded": c.refunded,
    })
}

fn stay_json(v: &StayView) -> Value {
    let s = &v.session;
    let payable = v.charge.as_ref().is_some_and(|c| c.status.is_payable());
    json!({
        "id": s.id, "lot": s.lot, "lot_name": v.lot_name, "time_zone": v.time_zone,
        "plate": s.plate, "status": s.status, "entry_at": s.entry_at, "exit_at": s.exit_at,
        "fee_due": v.fee_due,
        "charge": v.charge.as_ref().map(charge_json),
        "payable": payable,
        "pay_url": format!("/pay/{}", s.id),
        "receipt_url": (s.status == SessionStatus::Closed).then(|| format!("/receipt/{}", s.id)),
    })
}

/// The start of this calendar month in China Standard Time (mandates' monthly caps are kept
/// by calendar month).
fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let cst = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    let local = now.with_timezone(&cst);
    cst.with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}

/// How many past stays the portal lists per plate.
const PAST_PER_PLATE: i64 = 20;

/// Everything the signed-in driver's page shows: plates, mandates, current and past stays,
/// debts with their total.
async fn overview(State(ctx): State<Ctx>, me: DriverSession) -> ApiResult<Json<Value>> {
    let now = ctx.app.clock.now();
    let mut plates = Vec::new();
    let mut mandates = Vec::new();
    let mut debts = Vec::new();
    let mut debt_total: Option<Money> = None;
    let mut current = Vec::new();
    let mut past = Vec::new();
    for d in &me.drivers {
        for v in ctx.app.store.vehicles_of(d.id).await? {
            plates.push(json!({
                "plate": v.plate, "colour": v.colour, "locked": v.locked_at.is_some(),
            }));
            let sessions = ctx
                .app
                .store
                .sessions(&SessionFilter {
                    plate: Some(v.plate.clone()),
                    limit: PAST_PER_PLATE + 5,
                    ..Default::default()
                })
                .await?;
            for s in sessions.into_iter().filter(|s| s.plate == v.plate) {
                match s.status {
                    SessionStatus::Open | SessionStatus::AwaitingPayment => {
                        current.push(stay_json(&ctx.app.stay_view(s).await?));
                    }
                    // A past stay is the driver's only if it was charged to them: the plate
                    // may have been someone else's before.
                    SessionStatus::Closed if me.owns(s.driver_id) => {
                        past.push(stay_json(&ctx.app.stay_view(s).await?));
                    }
                    SessionStatus::Closed | SessionStatus::Exception => {}
                }
            }
        }
        let (facts, _) = ctx.app.store.payer_facts(d.id, month_start(now)).await?;
        for (m, spent) in facts {
            mandates.push(json!({
                "id": m.id, "provider": m.provider, "channel": m.channel, "status": m.status,
                "per_charge_cap": m.per_charge_cap, "monthly_cap": m.monthly_cap,
                "spent_this_month": m.monthly_cap.map(|c| Money { minor: spent, currency: c.currency })
                    .unwrap_or_else(|| Money::cny(spent)),
                "signed_at": m.signed_at, "revoked_at": m.revoked_at,
            }));
        }
        let owed = ctx
            .app
            .store
            .charges(&ChargeFilter {
                status: Some(ChargeStatus::Arrears),
                driver: Some(d.id),
                limit: 200,
                ..Default::default()
            })
            .await?;
        for c in owed {
            let s = ctx.app.store.session(c.session_id).await?;
            let lot = ctx.app.store.lot(&c.lot).await?;
            debt_total = Some(match debt_total {
                Some(t) if t.currency == c.amount.currency => Money {
                    minor: t.minor.saturating_add(c.amount.minor),
                    currency: t.currency,
                },
                Some(t) => t,
                None => c.amount,
            });
            debts.push(json!({
                "charge": c.id, "session": c.session_id, "lot": c.lot,
                "lot_name": lot.as_ref().map(|l| l.name.clone()),
                "time_zone": lot.as_ref().map(|l| l.tariff.time_zone.to_string()),
                "plate": s.as_ref().map(|s| s.plate.clone()),
                "entry_at": s.as_ref().map(|s| s.entry_at),
                "exit_at": s.as_ref().and_then(|s| s.exit_at),
                "amount": c.amount, "since": c.updated_at,
                "pay_url": format!("/pay/{}", c.session_id),
            }));
        }
    }
    let newest_first = |a: &Value, b: &Value| b["entry_at"].as_str().cmp(&a["entry_at"].as_str());
    current.sort_by(newest_first);
    past.sort_by(newest_first);
    past.truncate(PAST_PER_PLATE as usize);
    let phone = Phone::parse(&me.login.phone).map(|p| p.masked());
    Ok(Json(json!({
        "phone": phone.unwrap_or_default(),
        "csrf": me.login.csrf,
        "expires_at": me.login.expires_at,
        "plates": plates,
        "mandates": mandates,
        "current": current,
        "past": past,
        "debts": debts,
        "debt_total": debt_total.unwrap_or(Money::cny(0)),
    })))
}

/// One stay of the signed-in driver: 404 for anyone else's (not even whether it exists).
async fn stay(
    State(ctx): State<Ctx>,
    me: DriverSession,
    Path(id_s): Path<String>,
) -> ApiResult<Json<Value>> {
    let sid = id(&id_s, "session")?;
    let not_found = || ApiError::NotFound(format!("session {sid}"));
    let s = ctx.app.store.session(sid).await?.ok_or_else(not_found)?;
    // Charged to them, or a current stay of one of their plates (as the overview lists it).
    let mut mine = me.owns(s.driver_id);
    if !mine
        && matches!(
            s.status,
            SessionStatus::Open | SessionStatus::AwaitingPayment
        )
    {
        for d in &me.drivers {
            let plates = ctx.app.store.vehicles_of(d.id).await?;
            mine |= plates.iter().any(|v| v.plate == s.plate);
        }
    }
    if !mine {
        return Err(not_found());
    }
    Ok(Json(stay_json(&ctx.app.stay_view(s).await?)))
}

#[derive(Deserialize)]
struct FindQuery {
    plate: Option<String>,
}

/// The open stays of exactly this plate: lot, entry time, fee due and the pay page. Nothing
/// about the driver and nothing past; a plate that differs by one character finds nothing.
async fn find(
    State(ctx): State<Ctx>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    Q(q): Q<FindQuery>,
) -> ApiResult<Json<Value>> {
    ctx.public.hit(&ip).map_err(ApiError::TooManyRequests)?;
    let raw = q
        .plate
        .ok_or_else(|| ApiError::BadRequest("give the plate: /api/find?plate=...".into()))?;
    param(&raw, "plate", 16)?;
    let plate = Plate::parse(&raw).map_err(|e| ApiError::Unprocessable(format!("plate: {e}")))?;
    let stays = ctx.app.current_stays_of_plate(plate.as_str()).await?;
    Ok(Json(json!({
        "plate": plate.as_str(),
        "stays": stays.iter().map(|v| {
            let s = &v.session;
            json!({
                "id": s.id, "lot": s.lot, "lot_name": v.lot_name, "time_zone": v.time_zone,
                "plate": s.plate, "status": s.status, "entry_at": s.entry_at,
                "fee_due": v.fee_due, "pay_url": format!("/pay/{}", s.id),
            })
        }).collect::<Vec<_>>(),
    })))
}
