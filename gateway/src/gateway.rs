//! The MQTT shell around the lanes: decode, route to a [`Lane`], carry out what it returns.
//!
//! One task owns all lane state and handles, in turn: messages forwarded by the poller
//! ([`crate::mqtt::poll`]), finished frame reads (run on blocking threads), a 100 ms tick for
//! timeouts and resends of undecided events ([`crate::resend`]), and the heartbeat. Nothing here
//! decides anything a lane decides.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use image::DynamicImage;
use parkpay_protocol::envelope::Message;
use parkpay_protocol::topics::filters;
use parkpay_protocol::{
    decode, encode, image_format, Allowlist, BarrierStateReport, Clock, Decision, DeviceId,
    Evidence, Frame, GatewayStatus, LaneId, LoopEvent, Opened, OperatorCommand, PassageEvent,
    PlateCandidate, PlateRead, ReadQuality, Topic, MAX_EVIDENCE_IMAGE,
};
use rand::Rng;
use rumqttc::{AsyncClient, LastWill, Publish, QoS, SubscribeFilter};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::burst::{Arrival, BurstCollector, BurstKey, CompletedBurst, FrameRead};
use crate::config::{ConfigError, GatewayConfig, LaneConfig};
use crate::journal::{Entry, Journal, JournalError};
use crate::lane::{AllowSet, Count, Input, Lane, LaneSpec, Now, Output};
use crate::mqtt::{self, ShellEvent, SubState};
use crate::reader::{PlateReader, Roi};
use crate::resend::{ResendPolicy, Resends};

const TICK: Duration = Duration::from_millis(100);
/// At most this many resends per tick, so a long outage's backlog cannot stall the lanes.
const MAX_RESENDS_PER_TICK: usize = 100;
/// How long shutdown waits for the offline status and the DISCONNECT to reach the broker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// An operator command is carried out only within this span of when it was issued (by the
/// gateway's clock), and only once: a recording of one, replayed, does nothing.
pub const COMMAND_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("broker at {url} did not acknowledge the subscriptions within {timeout:?} (last error: {})", last_error.as_deref().unwrap_or("none"))]
    Connect {
        url: String,
        timeout: Duration,
        last_error: Option<String>,
    },
    #[error("broker refused the subscriptions {0:?} (check the broker ACL for this gateway)")]
    SubscribeRejected(Vec<String>),
    #[error("the MQTT connection task stopped unexpectedly")]
    ConnectionClosed,
}

/// A reader for sites whose cameras send plate reads themselves: every frame reads as nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFrameReader;

impl PlateReader for NoFrameReader {
    fn read(&self, _image: &DynamicImage, _roi: Option<Roi>) -> Vec<PlateCandidate> {
        Vec::new()
    }
}

/// Counters, readable while the gateway runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Fresh passage events published (not counting replays).
    pub events_published: u64,
    /// Journal entries republished with `resent: true`: after a (re)connect, and whenever an
    /// undecided event's resend timer runs out.
    pub events_resent: u64,
    pub duplicates_suppressed: u64,
    pub decisions_applied: u64,
    pub late_decisions: u64,
    pub commands_acked: u64,
    pub offline_opens: u64,
    pub offline_holds: u64,
    /// Open commands sent again because the arm did not report rising within a second.
    pub arm_resends: u64,
    pub journal_errors: u64,
    pub journal_corrupt: u64,
    pub connects: u64,
    /// Plates in the allowlist the offline policy currently uses.
    pub allowlist_plates: u64,
    /// Pictures of passages the gateway would not vouch for, sent to the server.
    pub evidence_published: u64,
    /// Rejected incoming messages by reason (`malformed`, `bad_image`, `unknown_device`, ...).
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Stats {
    events_published: AtomicU64,
    events_resent: AtomicU64,
    duplicates_suppressed: AtomicU64,
    decisions_applied: AtomicU64,
    late_decisions: AtomicU64,
    commands_acked: AtomicU64,
    offline_opens: AtomicU64,
    offline_holds: AtomicU64,
    arm_resends: AtomicU64,
    journal_errors: AtomicU64,
    journal_corrupt: AtomicU64,
    connects: AtomicU64,
    allowlist_plates: AtomicU64,
    evidence_published: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    fn reject(&self, reason: &str) {
        // Counting cannot leave the map inconsistent, so a poisoned lock is still usable.
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason.to_string()).or_default() += 1;
    }

    fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            events_published: get(&self.events_published),
            events_resent: get(&self.events_resent),
            duplicates_suppressed: get(&self.duplicates_suppressed),
            decisions_applied: get(&self.decisions_applied),
            late_decisions: get(&self.late_decisions),
            commands_acked: get(&self.commands_acked),
            offline_opens: get(&self.offline_opens),
            offline_holds: get(&self.offline_holds),
            arm_resends: get(&self.arm_resends),
            journal_errors: get(&self.journal_errors),
            journal_corrupt: get(&self.journal_corrupt),
            connects: get(&self.connects),
            allowlist_plates: get(&self.allowlist_plates),
            evidence_published: get(&self.evidence_published),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A cheap, cloneable view of a running gateway for tests, the simulator and metrics.
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    journal: Arc<Journal>,
    stats: Arc<Stats>,
}

impl GatewayHandle {
    /// Events journaled and not yet decided.
    pub fn journal_pending(&self) -> usize {
        self.journal.pending()
    }

    pub fn counters(&self) -> Counters {
        self.stats.snapshot()
    }
}

/// Aborts the MQTT poller when the gateway is dropped without running, so a test that builds
/// and drops a gateway leaves no connection behind.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connected gateway, subscribed and ready to [`run`](Gateway::run).
pub struct Gateway {
    config: GatewayConfig,
    clock: Arc<dyn Clock>,
    reader: Arc<dyn PlateReader>,
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<ShellEvent>,
    poller: AbortOnDrop,
    journal: Arc<Journal>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("gateway_id", &self.config.gateway_id)
            .field("lot", &self.config.lot)
            .field("lanes", &self.config.lanes.len())
            .finish_non_exhaustive()
    }
}

fn subscriptions(config: &GatewayConfig) -> Vec<SubscribeFilter> {
    let mut f = Vec::new();
    for lane in &config.lanes {
        for t in [
            Topic::Frame(lane.camera.clone()),
            Topic::PlateRead(lane.camera.clone()),
            Topic::Loop(lane.loop_detector.clone()),
            Topic::BarrierState(lane.barrier.clone()),
        ] {
            f.push(mqtt::qos1(t.to_string()));
        }
        for t in filters::lane_inbox(config.lot.as_str(), lane.id.as_str()) {
            f.push(mqtt::qos1(t));
        }
    }
    f.push(mqtt::qos1(
        Topic::Allowlist(config.lot.clone(), config.gateway_id.clone()).to_string(),
    ));
    f
}

fn status(
    config: &GatewayConfig,
    online: bool,
    pending: usize,
    clock: &dyn Clock,
) -> GatewayStatus {
    GatewayStatus {
        gateway: config.gateway_id.clone(),
        lot: config.lot.clone(),
        online,
        lanes: config.lanes.iter().map(|l| l.id.clone()).collect(),
        journal_pending: u32::try_from(pending).unwrap_or(u32::MAX),
        at: clock.now(),
    }
}

fn signing_key(config: &GatewayConfig) -> Option<&[u8]> {
    config.signing_key.as_ref().map(|k| k.expose().as_slice())
}

impl Gateway {
    /// Opens the journal, connects, subscribes, and returns once the broker has acknowledged
    /// the subscriptions, so that nothing published after this returns can be missed.
    pub async fn build(
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
        reader: Arc<dyn PlateReader>,
    ) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let stats = Arc::new(Stats::default());
        let dir = config.journal_dir.clone();
        let (journal, listing) = tokio::task::spawn_blocking(move || Journal::open(dir))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        stats
            .journal_corrupt
            .fetch_add(listing.corrupt.len() as u64, Ordering::Relaxed);
        tracing::info!(
            pending = listing.events.len(),
            corrupt = listing.corrupt.len(),
            dir = %journal.dir().display(),
            "journal opened"
        );
        let journal = Arc::new(journal);

        let will_topic = Topic::GatewayStatus(config.lot.clone(), config.gateway_id.clone());
        let will = LastWill::new(
            will_topic.to_string(),
            encode(
                &status(&config, false, 0, clock.as_ref()),
                clock.now(),
                signing_key(&config),
            ),
            QoS::AtLeastOnce,
            true,
        );
        let (client, eventloop) = mqtt::connect(mqtt::options(&config, will));
        let (tx, inbox) = mpsc::unbounded_channel();
        let (subs_tx, mut subs_rx) = watch::channel(SubState::Waiting { last_error: None });
        let poller = AbortOnDrop(tokio::spawn(mqtt::poll(
            eventloop,
            client.clone(),
            subscriptions(&config),
            tx,
            subs_tx,
        )));

        let acked = tokio::time::timeout(
            config.connect_timeout,
            subs_rx.wait_for(|s| !matches!(s, SubState::Waiting { .. })),
        )
        .await
        .map(|r| r.map(|state| state.clone()));
        match acked {
            Ok(Ok(SubState::Rejected(filters))) => {
                return Err(GatewayError::SubscribeRejected(filters));
            }
            Ok(Ok(SubState::Acked | SubState::Waiting { .. })) => {}
            Ok(Err(_)) => return Err(GatewayError::ConnectionClosed),
            Err(_) => {
                let last_error = match &*subs_rx.borrow() {
                    SubState::Waiting { last_error } => last_error.clone(),
                    SubState::Acked | SubState::Rejected(_) => None,
                };
                return Err(GatewayError::Connect {
                    url: config.mqtt_url.to_string(),
                    timeout: config.connect_timeout,
                    last_error,
                });
            }
        }
        tracing::info!(client_id = %mqtt::client_id(&config), lanes = config.lanes.len(), "gateway subscribed");
        Ok(Gateway {
            config,
            clock,
            reader,
            client,
            inbox,
            poller,
            journal,
            stats,
        })
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            journal: self.journal.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Serves the lanes until `shutdown` completes, then publishes the offline status and
    /// disconnects cleanly (so the broker does not also publish the last will).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Gateway {
            config,
            clock,
            reader,
            client,
            mut inbox,
            mut poller,
            journal,
            stats,
        } = self;
        let (reads_tx, mut reads_rx) = mpsc::unbounded_channel();
        let heartbeat_every = config.heartbeat_interval;
        let mut shell = Shell::new(config, clock, reader, client, journal, stats, reads_tx);

        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The first status goes out on ConnAck; the heartbeat only repeats it.
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        let result = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                ev = inbox.recv() => match ev {
                    Some(ev) => shell.on_shell_event(ev).await,
                    None => break Err(GatewayError::ConnectionClosed),
                },
                Some(done) = reads_rx.recv() => shell.on_frame_read(done).await,
                _ = tick.tick() => shell.on_tick().await,
                _ = heartbeat.tick() => shell.heartbeat().await,
            }
        };

        tracing::info!("gateway shutting down");
        shell.publish_status(false).await;
        if let Err(e) = shell.client.disconnect().await {
            tracing::warn!(error = %e, "cannot request disconnect");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut poller.0)
            .await
            .is_err()
        {
            tracing::warn!("broker did not take the disconnect in time; closing anyway");
        }
        result
    }
}

/// A frame's read, back from its blocking thread.
#[derive(Debug)]
struct FrameDone {
    lane: usize,
    key: BurstKey,
    read: FrameRead,
    reject: Option<&'static str>,
}

struct LaneSlot {
    config: LaneConfig,
    lane: Lane,
}

struct Shell {
    config: GatewayConfig,
    clock: Arc<dyn Clock>,
    reader: Arc<dyn PlateReader>,
    client: AsyncClient,
    journal: Arc<Journal>,
    stats: Arc<Stats>,
    lanes: Vec<LaneSlot>,
    by_camera: HashMap<DeviceId, usize>,
    by_loop: HashMap<DeviceId, usize>,
    by_barrier: HashMap<DeviceId, usize>,
    by_lane: HashMap<LaneId, usize>,
    bursts: BurstCollector,
    reads_tx: mpsc::UnboundedSender<FrameDone>,
    connected: bool,
    resends: Resends,
    /// Commands already carried out, by id, with when they were issued: a replay is refused.
    commands_seen: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>>,
    /// The version of the allowlist in force: an older one (a replay) is refused.
    allowlist_version: i64,
    /// The best frame of the burst being turned into a passage (its digest and image), for
    /// [`Shell::emit`] to send as evidence when the passage is not confident.
    evidence: Option<(String, Arc<Vec<u8>>)>,
}

impl Shell {
    fn new(
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
        reader: Arc<dyn PlateReader>,
        client: AsyncClient,
        journal: Arc<Journal>,
        stats: Arc<Stats>,
        reads_tx: mpsc::UnboundedSender<FrameDone>,
    ) -> Shell {
        let mut s = Shell {
            bursts: BurstCollector::new(config.burst_timeout),
            resends: Resends::new(ResendPolicy {
                initial: config.resend_initial,
                max: config.resend_max,
            }),
            lanes: Vec::new(),
            by_camera: HashMap::new(),
            by_loop: HashMap::new(),
            by_barrier: HashMap::new(),
            by_lane: HashMap::new(),
            commands_seen: HashMap::new(),
            allowlist_version: i64::MIN,
            evidence: None,
            config,
            clock,
            reader,
            client,
            journal,
            stats,
            reads_tx,
            connected: false,
        };
        for (i, lc) in s.config.lanes.iter().enumerate() {
            s.by_camera.insert(lc.camera.clone(), i);
            s.by_loop.insert(lc.loop_detector.clone(), i);
            s.by_barrier.insert(lc.barrier.clone(), i);
            s.by_lane.insert(lc.id.clone(), i);
            s.lanes.push(LaneSlot {
                config: lc.clone(),
                lane: Lane::new(LaneSpec {
                    lot: s.config.lot.clone(),
                    lane: lc.id.clone(),
                    gateway: s.config.gateway_id.clone(),
                    direction: lc.direction,
                    dedupe_window: s.config.dedupe_window,
                    decision_timeout: s.config.decision_timeout,
                }),
            });
        }
        s
    }

    fn now(&self) -> Now {
        Now {
            at: self.clock.now(),
            mono: Instant::now(),
        }
    }

    async fn journal_op<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.journal.clone();
        // fsync can take milliseconds; keep it off the async workers.
        tokio::task::spawn_blocking(move || op(&journal))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    async fn publish<M: Message>(&self, topic: Topic, msg: &M, retain: bool) -> bool {
        let payload = encode(msg, self.clock.now(), signing_key(&self.config));
        match self
            .client
            .publish(topic.to_string(), QoS::AtLeastOnce, retain, payload)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(%topic, error = %e, "cannot queue publish");
                false
            }
        }
    }

    async fn publish_status(&self, online: bool) {
        let s = status(
            &self.config,
            online,
            self.journal.pending(),
            self.clock.as_ref(),
        );
        let topic = Topic::GatewayStatus(self.config.lot.clone(), self.config.gateway_id.clone());
        self.publish(topic, &s, true).await;
    }

    async fn heartbeat(&self) {
        if self.connected {
            self.publish_status(true).await;
        }
    }

    async fn on_shell_event(&mut self, ev: ShellEvent) {
        match ev {
            ShellEvent::Connected { session_present } => {
                self.connected = true;
                bump(&self.stats.connects);
                self.publish_status(true).await;
                let now = self.now();
                for i in 0..self.lanes.len() {
                    let slot = &self.lanes[i];
                    let topic = Topic::LaneState(self.config.lot.clone(), slot.config.id.clone());
                    let state = slot.lane.state(now);
                    self.publish(topic, &state, true).await;
                }
                self.replay_journal(session_present).await;
            }
            ShellEvent::Disconnected(reason) => {
                if self.connected {
                    tracing::warn!(%reason, "lost the broker; lanes keep their last state");
                    for i in 0..self.lanes.len() {
                        self.feed(i, Input::BrokerLost).await;
                    }
                }
                self.connected = false;
            }
            ShellEvent::Message(p) => {
                self.on_message(&p).await;
                // Acked after handling, so a crash mid-way gets the message redelivered.
                if let Err(e) = self.client.ack(&p).await {
                    tracing::warn!(error = %e, "cannot queue ack");
                }
            }
        }
    }

    /// Republishes every undecided event, and restarts each one's resend timer. Even with a
    /// resumed session (where the client also resends unacked packets) this is needed: events
    /// journaled before a restart or a lost session exist nowhere else. The server dedupes by
    /// event id.
    async fn replay_journal(&mut self, session_present: bool) {
        let listing = match self.journal_op(|j| j.list()).await {
            Ok(l) => l,
            Err(e) => {
                bump(&self.stats.journal_errors);
                tracing::error!(error = %e, "cannot list the journal for replay");
                return;
            }
        };
        self.stats
            .journal_corrupt
            .fetch_add(listing.corrupt.len() as u64, Ordering::Relaxed);
        if !listing.events.is_empty() {
            tracing::info!(
                events = listing.events.len(),
                session_present,
                "replaying journal"
            );
        }
        for mut event in listing.events {
            event.resent = true;
            let topic = Topic::Events(event.lot.clone(), event.lane.clone());
            if self.publish(topic, &event, false).await {
                bump(&self.stats.events_resent);
            }
            self.resends.sent(event.event_id, Instant::now(), unit());
        }
    }

    /// Republishes the undecided events whose resend timer ran out: a published event can still
    /// be lost (a broker restarted without persistence, a server that subscribed too late)
    /// without any reconnect of ours to replay it. Only while connected: a reconnect replays the
    /// whole journal anyway.
    async fn resend_due(&mut self) {
        if !self.connected || self.resends.is_empty() {
            return;
        }
        let due = self
            .resends
            .take_due(Instant::now(), MAX_RESENDS_PER_TICK, unit);
        if due.is_empty() {
            return;
        }
        tracing::info!(
            events = due.len(),
            pending = self.journal.pending(),
            "resending undecided events"
        );
        for id in due {
            match self.journal_op(move |j| j.read(id)).await {
                Ok(Entry::Found(mut event)) => {
                    event.resent = true;
                    let topic = Topic::Events(event.lot.clone(), event.lane.clone());
                    if self.publish(topic, &event, false).await {
                        bump(&self.stats.events_resent);
                    }
                }
                // Decided meanwhile, or never journaled: nothing to send.
                Ok(Entry::Missing) => self.resends.decided(id),
                Ok(Entry::Corrupt(_)) => {
                    bump(&self.stats.journal_corrupt);
                    self.resends.decided(id);
                }
                // Stays on the schedule: the next attempt may read it.
                Err(e) => {
                    bump(&self.stats.journal_errors);
                    tracing::error!(event_id = %id, error = %e, "cannot read journal entry to resend");
                }
            }
        }
    }

    fn decode<M: Message>(&self, p: &Publish) -> Option<M> {
        match decode::<M>(&p.payload, None) {
            Ok(d) => Some(d.body),
            Err(e) => {
                self.reject(e.reason(), &p.topic, &e.to_string());
                None
            }
        }
    }

    /// Decodes a message from the server (a decision, command or allowlist): it must carry a
    /// valid signature under this gateway's key, unless signatures are not required, in which
    /// case an unsigned one passes but a wrong signature still does not.
    fn decode_from_server<M: Message>(&self, p: &Publish) -> Option<parkpay_protocol::Decoded<M>> {
        let env = match Opened::new(&p.payload) {
            Ok(env) => env,
            Err(e) => {
                self.reject(e.reason(), &p.topic, &e.to_string());
                return None;
            }
        };
        let checked = match signing_key(&self.config) {
            Some(key) if self.config.require_signatures || env.is_signed() => env.verify(key),
            _ if self.config.require_signatures => Err(parkpay_protocol::DecodeError::Unsigned),
            _ => Ok(()),
        };
        if let Err(e) = checked {
            self.reject(e.reason(), &p.topic, &e.to_string());
            return None;
        }
        match env.body::<M>() {
            Ok(body) => Some(parkpay_protocol::Decoded {
                body,
                sent_at: env.sent_at(),
            }),
            Err(e) => {
                self.reject(e.reason(), &p.topic, &e.to_string());
                None
            }
        }
    }

    /// Whether an operator command is fresh and new: issued within [`COMMAND_WINDOW`] of our
    /// clock and not carried out before. A recorded command replayed later is refused.
    fn fresh_command(&mut self, c: &OperatorCommand, p: &Publish) -> bool {
        let now = self.clock.now();
        let window = chrono::Duration::from_std(COMMAND_WINDOW).unwrap_or(chrono::TimeDelta::MAX);
        self.commands_seen
            .retain(|_, issued| now.signed_duration_since(*issued) <= window);
        if (now.signed_duration_since(c.issued_at)).abs() > window {
            self.reject(
                "stale_command",
                &p.topic,
                "issued too far from the gateway's clock",
            );
            return false;
        }
        if self
            .commands_seen
            .insert(c.command_id, c.issued_at)
            .is_some()
        {
            self.reject("replayed_command", &p.topic, "command already carried out");
            return false;
        }
        true
    }

    fn reject(&self, reason: &'static str, topic: &str, detail: &str) {
        self.stats.reject(reason);
        tracing::warn!(%topic, reason, detail, "rejected message");
    }

    async fn on_message(&mut self, p: &Publish) {
        let topic = match Topic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => return self.reject("unknown_topic", &p.topic, &e.to_string()),
        };
        let lane_of = |map: &HashMap<DeviceId, usize>, d: &DeviceId| map.get(d).copied();
        match topic {
            Topic::PlateRead(dev) => {
                let (Some(i), Some(read)) =
                    (lane_of(&self.by_camera, &dev), self.decode::<PlateRead>(p))
                else {
                    return;
                };
                let input = Input::Reads {
                    captured_at: read.captured_at,
                    frames: vec![sanitise(read.candidates)],
                    evidence_digest: None,
                };
                self.feed(i, input).await;
            }
            Topic::Frame(dev) => {
                let (Some(i), Some(frame)) =
                    (lane_of(&self.by_camera, &dev), self.decode::<Frame>(p))
                else {
                    return;
                };
                self.on_frame(i, dev, frame).await;
            }
            Topic::Loop(dev) => {
                if let (Some(i), Some(ev)) =
                    (lane_of(&self.by_loop, &dev), self.decode::<LoopEvent>(p))
                {
                    self.feed(
                        i,
                        Input::Loop {
                            present: ev.present,
                            at: ev.at,
                        },
                    )
                    .await;
                }
            }
            Topic::BarrierState(dev) => {
                if let (Some(i), Some(r)) = (
                    lane_of(&self.by_barrier, &dev),
                    self.decode::<BarrierStateReport>(p),
                ) {
                    self.feed(i, Input::Arm(r.arm)).await;
                }
            }
            Topic::Decisions(lot, lane) => {
                if let (Some(i), Some(d)) = (
                    self.lane_index(&lot, &lane, p),
                    self.decode_from_server::<Decision>(p),
                ) {
                    self.feed(i, Input::Decision(d.body)).await;
                }
            }
            Topic::Commands(lot, lane) => {
                if let (Some(i), Some(c)) = (
                    self.lane_index(&lot, &lane, p),
                    self.decode_from_server::<OperatorCommand>(p),
                ) {
                    if self.fresh_command(&c.body, p) {
                        self.feed(i, Input::Command(c.body)).await;
                    }
                }
            }
            Topic::Allowlist(lot, _) => self.on_allowlist(&lot, p).await,
            Topic::Display(_)
            | Topic::BarrierCommand(_)
            | Topic::DeviceStatus(_)
            | Topic::Events(..)
            | Topic::Evidence(..)
            | Topic::Acks(..)
            | Topic::LaneState(..)
            | Topic::GatewayStatus(..) => self.reject(
                "unexpected_topic",
                &p.topic,
                "not a topic the gateway reads",
            ),
        }
    }

    fn lane_index(
        &self,
        lot: &parkpay_protocol::LotId,
        lane: &LaneId,
        p: &Publish,
    ) -> Option<usize> {
        let i = self.by_lane.get(lane).copied();
        if *lot != self.config.lot || i.is_none() {
            self.reject("unknown_lane", &p.topic, "lane is not served here");
            return None;
        }
        i
    }

    async fn on_allowlist(&mut self, lot: &parkpay_protocol::LotId, p: &Publish) {
        // An empty retained payload is how a retained message is deleted: nothing is allowed.
        let set = if p.payload.is_empty() {
            AllowSet::default()
        } else {
            let Some(list) = self.decode_from_server::<Allowlist>(p) else {
                return;
            };
            let list = list.body;
            if list.lot != *lot {
                return self.reject("unknown_lane", &p.topic, "allowlist for another lot");
            }
            if list.version < self.allowlist_version {
                return self.reject(
                    "stale_allowlist",
                    &p.topic,
                    "older than the allowlist in force",
                );
            }
            self.allowlist_version = list.version;
            AllowSet::new(list.plates.iter().map(String::as_str), list.version)
        };
        tracing::info!(
            plates = set.len(),
            version = set.version,
            "allowlist updated"
        );
        self.stats
            .allowlist_plates
            .store(set.len() as u64, Ordering::Relaxed);
        let set = Arc::new(set);
        for i in 0..self.lanes.len() {
            self.feed(i, Input::Allowlist(set.clone())).await;
        }
    }

    async fn on_frame(&mut self, lane: usize, dev: DeviceId, frame: Frame) {
        let key: BurstKey = (dev, frame.burst);
        let now = Instant::now();
        if self
            .bursts
            .arrive(key.clone(), frame.seq, frame.of, frame.captured_at, now)
            == Arrival::Ignore
        {
            return;
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(frame.image.as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                self.reject("bad_base64", &key.0.to_string(), &e.to_string());
                if let Some(done) = self.bursts.read(&key, FrameRead::Unreadable) {
                    self.on_burst(lane, done).await;
                }
                return;
            }
        };
        let reader = self.reader.clone();
        let roi = self.lanes[lane].config.roi;
        let tx = self.reads_tx.clone();
        tokio::spawn(async move {
            let (read, reject) =
                tokio::task::spawn_blocking(move || read_frame(&*reader, &bytes, roi))
                    .await
                    .unwrap_or((FrameRead::Unreadable, Some("reader_panicked")));
            // The receiver lives as long as the run loop; after it, the read is moot.
            let _ = tx.send(FrameDone {
                lane,
                key,
                read,
                reject,
            });
        });
    }

    async fn on_frame_read(&mut self, done: FrameDone) {
        if let Some(reason) = done.reject {
            self.reject(reason, &done.key.0.to_string(), "frame could not be read");
        }
        if let Some(burst) = self.bursts.read(&done.key, done.read) {
            self.on_burst(done.lane, burst).await;
        }
    }

    async fn on_burst(&mut self, lane: usize, burst: CompletedBurst) {
        self.evidence = burst.evidence_digest.clone().zip(burst.evidence_image);
        let input = Input::Reads {
            captured_at: burst.captured_at,
            frames: burst.frames.into_iter().map(sanitise).collect(),
            evidence_digest: burst.evidence_digest,
        };
        self.feed(lane, input).await;
        // A suppressed duplicate emitted nothing: its picture goes nowhere.
        self.evidence = None;
    }

    async fn on_tick(&mut self) {
        for burst in self.bursts.expire(Instant::now()) {
            let lane = self.by_camera.get(&burst.key.0).copied();
            if let Some(lane) = lane {
                self.on_burst(lane, burst).await;
            }
        }
        for i in 0..self.lanes.len() {
            self.feed(i, Input::Tick).await;
        }
        self.resend_due().await;
    }

    async fn feed(&mut self, i: usize, input: Input) {
        let now = self.now();
        let outputs = self.lanes[i].lane.handle(input, now);
        for o in outputs {
            self.carry_out(i, o).await;
        }
    }

    async fn carry_out(&mut self, i: usize, output: Output) {
        let lc = &self.lanes[i].config;
        match output {
            Output::Event(event) => self.emit(event).await,
            Output::Forget(id) => {
                self.resends.decided(id);
                if let Err(e) = self.journal_op(move |j| j.remove(id)).await {
                    bump(&self.stats.journal_errors);
                    tracing::error!(event_id = %id, error = %e, "cannot remove journal entry");
                }
            }
            Output::Arm(cmd) => {
                tracing::info!(lane = %lc.id, action = ?cmd.action, release = ?cmd.release, "barrier command");
                self.publish(Topic::BarrierCommand(lc.barrier.clone()), &cmd, false)
                    .await;
            }
            Output::Display(cmd) => {
                self.publish(Topic::Display(lc.display.clone()), &cmd, false)
                    .await;
            }
            Output::State(state) => {
                let topic = Topic::LaneState(self.config.lot.clone(), lc.id.clone());
                self.publish(topic, &state, true).await;
            }
            Output::Ack(ack) => {
                let topic = Topic::Acks(self.config.lot.clone(), lc.id.clone());
                if self.publish(topic, &ack, false).await && ack.ok {
                    bump(&self.stats.commands_acked);
                }
            }
            Output::Count(c) => {
                let counter = match c {
                    Count::DuplicateSuppressed => &self.stats.duplicates_suppressed,
                    Count::DecisionApplied => &self.stats.decisions_applied,
                    Count::LateDecision => &self.stats.late_decisions,
                    Count::OfflineOpen => &self.stats.offline_opens,
                    Count::OfflineHold => &self.stats.offline_holds,
                    Count::ArmResent => &self.stats.arm_resends,
                    Count::Misrouted => {
                        self.stats.reject("misrouted");
                        return;
                    }
                };
                bump(counter);
            }
        }
    }

    /// The hot path's last step: on disk first, then on the wire.
    async fn emit(&mut self, event: PassageEvent) {
        let journaled = event.clone();
        if let Err(e) = self.journal_op(move |j| j.write(&journaled)).await {
            // Publishing unjournaled is still better than dropping a passage on the floor.
            bump(&self.stats.journal_errors);
            tracing::error!(event_id = %event.event_id, error = %e, "cannot journal event; publishing anyway");
        }
        tracing::info!(
            event_id = %event.event_id,
            lane = %event.lane,
            plate = event.candidates.first().map(|c| c.plate.as_str()).unwrap_or(""),
            quality = ?event.quality,
            "passage"
        );
        let topic = Topic::Events(event.lot.clone(), event.lane.clone());
        if self.publish(topic, &event, false).await {
            bump(&self.stats.events_published);
        }
        // Until its decision arrives; also when queueing failed, which the resend then repairs.
        self.resends.sent(event.event_id, Instant::now(), unit());
        if let Some((digest, image)) = self.evidence.take() {
            self.send_evidence(&event, digest, &image).await;
        }
    }

    /// Sends the picture of a passage this gateway would not vouch for (no read, a low
    /// confidence or a contested vote), after the passage itself, so an attendant can check the
    /// plate against the car. A confident passage sends none: nobody needs to look at it.
    async fn send_evidence(&self, event: &PassageEvent, digest: String, image: &[u8]) {
        if event.quality == ReadQuality::Confident
            || event.evidence_digest.as_deref() != Some(digest.as_str())
        {
            return;
        }
        let Some(format) = image_format(image) else {
            return self.reject(
                "evidence_format",
                &event.lane.to_string(),
                "neither JPEG nor PNG",
            );
        };
        if image.len() > MAX_EVIDENCE_IMAGE {
            return self.reject(
                "evidence_too_large",
                &event.lane.to_string(),
                "the frame is larger than an evidence picture may be",
            );
        }
        let evidence = Evidence {
            event_id: event.event_id,
            lot: event.lot.clone(),
            lane: event.lane.clone(),
            gateway: event.gateway.clone(),
            captured_at: event.captured_at,
            format: format.to_string(),
            digest,
            image: base64::engine::general_purpose::STANDARD.encode(image),
        };
        let topic = Topic::Evidence(event.lot.clone(), event.lane.clone());
        if self.publish(topic, &evidence, false).await {
            bump(&self.stats.evidence_published);
        }
    }
}

/// A uniform draw from `0.0..1.0`, for the resend timer's jitter.
fn unit() -> f64 {
    rand::thread_rng().gen_range(0.0..1.0)
}

/// Drops candidates no honest reader produces, so one bad camera cannot poison a vote.
fn sanitise(mut cands: Vec<PlateCandidate>) -> Vec<PlateCandidate> {
    cands.retain(|c| c.confidence.is_finite() && !c.plate.trim().is_empty());
    for c in &mut cands {
        c.confidence = c.confidence.clamp(0.0, 1.0);
    }
    cands
}

fn read_frame(
    reader: &dyn PlateReader,
    bytes: &[u8],
    roi: Option<Roi>,
) -> (FrameRead, Option<&'static str>) {
    match image::load_from_memory(bytes) {
        Ok(img) => (
            FrameRead::Read {
                candidates: reader.read(&img, roi),
                digest: hex::encode(Sha256::digest(bytes)),
                image: Arc::new(bytes.to_vec()),
            },
            None,
        ),
        Err(_) => (FrameRead::Unreadable, Some("bad_image")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::PlateColour;

    #[tokio::test]
    async fn build_reports_an_unreachable_broker_instead_of_hanging() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let c = GatewayConfig::from_toml_str(&format!(
            r#"
gateway_id = "gw"
lot = "lot1"
mqtt_url = "mqtt://127.0.0.1:{port}"
journal_dir = "{}"
signing_key = "000102030405060708090a0b0c0d0e0f"
connect_timeout = "300ms"
[[lanes]]
id = "x1"
direction = "exit"
camera = "cam"
loop = "loop"
barrier = "arm"
display = "disp"
"#,
            dir.path().display()
        ))
        .unwrap();
        let err = Gateway::build(
            c,
            Arc::new(parkpay_protocol::SystemClock),
            Arc::new(NoFrameReader),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                GatewayError::Connect {
                    last_error: Some(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn sanitise_drops_nonsense_candidates() {
        let c = |p: &str, conf: f32| PlateCandidate {
            plate: p.into(),
            confidence: conf,
            colour: PlateColour::Blue,
        };
        let out = sanitise(vec![
            c("A1", f32::NAN),
            c(" ", 0.9),
            c("B2", 1.7),
            c("C3", 0.5),
        ]);
        assert_eq!(out, vec![c("B2", 1.0), c("C3", 0.5)]);
    }

    #[test]
    fn a_garbled_frame_is_unreadable_not_a_panic() {
        let (read, reject) = read_frame(&NoFrameReader, b"not an image", None);
        assert!(matches!(read, FrameRead::Unreadable));
        assert_eq!(reject, Some("bad_image"));
    }

    #[test]
    fn subscribes_to_hardware_lane_inboxes_and_the_allowlist() {
        let c = GatewayConfig::from_toml_str(
            r#"
gateway_id = "gw"
lot = "lot1"
mqtt_url = "mqtt://localhost:1"
journal_dir = "/tmp/x"
require_signatures = false
[[lanes]]
id = "x1"
direction = "exit"
camera = "cam"
loop = "loop"
barrier = "arm"
display = "disp"
"#,
        )
        .unwrap();
        let paths: Vec<String> = subscriptions(&c).into_iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            vec![
                "parkpay/v1/hw/cam/frame",
                "parkpay/v1/hw/cam/plate",
                "parkpay/v1/hw/loop/loop",
                "parkpay/v1/hw/arm/barrier/state",
                "parkpay/v1/lots/lot1/lanes/x1/decisions",
                "parkpay/v1/lots/lot1/lanes/x1/commands",
                "parkpay/v1/lots/lot1/gateways/gw/allowlist",
            ]
        );
    }
}
