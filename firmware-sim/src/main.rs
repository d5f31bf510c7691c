//! `parkpay-sim`: drive a parkpay server with simulated lanes and traffic, and print the report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use parkpay_protocol::{LotId, ScaledClock};
use parkpay_sim::demo::DemoOptions;
use parkpay_sim::{drive, MqttUrl, WorldConfig};
use reqwest::Url;

#[derive(Parser)]
#[command(
    name = "parkpay-sim",
    version,
    about = "The physical world around parkpay: lanes, cars and a ledger check"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One command, everything embedded: server, broker, gateway and traffic.
    Demo(DemoArgs),
    /// Measure the gateway's plate reader on rendered scenes.
    BenchPlates(parkpay_sim::bench::BenchPlatesArgs),
    /// Drive an external server and broker.
    Run {
        /// The server's HTTP base URL.
        #[arg(long, env = "PARKPAY_SERVER")]
        server: Url,
        /// The MQTT broker the gateway listens on.
        #[arg(long, env = "PARKPAY_MQTT", default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        #[command(flatten)]
        world: WorldArgs,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Stop after this many cars have left and print the ledger check as JSON; without it the
    /// demo runs until Ctrl-C.
    #[arg(long)]
    cars: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How much faster than real time the simulated clock runs (1440: a day per minute).
    #[arg(long, default_value_t = 1440.0)]
    speed: f64,
    /// The simulated clock's start (RFC 3339); now when left out.
    #[arg(long)]
    origin: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 0.03)]
    misread_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    no_read_rate: f64,
    /// `frames`: cameras send rendered JPEG bursts and the gateway reads the plates itself;
    /// `smart`: cameras send their own plate reads (with --misread-rate and --no-read-rate).
    #[arg(long, value_enum, default_value_t = CameraKind::Frames)]
    camera: CameraKind,
    /// Scene condition for frame cameras: clean, noise, blur, skew, light, combined, small.
    #[arg(long, default_value = "clean")]
    condition: String,
    /// Where the dashboard listens (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Keep the data in this SQLite file instead of a temporary one.
    #[arg(long)]
    database: Option<PathBuf>,
    /// Write ground truth as JSON lines here.
    #[arg(long)]
    truth_log: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CameraKind {
    Frames,
    Smart,
}

async fn run_demo(a: DemoArgs) -> anyhow::Result<()> {
    let frames = match a.camera {
        CameraKind::Smart => None,
        CameraKind::Frames => {
            let condition = parkpay_scenes::Condition::ALL
                .into_iter()
                .find(|c| c.as_str() == a.condition)
                .with_context(|| format!("--condition {:?}: use one of clean, noise, blur, skew, light, combined, small", a.condition))?;
            Some(parkpay_sim::devices::SceneCamera {
                condition,
                ..Default::default()
            })
        }
    };
    let opts = DemoOptions {
        frames,
        cars: a.cars,
        seed: a.seed,
        speed: a.speed,
        origin: a.origin,
        misread_rate: a.misread_rate,
        no_read_rate: a.no_read_rate,
        http: a.http,
        database: a.database,
        truth_log: a.truth_log,
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let outcome = parkpay_sim::demo::run_demo(
        opts,
        |url| eprintln!("parkpay demo running: dashboard {url}  (Ctrl-C to stop)"),
        ctrl_c,
    )
    .await
    .context("the demo failed")?;
    if let Some(o) = outcome {
        eprintln!(
            "decision latency over {} decisions: p50 <= {:.1} ms, p99 <= {:.1} ms",
            o.decisions,
            o.latency_p50 * 1000.0,
            o.latency_p99 * 1000.0
        );
        println!("{}", serde_json::to_string(&o.report)?);
        if o.report.mismatches > 0 {
            bail!(
                "{} cars were not treated as the tariff says",
                o.report.mismatches
            );
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct WorldArgs {
    /// The lot whose lanes (in-1, in-2, out-1, out-2) are simulated.
    #[arg(long, default_value = "lot1")]
    lot: String,
    #[arg(long, default_value_t = 40)]
    cars: u32,
    /// Seeds plates, stays and camera errors; use a new one for each run on the same database.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How much faster than real time the simulated clock runs (1440: a day per minute).
    #[arg(long, default_value_t = 1440.0)]
    speed: f64,
    /// The simulated clock's start (RFC 3339); now when left out.
    #[arg(long)]
    origin: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 0.03)]
    misread_rate: f64,
    #[arg(long, default_value_t = 0.02)]
    no_read_rate: f64,
    /// Write ground truth as JSON lines here.
    #[arg(long)]
    truth_log: Option<PathBuf>,
    /// Create the lot with the example tariff if the server does not know it.
    #[arg(long)]
    create_lot: bool,
    /// Exit with an error when the report has mismatches.
    #[arg(long)]
    strict: bool,
}

impl WorldArgs {
    fn world(&self) -> anyhow::Result<WorldConfig> {
        let lot = LotId::parse(self.lot.clone()).context("--lot")?;
        let mut w = WorldConfig::four_lanes(lot)?;
        w.traffic.cars = self.cars;
        w.traffic.seed = self.seed;
        w.misread_rate = self.misread_rate;
        w.no_read_rate = self.no_read_rate;
        w.truth_log = self.truth_log.clone();
        w.create_lot = self.create_lot;
        Ok(w)
    }

    fn clock(&self) -> Arc<ScaledClock> {
        Arc::new(ScaledClock::new(
            self.origin.unwrap_or_else(Utc::now),
            self.speed,
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(demo) => run_demo(demo).await,
        // Seconds of CPU-bound work: off the async workers.
        Command::BenchPlates(args) => {
            tokio::task::spawn_blocking(move || parkpay_sim::bench::bench_plates(&args)).await?
        }
        Command::Run {
            server,
            mqtt,
            world,
        } => {
            let mqtt = MqttUrl::parse(&mqtt).context("--mqtt")?;
            let report = drive(world.world()?, server, mqtt, world.clock()).await?;
            println!("{}", serde_json::to_string(&report)?);
            if world.strict && report.mismatches > 0 {
                bail!(
                    "{} cars were not treated as the tariff says",
                    report.mismatches
                );
            }
            Ok(())
        }
    }
}
