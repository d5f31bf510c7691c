//! Evidence pictures (gateway upload over MQTT, storage, serving, retention), plate corrections
//! checked against them (preview, confirmation) and assigning exceptions.

use base64::Engine as _;
use parkpay_protocol::{encode, Direction, Evidence, PassageEvent, ReadQuality, Topic};
use parkpay_server::domain::Role;
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::scenarios::{publish, publish_raw, raw_event, sessions, world, WAIT};
use crate::security::client_as;

/// A small real JPEG: a grey frame with no plate in it.
pub(crate) fn blank_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(160, 120, image::Rgb([120, 124, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("a JPEG encodes");
    out.into_inner()
}

pub(crate) fn digest(image: &[u8]) -> String {
    sha2::Sha256::digest(image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The evidence message of `ev` carrying `image`.
pub(crate) fn evidence_of(ev: &PassageEvent, image: &[u8]) -> Evidence {
    Evidence {
        event_id: ev.event_id,
        lot: ev.lot.clone(),
        lane: ev.lane.clone(),
        gateway: ev.gateway.clone(),
        captured_at: ev.captured_at,
        format: "jpeg".into(),
        digest: digest(image),
        image: base64::engine::general_purpose::STANDARD.encode(image),
    }
}

/// Publishes an evidence message signed as the lot's gateway would.
pub(crate) async fn upload(w: &World, e: &Evidence) {
    let topic = Topic::Evidence(e.lot.clone(), e.lane.clone()).to_string();
    publish_raw(w, &topic, encode(e, w.now(), w.gateway_key.as_deref())).await;
}

/// An exit the gateway read poorly (or not at all), with the digest of its picture; published.
pub(crate) async fn held_exit(w: &World, plate: Option<&str>, image: &[u8]) -> PassageEvent {
    let mut ev = raw_event(
        w,
        "out-1",
        Direction::Exit,
        plate.unwrap_or("京A00000"),
        w.now(),
    );
    match plate {
        Some(_) => {
            ev.quality = ReadQuality::LowConfidence;
            ev.candidates[0].confidence = 0.52;
        }
        None => {
            ev.quality = ReadQuality::NoRead;
            ev.candidates.clear();
        }
    }
    ev.evidence_digest = Some(digest(image));
    publish(w, &ev).await;
    ev
}

/// The open exception raised for `ev`.
pub(crate) async fn exception_of(w: &World, ev: &PassageEvent) -> Value {
    let event = ev.event_id.0.to_string();
    eventually("the passage's exception", WAIT, || async {
        w.get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
            .await
            .as_array()?
            .iter()
            .find(|x| x["event_id"] == event.as_str())
            .cloned()
    })
    .await
}

fn picture_url(w: &World, ev: &PassageEvent) -> reqwest::Url {
    w.url(&format!("/api/passages/{}/evidence", ev.event_id.0))
}

async fn status_of(c: &reqwest::Client, url: reqwest::Url) -> u16 {
    c.get(url).send().await.unwrap().status().as_u16()
}

async fn dead_letters(w: &World, reason: &str) -> usize {
    w.get_json("/api/dead-letters?limit=1000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == reason && d["topic"].as_str().unwrap().ends_with("/evidence"))
        .count()
}

fn correct_url(w: &World, x: &Value) -> reqwest::Url {
    w.url(&format!(
        "/api/exceptions/{}/correct",
        x["id"].as_str().unwrap()
    ))
}

#[tokio::test]
async fn a_picture_is_kept_with_its_passage_and_shown_only_in_its_lot() {
    let (w, _clock) = world().await;
    let image = blank_jpeg();
    let ev = held_exit(&w, None, &image).await;
    upload(&w, &evidence_of(&ev, &image)).await;
    let got = eventually("the picture to be served", WAIT, || async {
        let r = w.client.get(picture_url(&w, &ev)).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(r)
    })
    .await;
    assert_eq!(
        got.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap(),
        "image/jpeg"
    );
    assert_eq!(
        got.headers()[reqwest::header::CACHE_CONTROL]
            .to_str()
            .unwrap(),
        "private, max-age=300",
        "personal data stays out of shared caches"
    );
    assert_eq!(got.bytes().await.unwrap().to_vec(), image, "the same file");
    let x = exception_of(&w, &ev).await;
    assert_eq!(x["has_evidence"], true, "{x}");

    let url = picture_url(&w, &ev);
    assert_eq!(status_of(&reqwest::Client::new(), url.clone()).await, 401);
    let viewer = client_as(&w, Role::Viewer, Some(vec![w.lot.to_string()])).await;
    assert_eq!(
        status_of(&viewer, url.clone()).await,
        200,
        "a viewer of the lot"
    );
    let stranger = client_as(&w, Role::Operator, Some(vec!["another-lot".into()])).await;
    assert_eq!(
        status_of(&stranger, url.clone()).await,
        404,
        "another lot's operator learns nothing"
    );
    // A passage without a picture has none. A picture may come before its passage; a second
    // one for the same passage changes nothing.
    let other = raw_event(&w, "out-2", Direction::Exit, "京A12399", w.now());
    assert_eq!(status_of(&w.client, picture_url(&w, &other)).await, 404);
    upload(&w, &evidence_of(&other, &image)).await;
    let second = [&image[..], &b"another"[..]].concat();
    upload(&w, &evidence_of(&other, &second)).await;
    eventually("the early picture", WAIT, || async {
        (status_of(&w.client, picture_url(&w, &other)).await == 200).then_some(())
    })
    .await;
    let kept = w.client.get(picture_url(&w, &other)).send().await.unwrap();
    assert_eq!(
        kept.bytes().await.unwrap().to_vec(),
        image,
        "the first one stays"
    );
    w.stop().await;
}

#[tokio::test]
async fn hostile_uploads_are_dead_letters_and_nothing_is_kept() {
    let (w, _clock) = world().await;
    let image = blank_jpeg();
    let ev = held_exit(&w, None, &image).await;
    let topic = Topic::Evidence(ev.lot.clone(), ev.lane.clone()).to_string();
    let good = evidence_of(&ev, &image);

    // Signed with another key.
    let wrong_key = [7u8; 32];
    publish_raw(&w, &topic, encode(&good, w.now(), Some(&wrong_key))).await;
    // Not an image at all, and a picture whose digest is another's.
    let mut garbage = good.clone();
    garbage.image = base64::engine::general_purpose::STANDARD.encode(b"<html>not a picture</html>");
    garbage.digest = digest(b"<html>not a picture</html>");
    publish_raw(
        &w,
        &topic,
        encode(&garbage, w.now(), w.gateway_key.as_deref()),
    )
    .await;
    let mut swapped = good.clone();
    swapped.digest = digest(b"another picture");
    publish_raw(
        &w,
        &topic,
        encode(&swapped, w.now(), w.gateway_key.as_deref()),
    )
    .await;
    // Too large, and not even JSON.
    let mut huge = good.clone();
    huge.image = "A".repeat(600 * 1024);
    publish_raw(&w, &topic, encode(&huge, w.now(), w.gateway_key.as_deref())).await;
    publish_raw(&w, &topic, b"\x00\x01 not an envelope".to_vec()).await;
    // A picture for a passage that names another picture.
    let mut other = good.clone();
    let other_image = [&image[..], &b"trailing bytes"[..]].concat();
    other.digest = digest(&other_image);
    other.image = base64::engine::general_purpose::STANDARD.encode(&other_image);
    let _ = exception_of(&w, &ev).await; // the passage is stored first
    publish_raw(
        &w,
        &topic,
        encode(&other, w.now(), w.gateway_key.as_deref()),
    )
    .await;

    for (reason, n) in [
        ("bad_signature", 1),
        ("invalid_image", 2),
        ("oversized", 1),
        ("malformed", 1),
        ("evidence_mismatch", 1),
    ] {
        eventually(&format!("{reason} dead letters"), WAIT, || async {
            (dead_letters(&w, reason).await == n).then_some(())
        })
        .await;
    }
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("parkpay_dead_letters_total{reason=\"invalid_image\"} 2"),
        "counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dead_letters"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        status_of(&w.client, picture_url(&w, &ev)).await,
        404,
        "nothing hostile was kept"
    );
    let kept = w.get_json("/api/dead-letters?limit=1000").await;
    assert!(
        kept.as_array()
            .unwrap()
            .iter()
            .all(|d| d["payload"].as_str().unwrap_or("").len() <= 4096),
        "a refused picture keeps only its first bytes"
    );
    // The server is still well: the real picture is taken after all that.
    upload(&w, &good).await;
    eventually("the real picture", WAIT, || async {
        (status_of(&w.client, picture_url(&w, &ev)).await == 200).then_some(())
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn pictures_past_their_retention_are_purged() {
    let (w, clock) = world().await;
    let image = blank_jpeg();
    let old = held_exit(&w, None, &image).await;
    upload(&w, &evidence_of(&old, &image)).await;
    eventually("the old picture", WAIT, || async {
        (status_of(&w.client, picture_url(&w, &old)).await == 200).then_some(())
    })
    .await;
    clock.advance(chrono::Duration::days(20));
    let young = held_exit(&w, None, &image).await;
    upload(&w, &evidence_of(&young, &image)).await;
    eventually("the young picture", WAIT, || async {
        (status_of(&w.client, picture_url(&w, &young)).await == 200).then_some(())
    })
    .await;
    clock.advance(chrono::Duration::days(11));
    let retention = parkpay_server::ServerConfig::default().evidence.retention();
    assert_eq!(
        retention,
        chrono::Duration::days(30),
        "the documented default"
    );
    let gone = w.app().purge_evidence(retention).await.unwrap();
    assert_eq!(gone, 1, "only the picture older than 30 days");
    assert_eq!(status_of(&w.client, picture_url(&w, &old)).await, 404);
    assert_eq!(status_of(&w.client, picture_url(&w, &young)).await, 200);
    let x = exception_of(&w, &old).await;
    assert_eq!(x["has_evidence"], false, "{x}");
    w.stop().await;
}

#[tokio::test]
async fn a_correction_that_matches_no_stay_is_refused_until_confirmed_against_the_picture() {
    let (w, _clock) = world().await;
    let image = blank_jpeg();
    let ev = held_exit(&w, Some("京A61234"), &image).await;
    let x = exception_of(&w, &ev).await;
    let url = correct_url(&w, &x);
    let no_entry_for = |plate: &'static str| {
        let w = &w;
        async move {
            w.get_json(&format!("/api/exceptions?lot={}", w.lot))
                .await
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["kind"] == "no_entry" && x["plate"] == plate)
                .count()
        }
    };

    // The bug: "XYZ" fits the generic layout, matched nobody, resolved the exception and
    // raised a new no_entry. Now it is refused, with why, and nothing changes.
    for plate in ["XYZ", "京A99999"] {
        let r = w
            .client
            .post(url.clone())
            .json(&json!({ "plate": plate }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409, "{plate}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("confirm"), "{message}");
    }
    assert_eq!(no_entry_for("XYZ").await, 0, "no exception was invented");
    let still = exception_of(&w, &ev).await;
    assert_eq!(
        still["resolved_at"],
        Value::Null,
        "the exception stays open"
    );
    // A plate must still be a plate, confirmed or not.
    let r = w
        .client
        .post(url.clone())
        .json(&json!({"plate": "京A1", "confirmed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);

    // The preview says the same before anything is sent.
    let p: Value = w
        .client
        .post(url.clone())
        .json(&json!({"plate": "京A99999", "preview": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["needs_confirmation"], true, "{p}");
    assert_eq!(
        (p["action"].as_str(), p["reason"].as_str()),
        (Some("hold"), Some("no_entry"))
    );
    assert_eq!(p["stay"], Value::Null);
    assert_eq!(p["has_evidence"], false, "no picture was uploaded here");

    // Confirmed against the picture, it goes ahead and says so in the audit trail.
    let r = w
        .client
        .post(url)
        .json(&json!({"plate": "京A99999", "confirmed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        (d["action"].as_str(), d["reason"].as_str()),
        (Some("hold"), Some("no_entry"))
    );
    let audit = w.get_json("/api/audit?limit=1000").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "exception.plate_corrected"
                && a["detail"]
                    .as_str()
                    .unwrap()
                    .contains("confirmed against the picture")),
        "{audit}"
    );
    w.stop().await;
}

#[tokio::test]
async fn the_preview_tells_what_the_correction_then_does() {
    let (w, clock) = world().await;
    let driver = w.driver("苏AB1234", Some(100_000)).await;
    w.pass("in-1", "苏AB1234", WAIT).await;
    clock.advance(chrono::Duration::minutes(75));
    let image = blank_jpeg();
    let ev = held_exit(&w, Some("苏AB1Z34"), &image).await;
    upload(&w, &evidence_of(&ev, &image)).await;
    let x = exception_of(&w, &ev).await;
    let stay = sessions(&w, "苏AB1234").await[0].clone();
    let url = correct_url(&w, &x);

    let p: Value = eventually("a preview with the picture", WAIT, || async {
        let p: Value = w
            .client
            .post(url.clone())
            .json(&json!({"plate": "苏AB1234", "preview": true}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (p["has_evidence"] == true).then_some(p)
    })
    .await;
    assert_eq!(p["needs_confirmation"], false, "{p}");
    assert_eq!(p["stay"]["id"], stay["id"], "{p}");
    assert_eq!(p["stay"]["entry_at"], stay["entry_at"], "{p}");
    assert_eq!(p["collect"], "mandate");
    assert_eq!(p["driver_id"].as_str(), Some(driver.to_string().as_str()));
    let fee = p["fee"]["minor"].as_i64().expect("a fee");
    assert!(fee > 0, "{p}");
    // A preview changes nothing.
    assert_eq!(sessions(&w, "苏AB1234").await[0]["status"], "open");
    assert_eq!(exception_of(&w, &ev).await["resolved_at"], Value::Null);

    let d: Value = w
        .client
        .post(url)
        .json(&json!({"plate": "苏AB1234"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["action"], p["action"]);
    assert_eq!(d["reason"], p["reason"]);
    assert_eq!(d["session_id"], p["stay"]["id"]);
    assert_eq!(
        d["fee"]["minor"].as_i64(),
        Some(fee),
        "charged what was shown"
    );
    let closed = sessions(&w, "苏AB1234").await[0].clone();
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["fee"]["minor"].as_i64(), Some(fee));
    w.stop().await;
}

#[tokio::test]
async fn an_exception_is_assigned_to_someone_who_may_correct_plates_there() {
    let (w, _clock) = world().await;
    let image = blank_jpeg();
    let ev = held_exit(&w, None, &image).await;
    let x = exception_of(&w, &ev).await;
    let assign = w.url(&format!(
        "/api/exceptions/{}/assign",
        x["id"].as_str().unwrap()
    ));
    let lot = w.lot.to_string();
    for (name, role, lots) in [
        ("olga", "operator", json!([lot])),
        ("omar", "operator", json!(["another-lot"])),
        ("vera", "viewer", json!([lot])),
    ] {
        let r = w
            .client
            .post(w.url("/api/accounts"))
            .json(&json!({"username": name, "password": "correct horse battery", "role": role, "lots": lots}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    for nobody in ["omar", "vera", "nobody"] {
        let r = w
            .client
            .post(assign.clone())
            .json(&json!({ "to": nobody }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            422,
            "{nobody} may not correct plates here"
        );
    }
    let viewer = client_as(&w, Role::Viewer, None).await;
    let r = viewer
        .post(assign.clone())
        .json(&json!({"to": "olga"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = w
        .client
        .post(assign.clone())
        .json(&json!({"to": "olga"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let listed = exception_of(&w, &ev).await;
    assert_eq!(listed["assigned_to"], "olga", "{listed}");

    // Olga signs in and filters the queue to hers.
    let plain = reqwest::Client::new();
    let r = plain
        .post(w.url("/api/login"))
        .json(&json!({"username": "olga", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mine: Value = plain
        .get(w.url("/api/exceptions?open=true&mine=true"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![x["id"].as_str().unwrap()], "{mine}");
    // Others' queues are not hers: the admin's own filter is empty.
    let admins = w.get_json("/api/exceptions?open=true&mine=true").await;
    assert_eq!(admins.as_array().unwrap().len(), 0, "{admins}");
    // Resolved, it is nobody's to take any more.
    let r = w
        .client
        .post(w.url(&format!(
            "/api/exceptions/{}/dismiss",
            x["id"].as_str().unwrap()
        )))
        .json(&json!({"reason": "the car turned back"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = w.client.post(assign).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let audit = w.get_json("/api/audit?limit=1000").await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "exception.assigned"
            && a["actor"] == "token:tests"
            && a["detail"] == "assigned to olga"));
    w.stop().await;
}

#[tokio::test]
async fn the_gateway_sends_the_picture_of_a_passage_it_could_not_read() {
    let (w, _clock) = world().await;
    let image = blank_jpeg();
    // The exit camera sends a burst of frames in which no plate can be read.
    let camera = parkpay_protocol::DeviceId::parse(format!("{}-out-1-cam", w.lot)).unwrap();
    let captured_at = w.now();
    let burst = u64::try_from(captured_at.timestamp_millis()).unwrap();
    for seq in 0..2u32 {
        let frame = parkpay_protocol::Frame {
            device: camera.clone(),
            captured_at,
            burst,
            seq,
            of: 2,
            format: "jpeg".into(),
            image: base64::engine::general_purpose::STANDARD.encode(&image),
        };
        publish_raw(
            &w,
            &Topic::Frame(camera.clone()).to_string(),
            encode(&frame, w.now(), None),
        )
        .await;
    }
    let x = eventually("the unread exit's exception", WAIT, || async {
        w.get_json(&format!("/api/exceptions?lot={}&open=true", w.lot))
            .await
            .as_array()?
            .iter()
            .find(|x| x["kind"] == "unreadable" && x["has_evidence"] == true)
            .cloned()
    })
    .await;
    let url = w.url(&format!(
        "/api/passages/{}/evidence",
        x["event_id"].as_str().unwrap()
    ));
    let got = w.client.get(url).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), image);
    assert_eq!(w.gateway().counters().evidence_published, 1);
    w.stop().await;
}
