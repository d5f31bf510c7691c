//! A simulator of WeChat Pay APIv3 as the parking service (微信支付分停车服务) sees it:
//! plate service look-up, parking entries, deduction (扣费受理) with asynchronous debit,
//! refunds, trade bills, signed answers and encrypted, signed, retried notifications.
//!
//! It is the provider side used to test the connector; it is strict like the real
//! service (request signatures, idempotency rules, error bodies). See README.md for
//! the sources and for where it departs from the real service.

mod bill;
mod crypto;
mod notify;
mod service;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, FixedOffset, Utc};
use rsa::pkcs1v15::VerifyingKey;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

use crate::crypto::Identity;

/// The merchant as the provider knows it.
#[derive(Clone, Debug)]
pub struct Merchant {
    pub mchid: String,
    pub appid: String,
    /// serial_no the merchant's requests carry.
    pub merchant_serial: String,
    /// SPKI PEM ("-----BEGIN PUBLIC KEY-----"); verifies requests.
    pub merchant_public_key_pem: String,
    /// 32 ASCII bytes.
    pub apiv3_key: String,
}

/// Which identity signs answers and notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignWith {
    /// The WeChat Pay public key (`Wechatpay-Serial: PUB_KEY_ID_...`).
    PublicKey,
    /// The platform certificate (`Wechatpay-Serial`: the certificate serial, upper-case hex).
    Certificate,
    /// A migration: the two identities alternate message by message.
    Both,
}

/// The simulator's settings.
#[derive(Clone)]
pub struct SimOptions {
    pub merchant: Merchant,
    pub sign_with: SignWith,
    /// 1.0 = the real retry schedule.
    pub notify_retry_scale: f64,
    /// From ACCEPTED to the debit and its notification (also from PROCESSING to a refund's success).
    pub deduct_after: Duration,
    /// 垫资 available to this merchant.
    pub advance: bool,
    /// Business time (end_time checks, success_time, bill dates); signature timestamps always use the real clock.
    pub now: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl SimOptions {
    /// PublicKey signing, the real retry schedule, debit 200 ms after acceptance, no advance, the real clock.
    pub fn new(merchant: Merchant) -> SimOptions {
        SimOptions {
            merchant,
            sign_with: SignWith::PublicKey,
            notify_retry_scale: 1.0,
            deduct_after: Duration::from_millis(200),
            advance: false,
            now: Arc::new(Utc::now),
        }
    }
}

/// Misbehaviours a test can ask for.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The next `n` calls whose path starts with `path` take effect, then answer 500 SYSTEM_ERROR.
    ErrorAfterEffect {
        path: String,
        n: u32,
    },
    /// The next `n` calls whose path starts with `path` take effect, then answer only after `delay`.
    SlowAfterEffect {
        path: String,
        n: u32,
        delay: Duration,
    },
    /// The next `n` notifications are delivered twice (same id).
    DuplicateNotifications(u32),
    /// The next `n` notifications are never delivered (the connector must poll).
    DropNotifications(u32),
    /// The next `n` notifications are first delivered with a bad signature (then retried correctly signed on the schedule).
    BadSignature(u32),
    /// The next `n` notifications carry a timestamp 10 minutes old (validly signed).
    StaleTimestamp(u32),
    /// Notifications are held and delivered in reverse order of creation when `release_notifications` is called.
    HoldNotifications,
    /// Trade bills are not ready (as before 10:00 the next day) until `Fault::BillReady`.
    LateBill,
    BillReady,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub plate: String,
    pub amount: i64,
    pub trade_state: String,
    pub bank_type: Option<String>,
    pub user_repaid: Option<String>,
    /// Fen refunded or being refunded (refunds not closed).
    pub refunded: i64,
    /// How many times money actually moved for this order: must stay 1.
    pub debits: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundView {
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub refund_id: String,
    pub amount: i64,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkingView {
    pub id: String,
    pub out_parking_no: String,
    pub plate: String,
    /// NORMAL or BLOCKED as the provider shows it; CHARGED once a deduction was accepted;
    /// SUPERSEDED once a newer parking of the same plate replaced it.
    pub state: String,
    pub block_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationView {
    pub id: String,
    pub event_type: String,
    pub attempts: u32,
    /// A 2xx came back.
    pub delivered: bool,
    /// The HTTP status of the last attempt; None when it got no answer (refused, timed out).
    pub last_status: Option<u16>,
}

// ---------------------------------------------------------------- state

pub(crate) struct Plate {
    pub colour: String,
    pub openid: String,
    pub balance: i64,
    pub state: String,
    pub open_time: DateTime<Utc>,
}

pub(crate) struct Parking {
    pub id: String,
    pub out_parking_no: String,
    pub plate: String,
    pub colour: String,
    pub start_time: String,
    pub start_at: DateTime<FixedOffset>,
    pub parking_name: String,
    pub free_duration: i64,
    pub notify_url: String,
    pub state: String,
    pub block_reason: Option<String>,
    pub valid: bool,
    pub charged: bool,
    pub request: Value,
}

pub(crate) struct Order {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub appid: String,
    pub description: String,
    pub attach: Option<String>,
    pub notify_url: String,
    pub total: i64,
    pub parking_info: Value,
    pub plate: String,
    pub openid: String,
    pub create_time: DateTime<Utc>,
    pub trade_state: String,
    pub trade_state_description: Option<String>,
    pub bank_type: Option<String>,
    pub user_repaid: Option<String>,
    pub success_time: Option<DateTime<Utc>>,
    pub debits: u32,
    pub request: Value,
}

pub(crate) struct Refund {
    pub refund_id: String,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub amount: i64,
    pub total: i64,
    pub notify_url: Option<String>,
    pub status: String,
    pub create_time: DateTime<Utc>,
    pub success_time: Option<DateTime<Utc>>,
    pub request: Value,
}

pub(crate) struct NotificationRecord {
    pub id: String,
    pub event_type: String,
    pub url: String,
    pub body: String,
    pub attempts: u32,
    pub delivered: bool,
    pub last_status: Option<u16>,
    pub bad_signature_first: bool,
    pub stale: bool,
    pub duplicate: bool,
}

#[derive(Clone, Copy)]
pub(crate) enum PathFault {
    Error,
    Slow(Duration),
}

#[derive(Default)]
pub(crate) struct State {
    pub plates: HashMap<String, Plate>,
    pub parkings: Vec<Parking>,
    pub orders: Vec<Order>,
    pub refunds: Vec<Refund>,
    pub notifications: Vec<NotificationRecord>,
    pub held: Vec<usize>,
    pub hold: bool,
    pub path_faults: Vec<(String, u32, PathFault)>,
    pub duplicate_left: u32,
    pub drop_left: u32,
    pub bad_signature_left: u32,
    pub stale_left: u32,
    pub late_bill: bool,
    pub advance: bool,
    pub bill_omit: HashSet<String>,
    pub bill_foreign: Vec<(String, i64, DateTime<Utc>)>,
    pub bill_amount: HashMap<String, i64>,
    pub bill_files: HashMap<String, Vec<u8>>,
    /// How refunds end: SUCCESS (default), ABNORMAL or CLOSED.
    pub refund_outcome: Option<String>,
    pub seq: u64,
}

pub(crate) struct Inner {
    pub merchant: Merchant,
    pub sign_with: SignWith,
    pub retry_scale: f64,
    pub deduct_after: Duration,
    pub now: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    pub merchant_key: VerifyingKey<Sha256>,
    pub public_key: Identity,
    pub certificate: Identity,
    pub public_key_pem: String,
    pub certificate_pem: String,
    pub certificate_not_before: DateTime<Utc>,
    pub certificate_not_after: DateTime<Utc>,
    pub sign_counter: AtomicU64,
    pub state: Mutex<State>,
    pub tasks: Mutex<Vec<AbortHandle>>,
    pub http: reqwest::Client,
    pub base_url: String,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.now)()
    }

    /// The identity for the next signed message.
    pub fn identity(&self) -> &Identity {
        match self.sign_with {
            SignWith::PublicKey => &self.public_key,
            SignWith::Certificate => &self.certificate,
            SignWith::Both => {
                if self.sign_counter.fetch_add(1, Ordering::Relaxed) & 1 == 0 {
                    &self.public_key
                } else {
                    &self.certificate
                }
            }
        }
    }

    pub fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }
}

// ---------------------------------------------------------------- errors

/// An error answer: `{"code","message"[,"detail"]}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<Value>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
    pub fn param(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "PARAM_ERROR", message)
    }
    pub fn param_field(field: &str, issue: impl Into<String>) -> ApiError {
        let issue = issue.into();
        ApiError {
            status: 400,
            code: "PARAM_ERROR",
            message: format!("参数错误: {field} {issue}"),
            detail: Some(
                json!({"field": field, "location": "body", "value": null, "issue": issue}),
            ),
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "INVALID_REQUEST", message)
    }
    pub fn sign(issue: impl Into<String>) -> ApiError {
        ApiError {
            status: 401,
            code: "SIGN_ERROR",
            message: "错误的签名，验签失败".into(),
            detail: Some(
                json!({"detail": {"issue": issue.into()}, "field": "signature", "location": "authorization"}),
            ),
        }
    }
    pub fn body(&self) -> Value {
        let mut v = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.detail {
            v["detail"] = d.clone();
        }
        v
    }
}

pub(crate) enum Answer {
    Json(u16, Value),
    /// A bill file: answered unsigned, as the real download is.
    File(Vec<u8>),
}

// ---------------------------------------------------------------- HTTP

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_q = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = uri.path().to_string();
    let answer = match service::verify_request(&inner, method.as_str(), &path_q, &headers, &body) {
        Err(e) => Answer::Json(e.status, e.body()),
        Ok(()) => {
            let answer =
                match service::route(&inner, &method, &path, uri.query().unwrap_or(""), &body) {
                    Ok(a) => a,
                    Err(e) => Answer::Json(e.status, e.body()),
                };
            match take_path_fault(&inner, &path) {
                Some(PathFault::Error) => {
                    let e = ApiError::new(500, "SYSTEM_ERROR", "系统错误");
                    Answer::Json(500, e.body())
                }
                Some(PathFault::Slow(d)) => {
                    tokio::time::sleep(d).await;
                    answer
                }
                None => answer,
            }
        }
    };
    match answer {
        Answer::Json(status, value) => signed_json(&inner, status, &value),
        Answer::File(bytes) => {
            let mut resp = (StatusCode::OK, bytes).into_response();
            resp.headers_mut().insert(
                "Content-Type",
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
    }
}

fn take_path_fault(inner: &Inner, path: &str) -> Option<PathFault> {
    let mut st = inner.lock();
    let i = st
        .path_faults
        .iter()
        .position(|(p, n, _)| *n > 0 && path.starts_with(p.as_str()))?;
    let entry = &mut st.path_faults[i];
    entry.1 -= 1;
    let fault = entry.2;
    if entry.1 == 0 {
        st.path_faults.remove(i);
    }
    Some(fault)
}

/// A JSON answer signed over `TIMESTAMP\nNONCE\nBODY\n` with the Wechatpay-* headers.
fn signed_json(inner: &Inner, status: u16, value: &Value) -> Response {
    let body = value.to_string();
    let timestamp = Utc::now().timestamp().to_string();
    let nonce = crypto::random_string(32);
    let id = inner.identity();
    let signature = id.sign(&format!("{timestamp}\n{nonce}\n{body}\n"));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(h, "Content-Type", "application/json; charset=utf-8");
    put(h, "Request-ID", &uuid::Uuid::new_v4().simple().to_string());
    put(h, "Wechatpay-Timestamp", &timestamp);
    put(h, "Wechatpay-Nonce", &nonce);
    put(h, "Wechatpay-Signature", &signature);
    put(h, "Wechatpay-Serial", &id.serial);
    put(h, "Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048");
    resp
}

// ---------------------------------------------------------------- the public handle

/// A running simulator; dropped or `shutdown()` stops it.
pub struct WechatSim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl WechatSim {
    /// Binds 127.0.0.1:0 and serves in a tokio task.
    pub async fn start(opts: SimOptions) -> anyhow::Result<WechatSim> {
        if opts.merchant.apiv3_key.len() != 32 {
            anyhow::bail!("the APIv3 key must be 32 bytes");
        }
        let merchant_key = crypto::merchant_verifier(&opts.merchant.merchant_public_key_pem)?;
        let (pk, ck) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
            Ok((crypto::random_key()?, crypto::random_key()?))
        })
        .await??;
        let public_key_pem = crypto::public_pem(&pk)?;
        let public_key = crypto::public_key_identity(pk);
        let certificate_not_before = Utc::now();
        let (certificate, certificate_pem) = crypto::certificate_identity(ck)?;
        let certificate_not_after = certificate_not_before + chrono::Duration::days(5 * 365);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = State {
            advance: opts.advance,
            ..State::default()
        };
        let inner = Arc::new(Inner {
            merchant: opts.merchant,
            sign_with: opts.sign_with,
            retry_scale: opts.notify_retry_scale.max(0.0),
            deduct_after: opts.deduct_after,
            now: opts.now,
            merchant_key,
            public_key,
            certificate,
            public_key_pem,
            certificate_pem,
            certificate_not_before,
            certificate_not_after,
            sign_counter: AtomicU64::new(0),
            state: Mutex::new(state),
            tasks: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            base_url: format!("http://{addr}"),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!("wechat simulator server: {e}");
            }
        });
        Ok(WechatSim {
            inner,
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// "http://127.0.0.1:PORT"
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// WeChat Pay public key, SPKI PEM.
    pub fn public_key_pem(&self) -> String {
        self.inner.public_key_pem.clone()
    }

    /// "PUB_KEY_ID_0114..."
    pub fn public_key_id(&self) -> String {
        self.inner.public_key.serial.clone()
    }

    /// "-----BEGIN CERTIFICATE-----"
    pub fn platform_certificate_pem(&self) -> String {
        self.inner.certificate_pem.clone()
    }

    /// Upper-case hex of the certificate's serial.
    pub fn platform_serial(&self) -> String {
        self.inner.certificate.serial.clone()
    }

    /// A user opens the parking service for a plate (BLUE, GREEN, YELLOW, BLACK, WHITE, LIMEGREEN).
    pub fn enrol(&self, plate: &str, colour: &str, openid: &str, balance_fen: i64) {
        let now = self.inner.now();
        self.inner.lock().plates.insert(
            plate.to_string(),
            Plate {
                colour: colour.to_string(),
                openid: openid.to_string(),
                balance: balance_fen,
                state: "NORMAL".into(),
                open_time: now,
            },
        );
    }

    /// NORMAL, PAUSE, OUT_SERVICE, OVERDUE, EVALUATION_FAILED (the last two show as BLOCKED at parking entry).
    /// A plate with an open parking whose entry state changes gets a VEHICLE.ENTRANCE_STATE_CHANGE notification.
    pub fn set_state(&self, plate: &str, state: &str) {
        service::set_plate_state(&self.inner, plate, state);
    }

    pub fn set_balance(&self, plate: &str, fen: i64) {
        if let Some(p) = self.inner.lock().plates.get_mut(plate) {
            p.balance = fen;
        }
    }

    pub fn balance(&self, plate: &str) -> Option<i64> {
        self.inner.lock().plates.get(plate).map(|p| p.balance)
    }

    /// How the refunds applied from now on end: "SUCCESS" (the default), "ABNORMAL" or "CLOSED",
    /// each with its REFUND.* notification.
    pub fn set_refund_outcome(&self, status: &str) {
        self.inner.lock().refund_outcome = Some(status.to_string());
    }

    pub fn set_advance(&self, on: bool) {
        self.inner.lock().advance = on;
    }

    /// The user pays back an advanced order: user_repaid=Y, TRANSACTION.PAY_BACK notification.
    pub fn repay(&self, out_trade_no: &str) -> bool {
        service::repay(&self.inner, out_trade_no)
    }

    pub fn inject(&self, fault: Fault) {
        let mut st = self.inner.lock();
        match fault {
            Fault::ErrorAfterEffect { path, n } => st.path_faults.push((path, n, PathFault::Error)),
            Fault::SlowAfterEffect { path, n, delay } => {
                st.path_faults.push((path, n, PathFault::Slow(delay)))
            }
            Fault::DuplicateNotifications(n) => st.duplicate_left += n,
            Fault::DropNotifications(n) => st.drop_left += n,
            Fault::BadSignature(n) => st.bad_signature_left += n,
            Fault::StaleTimestamp(n) => st.stale_left += n,
            Fault::HoldNotifications => st.hold = true,
            Fault::LateBill => st.late_bill = true,
            Fault::BillReady => st.late_bill = false,
        }
    }

    /// Delivers the held notifications, newest first, and stops holding.
    pub async fn release_notifications(&self) {
        notify::release(&self.inner).await;
    }

    pub fn orders(&self) -> Vec<OrderView> {
        let st = self.inner.lock();
        st.orders
            .iter()
            .map(|o| OrderView {
                out_trade_no: o.out_trade_no.clone(),
                transaction_id: o.transaction_id.clone(),
                plate: o.plate.clone(),
                amount: o.total,
                trade_state: service::visible_trade_state(&st, o),
                bank_type: o.bank_type.clone(),
                user_repaid: o.user_repaid.clone(),
                refunded: service::refunded(&st, &o.out_trade_no),
                debits: o.debits,
            })
            .collect()
    }

    pub fn refunds(&self) -> Vec<RefundView> {
        self.inner
            .lock()
            .refunds
            .iter()
            .map(|r| RefundView {
                out_refund_no: r.out_refund_no.clone(),
                out_trade_no: r.out_trade_no.clone(),
                refund_id: r.refund_id.clone(),
                amount: r.amount,
                status: r.status.clone(),
            })
            .collect()
    }

    pub fn parkings(&self) -> Vec<ParkingView> {
        self.inner
            .lock()
            .parkings
            .iter()
            .map(|p| ParkingView {
                id: p.id.clone(),
                out_parking_no: p.out_parking_no.clone(),
                plate: p.plate.clone(),
                state: if p.charged {
                    "CHARGED".into()
                } else if !p.valid {
                    "SUPERSEDED".into()
                } else {
                    p.state.clone()
                },
                block_reason: p.block_reason.clone(),
            })
            .collect()
    }

    pub fn notifications(&self) -> Vec<NotificationView> {
        self.inner
            .lock()
            .notifications
            .iter()
            .map(|n| NotificationView {
                id: n.id.clone(),
                event_type: n.event_type.clone(),
                attempts: n.attempts,
                delivered: n.delivered,
                last_status: n.last_status,
            })
            .collect()
    }

    /// Sends a WECHATPAY/SIGNTEST/ probe; returns the HTTP status we got (0 when no answer came).
    pub async fn send_probe(&self, notify_url: &str) -> u16 {
        notify::probe(&self.inner, notify_url).await
    }

    /// Reconciliation hook: the provider has no record of this trade in the bill.
    pub fn bill_omit(&self, out_trade_no: &str) {
        self.inner.lock().bill_omit.insert(out_trade_no.to_string());
    }

    /// Reconciliation hook: a trade we never made appears in the bill of `at`'s day.
    pub fn bill_add_foreign(&self, out_trade_no: &str, fen: i64, at: DateTime<Utc>) {
        self.inner
            .lock()
            .bill_foreign
            .push((out_trade_no.to_string(), fen, at));
    }

    /// Reconciliation hook: the bill shows another amount for this trade.
    pub fn bill_amount(&self, out_trade_no: &str, fen: i64) {
        self.inner
            .lock()
            .bill_amount
            .insert(out_trade_no.to_string(), fen);
    }

    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for WechatSim {
    fn drop(&mut self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
