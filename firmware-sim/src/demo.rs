//! The one-command demo: the whole system in one process on embedded defaults. The server runs
//! with its embedded broker and a fresh SQLite file, one gateway serves the four lanes of one lot,
//! the lanes' hardware is simulated, and traffic flows on a compressed clock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkpay_gateway::reader::LearnedReader;
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
    /// Deduct through WeChat Pay (the project's in-process WeChat Pay simulator) instead of the
    /// sandbox wallets; the run ends by reconciling each finished day's bill.
    pub wechat: bool,
}

/// What a finished demo run measured.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub report: Report,
    /// The live counts at the end of the run, with the exact decision latency quantiles.
    pub tally: Snapshot,
    /// With WeChat Pay: each finished day's bill reconciled against the ledger.
    pub reconciliations: Vec<parkpay_server::domain::ReconRun>,
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
    let started_at = opts.origin.unwrap_or_else(Utc::now);
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(started_at, opts.speed));
    let wechat = if opts.wechat {
        Some(start_wechat(dir.path(), clock.clone()).await?)
    } else {
        None
    };
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
            provider: if wechat.is_some() {
                "wechat"
            } else {
                "sandbox"
            }
            .into(),
            wechat: wechat.as_ref().map(|(_, c)| c.clone()),
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
    if let Some((sim, _)) = &wechat {
        let sim = sim.clone();
        world.enrol = Some(crate::world::Enrol(Arc::new(
            move |plate, colour, openid, balance| sim.enrol(plate, colour, openid, balance),
        )));
    } else {
        world.sandbox_secret = Some(sandbox_secret);
    }
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
    let gateway = Gateway::build(
        gw_config,
        clock.clone(),
        Arc::new(LearnedReader::new().map_err(|e| DemoError::Setup(e.to_string()))?),
    )
    .await?;
    let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
    let gateway_task = tokio::spawn(gateway.run(async {
        let _ = gateway_stopped.await;
    }));

    let mqtt = MqttUrl::parse(&mqtt_url)?;
    let observer =
        DecisionObserver::start(&mqtt, &lot, opts.tally.clone(), Duration::from_secs(10)).await?;
    let outcome = tokio::select! {
        r = drive(world, http.clone(), mqtt, clock.clone()) => Some(r?),
        _ = interrupted => None,
    };
    observer.stop().await;
    let mut reconciliations = Vec::new();
    if let (Some(_), Some(_)) = (&wechat, &outcome) {
        reconciliations = reconcile_days(&app, clock.as_ref(), opts.speed, started_at).await;
    }
    let outcome = outcome.map(|report| DemoOutcome {
        report,
        tally: opts.tally.snapshot(),
        reconciliations,
    });
    let _ = stop_gateway.send(());
    let _ = gateway_task.await;
    let _ = stop_server.send(());
    let _ = server_task.await;
    Ok(outcome)
}

/// Starts the in-process WeChat Pay simulator with a fresh merchant key (the simulator signs
/// with its public key and its platform certificate in turn, as during a migration) and writes
/// the key files the server's `[payments.wechat]` names.
async fn start_wechat(
    dir: &std::path::Path,
    clock: Arc<dyn Clock>,
) -> Result<
    (
        Arc<parkpay_wechat_sim::WechatSim>,
        parkpay_server::config::WechatConfig,
    ),
    DemoError,
> {
    use parkpay_wechat_sim::{Merchant, SignWith, SimOptions, WechatSim};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let setup = |what: &str, e: &dyn std::fmt::Display| DemoError::Setup(format!("{what}: {e}"));
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
        .map_err(|e| setup("merchant key", &e))?;
    let apiv3_key = secret(16);
    let (mchid, appid, serial) = (
        "1900000109",
        "wxdemo0000000001",
        "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
    );
    let mut o = SimOptions::new(Merchant {
        mchid: mchid.into(),
        appid: appid.into(),
        merchant_serial: serial.into(),
        merchant_public_key_pem: key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| setup("merchant key", &e))?,
        apiv3_key: apiv3_key.clone(),
    });
    o.sign_with = SignWith::Both;
    o.notify_retry_scale = 0.01;
    // No advance (垫资): a driver short of money becomes a debt, as with the sandbox.
    o.advance = false;
    o.now = Arc::new(move || clock.now());
    let sim = WechatSim::start(o)
        .await
        .map_err(|e| setup("WeChat Pay simulator", &e))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, DemoError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| setup(name, &e))?;
        Ok(p)
    };
    let config = parkpay_server::config::WechatConfig {
        base_url: sim.base_url(),
        mchid: mchid.into(),
        appid: appid.into(),
        merchant_serial: serial.into(),
        merchant_private_key_file: write(
            "apiclient_key.pem",
            &key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| setup("merchant key", &e))?,
        )?,
        apiv3_key: Some(Secret::new(apiv3_key)),
        apiv3_key_file: None,
        public_key_file: Some(write("pub_key.pem", &sim.public_key_pem())?),
        public_key_id: Some(sim.public_key_id()),
        platform_certificate_file: Some(write(
            "platform_cert.pem",
            &sim.platform_certificate_pem(),
        )?),
        notify_url: "/api/providers/wechat/notify".into(),
        timeout_ms: 5000,
        service_cache_secs: 60,
    };
    Ok((Arc::new(sim), config))
}

/// Reconciles every day of the run whose bill WeChat Pay has published (10:00 China Standard
/// Time the next day), waiting up to two real minutes of the scaled clock for the last one.
async fn reconcile_days(
    app: &parkpay_server::app::App,
    clock: &dyn Clock,
    speed: f64,
    from: DateTime<Utc>,
) -> Vec<parkpay_server::domain::ReconRun> {
    let cst = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    let mut day = from.with_timezone(&cst).date_naive();
    let last = clock.now().with_timezone(&cst).date_naive();
    let mut runs = Vec::new();
    while day <= last {
        let (_, end) = parkpay_server::payments::bill_day_bounds(day);
        let ready = end + chrono::Duration::hours(10);
        let wait = (ready - clock.now()).num_milliseconds().max(0) as f64 / speed.max(1.0);
        if wait > 120_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
        match app.reconcile(day, "demo").await {
            Ok(run) => runs.push(run),
            Err(e) => tracing::warn!(%day, error = %e, "reconciliation failed"),
        }
        day = match day.succ_opt() {
            Some(d) => d,
            None => break,
        };
    }
    runs
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
