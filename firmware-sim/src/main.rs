//! `parkpay-sim`: drive a parkpay server with simulated lanes and traffic, and print the report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parkpay_protocol::{LotId, Money, ScaledClock};
use parkpay_sim::demo::{DemoOptions, DemoOutcome};
use parkpay_sim::tally::ms;
use parkpay_sim::{drive, MqttUrl, Report, Tally, WorldConfig};
use reqwest::Url;
use serde::Serialize;

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
    /// Offer passage events at a fixed rate and time every decision, with the floor beside it.
    BenchLoad(parkpay_sim::bench_load::BenchLoadArgs),
    /// Plot decision p99 against offered rate from `bench-load --append` results (SVG).
    BenchPlot(parkpay_sim::bench_plot::BenchPlotArgs),
    /// Measure what pricing a stay costs, against the per-unit reference, in one run.
    BenchQuote(parkpay_sim::bench_quote::BenchQuoteArgs),
    /// Real processes (Mosquitto, servers, gateway) under injected faults, then the ledger
    /// checked against ground truth.
    Chaos(parkpay_sim::chaos::ChaosArgs),
    /// Drive an external server and broker.
    Run {
        /// The server's HTTP base URL.
        #[arg(long, env = "PARKPAY_SERVER")]
        server: Url,
        /// The MQTT broker the gateway listens on.
        #[arg(long, env = "PARKPAY_MQTT", default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// An admin API token (`parkpay-server token add --role admin`).
        #[arg(long, env = "PARKPAY_API_TOKEN")]
        token: String,
        /// The server's sandbox provider secret (`payments.sandbox_secret`), to settle QR
        /// payments as the provider would.
        #[arg(long, env = "PARKPAY_SANDBOX_SECRET")]
        sandbox_secret: Option<String>,
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
    /// How stays are paid: `sandbox` (the server's own wallets) or `wechat` (deduction through
    /// the in-process WeChat Pay simulator; the run ends by reconciling each finished day).
    #[arg(long, value_enum, default_value_t = PaymentsKind::Sandbox)]
    payments: PaymentsKind,
    /// Show the log here instead of the progress bar (the log otherwise goes to a file, whose
    /// path the demo prints when it starts).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PaymentsKind {
    Sandbox,
    Wechat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CameraKind {
    Frames,
    Smart,
}

async fn run_demo(a: DemoArgs) -> anyhow::Result<()> {
    let log = if a.verbose {
        log_to_terminal();
        None
    } else {
        let path = std::env::temp_dir().join(format!(
            "parkpay-demo-{}-{}.log",
            Utc::now().format("%Y%m%d-%H%M%S"),
            std::process::id()
        ));
        log_to_file(&path)?;
        Some(path)
    };
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
    let tally = Arc::new(Tally::new());
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
        tally: tally.clone(),
        wechat: matches!(a.payments, PaymentsKind::Wechat),
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Live on a terminal; a line every few seconds in a pipe, or between the log lines.
    let live = std::io::stdout().is_terminal() && !a.verbose;
    let started = Instant::now();
    let mut progress = None;
    let outcome = parkpay_sim::demo::run_demo(
        opts,
        |url, login| {
            println!("parkpay demo running: dashboard {url}  (Ctrl-C to stop)");
            println!(
                "sign in as {} with password {}",
                login.username, login.password
            );
            if let Some(path) = &log {
                println!("log: {}  (-v shows it here instead)", path.display());
            }
            progress = Some(Progress::start(tally.clone(), a.cars, live));
        },
        ctrl_c,
    )
    .await;
    if let Some(p) = progress {
        p.finish();
    }
    let outcome = outcome.context("the demo failed")?;
    let elapsed = started.elapsed();
    match outcome {
        Some(o) => {
            print_summary(&o, elapsed, log.as_deref());
            for r in &o.reconciliations {
                println!(
                    "reconciled {} with WeChat Pay's bill: {} ({})",
                    r.bill_date, r.status, r.detail
                );
            }
            println!("{}", serde_json::to_string(&LedgerLine::new(&o))?);
            if o.report.mismatches > 0 {
                bail!(
                    "{} cars were not treated as the tariff says",
                    o.report.mismatches
                );
            }
        }
        None => println!("stopped after {}: {}", clock(elapsed), tally.snapshot()),
    }
    Ok(())
}

/// The demo's progress on the terminal: a bar (or a spinner when the run has no end) over the
/// live summary, redrawn a few times a second; or, off a terminal, the summary every few seconds.
struct Progress {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(tally: Arc<Tally>, cars: Option<u32>, live: bool) -> Progress {
        let started = Instant::now();
        if !live {
            let ticker = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                every.tick().await;
                loop {
                    every.tick().await;
                    let s = tally.snapshot();
                    let done = match cars {
                        Some(n) => format!("{}/{n} cars", s.done),
                        None => format!("{} cars", s.done),
                    };
                    println!("[{}] {done}  {s}", clock(started.elapsed()));
                }
            });
            return Progress { bar: None, ticker };
        }
        let bar = match cars {
            Some(n) => ProgressBar::with_draw_target(
                Some(u64::from(n)),
                ProgressDrawTarget::stdout(),
            )
            .with_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{elapsed_precise}] [{bar:40.cyan/blue}] {pos}/{len} cars\n  {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()).with_style(
                ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {pos} cars  {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let s = tally.snapshot();
                shown.set_position(s.done);
                shown.set_message(s.to_string());
            }
        });
        Progress {
            bar: Some(bar),
            ticker,
        }
    }

    fn finish(self) {
        self.ticker.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The few lines a finished run ends with, above the JSON.
fn print_summary(o: &DemoOutcome, elapsed: Duration, log: Option<&Path>) {
    let (r, t) = (&o.report, &o.tally);
    let l = &t.latency;
    println!(
        "{} cars in {}: {} in, {} out, {} charged ({} of {} due), {} exceptions",
        r.cars,
        clock(elapsed),
        r.entries,
        r.exits,
        r.charged,
        Money::cny(r.charged_fen),
        Money::cny(r.expected_fen),
        t.exceptions,
    );
    println!(
        "{} of {} cars ({:.1} %) needed the attendant to read their plate off the car",
        t.attended,
        r.cars,
        100.0 * t.attended as f64 / r.cars.max(1) as f64,
    );
    println!(
        "decision latency at the lanes over {} decisions: p50 {}, p90 {}, p99 {}, max {}",
        l.count,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.max)
    );
    match (r.mismatches, log) {
        (0, _) => println!("ledger checked against ground truth: no mismatches"),
        (n, Some(path)) => println!(
            "ledger checked against ground truth: {n} mismatches (reasons in {})",
            path.display()
        ),
        (n, None) => println!("ledger checked against ground truth: {n} mismatches (see the log)"),
    }
}

/// The ledger check as one JSON line, with the lane-side decision latency.
#[derive(Serialize)]
struct LedgerLine<'a> {
    #[serde(flatten)]
    report: &'a Report,
    decision_p50_ms: Option<f64>,
    decision_p99_ms: Option<f64>,
    /// Cars whose plate the attendant read off the car.
    attended: u64,
}

impl LedgerLine<'_> {
    fn new(o: &DemoOutcome) -> LedgerLine<'_> {
        let millis = |d: Option<Duration>| d.map(|d| d.as_micros() as f64 / 1000.0);
        LedgerLine {
            report: &o.report,
            decision_p50_ms: millis(o.tally.latency.p50),
            decision_p99_ms: millis(o.tally.latency.p99),
            attended: o.tally.attended,
        }
    }
}

/// `1m 05s`, or `42.3 s` under a minute.
fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttc=warn,rumqttd=off".into())
}

/// Logs to the terminal with `default` as the filter unless `RUST_LOG` says otherwise.
fn log_to_terminal_at(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn log_to_terminal() {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
}

fn log_to_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating the log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
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
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(demo) => run_demo(demo).await,
        // Seconds of CPU-bound work: off the async workers.
        Command::BenchPlates(args) => {
            tokio::task::spawn_blocking(move || parkpay_sim::bench::bench_plates(&args)).await?
        }
        Command::BenchLoad(args) => parkpay_sim::bench_load::bench_load(&args).await,
        Command::BenchPlot(args) => parkpay_sim::bench_plot::bench_plot(&args),
        Command::Chaos(args) => {
            log_to_terminal_at("error,parkpay_sim::chaos=info,parkpay_sim::world=warn");
            parkpay_sim::chaos::run_chaos(&args).await
        }
        Command::BenchQuote(args) => {
            tokio::task::spawn_blocking(move || parkpay_sim::bench_quote::bench_quote(&args))
                .await?
        }
        Command::Run {
            server,
            mqtt,
            token,
            sandbox_secret,
            world,
        } => {
            log_to_terminal();
            let mqtt = MqttUrl::parse(&mqtt).context("--mqtt")?;
            let mut w = world.world()?;
            w.api_token = Some(token);
            w.sandbox_secret = sandbox_secret;
            let report = drive(w, server, mqtt, world.clock()).await?;
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
