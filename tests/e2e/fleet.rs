//! A day of traffic: 200 cars with deduction mandates through two entry and two exit lanes, on a
//! compressed clock, judged car by car against the simulator's ground truth.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_protocol::ScaledClock;
use parkpay_server::tariff::Tariff;
use parkpay_sim::mqtt::MqttUrl;
use parkpay_sim::reference_tariff;
use parkpay_sim::report::FeeFn;
use parkpay_sim::world::{drive_audited, WorldConfig};
use parkpay_tests::world::{World, WorldOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cars_with_mandates_are_each_charged_once_and_exactly() {
    let origin: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-24T22:00:00Z")
        .unwrap()
        .into();
    // A day in 30 s of real time.
    let clock = Arc::new(ScaledClock::new(origin, 2880.0));
    let w = World::start(
        WorldOptions {
            rigs: false,
            ..WorldOptions::default()
        },
        clock.clone(),
    )
    .await;

    let tariff: Tariff = serde_json::from_value(parkpay_sim::api::example_tariff()).unwrap();
    // The expected fee comes from the reference tariff applied to ground truth, never from the
    // server or its engine.
    let fee: FeeFn = reference_tariff::fee_fn(tariff);
    let mut world = WorldConfig::four_lanes(w.lot.clone()).unwrap();
    world.traffic.cars = 200;
    world.traffic.seed = 7;
    world.traffic.mandate_share = 1.0;
    world.traffic.empty_wallet_share = 0.0;
    world.traffic.mean_interarrival = Duration::from_secs(6 * 60);
    // Confusable misreads stay on: matching must absorb them. No-reads would need an operator.
    world.misread_rate = 0.03;
    world.no_read_rate = 0.0;
    world.fee = Some(fee);
    world.api_token = Some(w.admin_token.clone());
    world.sandbox_secret = Some(w.sandbox_secret.clone());
    world.settle_wait = Duration::from_secs(30);
    // Patience measured in real time: on a loaded test machine an arm may answer late, which
    // must not make a car give up and drive in twice.
    world.open_wait = Duration::from_secs(10);

    let audit = drive_audited(
        world,
        w.http.clone(),
        MqttUrl::parse(&w.backend.mqtt_url).unwrap(),
        clock,
    )
    .await
    .expect("the run completes");
    let r = &audit.report;
    for m in &audit.mismatches {
        eprintln!("mismatch: {m}");
    }
    assert_eq!(r.cars, 200);
    assert_eq!(
        (r.entries, r.exits),
        (200, 200),
        "every stay opened and closed"
    );
    assert_eq!(
        r.charged_fen, r.expected_fen,
        "charged exactly what the tariff gives"
    );
    assert_eq!(r.mismatches, 0, "{:?}", audit.mismatches);
    // Every non-free stay has exactly one charge, and every charge went through.
    let charges = w.get_json("/api/charges?limit=10000").await;
    let ours: Vec<&serde_json::Value> = charges
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["lot"] == w.lot.as_str())
        .collect();
    assert_eq!(ours.len() as u64, r.charged);
    assert!(ours.iter().all(|c| c["status"] == "succeeded"), "{ours:?}");
    w.stop().await;
}
