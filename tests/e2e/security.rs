//! Nobody speaks for anyone else: what an attacker on the same network tried, each shown to fail
//! now. Forged and replayed barrier commands, forged allowlists and a spoofed gateway, events
//! signed by the wrong gateway, forged payments, plate corrections and every HTTP write without
//! an identity or the role for it, cheap requests that cost the lanes, and input that once got
//! a 500.

use std::sync::Arc;

use parkpay_protocol::{
    encode, Allowlist, ArmPosition, BarrierAction, Decision, DecisionReason, Direction,
    DisplayText, EventId, GatewayStatus, LaneAction, LaneId, ManualClock, OperatorCommand,
    ReadQuality, Topic,
};
use parkpay_server::domain::{Grant, Role};
use parkpay_tests::eventually;
use parkpay_tests::world::{authorised_client, World, WorldOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::scenarios::{origin, publish, publish_raw, raw_event, sessions, WAIT};
use crate::trust::dead_letter_on;

async fn world() -> (World, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(origin()));
    (
        World::start(WorldOptions::default(), clock.clone()).await,
        clock,
    )
}

/// A client holding a fresh API token of this role (on these lots, or all).
pub(crate) async fn client_as(w: &World, role: Role, lots: Option<Vec<String>>) -> reqwest::Client {
    let lots = lots.map(|l| {
        l.into_iter()
            .map(|s| parkpay_protocol::LotId::parse(s).unwrap())
            .collect()
    });
    let (_, token) = w
        .app()
        .create_token(&format!("t-{role}"), Grant { role, lots }, "tests")
        .await
        .unwrap();
    authorised_client(&token)
}

/// Counts of what the gateway refused, by reason.
fn rejected(w: &World, reason: &str) -> u64 {
    w.gateway()
        .counters()
        .rejected
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Subscribes to a topic; what arrives there comes out of the receiver.
async fn capture(w: &World, topic: &str) -> mpsc::UnboundedReceiver<Vec<u8>> {
    let mut opts = parkpay_server::mqtt::options(
        &w.backend.mqtt_url,
        &format!("t-sub-{}", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    opts.set_clean_session(true);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe(topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = el.poll().await {
            match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))
                    if tx.send(p.payload.to_vec()).is_err() =>
                {
                    return;
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, subscribed_rx)
        .await
        .expect("the broker acknowledges the subscription")
        .unwrap();
    rx
}

fn decision_for(w: &World, lane: &str, event: EventId) -> Decision {
    Decision {
        event_id: event,
        lot: w.lot.clone(),
        lane: LaneId::parse(lane).unwrap(),
        action: BarrierAction::Open,
        reason: DecisionReason::Mandate,
        plate: Some("京A66666".into()),
        session_id: None,
        fee: None,
        owed: None,
        pay_url: None,
        display: DisplayText {
            line1: "Goodbye".into(),
            line2: String::new(),
        },
        decided_at: w.now(),
    }
}

#[tokio::test]
async fn forged_and_replayed_barrier_messages_do_not_move_the_arm() {
    let (w, _clock) = world().await;
    let arm = w.rig("out-1").arm().watch();
    let lane = LaneId::parse("out-1").unwrap();
    let decisions = Topic::Decisions(w.lot.clone(), lane.clone()).to_string();
    let commands = Topic::Commands(w.lot.clone(), lane.clone()).to_string();
    let mut seen_commands = capture(&w, &commands).await;

    // A decision for an invented event, unsigned and signed with a key that is not the
    // gateway's; an operator command, unsigned and wrongly signed.
    let forged = decision_for(&w, "out-1", EventId::new());
    publish_raw(&w, &decisions, encode(&forged, w.now(), None)).await;
    publish_raw(
        &w,
        &decisions,
        encode(&forged, w.now(), Some(b"not-the-key-0123456789")),
    )
    .await;
    let cmd = OperatorCommand {
        command_id: uuid::Uuid::now_v7(),
        lot: w.lot.clone(),
        lane: lane.clone(),
        action: LaneAction::OpenBarrier,
        reason: "forged".into(),
        operator: "cashier-alice".into(),
        issued_at: w.now(),
    };
    publish_raw(&w, &commands, encode(&cmd, w.now(), None)).await;
    publish_raw(
        &w,
        &commands,
        encode(&cmd, w.now(), Some(b"not-the-key-0123456789")),
    )
    .await;
    let _ = seen_commands.recv().await; // our own forgeries pass the topic first
    let _ = seen_commands.recv().await;
    eventually("the gateway to refuse all four", WAIT, || async {
        (rejected(&w, "unsigned") >= 2 && rejected(&w, "bad_signature") >= 2).then_some(())
    })
    .await;
    assert_eq!(arm.borrow().position, ArmPosition::Closed);
    assert_eq!(arm.borrow().abnormal_releases, 0, "no forged lift");

    // The real thing opens it: a lift by an operator, signed by the server for this gateway.
    let operator = client_as(&w, Role::Operator, None).await;
    let r = operator
        .post(w.url(&format!("/api/lots/{}/lanes/out-1/open", w.lot)))
        .json(&json!({"reason": "barrier test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let genuine = tokio::time::timeout(WAIT, seen_commands.recv())
        .await
        .expect("the server's command passes the topic")
        .unwrap();
    let mut arm_watch = arm.clone();
    tokio::time::timeout(WAIT, arm_watch.wait_for(|s| s.abnormal_releases == 1))
        .await
        .expect("the signed lift opens the arm")
        .unwrap();
    assert!(
        parkpay_protocol::decode::<OperatorCommand>(&genuine, w.gateway_key.as_deref()).is_ok(),
        "the server signs commands with the gateway's key"
    );

    // The recorded command, replayed, is refused: it was carried out once already.
    let before = rejected(&w, "replayed_command");
    publish_raw(&w, &commands, genuine).await;
    eventually("the replay to be refused", WAIT, || async {
        (rejected(&w, "replayed_command") > before).then_some(())
    })
    .await;
    assert_eq!(
        arm.borrow().abnormal_releases,
        1,
        "the replay lifts nothing"
    );
    w.stop().await;
}

#[tokio::test]
async fn allowlists_are_signed_hold_only_the_lots_plates_and_spies_get_nothing() {
    let (w, _clock) = world().await;
    let gateway = parkpay_sim::demo::gateway_id(&w.lot).unwrap();
    let topic = Topic::Allowlist(w.lot.clone(), gateway.clone()).to_string();
    let mut lists = capture(&w, &topic).await;

    // Two drivers with mandates; only one ever parks here.
    w.driver("京A70001", Some(100_000)).await;
    w.driver("京A70002", Some(100_000)).await;
    assert!(w.pass("in-1", "京A70001", WAIT).await.opened);
    let key = w.gateway_key.clone().unwrap();
    let list = tokio::time::timeout(WAIT, async {
        loop {
            let p = lists
                .recv()
                .await
                .expect("the allowlist topic stays subscribed");
            let l = parkpay_protocol::decode::<Allowlist>(&p, Some(&key))
                .expect("every allowlist is signed for the gateway");
            if l.body.plates.contains(&"京A70001".to_string()) {
                return l.body;
            }
        }
    })
    .await
    .expect("an allowlist naming the parked car");
    assert_eq!(
        list.plates,
        vec!["京A70001".to_string()],
        "only this lot's plates"
    );
    eventually("the gateway to take it", WAIT, || async {
        (w.gateway().counters().allowlist_plates == 1).then_some(())
    })
    .await;

    // A forged list (unsigned, and an old genuine one replayed) is refused.
    let forged = Allowlist {
        lot: w.lot.clone(),
        plates: vec!["京A99999".into()],
        version: i64::MAX,
    };
    let before = rejected(&w, "unsigned");
    publish_raw(&w, &topic, encode(&forged, w.now(), None)).await;
    eventually("the forged allowlist to be refused", WAIT, || async {
        (rejected(&w, "unsigned") > before).then_some(())
    })
    .await;
    let old = Allowlist {
        version: list.version - 1,
        ..list.clone()
    };
    let before = rejected(&w, "stale_allowlist");
    publish_raw(&w, &topic, encode(&old, w.now(), Some(&key))).await;
    eventually("the older allowlist to be refused", WAIT, || async {
        (rejected(&w, "stale_allowlist") > before).then_some(())
    })
    .await;
    assert_eq!(w.gateway().counters().allowlist_plates, 1);

    // A made-up gateway announcing itself is a dead letter, not a recipient.
    let spy = parkpay_protocol::GatewayId::parse("spy").unwrap();
    let status = GatewayStatus {
        gateway: spy.clone(),
        lot: w.lot.clone(),
        online: true,
        lanes: vec![LaneId::parse("in-1").unwrap()],
        journal_pending: 0,
        at: w.now(),
    };
    let status_topic = Topic::GatewayStatus(w.lot.clone(), spy.clone()).to_string();
    publish_raw(&w, &status_topic, encode(&status, w.now(), None)).await;
    dead_letter_on(&w, &status_topic, "unsigned").await;
    let gateways = w.get_json("/api/gateways").await;
    assert!(
        !gateways
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["gateway"] == "spy"),
        "{gateways}"
    );
    w.stop().await;
}

#[tokio::test]
async fn an_event_is_taken_only_when_signed_by_its_lanes_gateway() {
    assert!(
        parkpay_server::ServerConfig::default()
            .mqtt
            .require_signatures,
        "signatures are required by default"
    );
    let (w, _clock) = world().await;
    let other = parkpay_protocol::GatewayId::parse(format!("gw-other-{}", w.lot)).unwrap();
    let other_key = parkpay_server::config::hex_decode(
        &w.app()
            .add_gateway_key(&other, false, "tests")
            .await
            .unwrap(),
    )
    .unwrap();
    // Signed by another gateway, for this lane: refused.
    let ev = raw_event(&w, "in-1", Direction::Entry, "京A71001", w.now());
    crate::scenarios::publish_bytes(&w, &ev, encode(&ev, w.now(), Some(&other_key))).await;
    // Unsigned, claiming to be a made-up gateway: refused.
    let mut evil = raw_event(&w, "in-1", Direction::Entry, "京A71002", w.now());
    evil.gateway = parkpay_protocol::GatewayId::parse("gw-evil").unwrap();
    crate::scenarios::publish_bytes(&w, &evil, encode(&evil, w.now(), None)).await;
    // The other gateway, signing as itself, for a lane it does not serve: refused.
    let mut foreign = raw_event(&w, "in-1", Direction::Entry, "京A71003", w.now());
    foreign.gateway = other.clone();
    crate::scenarios::publish_bytes(&w, &foreign, encode(&foreign, w.now(), Some(&other_key)))
        .await;
    // A genuine event after them: once it is decided, the three were handled before it.
    let ok = raw_event(&w, "in-1", Direction::Entry, "京A71004", w.now());
    publish(&w, &ok).await;
    eventually("the genuine entry", WAIT, || async {
        (!sessions(&w, "京A71004").await.is_empty()).then_some(())
    })
    .await;
    let letters = w.get_json("/api/dead-letters?limit=1000").await;
    let reasons: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["topic"]
                .as_str()
                .is_some_and(|t| t.contains(w.lot.as_str()))
        })
        .filter_map(|d| d["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"bad_signature"), "{reasons:?}");
    assert!(
        reasons.iter().filter(|r| **r == "wrong_gateway").count() >= 2,
        "{reasons:?}"
    );
    for plate in ["京A71001", "京A71002", "京A71003"] {
        assert!(
            sessions(&w, plate).await.is_empty(),
            "{plate} opened nothing"
        );
    }
    w.stop().await;
}

/// A car held at the exit without a mandate: (session, charge) as JSON.
async fn held_at_exit(w: &World, clock: &ManualClock, plate: &str) -> (Value, Value) {
    assert!(w.pass("in-1", plate, WAIT).await.opened);
    clock.advance(chrono::Duration::hours(2));
    let out = w.pass("out-1", plate, WAIT).await;
    assert!(!out.opened, "held: nobody pays for it");
    let s = sessions(w, plate).await[0].clone();
    assert_eq!(s["status"], "awaiting_payment");
    let c = w
        .get_json(&format!("/api/sessions/{}", s["id"].as_str().unwrap()))
        .await["charge"]
        .clone();
    (s, c)
}

#[tokio::test]
async fn money_moves_only_on_the_providers_word_or_a_cashiers() {
    let (w, clock) = world().await;
    let (s, c) = held_at_exit(&w, &clock, "京A72001").await;
    let sid = s["id"].as_str().unwrap();
    let anonymous = reqwest::Client::new();
    // The driver's page shows the stay its QR code names, and nothing about the driver.
    let view: Value = anonymous
        .get(w.url(&format!("/api/pay/{sid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (view["plate"].as_str(), view["status"].as_str()),
        (Some("京A72001"), Some("awaiting_payment"))
    );
    assert_eq!(view["charge"]["amount"], c["amount"]);
    assert!(!view.to_string().contains("driver"), "{view}");
    // What once worked: a public "pay" naming any actor.
    for path in [
        format!("/api/sessions/{sid}/pay"),
        format!("/api/charges/{}/pay", c["id"].as_str().unwrap()),
    ] {
        let r = anonymous
            .post(w.url(&path))
            .json(&json!({"actor": "cashier-alice"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path} is gone");
    }
    // The provider's settle call wants the provider's secret, not an operator's token.
    let settle = json!({"session": sid, "amount": c["amount"]});
    let r = anonymous
        .post(w.url("/api/sandbox/settle"))
        .json(&settle)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = w
        .client
        .post(w.url("/api/sandbox/settle"))
        .json(&settle)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "an admin token is not the provider"
    );
    // Cash needs a role that takes payments, on this lot, and the amount due.
    let cash = w.url(&format!("/api/sessions/{sid}/cash"));
    let r = anonymous
        .post(cash.clone())
        .json(&json!({"amount": c["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let viewer = client_as(&w, Role::Viewer, None).await;
    let r = viewer
        .post(cash.clone())
        .json(&json!({"amount": c["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let elsewhere = client_as(&w, Role::Finance, Some(vec!["another-lot".into()])).await;
    let r = elsewhere
        .post(cash.clone())
        .json(&json!({"amount": c["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let finance = client_as(&w, Role::Finance, Some(vec![w.lot.to_string()])).await;
    let r = finance
        .post(cash.clone())
        .json(&json!({"amount": {"minor": 1, "currency": "CNY"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409, "not the amount due");
    assert!(
        w.rig("out-1").arm().watch().borrow().position == ArmPosition::Closed,
        "nothing paid: the arm stays down"
    );
    let r = finance
        .post(cash)
        .json(&json!({"amount": c["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let paid = w.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(paid["charge"]["status"], "succeeded");
    assert_eq!(paid["charge"]["method"], "cash");
    let audit = w.get_json("/api/audit?limit=1000").await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "charge.paid"
            && a["actor"] == "token:t-finance"
            && a["subject"]
                .as_str()
                .unwrap()
                .contains(c["id"].as_str().unwrap())));
    w.stop().await;
}

#[tokio::test]
async fn a_plate_correction_needs_an_operator_of_that_lot() {
    let (w, _clock) = world().await;
    w.driver("京A73001", Some(100_000)).await;
    let mut ev = raw_event(&w, "out-1", Direction::Exit, "京A73001", w.now());
    ev.candidates.clear();
    ev.quality = ReadQuality::NoRead;
    publish(&w, &ev).await;
    let x = eventually("the unreadable exit's exception", WAIT, || async {
        w.get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
            .await
            .as_array()?
            .iter()
            .find(|x| x["event_id"] == ev.event_id.0.to_string())
            .cloned()
    })
    .await;
    let url = w.url(&format!(
        "/api/exceptions/{}/correct",
        x["id"].as_str().unwrap()
    ));
    // No stay has this plate (its entry was never read): the operator confirms it against the
    // picture, as a correction that settles nothing must be.
    let body = json!({"plate": "京A73001", "confirmed": true});
    let r = reqwest::Client::new()
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for (role, lots) in [
        (Role::Viewer, None),
        (Role::Finance, None),
        (Role::Operator, Some(vec!["another-lot".to_string()])),
    ] {
        let r = client_as(&w, role, lots)
            .await
            .post(url.clone())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{role}");
    }
    let charges = w.get_json("/api/charges?limit=1000").await;
    assert!(
        !charges
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["lot"] == w.lot.as_str()),
        "nothing charged by a refused correction"
    );
    let operator = client_as(&w, Role::Operator, Some(vec![w.lot.to_string()])).await;
    let r = operator.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let audit = w.get_json("/api/audit?limit=1000").await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "exception.plate_corrected" && a["actor"] == "token:t-operator"));
    w.stop().await;
}

#[tokio::test]
async fn every_route_needs_an_identity_and_the_role_for_it() {
    let (w, _clock) = world().await;
    let driver = w.driver("京A74001", Some(100_000)).await;
    assert!(w.pass("in-1", "京A74001", WAIT).await.opened);
    let lot = w.lot.as_str();
    let anonymous = reqwest::Client::new();
    let reads = [
        "/api/lots".to_string(),
        format!("/api/lots/{lot}"),
        "/api/sessions".into(),
        "/api/charges".into(),
        format!("/api/drivers/{driver}"),
        "/api/audit".into(),
        "/api/dead-letters".into(),
        "/api/stats".into(),
        "/api/gateways".into(),
        "/api/exceptions".into(),
        "/metrics".into(),
        "/api/stream".into(),
    ];
    for path in &reads {
        let r = anonymous.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "GET {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "GET {path}");
    }
    // A free tariff: what an anonymous attacker once put in place.
    let mut free = parkpay_sim::api::example_tariff();
    free["first_period"] = Value::Null;
    for band in free["bands"].as_array_mut().unwrap() {
        band["unit_price"]["minor"] = json!(0);
    }
    let writes: Vec<(reqwest::Method, String, Value)> = vec![
        (
            reqwest::Method::PUT,
            format!("/api/lots/{lot}/tariff"),
            free.clone(),
        ),
        (
            reqwest::Method::POST,
            format!("/api/lots/{lot}/lanes/out-1/open"),
            json!({"reason": "x"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/lots/{lot}/lanes/nowhere/open"),
            json!({"reason": "x"}),
        ),
        (
            reqwest::Method::POST,
            "/api/drivers".into(),
            json!({"name": "x"}),
        ),
        (
            reqwest::Method::POST,
            "/api/sandbox/wallets".into(),
            json!({"reference": "x", "balance": {"minor": 0, "currency": "CNY"}}),
        ),
        (
            reqwest::Method::POST,
            "/api/accounts".into(),
            json!({"username": "x", "password": "x", "role": "admin"}),
        ),
    ];
    for (m, path, body) in &writes {
        let r = anonymous
            .request(m.clone(), w.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{m} {path}");
    }
    // A viewer reads but writes nothing, and sees no driver.
    let viewer = client_as(&w, Role::Viewer, None).await;
    for (m, path, body) in &writes[..4] {
        let r = viewer
            .request(m.clone(), w.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "viewer {m} {path}");
    }
    let r = viewer
        .get(w.url(&format!("/api/drivers/{driver}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let listed: Value = viewer
        .get(w.url(&format!("/api/sessions?lot={lot}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &listed.as_array().unwrap()[0];
    assert_eq!(s["plate"], "京A74001");
    assert!(s.get("driver_id").is_none(), "{s}");
    // An operator of another lot sees none of this lot and lifts none of its lanes.
    let elsewhere = client_as(&w, Role::Operator, Some(vec!["another-lot".into()])).await;
    let listed: Value = elsewhere
        .get(w.url("/api/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.as_array().unwrap().iter().all(|s| s["lot"] != lot));
    let r = elsewhere
        .post(w.url(&format!("/api/lots/{lot}/lanes/out-1/open")))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A lane that does not exist cannot be lifted, even by an admin.
    let r = w
        .client
        .post(w.url(&format!("/api/lots/{lot}/lanes/nowhere/open")))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The tariff is unchanged by all this.
    let l = w.get_json(&format!("/api/lots/{lot}")).await;
    assert_eq!(l["tariff_version"], 1);
    w.stop().await;
}

/// The `parkpay_session` cookie a response sets, as a `Cookie` header value.
fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("parkpay_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn operators_sign_in_with_a_password_and_every_write_carries_the_csrf_token() {
    let (w, _clock) = world().await;
    let r = w
        .client
        .post(w.url("/api/accounts"))
        .json(&json!({"username": "olga", "password": "correct horse battery", "role": "operator", "lots": [w.lot]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let plain = reqwest::Client::new();
    let login = w.url("/api/login");
    let r = plain
        .post(login.clone())
        .json(&json!({"username": "olga", "password": "wrong password here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(session_cookie(&r).is_none());
    let r = plain
        .post(login.clone())
        .json(&json!({"username": "olga", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let set = r
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = session_cookie(&r).unwrap();
    let me: Value = r.json().await.unwrap();
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str()),
        (Some("olga"), Some("operator"))
    );
    let csrf = me["csrf"].as_str().unwrap().to_string();

    let lift = w.url(&format!("/api/lots/{}/lanes/out-1/open", w.lot));
    let r = plain
        .post(lift.clone())
        .header("cookie", &cookie)
        .json(&json!({"reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a write without the CSRF token");
    let r = plain
        .post(lift.clone())
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let audit = w.get_json("/api/audit?limit=1000").await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "lane.manual_open" && a["actor"] == "olga"));

    let r = plain
        .post(w.url("/api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = plain
        .get(w.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "signed out");

    // Guessing is limited: after the allowed failures even the right password waits.
    let mut last = 0;
    for _ in 0..12 {
        last = plain
            .post(login.clone())
            .json(&json!({"username": "olga", "password": "not the password"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    let r = plain
        .post(login)
        .json(&json!({"username": "olga", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get(reqwest::header::RETRY_AFTER).is_some());
    w.stop().await;
}

#[tokio::test]
async fn cheap_requests_stay_cheap_and_bad_input_gets_a_4xx() {
    let (w, _clock) = world().await;
    let lot = w.lot.as_str();
    let r = w
        .client
        .get(w.url(&format!(
            "/api/lots/{lot}/tariff/preview?entry=1970-01-01T00:00:00Z&exit=2026-12-31T00:00:00Z"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "57 years are not priced");
    let nul = "a\u{0}b";
    let driver = w.driver("京A75001", None).await;
    let cases: Vec<(&str, String, Value)> = vec![
        (
            "lot name",
            "/api/lots".into(),
            json!({"id": format!("{lot}-x"), "name": nul, "tariff": parkpay_sim::api::example_tariff()}),
        ),
        ("driver name", "/api/drivers".into(), json!({"name": nul})),
        (
            "phone",
            "/api/drivers".into(),
            json!({"name": "x", "phone": nul}),
        ),
        (
            "provider ref",
            format!("/api/drivers/{driver}/mandates"),
            json!({"provider": "sandbox", "provider_ref": nul}),
        ),
        (
            "lift reason",
            format!("/api/lots/{lot}/lanes/out-1/open"),
            json!({"reason": nul}),
        ),
        (
            "1 MB name",
            "/api/drivers".into(),
            json!({"name": "x".repeat(60_000)}),
        ),
    ];
    for (what, path, body) in cases {
        let r = w
            .client
            .post(w.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 422, "{what}: {text}");
    }
    let r = w
        .client
        .post(w.url("/api/sandbox/wallets"))
        .bearer_auth(&w.sandbox_secret)
        .json(&json!({"reference": nul, "balance": {"minor": 0, "currency": "CNY"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "wallet reference");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let r = w
        .client
        .post(w.url("/api/drivers"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let r = w.client.delete(w.url("/api/lots")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    // Security headers on pages and API answers alike.
    for path in ["/", "/login", "/api/lots"] {
        let r = w.client.get(w.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            !csp.contains("unsafe-inline'; script") && !csp.contains("script-src 'unsafe-inline'"),
            "{csp}"
        );
    }
    // A dead letter whose text holds a NUL is kept.
    let topic = Topic::Events(w.lot.clone(), LaneId::parse("in-1").unwrap()).to_string();
    publish_raw(&w, &topic, b"{\"v\":1,\"type\":\"pass\0age\"".to_vec()).await;
    dead_letter_on(&w, &topic, "malformed").await;
    w.stop().await;
}

/// A random JSON value, biased towards what breaks decoders: control characters and NUL in
/// strings, huge and fractional numbers, deep nesting, and the field names the routes expect.
fn hostile_json(rng: &mut impl rand::Rng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "id",
        "name",
        "phone",
        "plate",
        "reason",
        "amount",
        "minor",
        "currency",
        "tariff",
        "lanes",
        "direction",
        "gateway",
        "provider",
        "provider_ref",
        "reference",
        "balance",
        "username",
        "password",
        "role",
        "lots",
        "session",
        "charge",
        "capacity",
        "colour",
    ];
    const STRINGS: &[&str] = &[
        "",
        " ",
        "\u{0}",
        "a\u{0}b",
        "\u{1b}[31m",
        "京A12345",
        "京A1234\u{0}",
        "CNY",
        "entry",
        "admin",
        "../../etc/passwd",
        "'; DROP TABLE sessions; --",
        "\u{202e}evil",
        "𝔘𝔫𝔦",
    ];
    match if depth > 4 {
        rng.gen_range(0..4)
    } else {
        rng.gen_range(0..7)
    } {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => match rng.gen_range(0..4) {
            0 => json!(rng.gen::<i64>()),
            1 => json!(rng.gen::<f64>() * 1e300),
            2 => json!(u64::MAX),
            _ => json!(-1),
        },
        3 => {
            let mut s = STRINGS[rng.gen_range(0..STRINGS.len())].to_string();
            if rng.gen_ratio(1, 8) {
                s = s.repeat(rng.gen_range(100..5000));
            }
            json!(s)
        }
        4 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| hostile_json(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.gen_range(0..6))
                .map(|_| {
                    (
                        KEYS[rng.gen_range(0..KEYS.len())].to_string(),
                        hostile_json(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

#[tokio::test]
async fn hostile_http_bodies_get_a_clear_4xx_never_a_5xx() {
    use rand::{Rng, SeedableRng};
    let (w, _clock) = world().await;
    let lot = w.lot.as_str();
    let driver = w.driver("京A76001", None).await;
    let some = uuid::Uuid::now_v7();
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, "/api/lots".into()),
        (reqwest::Method::PUT, format!("/api/lots/{lot}/tariff")),
        (
            reqwest::Method::POST,
            format!("/api/lots/{lot}/lanes/in-1/open"),
        ),
        (reqwest::Method::POST, "/api/drivers".into()),
        (
            reqwest::Method::POST,
            format!("/api/drivers/{driver}/vehicles"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/drivers/{driver}/mandates"),
        ),
        (reqwest::Method::POST, format!("/api/sessions/{some}/cash")),
        (reqwest::Method::POST, format!("/api/charges/{some}/cash")),
        (
            reqwest::Method::POST,
            format!("/api/exceptions/{some}/correct"),
        ),
        (reqwest::Method::POST, "/api/accounts".into()),
        (reqwest::Method::POST, "/api/tokens".into()),
        (reqwest::Method::POST, "/api/login".into()),
        (reqwest::Method::POST, "/api/sandbox/settle".into()),
        (reqwest::Method::POST, "/api/sandbox/wallets".into()),
        (reqwest::Method::POST, format!("/api/lots/{lot}/lanes")),
        (reqwest::Method::POST, "/api/lists".into()),
        (reqwest::Method::POST, format!("/api/lists/{some}/revoke")),
        (reqwest::Method::POST, "/api/passes".into()),
        (reqwest::Method::PUT, format!("/api/lots/{lot}/spaces")),
        (reqwest::Method::POST, format!("/api/lots/{lot}/merchants")),
        (reqwest::Method::POST, "/api/validations/claim".into()),
        (reqwest::Method::POST, "/api/tickets".into()),
        (reqwest::Method::POST, "/api/tickets/exit".into()),
        (reqwest::Method::POST, "/api/vehicles/%00/lock".into()),
        (
            reqwest::Method::POST,
            format!("/api/charges/{some}/refunds"),
        ),
        (reqwest::Method::POST, format!("/api/charges/{some}/waive")),
        (reqwest::Method::POST, format!("/api/charges/{some}/retry")),
        (reqwest::Method::POST, "/api/reconciliations".into()),
        (
            reqwest::Method::POST,
            "/api/providers/sandbox/notify".into(),
        ),
        (reqwest::Method::POST, "/api/providers/wechat/notify".into()),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (method, path) in &routes {
        for case in 0..40 {
            let body: Vec<u8> = if case % 3 == 0 {
                (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()
            } else {
                serde_json::to_vec(&hostile_json(&mut rng, 0)).unwrap()
            };
            let mut req = w
                .client
                .request(method.clone(), w.url(path))
                .header("content-type", "application/json")
                .body(body.clone());
            if path.starts_with("/api/sandbox/") {
                req = req.bearer_auth(&w.sandbox_secret);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert!(
                status < 500,
                "{method} {path} answered {status} to {:?}: {text}",
                String::from_utf8_lossy(&body)
            );
            if status >= 400 {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                assert!(v["message"].is_string(), "{method} {path} {status}: {text}");
            }
        }
    }
    // Hostile query strings and path segments too.
    for q in [
        "entry=x&exit=y",
        "entry=%00&exit=%00",
        "entry=9999-12-31T23:59:59Z&exit=1970-01-01T00:00:00Z",
        "entry=-262144-01-01T00:00:00Z&exit=+262143-12-31T23:59:59Z",
    ] {
        let r = w
            .client
            .get(w.url(&format!("/api/lots/{lot}/tariff/preview?{q}")))
            .send()
            .await
            .unwrap();
        assert!(
            (400..500).contains(&r.status().as_u16()),
            "{q}: {}",
            r.status()
        );
    }
    for path in [
        "/api/sessions?plate=%00",
        "/api/sessions?lot=a%2Fb",
        "/api/charges?driver=%00",
        "/api/sessions/%00",
        "/api/pay/%00",
    ] {
        let r = w.client.get(w.url(path)).send().await.unwrap();
        assert!(
            (400..500).contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
    }
    w.stop().await;
}

/// The status a request is answered with.
async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_revoked_token_and_a_disabled_account_are_refused_at_once() {
    let (w, _clock) = world().await;
    let r = w
        .client
        .post(w.url("/api/tokens"))
        .json(&json!({"name": "billing", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let t: Value = r.json().await.unwrap();
    let holder = authorised_client(t["token"].as_str().unwrap());
    assert_eq!(status(holder.get(w.url("/api/lots"))).await, 200);
    let listed = w.get_json("/api/tokens").await;
    assert!(
        !listed.to_string().contains(t["token"].as_str().unwrap()),
        "secrets are never listed"
    );
    let r = w
        .client
        .delete(w.url(&format!("/api/tokens/{}", t["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(status(holder.get(w.url("/api/lots"))).await, 401);

    let r = w
        .client
        .post(w.url("/api/accounts"))
        .json(&json!({"username": "vera", "password": "correct horse battery", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let plain = reqwest::Client::new();
    let creds = json!({"username": "vera", "password": "correct horse battery"});
    let r = plain
        .post(w.url("/api/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let cookie = session_cookie(&r).unwrap();
    assert_eq!(
        status(plain.get(w.url("/api/me")).header("cookie", &cookie)).await,
        200
    );
    let r = w
        .client
        .post(w.url("/api/accounts/vera/disable"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        status(plain.get(w.url("/api/me")).header("cookie", &cookie)).await,
        401,
        "its session ended"
    );
    let r = plain
        .post(w.url("/api/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "it cannot sign in again");
    let audit = w.get_json("/api/audit?limit=1000").await;
    for action in ["token.revoked", "account.disabled"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == action && a["actor"] == "token:tests"),
            "{action}"
        );
    }
    w.stop().await;
}

/// Every page's inline script is allowed by the Content-Security-Policy it is served with (by
/// hash, as a browser checks it): a script that differs from what was hashed (an id written
/// into it per request) would be blocked and the page would stay blank.
#[tokio::test]
async fn every_page_is_served_with_a_policy_that_allows_its_own_script() {
    use base64::Engine;
    use sha2::Digest;
    let (w, _clock) = world().await;
    let some = uuid::Uuid::now_v7();
    for path in [
        "/".to_string(),
        "/history".to_string(),
        "/audit".to_string(),
        "/login".to_string(),
        format!("/pay/{some}"),
        format!("/receipt/{some}"),
        format!("/ticket/{some}"),
        "/v/abc123".to_string(),
        "/me".to_string(),
        "/find".to_string(),
        "/reports".to_string(),
        "/tariffs".to_string(),
    ] {
        let r = reqwest::get(w.url(&path)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        let html = r.text().await.unwrap();
        let mut rest = html.as_str();
        let mut scripts = 0;
        while let Some(start) = rest.find("<script>") {
            let after = &rest[start + "<script>".len()..];
            let end = after.find("</script>").expect("a closed script");
            let hash = base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(&after.as_bytes()[..end]));
            assert!(
                csp.contains(&format!("'sha256-{hash}'")),
                "{path}: its script (sha256-{hash}) is not allowed by {csp}"
            );
            scripts += 1;
            rest = &after[end..];
        }
        assert!(scripts > 0, "{path} has a script");
        // Scripts from files come from this site only, and are there.
        for src in html.split("<script src=\"").skip(1) {
            let src = &src[..src.find('"').expect("a closed src")];
            assert!(src.starts_with("/static/"), "{path}: script from {src}");
            assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
            let r = reqwest::get(w.url(src)).await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{src}");
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"));
        }
    }
    w.stop().await;
}
