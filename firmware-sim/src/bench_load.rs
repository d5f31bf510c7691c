//! `parkpay-sim bench-load`: the server under a fixed offered rate of passage events, with the
//! floor beside it. The bench starts a server (embedded SQLite and broker, or the database and
//! broker it is given), plays one gateway serving many lanes, and publishes signed entries and
//! then exits of mandated drivers at a fixed rate. It times every event from its publication to
//! its decision arriving back at the gateway side. Alternating with each load phase it measures
//! the floor on the same broker and database: an MQTT echo of a payload of the same size, plus one
//! database commit. At the end it waits for the deductions and checks them against ground truth
//! (each stay costs exactly one unit). The last line is JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use parkpay_protocol::{
    decode, encode, Clock, Decision, Direction, EventId, GatewayId, LaneId, LotId, Money,
    PassageEvent, PlateCandidate, PlateColour, ReadQuality, SystemClock, Topic,
};
use parkpay_server::app::{App, NewLane};
use parkpay_server::config::{HttpConfig, MqttConfig, PaymentsConfig};
use parkpay_server::domain::*;
use parkpay_server::store::ChargeFilter;
use parkpay_server::tariff::Tariff;
use parkpay_server::{Server, ServerConfig};
use rand::SeedableRng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use uuid::Uuid;

use crate::tally::LatencySummary;

/// What one stay costs under the bench's tariff: one started 30-minute unit.
const FEE: i64 = 300;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchLoadArgs {
    /// Offered passage events per second (entries, then exits).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of load per repetition: the first half entries, the second half their exits.
    #[arg(long, default_value_t = 10)]
    pub secs: u32,
    /// Repetitions, each followed by a floor measurement.
    #[arg(long, default_value_t = 1)]
    pub reps: u32,
    /// Lanes of the bench's lot (half entry, half exit), all served by one gateway.
    #[arg(long, default_value_t = 64)]
    pub lanes: u32,
    /// Database URL; a fresh SQLite file when left out.
    #[arg(long)]
    pub database_url: Option<String>,
    /// An external broker (mqtt://HOST:PORT); the server's embedded broker when left out.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Seconds to wait after the last event for decisions and deductions.
    #[arg(long, default_value_t = 60)]
    pub settle_secs: u64,
    /// Server instances sharing the database and the broker (on a shared subscription), each
    /// in this process; more than one needs an external database.
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Also append the JSON result line to this file (for `bench-plot`).
    #[arg(long)]
    pub append: Option<std::path::PathBuf>,
    /// Seed of the drivers' plates; random when left out (a shared database keeps earlier runs'
    /// plates, and a plate belongs to one driver).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Default)]
struct Samples {
    /// Publication instant of each event not yet decided.
    sent: HashMap<Uuid, Instant>,
    /// From publication to decision, one per decided event.
    decided: Vec<Duration>,
    /// When the latest decision arrived.
    last: Option<Instant>,
}

/// A bench client's options: the server's own (URL parsing, packet limits), with a clean session
/// and room for many messages in flight.
fn options(url: &str, id: &str) -> anyhow::Result<MqttOptions> {
    let mut o = parkpay_server::mqtt::options(url, id)?;
    o.set_clean_session(true);
    o.set_manual_acks(false);
    o.set_inflight(1000);
    Ok(o)
}

/// Milliseconds, two decimals; NaN without a sample.
fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| (d.as_secs_f64() * 100_000.0).round() / 100.0)
}

/// Connects, subscribes to `filter`, and returns once the broker acknowledged it; what arrives
/// is handed to `on_publish`.
async fn subscriber(
    url: &str,
    id: &str,
    filter: &str,
    on_publish: impl Fn(&[u8]) + Send + 'static,
) -> anyhow::Result<AsyncClient> {
    let (client, mut el) = AsyncClient::new(options(url, id)?, 100_000);
    // As the gateway and the server do: small packets leave at once.
    el.network_options.set_tcp_nodelay(true);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.payload),
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                // Every handle of the client is gone: so is the connection.
                Err(rumqttc::ConnectionError::RequestsDone) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bench connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("the broker did not acknowledge the subscription")??;
    Ok(client)
}

fn bench_tariff() -> Tariff {
    let mut t = Tariff::example_cn();
    t.grace_minutes = 0;
    t.first_period = None;
    t.daily_cap = None;
    for b in &mut t.bands {
        b.unit_price = Money::cny(FEE);
    }
    t
}

/// Registers `n` drivers, each with a plate, a funded sandbox wallet and an active mandate.
async fn drivers(app: &App, n: usize, seed: u64) -> anyhow::Result<Vec<String>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut book = crate::plates::PlateBook::new();
    let now = Utc::now();
    let mut plates = Vec::with_capacity(n);
    for i in 0..n {
        let plate = book.issue(&mut rng, PlateColour::Blue);
        let d = Driver {
            id: Uuid::now_v7(),
            name: format!("bench driver {i}"),
            phone: None,
            created_at: now,
        };
        app.store.insert_driver(&d).await?;
        app.store
            .insert_vehicle(
                &Vehicle {
                    plate: plate.as_str().to_string(),
                    colour: PlateColour::Blue,
                    driver_id: d.id,
                    class: None,
                    locked_at: None,
                    created_at: now,
                },
                &plate.match_key(),
            )
            .await?;
        let wallet = format!("bench-{}", d.id.simple());
        app.store
            .put_wallet(
                &Wallet {
                    reference: wallet.clone(),
                    balance: Money::cny(1_000_000),
                    fail_next: 0,
                },
                now,
            )
            .await?;
        app.store
            .insert_mandate(&Mandate {
                id: Uuid::now_v7(),
                driver_id: d.id,
                provider: "sandbox".into(),
                provider_ref: wallet,
                status: MandateStatus::Active,
                per_charge_cap: None,
                monthly_cap: None,
                channel: "bench".into(),
                signed_at: now,
                revoked_at: None,
            })
            .await?;
        plates.push(plate.as_str().to_string());
    }
    Ok(plates)
}

/// One floor sample per `1/rate` for `secs`: an echo through the broker of `size` bytes, then one
/// database commit.
async fn floor(
    app: &App,
    url: &str,
    topic: &str,
    rate: u32,
    secs: u32,
    size: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // One connection publishes and receives, as a gateway does: the broker's PUBACK and the
    // echo then travel on the same socket, where Nagle's algorithm would delay the second.
    let publisher = subscriber(
        url,
        &format!("bench-echo-{}", Uuid::new_v4().simple()),
        topic,
        move |_| {
            let _ = tx.send(());
        },
    )
    .await?;
    let payload = vec![b'x'; size];
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let n = (rate * secs.min(5)).max(20);
    let mut out = Vec::with_capacity(n as usize);
    let mut next = Instant::now();
    for _ in 0..n {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let t = Instant::now();
        publisher
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await?;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("an echo did not come back")?;
        app.store
            .insert_audit(&AuditEntry {
                id: Uuid::now_v7(),
                at: Utc::now(),
                actor: "bench".into(),
                action: "bench.floor".into(),
                subject: String::new(),
                detail: String::new(),
            })
            .await?;
        out.push(t.elapsed());
    }
    // A long run measures the floor many times: each echo connection ends with its floor.
    publisher.disconnect().await?;
    Ok(out)
}

/// What a run measured; `bench-load` prints it, its last line as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchOutcome {
    pub backend: &'static str,
    /// Server instances sharing the load.
    pub instances: u32,
    pub offered: u32,
    /// Events published.
    pub events: usize,
    /// Events decided per second, from each repetition's first publication to its last decision.
    pub achieved: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub floor_p50_ms: f64,
    pub floor_p99_ms: f64,
    pub ratio_p99: f64,
    /// Events never decided, plus stays never charged.
    pub lost: usize,
    /// Stays charged more than once.
    pub double: usize,
    /// Charges of another amount than the stay's, or not settled.
    pub wrong: usize,
    /// Each repetition on its own, to see a long run stay flat.
    pub per_rep: Vec<RepSummary>,
}

/// One repetition: its decision p99, and the process's memory and open descriptors after it
/// (the server runs in this process).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepSummary {
    pub p99_ms: f64,
    pub rss_mib: f64,
    pub open_fds: usize,
}

/// This process's resident memory (MiB) and open file descriptors, where /proc tells.
fn process_usage() -> (f64, usize) {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    ((rss_kib / 1024.0 * 10.0).round() / 10.0, fds)
}

/// Runs the bench and prints what it measured, the last line as JSON.
pub async fn bench_load(args: &BenchLoadArgs) -> anyhow::Result<()> {
    let o = run(args).await?;
    println!(
        "{}: offered {} events/s ({} events), decided {:.0}/s; decision p50 {:.1} ms, p90 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; floor p50 {:.1} ms, p99 {:.1} ms; lost {}, double {}, wrong {}",
        o.backend, o.offered, o.events, o.achieved, o.p50_ms, o.p90_ms, o.p99_ms, o.max_ms, o.floor_p50_ms,
        o.floor_p99_ms, o.lost, o.double, o.wrong
    );
    let line = serde_json::to_string(&o)?;
    if let Some(path) = &args.append {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        writeln!(f, "{line}")?;
    }
    println!("{line}");
    Ok(())
}

/// Runs the bench; see the module doc.
pub async fn run(args: &BenchLoadArgs) -> anyhow::Result<BenchOutcome> {
    if args.rate == 0 || args.secs < 2 || args.lanes < 2 {
        bail!("--rate must be positive, --secs at least 2, --lanes at least 2");
    }
    if !(1..=8).contains(&args.instances) {
        bail!("--instances must be between 1 and 8");
    }
    if args.instances > 1 && args.database_url.is_none() {
        bail!("--instances above 1 needs --database-url (instances share one database)");
    }
    let dir = tempfile::tempdir()?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let backend = match (database_url.starts_with("sqlite"), args.mqtt.is_some()) {
        (true, false) => "sqlite+embedded",
        (true, true) => "sqlite+mqtt",
        (false, false) => "postgres+embedded",
        (false, true) => "postgres+mqtt",
    };
    let lot = LotId::parse(format!(
        "bench-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let config = ServerConfig {
        database_url,
        http: HttpConfig {
            bind: ([127, 0, 0, 1], 0).into(),
            ..HttpConfig::default()
        },
        mqtt: MqttConfig {
            broker: args.mqtt.clone().unwrap_or_else(|| "embedded".into()),
            embedded_bind: ([127, 0, 0, 1], 0).into(),
            lots: Some(vec![lot.to_string()]),
            ..MqttConfig::default()
        },
        payments: PaymentsConfig {
            poll_interval_ms: 50,
            ..PaymentsConfig::default()
        },
        ..ServerConfig::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The first instance brings the broker (embedded, or the one given); the others join it.
    let mut url = String::new();
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    for i in 0..args.instances {
        let mut c = config.clone();
        c.instance = Some(format!("bench-{}-{i}", lot.as_str()));
        c.mqtt.shared_subscription = args.instances > 1;
        if i > 0 {
            c.mqtt.broker = url.clone();
        }
        let server = Server::build(c, clock.clone()).await?;
        if i == 0 {
            url = server.mqtt_url().to_string();
        }
        apps.push(server.app());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        servers.push((stop, running));
    }
    let app = apps[0].clone();

    let gateway = GatewayId::parse(format!("gw-{lot}"))?;
    let lanes: Vec<(LaneId, Direction)> = (0..args.lanes)
        .map(|i| {
            let d = if i % 2 == 0 {
                Direction::Entry
            } else {
                Direction::Exit
            };
            let name = format!("{}-{i}", if i % 2 == 0 { "in" } else { "out" });
            (LaneId::parse(name).expect("a valid lane id"), d)
        })
        .collect();
    let lot_row = Lot {
        id: lot.clone(),
        name: "Bench lot".into(),
        // Not counted: the bench measures the pay-per-stay path (a counted lot adds one count
        // of its open sessions to every entry).
        capacity: 0,
        reserved_spaces: 0,
        tariff: bench_tariff(),
        tariff_version: 1,
        created_at: Utc::now(),
    };
    let new_lanes = lanes
        .iter()
        .map(|(id, direction)| NewLane {
            id: id.clone(),
            direction: *direction,
            gateway: gateway.clone(),
        })
        .collect();
    app.create_lot(lot_row, new_lanes, "bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = parkpay_server::config::hex_decode(
        &app.add_gateway_key(&gateway, true, "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    )
    .context("the gateway key")?;

    // Each repetition's cars enter, then leave; the next repetition brings the same cars back
    // (new stays), so a long run registers one repetition's drivers, not all of them.
    let per_rep = (args.rate * args.secs / 2) as usize;
    let cars = per_rep * args.reps as usize;
    eprintln!("registering {per_rep} mandated drivers");
    let plates = drivers(&app, per_rep, args.seed.unwrap_or_else(rand::random)).await?;

    let samples = Arc::new(Mutex::new(Samples::default()));
    let seen = samples.clone();
    let decision_key = key.clone();
    // The bench's gateway, on one connection like a real one: events out, decisions in.
    let publisher = subscriber(
        &url,
        &format!("bench-gw-{}", lot.as_str()),
        &format!("parkpay/v1/lots/{lot}/lanes/+/decisions"),
        move |payload| {
            let Ok(d) = decode::<Decision>(payload, Some(&decision_key)) else {
                return;
            };
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = s.sent.remove(&d.body.event_id.0) {
                s.decided.push(t.elapsed());
                s.last = Some(Instant::now());
            }
        },
    )
    .await?;

    let entries: Vec<&(LaneId, Direction)> =
        lanes.iter().filter(|l| l.1 == Direction::Entry).collect();
    let exits: Vec<&(LaneId, Direction)> =
        lanes.iter().filter(|l| l.1 == Direction::Exit).collect();
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut floors = Vec::new();
    let mut payload_size = 600;
    let mut offered_events = 0usize;
    // Time under load: from each repetition's first publication to its last decision.
    let mut load_time = Duration::ZERO;
    let bar = indicatif::ProgressBar::new((cars * 2) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rep_summaries = Vec::new();
    // One echo topic for the whole run: a broker keeps a log per subscription filter (the
    // embedded one in memory), so a new topic per repetition would grow it in a long run.
    let echo = format!("parkpay-bench/{}/echo", Uuid::new_v4().simple());
    for rep in 0..args.reps as usize {
        let cars = &plates[..];
        let rep_first = samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decided
            .len();
        let started = Instant::now();
        let mut next = Instant::now();
        for (phase, direction) in [(0, Direction::Entry), (1, Direction::Exit)] {
            for (i, plate) in cars.iter().enumerate() {
                tokio::time::sleep_until(next.into()).await;
                next += every;
                let lane = if phase == 0 {
                    &entries[i % entries.len()].0
                } else {
                    &exits[i % exits.len()].0
                };
                let ev = PassageEvent {
                    event_id: EventId::new(),
                    lot: lot.clone(),
                    lane: lane.clone(),
                    gateway: gateway.clone(),
                    direction,
                    captured_at: clock.now(),
                    candidates: vec![PlateCandidate {
                        plate: plate.clone(),
                        confidence: 0.97,
                        colour: PlateColour::Blue,
                    }],
                    quality: ReadQuality::Confident,
                    evidence_digest: Some("0".repeat(64)),
                    resent: false,
                };
                let bytes = encode(&ev, clock.now(), Some(&key));
                payload_size = bytes.len();
                let topic = Topic::Events(lot.clone(), lane.clone()).to_string();
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sent
                    .insert(ev.event_id.0, Instant::now());
                publisher
                    .publish(topic, QoS::AtLeastOnce, false, bytes)
                    .await?;
                offered_events += 1;
                bar.inc(1);
            }
        }
        load_time += started.elapsed();
        // Let this repetition's decisions come in before the floor is measured beside it.
        let drained = Instant::now();
        while !samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .is_empty()
            && drained.elapsed() < Duration::from_secs(args.settle_secs)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rep_p99 = {
            let s = samples.lock().unwrap_or_else(|p| p.into_inner());
            let mut mine = s.decided[rep_first..].to_vec();
            mine.sort();
            ms(LatencySummary::of_sorted(&mine).p99)
        };
        let (rss_mib, open_fds) = process_usage();
        rep_summaries.push(RepSummary {
            p99_ms: rep_p99,
            rss_mib,
            open_fds,
        });
        if args.reps > 1 {
            bar.println(format!(
                "repetition {}: p99 {rep_p99:.1} ms, {rss_mib:.1} MiB resident, {open_fds} open descriptors",
                rep + 1
            ));
        }
        bar.set_message(format!("floor {}", rep + 1));
        floors.extend(floor(&app, &url, &echo, args.rate, args.secs, payload_size).await?);
    }
    bar.finish_and_clear();

    // Deductions: every car charged once, exactly one unit, and settled.
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let charges = loop {
        let all: Vec<Charge> = app
            .store
            .charges(&ChargeFilter {
                status: None,
                driver: None,
                session: None,
                limit: 10_000_000,
            })
            .await?
            .into_iter()
            .filter(|c| c.lot == lot)
            .collect();
        let settled = all
            .iter()
            .filter(|c| c.status == ChargeStatus::Succeeded)
            .count();
        if settled >= cars || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut per_session: HashMap<Uuid, usize> = HashMap::new();
    for c in &charges {
        *per_session.entry(c.session_id).or_default() += 1;
    }
    let double = per_session.values().filter(|n| **n > 1).count();
    let wrong = charges
        .iter()
        .filter(|c| c.amount.minor != FEE || c.status != ChargeStatus::Succeeded)
        .count();
    let (lost, mut decided) = {
        let s = samples.lock().unwrap_or_else(|p| p.into_inner());
        (
            s.sent.len() + cars.saturating_sub(per_session.len()),
            s.decided.clone(),
        )
    };
    decided.sort();
    floors.sort();
    let achieved = decided.len() as f64 / load_time.as_secs_f64();
    // Nearest-rank quantiles, the same rule as the demo's latency line.
    let load = LatencySummary::of_sorted(&decided);
    let floor = LatencySummary::of_sorted(&floors);
    let outcome = BenchOutcome {
        backend,
        instances: args.instances,
        offered: args.rate,
        events: offered_events,
        achieved: (achieved * 100.0).round() / 100.0,
        p50_ms: ms(load.p50),
        p90_ms: ms(load.p90),
        p99_ms: ms(load.p99),
        max_ms: ms(load.max),
        floor_p50_ms: ms(floor.p50),
        floor_p99_ms: ms(floor.p99),
        ratio_p99: (ms(load.p99) / ms(floor.p99) * 100.0).round() / 100.0,
        lost,
        double,
        wrong,
        per_rep: rep_summaries,
    };
    for (stop, running) in servers {
        let _ = stop.send(());
        let _ = running.await;
    }
    Ok(outcome)
}
