//! The driver portal over HTTP: signing in with a texted code (and every way that must fail),
//! what a signed-in driver may and may not see, and finding a stay by its exact plate.

use parkpay_protocol::{Money, PlateColour};
use parkpay_tests::eventually;
use parkpay_tests::world::World;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::scenarios::{fen, sessions, settled_charge, urlencode, world, WAIT};

/// A driver registered with `phone` (as an operator would type it) and `plate`; with
/// `wallet`, a sandbox mandate over a wallet of that many fen, capped at ¥500 a month.
pub(crate) async fn registered(w: &World, phone: &str, plate: &str, wallet: Option<i64>) -> Uuid {
    let driver = w
        .api
        .create_driver(&format!("driver of {plate}"), phone)
        .await
        .expect("driver created");
    w.api
        .add_vehicle(driver, plate, PlateColour::Blue)
        .await
        .expect("vehicle bound");
    if let Some(balance) = wallet {
        let reference = format!("wallet-{driver}");
        w.api
            .create_wallet(&reference, Money::cny(balance))
            .await
            .expect("wallet created");
        let r = w
            .client
            .post(w.url(&format!("/api/drivers/{driver}/mandates")))
            .json(&json!({"provider": "sandbox", "provider_ref": reference,
                          "monthly_cap": {"minor": 50_000, "currency": "CNY"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    driver
}

/// Asks for a code: the status and the body.
pub(crate) async fn ask_code(w: &World, phone: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(w.url("/api/portal/code"))
        .json(&json!({ "phone": phone }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The newest code texted to `e164`, once it has arrived.
pub(crate) async fn texted_code(w: &World, e164: &str, after: usize) -> String {
    let sms = w
        .app()
        .portal
        .memory
        .clone()
        .expect("tests use the memory sender");
    eventually("the code's text message", WAIT, || {
        let sms = sms.clone();
        async move {
            let texts = sms.messages_to(e164);
            let text = texts.get(after)?.clone();
            text.split(|c: char| !c.is_ascii_digit())
                .find(|t| t.len() == 6)
                .map(str::to_string)
        }
    })
    .await
}

pub(crate) fn texts_to(w: &World, e164: &str) -> usize {
    w.app()
        .portal
        .memory
        .as_ref()
        .expect("tests use the memory sender")
        .messages_to(e164)
        .len()
}

/// Signs in: the status, the `parkpay_driver=...` cookie pair (when set), the whole
/// Set-Cookie header and the body.
async fn sign_in(
    w: &World,
    phone: &str,
    code: &str,
) -> (StatusCode, Option<String>, String, Value) {
    let r = reqwest::Client::new()
        .post(w.url("/api/portal/login"))
        .json(&json!({ "phone": phone, "code": code }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let set = r
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let pair = set
        .split(';')
        .next()
        .filter(|p| p.starts_with("parkpay_driver=") && p.len() > "parkpay_driver=".len())
        .map(str::to_string);
    (status, pair, set, r.json().await.unwrap_or(Value::Null))
}

async fn get_with(w: &World, cookie: &str, path: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .get(w.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post_with(
    w: &World,
    cookie: &str,
    csrf: Option<&str>,
    path: &str,
    body: Value,
) -> StatusCode {
    let mut r = reqwest::Client::new()
        .post(w.url(path))
        .header("cookie", cookie)
        .json(&body);
    if let Some(c) = csrf {
        r = r.header("x-csrf-token", c);
    }
    r.send().await.unwrap().status()
}

fn plates_of(me: &Value, list: &str) -> Vec<String> {
    me[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["plate"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_driver_signs_in_with_a_texted_code_and_sees_only_their_own_stays() {
    let (w, clock) = world().await;
    let mine = registered(&w, "139 0000 0001", "京A61001", Some(100_000)).await;
    registered(&w, "13900000002", "京A61002", Some(100_000)).await;
    // One past stay each (charged under the mandate), and one current stay each.
    for plate in ["京A61001", "京A61002"] {
        assert!(w.pass("in-1", plate, WAIT).await.opened);
    }
    clock.advance(chrono::Duration::minutes(130));
    for plate in ["京A61001", "京A61002"] {
        assert!(w.pass("out-1", plate, WAIT).await.opened);
    }
    let past = sessions(&w, "京A61001").await[0].clone();
    let paid = settled_charge(&w, past["id"].as_str().unwrap()).await;
    assert_eq!(paid["status"], "succeeded");
    let theirs_past = sessions(&w, "京A61002").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    clock.advance(chrono::Duration::minutes(10));
    for plate in ["京A61001", "京A61002"] {
        assert!(w.pass("in-2", plate, WAIT).await.opened);
    }
    let theirs_now = sessions(&w, "京A61002")
        .await
        .into_iter()
        .find(|s| s["status"] == "open")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The number written another way is the same number.
    let (status, asked) = ask_code(&w, "+86 139-0000-0001").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    assert_eq!(asked["phone"], "+86 139****0001");
    let code = texted_code(&w, "+8613900000001", 0).await;
    let (status, cookie, set, body) = sign_in(&w, "13900000001", &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = cookie.expect("a driver cookie");
    let csrf = body["csrf"].as_str().unwrap().to_string();
    // A code signs in once.
    let (again, ..) = sign_in(&w, "13900000001", &code).await;
    assert_eq!(again, StatusCode::UNAUTHORIZED, "a used code");

    let (status, me) = get_with(&w, &cookie, "/api/portal/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(plates_of(&me, "plates"), vec!["京A61001"]);
    assert_eq!(plates_of(&me, "current"), vec!["京A61001"]);
    assert_eq!(plates_of(&me, "past"), vec!["京A61001"]);
    assert_eq!(
        me["past"][0]["receipt_url"],
        format!("/receipt/{}", past["id"].as_str().unwrap())
    );
    assert!(fen(&me["current"][0]["fee_due"]) >= 0);
    assert_eq!(me["debts"].as_array().unwrap().len(), 0);
    assert_eq!(fen(&me["debt_total"]), 0);
    // The mandate, with what it took this month.
    let m = &me["mandates"][0];
    assert_eq!(m["status"], "active");
    assert_eq!(fen(&m["monthly_cap"]), 50_000);
    assert_eq!(fen(&m["spent_this_month"]), fen(&paid["amount"]));
    assert!(fen(&paid["amount"]) > 0);
    let text = me.to_string();
    assert!(
        !text.contains("京A61002"),
        "nothing of the other driver: {text}"
    );
    assert!(!text.contains("wallet-"), "no provider reference: {text}");

    // Their own stays by id; another driver's are not found, current or past.
    let own = me["current"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        get_with(&w, &cookie, &format!("/api/portal/stays/{own}"))
            .await
            .0,
        StatusCode::OK
    );
    let own_past = past["id"].as_str().unwrap();
    assert_eq!(
        get_with(&w, &cookie, &format!("/api/portal/stays/{own_past}"))
            .await
            .0,
        StatusCode::OK
    );
    for other in [&theirs_now, &theirs_past] {
        let (s, _) = get_with(&w, &cookie, &format!("/api/portal/stays/{other}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "another driver's stay {other}");
    }
    assert_eq!(
        get_with(&w, &cookie, "/api/portal/stays/not-a-uuid")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // The driver's session opens no operator route, reading or writing.
    for path in [
        "/api/me".to_string(),
        "/api/sessions".to_string(),
        format!("/api/drivers/{mine}"),
        "/api/charges".to_string(),
        "/api/audit".to_string(),
        "/metrics".to_string(),
    ] {
        let (s, _) = get_with(&w, &cookie, &path).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "GET {path} with a driver's session"
        );
    }
    let lift = format!("/api/lots/{}/lanes/out-1/open", w.lot);
    assert_eq!(
        post_with(
            &w,
            &cookie,
            Some(&csrf),
            &lift,
            json!({"reason": "let me out"})
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    // And an operator's credentials open no portal route.
    let r = w.client.get(w.url("/api/portal/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an admin token");

    // Signing out needs the CSRF token; afterwards the cookie is worthless.
    assert_eq!(
        post_with(&w, &cookie, None, "/api/portal/logout", json!({})).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_with(&w, &cookie, Some(&csrf), "/api/portal/logout", json!({})).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_with(&w, &cookie, "/api/portal/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Both are in the audit log under the driver.
    let audit = w.get_json("/api/audit?limit=1000").await;
    for action in ["driver.signed_in", "driver.signed_out"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == action && a["actor"] == format!("driver:{mine}")),
            "{action} audited"
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn wrong_expired_and_unknown_codes_never_sign_in() {
    let (w, clock) = world().await;
    registered(&w, "13900000011", "京A61011", None).await;
    registered(&w, "13900000012", "京A61012", None).await;

    // Five wrong tries, then even the right code is refused.
    let (status, known) = ask_code(&w, "13900000011").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let code = texted_code(&w, "+8613900000011", 0).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for n in 1..=5 {
        let (s, cookie, _, body) = sign_in(&w, "13900000011", wrong).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "wrong try {n}: {body}");
        assert!(cookie.is_none());
    }
    let (s, cookie, _, _) = sign_in(&w, "13900000011", &code).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the sixth try, right code and all"
    );
    assert!(cookie.is_none());
    // Not a code at all: refused as such, without a try.
    let (s, ..) = sign_in(&w, "13900000011", "12a456").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // One code a minute per number.
    let (s, body) = ask_code(&w, "+8613900000011").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    clock.advance(chrono::Duration::seconds(61));
    assert_eq!(ask_code(&w, "13900000011").await.0, StatusCode::ACCEPTED);
    let fresh = texted_code(&w, "+8613900000011", 1).await;
    // A new code works, once: sent four times at once, it signs in once.
    let (a, b, c, d) = tokio::join!(
        sign_in(&w, "13900000011", &fresh),
        sign_in(&w, "+86 139 0000 0011", &fresh),
        sign_in(&w, "13900000011", &fresh),
        sign_in(&w, "0086 13900000011", &fresh),
    );
    let all = [a, b, c, d];
    let statuses: Vec<StatusCode> = all.iter().map(|r| r.0).collect();
    let ok: Vec<_> = all.iter().filter(|r| r.0 == StatusCode::OK).collect();
    assert_eq!(ok.len(), 1, "{statuses:?}");
    assert!(
        all.iter()
            .filter(|r| r.0 != StatusCode::OK)
            .all(|r| r.0 == StatusCode::UNAUTHORIZED && r.1.is_none()),
        "{statuses:?}"
    );
    let cookie = ok[0].1.clone().expect("a driver cookie");
    // A sign-in lasts `sms.session_hours` (72 h), then the cookie is refused.
    clock.advance(chrono::Duration::hours(71));
    assert_eq!(
        get_with(&w, &cookie, "/api/portal/me").await.0,
        StatusCode::OK
    );
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(
        get_with(&w, &cookie, "/api/portal/me").await.0,
        StatusCode::UNAUTHORIZED,
        "an expired sign-in"
    );

    // A code five minutes old is dead.
    assert_eq!(ask_code(&w, "13900000012").await.0, StatusCode::ACCEPTED);
    let code = texted_code(&w, "+8613900000012", 0).await;
    clock.advance(chrono::Duration::minutes(5) + chrono::Duration::seconds(1));
    let (s, cookie, ..) = sign_in(&w, "13900000012", &code).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "an expired code");
    assert!(cookie.is_none());

    // A number no driver has: the same answer, no text, and no way in.
    let (s, unknown) = ask_code(&w, "13900000099").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let shape = |v: &Value| {
        let mut v = v.clone();
        v["phone"] = Value::Null;
        v
    };
    assert_eq!(
        shape(&unknown),
        shape(&known),
        "the same answer for an unknown number"
    );
    assert_eq!(
        ask_code(&w, "13900000099").await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "limited alike"
    );
    // A known number asked after it gets its text; the unknown one never does.
    clock.advance(chrono::Duration::seconds(61));
    assert_eq!(ask_code(&w, "13900000012").await.0, StatusCode::ACCEPTED);
    texted_code(&w, "+8613900000012", 1).await;
    assert_eq!(
        texts_to(&w, "+8613900000099"),
        0,
        "nothing is sent to an unknown number"
    );
    let (s, cookie, _, body) = sign_in(&w, "13900000099", "123456").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(cookie.is_none());
    assert_eq!(body["message"], "wrong or expired code; ask for a new one");
    let (s, _) = ask_code(&w, "12345").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "not a phone number");
    w.stop().await;
}

#[tokio::test]
async fn finding_a_plate_shows_only_the_open_stays_of_exactly_that_plate() {
    let (w, clock) = world().await;
    // 京A62011 is one character from 京A62001; 京A62002 has left.
    for plate in ["京A62001", "京A62011", "京A62002"] {
        assert!(w.pass("in-1", plate, WAIT).await.opened);
    }
    clock.advance(chrono::Duration::minutes(40));
    w.api
        .create_wallet("w-62002", Money::cny(100_000))
        .await
        .unwrap();
    let d = registered(&w, "13900000021", "京A62002", None).await;
    w.api.create_mandate(d, "w-62002").await.unwrap();
    assert!(w.pass("out-1", "京A62002", WAIT).await.opened);
    clock.advance(chrono::Duration::minutes(90));

    let find = |plate: &str| {
        let url = w.url(&format!("/api/find?plate={}", urlencode(plate)));
        async move {
            let r = reqwest::Client::new().get(url).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, found) = find("京a 62001").await;
    assert_eq!(s, StatusCode::OK, "{found}");
    assert_eq!(found["plate"], "京A62001");
    let stays = found["stays"].as_array().unwrap();
    assert_eq!(stays.len(), 1, "{found}");
    let stay = &stays[0];
    let open = sessions(&w, "京A62001").await[0].clone();
    assert_eq!(stay["id"], open["id"]);
    assert_eq!(stay["plate"], "京A62001");
    assert_eq!(stay["lot"], w.lot.to_string());
    assert_eq!(stay["lot_name"], "Test lot");
    assert_eq!(stay["entry_at"], open["entry_at"]);
    assert_eq!(
        stay["pay_url"],
        format!("/pay/{}", open["id"].as_str().unwrap())
    );
    // The fee due is what the tariff gives for the stay so far.
    let preview = w
        .get_json(&format!(
            "/api/lots/{}/tariff/preview?entry={}&exit={}&plate={}",
            w.lot,
            urlencode(open["entry_at"].as_str().unwrap()),
            urlencode(&w.now().to_rfc3339()),
            urlencode("京A62001")
        ))
        .await;
    assert_eq!(fen(&stay["fee_due"]), fen(&preview["total"]));
    assert!(fen(&stay["fee_due"]) > 0);
    let text = found.to_string();
    for private in ["driver", "phone", "mandate", "京A62011"] {
        assert!(!text.contains(private), "{private} in {text}");
    }
    // A letter no Chinese plate has (I, O) is read as the digit it stands for, by position: that
    // is the same plate, written another way.
    assert_eq!(find("京A6200I").await.1["stays"][0]["id"], open["id"]);
    // A near miss finds nothing (1/7 look alike; 京A62021 is one character from 京A62011); a
    // stay that has ended is not shown.
    for plate in ["京A62007", "京A62021", "京A6200", "京A62002"] {
        let (s, v) = find(plate).await;
        assert!(
            s == StatusCode::OK && v["stays"].as_array().is_some_and(Vec::is_empty)
                || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{plate}: {s} {v}"
        );
    }
    assert_eq!(find("京A62002").await.1["stays"], json!([]));
    assert_eq!(find("").await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let r = reqwest::Client::new()
        .get(w.url("/api/find"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    w.stop().await;
}
