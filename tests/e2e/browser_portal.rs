//! The driver portal in a real browser, on a phone: a driver signs in with the texted code,
//! sees a debt, pays it (the payment provider confirms it) and sees it settled, in Chinese and
//! in English; and finds a stay by plate without signing in. Nothing is wider than the phone.
//!
//! With `PARKPAY_SCREENSHOTS=DIR` set, the pages are also saved there as PNG (phone and
//! desktop), for looking at them.

use fantoccini::{Client, Locator};
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use serde_json::{json, Value};

use crate::browser::browser;
use crate::portal::{registered, texted_code};
use crate::scenarios::{fen, sessions, settled_charge, world, WAIT};

/// The text of the element `css` selects now, or `None`.
async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.execute(
        "var e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        vec![json!(css)],
    )
    .await
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
}

/// Waits until the element `css` reads `want`.
async fn reads(c: &Client, css: &str, want: &str) {
    eventually(&format!("{css} to read {want:?}"), WAIT, || async {
        (text_of(c, css).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// Elements wider than the window or reaching past its right edge (as "tag#id.class").
async fn too_wide(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "var w = window.innerWidth, out = []; \
             if (document.documentElement.scrollWidth > w) out.push('document ' + document.documentElement.scrollWidth); \
             document.querySelectorAll('body *').forEach(function (e) { \
               var r = e.getBoundingClientRect(); \
               if (r.width > 0 && (r.right > w + 1 || r.left < -1)) out.push(e.tagName + '#' + e.id + '.' + e.className); }); \
             return out;",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn click(c: &Client, css: &str) {
    let clicked = c
        .execute(
            "var e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    assert_eq!(clicked, json!(true), "{css} to click");
}

async fn screenshot(c: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("PARKPAY_SCREENSHOTS") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

async fn settle(w: &World, charge: &Value) {
    let r = w
        .client
        .post(w.url("/api/sandbox/settle"))
        .bearer_auth(&w.sandbox_secret)
        .json(&json!({"charge": charge["id"], "amount": charge["amount"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "the provider confirms the payment"
    );
}

#[tokio::test]
async fn a_driver_signs_in_on_a_phone_pays_a_debt_and_sees_it_settled_in_both_languages() {
    let (w, clock) = world().await;
    let Some(b) = browser(375, 667).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    // The window as a phone's screen (a headless window may start wider than asked).
    c.set_window_size(375, 667).await.unwrap();
    // A mandate over an empty wallet: the stay ends in arrears. A second car is inside now.
    let driver = registered(&w, "139 0000 0031", "京A63001", Some(0)).await;
    w.api
        .add_vehicle(driver, "京A63002", parkpay_protocol::PlateColour::Blue)
        .await
        .unwrap();
    assert!(w.pass("in-1", "京A63001", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(130));
    assert!(w.pass("out-1", "京A63001", WAIT).await.opened);
    let stay = sessions(&w, "京A63001").await[0].clone();
    let debt = settled_charge(&w, stay["id"].as_str().unwrap()).await;
    assert_eq!(debt["status"], "arrears");
    let owed = format!(
        "¥{}.{:02}",
        fen(&debt["amount"]) / 100,
        fen(&debt["amount"]) % 100
    );
    assert!(w.pass("in-2", "京A63002", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(45));

    // Signing in with the texted code, in English.
    c.goto(w.url("/me").as_str()).await.unwrap();
    eventually("the sign-in form", WAIT, || async {
        c.find(Locator::Id("signin"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
    reads(c, "h1", "My parking").await;
    c.find(Locator::Id("phone"))
        .await
        .unwrap()
        .send_keys("+86 139 0000 0031")
        .await
        .unwrap();
    click(c, "#send").await;
    let code = texted_code(&w, "+8613900000031", 0).await;
    c.find(Locator::Id("code"))
        .await
        .unwrap()
        .send_keys(&code)
        .await
        .unwrap();
    click(c, "#signin-btn").await;
    reads(c, "#debt-total", &owed).await;
    assert_eq!(
        c.find_all(Locator::Css("h1")).await.unwrap().len(),
        1,
        "one h1"
    );
    let body = text_of(c, "#portal").await.unwrap();
    for want in [
        "京A·63001",
        "京A·63002",
        "Parked now",
        "Unpaid parking",
        "Active",
    ] {
        assert!(body.contains(want), "{want} in {body}");
    }
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "nothing wider than the phone (English)"
    );
    let width = c
        .execute("return window.innerWidth;", vec![])
        .await
        .unwrap();
    assert!(
        width.as_f64().is_some_and(|w| w <= 375.0),
        "a phone-wide window: {width}"
    );

    // The same in Chinese.
    click(c, "[data-i18n-toggle]").await;
    reads(c, "h1", "我的停车").await;
    reads(c, "#owed-h", "待缴停车费").await;
    let pay = format!("[data-pay-charge='{}']", debt["id"].as_str().unwrap());
    reads(c, &pay, &format!("支付 {owed}")).await;
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "nothing wider than the phone (中文)"
    );
    screenshot(c, "portal-phone.png").await;

    // Paying: the page asks to pay in the payment app and follows the stay; the provider
    // confirms, and the debt is gone.
    click(c, &pay).await;
    let panel = format!("[data-pay-panel='{}']", stay["id"].as_str().unwrap());
    eventually("the payment panel", WAIT, || async {
        text_of(c, &panel)
            .await
            .filter(|t| t.contains(&format!("请在支付应用中支付 {owed}")))
    })
    .await;
    settle(&w, &debt).await;
    reads(c, "#debt-total", "无欠费").await;
    reads(c, "#portal-msg", "已支付，欠费已结清。").await;
    assert_eq!(
        text_of(c, "#debts").await.as_deref(),
        Some("您没有欠费，谢谢。")
    );
    let d = w.get_json(&format!("/api/drivers/{driver}")).await;
    assert_eq!(fen(&d["arrears"]), 0, "the server agrees: nothing owed");

    // And back in English: settled, with the receipt of the paid stay.
    click(c, "[data-i18n-toggle]").await;
    reads(c, "#debt-total", "Nothing owed").await;
    reads(c, "#debts", "You owe nothing. Thank you.").await;
    reads(c, "#portal-msg", "Paid — the debt is settled.").await;
    let receipt = c
        .execute(
            "var a = document.querySelector('#past a[href^=\"/receipt/\"]'); return a ? a.getAttribute('href') : null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        receipt,
        json!(format!("/receipt/{}", stay["id"].as_str().unwrap()))
    );
    let past = text_of(c, "#past").await.unwrap();
    assert!(past.contains("Paid"), "{past}");
    assert_eq!(too_wide(c).await, Vec::<String>::new());
    c.set_window_size(1280, 900).await.unwrap();
    screenshot(c, "portal.png").await;

    // Signing out shows the sign-in again; the overview is closed to the old cookie.
    c.set_window_size(375, 667).await.unwrap();
    click(c, "#signout").await;
    eventually("the sign-in form after signing out", WAIT, || async {
        c.find(Locator::Id("signin"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;

    // Finding the car inside by its plate, without signing in.
    c.goto(w.url("/find").as_str()).await.unwrap();
    reads(c, "h1", "Find my stay").await;
    c.find(Locator::Id("plate"))
        .await
        .unwrap()
        .send_keys("京a63002")
        .await
        .unwrap();
    click(c, "#find").await;
    let inside = sessions(&w, "京A63002").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let link = eventually("the stay found by plate", WAIT, || async {
        c.execute(
            "var a = document.querySelector('#results a.pay'); return a ? a.getAttribute('href') : null;",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
    })
    .await;
    assert_eq!(link, format!("/pay/{inside}"));
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "the find page fits the phone"
    );
    screenshot(c, "find-phone.png").await;
    // A plate with nothing inside says so.
    c.execute(
        "document.getElementById('plate').value = '京A63001';",
        vec![],
    )
    .await
    .unwrap();
    click(c, "#find").await;
    eventually("the not-found message", WAIT, || async {
        text_of(c, "#msg")
            .await
            .filter(|t| t.contains("No car with the plate 京A63001 is parked now"))
    })
    .await;
    assert_eq!(text_of(c, "#results").await.as_deref(), Some(""));
    b.client.close().await.unwrap();
    w.stop().await;
}
