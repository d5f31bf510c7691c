//! The simulator against a tiny merchant client written here from the protocol description.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use parkpay_wechat_sim::{Fault, Merchant, SignWith, SimOptions, WechatSim};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use x509_cert::der::{DecodePem, Encode};

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";
const SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const APIV3: &str = "0123456789abcdef0123456789ABCDEF";
const PLATE: &str = "粤B12345";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

fn merchant_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("key"))
}

fn options() -> SimOptions {
    let pem = RsaPublicKey::from(merchant_key())
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let mut o = SimOptions::new(Merchant {
        mchid: MCHID.into(),
        appid: APPID.into(),
        merchant_serial: SERIAL.into(),
        merchant_public_key_pem: pem,
        apiv3_key: APIV3.into(),
    });
    o.notify_retry_scale = 0.002;
    o.deduct_after = Duration::from_millis(50);
    o
}

fn rfc(t: DateTime<Utc>) -> String {
    t.with_timezone(&FixedOffset::east_opt(8 * 3600).unwrap())
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
}

// ---------------------------------------------------------------- the tiny merchant client

struct Client {
    base: String,
    http: reqwest::Client,
    key: SigningKey<Sha256>,
}

struct Reply {
    status: u16,
    body: Value,
    raw: String,
    headers: reqwest::header::HeaderMap,
}

impl Client {
    fn new(sim: &WechatSim) -> Client {
        Client {
            base: sim.base_url(),
            http: reqwest::Client::new(),
            key: SigningKey::new(merchant_key().clone()),
        }
    }

    fn authorization(
        &self,
        method: &str,
        path_q: &str,
        body: &str,
        timestamp: i64,
        serial: &str,
    ) -> String {
        let nonce = nonce();
        let message = format!("{method}\n{path_q}\n{timestamp}\n{nonce}\n{body}\n");
        let sig: Signature = self.key.sign(message.as_bytes());
        format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{MCHID}\",nonce_str=\"{nonce}\",signature=\"{}\",timestamp=\"{timestamp}\",serial_no=\"{serial}\"",
            B64.encode(sig.to_bytes())
        )
    }

    async fn send(&self, method: &str, path_q: &str, body: Option<&Value>, auth: String) -> Reply {
        let body_s = body.map(|b| b.to_string()).unwrap_or_default();
        let url = format!("{}{}", self.base, path_q);
        let req = if method == "GET" {
            self.http.get(url)
        } else {
            self.http.post(url).body(body_s)
        };
        let resp = req
            .header("Authorization", auth)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.expect("text");
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            raw,
            headers,
        }
    }

    async fn call(&self, method: &str, path_q: &str, body: Option<&Value>) -> Reply {
        let body_s = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self.authorization(method, path_q, &body_s, Utc::now().timestamp(), SERIAL);
        self.send(method, path_q, body, auth).await
    }
}

fn public_key_verifier(pem: &str) -> VerifyingKey<Sha256> {
    VerifyingKey::new(RsaPublicKey::from_public_key_pem(pem).expect("public key"))
}

fn certificate_verifier(pem: &str) -> VerifyingKey<Sha256> {
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).expect("certificate");
    let der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .expect("spki");
    VerifyingKey::new(RsaPublicKey::from_public_key_der(&der).expect("key"))
}

/// Checks `Wechatpay-*` headers over `TIMESTAMP\nNONCE\nBODY\n`, picking the key by serial.
fn provider_signature_ok(
    sim_keys: &[(String, VerifyingKey<Sha256>)],
    get: impl Fn(&str) -> Option<String>,
    body: &str,
) -> bool {
    let (Some(ts), Some(n), Some(sig), Some(serial)) = (
        get("Wechatpay-Timestamp"),
        get("Wechatpay-Nonce"),
        get("Wechatpay-Signature"),
        get("Wechatpay-Serial"),
    ) else {
        return false;
    };
    let Some((_, key)) = sim_keys.iter().find(|(s, _)| *s == serial) else {
        return false;
    };
    let Ok(ts_n) = ts.parse::<i64>() else {
        return false;
    };
    if (Utc::now().timestamp() - ts_n).abs() > 300 {
        return false;
    }
    let Ok(raw) = B64.decode(sig) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    key.verify(format!("{ts}\n{n}\n{body}\n").as_bytes(), &sig)
        .is_ok()
}

fn keys_of(sim: &WechatSim) -> Vec<(String, VerifyingKey<Sha256>)> {
    vec![
        (
            sim.public_key_id(),
            public_key_verifier(&sim.public_key_pem()),
        ),
        (
            sim.platform_serial(),
            certificate_verifier(&sim.platform_certificate_pem()),
        ),
    ]
}

fn reply_ok(sim: &WechatSim, r: &Reply) -> bool {
    provider_signature_ok(
        &keys_of(sim),
        |k| {
            r.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        },
        &r.raw,
    )
}

fn decrypt(resource: &Value) -> Value {
    let cipher = Aes256Gcm::new_from_slice(APIV3.as_bytes()).unwrap();
    let ct = B64
        .decode(resource["ciphertext"].as_str().unwrap())
        .unwrap();
    let plain = cipher
        .decrypt(
            Nonce::from_slice(resource["nonce"].as_str().unwrap().as_bytes()),
            Payload {
                msg: &ct,
                aad: resource["associated_data"].as_str().unwrap().as_bytes(),
            },
        )
        .expect("decrypt");
    serde_json::from_slice(&plain).unwrap()
}

// ---------------------------------------------------------------- the merchant's notification endpoint

#[derive(Clone)]
struct Got {
    valid: bool,
    serial: String,
    timestamp: i64,
    body: Value,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
}

type Keys = Arc<Mutex<Vec<(String, VerifyingKey<Sha256>)>>>;

async fn on_notify(
    State((keys, got)): State<(Keys, Arc<Mutex<Vec<Got>>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body_s = String::from_utf8_lossy(&body).to_string();
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let valid = provider_signature_ok(&keys.lock().unwrap(), get, &body_s);
    got.lock().unwrap().push(Got {
        valid,
        serial: get("Wechatpay-Serial").unwrap_or_default(),
        timestamp: get("Wechatpay-Timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        body: serde_json::from_str(&body_s).unwrap_or(Value::Null),
    });
    if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Accepts only notifications whose signature verifies with the simulator's keys and whose timestamp is fresh.
async fn receiver(sim: &WechatSim) -> Receiver {
    let keys: Keys = Arc::new(Mutex::new(keys_of(sim)));
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/notify", post(on_notify))
        .with_state((keys, got.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url: format!("http://{addr}/notify"),
        got,
    }
}

impl Receiver {
    fn valid_events(&self) -> Vec<(String, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.valid)
            .map(|g| {
                (
                    g.body["event_type"].as_str().unwrap_or("").to_string(),
                    decrypt(&g.body["resource"]),
                )
            })
            .collect()
    }
    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------- scenario helpers

async fn entry(c: &Client, no: &str, notify: &str, start: DateTime<Utc>) -> Value {
    let r = c
        .call(
            "POST",
            "/v3/vehicle/parking/parkings",
            Some(&json!({
                "out_parking_no": no,
                "plate_number": PLATE,
                "plate_color": "BLUE",
                "notify_url": notify,
                "start_time": rfc(start),
                "parking_name": "欢乐海岸停车场",
                "free_duration": 900,
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

fn debit_body(no: &str, parking: &Value, fen: i64, notify: &str, end: DateTime<Utc>) -> Value {
    json!({
        "appid": APPID,
        "out_trade_no": no,
        "description": "停车场扣费",
        "trade_scene": "PARKING",
        "notify_url": notify,
        "amount": {"total": fen, "currency": "CNY"},
        "parking_info": {
            "parking_id": parking["id"],
            "plate_number": PLATE,
            "plate_color": "BLUE",
            "start_time": parking["start_time"],
            "end_time": rfc(end),
            "parking_name": "欢乐海岸停车场",
            "charging_duration": 3600,
            "device_id": "gate-07",
        }
    })
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn signed_requests_pass_and_bad_ones_get_sign_error() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let c = Client::new(&sim);
    let path = format!(
        "/v3/vehicle/parking/services/find?appid={APPID}&plate_number={}&plate_color=BLUE&openid={OPENID}",
        "%E7%B2%A4B12345"
    );
    let r = c.call("GET", &path, None).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["service_state"], "NORMAL");
    assert_eq!(r.body["plate_number"], PLATE);
    assert!(reply_ok(&sim, &r));
    assert_eq!(
        r.headers["Wechatpay-Serial"].to_str().unwrap(),
        sim.public_key_id()
    );
    assert!(sim.public_key_id().starts_with("PUB_KEY_ID_"));

    // Signed over another body.
    let auth = c.authorization(
        "GET",
        &format!("{path}&x=1"),
        "",
        Utc::now().timestamp(),
        SERIAL,
    );
    let r = c.send("GET", &path, None, auth).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], "SIGN_ERROR");
    assert!(reply_ok(&sim, &r), "error answers are signed too");
    // Old timestamp.
    let auth = c.authorization("GET", &path, "", Utc::now().timestamp() - 400, SERIAL);
    assert_eq!(
        c.send("GET", &path, None, auth).await.body["code"],
        "SIGN_ERROR"
    );
    // Unknown serial.
    let auth = c.authorization("GET", &path, "", Utc::now().timestamp(), "0123");
    assert_eq!(c.send("GET", &path, None, auth).await.status, 401);
    // No authorization at all.
    let r = c.send("GET", &path, None, String::new()).await;
    assert_eq!(r.status, 401);

    sim.set_state(PLATE, "PAUSE");
    assert_eq!(
        c.call("GET", &path, None).await.body["service_state"],
        "PAUSE"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn entry_debit_and_success_notification_signed_with_the_public_key() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let parking = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    assert_eq!(parking["state"], "NORMAL");
    assert!(parking.get("block_reason").is_none());
    // Same entry again: the same parking.
    assert_eq!(
        entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await["id"],
        parking["id"]
    );

    let body = debit_body(
        "T1",
        &parking,
        800,
        &rx.url,
        now - chrono::Duration::seconds(5),
    );
    let r = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["trade_state"], "ACCEPTED");
    assert!(reply_ok(&sim, &r));

    wait_until("TRANSACTION.SUCCESS", || {
        rx.valid_events()
            .iter()
            .any(|(e, _)| e == "TRANSACTION.SUCCESS")
    })
    .await;
    let (_, res) = rx
        .valid_events()
        .into_iter()
        .find(|(e, _)| e == "TRANSACTION.SUCCESS")
        .unwrap();
    assert_eq!(res["out_trade_no"], "T1");
    assert_eq!(res["trade_state"], "SUCCESS");
    assert_eq!(res["amount"]["total"], 800);
    assert_eq!(res["payer"]["openid"], OPENID);
    assert_eq!(res["parking_info"]["parking_id"], parking["id"]);
    assert!(rx.all().iter().all(|g| g.serial == sim.public_key_id()));
    let tid = res["transaction_id"].as_str().unwrap();
    assert!(tid.starts_with("4200") && tid.len() == 28, "{tid}");

    let q = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/T1", None)
        .await;
    assert_eq!(q.body["trade_state"], "SUCCESS");
    assert!(q.body["success_time"].as_str().unwrap().ends_with("+08:00"));
    assert_eq!(sim.balance(PLATE), Some(9_200));
    assert_eq!(sim.orders()[0].debits, 1);

    // A charged parking cannot be charged again.
    let again = debit_body(
        "T2",
        &parking,
        800,
        &rx.url,
        now - chrono::Duration::seconds(5),
    );
    let r = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&again))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["code"], "INVALID_REQUEST");
    // end_time equal to start_time, and later than now, are refused.
    let p2 = entry(&c, "P-2", &rx.url, now - chrono::Duration::hours(1)).await;
    let mut bad = debit_body("T3", &p2, 100, &rx.url, now);
    bad["parking_info"]["end_time"] = p2["start_time"].clone();
    assert_eq!(
        c.call("POST", "/v3/vehicle/transactions/parking", Some(&bad))
            .await
            .status,
        400
    );
    let future = debit_body(
        "T4",
        &p2,
        100,
        &rx.url,
        Utc::now() + chrono::Duration::minutes(10),
    );
    assert_eq!(
        c.call("POST", "/v3/vehicle/transactions/parking", Some(&future))
            .await
            .status,
        400
    );
    let missing = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/NOPE", None)
        .await;
    assert_eq!(
        (missing.status, missing.body["code"].as_str()),
        (404, Some("ORDER_NOT_EXIST"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn certificate_and_migration_signing() {
    let mut o = options();
    o.sign_with = SignWith::Certificate;
    let sim = WechatSim::start(o).await.unwrap();
    assert!(sim
        .platform_certificate_pem()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let parking = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    let r = c
        .call(
            "POST",
            "/v3/vehicle/transactions/parking",
            Some(&debit_body("T1", &parking, 500, &rx.url, now)),
        )
        .await;
    assert_eq!(
        r.headers["Wechatpay-Serial"].to_str().unwrap(),
        sim.platform_serial()
    );
    let cert_key = certificate_verifier(&sim.platform_certificate_pem());
    let only_cert = vec![(sim.platform_serial(), cert_key)];
    assert!(provider_signature_ok(
        &only_cert,
        |k| r
            .headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        &r.raw
    ));
    wait_until("success", || {
        rx.valid_events()
            .iter()
            .any(|(e, _)| e == "TRANSACTION.SUCCESS")
    })
    .await;
    assert!(rx.all().iter().all(|g| g.serial == sim.platform_serial()));
    // The platform certificate download, encrypted with the APIv3 key.
    let certs = c.call("GET", "/v3/certificates", None).await;
    assert_eq!(certs.status, 200);
    let entry0 = &certs.body["data"][0];
    assert_eq!(entry0["serial_no"], sim.platform_serial().as_str());
    let pem = {
        let enc = &entry0["encrypt_certificate"];
        let cipher = Aes256Gcm::new_from_slice(APIV3.as_bytes()).unwrap();
        let ct = B64.decode(enc["ciphertext"].as_str().unwrap()).unwrap();
        let plain = cipher
            .decrypt(
                Nonce::from_slice(enc["nonce"].as_str().unwrap().as_bytes()),
                Payload {
                    msg: &ct,
                    aad: b"certificate",
                },
            )
            .unwrap();
        String::from_utf8(plain).unwrap()
    };
    assert_eq!(pem, sim.platform_certificate_pem());
    sim.shutdown().await;

    let mut o = options();
    o.sign_with = SignWith::Both;
    let sim = WechatSim::start(o).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let c = Client::new(&sim);
    let path = format!(
        "/v3/vehicle/parking/services/find?appid={APPID}&plate_number=X&plate_color=BLUE&openid=o"
    );
    let a = c.call("GET", &path, None).await;
    let b = c.call("GET", &path, None).await;
    let sa = a.headers["Wechatpay-Serial"].to_str().unwrap().to_string();
    let sb = b.headers["Wechatpay-Serial"].to_str().unwrap().to_string();
    assert_ne!(sa, sb);
    assert!(reply_ok(&sim, &a) && reply_ok(&sim, &b));
    assert_eq!(a.body["service_state"], "OUT_SERVICE");
    sim.shutdown().await;
}

#[tokio::test]
async fn insufficient_balance_fails_without_advance_and_is_advanced_with_it() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 100);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let p = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    c.call(
        "POST",
        "/v3/vehicle/transactions/parking",
        Some(&debit_body("T1", &p, 500, &rx.url, now)),
    )
    .await;
    wait_until("fail", || {
        rx.valid_events()
            .iter()
            .any(|(e, _)| e == "TRANSACTION.FAIL")
    })
    .await;
    let q = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/T1", None)
        .await;
    assert_eq!(q.body["trade_state"], "PAY_FAIL");
    assert_eq!(sim.balance(PLATE), Some(100));
    assert_eq!(sim.orders()[0].debits, 0);

    sim.set_advance(true);
    let p = entry(&c, "P-2", &rx.url, now - chrono::Duration::hours(1)).await;
    c.call(
        "POST",
        "/v3/vehicle/transactions/parking",
        Some(&debit_body("T2", &p, 500, &rx.url, now)),
    )
    .await;
    wait_until("advanced success", || {
        rx.valid_events()
            .iter()
            .any(|(e, r)| e == "TRANSACTION.SUCCESS" && r["out_trade_no"] == "T2")
    })
    .await;
    let q = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/T2", None)
        .await;
    assert_eq!(q.body["trade_state"], "SUCCESS");
    assert_eq!(q.body["bank_type"], "BPA");
    assert_eq!(q.body["user_repaid"], "N");
    assert!(sim.repay("T2"));
    assert!(!sim.repay("T2"));
    wait_until("pay back", || {
        rx.valid_events()
            .iter()
            .any(|(e, _)| e == "TRANSACTION.PAY_BACK")
    })
    .await;
    let (_, back) = rx
        .valid_events()
        .into_iter()
        .find(|(e, _)| e == "TRANSACTION.PAY_BACK")
        .unwrap();
    assert_eq!(
        (back["trade_state"].as_str(), back["user_repaid"].as_str()),
        (Some("PAY_BACK"), Some("Y"))
    );
    let q = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/T2", None)
        .await;
    assert_eq!(q.body["user_repaid"], "Y");
    let o = sim
        .orders()
        .into_iter()
        .find(|o| o.out_trade_no == "T2")
        .unwrap();
    assert_eq!((o.debits, o.user_repaid.as_deref()), (1, Some("Y")));
    sim.shutdown().await;
}

#[tokio::test]
async fn retries_are_idempotent_even_after_a_system_error() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let p = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    let body = debit_body("T1", &p, 700, &rx.url, now);
    sim.inject(Fault::ErrorAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
    });
    let r = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&body))
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body["code"], "SYSTEM_ERROR");
    let r2 = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&body))
        .await;
    assert_eq!(r2.status, 200, "{}", r2.raw);
    let r3 = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&body))
        .await;
    assert_eq!(r2.body["transaction_id"], r3.body["transaction_id"]);
    // Same out_trade_no, other parameters: refused.
    let mut other = body.clone();
    other["amount"]["total"] = json!(701);
    let r4 = c
        .call("POST", "/v3/vehicle/transactions/parking", Some(&other))
        .await;
    assert_eq!(
        (r4.status, r4.body["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    wait_until("settled", || sim.orders()[0].trade_state == "SUCCESS").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sim.orders().len(), 1);
    assert_eq!(sim.orders()[0].debits, 1);
    assert_eq!(sim.balance(PLATE), Some(9_300));

    // A slow answer still took effect.
    let p2 = entry(&c, "P-2", &rx.url, now - chrono::Duration::minutes(30)).await;
    sim.inject(Fault::SlowAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
        delay: Duration::from_millis(300),
    });
    let started = std::time::Instant::now();
    let r = c
        .call(
            "POST",
            "/v3/vehicle/transactions/parking",
            Some(&debit_body("T2", &p2, 100, &rx.url, now)),
        )
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);

    // A newer entry of the plate supersedes an open one.
    let p3 = entry(&c, "P-3", &rx.url, now - chrono::Duration::minutes(20)).await;
    let _p4 = entry(&c, "P-4", &rx.url, now - chrono::Duration::minutes(10)).await;
    let r = c
        .call(
            "POST",
            "/v3/vehicle/transactions/parking",
            Some(&debit_body("T3", &p3, 100, &rx.url, now)),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(sim
        .parkings()
        .iter()
        .any(|p| p.out_parking_no == "P-3" && p.state == "SUPERSEDED"));
    sim.shutdown().await;
}

#[tokio::test]
async fn partial_refunds_up_to_the_total() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let p = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    c.call(
        "POST",
        "/v3/vehicle/transactions/parking",
        Some(&debit_body("T1", &p, 1000, &rx.url, now)),
    )
    .await;
    wait_until("paid", || sim.orders()[0].trade_state == "SUCCESS").await;
    let refund = |no: &str, fen: i64| {
        json!({"out_trade_no": "T1", "out_refund_no": no, "reason": "超额", "notify_url": rx.url,
               "amount": {"refund": fen, "total": 1000, "currency": "CNY"}})
    };
    let r1 = c
        .call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R1", 400)),
        )
        .await;
    assert_eq!(r1.status, 200, "{}", r1.raw);
    assert_eq!(r1.body["status"], "PROCESSING");
    let r1b = c
        .call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R1", 400)),
        )
        .await;
    assert_eq!(r1.body["refund_id"], r1b.body["refund_id"]);
    let r2 = c
        .call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R2", 600)),
        )
        .await;
    assert_eq!(r2.status, 200);
    let r3 = c
        .call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R3", 1)),
        )
        .await;
    assert_eq!(
        (r3.status, r3.body["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    wait_until("two refund notifications", || {
        rx.valid_events()
            .iter()
            .filter(|(e, _)| e == "REFUND.SUCCESS")
            .count()
            == 2
    })
    .await;
    let q = c.call("GET", "/v3/refund/domestic/refunds/R2", None).await;
    assert_eq!(q.body["status"], "SUCCESS");
    assert_eq!(q.body["amount"]["refund"], 600);
    let o = c
        .call("GET", "/v3/vehicle/transactions/out-trade-no/T1", None)
        .await;
    assert_eq!(o.body["trade_state"], "REFUND");
    assert_eq!(sim.orders()[0].refunded, 1000);
    assert_eq!(sim.balance(PLATE), Some(10_000));
    let missing = c
        .call("GET", "/v3/refund/domestic/refunds/NOPE", None)
        .await;
    assert_eq!(
        (missing.status, missing.body["code"].as_str()),
        (404, Some("RESOURCE_NOT_EXISTS"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn trade_bill_readiness_format_hash_and_hooks() {
    let clock = Arc::new(Mutex::new(
        FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .with_ymd_and_hms(2026, 12, 5, 12, 0, 0)
            .unwrap()
            .with_timezone(&Utc),
    ));
    let mut o = options();
    let c2 = clock.clone();
    o.now = Arc::new(move || *c2.lock().unwrap());
    let sim = WechatSim::start(o).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let t0 = *clock.lock().unwrap();
    let p = entry(&c, "P-1", &rx.url, t0 - chrono::Duration::hours(1)).await;
    let r = c
        .call(
            "POST",
            "/v3/vehicle/transactions/parking",
            Some(&debit_body(
                "T1",
                &p,
                1234,
                &rx.url,
                t0 - chrono::Duration::minutes(1),
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    wait_until("paid", || sim.orders()[0].trade_state == "SUCCESS").await;
    let refund = json!({"out_trade_no": "T1", "out_refund_no": "R1", "amount": {"refund": 234, "total": 1234, "currency": "CNY"}});
    assert_eq!(
        c.call("POST", "/v3/refund/domestic/refunds", Some(&refund))
            .await
            .status,
        200
    );
    wait_until("refunded", || sim.refunds()[0].status == "SUCCESS").await;

    let bill_path = "/v3/bill/tradebill?bill_date=2026-12-05&bill_type=ALL";
    let r = c.call("GET", bill_path, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("NO_STATEMENT_EXIST"))
    );
    *clock.lock().unwrap() = t0 + chrono::Duration::hours(21); // 09:00 next day
    let r = c.call("GET", bill_path, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("STATEMENT_CREATING"))
    );
    *clock.lock().unwrap() = t0 + chrono::Duration::hours(22) + chrono::Duration::minutes(30);
    sim.inject(Fault::LateBill);
    assert_eq!(
        c.call("GET", bill_path, None).await.body["code"],
        "STATEMENT_CREATING"
    );
    sim.inject(Fault::BillReady);

    let cref = &c;
    let download = |r: Reply| async move {
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["hash_type"], "SHA1");
        let url = r.body["download_url"].as_str().unwrap().to_string();
        let path_q = url
            .split_once("127.0.0.1")
            .unwrap()
            .1
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap();
        let file = cref.call("GET", &path_q, None).await;
        assert_eq!(file.status, 200);
        assert!(file.headers.get("Wechatpay-Signature").is_none());
        assert_eq!(
            hex::encode(Sha1::digest(file.raw.as_bytes())),
            r.body["hash_value"].as_str().unwrap()
        );
        file.raw
    };
    let csv = download(c.call("GET", bill_path, None).await).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("交易时间,公众账号ID,商户号"));
    assert_eq!(lines.len(), 5, "{csv}");
    let row = |l: &str| {
        l.split(',')
            .map(|f| f.strip_prefix('`').expect("back-quoted").to_string())
            .collect::<Vec<_>>()
    };
    let pay = row(lines[1]);
    assert_eq!(pay[0], "2026-12-05 12:00:00");
    assert_eq!(pay[6], "T1");
    assert_eq!(pay[9], "SUCCESS");
    assert_eq!(pay[12], "12.34");
    let refund_row = row(lines[2]);
    assert_eq!(refund_row[9], "REFUND");
    assert_eq!(refund_row[15], "R1");
    assert_eq!(refund_row[16], "2.34");
    assert!(lines[3].starts_with("总交易单数"));
    let summary = row(lines[4]);
    assert_eq!(summary[0], "2");
    assert_eq!(summary[1], "12.34");
    assert_eq!(summary[2], "2.34");

    sim.bill_amount("T1", 1000);
    sim.bill_add_foreign("X-9", 555, t0 + chrono::Duration::minutes(5));
    let csv = download(c.call("GET", bill_path, None).await).await;
    assert!(csv.contains("`X-9,"));
    assert!(csv.contains("`10.00,"));
    sim.bill_omit("T1");
    let csv = download(c.call("GET", bill_path, None).await).await;
    assert!(!csv.contains("`T1,"));
    let r = c
        .call("GET", "/v3/bill/tradebill?bill_date=2026-12-01", None)
        .await;
    assert_eq!(r.body["code"], "NO_STATEMENT_EXIST");
    sim.shutdown().await;
}

#[tokio::test]
async fn notification_faults_and_probe() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 100_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let mut n = 0;
    let mut pay = |fen: i64| {
        n += 1;
        let (pno, tno) = (format!("P-{n}"), format!("T{n}"));
        let c = &c;
        let url = rx.url.clone();
        async move {
            let p = entry(c, &pno, &url, now - chrono::Duration::hours(1)).await;
            let r = c
                .call(
                    "POST",
                    "/v3/vehicle/transactions/parking",
                    Some(&debit_body(&tno, &p, fen, &url, now)),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.raw);
            tno
        }
    };

    // A bad signature first, then the retry on the (scaled) schedule.
    sim.inject(Fault::BadSignature(1));
    pay(100).await;
    wait_until("redelivered", || {
        sim.notifications().first().is_some_and(|n| n.delivered)
    })
    .await;
    let first = &sim.notifications()[0];
    assert_eq!(first.attempts, 2);
    assert_eq!(rx.all().iter().filter(|g| !g.valid).count(), 1);

    // Stale timestamp: validly signed, 10 minutes old; the receiver refuses it each time.
    sim.inject(Fault::StaleTimestamp(1));
    pay(100).await;
    wait_until("stale attempts", || {
        sim.notifications().get(1).is_some_and(|n| n.attempts >= 3)
    })
    .await;
    assert!(rx
        .all()
        .iter()
        .any(|g| !g.valid && (Utc::now().timestamp() - g.timestamp) >= 590));
    assert_eq!(sim.notifications()[1].last_status, Some(401));

    // Duplicates: same id twice.
    sim.inject(Fault::DuplicateNotifications(1));
    let t = pay(100).await;
    wait_until("duplicate", || {
        rx.valid_events()
            .iter()
            .filter(|(_, r)| r["out_trade_no"] == t.as_str())
            .count()
            == 2
    })
    .await;
    let ids: Vec<String> = rx
        .all()
        .iter()
        .filter(|g| g.valid && decrypt(&g.body["resource"])["out_trade_no"] == t.as_str())
        .map(|g| g.body["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids[0], ids[1]);

    // Dropped: never sent.
    sim.inject(Fault::DropNotifications(1));
    pay(100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.notifications()[3].attempts, 0);

    // Held, then released newest first.
    sim.inject(Fault::HoldNotifications);
    let a = pay(100).await;
    let b = pay(100).await;
    wait_until("both accepted", || sim.notifications().len() == 6).await;
    let before = rx.all().len();
    sim.release_notifications().await;
    let after: Vec<String> = rx.all()[before..]
        .iter()
        .map(|g| {
            decrypt(&g.body["resource"])["out_trade_no"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(after, vec![b, a]);

    // Probe: the receiver refuses the test signature.
    assert_eq!(sim.send_probe(&rx.url).await, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn entrance_state_change_is_notified() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 1_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let p = entry(
        &c,
        "P-1",
        &rx.url,
        Utc::now() - chrono::Duration::minutes(5),
    )
    .await;
    sim.set_state(PLATE, "OVERDUE");
    wait_until("state change", || !rx.valid_events().is_empty()).await;
    let (event, res) = rx.valid_events().remove(0);
    assert_eq!(event, "VEHICLE.ENTRANCE_STATE_CHANGE");
    assert_eq!(res["parking_id"], p["id"]);
    assert_eq!(res["parking_state"], "BLOCKED");
    assert_eq!(res["blocked_state_description"], "OVERDUE");
    let r = c
        .call(
            "POST",
            "/v3/vehicle/transactions/parking",
            Some(&debit_body("T1", &p, 100, &rx.url, Utc::now())),
        )
        .await;
    assert_eq!(r.status, 400);
    // A new entry while overdue is BLOCKED with the reason.
    let p2 = entry(
        &c,
        "P-2",
        &rx.url,
        Utc::now() - chrono::Duration::minutes(1),
    )
    .await;
    assert_eq!(
        (p2["state"].as_str(), p2["block_reason"].as_str()),
        (Some("BLOCKED"), Some("OVERDUE"))
    );
    sim.set_state(PLATE, "NORMAL");
    wait_until("back to normal", || {
        rx.valid_events()
            .iter()
            .any(|(_, r)| r["parking_state"] == "NORMAL")
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn refunds_can_end_abnormal_or_closed() {
    let sim = WechatSim::start(options()).await.unwrap();
    sim.enrol(PLATE, "BLUE", OPENID, 10_000);
    let rx = receiver(&sim).await;
    let c = Client::new(&sim);
    let now = Utc::now();
    let p = entry(&c, "P-1", &rx.url, now - chrono::Duration::hours(1)).await;
    c.call(
        "POST",
        "/v3/vehicle/transactions/parking",
        Some(&debit_body("T1", &p, 1000, &rx.url, now)),
    )
    .await;
    wait_until("paid", || sim.orders()[0].trade_state == "SUCCESS").await;
    let refund = |no: &str, fen: i64| {
        json!({"out_trade_no": "T1", "out_refund_no": no, "notify_url": rx.url,
               "amount": {"refund": fen, "total": 1000, "currency": "CNY"}})
    };
    sim.set_refund_outcome("CLOSED");
    assert_eq!(
        c.call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R1", 1000))
        )
        .await
        .status,
        200
    );
    wait_until("closed", || {
        rx.valid_events().iter().any(|(e, _)| e == "REFUND.CLOSED")
    })
    .await;
    assert_eq!(sim.orders()[0].refunded, 0);
    assert_eq!(
        c.call("GET", "/v3/vehicle/transactions/out-trade-no/T1", None)
            .await
            .body["trade_state"],
        "SUCCESS"
    );
    sim.set_refund_outcome("ABNORMAL");
    assert_eq!(
        c.call(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(&refund("R2", 1000))
        )
        .await
        .status,
        200
    );
    wait_until("abnormal", || {
        rx.valid_events()
            .iter()
            .any(|(e, r)| e == "REFUND.ABNORMAL" && r["refund_status"] == "ABNORMAL")
    })
    .await;
    assert_eq!(sim.balance(PLATE), Some(9_000));
    sim.shutdown().await;
}
