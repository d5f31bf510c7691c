use std::time::Duration;

/// Everything that can go wrong while the simulated world runs.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("MQTT URL {0:?} is not valid: use mqtt://host[:port]")]
    MqttUrl(String),
    #[error("invalid identifier: {0}")]
    Id(#[from] parkpay_protocol::IdError),
    #[error("device {device} was not ready within {waited:?} (is the broker reachable?)")]
    NotReady { device: String, waited: Duration },
    #[error("device {device} stopped: its MQTT event loop has ended")]
    DeviceGone { device: String },
    #[error("MQTT client for {device}: {source}")]
    Mqtt {
        device: String,
        #[source]
        source: rumqttc::ClientError,
    },
    #[error("HTTP {method} {path}: {source}")]
    Http {
        method: &'static str,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("HTTP {method} {path} answered {status}: {body}")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("URL {0:?} cannot be joined with an API path")]
    BaseUrl(String),
    #[error("ground-truth log {path}: {source}")]
    TruthLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("world configuration: {0}")]
    Config(String),
    #[error("no usable plate: {0}")]
    Plate(#[from] parkpay_protocol::PlateError),
}

impl SimError {
    /// True for an API answer with this HTTP status.
    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, SimError::Api { status, .. } if *status == code)
    }
}
