//! The gateway's configuration: a TOML file, overridden by `PARKPAY_GATEWAY_*` environment
//! variables, overridden in turn by command-line flags.
//!
//! ```toml
//! gateway_id = "gw-north"
//! lot = "lot1"
//! mqtt_url = "mqtt://127.0.0.1:1883"
//! username = "gw-north"            # optional
//! password = "s3cret"              # optional; prefer PARKPAY_GATEWAY_PASSWORD
//! signing_key = "0011...eeff"      # hex, from `parkpay-server gateway add`; events are signed
//!                                  # with it and the server's messages verified with it
//! require_signatures = true        # default; false only for an unsigned trial
//! journal_dir = "/var/lib/parkpay/journal"
//! dedupe_window = "60s"            # default 60 s, on the injected clock
//! decision_timeout = "3s"          # default 3 s, real time
//! heartbeat_interval = "30s"       # default 30 s, real time
//! resend_initial = "5s"            # default 5 s, real time: first resend of an undecided event
//! resend_max = "60s"               # default 60 s, real time: the resend delay doubles up to this
//!
//! [[lanes]]
//! id = "exit-1"
//! direction = "exit"
//! camera = "cam-x1"
//! loop = "loop-x1"
//! barrier = "arm-x1"
//! display = "disp-x1"
//! roi = { x = 0, y = 200, width = 640, height = 280 }   # optional
//! ```
//!
//! Layering works on the raw TOML table: an override replaces one top-level key before the table
//! is deserialised, so a bad value from the environment is reported exactly like a bad value in
//! the file, naming the field.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parkpay_protocol::{DeviceId, Direction, GatewayId, LaneId, LotId};
use serde::{Deserialize, Deserializer};

use crate::reader::Roi;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PARKPAY_GATEWAY_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("unknown environment variable {name}: expected one of {expected}")]
    UnknownEnv { name: String, expected: String },
}

/// A value that must never appear in logs. `Debug` prints a placeholder, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The wrapped value; call sites are where a secret leaves its wrapper, so keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The HMAC key events are signed with, given in the file as hex.
pub type SigningKey = Secret<Vec<u8>>;

fn signing_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SigningKey>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    // The message must not echo the key: a typo in a secret still leaves most of it valid.
    let bytes = hex::decode(text.trim())
        .map_err(|_| serde::de::Error::custom("signing_key must be hex (0-9, a-f)"))?;
    if bytes.len() < 16 {
        return Err(serde::de::Error::custom(
            "signing_key must be at least 16 bytes (32 hex digits)",
        ));
    }
    Ok(Some(Secret(bytes)))
}

/// Where the broker is: `mqtt://host:port` (or `tcp://`); the port defaults to 1883.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(url: &str) -> Result<MqttUrl, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{url:?} must start with mqtt:// (TLS is not supported yet)"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?} has an invalid port {p:?}"))?,
            ),
            None => (rest, 1883),
        };
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(format!("{url:?} must look like mqtt://host:port"));
        }
        Ok(MqttUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for MqttUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MqttUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `250ms`, `60s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.');
    let (num, unit) = split.map_or((t, "s"), |i| (&t[..i], t[i..].trim()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 60s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("{text:?} has unknown unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is out of range"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// The longest any configured span may be; far beyond any sensible setting.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn default_dedupe_window() -> Duration {
    Duration::from_secs(60)
}
fn default_decision_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_burst_timeout() -> Duration {
    Duration::from_millis(800)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

/// A boolean, also as the text an environment variable or flag gives (`true`, `false`).
fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Text(String),
    }
    match B::deserialize(d)? {
        B::Bool(b) => Ok(b),
        B::Text(t) => match t.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(serde::de::Error::custom("must be true or false")),
        },
    }
}

fn default_resend_initial() -> Duration {
    Duration::from_secs(5)
}
fn default_resend_max() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub gateway_id: GatewayId,
    pub lot: LotId,
    pub mqtt_url: MqttUrl,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    #[serde(default, deserialize_with = "signing_key")]
    pub signing_key: Option<SigningKey>,
    /// Refuse decisions, commands and allowlists not signed with `signing_key` (on by default;
    /// turning it off is for an unsigned trial only: anyone on the broker could open the arm).
    #[serde(default = "default_true", deserialize_with = "boolean")]
    pub require_signatures: bool,
    /// One file per undecided event lives here until its decision arrives.
    pub journal_dir: PathBuf,
    /// The same plate on the same lane within this span is one passage. Measured on the injected
    /// clock, because it is about vehicles, which move in the clock's (possibly scaled) time.
    #[serde(default = "default_dedupe_window", deserialize_with = "duration")]
    pub dedupe_window: Duration,
    /// How long an exit waits for the server before the offline policy decides. Real time:
    /// it bounds a network round trip, which a scaled clock does not speed up.
    #[serde(default = "default_decision_timeout", deserialize_with = "duration")]
    pub decision_timeout: Duration,
    #[serde(default = "default_heartbeat_interval", deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// A frame burst is voted this long (real time) after its last frame arrived, even when
    /// frames are missing: frames travel at QoS 0 and may be lost.
    #[serde(default = "default_burst_timeout", deserialize_with = "duration")]
    pub burst_timeout: Duration,
    /// How long `Gateway::build` waits for the broker to acknowledge the subscriptions.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// An event still undecided this long (real time) after it was sent is sent again, with
    /// `resent: true`; see [`crate::resend`].
    #[serde(default = "default_resend_initial", deserialize_with = "duration")]
    pub resend_initial: Duration,
    /// Each further resend of an undecided event waits twice as long as the one before, up to
    /// this (real time).
    #[serde(default = "default_resend_max", deserialize_with = "duration")]
    pub resend_max: Duration,
    pub lanes: Vec<LaneConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    pub id: LaneId,
    pub direction: Direction,
    pub camera: DeviceId,
    #[serde(rename = "loop")]
    pub loop_detector: DeviceId,
    pub barrier: DeviceId,
    pub display: DeviceId,
    #[serde(default)]
    pub roi: Option<Roi>,
}

/// Top-level keys an override may replace, with the environment variable for each.
const OVERRIDABLE: &[(&str, &str)] = &[
    ("gateway_id", "PARKPAY_GATEWAY_ID"),
    ("lot", "PARKPAY_GATEWAY_LOT"),
    ("mqtt_url", "PARKPAY_GATEWAY_MQTT_URL"),
    ("username", "PARKPAY_GATEWAY_USERNAME"),
    ("password", "PARKPAY_GATEWAY_PASSWORD"),
    ("signing_key", "PARKPAY_GATEWAY_SIGNING_KEY"),
    ("require_signatures", "PARKPAY_GATEWAY_REQUIRE_SIGNATURES"),
    ("journal_dir", "PARKPAY_GATEWAY_JOURNAL_DIR"),
    ("dedupe_window", "PARKPAY_GATEWAY_DEDUPE_WINDOW"),
    ("decision_timeout", "PARKPAY_GATEWAY_DECISION_TIMEOUT"),
    ("heartbeat_interval", "PARKPAY_GATEWAY_HEARTBEAT_INTERVAL"),
    ("burst_timeout", "PARKPAY_GATEWAY_BURST_TIMEOUT"),
    ("connect_timeout", "PARKPAY_GATEWAY_CONNECT_TIMEOUT"),
    ("resend_initial", "PARKPAY_GATEWAY_RESEND_INITIAL"),
    ("resend_max", "PARKPAY_GATEWAY_RESEND_MAX"),
];

/// Environment variables with the prefix that are not config keys but are still expected.
const ENV_ALSO_ALLOWED: &[&str] = &["PARKPAY_GATEWAY_CONFIG", "PARKPAY_GATEWAY_LOG"];

/// One layer of overrides (the environment, or the flags), applied over the file in order.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    origin: &'static str,
    values: Vec<(&'static str, Secret<String>)>,
}

impl Overrides {
    /// The `PARKPAY_GATEWAY_*` variables among `vars`. An unknown one is an error, so that a
    /// misspelt override is noticed instead of silently ignored.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Overrides, ConfigError> {
        let mut o = Overrides {
            origin: "environment",
            values: Vec::new(),
        };
        for (name, value) in vars {
            if !name.starts_with(ENV_PREFIX) || ENV_ALSO_ALLOWED.contains(&name.as_str()) {
                continue;
            }
            match OVERRIDABLE.iter().find(|(_, env)| *env == name) {
                Some((key, _)) => o.values.push((key, Secret(value))),
                None => {
                    let expected: Vec<&str> = OVERRIDABLE.iter().map(|(_, e)| *e).collect();
                    return Err(ConfigError::UnknownEnv {
                        name,
                        expected: expected.join(", "),
                    });
                }
            }
        }
        Ok(o)
    }

    /// An empty layer for command-line flags; add to it with [`Overrides::set`].
    pub fn flags() -> Overrides {
        Overrides {
            origin: "flags",
            values: Vec::new(),
        }
    }

    /// Sets one top-level key (`mqtt_url`, `journal_dir`, ...).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<(), ConfigError> {
        let (key, _) =
            OVERRIDABLE
                .iter()
                .find(|(k, _)| *k == key)
                .ok_or_else(|| ConfigError::Invalid {
                    field: key.to_string(),
                    reason: "cannot be overridden (only top-level scalar settings can)".into(),
                })?;
        self.values.push((key, Secret(value.into())));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl GatewayConfig {
    /// Reads `path` and applies the override layers in order (later layers win).
    pub fn load(path: &Path, layers: &[Overrides]) -> Result<GatewayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_layered(&text, &path.display().to_string(), layers)
    }

    pub fn from_toml_str(text: &str) -> Result<GatewayConfig, ConfigError> {
        Self::from_toml_layered(text, "<string>", &[])
    }

    fn from_toml_layered(
        text: &str,
        origin: &str,
        layers: &[Overrides],
    ) -> Result<GatewayConfig, ConfigError> {
        let parse_err = |origin: &str, e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            message: describe(text, &e),
        };
        if layers.iter().all(Overrides::is_empty) {
            // Straight from the text, so errors carry line numbers and the offending line.
            let config: GatewayConfig = toml::from_str(text).map_err(|e| parse_err(origin, e))?;
            config.validate()?;
            return Ok(config);
        }
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(origin, e))?;
        let mut set_by: Vec<(&str, &str)> = Vec::new();
        for layer in layers {
            for (key, value) in &layer.values {
                table.insert(key.to_string(), toml::Value::String(value.expose().clone()));
                set_by.retain(|(k, _)| k != key);
                set_by.push((*key, layer.origin));
            }
        }
        // Straight from the merged table. Writing it back out as text (to locate errors by line)
        // panicked on a value holding 256 quotes in a row: toml's writer counts them in a u8.
        let config = GatewayConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            let (path, message) = keyed(&e);
            let top = path.as_deref().map(|p| p.split('.').next().unwrap_or(p));
            let from = top
                .and_then(|f| set_by.iter().find(|(k, _)| *k == f))
                .map_or(origin, |(_, layer)| *layer);
            ConfigError::Parse {
                origin: from.to_string(),
                message: match path {
                    Some(f) => format!("field `{f}`: {message}"),
                    None => message,
                },
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_string(),
        };
        if self.lanes.is_empty() {
            return Err(invalid(
                "lanes".into(),
                "at least one [[lanes]] is required",
            ));
        }
        for (name, d) in [
            ("dedupe_window", self.dedupe_window),
            ("decision_timeout", self.decision_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("burst_timeout", self.burst_timeout),
            ("connect_timeout", self.connect_timeout),
            ("resend_initial", self.resend_initial),
            ("resend_max", self.resend_max),
        ] {
            if d.is_zero() {
                return Err(invalid(name.into(), "must be longer than zero"));
            }
            // Timers add these to `Instant::now()` and double them: an absurd value would
            // overflow there, long after the file was accepted.
            if d > MAX_DURATION {
                return Err(invalid(name.into(), "must not be longer than 24h"));
            }
        }
        if self.resend_max < self.resend_initial {
            return Err(invalid(
                "resend_max".into(),
                "must not be shorter than resend_initial",
            ));
        }
        if self.require_signatures && self.signing_key.is_none() {
            return Err(invalid(
                "signing_key".into(),
                "is required: the server's decisions and commands are verified with it \
                 (`parkpay-server gateway add` prints one; require_signatures = false only for an \
                 unsigned trial)",
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(invalid("password".into(), "is set without a username"));
        }
        let mut lane_ids = HashSet::new();
        // A device feeding two lanes would make the lane of a message ambiguous.
        let mut devices: HashSet<&DeviceId> = HashSet::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            if !lane_ids.insert(&lane.id) {
                return Err(invalid(format!("lanes[{i}].id"), "is used by another lane"));
            }
            for (name, dev) in [
                ("camera", &lane.camera),
                ("loop", &lane.loop_detector),
                ("barrier", &lane.barrier),
            ] {
                if !devices.insert(dev) {
                    return Err(invalid(
                        format!("lanes[{i}].{name}"),
                        &format!("device {dev} is already used by another lane or role"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The error with its line and key, but without toml's echo of the offending line: that line
/// may hold a password or a signing key.
fn describe(text: &str, e: &toml::de::Error) -> String {
    match locate(text, e) {
        (Some(line), Some(field), msg) => format!("line {line}, field `{field}`: {msg}"),
        (Some(line), None, msg) => format!("line {line}: {msg}"),
        (None, _, msg) => msg,
    }
}

/// The message of an error from deserialising a `toml::Value`, and the dotted path of the key it
/// is about. Such errors carry no span; toml names the key on a last line, "in `a.b`".
fn keyed(e: &toml::de::Error) -> (Option<String>, String) {
    let message = e.message().trim_end().to_string();
    let shown = e.to_string();
    let path = shown
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .map(str::to_string);
    (path, message)
}

fn locate(text: &str, e: &toml::de::Error) -> (Option<usize>, Option<String>, String) {
    let message = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return (None, None, message);
    };
    // Bytes, not `&text[..]`: a span need not fall on a character boundary.
    let start = span.start.min(text.len());
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let lines: Vec<&str> = text.lines().take(line_no).collect();
    // The key on the error's line or, for a value spanning lines (an array, a multi-line
    // string), on the nearest line above that starts one, within the same table.
    let mut field = None;
    for line in lines.iter().rev() {
        if line.trim_start().starts_with('[') {
            break;
        }
        if let Some(key) = key_of(line) {
            field = Some(key);
            break;
        }
    }
    (Some(line_no), field, message)
}

/// The key a `key = value` line sets, if the line looks like one.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    plain.then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway_id = "gw-1"
lot = "lot1"
mqtt_url = "mqtt://127.0.0.1:1883"
journal_dir = "/tmp/j"
signing_key = "000102030405060708090a0b0c0d0e0f"
password = "hunter2"
username = "gw-1"

[[lanes]]
id = "exit-1"
direction = "exit"
camera = "cam-1"
loop = "loop-1"
barrier = "arm-1"
display = "disp-1"
roi = { x = 1, y = 2, width = 3, height = 4 }
"#;

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        Overrides::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn parses_a_full_file_with_defaults() {
        let c = GatewayConfig::from_toml_str(GOOD).unwrap();
        assert_eq!(c.gateway_id.as_str(), "gw-1");
        assert_eq!(
            c.mqtt_url,
            MqttUrl {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(c.dedupe_window, Duration::from_secs(60));
        assert_eq!(c.lanes[0].direction, Direction::Exit);
        assert_eq!(c.lanes[0].loop_detector.as_str(), "loop-1");
        assert_eq!(c.lanes[0].roi.map(|r| r.width), Some(3));
        assert_eq!(c.signing_key.as_ref().map(|k| k.expose().len()), Some(16));
        assert_eq!(
            (c.resend_initial, c.resend_max),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
    }

    #[test]
    fn the_resend_timer_is_configurable_and_checked() {
        let e = env(&[
            ("PARKPAY_GATEWAY_RESEND_INITIAL", "2s"),
            ("PARKPAY_GATEWAY_RESEND_MAX", "30s"),
        ]);
        let c = GatewayConfig::from_toml_layered(GOOD, "t", &[e]).unwrap();
        assert_eq!(
            (c.resend_initial, c.resend_max),
            (Duration::from_secs(2), Duration::from_secs(30))
        );
        let bad = GOOD.replace("journal_dir", "resend_initial = \"2m\"\njournal_dir");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("resend_max"), "{err}");
        let zero = GOOD.replace("journal_dir", "resend_initial = \"0s\"\njournal_dir");
        let err = GatewayConfig::from_toml_str(&zero).unwrap_err().to_string();
        assert!(err.contains("resend_initial"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = GatewayConfig::from_toml_str(GOOD).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("0a0b0c"), "{dbg}");
        assert!(!dbg.contains("10, 11, 12"), "{dbg}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let bad = GOOD.replace("journal_dir", "journal_directory");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("journal_directory"), "{err}");
        let bad = GOOD.replace("display = ", "dispaly = ");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("dispaly"), "{err}");
    }

    #[test]
    fn a_bad_value_is_reported_with_its_field() {
        let bad = GOOD.replace("mqtt://127.0.0.1:1883", "http://x");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("mqtt_url"), "{err}");
        let bad = GOOD.replace("lot = \"lot1\"", "lot = \"lot/1\"");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("lot"), "{err}");
        let bad = GOOD.replace("000102030405060708090a0b0c0d0e0f", "zz");
        let err = GatewayConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(
            err.contains("signing_key") && !err.contains("zz\""),
            "{err}"
        );
    }

    #[test]
    fn relations_between_fields_are_checked() {
        let two = format!(
            "{GOOD}\n[[lanes]]\nid = \"exit-2\"\ndirection = \"exit\"\ncamera = \"cam-1\"\nloop = \"l2\"\nbarrier = \"a2\"\ndisplay = \"d2\"\n"
        );
        let err = GatewayConfig::from_toml_str(&two).unwrap_err().to_string();
        assert!(err.contains("lanes[1].camera"), "{err}");
        let zero = GOOD.replace("journal_dir", "decision_timeout = \"0s\"\njournal_dir");
        let err = GatewayConfig::from_toml_str(&zero).unwrap_err().to_string();
        assert!(err.contains("decision_timeout"), "{err}");
    }

    #[test]
    fn env_overrides_the_file_and_flags_override_env() {
        let e = env(&[
            ("PARKPAY_GATEWAY_MQTT_URL", "mqtt://broker:1884"),
            ("PARKPAY_GATEWAY_DEDUPE_WINDOW", "5s"),
            ("PARKPAY_GATEWAY_CONFIG", "ignored.toml"),
            ("HOME", "/root"),
        ]);
        let mut f = Overrides::flags();
        f.set("mqtt_url", "mqtt://flagged").unwrap();
        let c = GatewayConfig::from_toml_layered(GOOD, "t", std::slice::from_ref(&e)).unwrap();
        assert_eq!(c.mqtt_url.port, 1884);
        assert_eq!(c.dedupe_window, Duration::from_secs(5));
        let c = GatewayConfig::from_toml_layered(GOOD, "t", &[e, f]).unwrap();
        assert_eq!(c.mqtt_url.host, "flagged");
        assert_eq!(c.mqtt_url.port, 1883);
    }

    #[test]
    fn a_bad_override_is_named_and_unknown_env_is_refused() {
        let e = env(&[("PARKPAY_GATEWAY_DECISION_TIMEOUT", "soon")]);
        let err = GatewayConfig::from_toml_layered(GOOD, "t", &[e])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("decision_timeout") && err.contains("environment"),
            "{err}"
        );
        let err = Overrides::from_env([("PARKPAY_GATEWAY_MQTT_UR".into(), "x".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PARKPAY_GATEWAY_MQTT_UR"), "{err}");
        assert!(Overrides::flags().set("lanes", "x").is_err());
    }

    #[test]
    fn durations_and_urls_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 days").is_err());
        assert_eq!(MqttUrl::parse("mqtt://h").unwrap().port, 1883);
        assert!(MqttUrl::parse("mqtts://h:8883").is_err());
        assert!(MqttUrl::parse("mqtt://h:port").is_err());
    }
}
