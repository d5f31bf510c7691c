//! Real money through WeChat Pay: the connector against the project's WeChat Pay simulator
//! (`firmware-sim/wechat`, written from the provider's documentation, not from the connector),
//! with the faults a deployment meets. Fees are checked against the reference tariff, debits
//! and refunds against what the simulator says moved.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use parkpay_protocol::{Clock, ManualClock, PlateColour};
use parkpay_server::config::{Secret, WechatConfig};
use parkpay_sim::reference_tariff;
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};
use parkpay_wechat_sim::{Fault, Merchant, SignWith, SimOptions, WechatSim};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::scenarios::{charges_of, fen, origin, sessions, tariff, WAIT};

const APIV3_KEY: &str = "0123456789abcdefABCDEF0123456789";
const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD2C3A4BE1";

struct Wx {
    w: World,
    clock: Arc<ManualClock>,
    sim: WechatSim,
    _keys: tempfile::TempDir,
}

fn merchant_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key")
}

/// A site deducting through the WeChat Pay simulator; `tune` adjusts the simulator and
/// `opts` the world. The server trusts both the simulator's public key and its platform
/// certificate, and the simulator signs with both in turn (a key migration in progress).
async fn wx(tune: impl FnOnce(&mut SimOptions), opts: impl FnOnce(&mut WorldOptions)) -> Wx {
    let clock = Arc::new(ManualClock::new(origin()));
    let key = merchant_key();
    let mut o = SimOptions::new(Merchant {
        mchid: "1900000109".into(),
        appid: "wxd678efh567hg6787".into(),
        merchant_serial: MERCHANT_SERIAL.into(),
        merchant_public_key_pem: key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM"),
        apiv3_key: APIV3_KEY.into(),
    });
    o.sign_with = SignWith::Both;
    o.notify_retry_scale = 0.01;
    o.deduct_after = Duration::from_millis(50);
    let c = clock.clone();
    o.now = Arc::new(move || c.now());
    tune(&mut o);
    let sim = WechatSim::start(o).await.expect("the simulator starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("key file written");
        p
    };
    let config = WechatConfig {
        base_url: sim.base_url(),
        mchid: "1900000109".into(),
        appid: "wxd678efh567hg6787".into(),
        merchant_serial: MERCHANT_SERIAL.into(),
        merchant_private_key_file: write(
            "apiclient_key.pem",
            &key.to_pkcs8_pem(LineEnding::LF).expect("PEM"),
        ),
        apiv3_key: Some(Secret::new(APIV3_KEY)),
        apiv3_key_file: None,
        public_key_file: Some(write("pub_key.pem", &sim.public_key_pem())),
        public_key_id: Some(sim.public_key_id()),
        platform_certificate_file: Some(write(
            "platform_cert.pem",
            &sim.platform_certificate_pem(),
        )),
        notify_url: "/api/providers/wechat/notify".into(),
        timeout_ms: 2000,
        service_cache_secs: 60,
    };
    let mut options = WorldOptions {
        wechat: Some(config),
        ..WorldOptions::default()
    };
    opts(&mut options);
    let w = World::start(options, clock.clone()).await;
    Wx {
        w,
        clock,
        sim,
        _keys: dir,
    }
}

impl Wx {
    /// A driver with `plate` who turned on WeChat Pay's parking service with `balance` fen.
    async fn driver(&self, plate: &str, balance: i64) -> String {
        let openid = format!("o{}", Uuid::new_v4().simple());
        let driver = self
            .w
            .api
            .create_driver(&format!("driver of {plate}"), "13800000000")
            .await
            .expect("driver created");
        self.w
            .api
            .add_vehicle(driver, plate, PlateColour::Blue)
            .await
            .expect("vehicle bound");
        let r = self
            .w
            .client
            .post(self.w.url(&format!("/api/drivers/{driver}/mandates")))
            .json(&json!({ "provider": "wechat", "provider_ref": openid }))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        self.sim.enrol(plate, "BLUE", &openid, balance);
        openid
    }

    /// In at in-1, `minutes` later out at out-1; returns the session and the fee the
    /// reference tariff gives for the stay the simulated cameras saw.
    async fn stay(&self, plate: &str, minutes: i64) -> (Value, i64, bool) {
        let entry = self.w.pass("in-1", plate, WAIT).await;
        assert!(entry.opened, "{plate} enters");
        // The parking entry is registered with the provider off the barrier's time.
        eventually(
            "the stay to be registered with WeChat Pay",
            WAIT,
            || async {
                self.sim
                    .parkings()
                    .iter()
                    .any(|p| p.plate == plate && p.state != "CHARGED")
                    .then_some(())
            },
        )
        .await;
        self.clock.advance(chrono::Duration::minutes(minutes));
        let exit = self.w.pass("out-1", plate, WAIT).await;
        let fee = reference_tariff::fee(
            &tariff(),
            entry.capture.captured_at,
            exit.capture.captured_at,
        );
        let s = sessions(&self.w, plate).await;
        (s[0].clone(), fee, exit.opened)
    }

    async fn charge(&self, session: &Value) -> Value {
        charges_of(&self.w, session["id"].as_str().unwrap())
            .await
            .first()
            .cloned()
            .expect("the stay has a charge")
    }

    async fn charge_reaches(&self, session: &Value, status: &str) -> Value {
        eventually(&format!("the charge to be {status}"), WAIT, || async {
            let c = self.charge(session).await;
            (c["status"] == status).then_some(c)
        })
        .await
    }

    fn order(&self, key: &str) -> parkpay_wechat_sim::OrderView {
        self.sim
            .orders()
            .into_iter()
            .find(|o| o.out_trade_no == key)
            .unwrap_or_else(|| panic!("WeChat Pay has no order {key}"))
    }

    /// How many open exceptions name this charge.
    async fn open_exceptions_of(&self, charge: &str) -> usize {
        self.w
            .get_json(&format!("/api/exceptions?lot={}&open=true", self.w.lot))
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["charge_id"].as_str() == Some(charge))
            .count()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .w
            .client
            .post(self.w.url(path))
            .json(&body)
            .send()
            .await
            .expect("answered");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.w.stop().await;
        self.sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_mandated_exit_is_deducted_through_wechat_pay_once_and_settled_by_its_notification() {
    let x = wx(|_| {}, |_| {}).await;
    x.driver("京A60001", 50_000).await;
    let (session, fee, opened) = x.stay("京A60001", 130).await;
    assert!(opened, "a mandated car drives out without stopping");
    assert_eq!(fee, 1400);
    let c = x.charge_reaches(&session, "succeeded").await;
    assert_eq!(fen(&c["amount"]), fee);
    let key = c["idempotency_key"].as_str().unwrap();
    let order = x.order(key);
    assert_eq!((order.amount, order.debits), (fee, 1), "{order:?}");
    assert_eq!(order.trade_state, "SUCCESS");
    assert_eq!(
        c["provider_txn"].as_str(),
        Some(order.transaction_id.as_str())
    );
    assert_eq!(x.sim.balance("京A60001"), Some(50_000 - fee));
    // The parking entry carries our number for the stay and is now charged.
    let session_no = Uuid::parse_str(session["id"].as_str().unwrap())
        .unwrap()
        .simple()
        .to_string();
    assert!(x
        .sim
        .parkings()
        .iter()
        .any(|p| p.out_parking_no == session_no));
    // Every notification was delivered and believed (signed by either identity).
    eventually("the notifications to be delivered", WAIT, || async {
        x.sim
            .notifications()
            .iter()
            .all(|n| n.delivered)
            .then_some(())
    })
    .await;
    x.stop().await;
}

#[tokio::test]
async fn insufficient_balance_is_arrears_without_an_advance_and_paid_back_later_with_one() {
    let x = wx(|_| {}, |_| {}).await;
    // No advance: WeChat Pay cannot deduct, the stay becomes a debt with an exception, and
    // paying the debt closes the exception.
    x.driver("京A60002", 0).await;
    let (s1, fee1, _) = x.stay("京A60002", 130).await;
    let debt = x.charge_reaches(&s1, "arrears").await;
    assert_eq!(fen(&debt["amount"]), fee1);
    let debt_id = debt["id"].as_str().unwrap().to_string();
    assert_eq!(x.open_exceptions_of(&debt_id).await, 1);
    let (status, paid) = x
        .post(
            &format!("/api/charges/{debt_id}/cash"),
            json!({ "amount": { "minor": fee1, "currency": "CNY" } }),
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(
        x.open_exceptions_of(&debt_id).await,
        0,
        "a paid debt closes its exception"
    );

    // With an advance (垫资) the lot is paid at once; the driver owes WeChat Pay until paying
    // it back.
    x.sim.set_advance(true);
    x.driver("京A60003", 0).await;
    let (s2, fee2, opened) = x.stay("京A60003", 90).await;
    assert!(opened);
    let c = x.charge_reaches(&s2, "succeeded").await;
    assert_eq!(fen(&c["amount"]), fee2);
    assert_eq!(c["advanced"], true, "{c}");
    let key = c["idempotency_key"].as_str().unwrap().to_string();
    assert_eq!(x.order(&key).bank_type.as_deref(), Some("BPA"));
    assert!(x.sim.repay(&key));
    eventually("the pay-back to be recorded", WAIT, || async {
        (x.charge(&s2).await["advanced"] == false).then_some(())
    })
    .await;
    assert_eq!(x.order(&key).debits, 1);
    x.stop().await;
}

/// A notification as WeChat Pay sends it, encrypted with the APIv3 key but signed with `key`.
fn forged_notification(
    key: &rsa::RsaPrivateKey,
    serial: &str,
    resource: &Value,
) -> (Vec<(String, String)>, String) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let b64 = base64::engine::general_purpose::STANDARD;
    let nonce = "abcdefghijkl";
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(APIV3_KEY.as_bytes()).unwrap();
    let ct = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: resource.to_string().as_bytes(),
                aad: b"transaction",
            },
        )
        .unwrap();
    let body = json!({
        "id": Uuid::new_v4().to_string(),
        "create_time": "2026-11-25T10:00:00+08:00",
        "event_type": "TRANSACTION.FAIL",
        "resource_type": "encrypt-resource",
        "summary": "支付失败",
        "resource": {
            "algorithm": "AEAD_AES_256_GCM", "ciphertext": b64.encode(ct),
            "associated_data": "transaction", "original_type": "transaction", "nonce": nonce,
        }
    })
    .to_string();
    let ts = Utc::now().timestamp().to_string();
    let sig_nonce = "forgednonce0001";
    let signer = SigningKey::<sha2::Sha256>::new(key.clone());
    let signature = b64.encode(
        signer
            .sign(format!("{ts}\n{sig_nonce}\n{body}\n").as_bytes())
            .to_bytes(),
    );
    (
        vec![
            ("Wechatpay-Timestamp".into(), ts),
            ("Wechatpay-Nonce".into(), sig_nonce.into()),
            ("Wechatpay-Signature".into(), signature),
            ("Wechatpay-Serial".into(), serial.into()),
            (
                "Wechatpay-Signature-Type".into(),
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
        ],
        body,
    )
}

#[tokio::test]
async fn duplicate_notifications_change_nothing_and_forged_stale_or_probe_ones_are_refused() {
    let x = wx(|o| o.sign_with = SignWith::PublicKey, |_| {}).await;
    // The first delivery is badly signed (refused), the retry is believed, and then it comes
    // again (a duplicate: nothing changes).
    x.sim.inject(Fault::BadSignature(1));
    x.sim.inject(Fault::DuplicateNotifications(1));
    x.driver("京A60004", 50_000).await;
    let (session, fee, _) = x.stay("京A60004", 130).await;
    let c = x.charge_reaches(&session, "succeeded").await;
    let key = c["idempotency_key"].as_str().unwrap().to_string();
    assert_eq!(x.order(&key).debits, 1);
    let metrics = eventually("the duplicate to be answered", WAIT, || async {
        let m = x.w.metrics().await;
        m.contains("parkpay_provider_notifications_total{status=\"duplicate\"}")
            .then_some(m)
    })
    .await;
    assert!(
        metrics.contains("parkpay_provider_notifications_total{status=\"refused\"}"),
        "{metrics}"
    );
    assert_eq!(
        x.sim.balance("京A60004"),
        Some(50_000 - fee),
        "one debit, whatever was resent"
    );

    // A notification signed ten minutes ago is refused however often it comes: the charge
    // learns its result by asking.
    x.sim.inject(Fault::StaleTimestamp(1));
    x.driver("京A60014", 50_000).await;
    let (stale, _, _) = x.stay("京A60014", 130).await;
    let accepted = x.charge_reaches(&stale, "accepted").await;
    let stale_key = accepted["idempotency_key"].as_str().unwrap().to_string();
    eventually(
        "the stale notification to be refused twice",
        WAIT,
        || async {
            x.sim
                .notifications()
                .iter()
                .any(|n| n.attempts >= 2 && !n.delivered && n.last_status == Some(401))
                .then_some(())
        },
    )
    .await;
    assert_eq!(x.charge(&stale).await["status"], "accepted");
    x.clock.advance(chrono::Duration::seconds(61));
    x.charge_reaches(&stale, "succeeded").await;
    assert_eq!(x.order(&stale_key).debits, 1);

    // A notification signed with another key, claiming the paid trade failed: refused, and
    // the charge stays paid.
    let (headers, body) = forged_notification(
        &merchant_key(),
        &x.sim.public_key_id(),
        &json!({ "out_trade_no": key, "trade_state": "PAY_FAIL", "amount": { "total": fee } }),
    );
    let mut rq =
        x.w.client
            .post(x.w.url("/api/providers/wechat/notify"))
            .body(body);
    for (k, v) in headers {
        rq = rq.header(k, v);
    }
    let r = rq.send().await.unwrap();
    assert_eq!(r.status(), 401);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["code"], "FAIL", "{answer}");
    // A signature probe is refused as WeChat Pay requires.
    let probe = x
        .sim
        .send_probe(x.w.url("/api/providers/wechat/notify").as_str())
        .await;
    assert!(
        !(200..300).contains(&probe),
        "a probe must not be accepted: {probe}"
    );
    let after = x.charge(&session).await;
    assert_eq!(after["status"], "succeeded");
    assert_eq!(fen(&after["refunded"]), 0);
    x.stop().await;
}

#[tokio::test]
async fn a_lost_notification_is_recovered_by_polling_the_order() {
    let x = wx(|_| {}, |o| o.accepted_poll_secs = 30.0).await;
    x.sim.inject(Fault::DropNotifications(1));
    x.driver("京A60005", 50_000).await;
    let (session, fee, _) = x.stay("京A60005", 130).await;
    let c = x.charge_reaches(&session, "accepted").await;
    let key = c["idempotency_key"].as_str().unwrap().to_string();
    eventually("WeChat Pay to deduct", WAIT, || async {
        (x.order(&key).trade_state == "SUCCESS").then_some(())
    })
    .await;
    // Its notification is lost: the charge waits, then asks.
    assert_eq!(x.charge(&session).await["status"], "accepted");
    x.clock.advance(chrono::Duration::seconds(31));
    let c = x.charge_reaches(&session, "succeeded").await;
    assert_eq!(fen(&c["amount"]), fee);
    assert_eq!(x.order(&key).debits, 1);
    x.stop().await;
}

#[tokio::test]
async fn a_server_error_after_the_deduction_took_effect_is_retried_without_a_second_debit() {
    let x = wx(|_| {}, |o| o.retry_base_secs = 10.0).await;
    // The answer is lost and so is the notification: only the retry can tell.
    x.sim.inject(Fault::DropNotifications(1));
    x.sim.inject(Fault::ErrorAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
    });
    x.driver("京A60006", 50_000).await;
    let (session, fee, opened) = x.stay("京A60006", 130).await;
    assert!(opened);
    let failed = x.charge_reaches(&session, "failed").await;
    assert!(
        failed["last_error"].as_str().unwrap_or("").contains("500"),
        "{failed}"
    );
    x.clock.advance(chrono::Duration::seconds(11));
    let c = x.charge_reaches(&session, "succeeded").await;
    let key = c["idempotency_key"].as_str().unwrap().to_string();
    let order = x.order(&key);
    assert_eq!((order.debits, order.amount), (1, fee), "{order:?}");
    assert_eq!(x.sim.balance("京A60006"), Some(50_000 - fee));

    // The same with an answer that comes after our timeout (2 s here).
    x.sim.inject(Fault::DropNotifications(1));
    x.sim.inject(Fault::SlowAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
        delay: Duration::from_secs(4),
    });
    x.driver("京A60016", 50_000).await;
    let (slow, fee, _) = x.stay("京A60016", 130).await;
    let failed = x.charge_reaches(&slow, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("transactions/parking"),
        "{failed}"
    );
    x.clock.advance(chrono::Duration::seconds(11));
    let c = x.charge_reaches(&slow, "succeeded").await;
    let order = x.order(c["idempotency_key"].as_str().unwrap());
    assert_eq!((order.debits, order.amount), (1, fee), "{order:?}");
    x.stop().await;
}

#[tokio::test]
async fn a_last_attempt_whose_answer_was_lost_asks_about_the_order_before_any_arrears() {
    let x = wx(
        |_| {},
        |o| {
            o.max_attempts = 1;
            o.retry_base_secs = 10.0;
            o.accepted_poll_secs = 5.0;
        },
    )
    .await;
    // The only attempt takes effect and its answer is lost, and so is the notification.
    x.sim.inject(Fault::DropNotifications(1));
    x.sim.inject(Fault::ErrorAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
    });
    x.driver("京A60026", 50_000).await;
    let (session, fee, opened) = x.stay("京A60026", 130).await;
    assert!(opened);
    // Asked about, the order shows the debit: never arrears.
    let asked = eventually("the charge to be asked about", WAIT, || async {
        let c = x.charge(&session).await;
        (c["status"] != "pending").then_some(c)
    })
    .await;
    assert!(
        asked["status"] == "accepted" || asked["status"] == "succeeded",
        "{asked}"
    );
    x.clock.advance(chrono::Duration::seconds(6));
    let c = x.charge_reaches(&session, "succeeded").await;
    let order = x.order(c["idempotency_key"].as_str().unwrap());
    assert_eq!((order.debits, order.amount), (1, fee), "{order:?}");
    assert_eq!(x.open_exceptions_of(c["id"].as_str().unwrap()).await, 0);

    // The order cannot be asked about either: the outcome is unknown, so no arrears; the charge
    // is tried again under its key and collected once.
    x.sim.inject(Fault::DropNotifications(1));
    x.sim.inject(Fault::ErrorAfterEffect {
        path: "/v3/vehicle/transactions/parking".into(),
        n: 1,
    });
    x.sim.inject(Fault::ErrorAfterEffect {
        path: "/v3/vehicle/transactions/out-trade-no".into(),
        n: 1,
    });
    x.driver("京A60036", 50_000).await;
    let (unknown, fee, _) = x.stay("京A60036", 130).await;
    let failed = x.charge_reaches(&unknown, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("outcome unknown"),
        "{failed}"
    );
    assert_eq!(
        x.open_exceptions_of(failed["id"].as_str().unwrap()).await,
        0
    );
    x.clock.advance(chrono::Duration::seconds(11));
    let asked = eventually("the charge to be tried again", WAIT, || async {
        let c = x.charge(&unknown).await;
        (c["status"] == "accepted" || c["status"] == "succeeded").then_some(c)
    })
    .await;
    x.clock.advance(chrono::Duration::seconds(6));
    let c = x.charge_reaches(&unknown, "succeeded").await;
    assert_eq!(c["id"], asked["id"]);
    let order = x.order(c["idempotency_key"].as_str().unwrap());
    assert_eq!((order.debits, order.amount), (1, fee), "{order:?}");
    assert_eq!(x.sim.balance("京A60036"), Some(50_000 - fee));
    x.stop().await;
}

#[tokio::test]
async fn two_partial_refunds_go_back_and_a_third_beyond_the_charge_is_refused() {
    let x = wx(|_| {}, |_| {}).await;
    x.driver("京A60007", 50_000).await;
    let (session, fee, _) = x.stay("京A60007", 130).await;
    let c = x.charge_reaches(&session, "succeeded").await;
    let id = c["id"].as_str().unwrap().to_string();
    let path = format!("/api/charges/{id}/refunds");
    let money = |m: i64| json!({ "minor": m, "currency": "CNY" });
    let (s1, r1) = x
        .post(
            &path,
            json!({ "amount": money(500), "reason": "barrier fault", "out_refund_no": "R1-test" }),
        )
        .await;
    assert_eq!(s1, 201, "{r1}");
    // The same request again is the same refund: nothing more goes back.
    let (s1b, r1b) = x
        .post(
            &path,
            json!({ "amount": money(500), "reason": "barrier fault", "out_refund_no": "R1-test" }),
        )
        .await;
    assert_eq!((s1b, &r1b["id"]), (201, &r1["id"]), "{r1b}");
    let (s2, r2) = x
        .post(
            &path,
            json!({ "amount": money(fee - 500), "reason": "goodwill" }),
        )
        .await;
    assert_eq!(s2, 201, "{r2}");
    let (s3, r3) = x
        .post(&path, json!({ "amount": money(1), "reason": "one more" }))
        .await;
    assert_eq!(s3, 409, "{r3}");
    assert!(
        r3["message"]
            .as_str()
            .unwrap()
            .contains("more than the charge took"),
        "{r3}"
    );
    eventually("both refunds to succeed", WAIT, || async {
        let rs = x.w.get_json(&path).await;
        let rs = rs.as_array().unwrap();
        (rs.len() == 2 && rs.iter().all(|r| r["status"] == "succeeded")).then_some(())
    })
    .await;
    let theirs = x.sim.refunds();
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert_eq!(theirs.iter().map(|r| r.amount).sum::<i64>(), fee);
    assert_eq!(
        x.sim.balance("京A60007"),
        Some(50_000),
        "every fen went back, once"
    );
    assert_eq!(fen(&x.charge(&session).await["refunded"]), fee);
    x.stop().await;
}

#[tokio::test]
async fn a_stay_wechat_pay_will_not_deduct_is_held_at_the_exit_and_says_why() {
    let x = wx(|_| {}, |_| {}).await;
    x.driver("京A60008", 50_000).await;
    x.sim.set_state("京A60008", "PAUSE");
    let (session, _, opened) = x.stay("京A60008", 130).await;
    assert!(!opened, "no deduction: the car is asked to pay");
    let c = x.charge(&session).await;
    assert_eq!(c["status"], "awaiting_payment");
    let line2 =
        x.w.rig("out-1")
            .display()
            .watch()
            .borrow()
            .text
            .line2
            .clone();
    assert_eq!(line2, "Deduction paused: scan to pay");
    let detail =
        x.w.get_json(&format!(
            "/api/sessions/{}",
            session["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(detail["provider_parking"]["state"], "blocked", "{detail}");
    assert_eq!(
        detail["provider_parking"]["block_reason"], "PAUSE",
        "{detail}"
    );
    assert!(x.sim.orders().is_empty(), "nothing was sent to be deducted");

    // A car that entered while the service was on, whose driver paused it while parked:
    // WeChat Pay says so (VEHICLE.ENTRANCE_STATE_CHANGE), and the exit is held too.
    x.driver("京A60009", 50_000).await;
    assert!(x.w.pass("in-1", "京A60009", WAIT).await.opened);
    let inside = sessions(&x.w, "京A60009").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("the stay to be registered as normal", WAIT, || async {
        let s = x.w.get_json(&format!("/api/sessions/{inside}")).await;
        (s["provider_parking"]["state"] == "normal").then_some(())
    })
    .await;
    x.sim.set_state("京A60009", "PAUSE");
    eventually("the state change to arrive", WAIT, || async {
        let s = x.w.get_json(&format!("/api/sessions/{inside}")).await;
        (s["provider_parking"]["state"] == "blocked").then_some(())
    })
    .await;
    x.clock.advance(chrono::Duration::minutes(60));
    let out = x.w.pass("out-1", "京A60009", WAIT).await;
    assert!(!out.opened, "held: WeChat Pay will not deduct");
    assert!(x.sim.orders().is_empty());
    x.stop().await;
}

#[tokio::test]
async fn reconciliation_finds_each_kind_of_difference_with_the_bill() {
    let x = wx(|_| {}, |_| {}).await;
    let mut keys = Vec::new();
    for plate in ["京A60011", "京A60012", "京A60013"] {
        x.driver(plate, 50_000).await;
        let (session, _, _) = x.stay(plate, 70).await;
        let c = x.charge_reaches(&session, "succeeded").await;
        keys.push((c["idempotency_key"].as_str().unwrap().to_string(), c));
    }
    let (matched, omitted, altered) = (&keys[0], &keys[1], &keys[2]);
    let refund_path = format!("/api/charges/{}/refunds", matched.1["id"].as_str().unwrap());
    let (s, _) = x
        .post(&refund_path, json!({ "amount": { "minor": 100, "currency": "CNY" }, "reason": "test", "out_refund_no": "RECON-R1" }))
        .await;
    assert_eq!(s, 201);
    eventually("the refund to succeed", WAIT, || async {
        (x.w.get_json(&refund_path).await[0]["status"] == "succeeded").then_some(())
    })
    .await;
    x.sim.bill_omit(&omitted.0);
    x.sim.bill_amount(&altered.0, 1);
    let day: DateTime<Utc> = x.clock.now();
    x.sim
        .bill_add_foreign("FOREIGN0000000000000000000000001", 777, day);
    let date = (day + chrono::Duration::hours(8)).date_naive().to_string();

    // Before 10:00 the next day, the bill is not out.
    x.sim.inject(Fault::LateBill);
    let (s, early) = x
        .post("/api/reconciliations", json!({ "date": date }))
        .await;
    assert_eq!(
        (s, early["status"].as_str()),
        (201, Some("not_ready")),
        "{early}"
    );
    x.sim.inject(Fault::BillReady);
    x.clock.advance(chrono::Duration::hours(26));
    let (s, run) = x
        .post("/api/reconciliations", json!({ "date": date }))
        .await;
    assert_eq!((s, run["status"].as_str()), (201, Some("done")), "{run}");
    let report =
        x.w.get_json(&format!(
            "/api/reconciliations/{}",
            run["id"].as_str().unwrap()
        ))
        .await;
    let kind_of = |reference: &str| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == reference)
            .map(|i| i["kind"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{reference} is not in the report: {report}"))
    };
    assert_eq!(kind_of(&matched.0), "matched");
    assert_eq!(kind_of("RECON-R1"), "matched");
    assert_eq!(kind_of(&omitted.0), "missing_at_provider");
    assert_eq!(kind_of(&altered.0), "amount_differs");
    assert_eq!(kind_of("FOREIGN0000000000000000000000001"), "missing_here");
    assert_eq!(report["differences"], 3, "{report}");
    let csv =
        x.w.client
            .get(x.w.url(&format!(
                "/api/reconciliations/{}/csv",
                run["id"].as_str().unwrap()
            )))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(csv.starts_with("bill_date,kind,"), "{csv}");
    assert!(
        csv.contains(&format!("amount_differs,trade,{}", altered.0)),
        "{csv}"
    );
    assert!(
        csv.contains("missing_here,trade,FOREIGN0000000000000000000000001,,,7.77"),
        "{csv}"
    );
    x.stop().await;
}

#[tokio::test]
async fn notifications_out_of_order_leave_the_latest_truth() {
    let x = wx(|o| o.sign_with = SignWith::Certificate, |_| {}).await;
    x.sim.set_advance(true);
    x.sim.inject(Fault::HoldNotifications);
    x.driver("京A60021", 0).await;
    let (session, _, opened) = x.stay("京A60021", 130).await;
    assert!(opened);
    let c = x.charge_reaches(&session, "accepted").await;
    let key = c["idempotency_key"].as_str().unwrap().to_string();
    eventually("WeChat Pay to advance the money", WAIT, || async {
        (x.order(&key).trade_state == "SUCCESS").then_some(())
    })
    .await;
    assert!(x.sim.repay(&key));
    // The pay-back arrives before the success it follows.
    x.sim.release_notifications().await;
    let c = x.charge_reaches(&session, "succeeded").await;
    eventually("both notifications to be delivered", WAIT, || async {
        let n = x.sim.notifications();
        (n.len() >= 2 && n.iter().all(|n| n.delivered)).then_some(())
    })
    .await;
    let after = x.charge(&session).await;
    assert_eq!(
        after["advanced"], false,
        "repaid stays repaid: {after} (was {c})"
    );
    assert_eq!(x.order(&key).debits, 1);
    x.stop().await;
}

#[tokio::test]
async fn an_answer_signed_by_a_key_we_do_not_trust_is_not_believed() {
    // We trust only WeChat Pay's public key; the answers come signed by the certificate.
    let x = wx(
        |o| o.sign_with = SignWith::Certificate,
        |w| {
            if let Some(c) = w.wechat.as_mut() {
                c.platform_certificate_file = None;
            }
        },
    )
    .await;
    x.driver("京A60022", 50_000).await;
    assert!(x.w.pass("in-1", "京A60022", WAIT).await.opened);
    x.clock.advance(chrono::Duration::minutes(130));
    let out = x.w.pass("out-1", "京A60022", WAIT).await;
    assert!(out.opened, "the barrier does not wait for the provider");
    let session = sessions(&x.w, "京A60022").await[0].clone();
    let c = x.charge_reaches(&session, "failed").await;
    assert!(
        c["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("not verified"),
        "{c}"
    );
    assert!(
        x.sim.orders().is_empty(),
        "nothing was deducted on the word of an unverified answer"
    );
    x.stop().await;
}

/// The money desk as finance: a debt is retried (once more refused: still one exception),
/// then waived with a reason, which resolves its exception; an operator may do neither; a fee
/// held at the exit is waived and the barrier opens.
#[tokio::test]
async fn the_money_desk_retries_and_waives_debts_and_a_waived_held_fee_opens_the_barrier() {
    let x = wx(|_| {}, |_| {}).await;
    let finance = authorised(&x.w, "finance").await;
    let operator = authorised(&x.w, "operator").await;
    x.driver("京A60023", 0).await;
    let (session, _, _) = x.stay("京A60023", 130).await;
    let debt = x.charge_reaches(&session, "arrears").await;
    let id = debt["id"].as_str().unwrap().to_string();
    let post = |c: &reqwest::Client, path: String, body: Value| {
        let rq = c.post(x.w.url(&path)).json(&body);
        async move {
            let r = rq.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, _) = post(
        &operator,
        format!("/api/charges/{id}/waive"),
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(s, 403, "an operator does not run the money desk");
    let (s, r) = post(&finance, format!("/api/charges/{id}/retry"), json!({})).await;
    assert_eq!(s, 200, "{r}");
    // WeChat Pay answers the same order again (PAY_FAIL): a debt once more, one exception.
    eventually("the retry to end in arrears again", WAIT, || async {
        let c = x.charge(&session).await;
        (c["status"] == "arrears" && c["attempts"].as_i64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    assert_eq!(
        x.open_exceptions_of(&id).await,
        1,
        "a debt has one open exception"
    );
    let (s, blank) = post(
        &finance,
        format!("/api/charges/{id}/waive"),
        json!({"reason": "  "}),
    )
    .await;
    assert_eq!(s, 422, "{blank}");
    let (s, waived) = post(
        &finance,
        format!("/api/charges/{id}/waive"),
        json!({"reason": "barrier fault"}),
    )
    .await;
    assert_eq!(
        (s, waived["status"].as_str()),
        (200, Some("waived")),
        "{waived}"
    );
    assert_eq!(
        x.open_exceptions_of(&id).await,
        0,
        "a waived debt closes its exception"
    );
    let audit = x.w.get_json("/api/audit?limit=50").await.to_string();
    assert!(
        audit.contains("charge.waived") && audit.contains("barrier fault"),
        "{audit}"
    );

    // A blocked stay is held at the exit; waiving its fee lets the car out.
    x.driver("京A60024", 50_000).await;
    x.sim.set_state("京A60024", "PAUSE");
    x.w.pass("in-1", "京A60024", WAIT).await;
    x.clock.advance(chrono::Duration::minutes(90));
    let rig = x.w.rig("out-1");
    let vehicle = parkpay_sim::rig::Vehicle {
        plate: "京A60024".parse().unwrap(),
        colour: PlateColour::Blue,
    };
    let mut p = rig.arrive(&vehicle).await.unwrap();
    assert!(
        matches!(
            p.wait(WAIT).await,
            parkpay_sim::rig::Waited::PayRequested { .. }
        ),
        "held for payment"
    );
    let held = sessions(&x.w, "京A60024").await[0].clone();
    let cid = x.charge(&held).await["id"].as_str().unwrap().to_string();
    let (s, w) = post(
        &finance,
        format!("/api/charges/{cid}/waive"),
        json!({"reason": "deduction paused, driver is staff"}),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert!(
        p.wait_open(WAIT).await,
        "the barrier opens once the fee is waived"
    );
    p.drive_through().await.unwrap();
    x.stop().await;
}

/// A client with a fresh token of `role` on every lot.
async fn authorised(w: &World, role: &str) -> reqwest::Client {
    let (_, token) = w
        .app()
        .create_token(
            &format!("{role}-{}", Uuid::new_v4().simple()),
            parkpay_server::domain::Grant {
                role: parkpay_server::domain::Role::parse(role).expect("a role"),
                lots: None,
            },
            "tests",
        )
        .await
        .expect("a token");
    parkpay_tests::world::authorised_client(&token)
}

/// Whatever is posted to the notification address, with or without WeChat Pay's headers, is
/// answered 4xx with WeChat Pay's error shape, and nothing moves.
#[tokio::test]
async fn hostile_notifications_get_a_4xx_and_change_nothing() {
    use rand::{Rng, SeedableRng};
    let x = wx(|_| {}, |_| {}).await;
    x.driver("京A60025", 50_000).await;
    let (session, _, _) = x.stay("京A60025", 130).await;
    let before = x.charge_reaches(&session, "succeeded").await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let now = Utc::now().timestamp();
    for case in 0..120 {
        let body: Vec<u8> = match case % 4 {
            0 => (0..rng.gen_range(0..400)).map(|_| rng.gen()).collect(),
            1 => json!({ "id": "x", "event_type": "TRANSACTION.SUCCESS", "resource": { "algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA", "nonce": "abcdefghijkl", "associated_data": "" } }).to_string().into_bytes(),
            2 => b"{}".to_vec(),
            _ => json!({ "id": rng.gen::<u64>().to_string(), "event_type": "REFUND.SUCCESS" }).to_string().into_bytes(),
        };
        let mut rq =
            x.w.client
                .post(x.w.url("/api/providers/wechat/notify"))
                .body(body);
        if case % 2 == 0 {
            let ts = match case % 8 {
                0 => now.to_string(),
                2 => "not a number".into(),
                4 => (now - 3600).to_string(),
                6 => i64::MIN.to_string(),
                _ => i64::MAX.to_string(),
            };
            rq = rq
                .header("Wechatpay-Timestamp", ts)
                .header("Wechatpay-Nonce", "n")
                .header(
                    "Wechatpay-Signature",
                    if case % 6 == 0 {
                        "WECHATPAY/SIGNTEST/abc"
                    } else {
                        "!!notbase64"
                    },
                )
                .header(
                    "Wechatpay-Serial",
                    if case % 3 == 0 {
                        x.sim.public_key_id()
                    } else {
                        "0".into()
                    },
                );
        }
        let r = rq.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "case {case}: {status} {v}");
        assert_eq!(v["code"], "FAIL", "case {case}: {v}");
    }
    let after = x.charge(&session).await;
    assert_eq!(
        (after["status"].clone(), after["refunded"].clone()),
        (before["status"].clone(), before["refunded"].clone())
    );
    x.stop().await;
}
