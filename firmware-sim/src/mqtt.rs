//! The one MQTT connection every simulated device owns.
//!
//! A device is a separate client with its own id, last will and event loop, as real barrier
//! hardware is: one arm going offline must not take the camera with it. The event loop runs in its
//! own task and is never blocked; incoming publishes are handed to the device through a channel.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::{encode, Clock, DeviceId, DeviceStatus, Message, Topic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::SimError;

/// Where the broker is: `mqtt://host:port` (port 1883 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    host: String,
    port: u16,
}

impl MqttUrl {
    pub fn new(host: impl Into<String>, port: u16) -> MqttUrl {
        MqttUrl {
            host: host.into(),
            port,
        }
    }

    pub fn parse(s: &str) -> Result<MqttUrl, SimError> {
        let bad = || SimError::MqttUrl(s.to_string());
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("mqtt://{s}")
        };
        let url = reqwest::Url::parse(&with_scheme).map_err(|_| bad())?;
        if !matches!(url.scheme(), "mqtt" | "tcp") || url.path().len() > 1 {
            return Err(bad());
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // The URL parser keeps IPv6 brackets; the socket address wants them gone.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(MqttUrl::new(host, url.port().unwrap_or(1883)))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for MqttUrl {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, SimError> {
        MqttUrl::parse(s)
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

/// What every device needs to come alive: the broker, the shared clock, and how long to wait for
/// the broker before giving up.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    pub mqtt: MqttUrl,
    pub clock: Arc<dyn Clock>,
    /// Bound on `start`: connecting and having every subscription acknowledged.
    pub ready_timeout: Duration,
}

impl DeviceContext {
    pub fn new(mqtt: MqttUrl, clock: Arc<dyn Clock>) -> DeviceContext {
        DeviceContext {
            mqtt,
            clock,
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// A device's connection: publishing handle plus the task that polls its event loop.
#[derive(Debug)]
pub(crate) struct Link {
    device: DeviceId,
    client: AsyncClient,
    clock: Arc<dyn Clock>,
    task: Option<JoinHandle<()>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Link {
    /// Connects, announces the device online (retained), subscribes to `inbox`, and returns once
    /// the broker has acknowledged the subscriptions (or the connection, when there are none).
    pub(crate) async fn start(
        ctx: &DeviceContext,
        device: DeviceId,
        inbox: Vec<Topic>,
    ) -> Result<(Link, mpsc::UnboundedReceiver<Publish>), SimError> {
        let status_topic = Topic::DeviceStatus(device.clone()).to_string();
        let offline = encode(
            &DeviceStatus {
                device: device.clone(),
                online: false,
                at: ctx.clock.now(),
            },
            ctx.clock.now(),
            None,
        );
        let mut opts = MqttOptions::new(device.as_str(), ctx.mqtt.host(), ctx.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(10));
        // Camera frames are JPEG files in base64: far above rumqttc's 10 KB default.
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        // A clean session on purpose: a barrier command queued by the broker while the arm was
        // offline would lift it for a car that left long ago. Subscriptions are renewed on every
        // connect instead.
        opts.set_clean_session(true);
        opts.set_last_will(LastWill::new(status_topic, offline, QoS::AtLeastOnce, true));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        // rumqttc leaves Nagle on, which turns a sub-millisecond round trip into tens of ms.
        eventloop.network_options.set_tcp_nodelay(true);

        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let filters: Vec<SubscribeFilter> = inbox
            .iter()
            .map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce))
            .collect();
        let task = tokio::spawn(poll_loop(
            PollLoop {
                device: device.clone(),
                client: client.clone(),
                clock: ctx.clock.clone(),
                filters,
                inbox: tx,
                ready: Some(ready_tx),
            },
            eventloop,
        ));
        let link = Link {
            device: device.clone(),
            client,
            clock: ctx.clock.clone(),
            task: Some(task),
        };
        match tokio::time::timeout(ctx.ready_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok((link, rx)),
            Ok(Ok(Err(detail))) => Err(SimError::Config(format!(
                "broker refused a subscription of {device}: {detail}"
            ))),
            Ok(Err(_)) => Err(SimError::DeviceGone {
                device: device.to_string(),
            }),
            Err(_) => Err(SimError::NotReady {
                device: device.to_string(),
                waited: ctx.ready_timeout,
            }),
        }
    }

    pub(crate) fn device(&self) -> &DeviceId {
        &self.device
    }

    /// A cheap handle for the device's own tasks to publish with.
    pub(crate) fn publisher(&self) -> Publisher {
        Publisher {
            device: self.device.clone(),
            client: self.client.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Says goodbye properly: retained offline status, then a clean disconnect, so the broker
    /// does not need the last will.
    pub(crate) async fn shutdown(mut self) {
        let offline = DeviceStatus {
            device: self.device.clone(),
            online: false,
            at: self.clock.now(),
        };
        let topic = Topic::DeviceStatus(self.device.clone());
        if self
            .publisher()
            .publish(&topic, &offline, QoS::AtLeastOnce, true)
            .await
            .is_ok()
        {
            let _ = self.client.disconnect().await;
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// Publishes for one device, stamping envelopes with the shared clock.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    device: DeviceId,
    client: AsyncClient,
    clock: Arc<dyn Clock>,
}

impl Publisher {
    pub(crate) fn device(&self) -> &DeviceId {
        &self.device
    }

    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    pub(crate) async fn publish<M: Message>(
        &self,
        topic: &Topic,
        body: &M,
        qos: QoS,
        retain: bool,
    ) -> Result<(), SimError> {
        let payload = encode(body, self.clock.now(), None);
        self.client
            .publish(topic.to_string(), qos, retain, payload)
            .await
            .map_err(|source| SimError::Mqtt {
                device: self.device.to_string(),
                source,
            })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropped without `shutdown`: the device vanishes, and the broker's last will says so.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A background task that dies with its owner.
#[derive(Debug)]
pub(crate) struct Task(pub(crate) JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct PollLoop {
    device: DeviceId,
    client: AsyncClient,
    clock: Arc<dyn Clock>,
    filters: Vec<SubscribeFilter>,
    inbox: mpsc::UnboundedSender<Publish>,
    ready: Option<oneshot::Sender<Result<(), String>>>,
}

impl PollLoop {
    fn announce(&mut self) {
        let online = DeviceStatus {
            device: self.device.clone(),
            online: true,
            at: self.clock.now(),
        };
        let payload = encode(&online, self.clock.now(), None);
        let topic = Topic::DeviceStatus(self.device.clone()).to_string();
        // try_* never blocks the loop that has to drain the very queue they write to.
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            tracing::warn!(device = %self.device, error = %e, "could not queue online status");
        }
        if self.filters.is_empty() {
            self.signal_ready(Ok(()));
        } else if let Err(e) = self.client.try_subscribe_many(self.filters.clone()) {
            tracing::warn!(device = %self.device, error = %e, "could not queue subscriptions");
        }
    }

    fn signal_ready(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(r);
        }
    }
}

async fn poll_loop(mut st: PollLoop, mut eventloop: EventLoop) {
    // Jitter only spreads reconnects; seeding it from the id keeps runs reproducible.
    let seed = st
        .device
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut backoff = BACKOFF_MIN;
    let mut closing = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                tracing::debug!(device = %st.device, "connected");
                st.announce();
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                st.signal_ready(if refused {
                    Err(format!("{:?}", ack.return_codes))
                } else {
                    Ok(())
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // The device may have been dropped; its messages then have nowhere to go.
                let _ = st.inbox.send(p);
            }
            // The DISCONNECT may still sit in the write buffer: keep polling until the broker
            // closes the connection, or it sees an abrupt close and fires the last will.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => closing = true,
            Ok(_) => {}
            Err(_) if closing => return,
            Err(e) => {
                let jitter = rng.gen_range(0.0..0.5);
                let wait = backoff.mul_f64(1.0 + jitter);
                tracing::warn!(device = %st.device, error = %e, ?wait, "MQTT connection lost; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(
            MqttUrl::parse("mqtt://127.0.0.1:1884").unwrap(),
            MqttUrl::new("127.0.0.1", 1884)
        );
        assert_eq!(MqttUrl::parse("localhost").unwrap().port(), 1883);
        assert_eq!(MqttUrl::parse("tcp://[::1]:9").unwrap().host(), "::1");
        assert_eq!(MqttUrl::new("::1", 9).to_string(), "mqtt://[::1]:9");
        assert!(MqttUrl::parse("http://x:1").is_err());
        assert!(MqttUrl::parse("mqtt://x:1/path").is_err());
    }
}
