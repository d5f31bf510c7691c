//! The server's MQTT link: one client, its event loop polled in its own task, incoming messages
//! handed to a processor, and acknowledgements sent only after the work they carry is committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkpay_protocol::topics::filters;
use parkpay_protocol::{
    decode, CommandAck, DecodeError, GatewayStatus, LaneState, PassageEvent, Topic,
};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::app::App;
use crate::domain::{AuditEntry, DeadLetter};

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

/// Publishes at QoS 1. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
}

impl Publisher {
    pub fn new(client: AsyncClient) -> Publisher {
        Publisher { client }
    }

    /// Publishes a retained message: the latest state for whoever subscribes later.
    pub async fn publish_retained(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
    }
}

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
    o.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
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

/// The subscriptions the server needs: for every lot, or only for the lots it is given.
pub fn server_subscriptions(shared: bool, lots: Option<&[String]>) -> Vec<String> {
    let per_lot = |lot: Option<&str>| {
        [
            filters::events(lot, shared),
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

/// Signing keys by gateway id; when `required`, unsigned or unknown gateways are rejected.
#[derive(Clone, Default)]
pub struct GatewayKeys {
    pub keys: HashMap<String, Vec<u8>>,
    pub required: bool,
}

/// Handles incoming messages: passage events concurrently (bounded), the rest inline.
///
/// Acknowledgements go out in arrival order, whatever order the work finishes in: MQTT 3.1.1
/// lets a broker require it (rumqttd does), and an event is acknowledged only once its
/// transaction has committed.
pub async fn process(
    app: App,
    client: AsyncClient,
    keys: GatewayKeys,
    mut rx: mpsc::Receiver<Publish>,
) {
    let permits = Arc::new(Semaphore::new(16));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(Publish, oneshot::Receiver<bool>)>();
    tokio::spawn(ack_in_order(client, ack_rx));
    let done = |p: &Publish, handled: bool| {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(handled);
        (p.clone(), rx)
    };
    while let Some(p) = rx.recv().await {
        let received = Instant::now();
        match Topic::parse(&p.topic) {
            Ok(Topic::Events(lot, lane)) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                if ack_tx.send((p.clone(), rx)).is_err() {
                    return;
                }
                let (app, keys) = (app.clone(), keys.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let handled = match decode_event(&p.payload, &keys) {
                        Ok(ev) if ev.lot != lot || ev.lane != lane => {
                            let detail = format!(
                                "event for {}/{} published on the topic of {lot}/{lane}",
                                ev.lot, ev.lane
                            );
                            dead_letter(&app, &p, "topic_mismatch", detail).await;
                            true
                        }
                        Ok(ev) => {
                            let text = String::from_utf8_lossy(&p.payload);
                            match app.handle_passage(&ev, &text, received).await {
                                Ok(_) => true,
                                Err(e) => {
                                    // Not acknowledged: the broker redelivers it on reconnect,
                                    // and the gateway replays it from its journal.
                                    tracing::error!(event = %ev.event_id, error = %e, "passage not handled");
                                    false
                                }
                            }
                        }
                        Err(e) => {
                            dead_letter(&app, &p, e.reason(), e.to_string()).await;
                            true
                        }
                    };
                    let _ = tx.send(handled);
                });
            }
            Ok(Topic::GatewayStatus(..)) => {
                match decode::<GatewayStatus>(&p.payload, None) {
                    Ok(s) => {
                        if s.body.online {
                            app.allowlists_due.notify_one();
                        }
                        app.live.gateway_status(s.body);
                        app.metrics.gateways_online.set(app.live.gateways_online());
                    }
                    Err(e) => dead_letter(&app, &p, e.reason(), e.to_string()).await,
                }
                let _ = ack_tx.send(done(&p, true));
            }
            Ok(Topic::LaneState(..)) => {
                match decode::<LaneState>(&p.payload, None) {
                    Ok(s) => app.live.lane_state(s.body),
                    Err(e) => dead_letter(&app, &p, e.reason(), e.to_string()).await,
                }
                let _ = ack_tx.send(done(&p, true));
            }
            Ok(Topic::Acks(lot, lane)) => {
                match decode::<CommandAck>(&p.payload, None) {
                    Ok(a) => {
                        let entry = AuditEntry {
                            id: Uuid::now_v7(),
                            at: app.clock.now(),
                            actor: format!("lane {lot}/{lane}"),
                            action: if a.body.ok {
                                "command.done".into()
                            } else {
                                "command.failed".into()
                            },
                            subject: format!("command {}", a.body.command_id),
                            detail: a.body.detail,
                        };
                        if let Err(e) = app.store.insert_audit(&entry).await {
                            tracing::warn!(error = %e, "could not audit a command ack");
                        }
                    }
                    Err(e) => dead_letter(&app, &p, e.reason(), e.to_string()).await,
                }
                let _ = ack_tx.send(done(&p, true));
            }
            Ok(_) => {
                let _ = ack_tx.send(done(&p, true));
            }
            Err(e) => {
                dead_letter(&app, &p, "unknown_topic", e.to_string()).await;
                let _ = ack_tx.send(done(&p, true));
            }
        }
    }
}

async fn ack_in_order(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<(Publish, oneshot::Receiver<bool>)>,
) {
    while let Some((p, handled)) = rx.recv().await {
        if handled.await.unwrap_or(false) {
            ack(&client, &p).await;
        }
    }
}

async fn ack(client: &AsyncClient, p: &Publish) {
    if let Err(e) = client.ack(p).await {
        tracing::warn!(error = %e, "ack failed");
    }
}

fn decode_event(payload: &[u8], keys: &GatewayKeys) -> Result<PassageEvent, DecodeError> {
    let unverified = decode::<PassageEvent>(payload, None)?.body;
    match keys.keys.get(unverified.gateway.as_str()) {
        Some(key) => Ok(decode::<PassageEvent>(payload, Some(key))?.body),
        None if keys.required => Err(DecodeError::Unsigned),
        None => Ok(unverified),
    }
}

/// Keeps a rejected message with its reason, and counts it. Never fails the caller.
pub async fn dead_letter(app: &App, p: &Publish, reason: &str, detail: String) {
    tracing::warn!(topic = %p.topic, reason, %detail, "message rejected");
    app.metrics.dead_letter(reason);
    let d = DeadLetter {
        id: Uuid::now_v7(),
        received_at: app.clock.now(),
        topic: p.topic.clone(),
        reason: reason.to_string(),
        detail,
        payload: String::new(),
    };
    if let Err(e) = app.store.insert_dead_letter(&d, &p.payload).await {
        tracing::error!(error = %e, "could not store a dead letter");
    }
}
