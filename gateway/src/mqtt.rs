//! The MQTT connection: options, and the task that keeps the rumqttc event loop polled.
//!
//! The poller never handles a message itself; it forwards publishes to the gateway's task over
//! an unbounded channel, so a slow journal write or plate read never delays a keep-alive or an
//! ack. It re-subscribes on every ConnAck (a broker that lost our session also lost our
//! subscriptions), and reconnects with exponential backoff and jitter.

use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};

use crate::config::GatewayConfig;

/// Frames carry whole camera images; rumqttc's 10 KiB default would drop them.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;
const MAX_OUTGOING_PACKET: usize = 1024 * 1024;
/// Requests queue here while the broker is away; events are also in the journal, so a full
/// queue delays but never loses one.
const REQUEST_CAPACITY: usize = 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the poller tells the gateway's task.
#[derive(Debug)]
pub enum ShellEvent {
    /// A ConnAck arrived; subscriptions are (re)requested.
    Connected {
        session_present: bool,
    },
    Message(Publish),
    Disconnected(String),
}

/// The subscriptions' fate, as seen by [`crate::Gateway::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubState {
    Waiting { last_error: Option<String> },
    Acked,
    Rejected(Vec<String>),
}

pub fn client_id(config: &GatewayConfig) -> String {
    format!("parkpay-gw-{}", config.gateway_id)
}

pub fn options(config: &GatewayConfig, will: LastWill) -> MqttOptions {
    let mut o = MqttOptions::new(
        client_id(config),
        config.mqtt_url.host.clone(),
        config.mqtt_url.port,
    );
    // A persistent session: QoS 1 decisions sent while we were away are delivered on return.
    o.set_clean_session(false)
        .set_keep_alive(KEEP_ALIVE)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_manual_acks(true)
        .set_last_will(will);
    if let Some(user) = &config.username {
        let pass = config
            .password
            .as_ref()
            .map(|p| p.expose().clone())
            .unwrap_or_default();
        o.set_credentials(user.clone(), pass);
    }
    o
}

pub fn connect(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    // Nagle's algorithm holds small packets back for ~40 ms twice per round trip; every
    // message here is small and latency is what the driver feels.
    eventloop.network_options.set_tcp_nodelay(true);
    (client, eventloop)
}

#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// The delay before the next attempt: doubling up to the cap, with "equal jitter" so a site
    /// full of gateways does not reconnect in lockstep after a broker restart.
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = base / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Polls `eventloop` until the client disconnects or the gateway goes away.
pub async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<SubscribeFilter>,
    tx: mpsc::UnboundedSender<ShellEvent>,
    subs: watch::Sender<SubState>,
) {
    let mut backoff = Backoff::new();
    loop {
        let event = eventloop.poll().await;
        let forward = match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(session_present = ack.session_present, "connected to broker");
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "cannot queue subscriptions");
                }
                Some(ShellEvent::Connected {
                    session_present: ack.session_present,
                })
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let rejected: Vec<String> = ack
                    .return_codes
                    .iter()
                    .zip(&filters)
                    .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                    .map(|(_, f)| f.path.clone())
                    .collect();
                if rejected.is_empty() {
                    subs.send_replace(SubState::Acked);
                } else {
                    tracing::error!(?rejected, "broker refused subscriptions");
                    subs.send_replace(SubState::Rejected(rejected));
                }
                None
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => Some(ShellEvent::Message(p)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from broker");
                return;
            }
            Ok(_) => None,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                let delay = backoff.step();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
                subs.send_if_modified(|s| match s {
                    SubState::Waiting { last_error } => {
                        *last_error = Some(e.to_string());
                        true
                    }
                    SubState::Acked | SubState::Rejected(_) => false,
                });
                if tx.send(ShellEvent::Disconnected(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                None
            }
        };
        if let Some(ev) = forward {
            if tx.send(ev).is_err() {
                // The gateway is gone; nobody is left to handle messages.
                return;
            }
        }
    }
}

pub fn qos1(topic: String) -> SubscribeFilter {
    SubscribeFilter::new(topic, QoS::AtLeastOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.step();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.step();
            assert!(d <= BACKOFF_MAX);
        }
        assert!(b.step() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.step() <= BACKOFF_MIN);
    }
}
