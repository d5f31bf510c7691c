//! What an operator relies on: manual lifts are carried out and audited, bad input is rejected
//! with a reason and kept, and the service reports its health.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_protocol::{ArmPosition, ManualClock, Topic};
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn world() -> World {
    let origin: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-25T01:00:00Z")
        .unwrap()
        .into();
    World::start(WorldOptions::default(), Arc::new(ManualClock::new(origin))).await
}

#[tokio::test]
async fn a_manual_lift_opens_the_arm_and_is_audited() {
    let w = world().await;
    let rig = w.rig("out-1");
    let mut arm = rig.arm().watch();
    let url = w.url(&format!("/api/lots/{}/lanes/out-1/open", w.lot));

    let refused = w
        .client
        .post(url.clone())
        .json(&json!({"reason": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422, "a lift needs a reason");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unprocessable");
    assert!(body["message"].as_str().unwrap().contains("reason"));

    let r = w
        .client
        .post(url)
        .json(&json!({"reason": "driver paid cash at the booth"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let command: Value = r.json().await.unwrap();
    tokio::time::timeout(
        WAIT,
        arm.wait_for(|s| s.position == ArmPosition::Open && s.abnormal_releases == 1),
    )
    .await
    .expect("the arm opens")
    .unwrap();
    let id = command["command_id"].as_str().unwrap().to_string();
    let audit = eventually("the lane to acknowledge the command", WAIT, || async {
        let a = w.get_json("/api/audit").await;
        let entries = a.as_array()?.clone();
        entries
            .iter()
            .any(|e| {
                e["action"] == "command.done"
                    && e["subject"].as_str().is_some_and(|s| s.contains(&id))
            })
            .then_some(entries)
    })
    .await;
    let lift = audit
        .iter()
        .find(|e| e["action"] == "lane.manual_open")
        .expect("the lift is audited");
    assert_eq!(lift["actor"], "token:tests");
    assert!(lift["detail"]
        .as_str()
        .unwrap()
        .contains("driver paid cash"));

    // No car came: the arm stays up until the operator closes it.
    assert_eq!(arm.borrow().position, ArmPosition::Open);
    let r = w
        .client
        .post(w.url(&format!("/api/lots/{}/lanes/out-1/close", w.lot)))
        .json(&json!({"reason": "nobody came"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    tokio::time::timeout(WAIT, arm.wait_for(|s| s.position == ArmPosition::Closed))
        .await
        .expect("the arm closes")
        .unwrap();
    eventually("the close to be audited", WAIT, || async {
        let a = w.get_json("/api/audit").await;
        a.as_array()?
            .iter()
            .any(|e| e["action"] == "lane.manual_close" && e["actor"] == "token:tests")
            .then_some(())
    })
    .await;
    let nowhere = w
        .client
        .post(w.url(&format!("/api/lots/{}/lanes/out-1/explode", w.lot)))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status().as_u16(), 404);
    w.stop().await;
}

#[tokio::test]
async fn malformed_messages_are_counted_and_kept_with_their_reason() {
    let w = world().await;
    let topic = Topic::Events(w.lot.clone(), "in-1".parse().unwrap()).to_string();
    let mut opts = parkpay_server::mqtt::options(
        &w.backend.mqtt_url,
        &format!("t-bad-{}", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    opts.set_clean_session(true);
    opts.set_manual_acks(false);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let future_version =
        br#"{"v":9,"type":"passage","sent_at":"2026-11-25T01:00:00Z","body":{}}"#.to_vec();
    for payload in [b"\xff\xfe not json".to_vec(), future_version] {
        client
            .publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 2 {
        if let rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_)) =
            tokio::time::timeout(WAIT, el.poll())
                .await
                .unwrap()
                .unwrap()
        {
            acked += 1;
        }
    }
    let letters = eventually("both messages to be dead-lettered", WAIT, || async {
        let d = w.get_json("/api/dead-letters").await.as_array()?.clone();
        (d.len() >= 2).then_some(d)
    })
    .await;
    let reasons: Vec<&str> = letters
        .iter()
        .filter_map(|d| d["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"malformed") && reasons.contains(&"version"),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .any(|d| d["payload"].as_str().unwrap_or("").contains("not json")),
        "the payload is kept"
    );
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("parkpay_dead_letters_total{reason=\"malformed\"} 1"),
        "{metrics}"
    );
    // The server is still serving.
    assert!(w.pass("in-1", "京A77777", WAIT).await.opened);
    w.stop().await;
}

#[tokio::test]
async fn bad_http_requests_get_a_4xx_with_a_message() {
    let w = world().await;
    let post = |path: &str, body: Value| w.client.post(w.url(path)).json(&body).send();

    let bad_tariff = json!({"id": "lot-x", "name": "X", "capacity": 10, "tariff": {
        "currency": "CNY", "time_zone": "Asia/Shanghai", "unit_minutes": 0,
        "bands": [{"start": "00:00", "end": "00:00",
                   "unit_price": {"minor": 100, "currency": "CNY"}}]}});
    let r = post("/api/lots", bad_tariff).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("unit_minutes"),
        "{body}"
    );

    // Prices are Money in the tariff's currency and at most a million yuan; the field is named.
    let tariff = |price: Value| {
        json!({"id": "lot-y", "name": "Y", "capacity": 10, "tariff": {
            "currency": "CNY", "time_zone": "Asia/Shanghai", "unit_minutes": 30,
            "bands": [{"start": "00:00", "end": "00:00", "unit_price": price}]}})
    };
    for (price, says) in [
        (json!(100), "unit_price"),
        (
            json!({"minor": 100, "currency": "EUR"}),
            "bands[0].unit_price: currency EUR",
        ),
        (
            json!({"minor": 4_611_686_018_427_387_904_i64, "currency": "CNY"}),
            "bands[0].unit_price: must be at most",
        ),
    ] {
        let r = post("/api/lots", tariff(price)).await.unwrap();
        assert_eq!(r.status().as_u16(), 422);
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(says), "{body}");
    }

    let r = w
        .client
        .post(w.url("/api/lots"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post(
        &format!("/api/lots/{}/lanes/in-1/open", "bad/lot"),
        json!({}),
    )
    .await
    .unwrap();
    assert!(r.status().is_client_error());
    let r = w
        .client
        .get(w.url("/api/sessions/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = w
        .client
        .get(w.url(&format!("/api/sessions/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = w
        .client
        .get(w.url("/api/sessions?status=parked"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    let driver: Value = post("/api/drivers", json!({"name": "Li"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = driver["id"].as_str().unwrap();
    let r = post(
        &format!("/api/drivers/{id}/vehicles"),
        json!({"plate": "京A1"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 422, "a plate that fits no layout");
    assert_eq!(
        post(
            &format!("/api/drivers/{id}/vehicles"),
            json!({"plate": "京A12345"})
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        201
    );
    let other: Value = post("/api/drivers", json!({"name": "Han"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = post(
        &format!("/api/drivers/{}/vehicles", other["id"].as_str().unwrap()),
        json!({"plate": "京a·12345"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 409, "a plate is bound to one driver");

    let r = w.client.get(w.url("/no/such/page")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    w.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_live_lane_state() {
    let w = world().await;
    assert_eq!(
        w.client
            .get(w.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let ready: Value = w
        .client
        .get(w.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"database": true, "mqtt": true}));
    w.pass("in-1", "京A88888", WAIT).await;
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("parkpay_decision_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("parkpay_events_total{outcome=\"entered\"} 1"));
    let lanes = eventually("the gateway to report its lanes", WAIT, || async {
        let l = w
            .get_json(&format!("/api/lots/{}/lanes", w.lot))
            .await
            .as_array()?
            .clone();
        (l.len() == 4 && l.iter().all(|x| x["gateway_online"] == true)).then_some(l)
    })
    .await;
    assert!(lanes
        .iter()
        .any(|l| l["lane"] == "in-1" && l["direction"] == "entry"));
    let stats = w.get_json("/api/stats").await;
    let ours = stats["lots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lot"] == w.lot.as_str())
        .unwrap()
        .clone();
    assert_eq!(ours["occupancy"], 1);
    let page = w
        .client
        .get(w.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("parkpay"));
    w.stop().await;
}

/// The load bench measures what it says on a small run: every event decided, every stay charged
/// once at the tariff's price, and a floor beside it. (Its figures are in docs/performance.md;
/// here only its accounting is checked, never a duration.)
#[tokio::test]
async fn the_load_bench_accounts_for_every_event_and_charge() {
    let backend = parkpay_tests::Backend::fresh().await;
    let args = parkpay_sim::bench_load::BenchLoadArgs {
        rate: 40,
        secs: 2,
        reps: 1,
        lanes: 4,
        database_url: Some(backend.database_url.clone()),
        mqtt: backend.is_postgres().then(|| backend.mqtt_url.clone()),
        settle_secs: 60,
        seed: None,
        // On PostgreSQL, two instances split the events on a shared subscription.
        instances: if backend.is_postgres() { 2 } else { 1 },
        append: None,
    };
    let o = parkpay_sim::bench_load::run(&args)
        .await
        .expect("the bench runs");
    assert_eq!(o.events, 80, "40 entries then their 40 exits");
    assert_eq!(o.instances, if backend.is_postgres() { 2 } else { 1 });
    assert_eq!((o.lost, o.double, o.wrong), (0, 0, 0), "{o:?}");
    assert!(
        o.p50_ms > 0.0 && o.p99_ms >= o.p50_ms && o.floor_p50_ms > 0.0,
        "{o:?}"
    );
    backend.cleanup().await;
}

/// A broker that drops messages at its queue limit does not do it quietly: the server follows
/// Mosquitto's dropped-message count and exports it (`parkpay_broker_dropped_messages`) for an
/// alert. Runs against a Mosquitto of its own with a queue of 10 (skipped where Mosquitto is not
/// installed).
#[tokio::test]
async fn a_broker_dropping_messages_shows_in_the_metrics() {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let Some(broker) =
        parkpay_tests::OwnMosquitto::start("max_queued_messages 10\nsys_interval 1").await
    else {
        eprintln!("mosquitto is not installed: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = parkpay_server::ServerConfig {
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        http: parkpay_server::config::HttpConfig {
            bind: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        },
        mqtt: parkpay_server::config::MqttConfig {
            broker: broker.url.clone(),
            ..Default::default()
        },
        instance: Some("drops".into()),
        ..Default::default()
    };
    let server = parkpay_server::Server::build(config, Arc::new(parkpay_protocol::SystemClock))
        .await
        .expect("the server starts");
    let app = server.app();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // A client with a persistent session subscribes, then goes away: the broker queues for it,
    // up to 10 messages, and drops the rest.
    let port = broker
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let mut o = rumqttc::MqttOptions::new("slow", "127.0.0.1", port);
    o.set_clean_session(false);
    let (slow, mut el) = AsyncClient::new(o, 10);
    slow.subscribe("drops/test", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    drop(el);
    drop(slow);
    let (publisher, mut pel) =
        AsyncClient::new(rumqttc::MqttOptions::new("fast", "127.0.0.1", port), 100);
    for i in 0..30 {
        publisher
            .publish("drops/test", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 30 {
        if let Event::Incoming(Packet::PubAck(_)) = pel.poll().await.unwrap() {
            acked += 1;
        }
    }
    let dropped = eventually(
        "the broker's dropped count in the server's metrics",
        Duration::from_secs(20),
        || {
            let text = app.metrics.render();
            async move {
                text.lines()
                    .find_map(|l| l.strip_prefix("parkpay_broker_dropped_messages "))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|v| *v > 0)
            }
        },
    )
    .await;
    assert!(dropped >= 10, "30 sent, 10 queued: {dropped} dropped");
    let _ = stop.send(());
    let _ = running.await;
}

#[tokio::test]
async fn a_plate_is_found_as_it_was_misremembered_and_an_exception_is_dismissed_with_a_reason() {
    let w = world().await;
    w.driver("京A12345", None).await;
    assert!(w.pass("in-1", "京A12345", WAIT).await.opened);
    let find = |q: &str| {
        let url = w.url(&format!(
            "/api/sessions?lot={}&search={}",
            w.lot,
            crate::scenarios::urlencode(q)
        ));
        let c = w.client.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // S for 5, lower case, a separator: the same plate to the folding the matcher uses.
    let (s, found) = find("京a·1234S").await;
    assert_eq!(s, 200, "{found}");
    let plates: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["plate"].as_str())
        .collect();
    assert_eq!(plates, vec!["京A12345"]);
    // The part remembered, without the province, finds it too.
    let (_, part) = find("a1234s").await;
    assert_eq!(part.as_array().unwrap().len(), 1, "{part}");
    assert_eq!(part[0]["plate"], "京A12345");
    let (_, none) = find("京A99999").await;
    assert!(none.as_array().unwrap().is_empty(), "{none}");
    let (s, bad) = find("··").await;
    assert_eq!(s, 422, "{bad}");

    // A car at the exit with no entry raises an exception; nothing more is needed (it turned
    // back), so the operator dismisses it with a reason.
    let exit = w.pass("out-1", "京B77777", Duration::from_secs(3)).await;
    assert!(!exit.opened);
    let x = eventually("the no-entry exception", WAIT, || async {
        let xs = w
            .get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
            .await;
        xs.as_array()?
            .iter()
            .find(|x| x["kind"] == "no_entry" && x["plate"] == "京B77777")
            .cloned()
    })
    .await;
    let path = format!("/api/exceptions/{}/dismiss", x["id"].as_str().unwrap());
    let post = |body: Value| {
        let rq = w.client.post(w.url(&path)).json(&body);
        async move { rq.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(json!({"reason": " "})).await, 422);
    assert_eq!(post(json!({"reason": "the car turned back"})).await, 200);
    assert_eq!(
        post(json!({"reason": "again"})).await,
        409,
        "once resolved, stays resolved"
    );
    let open = w
        .get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
        .await;
    assert!(
        !open.to_string().contains(x["id"].as_str().unwrap()),
        "{open}"
    );
    let audit = w.get_json("/api/audit").await.to_string();
    assert!(
        audit.contains("exception.dismissed") && audit.contains("the car turned back"),
        "{audit}"
    );
    w.stop().await;
}
