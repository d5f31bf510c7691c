//! The decision core under hostile and unlucky input: signatures over the exact bytes the real
//! gateway sends, look-alike plates that must never charge a stranger, lanes that only their
//! own gateway may speak for, capture instants the server cannot believe, poison events that
//! must not stall ingestion, an oversized publish, and restarts with the default configuration.

use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::{
    encode, Direction, LaneId, ManualClock, PlateCandidate, PlateColour, Topic,
};
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};
use serde_json::Value;

use crate::scenarios::{
    charges_of, origin, publish, publish_bytes, publish_raw, raw_event, sessions, settled_charge,
    WAIT,
};

/// A plate per number whose confusable-folded keys all differ, so the gateway's repeat-read
/// suppression (same folded key, same lane, 60 s) never swallows one of them: one digit from
/// each confusable group.
fn distinct_plate(n: u32) -> String {
    const DIGITS: [char; 8] = ['0', '1', '2', '3', '4', '5', '6', '9'];
    let digits: String = (0..5)
        .rev()
        .map(|i| DIGITS[(n / 8u32.pow(i) % 8) as usize])
        .collect();
    format!("京K{digits}")
}

async fn signed_world() -> (World, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(origin()));
    let opts = WorldOptions {
        signed: true,
        ..WorldOptions::default()
    };
    (World::start(opts, clock.clone()).await, clock)
}

async fn dead_letters(w: &World) -> Vec<Value> {
    let lot = w.lot.as_str();
    w.get_json("/api/dead-letters?limit=1000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["topic"].as_str().is_some_and(|t| t.contains(lot)))
        .cloned()
        .collect()
}

/// Waits for a dead letter of this reason on exactly this topic and returns it.
pub(crate) async fn dead_letter_on(w: &World, topic: &str, reason: &str) -> Value {
    eventually(
        &format!("a {reason} dead letter on {topic}"),
        WAIT,
        || async {
            dead_letters(w)
                .await
                .into_iter()
                .find(|d| d["topic"] == topic && d["reason"] == reason)
        },
    )
    .await
}

/// Waits for a dead letter of this reason on our lot's topics and returns it.
async fn dead_letter(w: &World, reason: &str) -> Value {
    eventually(&format!("a {reason} dead letter"), WAIT, || async {
        dead_letters(w)
            .await
            .into_iter()
            .find(|d| d["reason"] == reason)
    })
    .await
}

async fn open_exceptions(w: &World) -> Vec<Value> {
    w.get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn exception(w: &World, kind: &str, plate: &str) -> Value {
    eventually(&format!("a {kind} exception for {plate}"), WAIT, || async {
        open_exceptions(w)
            .await
            .into_iter()
            .find(|x| x["kind"] == kind && x["plate"] == plate)
    })
    .await
}

#[tokio::test]
async fn the_real_gateway_signs_what_the_server_verifies_at_every_confidence() {
    let (w, clock) = signed_world().await;
    // f32 confidences whose widened f64 text differs from their own once failed verification:
    // 0.97 went out as 0.9700000286102295. Every value, under and over the accept threshold.
    let low = [0.0f32, 0.1, 0.33, 0.5, 0.7, 0.79];
    let high = [
        0.8f32, 0.85, 0.875, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
    ];
    let cam = w.rig("in-1").camera();
    for (i, c) in low.iter().enumerate() {
        let plate = distinct_plate(i as u32);
        cam.set_confidence(Some(*c));
        let rig = w.rig("in-1");
        let vehicle = parkpay_sim::rig::Vehicle {
            plate: parkpay_protocol::Plate::parse(&plate).unwrap(),
            colour: PlateColour::Blue,
        };
        let passage = rig.arrive(&vehicle).await.unwrap();
        // An unsure read is verified, decided and held for an attendant: not a dead letter.
        let x = exception(&w, "low_confidence", &plate).await;
        assert_eq!(x["lane"], "in-1");
        passage.back_out().await.unwrap();
    }
    let mut entered = Vec::new();
    for (i, c) in high.iter().enumerate() {
        let plate = distinct_plate(100 + i as u32);
        w.driver(&plate, Some(1_000_000)).await;
        cam.set_confidence(Some(*c));
        let entry = w.pass("in-1", &plate, WAIT).await;
        assert!(entry.opened, "confidence {c}: the signed entry is believed");
        entered.push(plate);
    }
    clock.advance(chrono::Duration::hours(2));
    let out = w.rig("out-1").camera();
    for (plate, c) in entered.iter().zip(high) {
        out.set_confidence(Some(c));
        let exit = w.pass("out-1", plate, WAIT).await;
        assert!(exit.opened, "confidence {c}: the signed exit is believed");
        let s = sessions(&w, plate).await[0].clone();
        let charge = settled_charge(&w, s["id"].as_str().unwrap()).await;
        assert_eq!(charge["status"], "succeeded", "{plate}: {charge}");
    }
    assert!(
        dead_letters(&w).await.is_empty(),
        "no event of the real gateway was refused: {:?}",
        dead_letters(&w).await
    );
    assert_eq!(w.gateway().journal_pending(), 0, "every event was decided");
    w.stop().await;
}

#[tokio::test]
async fn two_cars_whose_plates_fold_alike_are_each_charged_their_own_stay() {
    let (w, clock) = crate::scenarios::world().await;
    let b = w.driver("京AYBKPH", Some(100_000)).await;
    let eight = w.driver("京AY8KPH", Some(100_000)).await;
    assert!(w.pass("in-1", "京AYBKPH", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(10));
    assert!(w.pass("in-2", "京AY8KPH", WAIT).await.opened);
    for plate in ["京AYBKPH", "京AY8KPH"] {
        let s = sessions(&w, plate).await;
        assert_eq!(
            (s.len(), s[0]["status"].as_str()),
            (1, Some("open")),
            "both cars are inside: {s:?}"
        );
    }
    assert!(
        open_exceptions(&w).await.is_empty(),
        "a look-alike entry is not a stale entry"
    );
    clock.advance(chrono::Duration::hours(3));
    assert!(w.pass("out-1", "京AYBKPH", WAIT).await.opened);
    clock.advance(chrono::Duration::hours(1));
    assert!(w.pass("out-2", "京AY8KPH", WAIT).await.opened);
    for (plate, driver) in [("京AYBKPH", b), ("京AY8KPH", eight)] {
        let s = sessions(&w, plate).await[0].clone();
        assert_eq!(s["status"], "closed");
        let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
        assert_eq!(
            (c["status"].as_str(), c["driver_id"].as_str()),
            (Some("succeeded"), Some(driver.to_string().as_str())),
            "{plate} is charged to its own driver: {c}"
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_confident_read_of_another_plate_never_charges_the_car_inside() {
    let (w, clock) = crate::scenarios::world().await;
    w.driver("浙C40162", Some(100_000)).await;
    assert!(w.pass("in-1", "浙C40162", WAIT).await.opened);
    clock.advance(chrono::Duration::hours(2));
    // An unregistered car one character away, with no entry record, leaves.
    let stranger = w.pass("out-1", "浙C40192", Duration::from_secs(3)).await;
    assert!(!stranger.opened, "held for an attendant");
    let x = exception(&w, "no_entry", "浙C40192").await;
    assert!(x["detail"].as_str().unwrap().contains("浙C40162"), "{x}");
    let parked = sessions(&w, "浙C40162").await[0].clone();
    assert_eq!(
        parked["status"], "open",
        "the parked car's stay is untouched"
    );
    assert!(charges_of(&w, parked["id"].as_str().unwrap())
        .await
        .is_empty());

    clock.advance(chrono::Duration::minutes(30));
    assert!(w.pass("out-2", "浙C40162", WAIT).await.opened);
    let c = settled_charge(&w, parked["id"].as_str().unwrap()).await;
    assert_eq!(c["status"], "succeeded");
    w.stop().await;
}

#[tokio::test]
async fn only_a_lanes_own_gateway_may_speak_for_it_and_only_in_its_direction() {
    let (w, _clock) = signed_world().await;
    let key = w.gateway_key.clone().unwrap();
    let other_key = vec![7u8; 32];
    let before = sessions(&w, "京B00001").await.len();

    // Another gateway, correctly signed as itself, on our lane.
    let mut ev = raw_event(&w, "in-2", Direction::Entry, "京B00001", w.now());
    ev.gateway = parkpay_protocol::GatewayId::parse("gw-other").unwrap();
    publish_bytes(&w, &ev, encode(&ev, w.now(), Some(&other_key))).await;
    let d = dead_letter(&w, "wrong_gateway").await;
    assert!(d["detail"].as_str().unwrap().contains("gw-other"), "{d}");

    // Our gateway's name with another key, and with no signature at all.
    let ev = raw_event(&w, "in-2", Direction::Entry, "京B00001", w.now());
    publish_bytes(&w, &ev, encode(&ev, w.now(), Some(&other_key))).await;
    dead_letter(&w, "bad_signature").await;
    publish_bytes(&w, &ev, encode(&ev, w.now(), None)).await;
    dead_letter(&w, "unsigned").await;

    // The right gateway and key, but an entry on an exit lane.
    let ev = raw_event(&w, "out-1", Direction::Entry, "京B00001", w.now());
    publish_bytes(&w, &ev, encode(&ev, w.now(), Some(&key))).await;
    dead_letter(&w, "wrong_direction").await;

    // A lane nobody configured.
    let ev = raw_event(&w, "in-9", Direction::Entry, "京B00001", w.now());
    publish_bytes(&w, &ev, encode(&ev, w.now(), Some(&key))).await;
    dead_letter(&w, "unknown_lane").await;
    assert_eq!(
        sessions(&w, "京B00001").await.len(),
        before,
        "none of them opened anything"
    );

    // An operator configures the lane; now the gateway may use it.
    let gateway = parkpay_sim::demo::gateway_id(&w.lot).unwrap();
    let r = w
        .client
        .post(w.url(&format!("/api/lots/{}/lanes", w.lot)))
        .json(&serde_json::json!({"id": "in-9", "direction": "entry", "gateway": gateway}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ev = raw_event(&w, "in-9", Direction::Entry, "京B00001", w.now());
    publish(&w, &ev).await;
    eventually("the entry on the new lane", WAIT, || async {
        (sessions(&w, "京B00001").await.len() == before + 1).then_some(())
    })
    .await;
    let lanes = w.get_json(&format!("/api/lots/{}/lanes", w.lot)).await;
    let lanes = lanes.as_array().unwrap();
    assert_eq!(lanes.len(), 5, "{lanes:?}");
    assert!(
        lanes.iter().all(|l| l["gateway"] == gateway.as_str()),
        "{lanes:?}"
    );
    let bad = w
        .client
        .post(w.url(&format!("/api/lots/{}/lanes", w.lot)))
        .json(&serde_json::json!({"id": "in 9", "direction": "sideways", "gateway": gateway}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    w.stop().await;
}

#[tokio::test]
async fn capture_instants_the_server_cannot_believe_are_held_never_priced() {
    let (w, clock) = crate::scenarios::world().await;
    w.driver("川A00001", Some(1_000_000)).await;
    w.driver("川A00002", Some(1_000_000)).await;
    w.driver("川A00003", Some(1_000_000)).await;

    // Two days in the future, and 1970.
    let future = raw_event(
        &w,
        "in-1",
        Direction::Entry,
        "川A00001",
        w.now() + chrono::Duration::days(2),
    );
    publish(&w, &future).await;
    exception(&w, "clock_skew", "川A00001").await;
    let mut ancient = raw_event(
        &w,
        "in-1",
        Direction::Entry,
        "川A00002",
        chrono::DateTime::UNIX_EPOCH,
    );
    ancient.resent = true;
    publish(&w, &ancient).await;
    exception(&w, "clock_skew", "川A00002").await;
    assert!(sessions(&w, "川A00001").await.is_empty());
    assert!(sessions(&w, "川A00002").await.is_empty());

    // An exit captured half an hour before the car entered is not a free stay.
    assert!(w.pass("in-2", "川A00003", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(40));
    let early = raw_event(
        &w,
        "out-1",
        Direction::Exit,
        "川A00003",
        w.now() - chrono::Duration::minutes(70),
    );
    publish(&w, &early).await;
    exception(&w, "exit_before_entry", "川A00003").await;
    let s = sessions(&w, "川A00003").await[0].clone();
    assert_eq!(s["status"], "open");
    assert!(charges_of(&w, s["id"].as_str().unwrap()).await.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn poison_events_are_dead_lettered_or_held_and_never_stall_the_lanes() {
    let (mut w, _clock) = crate::scenarios::world().await;
    // More than a broker keeps in flight for one client (Mosquitto: 20), of every kind that
    // once went unacknowledged for ever.
    for i in 0..12 {
        let mut nul = raw_event(&w, "in-1", Direction::Entry, "京A12345", w.now());
        nul.candidates = vec![PlateCandidate {
            plate: format!("京A1\u{0}{i}"),
            confidence: 0.99,
            colour: PlateColour::Blue,
        }];
        publish(&w, &nul).await;
        let far = raw_event(
            &w,
            "out-1",
            Direction::Exit,
            "京A12345",
            "9999-12-31T00:00:00Z".parse().unwrap(),
        );
        publish(&w, &far).await;
    }
    // Not JSON at all, and JSON of the wrong shape.
    let topic = Topic::Events(w.lot.clone(), LaneId::parse("in-1").unwrap()).to_string();
    publish_raw(&w, &topic, b"\x00\xff not an envelope".to_vec()).await;
    publish_raw(
        &w,
        &topic,
        br#"{"v":1,"type":"passage","sent_at":"x","body":[]}"#.to_vec(),
    )
    .await;

    w.driver("京E55555", Some(100_000)).await;
    assert!(
        w.pass("in-2", "京E55555", WAIT).await.opened,
        "a good car behind two dozen bad events is let in"
    );
    // Nothing comes back after a restart either.
    w.restart_server().await;
    w.driver("京E55556", Some(100_000)).await;
    assert!(w.pass("in-1", "京E55556", WAIT).await.opened);
    let held: Vec<Value> = open_exceptions(&w)
        .await
        .into_iter()
        .filter(|x| x["kind"] == "unreadable" || x["kind"] == "clock_skew")
        .collect();
    assert!(
        held.len() >= 24,
        "every poison event was decided: {}",
        held.len()
    );
    dead_letter(&w, "malformed").await;
    w.stop().await;
}

#[tokio::test]
async fn an_oversized_publish_is_a_dead_letter_and_ingestion_goes_on() {
    let (w, _clock) = crate::scenarios::world().await;
    let topic = Topic::Events(w.lot.clone(), LaneId::parse("in-1").unwrap()).to_string();
    // The embedded broker refuses payloads over 8 MB itself; an external broker (Mosquitto's
    // default has no limit) delivers them, and that once cut the server off for good.
    let size = if w.backend.is_postgres() {
        9 * 1024 * 1024
    } else {
        200 * 1024
    };
    publish_raw(&w, &topic, vec![b'x'; size]).await;
    let d = dead_letter(&w, "oversized").await;
    assert!(
        d["detail"].as_str().unwrap().contains(&size.to_string()),
        "{d}"
    );
    w.driver("京F66666", Some(100_000)).await;
    assert!(w.pass("in-1", "京F66666", WAIT).await.opened);
    let ready = w.client.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    w.stop().await;
}

#[tokio::test]
async fn counters_exist_from_the_start_and_a_duplicate_plate_is_named_once() {
    let (w, _clock) = crate::scenarios::world().await;
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("parkpay_dead_letters_total{reason=\"bad_signature\"} 0"),
        "dead-letter counters exist before the first one"
    );
    let dup = w
        .client
        .post(w.url("/api/drivers"))
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let driver: Value = dup.json().await.unwrap();
    let path = format!("/api/drivers/{}/vehicles", driver["id"].as_str().unwrap());
    let body = serde_json::json!({"plate": "京G77777", "colour": "blue"});
    let first = w
        .client
        .post(w.url(&path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 201);
    // The same request again (a retry whose first answer was lost): the plate is this
    // driver's already, answered 200 with the vehicle.
    let again = w
        .client
        .post(w.url(&path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let v: Value = again.json().await.unwrap();
    assert_eq!(
        (v["plate"].as_str(), v["driver_id"].as_str()),
        (Some("京G77777"), driver["id"].as_str())
    );
    // Another driver cannot take it.
    let other = w.api.create_driver("y", "13800000009").await.unwrap();
    let taken = w
        .client
        .post(w.url(&format!("/api/drivers/{other}/vehicles")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status().as_u16(), 409);
    let msg: Value = taken.json().await.unwrap();
    assert_eq!(msg["message"], "plate 京G77777 is already bound");
    w.stop().await;
}

#[test]
fn the_default_instance_survives_a_restart_and_differs_per_database() {
    use parkpay_server::ServerConfig;
    let a = ServerConfig {
        database_url: "sqlite://a.db".into(),
        ..ServerConfig::default()
    };
    let again = ServerConfig {
        database_url: "sqlite://a.db".into(),
        ..ServerConfig::default()
    };
    let b = ServerConfig {
        database_url: "sqlite://b.db".into(),
        ..ServerConfig::default()
    };
    assert_eq!(a.instance_name(), again.instance_name());
    assert_ne!(a.instance_name(), b.instance_name());
    let named = ServerConfig {
        instance: Some("north-1".into()),
        ..ServerConfig::default()
    };
    assert_eq!(named.instance_name(), "north-1");
}

#[tokio::test]
async fn the_live_stream_carries_passages_decisions_lanes_and_gateways() {
    let (w, _clock) = crate::scenarios::world().await;
    let mut stream = w.client.get(w.url("/api/stream")).send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    w.driver("京H88888", Some(100_000)).await;
    assert!(w.pass("in-1", "京H88888", WAIT).await.opened);
    let mut seen = String::new();
    // The gateway reports its status on a heartbeat (every 10 s here), the lanes on every move.
    let wanted = [
        "event: passage",
        "event: decision",
        "event: lane",
        "event: gateway",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.iter().all(|k| seen.contains(k)) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the stream delivers every kind in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    w.stop().await;
}
