//! `parkpay-server`: reads configuration, sets up logging, runs the server until SIGINT (Ctrl-C)
//! or SIGTERM, then drains what it has in hand.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use parkpay_protocol::SystemClock;
use parkpay_server::{Server, ServerConfig};

/// The parkpay central service: MQTT ingest, sessions, tariffs, charges, HTTP API and dashboard.
///
/// Configuration is layered: defaults, then --config FILE (TOML), then PARKPAY_SERVER_*
/// environment variables (nested keys joined with "__", e.g. PARKPAY_SERVER_MQTT__BROKER),
/// then these flags.
#[derive(Parser, Debug)]
#[command(name = "parkpay-server", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default sqlite://parkpay.db) or postgres://USER@HOST/DB.
    #[arg(long)]
    database_url: Option<String>,
    /// HTTP listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    http: Option<String>,
    /// MQTT broker: "embedded" (default) or mqtt://HOST:PORT.
    #[arg(long)]
    mqtt: Option<String>,
    /// Where the embedded broker listens, e.g. 127.0.0.1:1883.
    #[arg(long)]
    mqtt_bind: Option<String>,
    /// Join the shared subscription group, to run several instances side by side.
    #[arg(long)]
    shared: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut overrides = serde_json::Map::new();
    if let Some(v) = cli.database_url {
        overrides.insert("database_url".into(), v.into());
    }
    let mut http = serde_json::Map::new();
    if let Some(v) = cli.http {
        http.insert("bind".into(), v.into());
    }
    let mut mqtt = serde_json::Map::new();
    if let Some(v) = cli.mqtt {
        mqtt.insert("broker".into(), v.into());
    }
    if let Some(v) = cli.mqtt_bind {
        mqtt.insert("embedded_bind".into(), v.into());
    }
    if cli.shared {
        mqtt.insert("shared_subscription".into(), true.into());
    }
    if !http.is_empty() {
        overrides.insert("http".into(), http.into());
    }
    if !mqtt.is_empty() {
        overrides.insert("mqtt".into(), mqtt.into());
    }
    let config = ServerConfig::load(cli.config.as_deref(), Some(overrides.into()))?;
    if cli.print_config {
        println!(
            "{}",
            toml::to_string_pretty(&config).context("rendering the configuration")?
        );
        return Ok(());
    }
    let shutdown = shutdown_signal();
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    println!(
        "parkpay server: dashboard http://{}/  mqtt {}",
        server.http_addr(),
        server.mqtt_url()
    );
    server.run(shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what service managers and `kill` send). The
/// handlers are installed when this is called, not when the future is first polled, so a signal
/// that arrives right after start-up is not lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                None
            }
        }
    };
    async move {
        #[cfg(unix)]
        match handlers {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down: draining passages and charges in hand");
    }
}
