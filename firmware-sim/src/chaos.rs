//! `parkpay-sim chaos`: the system as real processes, with faults injected while traffic flows.
//!
//! The run starts its own Mosquitto (with persistence), one or two `parkpay-server` processes
//! sharing a fresh database and the event stream, and one `parkpay-gateway` process, each from
//! a configuration file it writes. The lanes' hardware and the traffic run in this process, as in
//! the demo, and reach the gateway through the broker; their HTTP calls go through a small
//! forwarding proxy that stands for the load balancer in front of the instances.
//!
//! While the cars come and go, a fault schedule drawn from the seed is played: `kill -9` and
//! restart of each server instance (one in the middle of the busiest burst of exits), of the
//! gateway (with exits waiting for their decision) and of the broker; the database's connections
//! terminated; every server frozen for longer than the gateway's decision timeout, so the gateway
//! decides exits on its own from its allowlist; the gateway itself frozen. The servers' sandbox
//! provider answers a share of the debits that took effect with a failure, so the payment worker
//! must retry without charging twice. Afterwards the run waits for the system to come to rest
//! and holds the ledger against ground truth, priced by the reference tariff.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use parkpay_protocol::{decode, Clock, DisplayCommand, GatewayStatus, LotId, ScaledClock, Topic};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::Url;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde::Serialize;
use sqlx::Connection;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{example_tariff, Api, ChargeStatus};
use crate::report::{audit, Ledger, Mismatch, MismatchKind, Report};
use crate::rig::LaneDeviceIds;
use crate::traffic::plan;
use crate::truth::{fold_cars, read_facts};
use crate::{reference_tariff, WorldConfig};

/// The PostgreSQL server a run creates its database on when given nothing else.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What the gateway's display says when it holds an exit because it cannot reach the server.
const OFFLINE_HOLD_LINE2: &str = "An attendant will help you";

/// How the gateway's display begins when it lets an allowlisted car out on its own.
const OFFLINE_OPEN_LINE2: &str = "Offline:";

/// How long the gateway waits for the server before its offline policy decides an exit.
const DECISION_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Cars to drive through the lot.
    #[arg(long, default_value_t = 300)]
    pub cars: u32,
    /// Seeds the traffic and the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A PostgreSQL server: the run creates a fresh database on it and drops it at the end.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// A fresh SQLite file instead of PostgreSQL: one server instance, no connection faults.
    #[arg(long)]
    pub sqlite: bool,
    /// Server instances sharing the database and the event stream (1 or 2).
    #[arg(long, default_value_t = 2)]
    pub instances: usize,
    /// How many faults to inject. By default one per 40 cars, and at least one of each kind.
    #[arg(long)]
    pub faults: Option<usize>,
    /// Share of the sandbox provider's debits that take effect and are then answered with a
    /// failure (`payments.sandbox_fault_rate`).
    #[arg(long, default_value_t = 0.2)]
    pub provider_fault_rate: f64,
    /// How much faster than real time the simulated clock runs (1440: a day per minute).
    #[arg(long, default_value_t = 1440.0)]
    pub speed: f64,
    #[arg(long, default_value_t = 0.0)]
    pub misread_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub no_read_rate: f64,
    /// Also restart PostgreSQL once, with this shell command (e.g. "pg_ctl -D DATA restart -m
    /// fast"). Never done without it: other users may share the server.
    #[arg(long, value_name = "COMMAND")]
    pub restart_database: Option<String>,
    /// Where `parkpay-server` and `parkpay-gateway` are; this program's directory by default.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds to wait, after the last car, for the system to come to rest.
    #[arg(long, default_value_t = 300)]
    pub settle_secs: u64,
    /// Entry lanes, and as many exit lanes, all on the one gateway. Four lanes pass about a
    /// car and a half a second; a 10,000-car run wants more.
    #[arg(long, default_value_t = 2)]
    pub lane_pairs: usize,
    /// Keep the run's directory (configuration, logs, journal, broker data).
    #[arg(long)]
    pub keep: bool,
}

impl ChaosArgs {
    /// The arguments of a run of `cars` cars with `seed`, everything else as the defaults.
    pub fn new(cars: u32, seed: u64) -> ChaosArgs {
        ChaosArgs {
            cars,
            seed,
            database_url: DEFAULT_DATABASE_URL.into(),
            sqlite: false,
            instances: 2,
            faults: None,
            provider_fault_rate: 0.2,
            speed: 1440.0,
            misread_rate: 0.0,
            no_read_rate: 0.0,
            restart_database: None,
            bin_dir: None,
            settle_secs: 300,
            keep: false,
            lane_pairs: 2,
        }
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// `kill -9` of a server instance, restarted after the hold.
    ServerKill { instance: usize, during_exits: bool },
    /// Every server frozen for a moment so exits wait in the gateway's journal, then `kill -9` of
    /// the gateway, restarted after the hold.
    GatewayKill,
    /// `kill -9` of the broker, restarted after the hold from its persistence.
    BrokerKill,
    /// Every connection to the run's database terminated (`pg_terminate_backend`).
    DatabaseConnections,
    /// Every server frozen (SIGSTOP) for the hold, longer than the gateway's decision timeout:
    /// the gateway cannot reach the server and decides exits from its allowlist.
    Partition,
    /// The gateway frozen (SIGSTOP) for the hold.
    GatewayFreeze,
    /// PostgreSQL restarted with `--restart-database`.
    DatabaseRestart,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKind::ServerKill {
                instance,
                during_exits: true,
            } => write!(
                f,
                "kill -9 server {} in a burst of exits",
                instance_name(*instance)
            ),
            FaultKind::ServerKill { instance, .. } => {
                write!(f, "kill -9 server {}", instance_name(*instance))
            }
            FaultKind::GatewayKill => f.write_str("kill -9 gateway with exits pending"),
            FaultKind::BrokerKill => f.write_str("kill -9 broker"),
            FaultKind::DatabaseConnections => f.write_str("terminate database connections"),
            FaultKind::Partition => f.write_str("servers unreachable (gateway decides offline)"),
            FaultKind::GatewayFreeze => f.write_str("gateway frozen"),
            FaultKind::DatabaseRestart => f.write_str("restart PostgreSQL"),
        }
    }
}

/// A fault of the schedule: when (real time from the start of traffic), what, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub at_s: f64,
    #[serde(flatten)]
    pub kind: FaultKind,
    pub hold_s: f64,
}

/// A fault as it was played.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: Fault,
    /// When it was played (real seconds from the start of traffic).
    pub started_s: f64,
    pub detail: String,
}

/// What a run counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosCounts {
    pub server_kills: u32,
    pub server_restarts: u32,
    pub gateway_kills: u32,
    pub gateway_restarts: u32,
    pub broker_kills: u32,
    pub broker_restarts: u32,
    pub database_connections_terminated: u64,
    pub database_restarts: u32,
    pub partitions: u32,
    pub gateway_freezes: u32,
    /// Processes that ended without being told to (each was restarted).
    pub unexpected_exits: u32,
    /// Barriers the attendant lifted by hand for a car the server had decided for but whose
    /// decision did not move the arm (it reached a restarted gateway).
    pub stuck_lifted: u64,
    /// Debits the sandbox answered with an injected failure after they took effect (from the
    /// servers' logs).
    pub provider_faults: u64,
}

/// What a chaos run found; [`run_chaos`] prints it, its last line as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosOutcome {
    pub seed: u64,
    pub backend: &'static str,
    pub instances: usize,
    pub report: Report,
    pub faults: Vec<FaultRecord>,
    pub counts: ChaosCounts,
    pub lost: u64,
    pub double: u64,
    pub wrong: u64,
    /// Exits the gateway held because it could not reach the server and could not decide on
    /// its own (counted from the lanes' displays).
    pub held_offline: u64,
    /// Exits the gateway let out on its own (allowlisted) while it could not reach the server.
    pub opened_offline: u64,
    /// Exit tries on which the driver paid at the barrier and the arm did not open, and the
    /// first such cars' plates. No money goes wrong, but a driver who paid waited.
    pub paid_not_let_out: u64,
    pub paid_not_let_out_plates: Vec<String>,
    /// Charges still awaiting payment when the run ended (money asked for, not moved).
    pub awaiting_payment: u64,
    pub mismatches: Vec<Mismatch>,
    pub elapsed_s: f64,
    /// The run's directory, when it was kept (asked for, or the run failed or found a
    /// mismatch).
    pub kept: Option<PathBuf>,
    /// For each of the first mismatches, what the run knows of that car: its facts as the
    /// simulator recorded them and the processes' log lines that name its plate.
    pub evidence: Vec<String>,
}

/// The last line of a run.
#[derive(Debug, Serialize)]
pub struct ChaosLine {
    pub cars: u64,
    pub faults: usize,
    pub lost: u64,
    pub double: u64,
    pub wrong: u64,
    pub held_offline: u64,
}

impl ChaosOutcome {
    pub fn line(&self) -> ChaosLine {
        ChaosLine {
            cars: self.report.cars,
            faults: self.faults.len(),
            lost: self.lost,
            double: self.double,
            wrong: self.wrong,
            held_offline: self.held_offline,
        }
    }
}

/// Runs a chaos run and prints its summary, the last line as JSON. An error when money was
/// lost, doubled or wrong.
pub async fn run_chaos(args: &ChaosArgs) -> anyhow::Result<()> {
    let o = run(args).await?;
    print_summary(&o);
    for story in &o.evidence {
        eprintln!("{story}");
    }
    println!("{}", serde_json::to_string(&o.line())?);
    if o.lost + o.double + o.wrong > 0 {
        bail!(
            "the ledger does not match ground truth: {} lost, {} double, {} wrong",
            o.lost,
            o.double,
            o.wrong
        );
    }
    Ok(())
}

fn print_summary(o: &ChaosOutcome) {
    let r = &o.report;
    println!(
        "chaos run, seed {}: {} cars on {} with {} server instance(s) in {:.0} s",
        o.seed, r.cars, o.backend, o.instances, o.elapsed_s
    );
    for f in &o.faults {
        println!(
            "  {:>6.1} s  {} (hold {:.1} s): {}",
            f.started_s, f.fault.kind, f.fault.hold_s, f.detail
        );
    }
    let c = &o.counts;
    println!(
        "processes: servers killed {} / restarted {}, gateway killed {} / restarted {}, broker \
         killed {} / restarted {}, {} ended by themselves",
        c.server_kills,
        c.server_restarts,
        c.gateway_kills,
        c.gateway_restarts,
        c.broker_kills,
        c.broker_restarts,
        c.unexpected_exits
    );
    println!(
        "database connections terminated {}, PostgreSQL restarts {}, partitions {}, gateway \
         freezes {}, provider failures after the debit {}, barriers lifted by hand {}",
        c.database_connections_terminated,
        c.database_restarts,
        c.partitions,
        c.gateway_freezes,
        c.provider_faults,
        c.stuck_lifted
    );
    println!(
        "ledger: {} in, {} out, {} charged ({} of {} fen due); exits decided by the gateway \
         offline: {} let out (allowlisted), {} held",
        r.entries,
        r.exits,
        r.charged,
        r.charged_fen,
        r.expected_fen,
        o.opened_offline,
        o.held_offline
    );
    println!(
        "drivers who paid at the barrier and were not let out on that try: {}{}; charges \
         still awaiting payment: {}",
        o.paid_not_let_out,
        if o.paid_not_let_out_plates.is_empty() {
            String::new()
        } else {
            format!(" ({})", o.paid_not_let_out_plates.join(", "))
        },
        o.awaiting_payment
    );
    for m in o.mismatches.iter().take(20) {
        println!("  mismatch ({:?}): {m}", m.kind);
    }
    if o.mismatches.len() > 20 {
        println!("  ... and {} more", o.mismatches.len() - 20);
    }
    if let Some(dir) = &o.kept {
        println!("run directory kept: {}", dir.display());
    }
    println!(
        "checked against ground truth: {} lost, {} double, {} wrong",
        o.lost, o.double, o.wrong
    );
}

fn instance_name(i: usize) -> String {
    format!("chaos-{}", (b'a' + (i % 26) as u8) as char)
}

/// Draws the fault schedule: at least one fault of each kind that applies (while `count`
/// allows), then random ones, at random times within the first 85% of the traffic's `span`.
/// Server kill 0 lands in the densest 2-second burst of `exits`; the gateway kill at another
/// exit. The same arguments give the same schedule.
pub fn schedule(
    seed: u64,
    count: usize,
    instances: usize,
    postgres: bool,
    restart_database: bool,
    span: Duration,
    exits: &[Duration],
) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00c4_a05f_a017);
    let mut kinds: Vec<FaultKind> = (0..instances)
        .map(|instance| FaultKind::ServerKill {
            instance,
            during_exits: instance == 0,
        })
        .collect();
    kinds.extend([
        FaultKind::GatewayKill,
        FaultKind::BrokerKill,
        FaultKind::Partition,
        FaultKind::GatewayFreeze,
    ]);
    if postgres {
        kinds.push(FaultKind::DatabaseConnections);
    }
    let repeatable = kinds.clone();
    if restart_database {
        kinds.push(FaultKind::DatabaseRestart);
    }
    kinds.shuffle(&mut rng);
    kinds.truncate(count);
    while kinds.len() < count {
        let mut k = repeatable[rng.gen_range(0..repeatable.len())];
        if let FaultKind::ServerKill { during_exits, .. } = &mut k {
            *during_exits = false;
        }
        kinds.push(k);
    }
    let span_s = span.as_secs_f64().max(10.0);
    let mut sorted: Vec<f64> = exits.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    let in_window = |t: &f64| *t >= 0.08 * span_s && *t <= 0.85 * span_s;
    // The start of the 2 s window holding the most exits.
    let mut burst = (0, 0.5 * span_s);
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] > 2.0 {
            lo += 1;
        }
        if hi - lo + 1 > burst.0 && in_window(&sorted[lo]) {
            burst = (hi - lo + 1, sorted[lo]);
        }
    }
    let candidates: Vec<f64> = sorted.iter().copied().filter(in_window).collect();
    let mut faults: Vec<Fault> = kinds
        .into_iter()
        .map(|kind| {
            let at = match kind {
                FaultKind::ServerKill {
                    during_exits: true, ..
                } => burst.1 + 0.5,
                FaultKind::GatewayKill if !candidates.is_empty() => {
                    candidates[rng.gen_range(0..candidates.len())]
                }
                _ => rng.gen_range(0.08 * span_s..0.85 * span_s),
            };
            let hold: f64 = match kind {
                FaultKind::ServerKill { .. } | FaultKind::GatewayKill | FaultKind::BrokerKill => {
                    rng.gen_range(0.5..3.0)
                }
                FaultKind::Partition => rng.gen_range(4.0..8.0),
                FaultKind::GatewayFreeze => rng.gen_range(2.0..5.0),
                FaultKind::DatabaseConnections | FaultKind::DatabaseRestart => 0.0,
            };
            Fault {
                at_s: (at * 10.0).round() / 10.0,
                kind,
                hold_s: (hold * 10.0).round() / 10.0,
            }
        })
        .collect();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    faults
}

/// One child process the run starts, kills and restarts.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    started_at: DateTime<Utc>,
}

impl Proc {
    fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log,
            child: None,
            starts: 0,
            started_at: Utc::now(),
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        self.started_at = Utc::now();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `kill -9`, and waits for the process to be gone. Returns its pid.
    async fn kill9(&mut self) -> anyhow::Result<u32> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let pid = child.id().unwrap_or_default();
        child.start_kill()?;
        child.wait().await?;
        Ok(pid)
    }

    /// Sends a signal by name (STOP, CONT, TERM) with `kill -s`.
    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -s {signal} {pid} ({}) failed", self.name);
        }
        Ok(())
    }

    /// The exit status, if the process ended by itself.
    fn ended(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then `kill -9` if it has not stopped within `grace`.
    async fn stop(&mut self, grace: Duration) {
        if self.ended().is_none() && self.signal("CONT").await.is_ok() {
            let _ = self.signal("TERM").await;
        }
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn wait_tcp(addr: SocketAddr, within: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /readyz` until the server answers 200 (database and broker up).
async fn wait_ready(port: u16, within: Duration, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            bail!("{what} was not ready within {within:?} (GET {url})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A backend of the forwarding proxy: a server instance's HTTP port.
struct Backend {
    addr: SocketAddr,
    up: AtomicBool,
    active: AtomicUsize,
}

/// The load balancer in front of the server instances: forwards each connection to an instance
/// that is up, round robin, and holds it while none is (up to a minute).
struct Proxy {
    backends: Vec<Backend>,
    next: AtomicUsize,
}

impl Proxy {
    async fn start(
        addrs: &[SocketAddr],
    ) -> anyhow::Result<(Arc<Proxy>, SocketAddr, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxy = Arc::new(Proxy {
            backends: addrs
                .iter()
                .map(|a| Backend {
                    addr: *a,
                    up: AtomicBool::new(true),
                    active: AtomicUsize::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        });
        let p = proxy.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((inbound, _)) => {
                        tokio::spawn(p.clone().forward(inbound));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok((proxy, addr, task))
    }

    async fn forward(self: Arc<Self>, mut inbound: TcpStream) {
        let _ = inbound.set_nodelay(true);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.backends.len();
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            for k in 0..n {
                let b = &self.backends[(first + k) % n];
                b.active.fetch_add(1, Ordering::SeqCst);
                if b.up.load(Ordering::SeqCst) {
                    let connect =
                        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(b.addr));
                    if let Ok(Ok(mut outbound)) = connect.await {
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        b.active.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
                b.active.fetch_sub(1, Ordering::SeqCst);
            }
            if Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes instance `i` out of rotation and waits (up to 3 s) for its requests in hand.
    async fn drain(&self, i: usize) {
        let b = &self.backends[i];
        b.up.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while b.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn restore(&self, i: usize) {
        self.backends[i].up.store(true, Ordering::SeqCst);
    }
}

/// What the run sees on the broker: the gateway's last status and the exits it held offline.
#[derive(Debug, Default)]
struct Seen {
    status: Option<GatewayStatus>,
    offline_holds: u64,
    offline_opens: u64,
}

async fn watch_broker(
    port: u16,
    status: Topic,
    displays: Vec<Topic>,
) -> anyhow::Result<(Arc<Mutex<Seen>>, JoinHandle<()>)> {
    let mut opts = MqttOptions::new(
        format!("chaos-watch-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut el) = AsyncClient::new(opts, 100);
    let status_topic = status.to_string();
    let mut filters = vec![SubscribeFilter::new(status_topic.clone(), QoS::AtLeastOnce)];
    filters.extend(
        displays
            .iter()
            .map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce)),
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A clean session: subscribe again on every connection.
                    let _ = client.subscribe_many(filters.clone()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if p.topic == status_topic {
                        if let Ok(d) = decode::<GatewayStatus>(&p.payload, None) {
                            s.status = Some(d.body);
                        }
                    } else if !p.retain {
                        if let Ok(d) = decode::<DisplayCommand>(&p.payload, None) {
                            tracing::debug!(topic = %p.topic, text = ?d.body.text, "display");
                            if d.body.text.line2 == OFFLINE_HOLD_LINE2 {
                                s.offline_holds += 1;
                            } else if d.body.text.line2.starts_with(OFFLINE_OPEN_LINE2) {
                                s.offline_opens += 1;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Ok((seen, task))
}

fn seen_status(seen: &Mutex<Seen>) -> Option<GatewayStatus> {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .status
        .clone()
}

/// Waits until the gateway says it is online in a status sent after `since`.
async fn wait_gateway(seen: &Mutex<Seen>, since: DateTime<Utc>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let within = Duration::from_secs(60);
    loop {
        if seen_status(seen).is_some_and(|s| s.online && s.at >= since) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("the gateway did not report online within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's database: a fresh PostgreSQL database, or a SQLite file.
enum Database {
    Postgres {
        admin: String,
        name: String,
        url: String,
    },
    Sqlite {
        url: String,
    },
}

impl Database {
    async fn create(args: &ChaosArgs, dir: &Path) -> anyhow::Result<Database> {
        if args.sqlite {
            return Ok(Database::Sqlite {
                url: format!("sqlite://{}", dir.join("chaos.db").display()),
            });
        }
        let admin = args.database_url.clone();
        let mut url = Url::parse(&admin).context("--database-url")?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            bail!("--database-url must be a postgres:// URL (or give --sqlite)");
        }
        let name = format!(
            "parkpay_chaos_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("creating the run's database")?;
        let _ = conn.close().await;
        url.set_path(&format!("/{name}"));
        Ok(Database::Postgres {
            admin,
            name,
            url: url.to_string(),
        })
    }

    fn url(&self) -> &str {
        match self {
            Database::Postgres { url, .. } | Database::Sqlite { url } => url,
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres { .. })
    }

    /// Terminates every connection to the run's database; returns how many there were.
    async fn terminate_connections(&self) -> anyhow::Result<u64> {
        let Database::Postgres { admin, name, .. } = self else {
            return Ok(0);
        };
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn wait_reachable(&self, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            match sqlx::PgConnection::connect(self.url()).await {
                Ok(c) => {
                    let _ = c.close().await;
                    return Ok(());
                }
                Err(e) if started.elapsed() > within => {
                    bail!("the database did not come back within {within:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Decisions and commands written to the outbox and not yet published.
    async fn outbox_pending(&self) -> anyhow::Result<i64> {
        const Q: &str = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
        Ok(match self {
            Database::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                let n = sqlx::query_scalar(Q).fetch_one(&mut c).await?;
                let _ = c.close().await;
                n
            }
            Database::Sqlite { url } => {
                let mut c = sqlx::SqliteConnection::connect(url).await?;
                let n = sqlx::query_scalar(Q).fetch_one(&mut c).await?;
                let _ = c.close().await;
                n
            }
        })
    }

    async fn drop_database(&self) {
        if let Database::Postgres { admin, name, .. } = self {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                {
                    tracing::warn!(error = %e, "could not drop the run's database {name}");
                }
            }
        }
    }
}

/// Runs `parkpay-server --config CONFIG ARGS...` to completion and returns its output.
async fn server_admin(bin: &Path, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "parkpay-server {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TOML string: JSON's escapes are TOML's.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn server_toml(
    db: &str,
    instance: &str,
    http_port: u16,
    broker_port: u16,
    sandbox_secret: &str,
    fault_rate: f64,
) -> String {
    // Ground truth runs on a compressed clock, so capture instants run ahead of the servers'
    // clocks: allow that, up to 5 years (a 10,000-car run at 2,880 times real time spends about
    // an hour at the barriers, 120 simulated days; 90 days, the earlier bound, held its last
    // cars at the barrier for a clock skew). Every simulated driver's phone pays from this
    // machine's one address, which a real pay page's per-address limit was not made for: the
    // limit is lifted so that it cannot stand between a held driver and the barrier.
    format!(
        "database_url = {db}\ninstance = {instance}\n\n[http]\nbind = \"127.0.0.1:{http_port}\"\n\
         secure_cookies = false\npublic_rate_per_minute = 1000000\n\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{broker_port}\"\n\
         shared_subscription = true\n\n[ingest]\nmax_clock_ahead_secs = 157680000\n\n[payments]\n\
         sandbox_secret = {secret}\npoll_interval_ms = 50\nretry_base_secs = 0.1\n\
         max_attempts = 8\nlease_secs = 5.0\nsandbox_fault_rate = {fault_rate:?}\n\
         sandbox_late_ms = 200\n",
        db = toml_str(db),
        instance = toml_str(instance),
        secret = toml_str(sandbox_secret),
    )
}

fn gateway_toml(
    world: &WorldConfig,
    gateway: &str,
    broker_port: u16,
    key: &str,
    journal: &Path,
) -> anyhow::Result<String> {
    let mut s = format!(
        "gateway_id = {gw}\nlot = {lot}\nmqtt_url = \"mqtt://127.0.0.1:{broker_port}\"\n\
         signing_key = {key}\nrequire_signatures = true\njournal_dir = {journal}\n\
         dedupe_window = \"60s\"\ndecision_timeout = \"{timeout}s\"\nheartbeat_interval = \"1s\"\n\
         resend_initial = \"2s\"\nresend_max = \"10s\"\n",
        gw = toml_str(gateway),
        lot = toml_str(world.lot.as_str()),
        key = toml_str(key),
        journal = toml_str(&journal.display().to_string()),
        timeout = DECISION_TIMEOUT.as_secs(),
    );
    for (lane, direction) in &world.lanes {
        let ids = LaneDeviceIds::new(&world.lot, lane)?;
        let direction = match direction {
            parkpay_protocol::Direction::Entry => "entry",
            parkpay_protocol::Direction::Exit => "exit",
        };
        s.push_str(&format!(
            "\n[[lanes]]\nid = \"{lane}\"\ndirection = \"{direction}\"\ncamera = \"{}\"\n\
             loop = \"{}\"\nbarrier = \"{}\"\ndisplay = \"{}\"\n",
            ids.camera, ids.loop_detector, ids.arm, ids.display
        ));
    }
    Ok(s)
}

fn mosquitto_conf(port: u16, dir: &Path) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
         persistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 128\n\
         set_tcp_nodelay true\nmessage_size_limit 8388608\nlog_dest file {}\n",
        dir.display(),
        dir.join("mosquitto.log").display()
    )
}

/// Every process of the run and what the faults need to reach them.
struct System {
    broker: Proc,
    broker_addr: SocketAddr,
    servers: Vec<Proc>,
    http_ports: Vec<u16>,
    gateway: Proc,
    proxy: Arc<Proxy>,
    seen: Arc<Mutex<Seen>>,
    database: Database,
    restart_database: Option<String>,
    counts: ChaosCounts,
}

impl System {
    async fn start_server(&mut self, i: usize) -> anyhow::Result<Duration> {
        self.servers[i].spawn()?;
        let ready = wait_ready(
            self.http_ports[i],
            Duration::from_secs(90),
            &self.servers[i].name,
        )
        .await?;
        self.proxy.restore(i);
        Ok(ready)
    }

    async fn start_gateway(&mut self) -> anyhow::Result<Duration> {
        // The status must be newer than this start (the gateway's clock is this machine's).
        let since = Utc::now() - chrono::TimeDelta::milliseconds(500);
        self.gateway.spawn()?;
        wait_gateway(&self.seen, since).await
    }

    async fn servers_ready(&self) -> anyhow::Result<()> {
        for (i, port) in self.http_ports.iter().enumerate() {
            wait_ready(*port, Duration::from_secs(90), &self.servers[i].name).await?;
        }
        Ok(())
    }

    /// Restarts whatever ended by itself; counts it.
    async fn revive(&mut self) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        if let Some(st) = self.broker.ended() {
            notes.push(format!("broker ended by itself ({st}); restarted"));
            self.counts.unexpected_exits += 1;
            self.broker.child = None;
            self.broker.spawn()?;
            wait_tcp(self.broker_addr, Duration::from_secs(30), "the broker").await?;
        }
        for i in 0..self.servers.len() {
            if let Some(st) = self.servers[i].ended() {
                notes.push(format!(
                    "server {} ended by itself ({st}); restarted",
                    self.servers[i].name
                ));
                self.counts.unexpected_exits += 1;
                self.servers[i].child = None;
                self.proxy.drain(i).await;
                self.start_server(i).await?;
            }
        }
        if let Some(st) = self.gateway.ended() {
            notes.push(format!("gateway ended by itself ({st}); restarted"));
            self.counts.unexpected_exits += 1;
            self.gateway.child = None;
            self.start_gateway().await?;
        }
        for n in &notes {
            tracing::warn!("{n}");
        }
        Ok(notes)
    }

    async fn signal_servers(&self, signal: &str) -> anyhow::Result<()> {
        for s in &self.servers {
            s.signal(signal).await?;
        }
        Ok(())
    }

    fn offline_holds(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offline_holds
    }

    /// Plays one fault, recovery included; returns what happened.
    async fn inject(&mut self, f: &Fault) -> anyhow::Result<String> {
        let hold = Duration::from_secs_f64(f.hold_s);
        Ok(match f.kind {
            FaultKind::ServerKill { instance, .. } => {
                let i = instance.min(self.servers.len() - 1);
                self.proxy.drain(i).await;
                let pid = self.servers[i].kill9().await?;
                self.counts.server_kills += 1;
                tokio::time::sleep(hold).await;
                let ready = self.start_server(i).await?;
                self.counts.server_restarts += 1;
                format!(
                    "killed pid {pid}; restarted as pid {}, ready after {:.1} s",
                    self.servers[i].pid().unwrap_or_default(),
                    ready.as_secs_f64()
                )
            }
            FaultKind::GatewayKill => {
                // Exits arriving now wait in the journal for decisions that cannot come yet.
                self.signal_servers("STOP").await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let pending = seen_status(&self.seen).map_or(0, |s| s.journal_pending);
                let killed = self.gateway.kill9().await;
                self.signal_servers("CONT").await?;
                let pid = killed?;
                self.counts.gateway_kills += 1;
                tokio::time::sleep(hold).await;
                let ready = self.start_gateway().await?;
                self.counts.gateway_restarts += 1;
                format!(
                    "killed pid {pid} with {pending} event(s) in its journal at its last \
                     status; restarted as pid {}, online after {:.1} s",
                    self.gateway.pid().unwrap_or_default(),
                    ready.as_secs_f64()
                )
            }
            FaultKind::BrokerKill => {
                let pid = self.broker.kill9().await?;
                self.counts.broker_kills += 1;
                tokio::time::sleep(hold).await;
                self.broker.spawn()?;
                wait_tcp(self.broker_addr, Duration::from_secs(30), "the broker").await?;
                self.counts.broker_restarts += 1;
                self.servers_ready().await?;
                format!(
                    "killed pid {pid}; restarted as pid {} from its persistence",
                    self.broker.pid().unwrap_or_default()
                )
            }
            FaultKind::DatabaseConnections => {
                let n = self.database.terminate_connections().await?;
                self.counts.database_connections_terminated += n;
                format!("{n} connection(s) terminated")
            }
            FaultKind::Partition => {
                let before = self.offline_holds();
                self.signal_servers("STOP").await?;
                tokio::time::sleep(hold).await;
                self.signal_servers("CONT").await?;
                self.counts.partitions += 1;
                format!(
                    "{} exit(s) held by the gateway offline meanwhile",
                    self.offline_holds() - before
                )
            }
            FaultKind::GatewayFreeze => {
                self.gateway.signal("STOP").await?;
                tokio::time::sleep(hold).await;
                self.gateway.signal("CONT").await?;
                self.counts.gateway_freezes += 1;
                "stopped and continued".to_string()
            }
            FaultKind::DatabaseRestart => {
                let Some(cmd) = self.restart_database.clone() else {
                    return Ok("skipped: no --restart-database command".into());
                };
                let status = Command::new("sh")
                    .args(["-c", &cmd])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .await
                    .context("running the --restart-database command")?;
                if !status.success() {
                    bail!("--restart-database {cmd:?} failed: {status}");
                }
                self.database
                    .wait_reachable(Duration::from_secs(120))
                    .await?;
                self.counts.database_restarts += 1;
                self.servers_ready().await?;
                "restarted".to_string()
            }
        })
    }

    async fn shutdown(&mut self) {
        self.gateway.stop(Duration::from_secs(10)).await;
        for s in &mut self.servers {
            s.stop(Duration::from_secs(25)).await;
        }
        self.broker.stop(Duration::from_secs(5)).await;
    }
}

/// Plays the schedule against the system, in order, from `start`.
async fn play(
    sys: &mut System,
    faults: &[Fault],
    start: Instant,
    progress: Progress<'_>,
) -> anyhow::Result<Vec<FaultRecord>> {
    let mut records = Vec::new();
    for f in faults {
        tokio::time::sleep_until(start + Duration::from_secs_f64(f.at_s)).await;
        progress.reached(f.at_s).await;
        let notes = sys.revive().await?;
        let started_s = start.elapsed().as_secs_f64();
        tracing::info!(fault = %f.kind, hold_s = f.hold_s, "injecting");
        let mut detail = sys
            .inject(f)
            .await
            .with_context(|| format!("injecting {}", f.kind))?;
        if !notes.is_empty() {
            detail = format!("{detail} (before it: {})", notes.join("; "));
        }
        records.push(FaultRecord {
            fault: f.clone(),
            started_s,
            detail,
        });
    }
    Ok(records)
}

/// How far the traffic has got, so the faults fall on the whole run. The schedule is drawn over
/// the traffic's planned span, but the barriers pass cars more slowly than a long run's plan
/// brings them (each passage waits for its arm), so a fault planned at a tenth of the span also
/// waits until about a tenth of the passages are done.
#[derive(Clone, Copy)]
struct Progress<'a> {
    tally: &'a crate::tally::Tally,
    cars: u64,
    span_s: f64,
}

impl Progress<'_> {
    async fn reached(&self, at_s: f64) {
        let share = (at_s / self.span_s.max(1.0)).clamp(0.0, 1.0);
        // Each car passes twice: in and out.
        let want = (share * 2.0 * self.cars as f64) as u64;
        loop {
            let now = self.tally.snapshot();
            // Cars that gave up count as done, so a stuck run still plays out its faults.
            if now.entered + now.left >= want || now.done >= self.cars {
                return;
            }
            // Polling the live counts; they have no event to wait on.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs a chaos run; see the module doc.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<ChaosOutcome> {
    if args.cars == 0 {
        bail!("--cars must be at least 1");
    }
    if !(1..=2).contains(&args.instances) {
        bail!("--instances must be 1 or 2");
    }
    if !(1..=16).contains(&args.lane_pairs) {
        bail!("--lane-pairs must be between 1 and 16");
    }
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    if !(args.provider_fault_rate.is_finite() && (0.0..1.0).contains(&args.provider_fault_rate)) {
        bail!("--provider-fault-rate must be at least 0 and below 1");
    }
    let instances = if args.sqlite { 1 } else { args.instances };
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .map(Path::to_path_buf)
            .context("this program has no directory")?,
    };
    let server_bin = bin_dir.join("parkpay-server");
    let gateway_bin = bin_dir.join("parkpay-gateway");
    for b in [&server_bin, &gateway_bin] {
        if !b.is_file() {
            bail!(
                "{} not found: build it (cargo build -p parkpay-server -p parkpay-gateway) or \
                 give --bin-dir",
                b.display()
            );
        }
    }
    let mosquitto = which("mosquitto").context(
        "mosquitto is not on PATH: the chaos run starts its own broker (apt install mosquitto)",
    )?;
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("parkpay-chaos-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let database = Database::create(args, &dir).await?;
    let result = run_in(
        args,
        instances,
        &dir,
        &server_bin,
        &gateway_bin,
        &mosquitto,
        database,
    )
    .await;
    let mismatched = result.as_ref().is_ok_and(|o| !o.mismatches.is_empty());
    let kept = if args.keep || result.is_err() || mismatched {
        let path = tmp.keep();
        eprintln!("chaos run directory kept: {}", path.display());
        Some(path)
    } else {
        None
    };
    let mut outcome = result?;
    outcome.kept = kept;
    outcome.elapsed_s = started.elapsed().as_secs_f64();
    Ok(outcome)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

async fn run_in(
    args: &ChaosArgs,
    instances: usize,
    dir: &Path,
    server_bin: &Path,
    gateway_bin: &Path,
    mosquitto: &Path,
    database: Database,
) -> anyhow::Result<ChaosOutcome> {
    // The broker.
    let broker_port = free_port()?;
    let broker_addr: SocketAddr = ([127, 0, 0, 1], broker_port).into();
    let broker_dir = dir.join("mosquitto");
    std::fs::create_dir_all(&broker_dir)?;
    let conf = broker_dir.join("mosquitto.conf");
    std::fs::write(&conf, mosquitto_conf(broker_port, &broker_dir))?;
    let mut broker = Proc::new(
        "mosquitto",
        mosquitto,
        vec!["-c".into(), conf.display().to_string()],
        broker_dir.join("stdout.log"),
    );
    broker.spawn()?;
    wait_tcp(broker_addr, Duration::from_secs(30), "mosquitto").await?;

    // Configuration, accounts, the API token and the gateway's key.
    let lot = LotId::parse("chaos")?;
    let mut world = WorldConfig::with_lanes(lot.clone(), args.lane_pairs)?;
    let gateway_id = crate::demo::gateway_id(&lot)?;
    let sandbox_secret = hex(16);
    let http_ports: Vec<u16> = (0..instances)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let mut configs = Vec::new();
    for (i, port) in http_ports.iter().enumerate() {
        let path = dir.join(format!("server-{}.toml", instance_name(i)));
        std::fs::write(
            &path,
            server_toml(
                database.url(),
                &instance_name(i),
                *port,
                broker_port,
                &sandbox_secret,
                args.provider_fault_rate,
            ),
        )?;
        configs.push(path);
    }
    let cli = &configs[0];
    let out = server_admin(
        server_bin,
        cli,
        &["user", "add", "--username", "chaos", "--role", "admin"],
    )
    .await?;
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_default()
        .to_string();
    let out = server_admin(
        server_bin,
        cli,
        &["token", "add", "--name", "chaos", "--role", "admin"],
    )
    .await?;
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ppt_"))
        .context("`parkpay-server token add` printed no token")?
        .to_string();
    let out = server_admin(
        server_bin,
        cli,
        &[
            "gateway",
            "add",
            "--id",
            gateway_id.as_str(),
            "--lot",
            lot.as_str(),
        ],
    )
    .await?;
    let key = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("signing_key = "))
        .map(|k| k.trim_matches('"').to_string())
        .context("`parkpay-server gateway add` printed no signing key")?;

    // The servers, behind the proxy.
    let mut servers = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        servers.push(Proc::new(
            &instance_name(i),
            server_bin,
            vec!["--config".into(), config.display().to_string()],
            dir.join(format!("server-{}.log", instance_name(i))),
        ));
    }
    let addrs: Vec<SocketAddr> = http_ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let (proxy, proxy_addr, proxy_task) = Proxy::start(&addrs).await?;

    // What the run watches on the broker.
    let exit_displays = world
        .lanes
        .iter()
        .filter(|(_, d)| *d == parkpay_protocol::Direction::Exit)
        .map(|(lane, _)| LaneDeviceIds::new(&lot, lane).map(|ids| Topic::Display(ids.display)))
        .collect::<Result<Vec<_>, _>>()?;
    let (seen, watch_task) = watch_broker(
        broker_port,
        Topic::GatewayStatus(lot.clone(), gateway_id.clone()),
        exit_displays,
    )
    .await?;

    let gateway_config = dir.join("gateway.toml");
    std::fs::write(
        &gateway_config,
        gateway_toml(
            &world,
            gateway_id.as_str(),
            broker_port,
            &key,
            &dir.join("journal"),
        )?,
    )?;
    let gateway = Proc::new(
        "gateway",
        gateway_bin,
        vec![
            "run".into(),
            "--config".into(),
            gateway_config.display().to_string(),
        ],
        dir.join("gateway.log"),
    );
    let mut sys = System {
        broker,
        broker_addr,
        servers,
        http_ports: http_ports.clone(),
        gateway,
        proxy,
        seen,
        database,
        restart_database: args.restart_database.clone(),
        counts: ChaosCounts::default(),
    };
    let outcome = async {
        for i in 0..instances {
            sys.start_server(i).await?;
        }
        sys.start_gateway().await?;
        let http = Url::parse(&format!("http://{proxy_addr}/"))?;
        println!(
            "chaos run in {}: dashboard {http} (sign in as chaos, password {password})",
            dir.display()
        );
        drive(args, &mut sys, &mut world, http, token, sandbox_secret, dir).await
    }
    .await;
    sys.shutdown().await;
    proxy_task.abort();
    watch_task.abort();
    sys.database.drop_database().await;
    outcome.map(|mut o| {
        o.instances = instances;
        o
    })
}

/// A random secret of `bytes` bytes, in hex.
fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The traffic and the faults at once, then the wait for rest and the verdict.
async fn drive(
    args: &ChaosArgs,
    sys: &mut System,
    world: &mut WorldConfig,
    http: Url,
    token: String,
    sandbox_secret: String,
    dir: &Path,
) -> anyhow::Result<ChaosOutcome> {
    let clock = Arc::new(ScaledClock::new(Utc::now(), args.speed));
    world.traffic.cars = args.cars;
    world.traffic.seed = args.seed;
    world.misread_rate = args.misread_rate;
    world.no_read_rate = args.no_read_rate;
    world.create_lot = true;
    // A car that comes back to an exit (its barrier did not open) does so some 45 s of real
    // time later: at two days a minute, that is a day and a half of the lot's clock.
    world.exit_window_minutes = Some(parkpay_server::tariff::MAX_EXIT_WINDOW_MINUTES);
    // Room for every car: a run of many lanes fills 400 spaces, and a car turned away from a
    // full lot would be counted lost. What the run tests is the money, not the space count.
    world.capacity = world.capacity.max(args.cars);
    world.api_token = Some(token.clone());
    world.sandbox_secret = Some(sandbox_secret.clone());
    // A car held while the servers are unreachable waits at the barrier for its decision, as a
    // driver would, rather than backing out.
    world.open_wait = Duration::from_secs(30);
    world.clear_wait = Duration::from_secs(15);
    world.lift_stuck_cars = true;
    world.settle_wait = Duration::from_secs(args.settle_secs);
    let truth_path = dir.join("truth.jsonl");
    world.truth_log = Some(truth_path.clone());
    let tariff: parkpay_server::tariff::Tariff =
        serde_json::from_value(example_tariff()).context("the example tariff")?;
    let fee = reference_tariff::fee_fn(tariff);
    world.fee = Some(fee.clone());
    // One connection per request, so a drained instance has nothing in hand when it is killed.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    world.http_client = Some(client.clone());

    // The schedule, over the traffic's real-time span, with the exits where they will be.
    let entries = world
        .lanes
        .iter()
        .filter(|(_, d)| *d == parkpay_protocol::Direction::Entry)
        .count();
    let cars = plan(&world.traffic, entries, world.lanes.len() - entries);
    let exits: Vec<Duration> = cars
        .iter()
        .map(|c| clock.real(c.arrives_after + c.dwell))
        .collect();
    let span = exits
        .iter()
        .max()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let count = args.faults.unwrap_or_else(|| {
        let kinds = 4 + sys.servers.len() + usize::from(sys.database.is_postgres());
        kinds.max(args.cars as usize / 40)
    });
    let faults = schedule(
        args.seed,
        count,
        sys.servers.len(),
        sys.database.is_postgres(),
        args.restart_database.is_some(),
        span,
        &exits,
    );
    println!(
        "{} cars over about {:.0} s of traffic; {} faults scheduled",
        args.cars,
        span.as_secs_f64(),
        faults.len()
    );

    let start = Instant::now();
    let traffic = crate::drive_audited(world.clone(), http.clone(), world_mqtt(sys)?, clock);
    let progress = Progress {
        tally: &world.tally,
        cars: u64::from(args.cars),
        span_s: span.as_secs_f64(),
    };
    let (driven, played) = tokio::join!(traffic, play(sys, &faults, start, progress));
    let records = played?;
    sys.revive().await?;
    let driven = driven.context("the traffic did not complete")?;
    tracing::info!(mismatches = driven.report.mismatches, "traffic done");

    // Rest: no charge moving, nothing left in the outbox, nothing undecided in the journal.
    let api = Api::new(&http)
        .with_client(client)
        .with_token(token)
        .with_sandbox_secret(sandbox_secret);
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let rest_since = Utc::now();
    loop {
        let moving = api
            .charges()
            .await?
            .iter()
            .filter(|c| c.status.is_worker_owned())
            .count();
        let outbox = sys.database.outbox_pending().await?;
        let journal = seen_status(&sys.seen)
            .filter(|s| s.at >= rest_since)
            .map(|s| s.journal_pending);
        if moving == 0 && outbox == 0 && journal == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(moving, outbox, ?journal, "the system did not come to rest");
            break;
        }
        // Polling: the API has no event to wait on for these.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ledger = Ledger {
        sessions: api.sessions(Some(world.lot.as_str()), None, None).await?,
        charges: api.charges().await?,
    };
    let cars = fold_cars(&read_facts(&truth_path)?);
    let verdict = audit(&cars, &ledger, &fee);
    let count_of =
        |k: MismatchKind| verdict.mismatches.iter().filter(|m| m.kind == k).count() as u64;
    let mut counts = sys.counts.clone();
    counts.stuck_lifted = world.tally.lifts();
    counts.provider_faults = sys
        .servers
        .iter()
        .map(|s| count_in_file(&s.log, "injected fault"))
        .sum();
    Ok(ChaosOutcome {
        seed: args.seed,
        backend: if sys.database.is_postgres() {
            "postgres+mosquitto"
        } else {
            "sqlite+mosquitto"
        },
        instances: sys.servers.len(),
        report: verdict.report,
        faults: records,
        counts,
        lost: count_of(MismatchKind::Lost),
        double: count_of(MismatchKind::Double),
        wrong: count_of(MismatchKind::Wrong),
        held_offline: sys.offline_holds(),
        opened_offline: sys
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offline_opens,
        paid_not_let_out: cars.iter().map(|c| u64::from(c.paid_not_let_out)).sum(),
        paid_not_let_out_plates: cars
            .iter()
            .filter(|c| c.paid_not_let_out > 0)
            .take(20)
            .map(|c| c.plate.clone())
            .collect(),
        awaiting_payment: ledger
            .charges
            .iter()
            .filter(|c| c.status == ChargeStatus::AwaitingPayment)
            .count() as u64,
        evidence: verdict
            .mismatches
            .iter()
            .take(EVIDENCE_CARS)
            .map(|m| evidence(dir, &truth_path, sys, m))
            .collect(),
        mismatches: verdict.mismatches,
        elapsed_s: 0.0,
        kept: None,
    })
}

/// How many mismatched cars' evidence an outcome carries.
const EVIDENCE_CARS: usize = 5;
/// Log lines kept per process and car.
const EVIDENCE_LINES: usize = 40;

/// A mismatched car's story: its recorded facts, then each process's log lines naming its
/// plate (the last [`EVIDENCE_LINES`] of each), so a failed run can be explained from its output.
fn evidence(dir: &Path, truth: &Path, sys: &System, m: &Mismatch) -> String {
    let mut out = format!("car {} {} ({:?}: {})\n", m.car, m.plate, m.kind, m.reason);
    let car = format!("\"car\":{}", m.car);
    if let Ok(facts) = std::fs::read_to_string(truth) {
        for line in facts.lines().filter(|l| {
            l.match_indices(&car)
                .any(|(i, _)| !l[i + car.len()..].starts_with(|c: char| c.is_ascii_digit()))
        }) {
            out.push_str("  fact ");
            out.push_str(line);
            out.push('\n');
        }
    }
    let logs = sys.servers.iter().map(|s| s.log.clone()).chain([
        sys.gateway.log.clone(),
        dir.join("mosquitto").join("stdout.log"),
    ]);
    for log in logs {
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&m.plate)).collect();
        let name = log
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for line in &lines[lines.len().saturating_sub(EVIDENCE_LINES)..] {
            out.push_str(&format!("  {name}: {line}\n"));
        }
    }
    out
}

fn world_mqtt(sys: &System) -> anyhow::Result<crate::MqttUrl> {
    Ok(crate::MqttUrl::new("127.0.0.1", sys.broker_addr.port()))
}

/// Lines of `path` that contain `needle` (0 when it cannot be read).
fn count_in_file(path: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.contains(needle)).count() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_reproducible_and_cover_every_kind() {
        let exits: Vec<Duration> = (0..200).map(|i| Duration::from_millis(i * 400)).collect();
        let span = Duration::from_secs(80);
        let a = schedule(7, 9, 2, true, false, span, &exits);
        assert_eq!(a, schedule(7, 9, 2, true, false, span, &exits));
        assert_ne!(a, schedule(8, 9, 2, true, false, span, &exits));
        assert_eq!(a.len(), 9);
        for kind in [
            FaultKind::ServerKill {
                instance: 0,
                during_exits: true,
            },
            FaultKind::ServerKill {
                instance: 1,
                during_exits: false,
            },
            FaultKind::GatewayKill,
            FaultKind::BrokerKill,
            FaultKind::DatabaseConnections,
            FaultKind::Partition,
            FaultKind::GatewayFreeze,
        ] {
            assert!(a.iter().any(|f| f.kind == kind), "{kind} missing: {a:?}");
        }
        assert!(a.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        assert!(a
            .iter()
            .all(|f| f.at_s >= 0.08 * 80.0 - 0.1 && f.at_s <= 0.85 * 80.0 + 0.6));
        // Without PostgreSQL there are no connections to terminate.
        let s = schedule(7, 20, 1, false, false, span, &exits);
        assert!(s
            .iter()
            .all(|f| f.kind != FaultKind::DatabaseConnections
                && f.kind != FaultKind::DatabaseRestart));
    }

    #[test]
    fn configuration_files_are_what_the_processes_read() {
        let toml = server_toml(
            "postgres://u@h/db",
            "chaos-a",
            8081,
            1884,
            "0123456789abcdef",
            0.2,
        );
        let c: parkpay_server::ServerConfig = figment_like(&toml);
        assert_eq!(c.instance.as_deref(), Some("chaos-a"));
        assert_eq!(c.payments.sandbox_fault_rate, 0.2);
        assert!(c.mqtt.shared_subscription);
    }

    fn figment_like(toml: &str) -> parkpay_server::ServerConfig {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, toml).unwrap();
        parkpay_server::ServerConfig::load(Some(&f), None).unwrap()
    }
}
