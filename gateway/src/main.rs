//! The `parkpay-gateway` binary: parse flags, load config, set up logs, run the library until
//! ctrl-c or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use parkpay_gateway::reader::cli::{read_plate, ReadPlateArgs};
use parkpay_gateway::reader::LearnedReader;
use parkpay_gateway::{Gateway, GatewayConfig, Overrides};
use parkpay_protocol::SystemClock;

#[derive(Debug, Parser)]
#[command(
    name = "parkpay-gateway",
    version,
    about = "parkpay edge gateway: plates in, barrier commands out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the lanes in the config file until interrupted.
    Run(RunArgs),
    /// Read the plate in each image file (check a camera's snapshots).
    ReadPlate(ReadPlateArgs),
}

/// Flags override `PARKPAY_GATEWAY_*` variables, which override the file. Secrets (password,
/// signing key) are taken from the file or the environment only, never from flags, which other
/// users of the machine can see.
#[derive(Debug, Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, env = "PARKPAY_GATEWAY_CONFIG")]
    config: PathBuf,
    #[arg(long)]
    gateway_id: Option<String>,
    #[arg(long)]
    lot: Option<String>,
    /// Broker address, `mqtt://host:port`.
    #[arg(long)]
    mqtt_url: Option<String>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    journal_dir: Option<PathBuf>,
    /// e.g. `60s`.
    #[arg(long)]
    dedupe_window: Option<String>,
    /// e.g. `3s`.
    #[arg(long)]
    decision_timeout: Option<String>,
    /// e.g. `30s`.
    #[arg(long)]
    heartbeat_interval: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> anyhow::Result<Overrides> {
        let mut o = Overrides::flags();
        let journal_dir = self.journal_dir.as_ref().map(|p| p.display().to_string());
        for (key, value) in [
            ("gateway_id", &self.gateway_id),
            ("lot", &self.lot),
            ("mqtt_url", &self.mqtt_url),
            ("username", &self.username),
            ("journal_dir", &journal_dir),
            ("dedupe_window", &self.dedupe_window),
            ("decision_timeout", &self.decision_timeout),
            ("heartbeat_interval", &self.heartbeat_interval),
        ] {
            if let Some(v) = value {
                o.set(key, v.clone())?;
            }
        }
        Ok(o)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing();
            run(args)
        }
        Command::ReadPlate(args) => read_plate(&args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARKPAY_GATEWAY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let env = Overrides::from_env(std::env::vars())?;
    let config = GatewayConfig::load(&args.config, &[env, args.overrides()?])?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Built once: loading and optimising the plate model takes tens of milliseconds.
        let reader = Arc::new(LearnedReader::new().context("cannot load the plate model")?);
        let gateway = Gateway::build(config, Arc::new(SystemClock), reader)
            .await
            .context("cannot start the gateway")?;
        gateway.run(shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
