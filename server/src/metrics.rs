//! Prometheus metrics, one registry per server instance (tests run several in one process).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::ChargeStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

/// Why a message may be dead-lettered (`docs/mqtt.md` explains each).
pub const DEAD_LETTER_REASONS: [&str; 15] = [
    "malformed",
    "version",
    "wrong_type",
    "invalid_body",
    "unsigned",
    "bad_signature",
    "oversized",
    "topic_mismatch",
    "unknown_topic",
    "unknown_lane",
    "wrong_gateway",
    "wrong_direction",
    "processing_failed",
    "invalid_image",
    "evidence_mismatch",
];

pub struct Metrics {
    registry: Registry,
    /// From an event's arrival at the server to its decision being handed to the broker.
    pub decision_latency: Histogram,
    pub events: Family<Outcome, Counter>,
    pub charges: Family<Status, Counter>,
    /// Provider notifications by what became of them: applied, duplicate, refused, malformed.
    pub notifications: Family<Status, Counter>,
    pub dead_letters: Family<Reason, Counter>,
    pub gateways_online: Gauge,
    /// What the broker says it dropped since it started (Mosquitto's `$SYS` counter).
    pub broker_dropped: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("parkpay");
        let buckets = [
            0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
            0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ];
        let decision_latency = Histogram::new(buckets);
        registry.register(
            "decision_latency_seconds",
            "Event arrival to decision published",
            decision_latency.clone(),
        );
        let events = Family::<Outcome, Counter>::default();
        registry.register("events", "Passage events by outcome", events.clone());
        let charges = Family::<Status, Counter>::default();
        registry.register(
            "charges",
            "Charge state transitions by resulting status",
            charges.clone(),
        );
        let notifications = Family::<Status, Counter>::default();
        registry.register(
            "provider_notifications",
            "Payment provider notifications by outcome (refused: the signature did not verify)",
            notifications.clone(),
        );
        let dead_letters = Family::<Reason, Counter>::default();
        registry.register(
            "dead_letters",
            "MQTT messages rejected, by reason",
            dead_letters.clone(),
        );
        let gateways_online = Gauge::default();
        registry.register(
            "gateways_online",
            "Gateways reporting online",
            gateways_online.clone(),
        );
        let broker_dropped = Gauge::default();
        registry.register(
            "broker_dropped_messages",
            "Messages the broker reports it dropped since it started (queue limits); alert on any increase",
            broker_dropped.clone(),
        );
        // Every reason is exported from the start, at zero, so a dashboard or an alert on
        // `parkpay_dead_letters_total` sees the series before the first bad message arrives.
        for reason in DEAD_LETTER_REASONS {
            let _ = dead_letters.get_or_create(&Reason {
                reason: reason.to_string(),
            });
        }
        Metrics {
            registry,
            decision_latency,
            events,
            charges,
            notifications,
            dead_letters,
            gateways_online,
            broker_dropped,
        }
    }

    /// The broker reported its dropped-message count; returns how many were dropped since the
    /// last report (0 after a broker restart, which starts the count again).
    pub fn broker_dropped(&self, total: i64) -> i64 {
        let before = self.broker_dropped.set(total);
        if total > before {
            total - before
        } else {
            0
        }
    }

    pub fn event(&self, outcome: &str) {
        self.events
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn charge(&self, status: ChargeStatus) {
        self.charges
            .get_or_create(&Status {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    pub fn notification(&self, outcome: &str) {
        self.notifications
            .get_or_create(&Status {
                status: outcome.to_string(),
            })
            .inc();
    }

    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}
