//! Everything that decodes outside input must answer hostile input with `Ok` or a clear error,
//! never a panic: envelopes and message bodies from the broker, topics, plates, ids and money.
//!
//! Inputs are both fully arbitrary and structure-aware: valid envelopes of every message type
//! whose body (or `sent_at`) is mutated, signed with the right key so that the body decoder is
//! reached rather than the signature check.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use parkpay_protocol::envelope::{decode, encode, DecodeError, Message, Opened};
use parkpay_protocol::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

const KEY: &[u8] = b"0123456789abcdef-gateway-key";

/// The labels `DecodeError::reason` documents (metric labels and dead-letter reasons).
const REASONS: [&str; 6] = [
    "malformed",
    "version",
    "wrong_type",
    "invalid_body",
    "unsigned",
    "bad_signature",
];

/// `n` cases, kept moderate so the suite stays quick; `PROPTEST_CASES` raises it for a long hunt.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

fn check_reason(e: &DecodeError) -> Result<(), TestCaseError> {
    // Display must not panic either: it goes to logs and the dead-letter table.
    let _ = e.to_string();
    prop_assert!(REASONS.contains(&e.reason()), "undocumented reason {e:?}");
    Ok(())
}

/// Runs every decoder of type `M` over `payload`; returns whether the body decoded as `M`.
fn decode_as<M: Message + std::fmt::Debug>(payload: &[u8]) -> Result<bool, TestCaseError> {
    let mut body_ok = false;
    if let Ok(env) = Opened::new(payload) {
        match env.body::<M>() {
            Ok(_) => body_ok = true,
            Err(e) => check_reason(&e)?,
        }
    }
    for key in [Some(KEY), None] {
        match decode::<M>(payload, key) {
            Ok(d) => {
                let _ = format!("{:?}", d.body);
            }
            Err(e) => check_reason(&e)?,
        }
    }
    Ok(body_ok)
}

/// `decode_as` for every message type the protocol defines; returns the kinds that decoded.
fn decode_all(payload: &[u8]) -> Result<Vec<&'static str>, TestCaseError> {
    match Opened::new(payload) {
        Ok(env) => {
            let _ = (env.kind(), env.sent_at(), env.is_signed());
            if let Err(e) = env.verify(KEY) {
                check_reason(&e)?;
            }
        }
        Err(e) => check_reason(&e)?,
    }
    let mut ok = Vec::new();
    macro_rules! each {
        ($($m:ty),* $(,)?) => {
            $( if decode_as::<$m>(payload)? { ok.push(<$m as Message>::KIND); } )*
        };
    }
    each!(
        PassageEvent,
        Decision,
        OperatorCommand,
        CommandAck,
        LaneState,
        GatewayStatus,
        Allowlist,
        PlateRead,
        Frame,
        LoopEvent,
        BarrierCommand,
        BarrierStateReport,
        DisplayCommand,
        DeviceStatus,
    );
    Ok(ok)
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
}

/// One valid body of every message type: (type tag, body as JSON).
fn samples() -> Vec<(&'static str, Value)> {
    fn s<M: Message>(m: M) -> (&'static str, Value) {
        (M::KIND, serde_json::to_value(&m).unwrap())
    }
    let lot = LotId::parse("lot1").unwrap();
    let lane = LaneId::parse("in-1").unwrap();
    let gw = GatewayId::parse("gw-north").unwrap();
    let dev = DeviceId::parse("cam-1").unwrap();
    let cand = PlateCandidate {
        plate: "京A12345".into(),
        confidence: 0.97,
        colour: PlateColour::Blue,
    };
    let display = DisplayText {
        line1: "Welcome".into(),
        line2: "京A·12345".into(),
    };
    vec![
        s(PassageEvent {
            event_id: EventId::new(),
            lot: lot.clone(),
            lane: lane.clone(),
            gateway: gw.clone(),
            direction: Direction::Exit,
            captured_at: at(),
            candidates: vec![cand.clone()],
            quality: ReadQuality::Confident,
            evidence_digest: Some("ab".repeat(32)),
            resent: false,
        }),
        s(Decision {
            event_id: EventId::new(),
            lot: lot.clone(),
            lane: lane.clone(),
            action: BarrierAction::Hold,
            reason: DecisionReason::PaymentRequired,
            plate: Some("京A12345".into()),
            session_id: Some(Uuid::nil()),
            fee: Some(Money::cny(1250)),
            owed: Some(Money::cny(2500)),
            pay_url: Some("https://pay.example/x".into()),
            display: display.clone(),
            decided_at: at(),
        }),
        s(OperatorCommand {
            command_id: Uuid::nil(),
            lot: lot.clone(),
            lane: lane.clone(),
            action: LaneAction::OpenBarrier,
            reason: "stuck".into(),
            operator: "alice".into(),
            issued_at: at(),
        }),
        s(CommandAck {
            command_id: Uuid::nil(),
            ok: true,
            detail: String::new(),
        }),
        s(LaneState {
            lot: lot.clone(),
            lane: lane.clone(),
            gateway: gw.clone(),
            direction: Direction::Entry,
            arm: ArmPosition::Closed,
            vehicle_present: false,
            at: at(),
        }),
        s(GatewayStatus {
            gateway: gw,
            lot: lot.clone(),
            online: true,
            lanes: vec![lane],
            journal_pending: 3,
            at: at(),
        }),
        s(Allowlist {
            lot,
            plates: vec!["京A12345".into()],
            version: 7,
        }),
        s(PlateRead {
            device: dev.clone(),
            captured_at: at(),
            candidates: vec![cand],
        }),
        s(Frame {
            device: dev.clone(),
            captured_at: at(),
            burst: 42,
            seq: 1,
            of: 3,
            format: "png".into(),
            image: "iVBORw0KGgo=".into(),
        }),
        s(LoopEvent {
            device: dev.clone(),
            present: true,
            at: at(),
        }),
        s(BarrierCommand {
            command_id: Uuid::nil(),
            action: ArmCommand::Open,
            release: Release::Normal,
            at: at(),
        }),
        s(BarrierStateReport {
            device: dev.clone(),
            arm: ArmPosition::Open,
            at: at(),
        }),
        s(DisplayCommand {
            text: display,
            qr: Some("https://pay.example/x".into()),
            at: at(),
        }),
        s(DeviceStatus {
            device: dev,
            online: false,
            at: at(),
        }),
    ]
}

/// An envelope around `body` exactly as given, signed as `docs/mqtt.md` specifies.
fn signed_envelope(kind: &str, sent_at: &str, body: &str, key: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(format!("1\n{kind}\n{sent_at}\n{body}").as_bytes());
    let sig = hex::encode(m.finalize().into_bytes());
    format!(r#"{{"v":1,"type":"{kind}","sent_at":"{sent_at}","body":{body},"sig":"{sig}"}}"#)
        .into_bytes()
}

// ---- strategies ---------------------------------------------------------------------------

/// Strings a decoder should not trust: control characters, NUL, topic wildcards, odd dates.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[\\x00-\\x1f\\x7f/+#$ a-z0-9\u{202e}\u{feff}\u{fffd}京·]{0,24}",
        1 => (0usize..70_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        2 => prop::sample::select(vec![
            "",
            "\0",
            "lot1\0",
            "lot1/lanes/#",
            "+",
            "#",
            "$SYS",
            "京A12345",
            "00000000-0000-0000-0000-000000000000",
            "0192d3b2-7c4e-7000-8000-000000000000",
            "not-a-uuid",
            "2026-11-25T08:00:00Z",
            "2026-11-25T08:00:00.123456789Z",
            "2026-02-30T08:00:00Z",
            "2026-12-31T23:59:60Z",
            "+262143-12-31T23:59:59Z",
            "+262143-12-31T23:59:59-23:59",
            "-262144-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59+99:99",
            "0000-01-01T00:00:00Z",
            "2026-11-25T08:00:00",
            "2026-11-25 08:00:00+00:00",
            "entry",
            "EXIT",
            "open",
            "payment_required",
            "CNY",
            "XXX",
            "blue",
        ])
        .prop_map(String::from),
    ]
}

/// JSON number texts at and past the edges of every integer and float type.
fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (1usize..400).prop_map(|n| format!("1{}", "0".repeat(n))),
        prop::sample::select(vec![
            "0",
            "-0",
            "-0.0",
            "0.5",
            "-1",
            "255",
            "256",
            "4294967295",
            "4294967296",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "1e308",
            "1e309",
            "-1e400",
            "1e-400",
            "3.4028236e38",
            "1.7976931348623157e308",
            "5e-324",
        ])
        .prop_map(String::from),
    ]
}

/// Nesting far past serde_json's recursion limit (128), around a scalar.
fn deep_nesting() -> impl Strategy<Value = String> {
    (100usize..3_000, any::<bool>()).prop_map(|(n, objects)| {
        if objects {
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
        } else {
            format!("{}1{}", "[".repeat(n), "]".repeat(n))
        }
    })
}

/// Syntactically valid JSON text with hostile content.
fn hostile_json() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        hostile_number(),
        hostile_string().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "plate",
            "confidence",
            "colour",
            "minor",
            "currency",
            "line1",
            "line2",
            "lot",
            "device",
            "at",
        ])
        .prop_map(String::from),
        hostile_string(),
    ];
    let tree = leaf.prop_recursive(5, 48, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![8 => tree, 1 => deep_nesting()].boxed()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value of the field at this index (modulo the field count).
    Replace(usize, String),
    /// Replace a field of the first element of the first array field (a candidate).
    ReplaceNested(usize, String),
    Remove(usize),
    /// Add a field the type does not know.
    Add(String, String),
    /// Replace the whole body.
    Whole(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => (any::<usize>(), hostile_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => (any::<usize>(), hostile_json()).prop_map(|(i, v)| Mutation::ReplaceNested(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => (hostile_string(), hostile_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        1 => hostile_json().prop_map(Mutation::Whole),
    ]
}

const HOLE: &str = "@@hostile@@";

/// The body's JSON text after the mutation; the hostile text is spliced in verbatim.
fn mutate(body: &Value, m: &Mutation) -> String {
    let Value::Object(map) = body else {
        unreachable!("every message body is an object")
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    let mut map = map.clone();
    let splice = |map: serde_json::Map<String, Value>, v: &str| {
        serde_json::to_string(&map)
            .unwrap()
            .replacen(&format!("\"{HOLE}\""), v, 1)
    };
    match m {
        Mutation::Replace(i, v) => {
            map.insert(keys[i % keys.len()].clone(), Value::String(HOLE.into()));
            splice(map, v)
        }
        Mutation::ReplaceNested(i, v) => {
            let nested = map.values_mut().find_map(|f| match f {
                Value::Array(items) => match items.first_mut() {
                    Some(Value::Object(o)) => Some(o),
                    _ => None,
                },
                Value::Object(o) => Some(o),
                _ => None,
            });
            match nested {
                Some(o) => {
                    let k: Vec<String> = o.keys().cloned().collect();
                    o.insert(k[i % k.len()].clone(), Value::String(HOLE.into()));
                    splice(map, v)
                }
                None => serde_json::to_string(&map).unwrap(),
            }
        }
        Mutation::Remove(i) => {
            map.remove(&keys[i % keys.len()]);
            serde_json::to_string(&map).unwrap()
        }
        Mutation::Add(k, v) => {
            map.insert(k.clone(), Value::String(HOLE.into()));
            splice(map, v)
        }
        Mutation::Whole(v) => v.clone(),
    }
}

/// Byte-level damage to a valid payload: flips, insertions, deletions, truncation.
fn damage(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, op, b) in edits {
        if bytes.is_empty() {
            bytes.push(b);
            continue;
        }
        let i = pos % bytes.len();
        match op % 4 {
            0 => bytes[i] = b,
            1 => bytes.insert(i, b),
            2 => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
    }
    bytes
}

// ---- envelopes and bodies -----------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes)?;
    }

    #[test]
    fn arbitrary_text_in_an_envelope_shape_never_panics(
        v in prop_oneof![Just("1".to_string()), hostile_number()],
        kind in prop_oneof![prop::sample::select(samples().iter().map(|s| s.0).collect::<Vec<_>>()).prop_map(String::from), hostile_string()],
        sent_at in hostile_string(),
        body in hostile_json(),
        sig in prop::option::of(prop_oneof!["[0-9a-f]{64}", hostile_string()]),
    ) {
        let mut text = format!(
            r#"{{"v":{v},"type":{},"sent_at":{},"body":{body}"#,
            serde_json::to_string(&kind).unwrap(),
            serde_json::to_string(&sent_at).unwrap(),
        );
        if let Some(sig) = sig {
            text.push_str(&format!(r#","sig":{}"#, serde_json::to_string(&sig).unwrap()));
        }
        text.push('}');
        decode_all(text.as_bytes())?;
    }

    /// A correctly signed envelope always opens and verifies, whatever its body holds; the body
    /// then decodes or is refused as `invalid_body`, only for its own type.
    #[test]
    fn a_signed_mutated_body_reaches_the_body_decoder(
        which in any::<prop::sample::Index>(),
        m in mutation(),
    ) {
        let all = samples();
        let (kind, body) = which.get(&all);
        let body = mutate(body, &m);
        let sent_at = "2026-11-25T08:00:00.000Z";
        let payload = signed_envelope(kind, sent_at, &body, KEY);
        let env = Opened::new(&payload);
        prop_assert!(env.is_ok(), "valid JSON did not open: {:?}", env.err());
        let env = env.unwrap();
        prop_assert_eq!(env.kind(), *kind);
        prop_assert!(env.verify(KEY).is_ok(), "signature over the sent bytes did not verify");
        prop_assert_eq!(env.verify(b"another key").unwrap_err().reason(), "bad_signature");
        let decoded = decode_all(&payload)?;
        prop_assert!(decoded.iter().all(|k| k == kind), "decoded as {decoded:?}, sent as {kind}");
    }

    /// Valid payloads of every type, damaged byte by byte.
    #[test]
    fn damaged_payloads_never_panic(
        which in any::<prop::sample::Index>(),
        signed in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let all = samples();
        let (kind, body) = which.get(&all);
        let body = serde_json::to_string(body).unwrap();
        let payload = if signed {
            signed_envelope(kind, "2026-11-25T08:00:00.000Z", &body, KEY)
        } else {
            format!(r#"{{"v":1,"type":"{kind}","sent_at":"2026-11-25T08:00:00.000Z","body":{body}}}"#).into_bytes()
        };
        prop_assert_eq!(decode_all(&payload)?, vec![*kind]);
        decode_all(&damage(payload, &edits))?;
    }

    /// `sent_at` is parsed before anything is trusted: odd instants must not panic chrono.
    #[test]
    fn any_sent_at_opens_or_is_malformed(sent_at in hostile_string(), v in 0u32..3) {
        let text = format!(
            r#"{{"v":{v},"type":"loop","sent_at":{},"body":{{}}}}"#,
            serde_json::to_string(&sent_at).unwrap()
        );
        match Opened::new(text.as_bytes()) {
            Ok(env) => {
                prop_assert_eq!(v, 1);
                let _ = env.sent_at().to_rfc3339();
            }
            Err(e) => {
                check_reason(&e)?;
                prop_assert!(matches!(e.reason(), "malformed" | "version"), "{e:?}");
            }
        }
    }
}

#[test]
fn every_message_type_round_trips_through_the_harness() {
    // The harness itself must see valid payloads as valid, or the properties prove nothing.
    for (kind, body) in samples() {
        let body = serde_json::to_string(&body).unwrap();
        let payload = signed_envelope(kind, "2026-11-25T08:00:00.000Z", &body, KEY);
        let decoded = decode_all(&payload).unwrap();
        assert_eq!(decoded, vec![kind], "{kind}");
    }
    // And encode agrees with the signing the harness does by hand.
    let m = CommandAck {
        command_id: Uuid::nil(),
        ok: true,
        detail: "x".into(),
    };
    let by_crate = encode(&m, at(), Some(KEY));
    let body = serde_json::to_string(&m).unwrap();
    assert_eq!(
        by_crate,
        signed_envelope("ack", "2026-11-25T08:00:00.000Z", &body, KEY)
    );
}

// ---- deep nesting -------------------------------------------------------------------------

const DEEP: usize = 100_000;

#[test]
fn a_body_nested_100k_deep_is_an_error_not_a_stack_overflow() {
    let arrays = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let objects = format!("{}1{}", "{\"a\":".repeat(DEEP), "}".repeat(DEEP));
    for body in [&arrays, &objects] {
        let payload = signed_envelope("passage", "2026-11-25T08:00:00.000Z", body, KEY);
        // The envelope skips over the body without recursing, so it opens and verifies...
        let env = Opened::new(&payload).unwrap();
        env.verify(KEY).unwrap();
        // ...and the body decoder refuses it.
        let e = decode::<PassageEvent>(&payload, Some(KEY)).unwrap_err();
        assert_eq!(e.reason(), "invalid_body", "{e}");
        decode_all(&payload).unwrap();
    }
    // The same depth inside a field the body type knows, and inside one it ignores.
    let sample = &samples()[0].1;
    for m in [
        Mutation::Replace(0, arrays.clone()),
        Mutation::ReplaceNested(0, objects.clone()),
        Mutation::Add("extra".into(), arrays.clone()),
        Mutation::Add("extra".into(), objects.clone()),
    ] {
        let body = mutate(sample, &m);
        let payload = signed_envelope("passage", "2026-11-25T08:00:00.000Z", &body, KEY);
        decode_all(&payload).unwrap();
    }
    // Unbalanced, and as the whole payload.
    for payload in [
        "[".repeat(DEEP),
        "{\"v\":".repeat(DEEP),
        format!(
            r#"{{"v":1,"type":"passage","sent_at":"2026-11-25T08:00:00.000Z","body":{}"#,
            "[".repeat(DEEP)
        ),
        arrays.clone(),
    ] {
        let e = Opened::new(payload.as_bytes()).err().unwrap();
        assert_eq!(e.reason(), "malformed");
        decode_all(payload.as_bytes()).unwrap();
    }
}

#[test]
fn serde_json_refuses_deep_nesting_with_its_recursion_limit() {
    // The guarantee the tests above rest on: a recursive decode stops at depth 128 with an
    // error. Should a message body ever gain a recursive field, this is what protects it.
    let deep = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let e = serde_json::from_str::<Value>(&deep).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
    let e = serde_json::from_str::<Vec<Value>>(&deep).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
}

// ---- topics, plates, ids, money -----------------------------------------------------------

/// The value of a JSON number text that is an integer literal fitting an i64. JSON forbids
/// leading zeros, and serde_json reads `-0` as the float -0.0, which an integer field refuses.
fn json_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let literal = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    literal.then(|| text.parse().ok()).flatten()
}

fn topic_like() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        prop::sample::select(vec![
            "parkpay",
            "v1",
            "lots",
            "lanes",
            "gateways",
            "hw",
            "events",
            "decisions",
            "commands",
            "acks",
            "state",
            "status",
            "allowlist",
            "frame",
            "plate",
            "loop",
            "barrier",
            "cmd",
            "display",
            "lot1",
            "in-1",
            "gw-north",
            "",
            "+",
            "#",
            "$share",
            "a\0b",
            " ",
        ])
        .prop_map(String::from),
        hostile_string(),
    ];
    prop::collection::vec(level, 0..9).prop_map(|levels| {
        let mut t = String::from("parkpay/v1");
        for l in levels {
            t.push('/');
            t.push_str(&l);
        }
        t
    })
}

fn is_valid_segment(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn segment_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => "[a-zA-Z0-9_-]{0,70}",
        2 => "[a-z0-9_/+#$\\x00-\\x1f\\x7f \u{0660}\u{ff10}\u{2212}é-]{0,20}",
        1 => hostile_string(),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever parses is exactly what it prints: a topic cannot mean two things.
    #[test]
    fn topics_parse_or_refuse_and_round_trip(s in prop_oneof![any::<String>(), topic_like()]) {
        match Topic::parse(&s) {
            Ok(t) => prop_assert_eq!(t.to_string(), s),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    /// An id becomes one MQTT topic level: no wildcards, separators, NUL or controls.
    #[test]
    fn ids_accept_only_safe_topic_levels(s in segment_like()) {
        let results = [
            LotId::parse(s.clone()).map(|i| i.to_string()),
            LaneId::parse(s.clone()).map(|i| i.to_string()),
            GatewayId::parse(s.clone()).map(|i| i.to_string()),
            DeviceId::parse(s.clone()).map(|i| i.to_string()),
        ];
        for r in &results {
            match r {
                Ok(id) => {
                    prop_assert_eq!(id, &s);
                    prop_assert!(!id.contains(['/', '+', '#', '\0']), "{id:?}");
                    prop_assert!(!id.chars().any(char::is_control), "{id:?}");
                    prop_assert!(is_valid_segment(id), "{id:?}");
                }
                Err(e) => prop_assert!(!is_valid_segment(&s) && !e.to_string().is_empty()),
            }
        }
        // The same rule holds when the id arrives inside a message.
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<LotId>(&json).is_ok(), is_valid_segment(&s));
        prop_assert_eq!(serde_json::from_str::<DeviceId>(&json).is_ok(), is_valid_segment(&s));
        prop_assert_eq!(serde_json::from_str::<LaneId>(&json).is_ok(), is_valid_segment(&s));
        prop_assert_eq!(serde_json::from_str::<GatewayId>(&json).is_ok(), is_valid_segment(&s));
        let _ = s.parse::<EventId>();
    }

    /// Any plate that parses is canonical: parsing its text (or its printed form) gives it back.
    #[test]
    fn accepted_plates_round_trip(s in prop_oneof![
        2 => any::<String>(),
        3 => "[京沪粤苏学警挂港澳领A-Za-z0-9ÄÖÜäöüß·• ._:\\x00-][A-Za-z0-9 ·._:-]{0,10}",
        2 => "[京沪ABDFIOQSZ0-9][A-Z0-8]{1,2}[ -]?[A-Z0-9DFSZ -]{2,7}[学警]?",
        1 => "[A-Z0-9ÄÖÜäöü]{1,3}[ :-][A-Z0-9ÄÖÜ -]{1,8}",
    ]) {
        let Ok(p) = Plate::parse(&s) else { return Ok(()) };
        prop_assert_eq!(Plate::parse(p.as_str()), Ok(p.clone()), "from {:?}", s);
        prop_assert_eq!(Plate::parse(&p.display()), Ok(p.clone()), "display of {:?}", s);
        prop_assert!(!p.as_str().chars().any(char::is_control));
        let _ = p.match_key();
        let json = serde_json::to_string(&p).unwrap();
        prop_assert_eq!(serde_json::from_str::<Plate>(&json).unwrap(), p);
    }

    #[test]
    fn plate_parse_in_every_region_never_panics(s in any::<String>()) {
        for r in Region::ALL {
            if let Ok(p) = Plate::parse_in(&s, r) {
                let _ = (p.display(), p.match_key());
            }
        }
    }

    /// Money takes integer minor units that fit an i64, exactly, or refuses.
    #[test]
    fn money_accepts_exact_integers_only(
        minor in prop_oneof![hostile_number(), "-?[0-9]{1,25}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?"],
        currency in prop_oneof![prop::sample::select(vec!["CNY", "EUR", "GBP", "cny", "XXX", ""]).prop_map(String::from), hostile_string()],
    ) {
        let text = format!(
            r#"{{"minor":{minor},"currency":{}}}"#,
            serde_json::to_string(&currency).unwrap()
        );
        let expected = json_integer(&minor).filter(|_| Currency::parse(&currency).is_some());
        match serde_json::from_str::<Money>(&text) {
            Ok(m) => {
                prop_assert_eq!(Some(m.minor), expected, "{}", text);
                prop_assert_eq!(m.currency.as_str(), currency.as_str());
                let _ = m.to_string();
            }
            Err(_) => prop_assert_eq!(expected, None, "{} refused", text),
        }
        // And a decision carrying it.
        let mut decision = samples()[1].1.clone();
        decision["fee"] = Value::String(HOLE.into());
        let body = serde_json::to_string(&decision).unwrap().replacen(&format!("\"{HOLE}\""), &text, 1);
        let payload = signed_envelope("decision", "2026-11-25T08:00:00.000Z", &body, KEY);
        match decode::<Decision>(&payload, Some(KEY)) {
            Ok(d) => prop_assert_eq!(d.body.fee.map(|f| f.minor), expected),
            Err(e) if e.reason() == "malformed" => {
                // Not JSON at all (`00`, `1.`): refused before the body is looked at.
                prop_assert!(serde_json::from_str::<Value>(&text).is_err(), "{}: {}", text, e);
            }
            Err(e) => {
                prop_assert_eq!(e.reason(), "invalid_body");
                prop_assert_eq!(expected, None);
            }
        }
    }

    #[test]
    fn money_from_any_json_never_panics(text in prop_oneof![any::<String>(), hostile_json(), hostile_number()]) {
        if let Ok(m) = serde_json::from_str::<Money>(&text) {
            let _ = m.to_string();
        }
        let _ = serde_json::from_str::<Currency>(&text);
    }
}
