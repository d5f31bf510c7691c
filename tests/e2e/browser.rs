//! The pages in a real browser: Chromium driven through ChromeDriver (WebDriver), against the
//! real server on both backends. `.ci/run` installs the distribution's `chromium` and
//! `chromium-driver` when they are missing and sets `PARKPAY_REQUIRE_BROWSER`, so there a
//! missing browser fails the run; on a machine without them (`cargo test` with only a Rust
//! toolchain) these tests say so and do nothing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use parkpay_protocol::ArmPosition;
use parkpay_server::domain::{Grant, Role};
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::scenarios::{sessions, world, WAIT};

pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: tokio::process::Child,
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium, or `None` (with a note) when this machine has none and the run does
/// not require one.
pub(crate) async fn browser(width: u32, height: u32) -> Option<Browser> {
    let required = std::env::var_os("PARKPAY_REQUIRE_BROWSER").is_some();
    let (Some(driver), Some(chromium)) = (
        which(&["chromedriver"]),
        which(&["chromium", "chromium-browser", "google-chrome"]),
    ) else {
        assert!(
            !required,
            "PARKPAY_REQUIRE_BROWSER is set but Chromium or ChromeDriver is missing"
        );
        eprintln!(
            "browser test skipped: no chromium and chromedriver on PATH (.ci/run installs them)"
        );
        return None;
    };
    let mut child = tokio::process::Command::new(driver)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    // "ChromeDriver was started successfully on port 34171."
    let port: u16 = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("successfully on port ").nth(1) {
                if let Ok(p) = rest.trim_end_matches('.').trim().parse() {
                    return p;
                }
            }
        }
        panic!("chromedriver did not say its port");
    })
    .await
    .expect("chromedriver says its port in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    Some(Browser {
        client,
        _driver: child,
    })
}

/// Makes an account of `role` and signs it in on the dashboard.
pub(crate) async fn sign_in(b: &Browser, w: &World, role: Role) {
    let name = format!("{}-{}", role, uuid::Uuid::new_v4().simple())[..20].to_string();
    let password = "correct horse battery staple";
    w.app()
        .create_account(&name, password, Grant { role, lots: None }, "tests")
        .await
        .expect("an account");
    b.client.goto(w.url("/login").as_str()).await.unwrap();
    b.client
        .find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(&name)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#lanes [data-key]"))
        .await
        .expect("the dashboard shows the lanes");
}

/// The `aria-label` of the element `css` selects, clicking it too when `click`; `None` when
/// there is no such element now.
async fn label_of(c: &Client, css: &str, click: bool) -> Option<String> {
    c.execute(
        "var e = document.querySelector(arguments[0]); if (!e) return null; \
         var l = e.getAttribute('aria-label'); if (arguments[1]) e.click(); return l;",
        vec![json!(css), json!(click)],
    )
    .await
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
}

async fn focused_key(c: &Client) -> Option<String> {
    c.execute(
        "return document.activeElement && document.activeElement.getAttribute('data-key');",
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
}

#[tokio::test]
async fn the_dashboard_keeps_focus_while_cars_pass_and_closes_a_barrier_left_up() {
    let (w, _clock) = world().await;
    let Some(b) = browser(1400, 1000).await else {
        w.stop().await;
        return;
    };
    sign_in(&b, &w, Role::Operator).await;
    let c = &b.client;
    // One h1, and lane names in the buttons' labels.
    let h1 = c.find_all(Locator::Css("h1")).await.unwrap().len();
    assert_eq!(h1, 1, "one h1 on the dashboard");
    // The lanes panel is redrawn on live updates: elements are read (and clicked) in one
    // script, never held across a redraw.
    assert_eq!(
        label_of(c, "[data-key^='lift:'][data-key$='/in-1']", false)
            .await
            .as_deref(),
        Some("Lift barrier at in-1")
    );
    // An operator does not see the money desk.
    let money = c.find(Locator::Css("section.money-only")).await.unwrap();
    assert!(!money.is_displayed().await.unwrap());

    // Focus stays on the button while the lanes report cars passing.
    c.execute(
        "document.querySelector(\"[data-key^='lift:'][data-key$='/in-1']\").focus();",
        vec![],
    )
    .await
    .unwrap();
    let before = focused_key(c).await;
    assert!(before.is_some());
    w.driver("京A70001", None).await;
    assert!(w.pass("in-2", "京A70001", WAIT).await.opened);
    w.driver("京A70002", None).await;
    assert!(w.pass("in-2", "京A70002", WAIT).await.opened);
    assert_eq!(
        focused_key(c).await,
        before,
        "the keyboard focus survives lane updates"
    );

    // A lift of an empty lane leaves the arm up; the dashboard offers to close it, and does.
    let mut arm = w.rig("in-2").arm().watch();
    c.execute(
        "document.querySelector(\"[data-key^='lift:'][data-key$='/in-2']\").click();",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Id("lift-reason"))
        .await
        .unwrap()
        .send_keys("maintenance")
        .await
        .unwrap();
    c.find(Locator::Id("lift-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, arm.wait_for(|s| s.position == ArmPosition::Open))
        .await
        .expect("the arm opens")
        .unwrap();
    let label = eventually("a Close barrier button for the lane left up", WAIT, || {
        label_of(c, "[data-key^='close:'][data-key$='/in-2']", true)
    })
    .await;
    assert_eq!(label, "Close barrier at in-2");
    tokio::time::timeout(WAIT, arm.wait_for(|s| s.position == ArmPosition::Closed))
        .await
        .expect("the arm closes")
        .unwrap();
    b.client.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn the_pay_page_on_a_phone_follows_the_stay_and_asks_for_the_fee_without_a_reload() {
    let (w, clock) = world().await;
    let Some(b) = browser(375, 667).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    w.driver("京A70003", None).await;
    assert!(w.pass("in-1", "京A70003", WAIT).await.opened);
    let s = sessions(&w, "京A70003").await[0].clone();
    c.goto(
        w.url(&format!("/pay/{}", s["id"].as_str().unwrap()))
            .as_str(),
    )
    .await
    .unwrap();
    let status = || async {
        c.find(Locator::Css(".status"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    eventually("the page to show the stay", WAIT, || async {
        (status().await.as_deref() == Some("Parked")).then_some(())
    })
    .await;
    // The car drives to the exit; with no mandate it is asked to pay. The open page follows.
    clock.advance(chrono::Duration::minutes(130));
    let rig = w.rig("out-1");
    let vehicle = parkpay_sim::rig::Vehicle {
        plate: "京A70003".parse().unwrap(),
        colour: parkpay_protocol::PlateColour::Blue,
    };
    let mut p = rig.arrive(&vehicle).await.unwrap();
    assert!(matches!(
        p.wait(WAIT).await,
        parkpay_sim::rig::Waited::PayRequested { .. }
    ));
    eventually(
        "the page to ask for the fee",
        Duration::from_secs(20),
        || async { (status().await.as_deref() == Some("Payment due")).then_some(()) },
    )
    .await;
    // What to pay is on the first screen of a phone, and no table is wider than it.
    let (top, wide): (f64, bool) = {
        let v = c
            .execute(
                "var h = document.querySelector('.pay .hint'); \
                 var wide = Array.from(document.querySelectorAll('table, .card')).some(function (t) { return t.getBoundingClientRect().right > window.innerWidth + 1; }); \
                 return [h.getBoundingClientRect().top, wide];",
                vec![],
            )
            .await
            .unwrap();
        (v[0].as_f64().unwrap(), v[1].as_bool().unwrap())
    };
    assert!(
        top < 667.0,
        "the amount to pay is above the fold (top {top})"
    );
    assert!(!wide, "nothing is wider than the phone");
    let text = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("¥14.00"), "{text}");
    assert!(
        !text.contains("1 × -"),
        "no '1 ×' on discount lines: {text}"
    );
    p.back_out().await.unwrap();
    b.client.close().await.unwrap();
    w.stop().await;
}
