//! Server configuration, layered: built-in defaults, then a TOML file, then `PARKPAY_SERVER_*`
//! environment variables (nested keys joined by `__`), then command-line flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A secret string (a key or password): never printed, and rendered as `"<secret>"` when the
/// configuration is shown (`--print-config`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<secret>")
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `sqlite://PATH` (embedded default) or `postgres://USER@HOST/DB`.
    pub database_url: String,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub payments: PaymentsConfig,
    pub ingest: IngestConfig,
    /// `[sms]`: sign-in codes for the driver portal (see `docs/operations.md`).
    pub sms: SmsConfig,
    /// Pictures of passages the gateways would not vouch for (personal data: kept a while).
    pub evidence: EvidenceConfig,
    /// This instance's name, used for its MQTT client id (and so its persistent session at the
    /// broker) and for charge leases. Unset, it is derived from the host name and the database
    /// URL, so a restart is the same instance and gets what was queued while it was down.
    /// Several instances sharing one database must each be given their own.
    pub instance: Option<String>,
}

/// `[sms]`: how the driver portal sends sign-in codes, and its limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// `log` (development: the message, code included, is written to the log at info) or
    /// `memory` (tests: kept in memory where the test reads it).
    pub sender: String,
    /// How long a code is valid, in seconds.
    pub code_ttl_secs: u32,
    /// Tries (right or wrong) one code allows; then it is dead.
    pub max_tries: u32,
    /// The shortest time between two codes for one number, in seconds.
    pub resend_after_secs: u32,
    /// Codes one number may be sent per hour.
    pub codes_per_hour: u32,
    /// Code requests one client address may make per hour.
    pub codes_per_address_per_hour: u32,
    /// Code tries one client address may make per hour.
    pub tries_per_address_per_hour: u32,
    /// How long a driver's sign-in lasts, in hours.
    pub session_hours: u32,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            sender: "log".into(),
            code_ttl_secs: 300,
            max_tries: 5,
            resend_after_secs: 60,
            codes_per_hour: 5,
            codes_per_address_per_hour: 20,
            tries_per_address_per_hour: 60,
            session_hours: 72,
        }
    }
}

impl SmsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| Err(ConfigError(format!("sms.{field}: {why}")));
        if !matches!(self.sender.as_str(), "log" | "memory") {
            return bad("sender", "must be \"log\" or \"memory\"");
        }
        for (field, v, lo, hi) in [
            ("code_ttl_secs", self.code_ttl_secs, 60, 3600),
            ("max_tries", self.max_tries, 1, 10),
            ("resend_after_secs", self.resend_after_secs, 1, 3600),
            ("codes_per_hour", self.codes_per_hour, 1, 60),
            (
                "codes_per_address_per_hour",
                self.codes_per_address_per_hour,
                1,
                100_000,
            ),
            (
                "tries_per_address_per_hour",
                self.tries_per_address_per_hour,
                1,
                100_000,
            ),
            ("session_hours", self.session_hours, 1, 24 * 90),
        ] {
            if !(lo..=hi).contains(&v) {
                return bad(field, &format!("must be {lo} to {hi}"));
            }
        }
        Ok(())
    }
}

/// How far a capture instant may lie from the server's clock (see `docs/mqtt.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A capture instant more than this many seconds ahead of the server's clock is refused.
    pub max_clock_ahead_secs: u64,
    /// A live event captured more than this many seconds before it is received is refused.
    pub max_event_age_secs: u64,
    /// The same for events the gateway replays from its journal (`resent: true`).
    pub max_resent_age_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_clock_ahead_secs: 300,
            max_event_age_secs: 24 * 3600,
            max_resent_age_secs: 7 * 24 * 3600,
        }
    }
}

/// How long evidence pictures are kept (see `docs/operations.md`, "Evidence pictures").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// A picture received more than this many days ago is deleted by the purge job.
    pub retention_days: u32,
    /// How often the purge job runs, in seconds.
    pub purge_interval_secs: u64,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            retention_days: 30,
            purge_interval_secs: 3600,
        }
    }
}

impl EvidenceConfig {
    pub fn retention(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::days(i64::from(self.retention_days))
    }
}

impl IngestConfig {
    pub fn limits(&self) -> crate::decide::TimeLimits {
        let secs = |s: u64| chrono::TimeDelta::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        crate::decide::TimeLimits {
            max_ahead: secs(self.max_clock_ahead_secs),
            max_age: secs(self.max_event_age_secs),
            max_resent_age: secs(self.max_resent_age_secs),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub bind: SocketAddr,
    /// The base URL drivers reach for paying at the exit (shown as a QR code on the display).
    pub public_url: Option<String>,
    /// Mark the session cookie `Secure` (browsers then send it only over HTTPS, or to
    /// localhost). Turn off only for a trial over plain HTTP on a private network.
    pub secure_cookies: bool,
    /// Largest request body, in bytes; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Sign-in attempts allowed per username and per client address in 15 minutes.
    pub login_attempts: u32,
    /// Requests per minute one client address may make to the public pay pages.
    pub public_rate_per_minute: u32,
    /// How long a sign-in lasts, in hours.
    pub session_hours: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded` runs a broker in this process; otherwise `mqtt://HOST:PORT`.
    pub broker: String,
    /// Where the embedded broker listens (port 0 picks a free one).
    pub embedded_bind: SocketAddr,
    /// Join the `$share/parkpay` group so several instances split the event stream.
    pub shared_subscription: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Per-gateway HMAC keys (hex). A gateway listed here must sign its events.
    pub gateway_keys: HashMap<String, Secret>,
    /// Refuse events from gateways without a key (and send them nothing unsigned). On by
    /// default; off only for an unsigned trial.
    pub require_signatures: bool,
    /// Serve only these lots (several deployments sharing one broker); all lots when unset.
    pub lots: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// `sandbox` (the project's own wallets) or `wechat` (WeChat Pay's parking service, set up
    /// in `[payments.wechat]`).
    pub provider: String,
    pub max_attempts: i64,
    /// First retry delay in seconds of clock time; doubles per attempt.
    pub retry_base_secs: f64,
    pub accepted_poll_secs: f64,
    pub poll_interval_ms: u64,
    pub lease_secs: f64,
    /// Real seconds another instance may go without a heartbeat before this one frees the
    /// charges it had leased (a restarted instance frees its own at once).
    pub instance_dead_secs: f64,
    /// Simulated provider latency, milliseconds.
    pub sandbox_latency_ms: u64,
    /// Fault injection: the share (0 to below 1) of sandbox debits that take effect and are then
    /// answered with a failure, as a provider's 5xx or timeout after the fact. 0 by default.
    pub sandbox_fault_rate: f64,
    /// How long such a failed answer takes to arrive, milliseconds.
    pub sandbox_late_ms: u64,
    /// The sandbox provider's secret: its settle call (the provider saying a driver paid) and
    /// its wallet calls require it as a bearer token. Unset, those calls do not exist.
    pub sandbox_secret: Option<Secret>,
    /// WeChat Pay (docs/payments.md); required when `provider = "wechat"`.
    pub wechat: Option<WechatConfig>,
    /// Reconcile yesterday's bill each day once the provider has published it (10:00 China
    /// Standard Time for WeChat Pay); `false` leaves it to the on-demand run.
    pub nightly_reconciliation: bool,
}

/// `[payments.wechat]`: the merchant's identity and keys at WeChat Pay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WechatConfig {
    /// The API host; the real one unless overridden (a simulator, a proxy).
    #[serde(default = "wechat_base_url")]
    pub base_url: String,
    pub mchid: String,
    pub appid: String,
    /// The serial number of the merchant API certificate (upper-case hex).
    pub merchant_serial: String,
    /// The merchant API private key (`apiclient_key.pem`, PKCS#8 or PKCS#1 PEM).
    pub merchant_private_key_file: std::path::PathBuf,
    /// The APIv3 key (32 characters) that decrypts notifications; or `apiv3_key_file`.
    #[serde(default)]
    pub apiv3_key: Option<Secret>,
    #[serde(default)]
    pub apiv3_key_file: Option<std::path::PathBuf>,
    /// The WeChat Pay public key (PEM) and its id (`PUB_KEY_ID_...`).
    #[serde(default)]
    pub public_key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub public_key_id: Option<String>,
    /// A platform certificate (PEM); with the public key too during a migration.
    #[serde(default)]
    pub platform_certificate_file: Option<std::path::PathBuf>,
    /// Where WeChat Pay sends notifications: this server's
    /// `https://HOST/api/providers/wechat/notify`. A path (starting `/`) is taken at
    /// `http.public_url`.
    pub notify_url: String,
    /// How long a call may take before it counts as unanswered (and is retried, same number).
    #[serde(default = "wechat_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a plate's service state is remembered.
    #[serde(default = "wechat_service_cache_secs")]
    pub service_cache_secs: u64,
}

fn wechat_base_url() -> String {
    "https://api.mch.weixin.qq.com".into()
}

fn wechat_timeout_ms() -> u64 {
    5000
}

fn wechat_service_cache_secs() -> u64 {
    60
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            database_url: "sqlite://parkpay.db".into(),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            payments: PaymentsConfig::default(),
            ingest: IngestConfig::default(),
            sms: SmsConfig::default(),
            evidence: EvidenceConfig::default(),
            instance: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: ([127, 0, 0, 1], 8080).into(),
            public_url: None,
            secure_cookies: true,
            max_body_bytes: 64 * 1024,
            login_attempts: 10,
            public_rate_per_minute: 120,
            session_hours: 12,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "embedded".into(),
            embedded_bind: ([127, 0, 0, 1], 1883).into(),
            shared_subscription: false,
            username: None,
            password: None,
            gateway_keys: HashMap::new(),
            require_signatures: true,
            lots: None,
        }
    }
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            provider: "sandbox".into(),
            max_attempts: 4,
            retry_base_secs: 300.0,
            accepted_poll_secs: 60.0,
            poll_interval_ms: 250,
            lease_secs: 120.0,
            instance_dead_secs: 10.0,
            sandbox_latency_ms: 0,
            sandbox_fault_rate: 0.0,
            sandbox_late_ms: 0,
            sandbox_secret: None,
            wechat: None,
            nightly_reconciliation: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError(e.to_string())
    }
}

impl ServerConfig {
    /// Defaults, then the file (if any), then environment, then `overrides` (flags).
    pub fn load(
        file: Option<&Path>,
        overrides: Option<serde_json::Value>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("PARKPAY_SERVER_").split("__"));
        if let Some(o) = overrides {
            fig = fig.merge(Serialized::defaults(o));
        }
        let c: ServerConfig = fig.extract()?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| Err(ConfigError(format!("{field}: {why}")));
        self.sms.validate()?;
        if self.evidence.retention_days == 0 {
            return bad("evidence.retention_days", "must be at least 1");
        }
        if self.evidence.purge_interval_secs == 0 {
            return bad("evidence.purge_interval_secs", "must be at least 1");
        }
        match (self.payments.provider.as_str(), &self.payments.wechat) {
            ("sandbox", _) => {}
            ("wechat", Some(w)) => {
                for (name, v) in [
                    ("payments.wechat.mchid", &w.mchid),
                    ("payments.wechat.appid", &w.appid),
                    ("payments.wechat.merchant_serial", &w.merchant_serial),
                    ("payments.wechat.notify_url", &w.notify_url),
                    ("payments.wechat.base_url", &w.base_url),
                ] {
                    if v.trim().is_empty() {
                        return bad(name, "is required");
                    }
                }
                if !(w.base_url.starts_with("https://") || w.base_url.starts_with("http://")) {
                    return bad("payments.wechat.base_url", "must be an http(s) URL");
                }
                if !w.notify_url.starts_with("https://")
                    && !w.notify_url.starts_with("http://")
                    && !w.notify_url.starts_with('/')
                {
                    return bad(
                        "payments.wechat.notify_url",
                        "must be an http(s) URL, or a path at http.public_url",
                    );
                }
                if w.apiv3_key.is_some() == w.apiv3_key_file.is_some() {
                    return bad(
                        "payments.wechat.apiv3_key",
                        "set exactly one of apiv3_key and apiv3_key_file",
                    );
                }
                if w.apiv3_key.as_ref().is_some_and(|k| k.expose().len() != 32) {
                    return bad("payments.wechat.apiv3_key", "must be 32 characters");
                }
                if w.public_key_file.is_some() != w.public_key_id.is_some() {
                    return bad(
                        "payments.wechat.public_key_id",
                        "public_key_file and public_key_id go together",
                    );
                }
                if w.public_key_file.is_none() && w.platform_certificate_file.is_none() {
                    return bad(
                        "payments.wechat.public_key_file",
                        "set public_key_file + public_key_id, or platform_certificate_file, or both",
                    );
                }
                if w.timeout_ms == 0 || w.timeout_ms > 60_000 {
                    return bad("payments.wechat.timeout_ms", "must be 1 to 60000");
                }
            }
            ("wechat", None) => {
                return bad("payments.wechat", "is required when provider = \"wechat\"");
            }
            _ => {
                return bad("payments.provider", "must be \"sandbox\" or \"wechat\"");
            }
        }
        if self.payments.max_attempts < 1 {
            return bad("payments.max_attempts", "must be at least 1");
        }
        for (field, v) in [
            ("payments.retry_base_secs", self.payments.retry_base_secs),
            (
                "payments.accepted_poll_secs",
                self.payments.accepted_poll_secs,
            ),
            ("payments.lease_secs", self.payments.lease_secs),
            (
                "payments.instance_dead_secs",
                self.payments.instance_dead_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, "must be a positive number of seconds");
            }
        }
        let rate = self.payments.sandbox_fault_rate;
        if !(rate.is_finite() && (0.0..1.0).contains(&rate)) {
            return bad(
                "payments.sandbox_fault_rate",
                "must be at least 0 and below 1",
            );
        }
        if self.payments.sandbox_late_ms > 600_000 {
            return bad(
                "payments.sandbox_late_ms",
                "must be at most 600000 (10 min)",
            );
        }
        if self.mqtt.broker != "embedded" && !self.mqtt.broker.starts_with("mqtt://") {
            return bad("mqtt.broker", "use \"embedded\" or mqtt://HOST:PORT");
        }
        for (gw, key) in &self.mqtt.gateway_keys {
            if hex_decode(key.expose()).is_none() {
                return bad(&format!("mqtt.gateway_keys.{gw}"), "must be hex");
            }
        }
        for (gw, key) in &self.mqtt.gateway_keys {
            if hex_decode(key.expose()).is_some_and(|k| k.len() < 16) {
                return bad(
                    &format!("mqtt.gateway_keys.{gw}"),
                    "must be at least 16 bytes (32 hex digits)",
                );
            }
        }
        if let Some(s) = &self.payments.sandbox_secret {
            if s.expose().len() < 16 {
                return bad("payments.sandbox_secret", "must be at least 16 characters");
            }
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return bad("http.max_body_bytes", "must be between 1 KiB and 64 MiB");
        }
        if self.http.login_attempts == 0 || self.http.public_rate_per_minute == 0 {
            return bad(
                "http.login_attempts",
                "rate limits must be at least 1 (login_attempts, public_rate_per_minute)",
            );
        }
        if !(1..=24 * 30).contains(&self.http.session_hours) {
            return bad("http.session_hours", "must be between 1 and 720");
        }
        for lot in self.mqtt.lots.iter().flatten() {
            if let Err(e) = parkpay_protocol::LotId::parse(lot.as_str()) {
                return bad("mqtt.lots", &e.to_string());
            }
        }
        if let Some(i) = &self.instance {
            if i.is_empty()
                || i.len() > 64
                || !i
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(
                    "instance",
                    "1-64 characters: letters, digits, '-', '_', '.'",
                );
            }
        }
        for (field, v) in [
            (
                "ingest.max_clock_ahead_secs",
                self.ingest.max_clock_ahead_secs,
            ),
            ("ingest.max_event_age_secs", self.ingest.max_event_age_secs),
            (
                "ingest.max_resent_age_secs",
                self.ingest.max_resent_age_secs,
            ),
        ] {
            if v == 0 || v > 10 * 365 * 24 * 3600 {
                return bad(field, "must be between 1 second and 10 years");
            }
        }
        Ok(())
    }

    /// This instance's name: the configured one, or one derived from the host name and the
    /// database URL, stable across restarts.
    pub fn instance_name(&self) -> String {
        if let Some(i) = &self.instance {
            return i.clone();
        }
        use sha2::{Digest, Sha256};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default();
        let digest = Sha256::digest(format!("{}\n{}", host.trim(), self.database_url));
        format!("server-{}", &hex::encode(digest)[..12])
    }

    pub fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wechat_settings_are_checked_field_by_field_and_secrets_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            ServerConfig::load(Some(&f), None)
        };
        let e = load("[payments]\nprovider = \"wechat\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("payments.wechat:"), "{e}");
        let base = "[payments]\nprovider = \"wechat\"\n[payments.wechat]\nmchid = \"1900000109\"\nappid = \"wx1\"\n\
                    merchant_serial = \"ABC\"\nmerchant_private_key_file = \"/k.pem\"\nnotify_url = \"/api/providers/wechat/notify\"\n\
                    public_key_file = \"/p.pem\"\npublic_key_id = \"PUB_KEY_ID_1\"\n";
        let e = load(&format!("{base}apiv3_key = \"short\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("payments.wechat.apiv3_key"), "{e}");
        let e = load(base).unwrap_err().to_string();
        assert!(
            e.contains("payments.wechat.apiv3_key"),
            "neither key nor file: {e}"
        );
        let e = load(&format!(
            "{base}apiv3_key = \"0123456789abcdef0123456789abcdef\"\nnotify_urll = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("notify_urll"), "{e}");
        let e = load(
            &base
                .replace("public_key_id = \"PUB_KEY_ID_1\"\n", "")
                .replace(
                    "notify_url = \"/api",
                    "apiv3_key = \"0123456789abcdef0123456789abcdef\"\nnotify_url = \"/api",
                ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("payments.wechat.public_key_id"), "{e}");
        let c = load(&format!(
            "{base}apiv3_key = \"0123456789abcdef0123456789abcdef\"\n[http]\nsecure_cookies = true\n"
        ))
        .unwrap();
        let shown = toml::to_string_pretty(&c).unwrap();
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("apiv3_key = \"<secret>\""), "{shown}");
    }

    #[test]
    fn sms_settings_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            ServerConfig::load(Some(&f), None)
        };
        let c = load("[sms]\nsender = \"memory\"\ncode_ttl_secs = 120\n").unwrap();
        assert_eq!(c.sms.sender, "memory");
        assert_eq!(c.sms.code_ttl_secs, 120);
        assert_eq!(c.sms.max_tries, 5, "unset fields keep their defaults");
        for (text, field) in [
            ("sender = \"carrier-pigeon\"", "sms.sender"),
            ("code_ttl_secs = 10", "sms.code_ttl_secs"),
            ("max_tries = 0", "sms.max_tries"),
            ("codes_per_hour = 0", "sms.codes_per_hour"),
            ("session_hours = 0", "sms.session_hours"),
            ("sendr = \"log\"", "sendr"),
        ] {
            let e = load(&format!("[sms]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn a_bad_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[payments]\nmax_attempts = 0\n").unwrap();
        let e = ServerConfig::load(Some(&f), None).unwrap_err().to_string();
        assert!(e.contains("payments.max_attempts"), "{e}");
        std::fs::write(&f, "[http]\nbind = \"nonsense\"\n").unwrap();
        let e = ServerConfig::load(Some(&f), None).unwrap_err().to_string();
        assert!(e.contains("bind"), "{e}");
        std::fs::write(&f, "[mqtt]\nbrokr = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&f), None).unwrap_err().to_string();
        assert!(e.contains("brokr"), "{e}");
        for rate in ["1.0", "-0.1", "nan"] {
            std::fs::write(&f, format!("[payments]\nsandbox_fault_rate = {rate}\n")).unwrap();
            let e = ServerConfig::load(Some(&f), None).unwrap_err().to_string();
            assert!(e.contains("payments.sandbox_fault_rate"), "{rate}: {e}");
        }
        std::fs::write(
            &f,
            "[payments]\nsandbox_fault_rate = 0.25\nsandbox_late_ms = 300\n",
        )
        .unwrap();
        let c = ServerConfig::load(Some(&f), None).unwrap();
        assert_eq!(
            (c.payments.sandbox_fault_rate, c.payments.sandbox_late_ms),
            (0.25, 300)
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "database_url = \"sqlite://a.db\"\n").unwrap();
        let c = ServerConfig::load(
            Some(&f),
            Some(serde_json::json!({"database_url": "sqlite://b.db"})),
        )
        .unwrap();
        assert_eq!(c.database_url, "sqlite://b.db");
        assert_eq!(format!("{:?}", Secret::new("k")), "Secret(..)");
    }
}
