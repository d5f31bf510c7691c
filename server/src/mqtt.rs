//! The server's MQTT link: one client, its event loop polled in its own task, incoming messages
//! handed to [`crate::ingest`], and [`MqttOutbound`], the port through which use cases publish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::topics::filters;
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
use tokio::sync::mpsc;

use crate::app::Outbound;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("invalid MQTT URL {url:?}: {detail} (expected mqtt://HOST:PORT)")]
    Url { url: String, detail: String },
    #[error("MQTT connection failed: {0}")]
    Connection(Box<rumqttc::ConnectionError>),
    #[error("MQTT client error: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("the broker did not acknowledge the subscriptions within {0:?}")]
    SubscribeTimeout(Duration),
}

impl From<rumqttc::ConnectionError> for MqttError {
    fn from(e: rumqttc::ConnectionError) -> MqttError {
        MqttError::Connection(Box::new(e))
    }
}

/// Publishes at QoS 1 through the server's client. Cheap to clone.
#[derive(Clone)]
pub struct MqttOutbound {
    client: AsyncClient,
}

impl MqttOutbound {
    pub fn new(client: AsyncClient) -> MqttOutbound {
        MqttOutbound { client }
    }
}

#[async_trait::async_trait]
impl Outbound for MqttOutbound {
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The largest packet MQTT 3.1.1 can express (a remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// Parses `mqtt://host:port` into client options with the settings every client here uses.
pub fn options(url: &str, client_id: &str) -> Result<MqttOptions, MqttError> {
    let bad = |detail: &str| MqttError::Url {
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| bad("unknown scheme"))?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(|| bad("missing port"))?;
    let port: u16 = port.parse().map_err(|_| bad("port is not a number"))?;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(15));
    // Persistent session: QoS 1 messages queued while we were away are delivered on return.
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_inflight(256);
    // Accept whatever the broker delivers (up to MQTT's own limit): a client that refuses an
    // oversized message drops the connection, the broker delivers the message again on return,
    // and the server is cut off for good. Ingest dead-letters what is too large instead.
    o.set_max_packet_size(MQTT_MAX_PACKET, 8 * 1024 * 1024);
    Ok(o)
}

/// Connects, subscribes, and returns once the broker acknowledged the subscriptions.
pub async fn connect(
    opts: MqttOptions,
    subscriptions: Vec<String>,
) -> Result<(AsyncClient, EventLoop, Vec<Publish>), MqttError> {
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // rumqttc's default leaves Nagle on, which turns a 0.1 ms round trip into ~40-90 ms.
    eventloop.network_options.set_tcp_nodelay(true);
    for f in &subscriptions {
        client.subscribe(f.clone(), QoS::AtLeastOnce).await?;
    }
    let wait = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + wait;
    let mut acked = 0;
    let mut early = Vec::new();
    while acked < subscriptions.len() {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| MqttError::SubscribeTimeout(wait))??;
        match ev {
            Event::Incoming(Incoming::SubAck(_)) => acked += 1,
            // Messages queued for our persistent session may arrive before the SubAck.
            Event::Incoming(Incoming::Publish(p)) => early.push(p),
            _ => {}
        }
    }
    Ok((client, eventloop, early))
}

/// Polls the event loop forever, forwarding publishes; reconnects with backoff and jitter.
pub fn spawn_event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    tx: mpsc::Sender<Publish>,
    connected: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    failures = 0;
                    connected.store(true, Ordering::Relaxed);
                    if !ack.session_present {
                        // The broker forgot us (restarted without persistence): subscribe again.
                        for f in &subscriptions {
                            if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                                tracing::warn!(error = %e, filter = %f, "resubscribe failed");
                            }
                        }
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    connected.store(false, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let base = Duration::from_millis(100) * 2u32.pow(failures.min(6));
                    let jitter = Duration::from_millis(
                        rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 2),
                    );
                    tracing::warn!(error = %e, retry_in = ?(base + jitter), "MQTT connection lost");
                    tokio::time::sleep(base + jitter).await;
                }
            }
        }
    })
}

/// Mosquitto's count of messages it dropped (queue limits), published every `sys_interval`.
/// The server watches it so a broker that loses events raises an alarm instead of staying quiet.
pub const BROKER_DROPPED: &str = "$SYS/broker/publish/messages/dropped";

/// The subscriptions the server needs: for every lot, or only for the lots it is given.
pub fn server_subscriptions(shared: bool, lots: Option<&[String]>) -> Vec<String> {
    let per_lot = |lot: Option<&str>| {
        [
            filters::events(lot, shared),
            filters::evidence(lot, shared),
            filters::acks(lot),
            filters::lane_state(lot),
            filters::gateway_status(lot),
        ]
    };
    match lots {
        None => per_lot(None).to_vec(),
        Some(lots) => lots.iter().flat_map(|l| per_lot(Some(l))).collect(),
    }
}
