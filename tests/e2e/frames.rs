//! Plain cameras: the simulated camera renders the car and sends JPEG frames, the gateway reads
//! the plate itself (learned reader, voting across the burst), and the stay is charged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_protocol::ManualClock;
use parkpay_server::tariff::Tariff;
use parkpay_sim::devices::SceneCamera;
use parkpay_sim::reference_tariff;
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_car_read_from_camera_frames_is_charged_for_its_stay() {
    let origin: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-25T01:00:00Z")
        .unwrap()
        .into();
    let clock = Arc::new(ManualClock::new(origin));
    let opts = WorldOptions {
        frames: Some(SceneCamera::default()),
        ..WorldOptions::default()
    };
    let w = World::start(opts, clock.clone()).await;
    let plate = "苏E52718";
    w.driver(plate, Some(100_000)).await;

    let entry = w.pass("in-1", plate, WAIT).await;
    if !entry.opened {
        let ex = w.get_json("/api/exceptions").await;
        panic!("the gateway did not read the entry camera's frames: {ex}");
    }
    assert_eq!(entry.capture.frames, 3, "the camera sent a burst");
    clock.advance(chrono::Duration::minutes(200));
    let exit = w.pass("out-1", plate, WAIT).await;
    assert!(exit.opened, "and again at the exit");

    let tariff: Tariff = serde_json::from_value(parkpay_sim::api::example_tariff()).unwrap();
    let expected =
        reference_tariff::fee(&tariff, entry.capture.captured_at, exit.capture.captured_at);
    let lot = w.lot.to_string();
    let charge = eventually("the deduction to succeed", WAIT, || async {
        let sessions = w.get_json(&format!("/api/sessions?lot={lot}")).await;
        let s = sessions.as_array()?.first()?.clone();
        let charges = w
            .get_json(&format!("/api/charges?session={}", s["id"].as_str()?))
            .await;
        let c = charges.as_array()?.first()?.clone();
        (c["status"] == "succeeded").then_some((s, c))
    })
    .await;
    assert_eq!(
        charge.0["plate"], plate,
        "the session carries the plate read from the frames"
    );
    assert_eq!(charge.1["amount"]["minor"].as_i64(), Some(expected));
    w.stop().await;
}
