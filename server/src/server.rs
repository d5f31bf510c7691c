//! Assembling and running the server: `Server::build` binds its sockets (port 0 allowed),
//! migrates, starts or connects to the broker and returns once the MQTT subscriptions are
//! acknowledged; `run` serves until shutdown, then drains in-flight work within a bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::Clock;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppSettings};
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::config::{hex_decode, ServerConfig};
use crate::ingest;
use crate::keys::{KeyRing, SigningOutbound};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::mqtt::{self, MqttError, MqttOutbound};
use crate::payments::{self, PaymentProvider, SandboxProvider, WorkerSettings};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("embedded broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] MqttError),
    #[error("cannot bind HTTP to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

pub struct Server {
    app: App,
    listener: TcpListener,
    http_addr: SocketAddr,
    mqtt_url: String,
    mqtt_client: rumqttc::AsyncClient,
    connected: Arc<AtomicBool>,
    /// Stops the background loops and the payment worker.
    cancel: CancellationToken,
    /// Stops ingest, which then drains the events in hand.
    stop_ingest: CancellationToken,
    ingest: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    http: crate::config::HttpConfig,
    _broker: Option<EmbeddedBroker>,
}

impl Server {
    pub async fn build(config: ServerConfig, clock: Arc<dyn Clock>) -> Result<Server, ServerError> {
        config.validate()?;
        let store = store::connect(&config.database_url).await?;
        let listener = TcpListener::bind(config.http.bind)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http.bind,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.http.bind,
            source,
        })?;

        let broker = if config.mqtt.broker == "embedded" {
            Some(EmbeddedBroker::start(config.mqtt.embedded_bind)?)
        } else {
            None
        };
        let mqtt_url = broker
            .as_ref()
            .map(EmbeddedBroker::url)
            .unwrap_or_else(|| config.mqtt.broker.clone());
        let instance = config.instance_name();
        let mut opts = mqtt::options(&mqtt_url, &format!("parkpay-{instance}"))?;
        if let (Some(u), Some(p)) = (&config.mqtt.username, &config.mqtt.password) {
            opts.set_credentials(u.clone(), p.expose().to_string());
        }
        let subscriptions = mqtt::server_subscriptions(
            config.mqtt.shared_subscription,
            config.mqtt.lots.as_deref(),
        );
        let (client, eventloop, early) = mqtt::connect(opts, subscriptions.clone()).await?;

        let metrics = Arc::new(Metrics::new());
        let public_url = config
            .http
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        let keys = Arc::new(KeyRing::new(
            configured_keys(&config),
            store.clone(),
            config.mqtt.require_signatures,
        ));
        let provider: Arc<dyn PaymentProvider> = match &config.payments.wechat {
            Some(w) if config.payments.provider == "wechat" => Arc::new(
                crate::wechat::WechatProvider::new(
                    &crate::config::WechatConfig {
                        // A path is this server's own, at its public address.
                        notify_url: if w.notify_url.starts_with('/') {
                            format!("{}{}", public_url.trim_end_matches('/'), w.notify_url)
                        } else {
                            w.notify_url.clone()
                        },
                        ..w.clone()
                    },
                    store.clone(),
                    clock.clone(),
                )
                .map_err(|e| crate::config::ConfigError(e.to_string()))?,
            ),
            _ => Arc::new(
                SandboxProvider::new(
                    store.clone(),
                    clock.clone(),
                    Duration::from_millis(config.payments.sandbox_latency_ms),
                )
                .with_faults(
                    config.payments.sandbox_fault_rate,
                    Duration::from_millis(config.payments.sandbox_late_ms),
                ),
            ),
        };
        let (published, marks) = crate::app::Published::channel();
        let app = App {
            store: store.clone(),
            clock: clock.clone(),
            outbound: Arc::new(SigningOutbound {
                inner: Arc::new(MqttOutbound::new(client.clone())),
                keys: keys.clone(),
            }),
            keys,
            live: Live::new(),
            metrics,
            config: Arc::default(),
            published,
            charges_due: Arc::new(Notify::new()),
            allowlists_due: Arc::new(Notify::new()),
            provider: provider.clone(),
            settings: Arc::new(AppSettings {
                public_url,
                limits: config.ingest.limits(),
                secure_cookies: config.http.secure_cookies,
                sandbox_secret: (config.payments.provider == "sandbox")
                    .then(|| config.payments.sandbox_secret.clone())
                    .flatten()
                    .map(|s| s.expose().to_string()),
            }),
            portal: Arc::new(crate::portal::PortalSettings::from_config(&config.sms)),
        };

        let cancel = CancellationToken::new();
        let stop_ingest = CancellationToken::new();
        let connected = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel(1024);
        for p in early {
            // Capacity is 1024 and nothing has been sent yet; a persistent session rarely holds more.
            let _ = tx.try_send(p);
        }
        let mut tasks = vec![
            mqtt::spawn_event_loop(
                eventloop,
                client.clone(),
                subscriptions,
                tx,
                connected.clone(),
            ),
            tokio::spawn(resend_outbox(app.clone(), cancel.clone())),
            tokio::spawn(publish_allowlists(app.clone(), cancel.clone())),
        ];
        tasks.push(tokio::spawn(crate::evidence::run_purge(
            app.clone(),
            config.evidence.clone(),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(crate::app::Published::run(
            marks,
            app.store.clone(),
            app.clock.clone(),
            cancel.clone(),
        )));
        if broker.is_none() {
            // An external broker may drop messages at its queue limits: watch its count.
            let mut o = mqtt::options(&mqtt_url, &format!("parkpay-{instance}-sys"))?;
            if let (Some(u), Some(p)) = (&config.mqtt.username, &config.mqtt.password) {
                o.set_credentials(u.clone(), p.expose().to_string());
            }
            tasks.push(tokio::spawn(watch_broker_drops(o, app.clone())));
        }
        tasks.shrink_to_fit();
        let ingest = tokio::spawn(ingest::process(
            app.clone(),
            client.clone(),
            rx,
            stop_ingest.clone(),
        ));

        let p = &config.payments;
        let settings = WorkerSettings {
            instance: instance.clone(),
            max_attempts: p.max_attempts,
            retry_base: ServerConfig::secs(p.retry_base_secs),
            accepted_poll: ServerConfig::secs(p.accepted_poll_secs),
            poll_interval: Duration::from_millis(p.poll_interval_ms),
            lease: ServerConfig::secs(p.lease_secs),
            beat_interval: ServerConfig::secs(p.instance_dead_secs / 5.0),
            dead_after: ServerConfig::secs(p.instance_dead_secs),
        };
        tasks.push(tokio::spawn(payments::run_liveness(
            app.clone(),
            settings.clone(),
            cancel.clone(),
        )));
        if p.nightly_reconciliation {
            tasks.push(tokio::spawn(crate::money::run_nightly(
                app.clone(),
                Duration::from_secs(600),
                cancel.clone(),
            )));
        }
        let worker = tokio::spawn(payments::run_worker(
            app.clone(),
            provider,
            settings,
            cancel.clone(),
        ));
        tracing::info!(http = %http_addr, mqtt = %mqtt_url, db = app.store.backend(), %instance, "parkpay server ready");
        Ok(Server {
            app,
            listener,
            http_addr,
            mqtt_url,
            mqtt_client: client,
            connected,
            cancel,
            stop_ingest,
            ingest: Some(ingest),
            tasks,
            worker: Some(worker),
            http: config.http.clone(),
            _broker: broker,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The broker URL this server uses (the embedded one's, when embedded).
    pub fn mqtt_url(&self) -> &str {
        &self.mqtt_url
    }

    pub fn app(&self) -> App {
        self.app.clone()
    }

    /// Serves until `shutdown` resolves, then stops in order: HTTP stops accepting; ingest stops
    /// taking events, finishes and acknowledges those in hand (bounded); the payment worker
    /// finishes the charges in hand (bounded); then the broker connection closes. What was not
    /// taken stays with the broker for the next start.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let router = crate::http::router(self.app.clone(), self.connected.clone(), &self.http);
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        self.stop_ingest.cancel();
        if let Some(i) = self.ingest.take() {
            if tokio::time::timeout(Duration::from_secs(20), i)
                .await
                .is_err()
            {
                tracing::warn!("ingest did not drain within 20 s");
            }
        }
        self.cancel.cancel();
        if let Some(w) = self.worker.take() {
            if tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .is_err()
            {
                tracing::warn!("payment worker did not stop within 5 s");
            }
        }
        let _ = self.mqtt_client.disconnect().await;
        for t in &self.tasks {
            t.abort();
        }
        self.connected.store(false, Ordering::Relaxed);
        served.map_err(ServerError::Http)
    }
}

fn configured_keys(config: &ServerConfig) -> std::collections::HashMap<String, Vec<u8>> {
    config
        .mqtt
        .gateway_keys
        .iter()
        // validate() checked every key is hex.
        .filter_map(|(gw, k)| hex_decode(k.expose()).map(|k| (gw.clone(), k)))
        .collect()
}

/// Follows the broker's count of dropped messages (Mosquitto's `$SYS` topic) on a connection of
/// its own, so a broker that refuses `$SYS` subscriptions (or has none) costs nothing but this
/// connection: it is tried again every minute, quietly.
async fn watch_broker_drops(mut opts: rumqttc::MqttOptions, app: App) {
    use rumqttc::{Event, Packet, QoS};
    opts.set_clean_session(true);
    loop {
        let (client, mut el) = rumqttc::AsyncClient::new(opts.clone(), 16);
        if client
            .subscribe(mqtt::BROKER_DROPPED, QoS::AtMostOnce)
            .await
            .is_ok()
        {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        crate::ingest::broker_dropped(&app, &p.payload)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "not following the broker's dropped-message count");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// Republishes decisions committed but not handed to the broker (a crash between the two, or
/// a broker that was down). A row is sent again only when it was still unmarked on the previous
/// pass too, 2 s of real time earlier, so a decision whose mark is merely queued (marks are
/// batched) is not sent twice, whatever pace the clock runs at.
async fn resend_outbox(app: App, cancel: CancellationToken) {
    let mut waiting: std::collections::HashSet<uuid::Uuid> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let Ok(rows) = app.store.unpublished(app.clock.now(), 100).await else {
            continue;
        };
        let mut sent = Vec::new();
        let mut still = std::collections::HashSet::new();
        for m in rows {
            if !waiting.contains(&m.id) {
                still.insert(m.id);
                continue;
            }
            if app
                .outbound
                .publish(&m.topic, m.payload.clone(), false)
                .await
                .is_ok()
            {
                sent.push(m.id);
            } else {
                still.insert(m.id);
            }
        }
        waiting = still;
        if !sent.is_empty() {
            let _ = app.store.mark_published(&sent, app.clock.now()).await;
        }
    }
}

/// Allowlists are recomputed at most this often after a wake-up (every entry wakes them).
const ALLOWLIST_DEBOUNCE: Duration = Duration::from_secs(1);

/// Keeps every gateway's retained allowlist current: the plates it may let out on its own when
/// it cannot reach us ([`App::offline_plates`]).
/// Only gateways that serve a configured lane of the lot get one, signed with their key: a
/// gateway that merely announces itself gets nothing.
async fn publish_allowlists(app: App, cancel: CancellationToken) {
    let mut published: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    loop {
        let started = std::time::Instant::now();
        // Several gateways of one lot get the same list: compute it once per pass.
        let mut lists: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for gw in app.live.gateways().into_iter().filter(|g| g.online) {
            let (Ok(lot), Ok(gateway)) = (
                parkpay_protocol::LotId::parse(gw.lot),
                parkpay_protocol::GatewayId::parse(gw.gateway),
            ) else {
                continue;
            };
            let serves = app
                .store
                .lanes(&lot)
                .await
                .is_ok_and(|lanes| lanes.iter().any(|l| l.gateway == gateway));
            if !serves {
                continue;
            }
            let plates = match lists.get(lot.as_str()) {
                Some(p) => p.clone(),
                None => {
                    let Ok(p) = app.offline_plates(&lot, 50_000).await else {
                        continue;
                    };
                    lists.insert(lot.to_string(), p.clone());
                    p
                }
            };
            let key = format!("{lot}/{gateway}");
            if published.get(&key) == Some(&plates) {
                continue;
            }
            let list = parkpay_protocol::Allowlist {
                lot: lot.clone(),
                plates: plates.clone(),
                version: app.clock.now().timestamp_millis(),
            };
            let topic = parkpay_protocol::Topic::Allowlist(lot, gateway).to_string();
            let payload = parkpay_protocol::encode(&list, app.clock.now(), None);
            // Signed for the gateway on the way out (SigningOutbound).
            if app.outbound.publish(&topic, payload, true).await.is_ok() {
                published.insert(key, plates);
            }
        }
        let took = started.elapsed();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = app.allowlists_due.notified() => {
                // Entries wake this at the rate cars arrive: gather a burst into one refresh,
                // and keep refreshing to at most ~5 % of the time (a big lot's list costs more).
                let pause = ALLOWLIST_DEBOUNCE.max(took * 20);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
