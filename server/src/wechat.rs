//! The WeChat Pay APIv3 parking-service connector (微信支付分停车服务): the `wechat` provider
//! behind [`PaymentProvider`].
//!
//! - Entry: the plate's service state (`/v3/vehicle/parking/services/find`, cached briefly),
//!   then the parking entry (`/v3/vehicle/parking/parkings`) under our `out_parking_no` (the
//!   session id). A stay WeChat marks `BLOCKED` is not deducted; the exit decision says so.
//! - Exit: deduction acceptance (`/v3/vehicle/transactions/parking`) under `out_trade_no` (the
//!   charge's idempotency key, 32 hex digits), answered `ACCEPTED`; the result comes by
//!   `TRANSACTION.*` notification, or by asking (`/v3/vehicle/transactions/out-trade-no/..`).
//! - Refunds (`/v3/refund/domestic/refunds`) under our `out_refund_no`; the daily trade bill
//!   (`/v3/bill/tradebill`, then its file) for reconciliation.
//!
//! Every request is signed (`WECHATPAY2-SHA256-RSA2048`, RSA PKCS#1 v1.5 over SHA-256 of
//! `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n` with the merchant key). Every answer and
//! notification is verified before it is believed: the `Wechatpay-Serial` header picks the key,
//! a WeChat Pay public key (`PUB_KEY_ID_...`) or a platform certificate (by its serial), both
//! configurable at once for a migration; timestamps more than 5 minutes off and signature
//! probes (`WECHATPAY/SIGNTEST/...`) are refused. Notifications are decrypted with the APIv3 key
//! (`AEAD_AES_256_GCM`). An answer that fails verification is treated as no answer: the call
//! is retried under the same number, never taken as a result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use parkpay_protocol::{Clock, PlateColour};
use rand::distributions::Alphanumeric;
use rand::Rng;
use reqwest::{Method, StatusCode};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::WechatConfig;
use crate::domain::{ParkingState, ProviderParking};
use crate::payments::*;
use crate::store::Store;

/// How far a signed timestamp may lie from our clock.
const SIGNATURE_WINDOW_SECS: i64 = 300;
const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

#[derive(Debug, thiserror::Error)]
pub enum WechatSetupError {
    #[error("payments.wechat.{field}: {why}")]
    Field { field: &'static str, why: String },
}

fn field(field: &'static str, why: impl Into<String>) -> WechatSetupError {
    WechatSetupError::Field {
        field,
        why: why.into(),
    }
}

/// The keys that may sign WeChat Pay's answers, by the serial `Wechatpay-Serial` names.
#[derive(Clone, Default)]
pub struct Verifiers {
    keys: HashMap<String, VerifyingKey<Sha256>>,
}

impl Verifiers {
    /// Serials compare without case and without leading zeros (a certificate serial's DER
    /// encoding may carry one).
    fn norm(serial: &str) -> String {
        let s = serial.trim().to_ascii_uppercase();
        let t = s.trim_start_matches('0');
        if t.is_empty() {
            "0".into()
        } else {
            t.to_string()
        }
    }

    pub fn add_public_key(&mut self, id: &str, pem: &str) -> Result<(), String> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
        self.keys
            .insert(Self::norm(id), VerifyingKey::<Sha256>::new(key));
        Ok(())
    }

    /// Adds a platform certificate; returns its serial (upper-case hex).
    pub fn add_certificate(&mut self, pem: &str) -> Result<String, String> {
        use x509_cert::der::{DecodePem, Encode};
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("not an X.509 certificate in PEM: {e}"))?;
        let serial = hex::encode_upper(cert.tbs_certificate.serial_number.as_bytes());
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("certificate key: {e}"))?;
        let key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| format!("the certificate's key is not RSA: {e}"))?;
        self.keys
            .insert(Self::norm(&serial), VerifyingKey::<Sha256>::new(key));
        Ok(serial)
    }

    /// Checks `Wechatpay-Timestamp`, `-Nonce`, `-Signature` and `-Serial` over `body`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), String> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("header {name} is missing"))
        };
        let (ts, nonce, signature, serial) = (
            get("Wechatpay-Timestamp")?,
            get("Wechatpay-Nonce")?,
            get("Wechatpay-Signature")?,
            get("Wechatpay-Serial")?,
        );
        if signature.starts_with(PROBE_PREFIX) {
            return Err("a signature probe (WECHATPAY/SIGNTEST/), refused as required".into());
        }
        let t: i64 = ts
            .parse()
            .map_err(|_| format!("Wechatpay-Timestamp {ts:?} is not a number"))?;
        if now
            .checked_sub(t)
            .is_none_or(|d| d.abs() > SIGNATURE_WINDOW_SECS)
        {
            return Err(format!(
                "Wechatpay-Timestamp {t} is more than {SIGNATURE_WINDOW_SECS} s from our clock ({now})"
            ));
        }
        let key = self
            .keys
            .get(&Self::norm(serial))
            .ok_or_else(|| format!("no key configured for Wechatpay-Serial {serial:?}"))?;
        let raw = B64
            .decode(signature)
            .map_err(|_| "Wechatpay-Signature is not base64".to_string())?;
        let sig = Signature::try_from(raw.as_slice()).map_err(|_| "malformed signature")?;
        let mut msg = Vec::with_capacity(body.len() + 64);
        msg.extend_from_slice(format!("{ts}\n{nonce}\n").as_bytes());
        msg.extend_from_slice(body);
        msg.push(b'\n');
        key.verify(&msg, &sig)
            .map_err(|_| format!("signature does not verify with key {serial}"))
    }
}

/// Decrypts a notification's resource (`AEAD_AES_256_GCM`; the tag ends the ciphertext).
pub fn decrypt_resource(
    key: &[u8; 32],
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, String> {
    if nonce.len() != 12 {
        return Err(format!("nonce must be 12 bytes, not {}", nonce.len()));
    }
    let ct = B64
        .decode(ciphertext_b64)
        .map_err(|_| "ciphertext is not base64".to_string())?;
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| "APIv3 key must be 32 bytes")?;
    cipher
        .decrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: &ct,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| "decryption failed (wrong APIv3 key, or the resource was altered)".into())
}

/// WeChat's plate colours.
pub fn plate_color(c: PlateColour) -> &'static str {
    match c {
        PlateColour::Blue | PlateColour::Other => "BLUE",
        PlateColour::Yellow => "YELLOW",
        PlateColour::Green => "GREEN",
        PlateColour::Black => "BLACK",
        PlateColour::White => "WHITE",
    }
}

/// RFC 3339 in China Standard Time, to the second, as the parking API wants times.
pub fn cst(t: DateTime<Utc>) -> String {
    let z = FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    t.with_timezone(&z)
        .format("%Y-%m-%dT%H:%M:%S+08:00")
        .to_string()
}

/// Yuan with up to two decimals ("12.5", "0.02", "-3.00") to fen, exactly.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let w: i64 = whole.parse().ok()?;
    let f: i64 = format!("{frac:0<2}").parse().ok()?;
    let v = w.checked_mul(100)?.checked_add(f)?;
    Some(if neg { -v } else { v })
}

/// Parses a trade bill: a header line, rows whose fields start with a back-quote, then a
/// summary block (its own header, starting 总交易单数, and one row). Successful trades and
/// refunds become lines; other states (a revoked order) carry no money and are skipped.
pub fn parse_trade_bill(text: &str) -> Result<Vec<BillLine>, String> {
    let text = text.trim_start_matches('\u{feff}');
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or("the bill is empty")?
        .split(',')
        .map(|h| h.trim().trim_start_matches('`').to_string())
        .collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let state = col(&["交易状态", "trade_state"]).ok_or("the bill has no 交易状态 column")?;
    let trade_no =
        col(&["商户订单号", "out_trade_no"]).ok_or("the bill has no 商户订单号 column")?;
    let total = col(&["订单金额", "total_amount"])
        .or_else(|| col(&["应结订单金额", "settlement_total_fee"]))
        .ok_or("the bill has no 订单金额 column")?;
    let refund_no = col(&["商户退款单号", "out_refund_no"]);
    let refund_amount =
        col(&["申请退款金额", "apply_refund_fee"]).or_else(|| col(&["退款金额", "refund_fee"]));
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_start_matches('`'))
            .collect();
        if fields
            .first()
            .is_some_and(|f| f.starts_with("总交易单数") || *f == "total_count")
        {
            break;
        }
        let get = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("bill row {}: too few fields", n + 2))
        };
        let amount = |i: usize| {
            get(i).and_then(|v| {
                yuan_to_fen(v).ok_or_else(|| format!("bill row {}: amount {v:?}", n + 2))
            })
        };
        match get(state)? {
            "SUCCESS" => out.push(BillLine {
                entry: "trade",
                reference: get(trade_no)?.to_string(),
                amount_minor: amount(total)?,
            }),
            "REFUND" => {
                let (Some(no), Some(amt)) = (refund_no, refund_amount) else {
                    return Err("the bill has refunds but no refund columns".into());
                };
                out.push(BillLine {
                    entry: "refund",
                    reference: get(no)?.to_string(),
                    amount_minor: amount(amt)?.abs(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

struct Answer {
    status: StatusCode,
    json: Value,
}

impl Answer {
    fn code(&self) -> String {
        let code = self.json["code"].as_str().unwrap_or("");
        let message = self.json["message"].as_str().unwrap_or("");
        format!("{} {code}: {message}", self.status.as_u16())
    }
}

pub struct WechatProvider {
    base_url: String,
    mchid: String,
    appid: String,
    merchant_serial: String,
    notify_url: String,
    signer: SigningKey<Sha256>,
    verifiers: Verifiers,
    apiv3_key: [u8; 32],
    http: reqwest::Client,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    services: Mutex<HashMap<String, (String, Instant)>>,
    service_ttl: Duration,
}

impl WechatProvider {
    pub fn new(
        c: &WechatConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<WechatProvider, WechatSetupError> {
        let read = |f: &'static str, p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| field(f, format!("{}: {e}", p.display())))
        };
        let pem = read("merchant_private_key_file", &c.merchant_private_key_file)?;
        let key = RsaPrivateKey::from_pkcs8_pem(&pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem))
            .map_err(|e| {
                field(
                    "merchant_private_key_file",
                    format!("not an RSA private key in PEM: {e}"),
                )
            })?;
        let apiv3 = match (&c.apiv3_key, &c.apiv3_key_file) {
            (Some(k), None) => k.expose().to_string(),
            (None, Some(p)) => read("apiv3_key_file", p)?.trim().to_string(),
            _ => {
                return Err(field(
                    "apiv3_key",
                    "set exactly one of apiv3_key and apiv3_key_file",
                ))
            }
        };
        let apiv3_key: [u8; 32] = apiv3
            .as_bytes()
            .try_into()
            .map_err(|_| field("apiv3_key", "must be 32 characters"))?;
        let mut verifiers = Verifiers::default();
        match (&c.public_key_file, &c.public_key_id) {
            (Some(p), Some(id)) => verifiers
                .add_public_key(id, &read("public_key_file", p)?)
                .map_err(|e| field("public_key_file", e))?,
            (None, None) => {}
            _ => {
                return Err(field(
                    "public_key_id",
                    "public_key_file and public_key_id go together",
                ))
            }
        }
        if let Some(p) = &c.platform_certificate_file {
            verifiers
                .add_certificate(&read("platform_certificate_file", p)?)
                .map_err(|e| field("platform_certificate_file", e))?;
        }
        if verifiers.keys.is_empty() {
            return Err(field(
                "public_key_file",
                "set public_key_file + public_key_id, or platform_certificate_file, or both",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .build()
            .map_err(|e| field("base_url", e.to_string()))?;
        Ok(WechatProvider {
            base_url: c.base_url.trim_end_matches('/').to_string(),
            mchid: c.mchid.clone(),
            appid: c.appid.clone(),
            merchant_serial: c.merchant_serial.clone(),
            notify_url: c.notify_url.clone(),
            signer: SigningKey::<Sha256>::new(key),
            verifiers,
            apiv3_key,
            http,
            store,
            clock,
            services: Mutex::new(HashMap::new()),
            service_ttl: Duration::from_secs(c.service_cache_secs),
        })
    }

    fn authorization(&self, method: &str, path_query: &str, body: &str) -> String {
        let ts = Utc::now().timestamp();
        let nonce: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let msg = format!("{method}\n{path_query}\n{ts}\n{nonce}\n{body}\n");
        let signature = B64.encode(self.signer.sign(msg.as_bytes()).to_bytes());
        format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{ts}\",serial_no=\"{}\"",
            self.mchid, self.merchant_serial
        )
    }

    /// One signed call; an answer is believed only once verified. Transport failures, 5xx,
    /// 429 and unverifiable answers are `Unavailable`: the caller retries with the same
    /// numbers.
    async fn call(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let raw = self.fetch(method, url, body, true).await?;
        let json = if raw.1.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw.1).map_err(|e| {
                ProviderError::Unavailable(format!("answer {} is not JSON: {e}", raw.0))
            })?
        };
        Ok(Answer {
            status: raw.0,
            json,
        })
    }

    async fn fetch(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
        verify: bool,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let path_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let body_text = body.map(Value::to_string).unwrap_or_default();
        let auth = self.authorization(method.as_str(), &path_query, &body_text);
        let mut rq = self
            .http
            .request(method.clone(), url)
            .header("Authorization", auth)
            .header("Accept", "application/json")
            .header("User-Agent", "parkpay");
        if body.is_some() {
            rq = rq
                .header("Content-Type", "application/json")
                .body(body_text);
        }
        let resp = rq
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("{method} {path_query}: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("{method} {path_query}: {e}")))?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Unavailable(format!(
                "{method} {path_query}: {} {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )));
        }
        if verify {
            if let Err(why) = self
                .verifiers
                .verify(&headers, &bytes, Utc::now().timestamp())
            {
                tracing::warn!(%path_query, status = status.as_u16(), %why, "WeChat Pay answer not verified; not believed");
                return Err(ProviderError::Unavailable(format!(
                    "{method} {path_query}: answer not verified ({why})"
                )));
            }
        }
        Ok((status, bytes.to_vec()))
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Url, ProviderError> {
        let base = format!("{}{path}", self.base_url);
        reqwest::Url::parse_with_params(&base, query)
            .map_err(|e| ProviderError::Unavailable(format!("URL {base}: {e}")))
    }

    /// The plate's service state: NORMAL, PAUSE, OUT_SERVICE, or NOT_ENROLLED; cached.
    async fn service_state(&self, stay: &Stay, openid: &str) -> Result<String, ProviderError> {
        let cache_key = format!("{}|{}", stay.plate, plate_color(stay.colour));
        if let Ok(cache) = self.services.lock() {
            if let Some((state, at)) = cache.get(&cache_key) {
                if at.elapsed() < self.service_ttl {
                    return Ok(state.clone());
                }
            }
        }
        let url = self.url(
            "/v3/vehicle/parking/services/find",
            &[
                ("appid", &self.appid),
                ("plate_number", &stay.plate),
                ("plate_color", plate_color(stay.colour)),
                ("openid", openid),
            ],
        )?;
        let a = self.call(Method::GET, url, None).await?;
        let state = if a.status.is_success() {
            a.json["service_state"]
                .as_str()
                .unwrap_or("OUT_SERVICE")
                .to_string()
        } else if a.status == StatusCode::NOT_FOUND {
            "NOT_ENROLLED".to_string()
        } else {
            return Err(ProviderError::Unavailable(format!(
                "services/find: {}",
                a.code()
            )));
        };
        if let Ok(mut cache) = self.services.lock() {
            cache.insert(cache_key, (state.clone(), Instant::now()));
        }
        Ok(state)
    }

    async fn register(&self, stay: &Stay, openid: &str) -> Result<ProviderParking, ProviderError> {
        let out_parking_no = stay.session_id.simple().to_string();
        let now = self.clock.now();
        let state = self.service_state(stay, openid).await?;
        // A plate not enrolled has nothing to register; any other state is WeChat Pay's to
        // judge: the entry answers NORMAL or BLOCKED with its reason.
        let parking = if state == "NOT_ENROLLED" {
            ProviderParking {
                session_id: stay.session_id,
                provider: "wechat".into(),
                out_parking_no,
                parking_id: None,
                state: ParkingState::Blocked,
                block_reason: Some(state),
                updated_at: now,
            }
        } else {
            let body = json!({
                "out_parking_no": out_parking_no,
                "plate_number": stay.plate,
                "plate_color": plate_color(stay.colour),
                "notify_url": self.notify_url,
                "start_time": cst(stay.entry_at),
                "parking_name": stay.lot_name,
                "free_duration": stay.free_minutes * 60,
            });
            let url = self.url("/v3/vehicle/parking/parkings", &[])?;
            let a = self.call(Method::POST, url, Some(&body)).await?;
            if !a.status.is_success() {
                return Err(ProviderError::Unavailable(format!(
                    "parking entry: {}",
                    a.code()
                )));
            }
            let blocked = a.json["state"].as_str() == Some("BLOCKED");
            ProviderParking {
                session_id: stay.session_id,
                provider: "wechat".into(),
                out_parking_no,
                parking_id: a.json["id"].as_str().map(str::to_string),
                state: if blocked {
                    ParkingState::Blocked
                } else {
                    ParkingState::Normal
                },
                block_reason: a.json["block_reason"].as_str().map(str::to_string),
                updated_at: now,
            }
        };
        self.store
            .put_provider_parking(&parking)
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(parking)
    }

    fn trade_outcome(j: &Value) -> Option<ProviderOutcome> {
        let txn = j["transaction_id"].as_str().unwrap_or_default().to_string();
        Some(match j["trade_state"].as_str()? {
            "SUCCESS" | "REFUND" => ProviderOutcome::Succeeded {
                advanced: j["bank_type"].as_str() == Some("BPA")
                    && j["user_repaid"].as_str() != Some("Y"),
                at: j["success_time"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                txn,
            },
            "ACCEPTED" => ProviderOutcome::Accepted { txn },
            "PAY_FAIL" => ProviderOutcome::Failed {
                reason: format!(
                    "WeChat Pay could not deduct: {}",
                    j["trade_state_description"].as_str().unwrap_or("PAY_FAIL")
                ),
            },
            other => ProviderOutcome::Declined {
                reason: format!("WeChat Pay trade state {other}"),
            },
        })
    }

    fn refund_outcome(j: &Value) -> RefundOutcome {
        let refund_id = j["refund_id"].as_str().unwrap_or_default().to_string();
        let status = j["status"]
            .as_str()
            .or_else(|| j["refund_status"].as_str())
            .unwrap_or("");
        match status {
            "SUCCESS" => RefundOutcome::Succeeded { refund_id },
            "PROCESSING" => RefundOutcome::Processing { refund_id },
            "CLOSED" => RefundOutcome::Closed {
                reason: "WeChat Pay closed the refund".into(),
            },
            "ABNORMAL" => RefundOutcome::Abnormal {
                reason: "the refund could not reach the driver's account (ABNORMAL)".into(),
            },
            other => RefundOutcome::Refused {
                reason: format!("unknown refund status {other:?}"),
            },
        }
    }
}

#[async_trait]
impl PaymentProvider for WechatProvider {
    fn name(&self) -> &'static str {
        "wechat"
    }

    fn tracks_stays(&self) -> bool {
        true
    }

    async fn entered(&self, stay: &Stay) -> Result<Option<ProviderParking>, ProviderError> {
        // Without a mandate there is nobody to deduct from: nothing to register.
        match &stay.payer_ref {
            Some(openid) => self.register(stay, openid).await.map(Some),
            None => Ok(None),
        }
    }

    async fn debit(&self, req: &DebitRequest) -> Result<ProviderOutcome, ProviderError> {
        let Some(stay) = &req.stay else {
            return Ok(ProviderOutcome::Declined {
                reason: "WeChat Pay parking deduction charges stays only".into(),
            });
        };
        let Some(exit_at) = stay.exit_at else {
            return Ok(ProviderOutcome::Declined {
                reason: "the stay has not ended".into(),
            });
        };
        let known = self
            .store
            .provider_parking(stay.session_id)
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let parking = match known {
            Some(p) => p,
            None => self.register(stay, &req.provider_ref).await?,
        };
        let (ParkingState::Normal, Some(parking_id)) = (parking.state, &parking.parking_id) else {
            return Ok(ProviderOutcome::Failed {
                reason: format!(
                    "WeChat Pay will not deduct for this stay: {}",
                    parking.block_reason.as_deref().unwrap_or("BLOCKED")
                ),
            });
        };
        // end_time must differ from start_time; both are whole seconds.
        let end = exit_at.max(stay.entry_at + chrono::Duration::seconds(1));
        let body = json!({
            "appid": self.appid,
            "description": format!("停车费 {} {}", stay.lot_name, stay.plate),
            "attach": stay.session_id.to_string(),
            "out_trade_no": req.idempotency_key,
            "trade_scene": "PARKING",
            "notify_url": self.notify_url,
            "amount": { "total": req.amount.minor, "currency": "CNY" },
            "parking_info": {
                "parking_id": parking_id,
                "plate_number": stay.plate,
                "plate_color": plate_color(stay.colour),
                "start_time": cst(stay.entry_at),
                "end_time": cst(end),
                "parking_name": stay.lot_name,
                "charging_duration": (end - stay.entry_at).num_seconds(),
                "device_id": if stay.lane.is_empty() { "unknown" } else { stay.lane.as_str() },
            }
        });
        let url = self.url("/v3/vehicle/transactions/parking", &[])?;
        let a = self.call(Method::POST, url, Some(&body)).await?;
        if a.status.is_success() {
            return Self::trade_outcome(&a.json).ok_or_else(|| {
                ProviderError::Unavailable("deduction answer has no trade_state".into())
            });
        }
        Ok(ProviderOutcome::Declined {
            reason: format!("WeChat Pay refused the deduction: {}", a.code()),
        })
    }

    async fn query(&self, req: &DebitRequest) -> Result<Option<ProviderOutcome>, ProviderError> {
        let url = self.url(
            &format!(
                "/v3/vehicle/transactions/out-trade-no/{}",
                req.idempotency_key
            ),
            &[("appid", self.appid.as_str())],
        )?;
        let a = self.call(Method::GET, url, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !a.status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "order query: {}",
                a.code()
            )));
        }
        Ok(Self::trade_outcome(&a.json))
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        let body = json!({
            "out_trade_no": req.trade_key,
            "out_refund_no": req.out_refund_no,
            "reason": req.reason,
            "notify_url": self.notify_url,
            "amount": { "refund": req.amount.minor, "total": req.total.minor, "currency": "CNY" },
        });
        let url = self.url("/v3/refund/domestic/refunds", &[])?;
        let a = self.call(Method::POST, url, Some(&body)).await?;
        if a.status.is_success() {
            return Ok(Self::refund_outcome(&a.json));
        }
        Ok(RefundOutcome::Refused { reason: a.code() })
    }

    async fn refund_status(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        let url = self.url(
            &format!("/v3/refund/domestic/refunds/{}", req.out_refund_no),
            &[],
        )?;
        let a = self.call(Method::GET, url, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            // Never taken: ask for it (again) under the same number.
            return self.refund(req).await;
        }
        if !a.status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "refund query: {}",
                a.code()
            )));
        }
        Ok(Self::refund_outcome(&a.json))
    }

    async fn bill(&self, date: NaiveDate) -> Result<Bill, ProviderError> {
        let day = date.format("%Y-%m-%d").to_string();
        let url = self.url(
            "/v3/bill/tradebill",
            &[("bill_date", day.as_str()), ("bill_type", "ALL")],
        )?;
        let a = self.call(Method::GET, url, None).await?;
        if !a.status.is_success() {
            let code = a.json["code"].as_str().unwrap_or("");
            if matches!(code, "NO_STATEMENT_EXIST" | "STATEMENT_CREATING")
                || a.status == StatusCode::NOT_FOUND
            {
                return Ok(Bill::NotReady);
            }
            return Err(ProviderError::Unavailable(format!(
                "trade bill: {}",
                a.code()
            )));
        }
        let link = a.json["download_url"]
            .as_str()
            .ok_or_else(|| ProviderError::Unavailable("trade bill: no download_url".into()))?;
        let link = reqwest::Url::parse(link)
            .map_err(|e| ProviderError::Unavailable(format!("download_url: {e}")))?;
        let base = reqwest::Url::parse(&self.base_url)
            .map_err(|e| ProviderError::Unavailable(format!("base_url: {e}")))?;
        if link.host_str() != base.host_str()
            || link.port_or_known_default() != base.port_or_known_default()
        {
            return Err(ProviderError::Unavailable(format!(
                "download_url {link} is not on the API host; not followed"
            )));
        }
        // The file's answer is not signed; its SHA-1 from the signed answer vouches for it.
        let (status, bytes) = self.fetch(Method::GET, link, None, false).await?;
        if !status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "bill file: {}",
                status.as_u16()
            )));
        }
        if let Some(expected) = a.json["hash_value"].as_str() {
            use sha1::{Digest, Sha1};
            let got = hex::encode(Sha1::digest(&bytes));
            if !got.eq_ignore_ascii_case(expected) {
                return Err(ProviderError::Unavailable(format!(
                    "bill file SHA-1 {got} does not match {expected}"
                )));
            }
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| ProviderError::Unavailable("bill file is not UTF-8".into()))?;
        parse_trade_bill(&text)
            .map(Bill::Lines)
            .map_err(|e| ProviderError::Unavailable(format!("bill file: {e}")))
    }

    fn notice(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notice, NoticeError> {
        self.verifiers
            .verify(headers, body, Utc::now().timestamp())
            .map_err(NoticeError::Signature)?;
        let n: Value = serde_json::from_slice(body)
            .map_err(|e| NoticeError::Malformed(format!("not JSON: {e}")))?;
        let text = |v: &Value, k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| NoticeError::Malformed(format!("{k} is missing")))
        };
        let id = text(&n, "id")?;
        let event_type = text(&n, "event_type")?;
        let r = &n["resource"];
        if r["algorithm"].as_str() != Some("AEAD_AES_256_GCM") {
            return Err(NoticeError::Malformed(format!(
                "resource algorithm {:?} is not AEAD_AES_256_GCM",
                r["algorithm"]
            )));
        }
        let plain = decrypt_resource(
            &self.apiv3_key,
            &text(r, "nonce")?,
            r["associated_data"].as_str().unwrap_or(""),
            &text(r, "ciphertext")?,
        )
        .map_err(NoticeError::Malformed)?;
        let resource = String::from_utf8(plain)
            .map_err(|_| NoticeError::Malformed("resource is not UTF-8".into()))?;
        let j: Value = serde_json::from_str(&resource)
            .map_err(|e| NoticeError::Malformed(format!("resource is not JSON: {e}")))?;
        let event = if event_type == "TRANSACTION.PAY_BACK" {
            ProviderEvent::PaidBack {
                key: text(&j, "out_trade_no")?,
            }
        } else if event_type.starts_with("TRANSACTION.") {
            let outcome = Self::trade_outcome(&j)
                .ok_or_else(|| NoticeError::Malformed("trade_state is missing".into()))?;
            ProviderEvent::Trade {
                key: text(&j, "out_trade_no")?,
                amount_minor: j["amount"]["total"].as_i64().unwrap_or(-1),
                outcome,
            }
        } else if event_type.starts_with("REFUND.") {
            ProviderEvent::Refund {
                out_refund_no: text(&j, "out_refund_no")?,
                outcome: Self::refund_outcome(&j),
            }
        } else if event_type == "VEHICLE.ENTRANCE_STATE_CHANGE" {
            let state = j["parking_state"]
                .as_str()
                .or_else(|| j["state"].as_str())
                .unwrap_or("");
            ProviderEvent::Parking {
                parking_id: text(&j, "parking_id")?,
                state: if state == "NORMAL" {
                    ParkingState::Normal
                } else {
                    ParkingState::Blocked
                },
                reason: j["blocked_state_description"]
                    .as_str()
                    .or_else(|| j["block_reason"].as_str())
                    .map(str::to_string),
            }
        } else {
            ProviderEvent::Other
        };
        Ok(Notice {
            id,
            event_type,
            resource,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_converts_to_fen_exactly_and_refuses_what_is_not_money() {
        assert_eq!(yuan_to_fen("0.02"), Some(2));
        assert_eq!(yuan_to_fen("12.5"), Some(1250));
        assert_eq!(yuan_to_fen("30"), Some(3000));
        assert_eq!(yuan_to_fen("-3.00"), Some(-300));
        assert_eq!(yuan_to_fen("1.234"), None);
        assert_eq!(yuan_to_fen("1e3"), None);
        assert_eq!(yuan_to_fen(""), None);
    }

    #[test]
    fn a_bill_with_back_quotes_and_a_summary_gives_trades_and_refunds() {
        let bill = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\n\
`2026-12-05 10:00:00,`wx1,`1900000001,`0,`,`4200001,`a1,`o1,`PARKING,`SUCCESS,`OTHERS,`CNY,`12.00,`0.00,`0,`0,`0.00,`0.00,`,`,`停车费,`,`0.07,`0.60%,`12.00,`0.00,`\n\
`2026-12-05 11:00:00,`wx1,`1900000001,`0,`,`4200001,`a1,`o1,`PARKING,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`5000001,`r1,`2.50,`0.00,`ORIGINAL,`SUCCESS,`停车费,`,`-0.01,`0.60%,`0.00,`2.50,`\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n\
`2,`12.00,`2.50,`0.00,`0.06,`12.00,`2.50\n";
        assert_eq!(
            parse_trade_bill(bill).unwrap(),
            vec![
                BillLine {
                    entry: "trade",
                    reference: "a1".into(),
                    amount_minor: 1200
                },
                BillLine {
                    entry: "refund",
                    reference: "r1".into(),
                    amount_minor: 250
                },
            ]
        );
        assert!(parse_trade_bill("").is_err());
    }
}
