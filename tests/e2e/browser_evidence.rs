//! The exception queue in a real browser: an operator sees the picture of a held passage,
//! checks the correction against it, confirms, and the exception leaves the queue.

use fantoccini::Client;
use parkpay_protocol::PlateColour;
use parkpay_server::domain::Role;
use parkpay_sim::devices::{FrameSource, SceneCamera};
use parkpay_tests::eventually;
use serde_json::{json, Value};

use crate::browser::{browser, sign_in};
use crate::evidence::{evidence_of, exception_of, held_exit, upload};
use crate::scenarios::{sessions, world, WAIT};

/// Runs `script` (with `args`) in the page and returns what it returns.
async fn run(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args).await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_operator_checks_a_correction_against_the_picture_and_the_exception_leaves_the_queue() {
    let (w, clock) = world().await;
    let Some(b) = browser(1440, 900).await else {
        w.stop().await;
        return;
    };
    let plate = "京A12345";
    w.driver(plate, Some(100_000)).await;
    assert!(w.pass("in-1", plate, WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(95));
    // The exit camera's best frame: the car, its plate read unsurely as another.
    let picture = SceneCamera::default()
        .frames(plate, PlateColour::Blue, 11)
        .remove(0);
    let ev = held_exit(&w, Some("京A1234S"), &picture).await;
    upload(&w, &evidence_of(&ev, &picture)).await;
    let x = exception_of(&w, &ev).await;
    let xid = x["id"].as_str().unwrap().to_string();
    eventually("the picture to be kept", WAIT, || async {
        (exception_of(&w, &ev).await["has_evidence"] == true).then_some(())
    })
    .await;

    sign_in(&b, &w, Role::Operator).await;
    let c = &b.client;
    // The queue shows the picture as a thumbnail, loaded.
    eventually("a loaded thumbnail in the queue", WAIT, || async {
        let loaded = run(
            c,
            "var i = document.querySelector('#exc img.exc-thumb'); \
             return !!i && i.complete && i.naturalWidth > 0;",
            vec![],
        )
        .await;
        (loaded == true).then_some(())
    })
    .await;
    // On a phone the queue, thumbnail and all, is no wider than the screen.
    c.set_window_size(375, 812).await.unwrap();
    let overflow = run(
        c,
        "document.getElementById('exc').scrollIntoView(); \
         var w = 0, who = ''; document.querySelectorAll('#exc, #exc *').forEach(function (e) { \
           var r = e.getBoundingClientRect().right; if (r > w) { w = r; who = e.tagName + '.' + e.className; } }); \
         return [w - document.documentElement.clientWidth, who];",
        vec![],
    )
    .await;
    let queue = c.screenshot().await.unwrap();
    std::fs::write(
        std::env::temp_dir().join("exceptions-queue-phone.png"),
        queue,
    )
    .unwrap();
    assert!(
        overflow[0].as_f64().unwrap_or(f64::MAX) <= 0.0,
        "the queue fits a phone's width: {overflow}"
    );
    c.set_window_size(1440, 900).await.unwrap();
    // Open the correction dialog of that row (read and click in one script).
    let opened = run(
        c,
        "var b = Array.prototype.find.call(document.querySelectorAll('#exc button.exc-fix'), \
           function (b) { return b.textContent === 'Correct plate'; }); \
         if (!b) return false; b.click(); return document.getElementById('fix').open;",
        vec![],
    )
    .await;
    assert_eq!(opened, true, "the dialog opens");
    eventually("the large picture in the dialog", WAIT, || async {
        let v = run(
            c,
            "var i = document.getElementById('fix-pic'); \
             return !i.hidden && i.complete && i.naturalWidth > 0 ? i.getBoundingClientRect().width : 0;",
            vec![],
        )
        .await;
        (v.as_f64().unwrap_or(0.0) > 300.0).then_some(())
    })
    .await;
    // Type the plate as read off the picture and ask what the correction would do.
    run(
        c,
        "var p = document.getElementById('fix-plate'); p.value = arguments[0]; \
         p.dispatchEvent(new Event('input')); document.getElementById('fix-submit').click();",
        vec![json!(plate)],
    )
    .await;
    let preview = eventually("the preview beside the picture", WAIT, || async {
        let v = run(
            c,
            "var p = document.getElementById('fix-preview'); \
             return p.hidden ? null : p.textContent;",
            vec![],
        )
        .await;
        v.as_str().map(str::to_string)
    })
    .await;
    let stay = sessions(&w, plate).await[0].clone();
    assert_eq!(stay["status"], "open", "checking changed nothing");
    assert!(
        preview.contains("in ") && preview.contains("entered"),
        "{preview}"
    );
    assert!(preview.contains("deduction mandate"), "{preview}");
    assert!(
        preview.contains("Mandate") || preview.contains("mandate"),
        "{preview}"
    );
    let button = run(
        c,
        "return document.getElementById('fix-submit').textContent;",
        vec![],
    )
    .await;
    assert_eq!(button, "Confirm correction");

    // Desktop screenshot for the docs, then a phone-sized look at the same dialog.
    let png = c.screenshot().await.unwrap();
    std::fs::write(
        std::env::var("PARKPAY_SCREENSHOT_DIR")
            .map(|d| std::path::PathBuf::from(d).join("exceptions.png"))
            .unwrap_or_else(|_| std::env::temp_dir().join("exceptions.png")),
        png,
    )
    .unwrap();
    c.set_window_size(375, 812).await.unwrap();
    let phone = c.screenshot().await.unwrap();
    std::fs::write(std::env::temp_dir().join("exceptions-phone.png"), phone).unwrap();
    let overflow = run(
        c,
        "var w = 0; document.querySelectorAll('#fix *').forEach(function (e) { \
           w = Math.max(w, e.getBoundingClientRect().right); }); \
         return w - document.documentElement.clientWidth;",
        vec![],
    )
    .await;
    assert!(
        overflow.as_f64().unwrap_or(f64::MAX) <= 0.0,
        "the dialog fits a phone's width: {overflow}"
    );
    c.set_window_size(1440, 900).await.unwrap();

    // Confirm: the correction is made, the stay closed and charged, the row leaves the queue.
    run(c, "document.getElementById('fix-submit').click();", vec![]).await;
    eventually("the exception to leave the queue", WAIT, || async {
        let gone = run(
            c,
            "return !document.getElementById('fix').open && \
             !document.querySelector('#exc img.exc-thumb');",
            vec![],
        )
        .await;
        (gone == true).then_some(())
    })
    .await;
    let resolved = w
        .get_json(&format!("/api/exceptions?lot={}", w.lot))
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == xid.as_str())
        .cloned()
        .unwrap();
    assert!(resolved["resolved_at"].is_string(), "{resolved}");
    assert_eq!(sessions(&w, plate).await[0]["status"], "closed");
    b.client.close().await.unwrap();
    w.stop().await;
}
