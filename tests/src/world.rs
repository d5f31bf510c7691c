//! A whole site for a scenario: the server, one gateway serving the lot's lanes, and each lane's
//! simulated barrier hardware, all over a real broker and a real database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_gateway::reader::LearnedReader;
use parkpay_gateway::resend::ResendPolicy;
use parkpay_gateway::{Gateway, GatewayHandle};
use parkpay_protocol::{Clock, Direction, LaneId, LotId, Money, Plate, PlateColour};
use parkpay_server::app::App;
use parkpay_server::config::{HttpConfig, MqttConfig, PaymentsConfig};
use parkpay_server::{Server, ServerConfig};
use parkpay_sim::api::Api;
use parkpay_sim::demo::gateway_config;
use parkpay_sim::mqtt::{DeviceContext, MqttUrl};
use parkpay_sim::rig::{LaneConfig, LaneRig, PassageOutcome, Vehicle};
use reqwest::Url;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{unique_lot, Backend};

pub struct WorldOptions {
    pub lanes: Vec<(&'static str, Direction)>,
    pub tariff: serde_json::Value,
    pub max_attempts: i64,
    /// First payment retry delay, in seconds of the world's clock.
    pub retry_base_secs: f64,
    /// Start the lanes' simulated hardware here; off when a traffic run brings its own.
    pub rigs: bool,
    /// How long the gateway waits for the server before its offline policy decides.
    pub decision_timeout: Duration,
    /// Plain cameras sending rendered frames (read by the gateway) instead of smart cameras.
    pub frames: Option<parkpay_sim::devices::SceneCamera>,
    /// The gateway signs its events with its own key and the server requires it.
    pub signed: bool,
    /// The gateway's resend timer for undecided events; `None` keeps the usual 5 s to 60 s.
    pub resend: Option<ResendPolicy>,
    /// Deduct through WeChat Pay (a simulator's address and keys) instead of the sandbox.
    pub wechat: Option<parkpay_server::config::WechatConfig>,
    /// How long an accepted debit waits before it is asked about, in seconds of the clock.
    pub accepted_poll_secs: f64,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            lanes: vec![
                ("in-1", Direction::Entry),
                ("in-2", Direction::Entry),
                ("out-1", Direction::Exit),
                ("out-2", Direction::Exit),
            ],
            tariff: parkpay_sim::api::example_tariff(),
            max_attempts: 3,
            retry_base_secs: 0.05,
            rigs: true,
            decision_timeout: Duration::from_secs(20),
            frames: None,
            signed: true,
            resend: None,
            wechat: None,
            accepted_poll_secs: 60.0,
        }
    }
}

struct Running<H> {
    handle: H,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl<H> Running<H> {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.done).await;
    }
}

/// A running site. Drop order does not matter; call [`World::stop`] to shut down cleanly.
pub struct World {
    pub backend: Backend,
    pub lot: LotId,
    pub clock: Arc<dyn Clock>,
    pub api: Api,
    pub http: Url,
    pub client: reqwest::Client,
    /// The gateway's signing key, when the world is `signed`.
    pub gateway_key: Option<Vec<u8>>,
    /// An admin API token: `api` and `client` carry it.
    pub admin_token: String,
    /// The sandbox provider's secret (`payments.sandbox_secret`).
    pub sandbox_secret: String,
    server_config: ServerConfig,
    server: Option<Running<App>>,
    gateway: Option<Running<GatewayHandle>>,
    rigs: HashMap<String, LaneRig>,
    _journal: tempfile::TempDir,
}

async fn start_server(config: ServerConfig, clock: Arc<dyn Clock>) -> (Running<App>, Url) {
    let server = Server::build(config, clock).await.expect("server builds");
    let http = Url::parse(&format!("http://{}", server.http_addr())).expect("a valid URL");
    let app = server.app();
    let (stop, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
    });
    (
        Running {
            handle: app,
            stop,
            done,
        },
        http,
    )
}

/// An HTTP client that carries this API token on every request.
pub fn authorised_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

impl World {
    pub async fn start(opts: WorldOptions, clock: Arc<dyn Clock>) -> World {
        let backend = Backend::fresh().await;
        let lot = LotId::parse(unique_lot()).expect("a valid lot id");
        let gateway = parkpay_sim::demo::gateway_id(&lot).expect("a valid gateway id");
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let sandbox_secret = hex_string(&(0..16).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
        let mut gateway_keys = HashMap::new();
        if opts.signed {
            gateway_keys.insert(
                gateway.to_string(),
                parkpay_server::config::Secret::new(hex_string(&key)),
            );
        }
        let server_config = ServerConfig {
            database_url: backend.database_url.clone(),
            http: HttpConfig {
                bind: ([127, 0, 0, 1], 0).into(),
                ..HttpConfig::default()
            },
            // A shared broker carries other tests' lots too: serve only ours.
            mqtt: MqttConfig {
                broker: backend.mqtt_url.clone(),
                lots: Some(vec![lot.to_string()]),
                gateway_keys,
                require_signatures: opts.signed,
                ..MqttConfig::default()
            },
            payments: PaymentsConfig {
                max_attempts: opts.max_attempts,
                retry_base_secs: opts.retry_base_secs,
                poll_interval_ms: 20,
                // Tests run several servers on one database and kill some: take over quickly.
                instance_dead_secs: 1.0,
                sandbox_secret: Some(parkpay_server::config::Secret::new(sandbox_secret.clone())),
                provider: if opts.wechat.is_some() {
                    "wechat"
                } else {
                    "sandbox"
                }
                .into(),
                wechat: opts.wechat.clone(),
                accepted_poll_secs: opts.accepted_poll_secs,
                nightly_reconciliation: false,
                ..PaymentsConfig::default()
            },
            // Sign-in codes for the driver portal stay in memory, where tests read them.
            sms: parkpay_server::config::SmsConfig {
                sender: "memory".into(),
                ..Default::default()
            },
            // The default instance name, as an operator would run it: derived from the host and
            // the database, so a restarted server resumes its broker session.
            ..ServerConfig::default()
        };
        let (server, http) = start_server(server_config.clone(), clock.clone()).await;
        let (_, admin_token) = server
            .handle
            .create_token(
                "tests",
                parkpay_server::domain::Grant {
                    role: parkpay_server::domain::Role::Admin,
                    lots: None,
                },
                "tests",
            )
            .await
            .expect("an admin token");
        let client = authorised_client(&admin_token);
        let lane_config: Vec<serde_json::Value> = opts
            .lanes
            .iter()
            .map(|(id, direction)| serde_json::json!({"id": id, "direction": direction, "gateway": gateway}))
            .collect();
        let created = client
            .post(http.join("/api/lots").expect("a valid path"))
            .json(&serde_json::json!({"id": lot, "name": "Test lot", "capacity": 1000, "tariff": opts.tariff, "lanes": lane_config}))
            .send()
            .await
            .expect("lot request");
        assert_eq!(
            created.status().as_u16(),
            201,
            "creating the lot: {}",
            created.text().await.unwrap_or_default()
        );

        let journal = tempfile::tempdir().expect("a journal directory");
        let mqtt = MqttUrl::parse(&backend.mqtt_url).expect("broker URL parses");
        let ctx = DeviceContext::new(mqtt, clock.clone());
        let mut rigs = HashMap::new();
        for (name, direction) in &opts.lanes {
            let lane = LaneId::parse(*name).expect("a valid lane id");
            let mut cfg = LaneConfig::new(lot.clone(), lane.clone(), *direction);
            cfg.camera.misread_rate = 0.0;
            cfg.camera.no_read_rate = 0.0;
            if let Some(cam) = &opts.frames {
                cfg.camera.mode = parkpay_sim::devices::CameraMode::Frames(Box::new(cam.clone()));
            }
            cfg.arm.open_time = Duration::from_millis(50);
            cfg.arm.close_time = Duration::from_millis(50);
            cfg.drive_through = Duration::from_millis(20);
            cfg.open_wait = Duration::from_secs(10);
            if opts.rigs {
                rigs.insert(
                    name.to_string(),
                    LaneRig::start(&ctx, cfg).await.expect("lane devices start"),
                );
            }
        }
        let lanes: Vec<(LaneId, Direction)> = opts
            .lanes
            .iter()
            .map(|(l, d)| (LaneId::parse(*l).expect("a valid lane id"), *d))
            .collect();
        let mut gw_config = gateway_config(
            &lot,
            &lanes,
            &backend.mqtt_url,
            journal.path().to_path_buf(),
            opts.signed.then(|| key.clone()),
        )
        .expect("gateway configuration");
        gw_config.decision_timeout = opts.decision_timeout;
        if let Some(r) = opts.resend {
            gw_config.resend_initial = r.initial;
            gw_config.resend_max = r.max;
        }
        let gw = Gateway::build(
            gw_config,
            clock.clone(),
            Arc::new(LearnedReader::new().expect("the plate model loads")),
        )
        .await
        .expect("gateway builds");
        let handle = gw.handle();
        let (stop, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            gw.run(async {
                let _ = rx.await;
            })
            .await
            .expect("gateway runs");
        });
        World {
            backend,
            lot,
            clock,
            api: Api::new(&http)
                .with_token(admin_token.clone())
                .with_sandbox_secret(sandbox_secret.clone()),
            http,
            client,
            gateway_key: opts.signed.then_some(key),
            admin_token,
            sandbox_secret,
            server_config,
            server: Some(server),
            gateway: Some(Running { handle, stop, done }),
            rigs,
            _journal: journal,
        }
    }

    pub fn rig(&self, lane: &str) -> &LaneRig {
        self.rigs
            .get(lane)
            .unwrap_or_else(|| panic!("no lane {lane}"))
    }

    /// Takes a lane's hardware out of the world, so a car can stand at it while the world is
    /// changed (the server stopped or started). The caller shuts it down.
    pub fn take_rig(&mut self, lane: &str) -> LaneRig {
        self.rigs
            .remove(lane)
            .unwrap_or_else(|| panic!("no lane {lane}"))
    }

    pub fn app(&self) -> &App {
        &self.server.as_ref().expect("the server is running").handle
    }

    pub fn gateway(&self) -> &GatewayHandle {
        &self
            .gateway
            .as_ref()
            .expect("the gateway is running")
            .handle
    }

    /// The server's instance name (its MQTT client id and its charge leases).
    pub fn instance(&self) -> String {
        self.server_config.instance_name()
    }

    pub fn url(&self, path: &str) -> Url {
        self.http.join(path).expect("a valid path")
    }

    /// Stops the server (gracefully); the broker keeps its session and queues its events.
    pub async fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Starts the server again on the same database and broker, as the same instance.
    pub async fn start_server(&mut self) {
        let (server, http) = start_server(self.server_config.clone(), self.clock.clone()).await;
        self.api = Api::new(&http)
            .with_token(self.admin_token.clone())
            .with_sandbox_secret(self.sandbox_secret.clone());
        self.http = http;
        self.server = Some(server);
    }

    /// Starts the server again on the same database and broker, as a new instance: with a new
    /// MQTT session, so nothing the broker queued for the old one reaches it (as after a broker
    /// restart without persistence).
    pub async fn start_server_with_new_session(&mut self) {
        self.server_config.instance =
            Some(format!("t-{}", &Uuid::new_v4().simple().to_string()[..10]));
        self.start_server().await;
    }

    /// Stops the server (gracefully) and starts it again on the same database and broker.
    pub async fn restart_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let (server, http) = start_server(self.server_config.clone(), self.clock.clone()).await;
        self.api = Api::new(&http)
            .with_token(self.admin_token.clone())
            .with_sandbox_secret(self.sandbox_secret.clone());
        self.http = http;
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
        for (_, rig) in self.rigs.drain() {
            rig.shutdown().await;
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        self.backend.cleanup().await;
    }

    /// Registers a driver with a vehicle; with `wallet`, also a sandbox wallet of that balance
    /// (fen) and an active deduction mandate on it.
    pub async fn driver(&self, plate: &str, wallet: Option<i64>) -> Uuid {
        let driver = self
            .api
            .create_driver(&format!("driver of {plate}"), "13800000000")
            .await
            .expect("driver created");
        self.api
            .add_vehicle(driver, plate, PlateColour::Blue)
            .await
            .expect("vehicle bound");
        if let Some(balance) = wallet {
            let reference = format!("wallet-{driver}");
            self.api
                .create_wallet(&reference, Money::cny(balance))
                .await
                .expect("wallet created");
            self.api
                .create_mandate(driver, &reference)
                .await
                .expect("mandate signed");
        }
        driver
    }

    /// A car arrives at `lane`, waits for the arm (at most `bound`) and drives through if it
    /// opened, or backs out if it did not.
    pub async fn pass(&self, lane: &str, plate: &str, bound: Duration) -> PassageOutcome {
        let vehicle = Vehicle {
            plate: Plate::parse(plate).expect("a valid plate"),
            colour: PlateColour::Blue,
        };
        let rig = self.rig(lane);
        let mut p = rig.arrive(&vehicle).await.expect("the car arrives");
        if p.wait_open(bound).await {
            p.drive_through().await.expect("drives through")
        } else {
            p.back_out().await.expect("backs out")
        }
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("JSON")
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        r.text().await.expect("metrics text")
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
