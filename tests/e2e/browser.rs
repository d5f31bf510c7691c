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
    browser_with(width, height, false).await
}

/// A headless Chromium whose page is `width` x `height` CSS pixels even below the smallest
/// window Chromium draws (about 500 px wide): a phone's viewport, by device emulation.
pub(crate) async fn phone_browser(width: u32, height: u32) -> Option<Browser> {
    browser_with(width, height, true).await
}

async fn browser_with(width: u32, height: u32, phone: bool) -> Option<Browser> {
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
                     "--lang=en-US", format!("--window-size={width},{height}")],
        }),
    );
    if phone {
        caps["goog:chromeOptions"]["mobileEmulation"] = json!({
            "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0 },
        });
    }
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
        .for_element(Locator::Css("#lanes .lane"))
        .await
        .expect("the dashboard shows the lanes");
}

/// The `aria-label` of the element `css` selects, clicking it too when `click`; `None` when
/// there is no such element now.
pub(crate) async fn label_of(c: &Client, css: &str, click: bool) -> Option<String> {
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

/// Runs `script` (its last statement returns a value) in the page and gives the value.
async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.expect("the script runs")
}

/// Elements wider than the window (the phone's screen), named by tag, id and class.
async fn too_wide(c: &Client) -> Vec<String> {
    let v = js(
        c,
        "var w = document.documentElement.clientWidth; \
         return Array.from(document.querySelectorAll('body *')).filter(function (e) { \
           var r = e.getBoundingClientRect(); return r.width > 0 && r.right > w + 1; \
         }).map(function (e) { return e.tagName + '#' + e.id + '.' + e.className; });",
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

#[tokio::test]
async fn a_viewer_is_refused_the_audit_log_and_finance_reads_it_in_chinese() {
    let (w, _clock) = world().await;
    let Some(b) = browser(1280, 900).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    let lot = w.lot.to_string();
    let r = w
        .client
        .post(w.url(&format!("/api/lots/{lot}/lanes/in-1/open")))
        .json(&json!({ "reason": "delivery van" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // A viewer: no Audit link, and the page says why instead of showing the log.
    sign_in(&b, &w, Role::Viewer).await;
    let audit_link_shown = js(
        c,
        "var a = document.querySelector('nav.pages a[href=\"/audit\"]'); return !!a && !a.hidden && a.offsetParent !== null;",
    )
    .await;
    assert_eq!(
        audit_link_shown,
        json!(false),
        "a viewer is not offered the audit log"
    );
    c.goto(w.url("/audit").as_str()).await.unwrap();
    let refusal = eventually("the page to refuse the audit log", WAIT, || async {
        let v = js(c, "var e = document.getElementById('err'); return e && e.classList.contains('show') ? e.textContent : null;").await;
        v.as_str().map(str::to_string)
    })
    .await;
    assert_eq!(refusal, "Your role may not read the audit log.");
    let tab_hidden = js(c, "return document.getElementById('tab-audit').hidden;").await;
    assert_eq!(tab_hidden, json!(true));
    let (status, _) = {
        let r = w
            .client
            .get(w.url("/api/history/audit"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(
        status, 200,
        "the admin token reads it (the refusal is the viewer's)"
    );

    // Finance, in Chinese: the log with the lift, under the signed-in names.
    sign_in(&b, &w, Role::Finance).await;
    js(
        c,
        "localStorage.setItem('parkpay.lang', 'zh-CN'); return true;",
    )
    .await;
    c.goto(w.url("/audit").as_str()).await.unwrap();
    let row = eventually("the audit log to list the lift", WAIT, || async {
        let v = js(
            c,
            "var rows = Array.from(document.querySelectorAll('#rows tr')).map(function (r) { return r.textContent; }); \
             return rows.filter(function (t) { return t.indexOf('lane.manual_open') >= 0; })[0] || null;",
        )
        .await;
        v.as_str().map(str::to_string)
    })
    .await;
    assert!(
        row.contains("delivery van") && row.contains(&format!("{lot}/in-1")),
        "{row}"
    );
    let (lang, h1, tab) = {
        let v = js(
            c,
            "return [document.documentElement.lang, document.querySelector('h1').textContent, document.getElementById('tab-audit').textContent];",
        )
        .await;
        (v[0].clone(), v[1].clone(), v[2].clone())
    };
    assert_eq!(lang, json!("zh-CN"));
    assert_eq!(h1, json!("parkpay历史记录"));
    assert_eq!(tab, json!("审计日志"));
    // And back to English with the switch.
    js(
        c,
        "document.querySelector('[data-i18n-toggle]').click(); return true;",
    )
    .await;
    let tab = js(
        c,
        "return [document.documentElement.lang, document.getElementById('tab-audit').textContent];",
    )
    .await;
    assert_eq!(tab, json!(["en", "Audit log"]));
    b.client.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn history_on_a_phone_finds_a_stay_and_exports_what_it_shows() {
    let (w, clock) = world().await;
    for plate in ["京A70021", "京A70022", "京A70023"] {
        w.driver(plate, Some(100_000)).await;
        assert!(w.pass("in-1", plate, WAIT).await.opened);
        clock.advance(chrono::Duration::minutes(20));
    }
    assert!(w.pass("out-1", "京A70022", WAIT).await.opened);
    let Some(b) = phone_browser(375, 667).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    sign_in(&b, &w, Role::Operator).await;
    assert_eq!(
        js(c, "return window.innerWidth;").await,
        json!(375),
        "a phone's width"
    );
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "the dashboard fits the phone"
    );

    c.goto(w.url("/history").as_str()).await.unwrap();
    let rows = || async {
        let v = js(
            c,
            "return Array.from(document.querySelectorAll('#rows tr .plate')).map(function (p) { return p.textContent; });",
        )
        .await;
        serde_json::from_value::<Vec<String>>(v).unwrap_or_default()
    };
    let all = eventually("every stay listed", WAIT, || async {
        let r = rows().await;
        (r.len() == 3).then_some(r)
    })
    .await;
    assert_eq!(
        all,
        ["京A70023", "京A70022", "京A70021"],
        "newest entry first"
    );
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "history fits the phone"
    );

    // A misremembered plate (O for 0) finds the one stay.
    js(
        c,
        "document.getElementById('f-plate').value = 'A7OO22'; \
         document.querySelector('#filters button[type=submit]').click(); return true;",
    )
    .await;
    eventually("the search to narrow the list", WAIT, || async {
        (rows().await == ["京A70022"]).then_some(())
    })
    .await;
    // The export link downloads exactly what is shown, with the page's own session.
    let csv = c
        .execute_async(
            "var done = arguments[arguments.length - 1]; \
             fetch(document.getElementById('csv').href, { credentials: 'same-origin' }) \
               .then(function (r) { return r.text().then(function (t) { done([r.status, r.headers.get('content-type'), t]); }); }, \
                     function (e) { done([0, '', String(e)]); });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(csv[0], json!(200), "{csv}");
    assert!(csv[1].as_str().unwrap().starts_with("text/csv"), "{csv}");
    let text = csv[2].as_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the one stay: {text}");
    assert!(lines[0].starts_with("stay,lot,plate,status"), "{text}");
    assert!(
        lines[1].contains("京A70022") && lines[1].contains(",closed,"),
        "{text}"
    );

    // Passages of the stay, on the other tab.
    js(
        c,
        "document.getElementById('tab-passages').click(); return true;",
    )
    .await;
    eventually("the passages of that plate", WAIT, || async {
        let v = js(
            c,
            "return document.querySelectorAll('#rows tr').length + ':' + document.getElementById('thead').textContent;",
        )
        .await;
        (v.as_str()? == "2:CapturedLotLaneDirectionReadDecisionReasonFee").then_some(())
    })
    .await;
    assert_eq!(
        too_wide(c).await,
        Vec::<String>::new(),
        "passages fit the phone"
    );
    b.client.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn finance_finds_a_plate_and_refunds_part_of_its_charge_from_the_dashboard() {
    let (w, clock) = world().await;
    w.driver("京A70031", Some(100_000)).await;
    assert!(w.pass("in-1", "京A70031", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(130));
    assert!(w.pass("out-1", "京A70031", WAIT).await.opened);
    let stay = sessions(&w, "京A70031").await[0].clone();
    let charge = crate::scenarios::settled_charge(&w, stay["id"].as_str().unwrap()).await;
    assert_eq!(charge["status"], "succeeded");
    let Some(b) = browser(1400, 1000).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    sign_in(&b, &w, Role::Finance).await;

    // Find a plate, typed as remembered.
    js(
        c,
        "document.getElementById('find-plate').value = 'a7OO31'; document.getElementById('find-go').click(); return true;",
    )
    .await;
    let found = eventually("the stay to be found", WAIT, || async {
        let v = js(c, "return document.getElementById('found').textContent;").await;
        v.as_str()
            .filter(|t| t.contains("70031"))
            .map(str::to_string)
    })
    .await;
    assert!(found.contains("京A·70031"), "{found}");

    // Refund ¥1.50 of it through the money desk's dialog.
    let label = eventually("a Refund button for the charge", WAIT, || {
        label_of(c, "button[aria-label='Refund 京A70031']", true)
    })
    .await;
    assert_eq!(label, "Refund 京A70031");
    js(
        c,
        "document.getElementById('money-amount').value = '1.50'; \
         document.getElementById('money-reason').value = 'barrier fault'; \
         document.getElementById('money-submit').click(); return true;",
    )
    .await;
    let id = charge["id"].as_str().unwrap();
    let refunds = eventually("the refund to be recorded", WAIT, || async {
        let v = w.get_json(&format!("/api/charges/{id}/refunds")).await;
        let list = v.as_array()?.clone();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"]["minor"], 150);
    assert_eq!(refunds[0]["reason"], "barrier fault");
    assert!(
        refunds[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("finance-"),
        "{refunds:?}"
    );
    b.client.close().await.unwrap();
    w.stop().await;
}

/// Text whose contrast with what is behind it is below WCAG 2.2 AA (4.5:1, or 3:1 for large
/// text: 24 px, or 18.66 px bold), as "ratio text (colour on background)". Backgrounds are
/// found by walking up to the first opaque one; text over images is not judged.
async fn low_contrast(c: &Client) -> Vec<String> {
    let v = js(
        c,
        r#"
        function rgb(s) { var m = s.match(/rgba?\(([^)]+)\)/); if (!m) return null;
          var p = m[1].split(',').map(function (x) { return parseFloat(x); });
          return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; }
        function lum(c) { return [c.r, c.g, c.b].map(function (v) { v /= 255;
          return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
          .reduce(function (s, v, i) { return s + v * [0.2126, 0.7152, 0.0722][i]; }, 0); }
        function over(top, under) { var a = top.a; return { r: top.r * a + under.r * (1 - a),
          g: top.g * a + under.g * (1 - a), b: top.b * a + under.b * (1 - a), a: 1 }; }
        function background(e) { var layers = [];
          for (var n = e; n && n.nodeType === 1; n = n.parentElement) {
            var cs = getComputedStyle(n); if (cs.backgroundImage && cs.backgroundImage !== 'none') return null;
            var b = rgb(cs.backgroundColor); if (b && b.a > 0) { layers.push(b); if (b.a >= 1) break; } }
          var base = { r: 255, g: 255, b: 255, a: 1 };
          for (var i = layers.length - 1; i >= 0; i--) base = over(layers[i], base);
          return base; }
        var bad = [], seen = {};
        var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        while (walker.nextNode()) {
          var t = walker.currentNode; if (!t.textContent.trim()) continue;
          var e = t.parentElement; if (!e || seen[e]) continue;
          var r = e.getBoundingClientRect(); if (r.width === 0 || r.height === 0) continue;
          var cs = getComputedStyle(e);
          if (cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) continue;
          var bg = background(e); if (!bg) continue;
          var fg = rgb(cs.color); if (!fg) continue;
          var op = 1; for (var n = e; n && n.nodeType === 1; n = n.parentElement) op *= parseFloat(getComputedStyle(n).opacity);
          fg.a *= op; fg = over(fg, bg);
          var l1 = lum(fg), l2 = lum(bg), ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
          var size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight, 10) >= 700;
          var need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
          // A disabled control is exempt (WCAG 1.4.3).
          if (e.closest('button:disabled, input:disabled, select:disabled')) continue;
          if (ratio + 0.005 < need) bad.push(ratio.toFixed(2) + ' "' + t.textContent.trim().slice(0, 40) + '" (' + cs.color + ' on rgb(' + [bg.r, bg.g, bg.b].map(Math.round).join(',') + '))');
        }
        return bad;
        "#,
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

#[tokio::test]
async fn every_page_has_one_h1_labelled_controls_and_text_that_meets_aa_contrast() {
    let (w, clock) = world().await;
    // Something on every panel: a stay, a charge, a held car (an exception), a list entry.
    w.driver("京A70041", Some(100_000)).await;
    assert!(w.pass("in-1", "京A70041", WAIT).await.opened);
    assert!(w.pass("in-2", "京A70042", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(70));
    assert!(w.pass("out-1", "京A70041", WAIT).await.opened);
    let held = w.pass("out-2", "京B70043", Duration::from_secs(3)).await;
    assert!(!held.opened, "a car with no entry is held");
    let stay = sessions(&w, "京A70041").await[0].clone();
    let sid = stay["id"].as_str().unwrap().to_string();
    crate::scenarios::settled_charge(&w, &sid).await;
    let open_stay = sessions(&w, "京A70042").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let Some(b) = browser(1400, 1000).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    sign_in(&b, &w, Role::Admin).await;
    for (path, ready) in [
        ("/".to_string(), "#exc tr"),
        ("/history".to_string(), "#rows tr"),
        ("/audit".to_string(), "#rows tr"),
        (format!("/pay/{open_stay}"), ".status"),
        (format!("/receipt/{sid}"), "dl"),
        ("/reports".to_string(), "svg"),
        ("/tariffs".to_string(), "form"),
        ("/find".to_string(), "input"),
        ("/me".to_string(), "input"),
        ("/login".to_string(), "#submit"),
    ] {
        for lang in ["en", "zh-CN"] {
            c.goto(w.url(&path).as_str()).await.unwrap();
            js(
                c,
                &format!("localStorage.setItem('parkpay.lang', '{lang}'); return true;"),
            )
            .await;
            c.refresh().await.unwrap();
            c.wait()
                .at_most(WAIT)
                .for_element(Locator::Css(ready))
                .await
                .unwrap_or_else(|_| panic!("{path} shows {ready}"));
            let h1 = js(c, "return document.querySelectorAll('h1').length;").await;
            assert_eq!(h1, json!(1), "{path} ({lang}): one h1");
            let unlabelled = js(
                c,
                "return Array.from(document.querySelectorAll('input, select, textarea, button')).filter(function (e) { \
                   if (e.type === 'hidden' || e.offsetParent === null) return false; \
                   var name = (e.getAttribute('aria-label') || '') + (e.labels && e.labels.length ? e.labels[0].textContent : '') + \
                     (e.tagName === 'BUTTON' ? e.textContent : '') + (e.getAttribute('title') || ''); \
                   return !name.trim(); }).map(function (e) { return e.tagName + '#' + e.id; });",
            )
            .await;
            assert_eq!(
                unlabelled,
                json!([]),
                "{path} ({lang}): every control has a name"
            );
            let lang_attr = js(c, "return document.documentElement.lang;").await;
            assert_eq!(lang_attr, json!(lang), "{path}: the page says its language");
            assert_eq!(
                low_contrast(c).await,
                Vec::<String>::new(),
                "{path} ({lang}): contrast"
            );
        }
    }
    b.client.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn the_dashboard_follows_lanes_from_the_stream_shows_one_lot_card_and_drops_a_fixed_error() {
    let (w, _clock) = world().await;
    let Some(b) = browser(1400, 1000).await else {
        w.stop().await;
        return;
    };
    let c = &b.client;
    sign_in(&b, &w, Role::Operator).await;
    // Requests for the lanes list, as the browser itself counts them.
    let lane_fetches = || async {
        js(
            c,
            "return performance.getEntriesByType('resource').filter(function (e) { return /\\/lanes(\\?|$)/.test(e.name); }).length;",
        )
        .await
        .as_u64()
        .unwrap_or(0)
    };
    let before = lane_fetches().await;
    for plate in ["京A70051", "京A70052", "京A70053"] {
        assert!(w.pass("in-1", plate, WAIT).await.opened);
    }
    eventually("the three passages on the live feed", WAIT, || async {
        let n = js(c, "return document.querySelectorAll('#feed tr').length;").await;
        (n.as_u64()? >= 3).then_some(())
    })
    .await;
    // Every car moved the lane (loop, arm up, arm down): the lanes panel followed the stream.
    // The list is fetched at start and then once a minute, never after each lane event.
    let after = lane_fetches().await;
    assert!(
        after <= before + 1,
        "lanes list fetched {} times while three cars passed",
        after - before
    );
    // With one lot there is one lot card, not an "All lots" card beside it.
    let cards = js(
        c,
        "return document.querySelectorAll('#lots > .lot').length;",
    )
    .await;
    assert_eq!(cards, json!(1));
    // A validation error goes as soon as the field it is about is edited.
    js(
        c,
        "document.getElementById('lists-add').click(); return true;",
    )
    .await;
    let refusal = eventually("the server's refusal of an empty plate", WAIT, || async {
        let v = js(
            c,
            "var e = document.getElementById('lists-err'); return e.classList.contains('show') ? e.textContent : null;",
        )
        .await;
        v.as_str().map(str::to_string)
    })
    .await;
    assert!(refusal.contains("plate"), "{refusal}");
    let still = js(
        c,
        "var p = document.getElementById('lists-plate'); p.value = '京A7'; \
         p.dispatchEvent(new Event('input', { bubbles: true })); \
         return document.getElementById('lists-err').classList.contains('show');",
    )
    .await;
    assert_eq!(
        still,
        json!(false),
        "the error is gone once the plate is edited"
    );
    b.client.close().await.unwrap();
    w.stop().await;
}
