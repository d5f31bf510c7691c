//! `parkpay-server`: reads configuration, sets up logging, runs the server until SIGINT (Ctrl-C)
//! or SIGTERM, then drains what it has in hand.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use parkpay_protocol::SystemClock;
use parkpay_server::access::parse_grant;
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
    #[command(subcommand)]
    command: Option<Command>,
}

/// Administration: run against the configured database, then exit.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Operator accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for integrations.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Gateway signing keys.
    #[command(subcommand)]
    Gateway(GatewayCommand),
}

#[derive(clap::Subcommand, Debug)]
enum UserCommand {
    /// Creates an account (the first admin is made this way). Prints a generated password
    /// unless --password-stdin is given.
    Add {
        #[arg(long)]
        username: String,
        /// admin, operator, finance or viewer.
        #[arg(long)]
        role: String,
        /// Limit the account to these lots (comma-separated); every lot when left out.
        #[arg(long)]
        lots: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Creates an API token and prints it (only once: only its digest is stored).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        lots: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum GatewayCommand {
    /// Makes a gateway's signing key and prints the gateway's configuration with it.
    Add {
        /// The gateway's id, e.g. gw-north.
        #[arg(long)]
        id: String,
        /// The lot it serves.
        #[arg(long)]
        lot: String,
        /// Replace an existing key (the gateway must get the new one).
        #[arg(long)]
        rotate: bool,
    },
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
    if let Some(command) = cli.command {
        return admin(command, &config).await;
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

async fn admin(command: Command, config: &ServerConfig) -> anyhow::Result<()> {
    let store = parkpay_server::store::connect(&config.database_url)
        .await
        .context("opening the database")?;
    let app = parkpay_server::app::App::offline(store, Arc::new(SystemClock));
    match command {
        Command::User(UserCommand::Add {
            username,
            role,
            lots,
            password_stdin,
        }) => {
            let grant = parse_grant(&role, lots.as_deref()).map_err(anyhow::Error::msg)?;
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password")?;
                (line.trim_end_matches(['\r', '\n']).to_string(), false)
            } else {
                (parkpay_server::auth::random_hex(12), true)
            };
            let a = app
                .create_account(&username, &password, grant, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("account {} created: role {}", a.username, a.grant.role);
            if generated {
                println!("password: {password}");
            }
        }
        Command::Token(TokenCommand::Add { name, role, lots }) => {
            let grant = parse_grant(&role, lots.as_deref()).map_err(anyhow::Error::msg)?;
            let (_, secret) = app
                .create_token(&name, grant, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{secret}");
        }
        Command::Gateway(GatewayCommand::Add { id, lot, rotate }) => {
            let gw = parkpay_protocol::GatewayId::parse(id)?;
            let lot = parkpay_protocol::LotId::parse(lot)?;
            let key = app
                .add_gateway_key(&gw, rotate, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let broker = if config.mqtt.broker == "embedded" {
                format!("mqtt://{}", config.mqtt.embedded_bind)
            } else {
                config.mqtt.broker.clone()
            };
            println!("# gateway.toml for {gw}: keep signing_key secret");
            println!("gateway_id = \"{gw}\"");
            println!("lot = \"{lot}\"");
            println!("mqtt_url = \"{broker}\"");
            println!("signing_key = \"{key}\"");
            println!("require_signatures = true");
            println!("journal_dir = \"/var/lib/parkpay/journal\"");
            println!(
                "# then one [[lanes]] table per lane this gateway serves (docs/operations.md)"
            );
        }
    }
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
