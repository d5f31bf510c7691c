//! The one-command demo: the whole system in one process on embedded defaults. The server runs
//! with its embedded broker and a fresh SQLite file, one gateway serves the four lanes of one lot,
//! the lanes' hardware is simulated, and traffic flows on a compressed clock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_gateway::reader::PureReader;
use parkpay_gateway::{
    Gateway, GatewayConfig, GatewayError, LaneConfig as GwLane, MqttUrl as GwMqttUrl,
};
use parkpay_protocol::{Clock, Direction, GatewayId, LaneId, LotId, ScaledClock};
use parkpay_server::config::{HttpConfig, MqttConfig, PaymentsConfig, Secret};
use parkpay_server::domain::{Grant, Role};
use parkpay_server::tariff::Tariff;
use parkpay_server::{Server, ServerConfig, ServerError};
use reqwest::Url;
use tokio::sync::oneshot;

use crate::api::example_tariff;
use crate::observer::DecisionObserver;
use crate::reference_tariff;
use crate::rig::LaneDeviceIds;
use crate::tally::{Snapshot, Tally};
use crate::{drive, MqttUrl, Report, SimError, WorldConfig};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("server: {0}")]
    Server(#[from] ServerError),
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this many cars have left; run until interrupted when `None`.
    pub cars: Option<u32>,
    pub seed: u64,
    /// Simulated seconds per real second (1440: a day per minute).
    pub speed: f64,
    pub origin: Option<DateTime<Utc>>,
    pub misread_rate: f64,
    pub no_read_rate: f64,
    pub http: SocketAddr,
    /// SQLite file to use; a fresh temporary one when `None`.
    pub database: Option<PathBuf>,
    pub truth_log: Option<PathBuf>,
    /// Plain cameras sending rendered frames for the gateway to read; smart cameras when `None`.
    pub frames: Option<crate::devices::SceneCamera>,
    /// Live counts of the run, and the decision latency measured at the lane side.
    pub tally: Arc<Tally>,
}

/// What a finished demo run measured.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub report: Report,
    /// The live counts at the end of the run, with the exact decision latency quantiles.
    pub tally: Snapshot,
}

/// The demo's operator account, made fresh for each run.
#[derive(Debug, Clone)]
pub struct DemoLogin {
    pub username: String,
    pub password: String,
}

/// A random secret for the demo's keys and passwords.
fn secret(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Runs the demo. `on_ready` gets the dashboard URL and the operator sign-in as soon as the
/// server listens.
pub async fn run_demo(
    opts: DemoOptions,
    on_ready: impl FnOnce(&Url, &DemoLogin),
    interrupted: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<DemoOutcome>, DemoError> {
    let dir =
        tempfile::tempdir().map_err(|e| DemoError::Setup(format!("temporary directory: {e}")))?;
    let db = opts
        .database
        .clone()
        .unwrap_or_else(|| dir.path().join("parkpay-demo.db"));
    let sandbox_secret = secret(16);
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(
        opts.origin.unwrap_or_else(Utc::now),
        opts.speed,
    ));
    let config = ServerConfig {
        database_url: format!("sqlite://{}", db.display()),
        http: HttpConfig {
            bind: opts.http,
            ..HttpConfig::default()
        },
        mqtt: MqttConfig {
            broker: "embedded".into(),
            embedded_bind: ([127, 0, 0, 1], 0).into(),
            ..MqttConfig::default()
        },
        payments: PaymentsConfig {
            retry_base_secs: 600.0,
            poll_interval_ms: 50,
            sandbox_secret: Some(Secret::new(sandbox_secret.clone())),
            ..PaymentsConfig::default()
        },
        instance: Some("demo".into()),
        ..ServerConfig::default()
    };
    let server = Server::build(config, clock.clone()).await?;
    let http = Url::parse(&format!("http://{}/", server.http_addr()))
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let mqtt_url = server.mqtt_url().to_string();
    // The demo sets itself up the way an operator would with the administration commands: an
    // admin account to sign in with, an API token for the simulated site's integration, and a
    // signing key for its gateway.
    let lot = LotId::parse("lot1").map_err(SimError::from)?;
    let app = server.app();
    let setup = |e: parkpay_server::app::AppError| DemoError::Setup(e.to_string());
    let admin = Grant {
        role: Role::Admin,
        lots: None,
    };
    // A demo database given with --database keeps the account of an earlier run, whose password
    // is not known any more: this run then signs in under a new name.
    let mut login = DemoLogin {
        username: "demo".into(),
        password: secret(8),
    };
    loop {
        match app
            .create_account(&login.username, &login.password, admin.clone(), "demo")
            .await
        {
            Ok(_) => break,
            Err(parkpay_server::app::AppError::Conflict(_)) => {
                login.username = format!("demo-{}", secret(3));
            }
            Err(e) => return Err(setup(e)),
        }
    }
    let (_, api_token) = app
        .create_token("simulator", admin, "demo")
        .await
        .map_err(setup)?;
    let gateway_key = app
        .add_gateway_key(&gateway_id(&lot)?, true, "demo")
        .await
        .map_err(setup)?;
    on_ready(&http, &login);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async {
        let _ = server_stopped.await;
    }));

    let mut world = WorldConfig::four_lanes(lot.clone())?;
    world.api_token = Some(api_token);
    world.sandbox_secret = Some(sandbox_secret);
    world.create_lot = true;
    world.traffic.seed = opts.seed;
    world.traffic.cars = opts.cars.unwrap_or(100_000);
    world.misread_rate = opts.misread_rate;
    world.no_read_rate = opts.no_read_rate;
    world.truth_log = opts.truth_log.clone();
    world.frames = opts.frames.clone();
    world.tally = opts.tally.clone();
    let tariff: Tariff = serde_json::from_value(example_tariff())
        .map_err(|e| DemoError::Setup(format!("example tariff: {e}")))?;
    // Ground truth is priced by the reference reading of the tariff, not by the server's engine,
    // so the report's mismatches also catch a pricing bug.
    world.fee = Some(reference_tariff::fee_fn(tariff));

    let key = parkpay_server::config::hex_decode(&gateway_key)
        .ok_or_else(|| DemoError::Setup("the gateway key is not hex".into()))?;
    let gw_config = gateway_config(
        &lot,
        &world.lanes,
        &mqtt_url,
        dir.path().join("journal"),
        Some(key),
    )?;
    let gateway = Gateway::build(gw_config, clock.clone(), Arc::new(PureReader::new())).await?;
    let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
    let gateway_task = tokio::spawn(gateway.run(async {
        let _ = gateway_stopped.await;
    }));

    let mqtt = MqttUrl::parse(&mqtt_url)?;
    let observer =
        DecisionObserver::start(&mqtt, &lot, opts.tally.clone(), Duration::from_secs(10)).await?;
    let outcome = tokio::select! {
        r = drive(world, http.clone(), mqtt, clock) => Some(r?),
        _ = interrupted => None,
    };
    observer.stop().await;
    let outcome = outcome.map(|report| DemoOutcome {
        report,
        tally: opts.tally.snapshot(),
    });
    let _ = stop_gateway.send(());
    let _ = gateway_task.await;
    let _ = stop_server.send(());
    let _ = server_task.await;
    Ok(outcome)
}

/// A gateway configuration serving `lanes` of `lot`, with the simulator's device-naming rule
/// (`{lot}-{lane}-cam`, `-loop`, `-arm`, `-disp`).
/// The id of the simulated site's gateway: the lot's lanes are configured as served by it.
pub fn gateway_id(lot: &LotId) -> Result<GatewayId, SimError> {
    Ok(GatewayId::parse(format!("gw-{lot}"))?)
}

/// With `key`, the gateway signs its events and requires the server's messages signed; without,
/// it runs unsigned (a trial setting the server must also allow).
pub fn gateway_config(
    lot: &LotId,
    lanes: &[(LaneId, Direction)],
    mqtt_url: &str,
    journal_dir: PathBuf,
    key: Option<Vec<u8>>,
) -> Result<GatewayConfig, DemoError> {
    let lanes = lanes
        .iter()
        .map(|(lane, direction)| {
            let ids = LaneDeviceIds::new(lot, lane)?;
            Ok(GwLane {
                id: lane.clone(),
                direction: *direction,
                camera: ids.camera,
                loop_detector: ids.loop_detector,
                barrier: ids.arm,
                display: ids.display,
                roi: None,
            })
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    Ok(GatewayConfig {
        gateway_id: gateway_id(lot)?,
        lot: lot.clone(),
        mqtt_url: GwMqttUrl::parse(mqtt_url).map_err(DemoError::Setup)?,
        username: None,
        password: None,
        require_signatures: key.is_some(),
        signing_key: key.map(parkpay_gateway::Secret::new),
        journal_dir,
        dedupe_window: Duration::from_secs(60),
        decision_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_secs(10),
        burst_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_secs(10),
        resend_initial: Duration::from_secs(5),
        resend_max: Duration::from_secs(60),
        lanes,
    })
}
