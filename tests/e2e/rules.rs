//! The lot's own rules through the whole system: passes, the white and black lists, visitor
//! grants, locked cars, vehicle classes, holidays and a full lot. Fees are checked against the
//! simulator's reference tariff (`reference_tariff::fee_with`), never against the server's engine.

use chrono::{DateTime, TimeDelta, Utc};
use parkpay_protocol::{ArmPosition, PlateColour};
use parkpay_server::tariff::VehicleClass;
use parkpay_sim::reference_tariff::{self, StayTerms};
use parkpay_sim::rig::{Passage, PassageOutcome, Vehicle};
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use serde_json::{json, Value};

use crate::scenarios::{charges_of, fen, sessions, settled_charge, tariff, world, WAIT};

/// POSTs (or PUTs) JSON as the admin and returns the status and the body.
async fn send(w: &World, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = w
        .client
        .request(method, w.url(path))
        .json(&body)
        .send()
        .await
        .expect("the request is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(w: &World, path: &str, body: Value) -> (u16, Value) {
    send(w, reqwest::Method::POST, path, body).await
}

/// Puts `plate` on a list of the world's lot and returns the entry.
async fn list(w: &World, kind: &str, plate: &str, extra: Value) -> Value {
    let mut body =
        json!({ "kind": kind, "lot": w.lot.to_string(), "plate": plate, "reason": "test" });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, entry) = post(w, "/api/lists", body).await;
    assert_eq!(status, 201, "{entry}");
    entry
}

fn instant(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an instant: {v}"))
}

/// A car arrives at `lane` and is held: waits until the display shows `line2` for it, checks the
/// arm stayed down, and backs out.
async fn refused(w: &World, lane: &str, vehicle: &Vehicle, line2: &str) {
    held(w, lane, vehicle, line2)
        .await
        .back_out()
        .await
        .expect("backs out");
}

/// A car arrives at `lane` and is held: waits until the display shows `line2` for it, checks the
/// arm stayed down, and stays at the barrier.
async fn held<'w>(w: &'w World, lane: &str, vehicle: &Vehicle, line2: &str) -> Passage<'w> {
    let rig = w.rig(lane);
    let mut display = rig.display().watch();
    let before = display.borrow().updates;
    let p = rig.arrive(vehicle).await.expect("the car arrives");
    let shown = tokio::time::timeout(
        WAIT,
        display.wait_for(|s| s.updates > before && s.text.line2 == line2),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let text = display.borrow().text.clone();
    assert!(
        shown,
        "{} at {lane}: the display should say {line2:?}, it says {text:?}",
        vehicle.plate.as_str()
    );
    assert_eq!(
        rig.arm().watch().borrow().position,
        ArmPosition::Closed,
        "refused: the arm stays down"
    );
    p
}

fn blue(plate: &str) -> Vehicle {
    Vehicle {
        plate: plate.parse().expect("a valid plate"),
        colour: PlateColour::Blue,
    }
}

/// Drives `vehicle` through `lane`, which must open.
async fn through(w: &World, lane: &str, vehicle: &Vehicle) -> PassageOutcome {
    let mut p = w.rig(lane).arrive(vehicle).await.expect("the car arrives");
    assert!(
        p.wait_open(WAIT).await,
        "{} should pass {lane}",
        vehicle.plate.as_str()
    );
    p.drive_through().await.expect("drives through")
}

/// The last decision's reason for `plate`'s session, from its exit event.
async fn closed_session(w: &World, plate: &str) -> Value {
    let s = sessions(w, plate).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["status"], "closed", "{}", s[0]);
    s[0].clone()
}

#[tokio::test]
async fn a_pass_holder_goes_in_and_out_for_free() {
    let (w, clock) = world().await;
    // No mandate, no wallet: without the pass this car would be held to pay.
    w.driver("京A20001", None).await;
    let now = w.now();
    list(
        &w,
        "pass",
        "京A20001",
        json!({ "valid_from": now - TimeDelta::days(3), "valid_until": now + TimeDelta::days(27) }),
    )
    .await;
    through(&w, "in-1", &blue("京A20001")).await;
    clock.advance(TimeDelta::hours(5));
    through(&w, "out-1", &blue("京A20001")).await;
    let s = closed_session(&w, "京A20001").await;
    assert_eq!(fen(&s["fee"]), 0, "{s}");
    assert!(
        s["quote"]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["label"] == "pass")),
        "the receipt names the pass: {s}"
    );
    assert!(charges_of(&w, s["id"].as_str().unwrap()).await.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn an_expired_pass_is_charged_only_for_the_time_after_it_ended() {
    let (w, clock) = world().await;
    w.driver("京A20002", Some(100_000)).await;
    let now = w.now();
    let pass = list(
        &w,
        "pass",
        "京A20002",
        json!({ "valid_from": now - TimeDelta::days(30), "valid_until": now + TimeDelta::minutes(50),
                "grace_minutes": 10 }),
    )
    .await;
    let entry = through(&w, "in-1", &blue("京A20002")).await;
    clock.advance(TimeDelta::minutes(200));
    let exit = through(&w, "out-1", &blue("京A20002")).await;
    let terms = StayTerms {
        covered: vec![(
            instant(&pass["valid_from"]),
            Some(instant(&pass["valid_until"]) + TimeDelta::minutes(10)),
        )],
        ..StayTerms::default()
    };
    let expected = reference_tariff::fee_with(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
        &terms,
    );
    let full = reference_tariff::fee(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
    );
    assert!(expected > 0 && expected < full, "{expected} of {full}");
    let s = closed_session(&w, "京A20002").await;
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(
        (c["status"].as_str(), fen(&c["amount"])),
        (Some("succeeded"), expected),
        "{c}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_black_listed_plate_is_refused_at_entry_and_raised_to_the_operator() {
    let (w, clock) = world().await;
    list(
        &w,
        "black",
        "京A20003",
        json!({ "reason": "unpaid fees at other lots" }),
    )
    .await;
    refused(
        &w,
        "in-1",
        &blue("京A20003"),
        "Entry refused: see the office",
    )
    .await;
    assert!(sessions(&w, "京A20003").await.is_empty(), "no stay opened");
    let lot = w.lot.to_string();
    let open = eventually("the black-list alarm", WAIT, || async {
        let x = w.get_json(&format!("/api/exceptions?lot={lot}")).await;
        x.as_array()?
            .iter()
            .find(|e| e["kind"] == "blacklisted" && e["plate"] == "京A20003")
            .cloned()
    })
    .await;
    assert!(
        open["detail"].as_str().unwrap().contains("unpaid fees"),
        "the alarm says why: {open}"
    );
    // Revoked, the plate is an ordinary car again.
    let entries = w.get_json("/api/lists?kind=black&plate=京A20003").await;
    let id = entries[0]["id"].as_str().unwrap().to_string();
    let (status, revoked) = post(&w, &format!("/api/lists/{id}/revoke"), json!({})).await;
    assert_eq!(status, 200, "{revoked}");
    let (status, again) = post(&w, &format!("/api/lists/{id}/revoke"), json!({})).await;
    assert_eq!(status, 409, "revoking twice is refused: {again}");
    // The car comes back the next day (the gateway drops a repeat read of the same plate at the
    // same lane within its duplicate-read window).
    clock.advance(TimeDelta::days(1));
    through(&w, "in-1", &blue("京A20003")).await;
    w.stop().await;
}

#[tokio::test]
async fn visitor_grants_make_a_stay_free_or_discount_it() {
    let (w, clock) = world().await;
    w.driver("京A20004", None).await;
    w.driver("京A20005", Some(100_000)).await;
    let now = w.now();
    let window = json!({ "valid_from": now, "valid_until": now + TimeDelta::hours(4) });
    list(&w, "visitor", "京A20004", window.clone()).await;
    let mut discounted = window.clone();
    discounted["percent_off"] = json!(40);
    list(&w, "visitor", "京A20005", discounted).await;

    through(&w, "in-1", &blue("京A20004")).await;
    let paid_in = through(&w, "in-2", &blue("京A20005")).await;
    clock.advance(TimeDelta::hours(3));
    let free_out = through(&w, "out-1", &blue("京A20004")).await;
    let paid_out = through(&w, "out-2", &blue("京A20005")).await;
    assert!(
        free_out.opened && !free_out.held,
        "a free visitor is not held"
    );
    let s = closed_session(&w, "京A20004").await;
    assert_eq!(fen(&s["fee"]), 0, "{s}");

    let expected = reference_tariff::fee_with(
        &tariff(),
        paid_in.capture.captured_at,
        paid_out.capture.captured_at,
        &StayTerms {
            percent_off: Some(40),
            ..StayTerms::default()
        },
    );
    let s = closed_session(&w, "京A20005").await;
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(fen(&c["amount"]), expected, "{c}");
    assert!(
        s["quote"]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["label"] == "visitor -40 %")),
        "the receipt shows the discount: {s}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_locked_car_is_held_at_the_exit_until_its_owner_unlocks_it() {
    let (w, clock) = world().await;
    w.driver("京A20006", Some(100_000)).await;
    through(&w, "in-1", &blue("京A20006")).await;
    clock.advance(TimeDelta::hours(2));
    let (status, v) = post(&w, "/api/vehicles/京A20006/lock", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["locked_at"].is_string(), "{v}");

    let mut waiting = held(
        &w,
        "out-1",
        &blue("京A20006"),
        "Vehicle locked by its owner",
    )
    .await;
    let lot = w.lot.to_string();
    eventually("the locked-exit alarm", WAIT, || async {
        let x = w.get_json(&format!("/api/exceptions?lot={lot}")).await;
        x.as_array()?
            .iter()
            .any(|e| e["kind"] == "locked_exit" && e["plate"] == "京A20006")
            .then_some(())
    })
    .await;
    let s = sessions(&w, "京A20006").await;
    assert_eq!(s[0]["status"], "open", "the stay goes on: {}", s[0]);

    // The owner unlocks the car from their phone while it waits: the barrier opens for it.
    let (status, v) = post(&w, "/api/vehicles/京A20006/unlock", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        waiting.wait_open(WAIT).await,
        "unlocking lets the waiting car out"
    );
    waiting.drive_through().await.expect("drives through");
    let (status, _) = post(&w, "/api/vehicles/京A20006/unlock", json!({})).await;
    assert_eq!(status, 409, "unlocking an unlocked car is refused");
    let s = closed_session(&w, "京A20006").await;
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    w.stop().await;
}

#[tokio::test]
async fn large_and_new_energy_vehicles_are_priced_by_their_class() {
    let (w, clock) = world().await;
    let mut t = tariff();
    t.classes = vec![
        parkpay_server::tariff::ClassRule {
            class: VehicleClass::Large,
            percent: 200,
        },
        parkpay_server::tariff::ClassRule {
            class: VehicleClass::NewEnergy,
            percent: 50,
        },
    ];
    let lot = w.lot.to_string();
    let r = w
        .client
        .put(w.url(&format!("/api/lots/{lot}/tariff")))
        .json(&t)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // A yellow plate is a large vehicle's; an eight-character plate is new-energy.
    let cars = [
        (
            Vehicle {
                plate: "京A20007".parse().unwrap(),
                colour: PlateColour::Yellow,
            },
            VehicleClass::Large,
        ),
        (
            Vehicle {
                plate: "京AD20008".parse().unwrap(),
                colour: PlateColour::Green,
            },
            VehicleClass::NewEnergy,
        ),
        (blue("京A20009"), VehicleClass::Small),
    ];
    let mut entries = Vec::new();
    for (v, _) in &cars {
        w.driver(v.plate.as_str(), Some(100_000)).await;
        entries.push(through(&w, "in-1", v).await);
    }
    clock.advance(TimeDelta::minutes(150));
    for ((v, class), entry) in cars.iter().zip(&entries) {
        let exit = through(&w, "out-1", v).await;
        let expected = reference_tariff::fee_with(
            &t,
            entry.capture.captured_at,
            exit.capture.captured_at,
            &StayTerms {
                class: Some(*class),
                ..StayTerms::default()
            },
        );
        let s = closed_session(&w, v.plate.as_str()).await;
        let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
        assert_eq!(fen(&c["amount"]), expected, "{class:?}: {c}");
    }
    w.stop().await;
}

#[tokio::test]
async fn a_holiday_is_priced_by_its_own_bands() {
    let (w, clock) = world().await;
    let mut t = tariff();
    let today = w.now().with_timezone(&t.time_zone).date_naive();
    t.holidays = vec![parkpay_server::tariff::Holiday {
        date: today,
        name: Some("Founders' Day".into()),
        free: false,
    }];
    t.holiday_bands = vec![parkpay_server::tariff::Band {
        name: Some("holiday".into()),
        start: "00:00".parse().unwrap(),
        end: "00:00".parse().unwrap(),
        unit_price: parkpay_protocol::Money::cny(50),
    }];
    let lot = w.lot.to_string();
    let r = w
        .client
        .put(w.url(&format!("/api/lots/{lot}/tariff")))
        .json(&t)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    w.driver("京A20010", Some(100_000)).await;
    let entry = through(&w, "in-1", &blue("京A20010")).await;
    clock.advance(TimeDelta::minutes(190));
    let exit = through(&w, "out-1", &blue("京A20010")).await;
    let expected = reference_tariff::fee(&t, entry.capture.captured_at, exit.capture.captured_at);
    let ordinary = reference_tariff::fee(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
    );
    assert!(
        expected < ordinary,
        "the holiday is cheaper: {expected} vs {ordinary}"
    );
    let s = closed_session(&w, "京A20010").await;
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(fen(&c["amount"]), expected, "{c}");
    assert!(
        s["quote"]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["label"]
                .as_str()
                .is_some_and(|x| x.starts_with("Founders' Day")))),
        "the receipt names the holiday: {s}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_full_lot_refuses_entries_and_keeps_its_reserved_spaces_for_pass_holders() {
    let (w, _clock) = world().await;
    let lot = w.lot.to_string();
    let (status, l) = send(
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/spaces"),
        json!({ "capacity": 2, "reserved_spaces": 1 }),
    )
    .await;
    assert_eq!(status, 200, "{l}");
    let (status, bad) = send(
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/spaces"),
        json!({ "capacity": 2, "reserved_spaces": 3 }),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or_default()
            .contains("reserved_spaces"),
        "{bad}"
    );

    let now = w.now();
    list(
        &w,
        "pass",
        "京A20013",
        json!({ "valid_from": now, "valid_until": now + TimeDelta::days(30) }),
    )
    .await;
    through(&w, "in-1", &blue("京A20011")).await;
    // One space left, and it is reserved.
    refused(&w, "in-1", &blue("京A20012"), "Car park full").await;
    assert!(sessions(&w, "京A20012").await.is_empty());
    through(&w, "in-1", &blue("京A20013")).await;
    let l = w.get_json(&format!("/api/lots/{lot}")).await;
    assert_eq!(l["occupancy"], 2, "{l}");
    w.stop().await;
}

#[tokio::test]
async fn list_entries_are_validated_and_audited() {
    let (w, _clock) = world().await;
    for (body, field) in [
        (
            json!({ "kind": "pass", "plate": "京A20014", "reason": "x" }),
            "valid_until",
        ),
        (
            json!({ "kind": "white", "plate": "XYZ!", "reason": "x" }),
            "plate",
        ),
        (
            json!({ "kind": "white", "plate": "京A20014", "reason": "x", "percent_off": 50 }),
            "percent_off",
        ),
        (
            json!({ "kind": "visitor", "plate": "京A20014", "reason": "x", "percent_off": 100,
                    "valid_until": "2030-01-01T00:00:00Z" }),
            "percent_off",
        ),
        (
            json!({ "kind": "white", "plate": "京A20014", "reason": " " }),
            "reason",
        ),
        (
            json!({ "kind": "grey", "plate": "京A20014", "reason": "x" }),
            "kind",
        ),
    ] {
        let (status, e) = post(&w, "/api/lists", body.clone()).await;
        assert!((400..500).contains(&status), "{body}: {status} {e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(field),
            "{body}: the error names {field}: {e}"
        );
    }
    list(&w, "white", "京A20014", json!({ "reason": "fire brigade" })).await;
    let audit = w.get_json("/api/audit").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "list.white_added" && a["subject"] == "plate 京A20014"),
        "{audit}"
    );
    w.stop().await;
}

/// Sends JSON with a merchant's key.
async fn as_merchant(w: &World, key: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(w.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the request is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Creates a merchant of the world's lot; returns its id and its key.
async fn merchant(w: &World, body: Value) -> (String, String) {
    let lot = w.lot.to_string();
    let (status, m) = post(w, &format!("/api/lots/{lot}/merchants"), body).await;
    assert_eq!(status, 201, "{m}");
    (
        m["id"].as_str().expect("an id").to_string(),
        m["key"]
            .as_str()
            .expect("the key is shown once")
            .to_string(),
    )
}

#[tokio::test]
async fn a_merchant_validation_is_redeemed_once_and_refused_a_second_time() {
    let (w, clock) = world().await;
    let (cafe_id, cafe) = merchant(
        &w,
        json!({ "name": "Cafe Mocha", "minutes_off": 60, "daily_limit": 2 }),
    )
    .await;
    let (_, mall) = merchant(
        &w,
        json!({ "name": "Mall", "amount_off": { "minor": 300, "currency": "CNY" }, "daily_limit": 5 }),
    )
    .await;
    w.driver("京A20015", Some(100_000)).await;
    w.driver("京A20016", Some(100_000)).await;
    let entry = through(&w, "in-1", &blue("京A20015")).await;
    through(&w, "in-2", &blue("京A20016")).await;

    // By plate, for a parked car; a car not parked here cannot be validated.
    let (status, v) = as_merchant(
        &w,
        &cafe,
        "/api/validations",
        json!({ "plate": "京A20015" }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, e) = as_merchant(
        &w,
        &cafe,
        "/api/validations",
        json!({ "plate": "京A29999" }),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    // One per stay: the mall cannot add a second one to the same stay.
    let (status, e) = as_merchant(
        &w,
        &mall,
        "/api/validations",
        json!({ "plate": "京A20015" }),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    // A code, claimed by the other driver; a second claim of the same code is refused.
    let (status, code) = as_merchant(&w, &mall, "/api/validations/codes", json!({})).await;
    assert_eq!(status, 201, "{code}");
    let url = code["url"].as_str().unwrap();
    let path = &url[url.find("/v/").expect("a /v/ link")..];
    let page = w.client.get(w.url(path)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(code["code"].as_str().unwrap()),
        "the page carries the code"
    );
    let claim = json!({ "code": code["code"], "plate": "京A20016" });
    let (status, c) = post(&w, "/api/validations/claim", claim.clone()).await;
    assert_eq!(status, 200, "{c}");
    let (status, again) = post(&w, "/api/validations/claim", claim).await;
    assert_eq!(status, 409, "a code is used once: {again}");
    // The café's limit of two a day: the second is issued (as a code), the third refused.
    let (status, _) = as_merchant(&w, &cafe, "/api/validations/codes", json!({})).await;
    assert_eq!(status, 201);
    let (status, e) = as_merchant(&w, &cafe, "/api/validations/codes", json!({})).await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("daily limit"),
        "{e}"
    );
    // Without a key, or with an operator's token, nobody validates.
    let (status, _) = as_merchant(
        &w,
        "pmk_nonsense",
        "/api/validations",
        json!({ "plate": "京A20015" }),
    )
    .await;
    assert_eq!(status, 401);

    clock.advance(TimeDelta::minutes(150));
    let exit = through(&w, "out-1", &blue("京A20015")).await;
    let expected = reference_tariff::fee_with(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
        &StayTerms {
            validation_minutes: 60,
            ..StayTerms::default()
        },
    );
    let s = closed_session(&w, "京A20015").await;
    let c = settled_charge(&w, s["id"].as_str().unwrap()).await;
    assert_eq!(fen(&c["amount"]), expected, "{c}");
    assert!(
        s["quote"]["lines"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l["label"] == "validation Cafe Mocha -60 min")),
        "{s}"
    );
    through(&w, "out-2", &blue("京A20016")).await;
    let s2 = closed_session(&w, "京A20016").await;
    let full = reference_tariff::fee(
        &tariff(),
        entry.capture.captured_at,
        exit.capture.captured_at,
    );
    let c2 = settled_charge(&w, s2["id"].as_str().unwrap()).await;
    assert!(
        fen(&c2["amount"]) < full,
        "the mall's 3 yuan came off: {c2}"
    );

    // Redeemed: the same car's next stay does not get the validation again.
    through(&w, "in-1", &blue("京A20015")).await;
    clock.advance(TimeDelta::minutes(150));
    through(&w, "out-1", &blue("京A20015")).await;
    let stays = sessions(&w, "京A20015").await;
    assert_eq!(stays.len(), 2, "{stays:?}");
    let newest = stays
        .iter()
        .find(|x| x["id"] != s["id"])
        .expect("the second stay");
    assert!(
        !newest["quote"]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["label"]
                .as_str()
                .is_some_and(|x| x.starts_with("validation")))),
        "{newest}"
    );
    let audit = w.get_json("/api/audit?limit=200").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "validation.redeemed"),
        "{audit}"
    );
    // A disabled merchant's key is refused from then on.
    let (status, _) = post(&w, &format!("/api/merchants/{cafe_id}/disable"), json!({})).await;
    assert_eq!(status, 204);
    let (status, _) = as_merchant(&w, &cafe, "/api/validations/codes", json!({})).await;
    assert_eq!(status, 401, "a disabled merchant validates nothing");
    w.stop().await;
}

#[tokio::test]
async fn an_offline_gateway_lets_pass_holders_out_and_holds_black_listed_and_locked_cars() {
    let clock = std::sync::Arc::new(parkpay_protocol::ManualClock::new(
        crate::scenarios::origin(),
    ));
    let opts = parkpay_tests::world::WorldOptions {
        decision_timeout: std::time::Duration::from_millis(1500),
        ..parkpay_tests::world::WorldOptions::default()
    };
    let mut w = World::start(opts, clock.clone()).await;
    // A pass holder without a mandate, a mandated driver who will lock the car, and a mandated
    // driver who is black-listed once parked: only the pass holder may leave offline.
    w.driver("京A20021", None).await;
    w.driver("京A20022", Some(100_000)).await;
    w.driver("京A20023", Some(100_000)).await;
    let now = w.now();
    list(
        &w,
        "pass",
        "京A20021",
        json!({ "valid_from": now, "valid_until": now + TimeDelta::days(30) }),
    )
    .await;
    for plate in ["京A20021", "京A20022", "京A20023"] {
        through(&w, "in-1", &blue(plate)).await;
    }
    eventually(
        "the three parked cars to reach the allowlist",
        WAIT,
        || async { (w.gateway().counters().allowlist_plates == 3).then_some(()) },
    )
    .await;
    let (status, _) = post(&w, "/api/vehicles/京A20022/lock", json!({})).await;
    assert_eq!(status, 200);
    list(&w, "black", "京A20023", json!({ "reason": "stolen" })).await;
    eventually(
        "the locked and black-listed cars to leave the allowlist",
        WAIT,
        || async { (w.gateway().counters().allowlist_plates == 1).then_some(()) },
    )
    .await;

    w.stop_server().await;
    clock.advance(TimeDelta::hours(2));
    let out = through(&w, "out-1", &blue("京A20021")).await;
    assert!(
        out.opened,
        "the pass holder is let out by the gateway alone"
    );
    for plate in ["京A20022", "京A20023"] {
        refused(&w, "out-1", &blue(plate), "An attendant will help you").await;
    }
    w.stop().await;
}

/// Publishes, as the gateway, a passage whose plate was not read, and waits until it is held.
async fn unread(w: &World, lane: &str, direction: parkpay_protocol::Direction) -> String {
    let mut ev = crate::scenarios::raw_event(w, lane, direction, "京A?", w.now());
    ev.candidates.clear();
    ev.quality = parkpay_protocol::ReadQuality::NoRead;
    crate::scenarios::publish(w, &ev).await;
    let id = ev.event_id.to_string();
    let lot = w.lot.to_string();
    eventually("the unread passage to be held", WAIT, || async {
        let xs = w
            .get_json(&format!("/api/exceptions?lot={lot}&open=true"))
            .await;
        xs.as_array()?
            .iter()
            .any(|x| x["kind"] == "unreadable" && x["event_id"] == id.as_str())
            .then_some(())
    })
    .await;
    id
}

#[tokio::test]
async fn a_car_without_a_plate_takes_a_ticket_at_the_entry_and_pays_with_it_at_the_exit() {
    let (w, clock) = world().await;
    use parkpay_protocol::Direction::{Entry, Exit};
    let held_in = unread(&w, "in-1", Entry).await;
    let page = w
        .client
        .get(w.url(&format!("/ticket/{held_in}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let p = w.get_json(&format!("/api/tickets/passage/{held_in}")).await;
    assert_eq!(
        (p["direction"].as_str(), p["waiting"].as_bool()),
        (Some("entry"), Some(true)),
        "{p}"
    );

    let (status, t) = post(&w, "/api/tickets", json!({ "event_id": held_in })).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(
        (
            t["decision"]["action"].as_str(),
            t["decision"]["reason"].as_str()
        ),
        (Some("open"), Some("entered")),
        "{t}"
    );
    let plate = t["plate"].as_str().unwrap().to_string();
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let (status, again) = post(&w, "/api/tickets", json!({ "event_id": held_in })).await;
    assert_eq!(status, 409, "one ticket per held entry: {again}");
    let s = sessions(&w, &plate).await;
    assert_eq!(
        (s.len(), s[0]["status"].as_str()),
        (1, Some("open")),
        "{s:?}"
    );
    let entry_at = instant(&s[0]["entry_at"]);

    clock.advance(TimeDelta::minutes(95));
    let held_out = unread(&w, "out-1", Exit).await;
    // A ticket taken at an entry is no good at an entry, and a made-up one at all.
    let (status, _) = post(&w, "/api/tickets", json!({ "event_id": held_out })).await;
    assert_eq!(status, 422);
    let (status, _) = post(
        &w,
        "/api/tickets/exit",
        json!({ "ticket": "tk_0000", "event_id": held_out }),
    )
    .await;
    assert_eq!(status, 404);
    let (status, d) = post(
        &w,
        "/api/tickets/exit",
        json!({ "ticket": ticket, "event_id": held_out }),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["reason"], "payment_required", "{d}");
    let session: uuid::Uuid = s[0]["id"].as_str().unwrap().parse().unwrap();
    let paid = w.api.pay_session(session).await.unwrap();
    let exit_at = instant(&sessions(&w, &plate).await[0]["exit_at"]);
    assert_eq!(
        paid.amount.minor,
        reference_tariff::fee(&tariff(), entry_at, exit_at)
    );
    let (status, _) = post(
        &w,
        "/api/tickets/exit",
        json!({ "ticket": ticket, "event_id": held_out }),
    )
    .await;
    assert_eq!(status, 409, "a used ticket lets nobody out again");
    w.stop().await;
}

/// The sandbox wallet's balance, as the provider holds it.
async fn balance(w: &World, driver: uuid::Uuid) -> i64 {
    let r = reqwest::Client::new()
        .get(w.url(&format!("/api/sandbox/wallets/wallet-{driver}")))
        .bearer_auth(&w.sandbox_secret)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    fen(&v["balance"])
}

#[tokio::test]
async fn a_pass_bought_through_the_provider_is_paid_once_and_renewed_from_its_end() {
    let (w, clock) = world().await;
    let mut t = tariff();
    t.pass_month_price = Some(parkpay_protocol::Money::cny(30_000));
    let lot = w.lot.to_string();
    let r = w
        .client
        .put(w.url(&format!("/api/lots/{lot}/tariff")))
        .json(&t)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let driver = w.driver("京A20030", Some(100_000)).await;
    w.driver("京A20031", Some(100)).await;

    let first = json!({ "purchase_id": uuid::Uuid::now_v7(), "lot": lot, "plate": "京A20030", "months": 1 });
    let (status, bought) = post(&w, "/api/passes", first.clone()).await;
    assert_eq!(status, 201, "{bought}");
    assert_eq!(fen(&bought["purchase"]["amount"]), 30_000);
    assert_eq!(balance(&w, driver).await, 70_000);
    // The same request again (a retry after a lost answer): the same pass, no second debit.
    let (status, again) = post(&w, "/api/passes", first).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["pass"]["id"], bought["pass"]["id"]);
    assert_eq!(balance(&w, driver).await, 70_000);
    // A renewal starts where the first pass ends.
    let (status, renewed) = post(
        &w,
        "/api/passes",
        json!({ "purchase_id": uuid::Uuid::now_v7(), "lot": lot, "plate": "京A20030", "months": 2 }),
    )
    .await;
    assert_eq!(status, 201, "{renewed}");
    assert_eq!(renewed["pass"]["valid_from"], bought["pass"]["valid_until"]);
    assert_eq!(balance(&w, driver).await, 10_000);
    // Declined: no money, no pass.
    let (status, declined) = post(
        &w,
        "/api/passes",
        json!({ "purchase_id": uuid::Uuid::now_v7(), "lot": lot, "plate": "京A20031", "months": 1 }),
    )
    .await;
    assert_eq!(status, 422, "{declined}");
    assert!(w
        .get_json("/api/lists?kind=pass&plate=京A20031")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // The pass holder parks for free.
    through(&w, "in-1", &blue("京A20030")).await;
    clock.advance(TimeDelta::hours(3));
    through(&w, "out-1", &blue("京A20030")).await;
    let s = closed_session(&w, "京A20030").await;
    assert_eq!(fen(&s["fee"]), 0, "{s}");
    assert_eq!(balance(&w, driver).await, 10_000, "nothing more is charged");
    w.stop().await;
}

#[tokio::test]
async fn lists_are_kept_only_by_operators_of_their_lot() {
    let (w, _clock) = world().await;
    let lot = w.lot.to_string();
    let token = |role: &'static str, lots: Value| {
        let w = &w;
        async move {
            let (status, t) = post(
                w,
                "/api/tokens",
                json!({ "name": role, "role": role, "lots": lots }),
            )
            .await;
            assert_eq!(status, 201, "{t}");
            parkpay_tests::world::authorised_client(t["token"].as_str().unwrap())
        }
    };
    let elsewhere = token("operator", json!(["elsewhere"])).await;
    let viewer = token("viewer", json!([lot])).await;
    let here = token("operator", json!([lot])).await;
    let entry = json!({ "kind": "black", "lot": lot, "plate": "京A20040", "reason": "test" });
    for (client, status) in [(&elsewhere, 403), (&viewer, 403), (&here, 201)] {
        let r = client
            .post(w.url("/api/lists"))
            .json(&entry)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
    // Every lot needs a grant on every lot.
    let every = json!({ "kind": "black", "plate": "京A20040", "reason": "test" });
    let r = here
        .post(w.url("/api/lists"))
        .json(&every)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let listed = w.get_json("/api/lists?plate=京A20040").await;
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let r = elsewhere
        .post(w.url(&format!("/api/lists/{id}/revoke")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "another lot's operator cannot revoke it"
    );
    // Another lot's operator does not even see this lot's entries.
    let seen: Value = elsewhere
        .get(w.url("/api/lists"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seen.as_array().unwrap().is_empty(), "{seen}");
    w.stop().await;
}
