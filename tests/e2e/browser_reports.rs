//! The reports page and the tariff editor in a real browser (see `browser.rs`), on both
//! backends. Set `PARKPAY_SCREENSHOT_DIR` to keep a picture of each page at each size.

use std::time::Duration;

use fantoccini::Client;
use parkpay_server::domain::Role;
use parkpay_server::tariff::Tariff;
use parkpay_sim::reference_tariff;
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use serde_json::{json, Value};

use crate::browser::{browser, phone_browser, sign_in, Browser};
use crate::reports::{clock_to, enter, leave, local};
use crate::scenarios::{fen, world, WAIT};

/// Runs `script` in the page and returns its value (no element is held across a redraw).
async fn js(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args).await.expect("the script runs")
}

async fn screenshot(c: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("PARKPAY_SCREENSHOT_DIR") {
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(std::path::Path::new(&dir).join(name), png)
            .expect("the screenshot is saved");
    }
}

/// The elements wider than the window, by tag and class (none on a phone).
async fn too_wide(c: &Client) -> Value {
    js(
        c,
        "return Array.from(document.querySelectorAll('body *')).filter(function (e) { \
           var r = e.getBoundingClientRect(); return r.width > 0 && (r.right > window.innerWidth + 1 || r.left < -1); \
         }).map(function (e) { return e.tagName + '.' + e.className + '#' + e.id; });",
        vec![],
    )
    .await
}

async fn open_reports(b: &Browser, w: &World, query: &str) {
    let c = &b.client;
    c.goto(w.url(&format!("/reports?{query}")).as_str())
        .await
        .unwrap();
    eventually("the reports to load", WAIT, || async {
        let v = js(
            c,
            "return document.body.getAttribute('data-loaded');",
            vec![],
        )
        .await;
        v.as_str()
            .is_some_and(|q| q.contains("from="))
            .then_some(())
    })
    .await;
}

/// Two stays on the 25th: 09:00-11:10 and 10:00-10:20 (both in the 10:00 hour).
async fn two_stays(w: &World, clock: &parkpay_protocol::ManualClock) {
    enter(w, clock, "京A83001", local(25, 9, 0)).await;
    enter(w, clock, "京A83002", local(25, 10, 0)).await;
    leave(w, clock, "京A83002", local(25, 10, 20)).await;
    leave(w, clock, "京A83001", local(25, 11, 10)).await;
    clock_to(clock, w, local(26, 9, 0));
}

#[tokio::test]
async fn the_reports_page_draws_its_charts_from_the_stays_and_its_csv_link_downloads() {
    let (w, clock) = world().await;
    let Some(b) = browser(1280, 1000).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    two_stays(&w, &clock).await;
    sign_in(&b, &w, Role::Finance).await;
    let lot = w.lot.to_string();
    open_reports(&b, &w, &format!("lot={lot}&from=2026-11-25&to=2026-11-25")).await;

    // Occupancy: in the 10:00 hour one car all hour and one for 20 minutes: 1.33 on average.
    let bars = js(
        c,
        "function bars(chart) { return Array.from(document.querySelectorAll('#' + chart + ' g.item')).map(function (g) { \
           var r = g.querySelector('rect.bar'); return [g.getAttribute('data-label'), r ? Number(r.getAttribute('data-value')) : 0]; }); } \
         return { occ: bars('occ-chart'), len: bars('len-chart'), tur: bars('tur-chart'), tak: document.querySelectorAll('#tak-chart rect.bar').length, \
                  svg: document.querySelectorAll('svg.chart').length, title: document.querySelector('#occ-chart g.item[data-label=\"10\"] title').textContent };",
        vec![],
    )
    .await;
    assert_eq!(bars["svg"], 4, "{bars}");
    let occ = bars["occ"].as_array().unwrap();
    assert_eq!(occ.len(), 24, "{bars}");
    let at = |h: usize| occ[h][1].as_f64().unwrap();
    assert!((at(10) - 1.33).abs() < 0.001, "{bars}");
    assert!((at(9) - 1.0).abs() < 0.001, "{bars}");
    assert!((at(11) - 0.17).abs() < 0.001, "{bars}");
    assert_eq!(at(12), 0.0, "{bars}");
    assert!(bars["title"].as_str().unwrap().contains("1.33"), "{bars}");
    // Length of stay: one of 15-30 min, one of 2-4 h.
    let len: Vec<(String, f64)> = bars["len"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
        .collect();
    assert!(len.contains(&("15-30 min".into(), 1.0)), "{len:?}");
    assert!(len.contains(&("2-4 h".into(), 1.0)), "{len:?}");
    assert_eq!(len.iter().map(|p| p.1).sum::<f64>(), 2.0);
    // Turnover: two stays began on the 25th.
    assert_eq!(bars["tur"][0][1], 2.0, "{bars}");
    // The charges are collected at the exit (cars without a mandate are held: nothing yet).
    assert_eq!(bars["tak"], 0, "{bars}");
    screenshot(c, "reports-desktop.png").await;

    // The CSV link downloads the same numbers.
    let text = c
        .execute_async(
            "var done = arguments[arguments.length - 1]; \
             fetch(document.getElementById('occ-csv').href, { credentials: 'same-origin' }) \
               .then(function (r) { return r.text().then(function (t) { done([r.status, r.headers.get('content-disposition'), t]); }); }, \
                     function (e) { done([0, '', String(e)]); });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(text[0], 200, "{text}");
    assert_eq!(
        text[1],
        format!("attachment; filename=\"occupancy-{lot}-2026-11-25-2026-11-25.csv\"")
    );
    let body = text[2].as_str().unwrap();
    assert!(
        body.starts_with(
            "lot,lot_name,hour,average_cars,busiest_cars,busiest_date,car_seconds,span_seconds\r\n"
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "{lot},Test lot,10:00,1.33,1.33,2026-11-25,4800,3600\r\n"
        )),
        "{body}"
    );
    // And in Chinese, the same charts with translated labels.
    js(
        c,
        "document.querySelector('[data-i18n-toggle]').click(); return true;",
        vec![],
    )
    .await;
    let h2 = js(
        c,
        "return document.getElementById('occ-h').textContent;",
        vec![],
    )
    .await;
    assert_eq!(h2, "全天占用");
    b.client.close().await.unwrap();
    w.stop().await;
}

/// Sets an input's value and tells the page, as typing would.
async fn type_into(c: &Client, css: &str, value: &str) {
    let ok = js(
        c,
        "var e = document.querySelector(arguments[0]); if (!e) return false; e.value = arguments[1]; \
         e.dispatchEvent(new Event('input', { bubbles: true })); e.dispatchEvent(new Event('change', { bubbles: true })); return true;",
        vec![json!(css), json!(value)],
    )
    .await;
    assert_eq!(ok, true, "no element {css}");
}

async fn quote_total(c: &Client) -> Option<i64> {
    let v = js(
        c,
        "var t = document.getElementById('quote-total'); \
         return document.getElementById('quote').classList.contains('stale') ? null : t.getAttribute('data-minor');",
        vec![],
    )
    .await;
    v.as_str().and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn the_tariff_editor_previews_a_new_price_before_saving_and_then_saves_it() {
    let (w, _clock) = world().await;
    let Some(b) = browser(1280, 1000).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    sign_in(&b, &w, Role::Admin).await;
    let lot = w.lot.to_string();
    c.goto(w.url(&format!("/tariffs?lot={lot}")).as_str())
        .await
        .unwrap();
    eventually("the form to show the lot's tariff", WAIT, || async {
        let v = js(
            c,
            "var r = document.querySelector('#band-rows .band-price'); return r ? r.value : null;",
            vec![],
        )
        .await;
        (v == "3.00").then_some(())
    })
    .await;
    type_into(c, "#entry", "2026-11-25T09:30").await;
    type_into(c, "#exit", "2026-11-25T12:40").await;
    let (entry, exit) = (local(25, 9, 30), local(25, 12, 40));
    let saved: Tariff = serde_json::from_value(parkpay_sim::api::example_tariff()).unwrap();
    let before = reference_tariff::fee(&saved, entry, exit);
    eventually("the preview of the saved tariff", WAIT, || async {
        (quote_total(c).await == Some(before)).then_some(())
    })
    .await;

    // The day price goes to 4.50: the preview follows before anything is saved.
    type_into(c, "#band-rows tr.band:nth-child(1) .band-price", "4.50").await;
    let mut draft = parkpay_sim::api::example_tariff();
    draft["bands"][0]["unit_price"]["minor"] = json!(450);
    let draft_t: Tariff = serde_json::from_value(draft).unwrap();
    let after = reference_tariff::fee(&draft_t, entry, exit);
    assert_ne!(before, after);
    eventually("the preview of the draft", WAIT, || async {
        (quote_total(c).await == Some(after)).then_some(())
    })
    .await;
    let lines = js(
        c,
        "return document.getElementById('quote-lines').textContent;",
        vec![],
    )
    .await;
    assert!(lines.as_str().unwrap().contains("¥4.50"), "{lines}");
    let stored = w.get_json(&format!("/api/lots/{lot}")).await;
    assert_eq!(
        fen(&stored["tariff"]["bands"][0]["unit_price"]),
        300,
        "not saved yet"
    );

    // A bad unit length is refused with the field's name, and nothing is saved.
    type_into(c, "#unit_minutes", "0").await;
    js(
        c,
        "document.getElementById('save').click(); return true;",
        vec![],
    )
    .await;
    let errors = eventually("the field's error", WAIT, || async {
        let v = js(
            c,
            "return document.getElementById('errors').textContent;",
            vec![],
        )
        .await;
        v.as_str().filter(|t| !t.is_empty()).map(str::to_string)
    })
    .await;
    assert!(errors.contains("Unit length (minutes)"), "{errors}");
    let invalid = js(
        c,
        "return document.getElementById('unit_minutes').getAttribute('aria-invalid');",
        vec![],
    )
    .await;
    assert_eq!(invalid, "true");
    // Overlapping bands pass the form but not the server: its message names the bands.
    type_into(c, "#unit_minutes", "30").await;
    type_into(c, "#band-rows tr.band:nth-child(1) .band-end", "21:00").await;
    let errors = eventually("the server's error", WAIT, || async {
        let v = js(
            c,
            "return document.getElementById('errors').textContent;",
            vec![],
        )
        .await;
        v.as_str()
            .filter(|t| t.contains("overlap"))
            .map(str::to_string)
    })
    .await;
    assert!(errors.starts_with("Bands:"), "{errors}");
    type_into(c, "#band-rows tr.band:nth-child(1) .band-end", "20:00").await;
    eventually("the preview of the draft again", WAIT, || async {
        (quote_total(c).await == Some(after)).then_some(())
    })
    .await;
    screenshot(c, "tariffs-desktop.png").await;

    js(
        c,
        "document.getElementById('save').click(); return true;",
        vec![],
    )
    .await;
    eventually("the tariff to be saved", WAIT, || async {
        let v = js(
            c,
            "return document.getElementById('save-status').textContent;",
            vec![],
        )
        .await;
        v.as_str()
            .is_some_and(|t| t.contains("Saved"))
            .then_some(())
    })
    .await;
    let stored = w.get_json(&format!("/api/lots/{lot}")).await;
    assert_eq!(
        fen(&stored["tariff"]["bands"][0]["unit_price"]),
        450,
        "{stored}"
    );
    assert_eq!(stored["tariff_version"], 2);
    let audit = w.get_json("/api/audit").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "lot.tariff_changed"
                && a["actor"].as_str().is_some_and(|n| n.starts_with("admin-"))),
        "saved under the signed-in name: {audit}"
    );
    b.client.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn on_a_phone_the_reports_and_the_tariff_editor_fit_the_screen() {
    let (w, clock) = world().await;
    let Some(b) = phone_browser(375, 667).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    two_stays(&w, &clock).await;
    sign_in(&b, &w, Role::Viewer).await;
    let lot = w.lot.to_string();
    open_reports(&b, &w, &format!("lot={lot}&from=2026-11-19&to=2026-11-25")).await;
    assert_eq!(js(c, "return window.innerWidth;", vec![]).await, 375);
    // Every table open: on a phone its rows are cards.
    js(c, "document.querySelectorAll('details').forEach(function (d) { d.open = true; }); return true;", vec![]).await;
    let wide = too_wide(c).await;
    assert_eq!(wide, json!([]), "nothing is wider than the phone");
    let display = js(
        c,
        "return getComputedStyle(document.querySelector('#tak-rows tr')).display;",
        vec![],
    )
    .await;
    assert_eq!(display, "block", "a row is a card");
    // A viewer sees no audit link.
    let audit = js(
        c,
        "return document.querySelector('nav.pages a[href=\"/audit\"]').hidden;",
        vec![],
    )
    .await;
    assert_eq!(audit, true);
    screenshot(c, "reports-phone.png").await;

    c.goto(w.url(&format!("/tariffs?lot={lot}")).as_str())
        .await
        .unwrap();
    eventually("the tariff and its preview", WAIT, || async {
        quote_total(c).await.map(|_| ())
    })
    .await;
    let wide = too_wide(c).await;
    assert_eq!(wide, json!([]), "nothing is wider than the phone");
    // A viewer looks but may not save.
    let (disabled, save_hidden) = {
        let v = js(c, "return [document.getElementById('editor').disabled, document.getElementById('save').hidden];", vec![]).await;
        (v[0].clone(), v[1].clone())
    };
    assert_eq!((disabled, save_hidden), (json!(true), json!(true)));
    screenshot(c, "tariffs-phone.png").await;
    tokio::time::timeout(Duration::from_secs(10), b.client.close())
        .await
        .ok();
    w.stop().await;
}
