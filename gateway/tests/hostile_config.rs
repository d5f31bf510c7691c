//! The config loader answers any file, and any override, with a config or an error that names
//! the offending field; it never panics and never echoes the signing key. A config it accepts
//! can be run: no duration so large that the gateway's own timer arithmetic would overflow.

use std::time::{Duration, Instant};

use parkpay_gateway::config::ConfigError;
use parkpay_gateway::{GatewayConfig, Overrides};
use proptest::prelude::*;

const SIGNING_KEY: &str = "000102030405060708090a0b0c0d0e0f";
const PASSWORD: &str = "hunter2-not-for-logs";

/// A valid file; every field sits on its own line so one can be replaced.
fn good() -> String {
    format!(
        r#"gateway_id = "gw-1"
lot = "lot1"
mqtt_url = "mqtt://127.0.0.1:1883"
journal_dir = "/tmp/j"
signing_key = "{SIGNING_KEY}"
password = "{PASSWORD}"
username = "gw-1"
dedupe_window = "60s"
decision_timeout = "3s"
heartbeat_interval = 30
burst_timeout = "800ms"
connect_timeout = "30s"
resend_initial = "5s"
resend_max = "1m"

[[lanes]]
id = "exit-1"
direction = "exit"
camera = "cam-1"
loop = "loop-1"
barrier = "arm-1"
display = "disp-1"
roi = {{ x = 1, y = 2, width = 3, height = 4 }}
"#
    )
}

const TOP: [&str; 14] = [
    "gateway_id",
    "lot",
    "mqtt_url",
    "journal_dir",
    "signing_key",
    "password",
    "username",
    "dedupe_window",
    "decision_timeout",
    "heartbeat_interval",
    "burst_timeout",
    "connect_timeout",
    "resend_initial",
    "resend_max",
];
const LANE: [&str; 7] = [
    "id",
    "direction",
    "camera",
    "loop",
    "barrier",
    "display",
    "roi",
];

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

/// `good()` with the value of `key` (its first occurrence) replaced by `value` verbatim.
fn with_value(key: &str, value: &str) -> String {
    let prefix = format!("{key} = ");
    good()
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{prefix}{value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TOML basic string holding `s`. Written by hand: toml's own writer panics on 256 quotes in a
/// row (it counts them in a u8), which is the kind of value these tests feed in.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[\\x00-\\x1f\\x7f/+#$:@? a-z0-9.\u{202e}\u{feff}京-]{0,24}",
        1 => (0usize..20_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        2 => prop::sample::select(vec![
            "", "\0", " ", "0", "0s", "-1s", "1e9s", "nan", "inf", "1.5.5s", ".", "5 days",
            "18446744073709551615", "18446744073709551616s", "99999999999999999999ms",
            "584542046091y", "9999999999h", "0.0000000001ms", "mqtt://", "mqtt://:1",
            "mqtt://h:65536", "mqtt://h:-1", "mqtt://[::1]:1883", "tcp://h:0", "exit", "Entry",
            "gw/1", "+", "#", "lot1\0",
        ])
        .prop_map(String::from),
    ]
}

/// TOML value texts of every type, at and past the edges, and some that are not TOML at all.
fn hostile_value() -> BoxedStrategy<String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        hostile_string().prop_map(|s| toml_str(&s)),
        prop::sample::select(vec![
            "0",
            "-0",
            "-1",
            "+1",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "0xffffffffffffffff",
            "0x7fffffffffffffff",
            "0o777",
            "0b101",
            "1_000",
            "nan",
            "+nan",
            "-nan",
            "inf",
            "+inf",
            "-inf",
            "1e400",
            "-0.0",
            "1e-400",
            "\"\"",
            "''",
            "'literal \\ string'",
            "\"\\u0000\"",
            "\"\\uD800\"",
            "\"\\U0010FFFF\"",
            "\"\\x41\"",
            "\"\"\"\nmulti\nline\"\"\"",
            "1979-05-27T07:32:00Z",
            "1979-05-27",
            "07:32:00",
            "[]",
            "[1, \"a\", 2.5]",
            "{}",
            "{ x = 1 }",
            "{ x = 1, x = 2 }",
            "true",
        ])
        .prop_map(String::from),
    ];
    let tree = scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| {
                let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    });
    prop_oneof![
        10 => tree,
        // Nesting deeper than any parser should recurse.
        1 => (50usize..3_000).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
        1 => (50usize..3_000).prop_map(|n| format!("{}1{}", "{ a = ".repeat(n), " }".repeat(n))),
        // Not TOML: the error is still located on the field's line.
        2 => "[^\n\r]{0,40}",
    ]
    .boxed()
}

/// What every error must satisfy, whatever caused it.
fn check_error(e: &ConfigError, key: &str) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    let named = msg.contains(&format!("`{key}`"))
        || msg.contains(&format!(".{key}`"))
        || (key.len() > 4 && msg.contains(key));
    prop_assert!(named, "error does not name `{}`: {}", key, msg);
    prop_assert!(
        !msg.contains(SIGNING_KEY),
        "error echoes the signing key: {}",
        msg
    );
    prop_assert!(
        !msg.contains(PASSWORD),
        "error echoes the password: {}",
        msg
    );
    Ok(())
}

/// What every accepted config must satisfy: the gateway adds each duration to `Instant::now()`
/// and doubles the resend delay, which must not overflow.
fn check_config(c: &GatewayConfig) -> Result<(), TestCaseError> {
    let now = Instant::now();
    for d in [
        c.dedupe_window,
        c.decision_timeout,
        c.heartbeat_interval,
        c.burst_timeout,
        c.connect_timeout,
        c.resend_initial,
        c.resend_max,
    ] {
        prop_assert!(d > Duration::ZERO);
        let doubled = d.checked_mul(2);
        prop_assert!(
            doubled.and_then(|d| now.checked_add(d)).is_some(),
            "{:?} accepted: timers would overflow",
            d
        );
        prop_assert!(chrono::Duration::from_std(d).is_ok(), "{:?} accepted", d);
    }
    prop_assert!(!c.lanes.is_empty());
    Ok(())
}

fn check(text: &str, key: &str) -> Result<(), TestCaseError> {
    match GatewayConfig::from_toml_str(text) {
        Ok(c) => check_config(&c),
        Err(e) => check_error(&e, key),
    }
}

#[test]
fn the_template_is_valid() {
    let c = GatewayConfig::from_toml_str(&good()).unwrap();
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.lanes[0].roi.map(|r| r.height), Some(4));
    for key in TOP.iter().chain(LANE.iter()) {
        assert_ne!(with_value(key, "@"), good(), "{key} is not in the template");
    }
}

#[test]
fn durations_too_long_to_run_are_refused_by_name() {
    for (key, value) in [
        ("decision_timeout", "18446744073709551615"),
        ("heartbeat_interval", "9223372036854775807"),
        ("resend_initial", "\"5000000000000000000s\""),
        ("dedupe_window", "\"9999999999h\""),
    ] {
        let err = GatewayConfig::from_toml_str(&with_value(key, value))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn an_override_full_of_quotes_is_refused_not_a_panic() {
    // Overrides were once merged by writing the table back out as TOML, and toml's writer
    // overflows a u8 counting a run of 256 or more quotes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, good()).unwrap();
    for (var, key) in [
        ("PARKPAY_GATEWAY_ID", "gateway_id"),
        ("PARKPAY_GATEWAY_SIGNING_KEY", "signing_key"),
    ] {
        for quote in ['"', '\''] {
            let value = quote.to_string().repeat(300);
            let env = Overrides::from_env([(var.to_string(), value.clone())]).unwrap();
            let err = GatewayConfig::load(&path, &[env]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("environment"), "{err}");
        }
    }
    // A quote-heavy password is a password like any other.
    let env = Overrides::from_env([("PARKPAY_GATEWAY_PASSWORD".to_string(), "\"".repeat(300))]);
    let c = GatewayConfig::load(&path, &[env.unwrap()]).unwrap();
    assert_eq!(c.password.unwrap().expose().len(), 300);
}

proptest! {
    #![proptest_config(cases(384))]

    #[test]
    fn any_text_as_the_whole_file_never_panics(text in prop_oneof![
        any::<String>(),
        "[a-z_\\[\\]=\"'{}., 0-9\n#-]{0,200}",
    ]) {
        match GatewayConfig::from_toml_str(&text) {
            Ok(c) => check_config(&c)?,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    #[test]
    fn a_damaged_valid_file_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6),
    ) {
        let mut chars: Vec<char> = good().chars().collect();
        for (at, c, op) in edits {
            let i = at.index(chars.len());
            match op {
                0 => chars[i] = c,
                1 => chars.insert(i, c),
                _ => {
                    chars.remove(i);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        match GatewayConfig::from_toml_str(&text) {
            Ok(c) => check_config(&c)?,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    /// One top-level field holds something hostile.
    #[test]
    fn a_hostile_top_level_value_is_refused_by_name(
        key in prop::sample::select(TOP.to_vec()),
        value in hostile_value(),
    ) {
        check(&with_value(key, &value), key)?;
    }

    /// One field of a lane holds something hostile.
    #[test]
    fn a_hostile_lane_value_is_refused_by_name(
        key in prop::sample::select(LANE.to_vec()),
        value in hostile_value(),
    ) {
        check(&with_value(key, &value), key)?;
    }

    /// One number of the lane's region of interest holds something hostile.
    #[test]
    fn a_hostile_roi_is_refused_by_name(
        field in 0usize..4,
        value in hostile_value().prop_filter("one line", |v| !v.contains('\n')),
    ) {
        let mut parts = ["x = 1", "y = 2", "width = 3", "height = 4"].map(String::from);
        let name = parts[field].split(' ').next().unwrap().to_string();
        parts[field] = format!("{name} = {value}");
        let text = with_value("roi", &format!("{{ {} }}", parts.join(", ")));
        check(&text, "roi")?;
    }

    /// A signing key that is not a usable key is refused without repeating it.
    #[test]
    fn a_bad_signing_key_is_never_echoed(
        key in prop_oneof![
            // At least six key characters together, so the key cannot be a fragment of the
            // message's own words ("a" is in "signing_key", "5" in "line 5").
            "[0-9a-fA-FgG ]{0,8}[0-9a-fA-FgG]{6}[0-9a-fA-FgG ]{0,66}",
            any::<String>().prop_map(|s| format!("SIGNKEY:{s}")),
        ],
    ) {
        let text = with_value("signing_key", &toml_str(&key));
        match GatewayConfig::from_toml_str(&text) {
            Ok(c) => {
                // Only hex of at least 16 bytes is accepted.
                let bytes = hex::decode(key.trim());
                prop_assert!(bytes.is_ok_and(|b| b.len() >= 16), "{:?} accepted", key);
                check_config(&c)?;
            }
            Err(e) => {
                check_error(&e, "signing_key")?;
                let msg = e.to_string();
                prop_assert!(!msg.contains(key.trim()), "error echoes the key: {}", msg);
            }
        }
    }

    /// The same guarantees hold for values from the environment layered over a file on disk.
    #[test]
    fn a_hostile_environment_override_is_refused_by_name(
        which in 0usize..TOP.len(),
        value in hostile_string(),
    ) {
        let key = TOP[which];
        let var = match key {
            "gateway_id" => "PARKPAY_GATEWAY_ID".to_string(),
            k => format!("PARKPAY_GATEWAY_{}", k.to_uppercase()),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, good()).unwrap();
        let env = Overrides::from_env([(var, value.clone())]).unwrap();
        match GatewayConfig::load(&path, &[env]) {
            Ok(c) => check_config(&c)?,
            Err(e) => {
                check_error(&e, key)?;
                if key == "signing_key" && value.trim().len() >= 6 {
                    prop_assert!(!e.to_string().contains(value.trim()), "echoes the key: {}", e);
                }
            }
        }
    }
}
