//! The gateway's journal: a passage event the server never heard of is sent again until it is
//! decided, without waiting for a reconnect that may never come.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_gateway::resend::ResendPolicy;
use parkpay_protocol::{ArmPosition, ManualClock, PlateColour};
use parkpay_server::tariff::Tariff;
use parkpay_sim::rig::Vehicle;
use parkpay_tests::eventually;
use parkpay_tests::world::{World, WorldOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn origin() -> DateTime<Utc> {
    // 09:00 in Shanghai: day band.
    DateTime::parse_from_rfc3339("2026-11-25T01:00:00Z")
        .unwrap()
        .into()
}

async fn sessions(w: &World, plate: &str) -> Vec<Value> {
    let plate: String = plate
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect::<String>();
    w.get_json(&format!("/api/sessions?lot={}&plate={plate}", w.lot))
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// The broker lost the events (here: the server comes back as a new MQTT session, so whatever
/// the broker kept for the old one never reaches it) while the gateway stayed connected
/// throughout: only the resend timer can get them decided.
#[tokio::test]
async fn events_published_while_no_server_listened_are_resent_until_decided() {
    let clock = Arc::new(ManualClock::new(origin()));
    let opts = WorldOptions {
        decision_timeout: Duration::from_millis(1500),
        resend: Some(ResendPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(2),
        }),
        ..WorldOptions::default()
    };
    let mut w = World::start(opts, clock.clone()).await;
    w.driver("晋A11001", Some(100_000)).await;
    w.driver("晋A11002", Some(100_000)).await;
    let entry = w.pass("in-1", "晋A11001", WAIT).await;
    assert!(entry.opened);
    // The parked car's plate reaches this lot's allowlist; the other has never parked here.
    eventually("the parked car to reach the allowlist", WAIT, || async {
        (w.gateway().counters().allowlist_plates == 1).then_some(())
    })
    .await;
    let connects = w.gateway().counters().connects;
    let in2 = w.take_rig("in-2");

    w.stop_server().await;
    clock.advance(chrono::Duration::minutes(90));
    // The offline policy lets the allowlisted car out; its exit waits in the journal.
    let exit = w.pass("out-1", "晋A11001", WAIT).await;
    assert!(exit.opened, "an allowlisted car is let out by the gateway");
    let out1_opens = w.rig("out-1").arm().state().opens;
    // Another car drives up to an entry and waits there for the server.
    let mut waiting = in2
        .arrive(&Vehicle {
            plate: "晋A11002".parse().unwrap(),
            colour: PlateColour::Blue,
        })
        .await
        .unwrap();
    eventually("both passages to be journaled", WAIT, || async {
        (w.gateway().journal_pending() == 2).then_some(())
    })
    .await;

    w.start_server_with_new_session().await;
    assert!(
        waiting.wait_open(WAIT).await,
        "the waiting car is let in once its resent entry is decided"
    );
    waiting.drive_through().await.unwrap();
    eventually("every journaled event to be decided", WAIT, || async {
        (w.gateway().journal_pending() == 0).then_some(())
    })
    .await;

    let gw = w.gateway().counters();
    assert_eq!(gw.connects, connects, "the gateway never reconnected");
    assert!(gw.events_resent >= 2, "{gw:?}");
    assert!(
        gw.late_decisions >= 1,
        "the exit let out offline was decided late: {gw:?}"
    );
    let out1 = w.rig("out-1").arm().state();
    assert_eq!(
        (out1.opens, out1.position),
        (out1_opens, ArmPosition::Closed),
        "a late decision does not move the arm for a car that has left"
    );

    // The server's database has both passages: the exit closed and charged for the stay the
    // simulator saw, the entry opened a session.
    let s = eventually("the offline exit to close its session", WAIT, || async {
        let s = sessions(&w, "晋A11001").await;
        (s.first()?["status"] == "closed").then(|| s[0].clone())
    })
    .await;
    let tariff: Tariff = serde_json::from_value(parkpay_sim::api::example_tariff()).unwrap();
    let expected = parkpay_sim::reference_tariff::fee(
        &tariff,
        entry.capture.captured_at,
        exit.capture.captured_at,
    );
    let charge = eventually("the charge to settle", WAIT, || async {
        let c = w
            .get_json(&format!("/api/charges?session={}", s["id"].as_str()?))
            .await;
        let c = c.as_array()?.first()?.clone();
        (c["status"] == "succeeded").then_some(c)
    })
    .await;
    assert_eq!(
        charge["amount"]["minor"].as_i64(),
        Some(expected),
        "{charge}"
    );
    let entered = sessions(&w, "晋A11002").await;
    assert_eq!(entered.len(), 1, "{entered:?}");
    assert_eq!(entered[0]["status"], "open");

    in2.shutdown().await;
    w.stop().await;
}
