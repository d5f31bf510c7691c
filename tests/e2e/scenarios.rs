//! Scenarios a driver or an operator would check, each through the whole system: simulated
//! barrier hardware, the gateway, the broker, the server and its database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_protocol::{
    encode, Direction, EventId, LaneId, ManualClock, Money, PassageEvent, PlateCandidate,
    PlateColour, ReadQuality, Topic,
};
use parkpay_server::tariff::{quote, Tariff};
use parkpay_sim::reference_tariff;
use parkpay_sim::rig::{PassageOutcome, Vehicle, Waited};
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};
use serde_json::Value;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn origin() -> DateTime<Utc> {
    // 09:00 in Shanghai: day band.
    DateTime::parse_from_rfc3339("2026-11-25T01:00:00Z")
        .unwrap()
        .into()
}

pub(crate) async fn world() -> (World, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(origin()));
    (
        World::start(WorldOptions::default(), clock.clone()).await,
        clock,
    )
}

pub(crate) fn tariff() -> Tariff {
    serde_json::from_value(parkpay_sim::api::example_tariff()).unwrap()
}

pub(crate) fn fen(v: &Value) -> i64 {
    v["minor"]
        .as_i64()
        .unwrap_or_else(|| panic!("not money: {v}"))
}

pub(crate) async fn sessions(w: &World, plate: &str) -> Vec<Value> {
    let lot = w.lot.to_string();
    w.get_json(&format!(
        "/api/sessions?lot={lot}&plate={}",
        urlencode(plate)
    ))
    .await
    .as_array()
    .unwrap()
    .clone()
}

pub(crate) async fn charges_of(w: &World, session: &str) -> Vec<Value> {
    w.get_json(&format!("/api/charges?session={session}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Waits for the charge of `session` to reach a final state and returns it.
pub(crate) async fn settled_charge(w: &World, session: &str) -> Value {
    eventually("the charge to settle", WAIT, || async {
        let c = charges_of(w, session).await;
        let status = c.first()?["status"].as_str()?.to_string();
        matches!(status.as_str(), "succeeded" | "arrears").then(|| c[0].clone())
    })
    .await
}

/// Waits for the session's deduction and checks it succeeded for exactly what the tariff gives
/// for the stay the simulator saw (the entry and exit capture instants), never what the server
/// says it should be.
pub(crate) async fn assert_charged_for_stay(
    w: &World,
    session: &Value,
    entry: &PassageOutcome,
    exit: &PassageOutcome,
) {
    let expected = reference_tariff::fee(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
    );
    let c = settled_charge(w, session["id"].as_str().unwrap()).await;
    assert_eq!(
        (c["status"].as_str(), fen(&c["amount"])),
        (Some("succeeded"), expected),
        "{c}"
    );
}

#[tokio::test]
async fn a_car_without_a_mandate_is_held_and_paying_opens_the_barrier() {
    let (w, clock) = world().await;
    w.driver("京A10002", None).await;
    let entry = w.pass("in-1", "京A10002", WAIT).await;
    assert!(entry.opened, "entry opens for every readable plate");
    clock.advance(chrono::Duration::minutes(130));

    let rig = w.rig("out-1");
    let vehicle = Vehicle {
        plate: "京A10002".parse().unwrap(),
        colour: PlateColour::Blue,
    };
    let mut p = rig.arrive(&vehicle).await.unwrap();
    let exit_at = p.capture().captured_at;
    let qr = match p.wait(WAIT).await {
        Waited::PayRequested { qr } => qr,
        other => panic!("expected a pay prompt, got {other:?}"),
    };
    let expected = reference_tariff::fee(&tariff(), entry.capture.captured_at, exit_at);
    assert_eq!(
        expected,
        500 + 3 * 300,
        "first hour plus three half hours in the day band"
    );
    let display = rig.display().watch().borrow().clone();
    assert!(
        display.text.line1.contains("¥14.00"),
        "the display shows the fee: {:?}",
        display.text
    );
    assert!(
        rig.arm().watch().borrow().position == parkpay_protocol::ArmPosition::Closed,
        "held: the arm stays down"
    );

    // The driver scans the QR code and pays.
    let session = sessions(&w, "京A10002").await[0].clone();
    assert_eq!(session["status"], "awaiting_payment");
    assert!(
        qr.ends_with(session["id"].as_str().unwrap()),
        "the QR code leads to this session's pay page: {qr}"
    );
    let paid = w
        .api
        .pay_session(session["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(paid.amount.minor, expected);
    assert!(p.wait_open(WAIT).await, "paying opens the barrier");
    p.drive_through().await.unwrap();

    let s = sessions(&w, "京A10002").await[0].clone();
    assert_eq!(s["status"], "closed");
    let c = charges_of(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0]["status"].as_str(), fen(&c[0]["amount"])),
        (Some("succeeded"), expected)
    );
    // Paying twice is refused, and charges nothing more.
    let again = w
        .api
        .pay_session(s["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap_err();
    assert!(again.is_status(409), "{again}");
    w.stop().await;
}

/// docs/tariffs.md, `exit_window_minutes`: a car back at an exit after its stay ended there.
#[tokio::test]
async fn a_car_back_at_the_exit_is_asked_the_same_fee_then_let_out_within_the_exit_window() {
    let (w, clock) = world().await;
    let plate = "京A10003";
    w.driver(plate, None).await;
    let entry = w.pass("in-1", plate, WAIT).await;
    assert!(entry.opened);
    clock.advance(chrono::Duration::minutes(130));
    let vehicle = Vehicle {
        plate: plate.parse().unwrap(),
        colour: PlateColour::Blue,
    };

    // Held for payment at out-1; the driver backs out without paying.
    let mut p = w.rig("out-1").arrive(&vehicle).await.unwrap();
    let first_exit = p.capture().captured_at;
    assert!(matches!(p.wait(WAIT).await, Waited::PayRequested { .. }));
    p.back_out().await.unwrap();
    let expected = reference_tariff::fee(&tariff(), entry.capture.captured_at, first_exit);
    let session = sessions(&w, plate).await[0].clone();
    assert_eq!(session["status"], "awaiting_payment");

    // Two minutes later at out-2: the same fee again, and paying opens out-2.
    clock.advance(chrono::Duration::minutes(2));
    let rig = w.rig("out-2");
    let mut p = rig.arrive(&vehicle).await.unwrap();
    let qr = match p.wait(WAIT).await {
        Waited::PayRequested { qr } => qr,
        other => panic!("expected the pay prompt again, got {other:?}"),
    };
    let id = session["id"].as_str().unwrap();
    assert!(qr.ends_with(id), "the QR code leads to the same stay: {qr}");
    let line1 = rig.display().watch().borrow().text.line1.clone();
    assert!(
        line1.contains(&Money::cny(expected).to_string()),
        "the same fee: {line1}"
    );
    let paid = w.api.pay_session(id.parse().unwrap()).await.unwrap();
    assert_eq!(paid.amount.minor, expected, "priced at the first exit");
    assert!(
        p.wait_open(WAIT).await,
        "paying opens the lane the car is at"
    );
    p.drive_through().await.unwrap();

    // The car turned back inside; five minutes later it leaves without paying again.
    clock.advance(chrono::Duration::minutes(5));
    let again = w.pass("out-1", plate, WAIT).await;
    assert!(
        again.opened,
        "within the exit window a settled stay lets the car out"
    );
    let s = sessions(&w, plate).await;
    assert_eq!(s.len(), 1, "no new stay: {s:?}");
    assert_eq!(s[0]["status"], "closed");
    let c = charges_of(&w, id).await;
    assert_eq!(c.len(), 1, "nothing charged again: {c:?}");
    assert_eq!(
        (c[0]["status"].as_str(), fen(&c[0]["amount"])),
        (Some("succeeded"), expected)
    );

    // Past the 15-minute window it is an exit with no entry, for the attendant.
    clock.advance(chrono::Duration::minutes(16));
    let out1 = w.rig("out-1");
    let p = out1.arrive(&vehicle).await.unwrap();
    let lot = w.lot.to_string();
    let held = eventually("a no_entry exception for the car", WAIT, || async {
        let open = w.api.open_exceptions(&lot).await.ok()?;
        open.into_iter()
            .find(|x| x.kind == "no_entry" && x.plate.as_deref() == Some(plate))
    })
    .await;
    assert_eq!(held.lane.as_deref(), Some("out-1"));
    assert_eq!(
        out1.arm().watch().borrow().position,
        parkpay_protocol::ArmPosition::Closed
    );
    p.back_out().await.unwrap();
    assert_eq!(charges_of(&w, id).await.len(), 1);
    w.stop().await;
}

pub(crate) fn raw_event(
    w: &World,
    lane: &str,
    direction: Direction,
    plate: &str,
    at: DateTime<Utc>,
) -> PassageEvent {
    PassageEvent {
        event_id: EventId::new(),
        lot: w.lot.clone(),
        lane: LaneId::parse(lane).unwrap(),
        gateway: parkpay_sim::demo::gateway_id(&w.lot).unwrap(),
        direction,
        captured_at: at,
        candidates: vec![PlateCandidate {
            plate: plate.into(),
            confidence: 0.97,
            colour: PlateColour::Blue,
        }],
        quality: ReadQuality::Confident,
        evidence_digest: None,
        resent: false,
    }
}

/// Publishes like the lot's gateway would, on the real broker (signed when the world is).
pub(crate) async fn publish(w: &World, ev: &PassageEvent) {
    publish_bytes(w, ev, encode(ev, w.now(), w.gateway_key.as_deref())).await;
}

/// Publishes a payload on the event's topic and waits until the broker has taken it.
pub(crate) async fn publish_bytes(w: &World, ev: &PassageEvent, payload: Vec<u8>) {
    let topic = Topic::Events(ev.lot.clone(), ev.lane.clone()).to_string();
    publish_raw(w, &topic, payload).await;
}

/// Publishes a payload at QoS 1 and waits until the broker has taken it. A connection the broker
/// drops before its PubAck (seen once from the embedded broker on a loaded machine) is made again:
/// this helper is about getting the message to the broker, not about the broker.
pub(crate) async fn publish_raw(w: &World, topic: &str, payload: Vec<u8>) {
    for attempt in 1..=3 {
        match publish_once(w, topic, payload.clone()).await {
            Ok(()) => return,
            Err(e) if attempt < 3 => eprintln!("publish to {topic} failed ({e}); again"),
            Err(e) => panic!("the broker did not take a publish to {topic}: {e}"),
        }
    }
}

async fn publish_once(w: &World, topic: &str, payload: Vec<u8>) -> Result<(), String> {
    let mut opts = parkpay_server::mqtt::options(
        &w.backend.mqtt_url,
        &format!("t-pub-{}", uuid::Uuid::new_v4().simple()),
    )
    .map_err(|e| e.to_string())?;
    opts.set_clean_session(true);
    opts.set_manual_acks(false);
    // A hostile publisher is not bound by our own clients' outgoing limit.
    let most = parkpay_server::mqtt::MQTT_MAX_PACKET;
    opts.set_max_packet_size(most, most);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .map_err(|e| e.to_string())?;
    // Drive the event loop until the broker acknowledged the publish.
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Err(_) => return Err("no answer from the broker".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_)))) => break,
            Ok(Ok(_)) => continue,
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    Ok(())
}

#[tokio::test]
async fn the_same_event_twice_and_a_second_entry_give_one_session_and_one_charge() {
    let (w, clock) = world().await;
    w.driver("沪B20003", Some(100_000)).await;
    let ev = raw_event(&w, "in-1", Direction::Entry, "沪B20003", w.now());
    publish(&w, &ev).await;
    publish(&w, &ev).await;
    let first = eventually("the entry to be recorded", WAIT, || async {
        let s = sessions(&w, "沪B20003").await;
        (!s.is_empty()).then_some(s)
    })
    .await;
    // Both deliveries are processed before we count: the duplicate metric moves.
    eventually("the duplicate to be answered", WAIT, || async {
        w.metrics()
            .await
            .contains("outcome=\"duplicate\"")
            .then_some(())
    })
    .await;
    assert_eq!(
        sessions(&w, "沪B20003").await.len(),
        1,
        "a repeated event id opens nothing new: {first:?}"
    );

    // The car is seen entering again at the other lane (its exit was missed): the stale
    // session becomes an exception and only one stays open.
    clock.advance(chrono::Duration::minutes(5));
    assert!(w.pass("in-2", "沪B20003", WAIT).await.opened);
    let all = sessions(&w, "沪B20003").await;
    let open: Vec<&Value> = all.iter().filter(|s| s["status"] == "open").collect();
    assert_eq!(open.len(), 1, "{all:?}");
    let exceptions = w.get_json(&format!("/api/exceptions?lot={}", w.lot)).await;
    assert!(
        exceptions
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "stale_entry"),
        "{exceptions}"
    );

    clock.advance(chrono::Duration::minutes(50));
    let out = w.pass("out-1", "沪B20003", WAIT).await;
    assert!(out.opened, "mandate: open now, charge after");
    let charged: Vec<Value> = w
        .get_json("/api/charges?limit=1000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["lot"] == w.lot.as_str())
        .cloned()
        .collect();
    assert_eq!(charged.len(), 1, "one charge for the visit: {charged:?}");
    let c = settled_charge(&w, open[0]["id"].as_str().unwrap()).await;
    assert_eq!(c["status"], "succeeded");
    w.stop().await;
}

#[tokio::test]
async fn grace_stays_are_free_and_a_week_hits_the_daily_caps() {
    let (w, clock) = world().await;
    w.driver("粤C30004", Some(1_000_000)).await;
    w.driver("粤C30005", Some(1_000_000)).await;
    let short_in = w.pass("in-1", "粤C30004", WAIT).await;
    let long_in = w.pass("in-2", "粤C30005", WAIT).await;
    clock.advance(chrono::Duration::minutes(10));
    let short_out = w.pass("out-1", "粤C30004", WAIT).await;
    assert!(short_out.opened);
    let s = sessions(&w, "粤C30004").await[0].clone();
    assert_eq!((s["status"].as_str(), fen(&s["fee"])), (Some("closed"), 0));
    assert!(
        charges_of(&w, s["id"].as_str().unwrap()).await.is_empty(),
        "a grace stay is not charged"
    );
    assert_eq!(
        reference_tariff::fee(
            &tariff(),
            short_in.capture.captured_at,
            short_out.capture.captured_at
        ),
        0
    );

    clock.advance(chrono::Duration::days(7) + chrono::Duration::hours(3));
    let long_out = w.pass("out-2", "粤C30005", WAIT).await;
    assert!(long_out.opened);
    let q = quote(
        &tariff(),
        long_in.capture.captured_at,
        long_out.capture.captured_at,
    )
    .unwrap();
    let daily_caps = q
        .caps_applied
        .iter()
        .filter(|c| c.contains("daily"))
        .count();
    assert!(
        daily_caps >= 6,
        "a week of full days is capped daily: {:?}",
        q.caps_applied
    );
    assert!(
        q.total.minor <= 9 * 4000,
        "at most nine calendar days at the cap"
    );
    let s = sessions(&w, "粤C30005").await[0].clone();
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    // The amount is checked against the reference, not the engine whose lines were read above.
    let due = reference_tariff::fee(
        &tariff(),
        long_in.capture.captured_at,
        long_out.capture.captured_at,
    );
    assert_eq!(q.total.minor, due);
    assert_eq!(
        (c["status"].as_str(), fen(&c["amount"])),
        (Some("succeeded"), due)
    );
    w.stop().await;
}

#[tokio::test]
async fn an_exit_without_entry_is_an_exception_and_a_misread_exit_waits_for_the_attendant() {
    let (w, clock) = world().await;
    let out = w.pass("out-1", "苏E40006", Duration::from_secs(3)).await;
    assert!(
        !out.opened,
        "no entry record: the car is held for an operator"
    );
    let exceptions = w
        .get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
        .await;
    assert!(
        exceptions
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "no_entry" && e["plate"] == "苏E40006"),
        "{exceptions}"
    );

    let driver = w.driver("苏AB1234", Some(100_000)).await;
    let entry = w.pass("in-1", "苏AB1234", WAIT).await;
    clock.advance(chrono::Duration::minutes(75));
    // The exit camera reads 8 for B, confidently. It might as well be another car whose entry
    // was missed: nobody's mandate is charged on a look-alike, the car waits for an attendant.
    let exit = w.pass("out-2", "苏A81234", Duration::from_secs(3)).await;
    assert!(!exit.opened, "a look-alike plate is never charged by guess");
    let s = sessions(&w, "苏AB1234").await[0].clone();
    assert_eq!(s["status"], "open", "the real car's stay is untouched");
    let x = eventually("the look-alike exception", WAIT, || async {
        let xs = w
            .get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
            .await;
        xs.as_array()?
            .iter()
            .find(|x| x["kind"] == "no_entry" && x["plate"] == "苏A81234")
            .cloned()
    })
    .await;
    assert_eq!(
        x["session_id"], s["id"],
        "the attendant is shown the look-alike: {x}"
    );
    assert!(x["detail"].as_str().unwrap().contains("苏AB1234"), "{x}");
    assert!(
        sessions(&w, "苏A81234").await.is_empty(),
        "no session was invented for the misread"
    );

    // The attendant compares the evidence and corrects the plate: the stay is charged to its
    // driver, for the stay the car really made; dashboards hear that the held row is settled.
    let mut stream = w.client.get(w.url("/api/stream")).send().await.unwrap();
    let r = w
        .client
        .post(w.url(&format!(
            "/api/exceptions/{}/correct",
            x["id"].as_str().unwrap()
        )))
        .json(&serde_json::json!({"plate": "苏AB1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        (d["action"].as_str(), d["reason"].as_str()),
        (Some("open"), Some("mandate"))
    );
    let s = sessions(&w, "苏AB1234").await[0].clone();
    assert_eq!(s["status"], "closed");
    assert_eq!(s["driver_id"].as_str(), Some(driver.to_string().as_str()));
    assert_charged_for_stay(&w, &s, &entry, &exit).await;
    let held = x["event_id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen
        .split("\n\n")
        .any(|e| e.contains("event: superseded") && e.contains(&held))
    {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the held row is reported settled in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    w.stop().await;
}

#[tokio::test]
async fn an_empty_wallet_opens_then_ends_in_arrears_that_block_the_next_open_now() {
    let (w, clock) = world().await;
    let driver = w.driver("浙D50007", Some(0)).await;
    w.pass("in-1", "浙D50007", WAIT).await;
    clock.advance(chrono::Duration::hours(2));
    let out = w.pass("out-1", "浙D50007", WAIT).await;
    assert!(
        out.opened,
        "open now, charge after: the barrier does not wait for the provider"
    );
    let s = sessions(&w, "浙D50007").await[0].clone();
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(c["status"], "arrears");
    let detail = w
        .get_json(&format!("/api/charges/{}", c["id"].as_str().unwrap()))
        .await;
    let history = detail["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        3,
        "three attempts, then arrears: {history:?}"
    );
    assert!(history.iter().all(|a| a["outcome"] == "failed"));
    let d = w.get_json(&format!("/api/drivers/{driver}")).await;
    assert_eq!(fen(&d["arrears"]), fen(&c["amount"]));

    // Next visit: arrears block "open now".
    clock.advance(chrono::Duration::hours(1));
    w.pass("in-1", "浙D50007", WAIT).await;
    clock.advance(chrono::Duration::hours(1));
    let rig = w.rig("out-2");
    let mut p = rig
        .arrive(&Vehicle {
            plate: "浙D50007".parse().unwrap(),
            colour: PlateColour::Blue,
        })
        .await
        .unwrap();
    assert!(
        matches!(p.wait(WAIT).await, Waited::PayRequested { .. }),
        "held with arrears"
    );
    // The display shows all that is owed: the debt and this stay, not this stay alone.
    let held = sessions(&w, "浙D50007")
        .await
        .into_iter()
        .find(|s| s["status"] == "awaiting_payment")
        .unwrap();
    let owed = Money::cny(fen(&c["amount"]) + fen(&held["fee"]));
    let shown = rig.display().watch().borrow().text.clone();
    assert!(
        shown.line2.contains("arrears") && shown.line2.contains(&owed.to_string()),
        "{shown:?} should show {owed}"
    );
    // Paying the arrears settles the debt; paying this stay lets the car out.
    let paid = w
        .client
        .post(w.url("/api/sandbox/settle"))
        .bearer_auth(&w.sandbox_secret)
        .json(&serde_json::json!({"charge": c["id"], "amount": c["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status().as_u16(), 200);
    assert_eq!(
        fen(&w.get_json(&format!("/api/drivers/{driver}")).await["arrears"]),
        0
    );
    w.api
        .pay_session(held["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert!(p.wait_open(WAIT).await);
    p.drive_through().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_server_restart_between_entry_and_exit_loses_nothing() {
    let (mut w, clock) = world().await;
    w.driver("鲁F60008", Some(100_000)).await;
    let entry = w.pass("in-1", "鲁F60008", WAIT).await;
    assert!(entry.opened);
    w.restart_server().await;
    clock.advance(chrono::Duration::hours(3));
    let exit = w.pass("out-1", "鲁F60008", WAIT).await;
    assert!(exit.opened, "the session survived the restart");
    let s = sessions(&w, "鲁F60008").await[0].clone();
    assert_charged_for_stay(&w, &s, &entry, &exit).await;
    assert_eq!(
        w.gateway().journal_pending(),
        0,
        "every event got its decision"
    );
    w.stop().await;
}

#[tokio::test]
async fn with_the_server_down_mandated_cars_still_leave_and_are_charged_later() {
    let clock = Arc::new(ManualClock::new(origin()));
    let opts = WorldOptions {
        decision_timeout: Duration::from_millis(1500),
        ..WorldOptions::default()
    };
    let mut w = World::start(opts, clock.clone()).await;
    w.driver("闽A70009", Some(100_000)).await;
    w.driver("闽A70010", None).await;
    let trusted_in = w.pass("in-1", "闽A70009", WAIT).await;
    assert!(w.pass("in-2", "闽A70010", WAIT).await.opened);
    // The gateway learns whom it may let out alone before the server goes away.
    eventually("the allowlist to reach the gateway", WAIT, || async {
        (w.gateway().counters().allowlist_plates > 0).then_some(())
    })
    .await;

    w.stop_server().await;
    clock.advance(chrono::Duration::minutes(90));
    let trusted_out = w.pass("out-1", "闽A70009", WAIT).await;
    assert!(
        trusted_out.opened,
        "an allowlisted car is let out by the gateway alone"
    );
    let unknown = w.pass("out-2", "闽A70010", Duration::from_secs(4)).await;
    assert!(
        !unknown.opened,
        "a car without a mandate waits for the server"
    );
    assert!(
        w.gateway().journal_pending() >= 1,
        "the exits wait in the journal"
    );

    w.start_server().await;
    let s = eventually("the offline exit to reach the ledger", WAIT, || async {
        let s = sessions(&w, "闽A70009").await;
        (s.first()?["status"] == "closed").then(|| s[0].clone())
    })
    .await;
    assert_charged_for_stay(&w, &s, &trusted_in, &trusted_out).await;
    w.stop().await;
}

#[tokio::test]
async fn an_attendant_corrects_an_unreadable_plate_and_the_passage_is_decided_again() {
    let (w, _clock) = world().await;
    let mut ev = raw_event(&w, "in-1", Direction::Entry, "京A?", w.now());
    ev.candidates.clear();
    ev.quality = ReadQuality::NoRead;
    publish(&w, &ev).await;
    let lot = w.lot.to_string();
    let x = eventually(
        "the unreadable plate to reach the exception queue",
        WAIT,
        || async {
            let xs = w
                .get_json(&format!("/api/exceptions?lot={lot}&open=true"))
                .await;
            xs.as_array()?
                .iter()
                .find(|x| x["kind"] == "unreadable")
                .cloned()
        },
    )
    .await;
    assert!(
        sessions(&w, "京A90011").await.is_empty(),
        "nothing is opened for an unread plate"
    );

    let url = w.url(&format!(
        "/api/exceptions/{}/correct",
        x["id"].as_str().unwrap()
    ));
    let bad = w
        .client
        .post(url.clone())
        .json(&serde_json::json!({"plate": "京A1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422, "a correction must be a plate");
    let r = w
        .client
        .post(url.clone())
        .json(&serde_json::json!({"plate": "京A90011"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        (d["action"].as_str(), d["reason"].as_str()),
        (Some("open"), Some("entered"))
    );
    let s = sessions(&w, "京A90011").await;
    assert_eq!((s.len(), s[0]["status"].as_str()), (1, Some("open")));
    let again = w
        .client
        .post(url)
        .json(&serde_json::json!({"plate": "京A90011"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status().as_u16(),
        409,
        "an exception is resolved once"
    );
    let audit = w.get_json("/api/audit").await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "exception.plate_corrected" && a["actor"] == "token:tests"));
    w.stop().await;
}
