//! History as an operator reads it: stays, passages and the audit log, filtered, paged and
//! exported. The expectations come from the traffic the test itself drove, not from the server.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use parkpay_server::domain::{Grant, Role};
use parkpay_tests::world::{authorised_client, World};
use serde_json::{json, Value};

use crate::scenarios::{urlencode, world, WAIT};

/// A stay the test drove: where and when it entered, and when it left (if it did).
#[derive(Debug, Clone)]
struct Drove {
    entry_lane: &'static str,
    entered: DateTime<Utc>,
    left: Option<DateTime<Utc>>,
}

async fn get(c: &reqwest::Client, w: &World, path: &str) -> (u16, Value) {
    let r = c.get(w.url(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every page of a history list, following `next`, with `limit` rows a page.
async fn all_pages(w: &World, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut p = format!("{path}{sep}limit={limit}");
        if let Some(a) = &after {
            p.push_str(&format!("&after={}", urlencode(a)));
        }
        let page = w.get_json(&p).await;
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= limit, "a page holds at most its limit");
        pages += 1;
        rows.extend(items);
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 100, "paging ends");
    }
    (rows, pages)
}

fn plates(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["plate"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn instant(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Rows of a CSV body (header first), read by a reader that is not the server's writer.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| {
            r.expect("a CSV record")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn stays_and_passages_are_filtered_paged_and_exported_as_driven() {
    let (w, clock) = world().await;
    let lot = w.lot.to_string();
    // Seven cars in, over an hour and a half, through two entry lanes; four of them leave
    // (each with a mandate, so the barrier opens and the stay is charged).
    let cars = [
        "京A70001",
        "京A70002",
        "京A70003",
        "京A70004",
        "京A70005",
        "京A70006",
        "京A70007",
    ];
    let mut truth: BTreeMap<&str, Drove> = BTreeMap::new();
    for (i, plate) in cars.iter().enumerate() {
        if i < 4 {
            w.driver(plate, Some(100_000)).await;
        }
        let lane = if i % 2 == 0 { "in-1" } else { "in-2" };
        let entry = w.pass(lane, plate, WAIT).await;
        assert!(entry.opened, "{plate} enters");
        truth.insert(
            plate,
            Drove {
                entry_lane: lane,
                entered: entry.capture.captured_at,
                left: None,
            },
        );
        clock.advance(chrono::Duration::minutes(15));
    }
    for plate in &cars[..4] {
        let exit = w.pass("out-1", plate, WAIT).await;
        assert!(exit.opened, "{plate} leaves on its mandate");
        truth.get_mut(plate).unwrap().left = Some(exit.capture.captured_at);
        clock.advance(chrono::Duration::minutes(5));
    }

    // Every stay, three a page: all seven once each, newest entry first.
    let (rows, pages) = all_pages(&w, &format!("/api/history/stays?lot={lot}"), 3).await;
    assert_eq!(pages, 3);
    let mut expected: Vec<(&str, DateTime<Utc>)> =
        truth.iter().map(|(p, d)| (*p, d.entered)).collect();
    expected.sort_by_key(|e| std::cmp::Reverse(e.1));
    assert_eq!(
        plates(&rows),
        expected.iter().map(|e| e.0.to_string()).collect::<Vec<_>>()
    );
    for r in &rows {
        let d = &truth[r["plate"].as_str().unwrap()];
        assert_eq!(instant(&r["entry_at"]), d.entered);
        assert_eq!(r["entry_lane"].as_str(), Some(d.entry_lane));
        assert_eq!(r["exit_at"].as_str().map(|t| t.parse().unwrap()), d.left);
    }

    // By lane, by status, by a range, by a misremembered plate.
    let (rows, _) = all_pages(&w, &format!("/api/history/stays?lot={lot}&lane=in-2"), 50).await;
    let want: BTreeSet<String> = truth
        .iter()
        .filter(|(_, d)| d.entry_lane == "in-2")
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(plates(&rows).into_iter().collect::<BTreeSet<_>>(), want);

    let (rows, _) = all_pages(&w, &format!("/api/history/stays?lot={lot}&status=open"), 50).await;
    let inside: BTreeSet<String> = truth
        .iter()
        .filter(|(_, d)| d.left.is_none())
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(plates(&rows).into_iter().collect::<BTreeSet<_>>(), inside);

    // Present in [4th entry, 4th entry + 1 s): those that entered by then and had not left.
    let at = truth["京A70004"].entered;
    let (from, to) = (
        at.to_rfc3339(),
        (at + chrono::Duration::seconds(1)).to_rfc3339(),
    );
    let (rows, _) = all_pages(
        &w,
        &format!(
            "/api/history/stays?lot={lot}&from={}&to={}",
            urlencode(&from),
            urlencode(&to)
        ),
        50,
    )
    .await;
    let present: BTreeSet<String> = truth
        .iter()
        .filter(|(_, d)| {
            d.entered < at + chrono::Duration::seconds(1) && d.left.is_none_or(|l| l >= at)
        })
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(plates(&rows).into_iter().collect::<BTreeSet<_>>(), present);
    assert_eq!(
        present.len(),
        4,
        "the fourth car found the first three inside"
    );

    let (rows, _) = all_pages(
        &w,
        &format!("/api/history/stays?search={}", urlencode("a7OOO5")),
        50,
    )
    .await;
    assert_eq!(
        plates(&rows),
        vec!["京A70005".to_string()],
        "O and 0 fold alike"
    );

    // Passages: eleven, exits four, held none (every exit had a mandate).
    let (rows, pages) = all_pages(&w, &format!("/api/history/passages?lot={lot}"), 4).await;
    assert_eq!((rows.len(), pages), (11, 3));
    let captured: Vec<DateTime<Utc>> = rows.iter().map(|r| instant(&r["captured_at"])).collect();
    assert!(
        captured.windows(2).all(|p| p[0] >= p[1]),
        "newest capture first"
    );
    let (exits, _) = all_pages(
        &w,
        &format!("/api/history/passages?lot={lot}&direction=exit"),
        50,
    )
    .await;
    assert_eq!(exits.len(), 4);
    assert!(exits
        .iter()
        .all(|e| e["decision"]["action"] == "open" && e["lane"] == "out-1"));
    let (held, _) = all_pages(
        &w,
        &format!("/api/history/passages?lot={lot}&status=hold"),
        50,
    )
    .await;
    assert!(held.is_empty(), "{held:?}");
    let (one, _) = all_pages(
        &w,
        &format!("/api/history/passages?plate={}", urlencode("京A70002")),
        50,
    )
    .await;
    assert_eq!(one.len(), 2, "an entry and an exit");

    // CSV: every stay, its minutes and its fee as charged.
    let r = w
        .client
        .get(w.url(&format!("/api/history/stays?lot={lot}&format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("stays.csv"));
    let table = csv_rows(&r.text().await.unwrap());
    assert_eq!(table[0][..4], ["stay", "lot", "plate", "status"]);
    assert_eq!(table.len(), 1 + cars.len());
    for row in &table[1..] {
        let d = &truth[row[2].as_str()];
        match d.left {
            Some(left) => {
                assert_eq!(
                    row[8],
                    (left - d.entered).num_minutes().to_string(),
                    "{row:?}"
                );
                let charge = crate::scenarios::settled_charge(&w, &row[0]).await;
                let fen = charge["amount"]["minor"].as_i64().unwrap();
                assert_eq!(row[9], format!("{}.{:02}", fen / 100, fen % 100), "{row:?}");
            }
            None => assert_eq!((row[6].as_str(), row[9].as_str()), ("", ""), "{row:?}"),
        }
    }
    let r = w
        .client
        .get(w.url(&format!(
            "/api/history/passages?lot={lot}&format=csv&direction=entry"
        )))
        .send()
        .await
        .unwrap();
    let table = csv_rows(&r.text().await.unwrap());
    assert_eq!(table.len(), 1 + cars.len());
    w.stop().await;
}

#[tokio::test]
async fn history_keeps_to_the_callers_lots_and_refuses_bad_queries_with_a_message() {
    let (w, _clock) = world().await;
    let lot = w.lot.to_string();
    assert!(w.pass("in-1", "京A70011", WAIT).await.opened);

    let other = parkpay_protocol::LotId::parse(format!("{lot}-other")).unwrap();
    let (_, token) = w
        .app()
        .create_token(
            "elsewhere",
            Grant {
                role: Role::Operator,
                lots: Some(vec![other]),
            },
            "tests",
        )
        .await
        .unwrap();
    let elsewhere = authorised_client(&token);
    let (status, body) = get(&elsewhere, &w, &format!("/api/history/stays?lot={lot}")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(&elsewhere, &w, "/api/history/stays").await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    let (status, body) = get(&elsewhere, &w, "/api/history/passages").await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    let (status, _) = get(&elsewhere, &w, "/api/history/audit").await;
    assert_eq!(status, 403, "an operator does not read the audit log");

    for bad in [
        "/api/history/stays?limit=0".to_string(),
        "/api/history/stays?limit=5000".into(),
        "/api/history/stays?after=garbage".into(),
        "/api/history/stays?format=xml".into(),
        "/api/history/stays?status=parked".into(),
        "/api/history/stays?from=2026-12-05".into(),
        format!("/api/history/stays?lot={lot}&from=yesterday"),
        format!("/api/history/stays?lot={lot}&from=2026-12-05&to=2026-12-04"),
        "/api/history/passages?direction=sideways".into(),
        "/api/history/passages?status=closed".into(),
        "/api/history/stays?nonsense=1".into(),
        "/api/history/audit?lot=x".into(),
    ] {
        let (status, body) = get(&w.client, &w, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: a message says why: {body}"
        );
    }
    // A wall time with a lot is read in the lot's zone (Asia/Shanghai): the car that entered
    // "today" there is found from local midnight.
    let today = w
        .now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d")
        .to_string();
    let body = w
        .get_json(&format!("/api/history/stays?lot={lot}&from={today}"))
        .await;
    assert_eq!(
        plates(body["items"].as_array().unwrap()),
        vec!["京A70011".to_string()]
    );
    w.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_searched_by_who_what_and_text() {
    let (w, _clock) = world().await;
    let lot = w.lot.to_string();
    for (lane, reason) in [
        ("in-1", "delivery van, no plate"),
        ("out-2", "=cmd|' /C calc'!A0"),
    ] {
        let r = w
            .client
            .post(w.url(&format!("/api/lots/{lot}/lanes/{lane}/open")))
            .json(&json!({ "reason": reason }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "lift {lane}: {}", r.status());
    }
    let all = w.get_json("/api/history/audit?action=lane.").await;
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{all}");
    assert!(items
        .iter()
        .all(|e| e["action"].as_str().unwrap().starts_with("lane.")));
    let actor = items[0]["actor"].as_str().unwrap().to_string();

    let found = w
        .get_json(&format!(
            "/api/history/audit?text={}",
            urlencode("DELIVERY VAN")
        ))
        .await;
    let found = found["items"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["subject"].as_str(),
        Some(format!("{lot}/in-1").as_str())
    );

    let none = w
        .get_json(&format!(
            "/api/history/audit?actor={}",
            urlencode("nobody-at-all")
        ))
        .await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let mine = w
        .get_json(&format!(
            "/api/history/audit?actor={}&action=lane.",
            urlencode(&actor)
        ))
        .await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    // Wildcards are text: "%" finds nothing, not everything.
    let pct = w.get_json("/api/history/audit?text=%25%25").await;
    assert_eq!(pct["items"].as_array().unwrap().len(), 0, "{pct}");

    // The export holds each entry's text exactly (commas, quotes and all), newest first.
    let r = w
        .client
        .get(w.url("/api/history/audit?action=lane.&format=csv"))
        .send()
        .await
        .unwrap();
    let table = csv_rows(&r.text().await.unwrap());
    assert_eq!(table[0], ["at", "actor", "action", "subject", "detail"]);
    assert_eq!(table.len(), 3);
    for (row, entry) in table[1..].iter().zip(items) {
        assert_eq!(row[2], entry["action"].as_str().unwrap());
        assert_eq!(row[3], entry["subject"].as_str().unwrap());
        assert_eq!(row[4], entry["detail"].as_str().unwrap());
    }
    assert!(
        table[1..]
            .iter()
            .any(|row| row[4].ends_with("=cmd|' /C calc'!A0")),
        "{table:?}"
    );
    assert!(
        table[1..]
            .iter()
            .any(|row| row[4].ends_with("delivery van, no plate")),
        "{table:?}"
    );
    w.stop().await;
}

#[tokio::test]
async fn recent_charges_put_a_payment_on_an_old_hold_first() {
    let (w, clock) = world().await;
    // A car without a mandate is held at the exit: its fee waits.
    assert!(w.pass("in-1", "京A70061", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(40));
    let held = w
        .pass("out-1", "京A70061", std::time::Duration::from_secs(3))
        .await;
    assert!(!held.opened, "held until paid");
    let old = crate::scenarios::sessions(&w, "京A70061").await[0].clone();
    // Later, a mandated car leaves and is charged.
    clock.advance(chrono::Duration::minutes(10));
    w.driver("京A70062", Some(100_000)).await;
    assert!(w.pass("in-2", "京A70062", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(30));
    assert!(w.pass("out-2", "京A70062", WAIT).await.opened);
    let newer = crate::scenarios::sessions(&w, "京A70062").await[0].clone();
    crate::scenarios::settled_charge(&w, newer["id"].as_str().unwrap()).await;
    // Then the held fee is paid at the booth: that charge changed last, so it comes first.
    clock.advance(chrono::Duration::minutes(5));
    let due = w
        .get_json(&format!(
            "/api/charges?session={}",
            old["id"].as_str().unwrap()
        ))
        .await[0]["amount"]
        .clone();
    let r = w
        .client
        .post(w.url(&format!(
            "/api/sessions/{}/cash",
            old["id"].as_str().unwrap()
        )))
        .json(&json!({ "amount": due }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "cash: {}", r.status());
    let recent = w.get_json("/api/charges?limit=2").await;
    let sessions: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        sessions,
        [old["id"].as_str().unwrap(), newer["id"].as_str().unwrap()],
        "{recent}"
    );
    assert_eq!(recent[0]["method"], "cash");
    w.stop().await;
}
