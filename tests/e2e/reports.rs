//! Reports and the tariff editor's draft preview, through the whole system: stays made by real
//! passages at chosen times, money moved by the money desk, and each report checked against a
//! naive computation in the test over what the test itself made.

use chrono::{DateTime, Duration, TimeZone, Utc};
use parkpay_protocol::{Direction, ManualClock};
use parkpay_server::domain::{Grant, Role};
use parkpay_server::tariff::Tariff;
use parkpay_sim::reference_tariff;
use parkpay_tests::eventually;
use parkpay_tests::world::{authorised_client, World};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::scenarios::{
    charges_of, fen, publish, raw_event, sessions, settled_charge, tariff, world, WAIT,
};

/// An instant on the lot's wall clock in November 2026 (Shanghai, always +08:00).
pub(crate) fn local(day: u32, h: u32, m: u32) -> DateTime<Utc> {
    chrono::FixedOffset::east_opt(8 * 3600)
        .expect("+08:00 is a valid offset")
        .with_ymd_and_hms(2026, 11, day, h, m, 0)
        .single()
        .expect("a fixed-offset time is unambiguous")
        .with_timezone(&Utc)
}

/// Moves the manual clock to about `at` (it also runs in real time, so a little after).
pub(crate) fn clock_to(clock: &ManualClock, w: &World, at: DateTime<Utc>) {
    let gap = at - w.now();
    if gap > Duration::zero() {
        clock.advance(gap);
    }
}

pub(crate) async fn send(
    client: &reqwest::Client,
    w: &World,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client.request(method, w.url(path));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(w: &World, path: &str, body: Value) -> (u16, Value) {
    send(&w.client, w, reqwest::Method::POST, path, Some(body)).await
}

/// A car enters at `at` (a real, signed passage event on the broker) and its stay opens.
pub(crate) async fn enter(w: &World, clock: &ManualClock, plate: &str, at: DateTime<Utc>) -> Value {
    clock_to(clock, w, at);
    publish(w, &raw_event(w, "in-1", Direction::Entry, plate, at)).await;
    eventually("the stay to open", WAIT, || async {
        sessions(w, plate)
            .await
            .into_iter()
            .find(|s| s["status"] == "open")
    })
    .await
}

/// The car leaves at `at`; returns its stay once the exit is decided.
pub(crate) async fn leave(w: &World, clock: &ManualClock, plate: &str, at: DateTime<Utc>) -> Value {
    clock_to(clock, w, at);
    publish(w, &raw_event(w, "out-1", Direction::Exit, plate, at)).await;
    eventually("the exit to be decided", WAIT, || async {
        sessions(w, plate)
            .await
            .into_iter()
            .find(|s| s["status"] != "open" && !s["exit_at"].is_null())
    })
    .await
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not an instant: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

async fn report(w: &World, kind: &str, query: &str) -> Value {
    let (s, v) = send(
        &w.client,
        w,
        reqwest::Method::GET,
        &format!("/api/reports/{kind}?{query}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{kind}: {v}");
    v
}

async fn csv(w: &World, kind: &str, query: &str) -> (String, String) {
    let r = w
        .client
        .get(w.url(&format!("/api/reports/{kind}?{query}&format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let disposition = r
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .starts_with("text/csv"));
    (disposition, r.text().await.unwrap())
}

/// A stay as the test planned it: the oracle's input.
struct Stay {
    entry: DateTime<Utc>,
    exit: Option<DateTime<Utc>>,
}

/// The length-of-stay buckets, written out here and not taken from the server.
fn length_bucket(d: Duration) -> usize {
    let m = d.num_minutes();
    let s = d.num_seconds();
    match () {
        _ if s < 15 * 60 => 0,
        _ if s < 30 * 60 => 1,
        _ if m < 60 => 2,
        _ if m < 120 => 3,
        _ if m < 240 => 4,
        _ if m < 480 => 5,
        _ if m < 1440 => 6,
        _ => 7,
    }
}

#[tokio::test]
async fn reports_agree_with_a_naive_count_of_the_stays_and_money_the_test_made() {
    let (w, clock) = world().await;
    let lot = w.lot.to_string();
    let (s, v) = send(
        &w.client,
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/spaces"),
        Some(json!({ "capacity": 4 })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t = tariff();
    let fee = |a, b| reference_tariff::fee(&t, a, b);

    w.driver("京A81001", Some(100_000)).await;
    let mut plan: Vec<Stay> = Vec::new();

    // 25th: A (deduction) 09:00-11:10 overlaps B (cash) 10:00-10:20; C 22:00 to 01:30 on the
    // 26th spans midnight and pays on the pay page; on the 26th D stays 10 free minutes, E is
    // waived, A's charge is partly refunded, and F is still inside.
    let a_in = local(25, 9, 0);
    let a = enter(&w, &clock, "京A81001", a_in).await;
    assert_eq!(
        instant(&a["entry_at"]),
        a_in,
        "the stay begins at the capture"
    );
    let b = enter(&w, &clock, "京A81002", local(25, 10, 0)).await;
    leave(&w, &clock, "京A81002", local(25, 10, 20)).await;
    let b_fee = fee(local(25, 10, 0), local(25, 10, 20));
    let (s, paid) = post(
        &w,
        &format!("/api/sessions/{}/cash", b["id"].as_str().unwrap()),
        json!({ "amount": { "minor": b_fee, "currency": "CNY" } }),
    )
    .await;
    assert_eq!((s, paid["method"].as_str()), (200, Some("cash")), "{paid}");
    leave(&w, &clock, "京A81001", local(25, 11, 10)).await;
    let a_fee = fee(a_in, local(25, 11, 10));
    let a_charge = settled_charge(&w, a["id"].as_str().unwrap()).await;
    assert_eq!(
        (a_charge["status"].as_str(), fen(&a_charge["amount"])),
        (Some("succeeded"), a_fee)
    );
    plan.push(Stay {
        entry: a_in,
        exit: Some(local(25, 11, 10)),
    });
    plan.push(Stay {
        entry: local(25, 10, 0),
        exit: Some(local(25, 10, 20)),
    });

    let c = enter(&w, &clock, "京A81003", local(25, 22, 0)).await;
    leave(&w, &clock, "京A81003", local(26, 1, 30)).await;
    let c_fee = fee(local(25, 22, 0), local(26, 1, 30));
    let paid = w
        .api
        .pay_session(c["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(paid.amount.minor, c_fee);
    plan.push(Stay {
        entry: local(25, 22, 0),
        exit: Some(local(26, 1, 30)),
    });

    enter(&w, &clock, "京A81004", local(26, 8, 0)).await;
    let d = leave(&w, &clock, "京A81004", local(26, 8, 10)).await;
    assert_eq!(d["status"], "closed", "ten minutes are free: {d}");
    plan.push(Stay {
        entry: local(26, 8, 0),
        exit: Some(local(26, 8, 10)),
    });

    let e = enter(&w, &clock, "京A81005", local(26, 9, 0)).await;
    leave(&w, &clock, "京A81005", local(26, 14, 0)).await;
    let e_fee = fee(local(26, 9, 0), local(26, 14, 0));
    let e_charge = charges_of(&w, e["id"].as_str().unwrap()).await[0].clone();
    let (s, waived) = post(
        &w,
        &format!("/api/charges/{}/waive", e_charge["id"].as_str().unwrap()),
        json!({ "reason": "barrier fault" }),
    )
    .await;
    assert_eq!(
        (s, waived["status"].as_str()),
        (200, Some("waived")),
        "{waived}"
    );
    plan.push(Stay {
        entry: local(26, 9, 0),
        exit: Some(local(26, 14, 0)),
    });

    clock_to(&clock, &w, local(26, 15, 0));
    let refund_path = format!("/api/charges/{}/refunds", a_charge["id"].as_str().unwrap());
    let (s, r) = post(
        &w,
        &refund_path,
        json!({ "amount": { "minor": 300, "currency": "CNY" }, "reason": "goodwill" }),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    eventually("the refund to succeed", WAIT, || async {
        let rs = w.get_json(&refund_path).await;
        (rs[0]["status"] == "succeeded").then_some(())
    })
    .await;

    enter(&w, &clock, "京A81006", local(26, 16, 0)).await;
    plan.push(Stay {
        entry: local(26, 16, 0),
        exit: None,
    });
    // Report on two whole days that have passed.
    clock_to(&clock, &w, local(27, 9, 0));
    let q = format!("lot={lot}&from=2026-11-25&to=2026-11-26");

    // ---- occupancy: car-seconds per hour of the day, summed over the two days ----
    let day_start = |d: u32| local(d, 0, 0);
    let mut car_s = [0i64; 24];
    let mut per_day = BTreeMap::new();
    for day in [25u32, 26] {
        for h in 0..24 {
            let lo = day_start(day) + Duration::hours(h);
            let hi = lo + Duration::hours(1);
            let mut inside = 0i64;
            for s in &plan {
                let end = s.exit.unwrap_or(local(27, 9, 0));
                let from = s.entry.max(lo);
                let to = end.min(hi);
                if to > from {
                    inside += (to - from).num_seconds();
                }
            }
            car_s[h as usize] += inside;
            per_day.insert((day, h), inside);
        }
    }
    let occ = report(&w, "occupancy", &q).await;
    assert_eq!(occ["hours"].as_array().unwrap().len(), 24, "{occ}");
    for (h, row) in occ["hours"].as_array().unwrap().iter().enumerate() {
        assert_eq!(row["hour"], h, "{row}");
        assert_eq!(row["car_seconds"], car_s[h], "hour {h}: {row}");
        assert_eq!(row["span_seconds"], 2 * 3600, "hour {h}: {row}");
        let avg = car_s[h] as f64 / (2.0 * 3600.0);
        assert!(
            (row["average"].as_f64().unwrap() - avg).abs() < 0.006,
            "hour {h}: {row} vs {avg}"
        );
        let busiest = [25u32, 26]
            .iter()
            .map(|d| per_day[&(*d, h as i64)] as f64 / 3600.0)
            .fold(0.0, f64::max);
        assert!(
            (row["busiest"].as_f64().unwrap() - busiest).abs() < 0.006,
            "hour {h}: {row}"
        );
    }
    // On the 25th, 10:00-10:20 two cars were inside (A and B), A alone for the rest of the
    // hour; on the 26th E all hour.
    assert_eq!(car_s[10], 3600 + 20 * 60 + 3600);
    // C spans midnight: an hour on the 25th (23:00) and on the 26th (00:00).
    assert_eq!(car_s[23], 3600 + 3600, "C on the 25th and F on the 26th");
    assert_eq!(car_s[0], 3600, "C after midnight");

    // ---- takings: by the day money moved and by method, refunds apart, waived apart ----
    let tak = report(&w, "takings", &q).await;
    let days = tak["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{tak}");
    let row = |d: &Value, k: &str| fen(&d[k]);
    assert_eq!(days[0]["date"], "2026-11-25");
    assert_eq!(
        (
            row(&days[0], "deduction"),
            row(&days[0], "cash"),
            row(&days[0], "pay_page")
        ),
        (a_fee, b_fee, 0),
        "{}",
        days[0]
    );
    assert_eq!((row(&days[0], "refunds"), row(&days[0], "waived")), (0, 0));
    assert_eq!(row(&days[0], "net"), a_fee + b_fee);
    assert_eq!(days[1]["date"], "2026-11-26");
    assert_eq!(
        (
            row(&days[1], "deduction"),
            row(&days[1], "cash"),
            row(&days[1], "pay_page")
        ),
        (0, 0, c_fee),
        "{}",
        days[1]
    );
    assert_eq!(
        (
            row(&days[1], "refunds"),
            row(&days[1], "waived"),
            row(&days[1], "net")
        ),
        (300, e_fee, c_fee - 300),
        "{}",
        days[1]
    );
    assert_eq!(row(&tak["total"], "net"), a_fee + b_fee + c_fee - 300);
    assert_eq!(tak["total"]["charges"], 3);
    assert!(e_fee > 0 && c_fee > 0 && b_fee > 0);

    // ---- length of stay: the stays that left in the range ----
    let mut lengths = [0i64; 8];
    for s in &plan {
        if let Some(x) = s.exit {
            lengths[length_bucket(x - s.entry)] += 1;
        }
    }
    let len = report(&w, "stay-lengths", &q).await;
    let got: Vec<i64> = len["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["stays"].as_i64().unwrap())
        .collect();
    assert_eq!(got, lengths.to_vec(), "{len}");
    assert_eq!(len["buckets"][0]["label"], "<15 min");
    assert_eq!(len["buckets"][7]["label"], ">1 day");

    // ---- turnover: stays begun per day per space ----
    let tur = report(&w, "turnover", &q).await;
    let begun = |d: u32| {
        plan.iter()
            .filter(|s| s.entry >= day_start(d) && s.entry < day_start(d + 1))
            .count() as i64
    };
    assert_eq!(tur["spaces"], 4);
    for (i, d) in [25u32, 26].iter().enumerate() {
        let row = &tur["days"][i];
        assert_eq!(row["stays"], begun(*d), "{row}");
        assert!(
            (row["turnover"].as_f64().unwrap() - begun(*d) as f64 / 4.0).abs() < 0.006,
            "{row}"
        );
    }

    // ---- CSV: the same numbers, a file name, and quoting ----
    let (disposition, text) = csv(&w, "takings", &q).await;
    assert_eq!(
        disposition,
        format!("attachment; filename=\"takings-{lot}-2026-11-25-2026-11-26.csv\"")
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "lot,lot_name,date,currency,deduction_minor,cash_minor,pay_page_minor,refunds_minor,net_minor,waived_minor,charges,refunds,waived"
    );
    assert_eq!(
        lines[2],
        format!(
            "{lot},Test lot,2026-11-26,CNY,0,0,{c_fee},300,{},{e_fee},1,1,1",
            c_fee - 300
        )
    );
    assert_eq!(lines.len(), 4, "two days and the total: {text}");
    let (_, occ_csv) = csv(&w, "occupancy", &q).await;
    assert!(
        occ_csv.contains(&format!("{lot},Test lot,10:00,")),
        "{occ_csv}"
    );
    let (_, len_csv) = csv(&w, "stay-lengths", &q).await;
    assert!(
        len_csv.contains(&format!(
            "{lot},Test lot,2026-11-25,2026-11-26,2-4 h,120,240,{}",
            lengths[4]
        )),
        "{len_csv}"
    );
    let (_, tur_csv) = csv(&w, "turnover", &q).await;
    assert!(
        tur_csv.contains(&format!("{lot},Test lot,2026-11-25,{},4,", begun(25))),
        "{tur_csv}"
    );

    // A lot whose name needs quoting in CSV (and would be a formula in a spreadsheet).
    let other = parkpay_tests::unique_lot();
    let (s, v) = post(
        &w,
        "/api/lots",
        json!({ "id": other, "name": "=Mall \"North\", P1", "capacity": 10, "tariff": parkpay_sim::api::example_tariff() }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, text) = csv(
        &w,
        "turnover",
        &format!("lot={other}&from=2026-11-25&to=2026-11-25"),
    )
    .await;
    assert_eq!(
        text.lines().nth(1).unwrap(),
        format!("{other},\"'=Mall \"\"North\"\", P1\",2026-11-25,0,10,0.00")
    );

    w.stop().await;
}

#[tokio::test]
async fn reports_check_roles_lots_and_ranges() {
    let (w, _clock) = world().await;
    let lot = w.lot.to_string();
    let token = |role: Role, lots: Option<Vec<String>>| {
        let app = w.app().clone();
        async move {
            let (_, t) = app
                .create_token(
                    &format!("t-{}", uuid::Uuid::new_v4().simple()),
                    Grant {
                        role,
                        lots: lots.map(|l| {
                            l.into_iter()
                                .map(|x| parkpay_protocol::LotId::parse(x).unwrap())
                                .collect()
                        }),
                    },
                    "tests",
                )
                .await
                .unwrap();
            authorised_client(&t)
        }
    };
    let q = format!("lot={lot}&from=2026-11-25&to=2026-11-26");
    let get = |c: reqwest::Client, path: String| {
        let w = &w;
        async move { send(&c, w, reqwest::Method::GET, &path, None).await }
    };
    // Every role that may look sees every report of its lots, takings included.
    for role in [Role::Viewer, Role::Operator, Role::Finance] {
        let c = token(role, Some(vec![lot.clone()])).await;
        for kind in ["occupancy", "takings", "stay-lengths", "turnover"] {
            let (s, v) = get(c.clone(), format!("/api/reports/{kind}?{q}")).await;
            assert_eq!(s, 200, "{role} {kind}: {v}");
        }
    }
    // A lot outside the grant is 403 (before anything about the lot is told).
    let elsewhere = token(Role::Finance, Some(vec!["some-other-lot".to_string()])).await;
    let (s, v) = get(elsewhere.clone(), format!("/api/reports/takings?{q}")).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains(&lot), "{v}");
    let (s, _) = get(elsewhere, format!("/api/reports/occupancy?{q}&format=csv")).await;
    assert_eq!(s, 403);
    // No sign-in: 401.
    let (s, _) = get(reqwest::Client::new(), format!("/api/reports/turnover?{q}")).await;
    assert_eq!(s, 401);
    // Unknown lot: 404.
    let (s, v) = get(
        w.client.clone(),
        "/api/reports/turnover?lot=no-such-lot&from=2026-11-25&to=2026-11-25".into(),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    // Bad ranges and formats: 4xx naming what is wrong.
    for (query, status, needle) in [
        (
            format!("lot={lot}&from=2026-11-26&to=2026-11-25"),
            422,
            "to:",
        ),
        (
            format!("lot={lot}&from=26.11.2026&to=2026-11-25"),
            422,
            "from:",
        ),
        (
            format!("lot={lot}&from=2026-11-25&to=2026-13-01"),
            422,
            "to:",
        ),
        (
            format!("lot={lot}&from=2026-01-01&to=2026-12-31"),
            422,
            "at most 62 days",
        ),
        (
            format!("lot={lot}&from=2026-11-25&to=2026-11-25&format=xml"),
            400,
            "format",
        ),
        (format!("lot={lot}&from=2026-11-25"), 400, "to"),
        (
            "lot=a%2Fb&from=2026-11-25&to=2026-11-25".to_string(),
            400,
            "lot",
        ),
    ] {
        for kind in ["occupancy", "takings"] {
            let (s, v) = get(w.client.clone(), format!("/api/reports/{kind}?{query}")).await;
            assert_eq!(s, status, "{kind}?{query}: {v}");
            assert!(
                v["message"].as_str().unwrap_or_default().contains(needle),
                "{kind}?{query}: {v}"
            );
        }
    }
    w.stop().await;
}

#[tokio::test]
async fn a_draft_tariffs_preview_is_what_the_saved_tariff_then_charges() {
    let (w, clock) = world().await;
    let lot = w.lot.to_string();
    let mut draft = parkpay_sim::api::example_tariff();
    draft["bands"][0]["unit_price"]["minor"] = json!(450);
    draft["grace_minutes"] = json!(5);
    let draft_t: Tariff = serde_json::from_value(draft.clone()).unwrap();
    let (entry, exit) = (local(25, 9, 30), local(25, 12, 40));
    let preview_path = format!("/api/lots/{lot}/tariff/preview");
    let (s, quote) = post(
        &w,
        &preview_path,
        json!({ "tariff": draft, "entry": entry, "exit": exit }),
    )
    .await;
    assert_eq!(s, 200, "{quote}");
    let expected = reference_tariff::fee(&draft_t, entry, exit);
    assert_eq!(fen(&quote["total"]), expected, "{quote}");
    assert!(
        quote["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| fen(&l["unit_price"]) == 450),
        "the draft's price is used: {quote}"
    );
    // The saved tariff is not changed by a preview.
    let (s, saved_quote) = send(
        &w.client,
        &w,
        reqwest::Method::GET,
        &format!(
            "{preview_path}?entry={}&exit={}",
            entry.to_rfc3339().replace('+', "%2B"),
            exit.to_rfc3339().replace('+', "%2B")
        ),
        None,
    )
    .await;
    assert_eq!(s, 200, "{saved_quote}");
    assert_eq!(
        fen(&saved_quote["total"]),
        reference_tariff::fee(&tariff(), entry, exit)
    );
    assert_ne!(fen(&saved_quote["total"]), expected);

    // Invalid drafts are 422 naming the field; a viewer may preview but not save.
    let mut bad = draft.clone();
    bad["unit_minutes"] = json!(0);
    let (s, v) = post(
        &w,
        &preview_path,
        json!({ "tariff": bad, "entry": entry, "exit": exit }),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("tariff.unit_minutes:"),
        "{v}"
    );
    let mut overlap = draft.clone();
    overlap["bands"][0]["end"] = json!("21:00");
    let (s, v) = send(
        &w.client,
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/tariff"),
        Some(overlap),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with("tariff.bands:"),
        "{v}"
    );
    let (s, v) = post(
        &w,
        &preview_path,
        json!({ "tariff": draft, "entry": exit, "exit": entry }),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = post(
        &w,
        &preview_path,
        json!({ "tariff": draft, "entry": entry, "exit": exit, "class": "bus" }),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (_, t) = w
        .app()
        .create_token(
            "viewer",
            Grant {
                role: Role::Viewer,
                lots: None,
            },
            "tests",
        )
        .await
        .unwrap();
    let viewer = authorised_client(&t);
    let (s, v) = send(
        &viewer,
        &w,
        reqwest::Method::POST,
        &preview_path,
        Some(json!({ "tariff": draft, "entry": entry, "exit": exit })),
    )
    .await;
    assert_eq!((s, fen(&v["total"])), (200, expected), "{v}");
    let (s, _) = send(
        &viewer,
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/tariff"),
        Some(draft.clone()),
    )
    .await;
    assert_eq!(s, 403);

    // Saved (and audited), the same tariff charges a real stay what the preview said.
    let (s, v) = send(
        &w.client,
        &w,
        reqwest::Method::PUT,
        &format!("/api/lots/{lot}/tariff"),
        Some(draft.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let audit = w.get_json("/api/audit").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "lot.tariff_changed" && a["actor"] == "token:tests"),
        "{audit}"
    );
    w.driver("京A82001", Some(100_000)).await;
    let stay = enter(&w, &clock, "京A82001", entry).await;
    leave(&w, &clock, "京A82001", exit).await;
    let c = settled_charge(&w, stay["id"].as_str().unwrap()).await;
    assert_eq!(
        (c["status"].as_str(), fen(&c["amount"])),
        (Some("succeeded"), fen(&quote["total"])),
        "{c}"
    );
    w.stop().await;
}
