//! The SQLite and PostgreSQL backends. Both dialects accept `$N` placeholders, `ON CONFLICT`,
//! partial indexes and `CAST(... AS BIGINT)`, so one body of SQL serves both; the `backend!`
//! macro stamps it out once per driver, and only connection setup differs.
//!
//! Instants are stored as integer milliseconds (UTC) on both backends, so ordering and
//! arithmetic are identical and no driver-specific date handling can drift between them.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use parkpay_protocol::LotId;
use uuid::Uuid;

use super::batch::Batcher;
use super::{ChargeUpdate, PassageOutcome, PassageWrite, StoreError, StoreResult};
use crate::domain::{Mandate, Session, Vehicle};

/// Read-only connections of a SQLite store, beside its one writer.
const SQLITE_READERS: u32 = 2;

/// Group committers of a PostgreSQL store (each holds a connection while it commits).
const PG_COMMITTERS: usize = 4;

pub struct SqliteStore {
    pool: SqlitePool,
    /// Connections for the reads of the hot path, beside the one that writes: WAL lets them
    /// read the last committed state while the writer works.
    reader: SqlitePool,
    writes: mpsc::Sender<Pending>,
    batches: Batches,
}

pub struct PgStore {
    pool: PgPool,
    /// The same pool: PostgreSQL's connections all read and write.
    reader: PgPool,
    writes: mpsc::Sender<Pending>,
    batches: Batches,
}

/// Batch readers of a PostgreSQL store per kind of read (each holds a connection while it
/// reads).
const PG_BATCH_READERS: usize = 3;

/// A lot's open stay of a plate, with whether it has unredeemed validations and whether the
/// provider tracks it.
type StayRow = (Session, bool, bool);

/// A driver's mandates with what each spent since the month's start, and the driver's arrears.
type PayerRow = (Vec<(Mandate, i64)>, i64);

/// The hot path's reads, each batched across concurrent passages ([`super::batch`]).
struct Batches {
    /// A plate's vehicle, and whether the plate is on a list of the lot.
    plates: Batcher<(String, LotId), (Option<Vehicle>, bool)>,
    /// A lot's open stay of a plate, with whether it has unredeemed validations and whether
    /// the provider tracks it.
    stays: Batcher<(LotId, String), Option<StayRow>>,
    /// A driver's mandates with what each spent since the month's start, and the driver's
    /// arrears.
    payers: Batcher<(Uuid, DateTime<Utc>), PayerRow>,
}

/// A write waiting for its group commit, and where its outcome goes: a passage, or a charge's
/// outcome from the payment worker (the two writes of the hot path).
enum Pending {
    Passage(
        Box<PassageWrite>,
        oneshot::Sender<StoreResult<PassageOutcome>>,
    ),
    Charge(Box<ChargeUpdate>, oneshot::Sender<StoreResult<()>>),
}

/// What a write of a group came to, kept until the group commits.
enum Done {
    Passage(PassageOutcome),
    Charge,
}

impl Pending {
    /// Hands the write's outcome to whoever waits for it.
    fn answer(self, outcome: StoreResult<Done>) {
        match self {
            Pending::Passage(_, reply) => {
                let _ = reply.send(outcome.and_then(|d| match d {
                    Done::Passage(o) => Ok(o),
                    Done::Charge => {
                        Err(StoreError::Corrupt("a passage answered as a charge".into()))
                    }
                }));
            }
            Pending::Charge(_, reply) => {
                let _ = reply.send(outcome.map(|_| ()));
            }
        }
    }
}

/// The most writes one transaction commits.
const MAX_GROUP: usize = 64;

/// The writes waiting to be committed, shared by a backend's committers.
type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>;

/// The next group of writes to commit (up to [`MAX_GROUP`]).
async fn next_group(queue: &Queue) -> Option<Vec<Pending>> {
    super::batch::next_batch(queue, MAX_GROUP).await
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed charge must survive a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One connection: SQLite has a single writer, and deferred transactions that read and
        // then write would otherwise deadlock each other with SQLITE_BUSY.
        let read_opts = opts.clone().read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        // One committer: there is one connection, and one writer.
        let writes = SqliteStore::committers(pool.clone(), 1);
        let reader = SqlitePoolOptions::new()
            .max_connections(SQLITE_READERS)
            .connect_with(read_opts)
            .await?;
        let batches = SqliteStore::batches(reader.clone(), SQLITE_READERS as usize);
        Ok(SqliteStore {
            pool,
            reader,
            writes,
            batches,
        })
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        // A few committers, so that one group's round trips overlap another's commit.
        let writes = PgStore::committers(pool.clone(), PG_COMMITTERS);
        let batches = PgStore::batches(pool.clone(), PG_BATCH_READERS);
        Ok(PgStore {
            reader: pool.clone(),
            pool,
            writes,
            batches,
        })
    }
}

/// How long a pooled connection may have been idle and still be handed out without a ping.
const FRESH: Duration = Duration::from_millis(500);

/// Pings a connection that has been idle for a while before it is handed out (a failed ping
/// closes it, and the pool hands out another). The pool pings every connection it takes back,
/// so one used a moment ago is known to be alive: pinging it again would add a round trip to
/// every statement of the hot path.
async fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= FRESH {
        conn.ping().await?;
    }
    Ok(true)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("instant {ms}")))
}

fn opt_at(ms: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    ms.map(at).transpose()
}

fn uuid(s: &str) -> StoreResult<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("uuid {s:?}")))
}

fn opt_uuid(s: Option<String>) -> StoreResult<Option<uuid::Uuid>> {
    s.as_deref().map(uuid).transpose()
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Domain values serialise infallibly: plain structs with string keys.
    serde_json::to_string(v).expect("domain values serialise to JSON")
}

/// `WITH b (lo, hi) AS (VALUES ($k, $k+1), ...)`: the spans of a report as a table, their
/// placeholders numbered from `first`. Bind each span's `lo` and `hi` (milliseconds) in order.
fn spans_table(first: usize, n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
        .collect();
    format!("WITH b (lo, hi) AS (VALUES {})", rows.join(", "))
}

/// The index of each span by its start, to put grouped rows back in the caller's order.
fn span_index(spans: &[super::Span]) -> std::collections::HashMap<i64, usize> {
    spans
        .iter()
        .enumerate()
        .map(|(i, s)| (ms(s.lo), i))
        .collect()
}

macro_rules! backend {
    ($store:ident, $db:ty, $row:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use parkpay_protocol::{Currency, Decision, Direction, GatewayId, LaneId, LotId, Money, PlateColour};
            use sqlx::Row;
            use uuid::Uuid;

            use crate::domain::*;
            use crate::store::*;
            use crate::store::sql::*;

            const SESSION_COLS: &str = "id, lot_id, plate, status, driver_id, entry_event_id, entry_lane, entry_at, exit_event_id, exit_lane, exit_at, fee_minor, currency, quote, updated_at";
            const CHARGE_COLS: &str = "id, session_id, lot_id, driver_id, mandate_id, amount_minor, currency, status, method, idempotency_key, attempts, next_attempt_at, provider_txn, last_error, created_at, updated_at, settled_at, refunded_minor, advanced";
            const REFUND_COLS: &str = "id, charge_id, out_refund_no, amount_minor, currency, reason, status, provider_ref, last_error, actor, created_at, updated_at, settled_at";
            const EXCEPTION_COLS: &str = "id, lot_id, lane_id, kind, plate, event_id, session_id, charge_id, detail, created_at, resolved_at, resolution";

            fn grant_from(r: &$row) -> StoreResult<Grant> {
                let role: String = r.try_get("role")?;
                Ok(Grant {
                    role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
                    lots: Grant::parse_lots(r.try_get::<Option<String>, _>("lots")?.as_deref()),
                })
            }

            fn token_from(r: &$row) -> StoreResult<ApiToken> {
                Ok(ApiToken {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    name: r.try_get("name")?,
                    grant: grant_from(r)?,
                    created_by: r.try_get("created_by")?,
                    created_at: at(r.try_get("created_at")?)?,
                    revoked_at: opt_at(r.try_get("revoked_at")?)?,
                })
            }

            fn account_from(r: &$row) -> StoreResult<Account> {
                Ok(Account {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    username: r.try_get("username")?,
                    grant: grant_from(r)?,
                    created_at: at(r.try_get("created_at")?)?,
                    disabled_at: opt_at(r.try_get("disabled_at")?)?,
                })
            }

            fn lot_from(r: &$row) -> StoreResult<Lot> {
                Ok(Lot {
                    id: LotId::parse(r.try_get::<String, _>("id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    name: r.try_get("name")?,
                    capacity: r.try_get("capacity")?,
                    reserved_spaces: r.try_get("reserved_spaces")?,
                    tariff: crate::tariff::from_stored_json(&r.try_get::<String, _>("tariff")?)
                        .map_err(|e| StoreError::Corrupt(format!("tariff: {e}")))?,
                    tariff_version: r.try_get("tariff_version")?,
                    created_at: at(r.try_get("created_at")?)?,
                })
            }

            fn vehicle_from(r: &$row) -> StoreResult<Vehicle> {
                let colour: String = r.try_get("colour")?;
                Ok(Vehicle {
                    plate: r.try_get("plate")?,
                    colour: PlateColour::parse(&colour).ok_or_else(|| StoreError::Corrupt(format!("colour {colour:?}")))?,
                    driver_id: uuid(&r.try_get::<String, _>("driver_id")?)?,
                    class: r.try_get::<Option<String>, _>("class")?.map(|c| VehicleClass::parse(&c).ok_or_else(|| StoreError::Corrupt(format!("class {c:?}")))).transpose()?,
                    locked_at: opt_at(r.try_get("locked_at")?)?,
                    created_at: at(r.try_get("created_at")?)?,
                })
            }

            fn list_entry_from(r: &$row) -> StoreResult<ListEntry> {
                let kind: String = r.try_get("kind")?;
                Ok(ListEntry {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    kind: ListKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("list kind {kind:?}")))?,
                    lot: r.try_get::<Option<String>, _>("lot_id")?.map(|l| LotId::parse(l).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()?,
                    plate: r.try_get("plate")?,
                    valid_from: at(r.try_get("valid_from")?)?,
                    valid_until: opt_at(r.try_get("valid_until")?)?,
                    grace_minutes: r.try_get("grace_minutes")?,
                    percent_off: r.try_get::<Option<i64>, _>("percent_off")?.map(|p| u32::try_from(p).map_err(|_| StoreError::Corrupt(format!("percent_off {p}")))).transpose()?,
                    reason: r.try_get("reason")?,
                    created_by: r.try_get("created_by")?,
                    created_at: at(r.try_get("created_at")?)?,
                    revoked_at: opt_at(r.try_get("revoked_at")?)?,
                    revoked_by: r.try_get("revoked_by")?,
                })
            }

            fn merchant_from(r: &$row) -> StoreResult<Merchant> {
                let currency: String = r.try_get("currency")?;
                Ok(Merchant {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    name: r.try_get("name")?,
                    minutes_off: r.try_get("minutes_off")?,
                    amount_off: money(r.try_get("amount_off")?, &currency)?,
                    daily_limit: r.try_get("daily_limit")?,
                    stackable: r.try_get::<i64, _>("stackable")? != 0,
                    created_at: at(r.try_get("created_at")?)?,
                    disabled_at: opt_at(r.try_get("disabled_at")?)?,
                })
            }

            /// A validation row joined with its merchant's name (`merchant`).
            fn validation_from(r: &$row) -> StoreResult<Validation> {
                let currency: String = r.try_get("currency")?;
                Ok(Validation {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    merchant_id: uuid(&r.try_get::<String, _>("merchant_id")?)?,
                    merchant: r.try_get("merchant")?,
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    code: r.try_get("code")?,
                    session_id: opt_uuid(r.try_get("session_id")?)?,
                    minutes_off: r.try_get("minutes_off")?,
                    amount_off: money(r.try_get("amount_off")?, &currency)?,
                    issued_at: at(r.try_get("issued_at")?)?,
                    bound_at: opt_at(r.try_get("bound_at")?)?,
                    redeemed_at: opt_at(r.try_get("redeemed_at")?)?,
                })
            }

            const VALIDATION_SELECT: &str = "SELECT v.id, v.merchant_id, m.name AS merchant, v.lot_id, v.code, v.session_id, v.minutes_off, v.amount_off, \
                v.currency, v.issued_at, v.bound_at, v.redeemed_at FROM validations v JOIN merchants m ON m.id = v.merchant_id";

            /// Refuses to bind a validation of a (non-)stackable merchant to a stay that already has
            /// validations, unless all of them and the new one are stackable.
            async fn check_stacking(tx: &mut sqlx::Transaction<'static, $db>, session: Uuid, stackable: bool) -> StoreResult<()> {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n, COALESCE(MIN(m.stackable), 1) AS all_stack FROM validations v JOIN merchants m ON m.id = v.merchant_id WHERE v.session_id = $1",
                )
                .bind(session.to_string())
                .fetch_one(&mut **tx)
                .await?;
                let n: i64 = row.try_get("n")?;
                let all_stack: i64 = row.try_get("all_stack")?;
                if n > 0 && !(stackable && all_stack != 0) {
                    return Err(StoreError::Conflict("this stay already has a validation; one per stay".into()));
                }
                Ok(())
            }

            fn mandate_from(r: &$row) -> StoreResult<Mandate> {
                let currency: String = r.try_get("currency")?;
                let status: String = r.try_get("status")?;
                let cap = |col: &str| -> StoreResult<Option<Money>> {
                    r.try_get::<Option<i64>, _>(col)?.map(|m| money(m, &currency)).transpose()
                };
                Ok(Mandate {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    driver_id: uuid(&r.try_get::<String, _>("driver_id")?)?,
                    provider: r.try_get("provider")?,
                    provider_ref: r.try_get("provider_ref")?,
                    status: MandateStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("mandate status {status:?}")))?,
                    per_charge_cap: cap("per_charge_cap")?,
                    monthly_cap: cap("monthly_cap")?,
                    channel: r.try_get("channel")?,
                    signed_at: at(r.try_get("signed_at")?)?,
                    revoked_at: opt_at(r.try_get("revoked_at")?)?,
                })
            }

            fn audit_from(r: &$row) -> StoreResult<AuditEntry> {
                Ok(AuditEntry {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    at: at(r.try_get("at")?)?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: r.try_get("detail")?,
                })
            }

            fn session_from(r: &$row) -> StoreResult<Session> {
                let status: String = r.try_get("status")?;
                let currency: Option<String> = r.try_get("currency")?;
                let fee = match (r.try_get::<Option<i64>, _>("fee_minor")?, currency) {
                    (Some(m), Some(c)) => Some(money(m, &c)?),
                    _ => None,
                };
                let lane = |col: &str| -> StoreResult<Option<LaneId>> {
                    r.try_get::<Option<String>, _>(col)?
                        .map(|s| LaneId::parse(s).map_err(|e| StoreError::Corrupt(e.to_string())))
                        .transpose()
                };
                Ok(Session {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    plate: r.try_get("plate")?,
                    status: SessionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("session status {status:?}")))?,
                    driver_id: opt_uuid(r.try_get("driver_id")?)?,
                    entry_event_id: opt_uuid(r.try_get("entry_event_id")?)?,
                    entry_lane: lane("entry_lane")?,
                    entry_at: at(r.try_get("entry_at")?)?,
                    exit_event_id: opt_uuid(r.try_get("exit_event_id")?)?,
                    exit_lane: lane("exit_lane")?,
                    exit_at: opt_at(r.try_get("exit_at")?)?,
                    fee,
                    quote: r.try_get::<Option<String>, _>("quote")?.map(|q| json(&q, "quote")).transpose()?,
                    updated_at: at(r.try_get("updated_at")?)?,
                })
            }

            fn charge_from(r: &$row) -> StoreResult<Charge> {
                let status: String = r.try_get("status")?;
                let method: String = r.try_get("method")?;
                Ok(Charge {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    session_id: uuid(&r.try_get::<String, _>("session_id")?)?,
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    driver_id: opt_uuid(r.try_get("driver_id")?)?,
                    mandate_id: opt_uuid(r.try_get("mandate_id")?)?,
                    amount: money(r.try_get("amount_minor")?, &r.try_get::<String, _>("currency")?)?,
                    status: ChargeStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("charge status {status:?}")))?,
                    method: ChargeMethod::parse(&method).ok_or_else(|| StoreError::Corrupt(format!("charge method {method:?}")))?,
                    idempotency_key: r.try_get("idempotency_key")?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: opt_at(r.try_get("next_attempt_at")?)?,
                    provider_txn: r.try_get("provider_txn")?,
                    last_error: r.try_get("last_error")?,
                    created_at: at(r.try_get("created_at")?)?,
                    updated_at: at(r.try_get("updated_at")?)?,
                    settled_at: opt_at(r.try_get("settled_at")?)?,
                    refunded: money(r.try_get("refunded_minor")?, &r.try_get::<String, _>("currency")?)?,
                    advanced: r.try_get::<i64, _>("advanced")? != 0,
                })
            }

            fn refund_from(r: &$row) -> StoreResult<Refund> {
                let status: String = r.try_get("status")?;
                Ok(Refund {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    charge_id: uuid(&r.try_get::<String, _>("charge_id")?)?,
                    out_refund_no: r.try_get("out_refund_no")?,
                    amount: money(r.try_get("amount_minor")?, &r.try_get::<String, _>("currency")?)?,
                    reason: r.try_get("reason")?,
                    status: RefundStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("refund status {status:?}")))?,
                    provider_ref: r.try_get("provider_ref")?,
                    last_error: r.try_get("last_error")?,
                    actor: r.try_get("actor")?,
                    created_at: at(r.try_get("created_at")?)?,
                    updated_at: at(r.try_get("updated_at")?)?,
                    settled_at: opt_at(r.try_get("settled_at")?)?,
                })
            }

            fn recon_from(r: &$row) -> StoreResult<ReconRun> {
                let date: String = r.try_get("bill_date")?;
                Ok(ReconRun {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    provider: r.try_get("provider")?,
                    bill_date: date.parse().map_err(|_| StoreError::Corrupt(format!("bill date {date:?}")))?,
                    ran_at: at(r.try_get("ran_at")?)?,
                    actor: r.try_get("actor")?,
                    status: r.try_get("status")?,
                    detail: r.try_get("detail")?,
                    matched: r.try_get("matched")?,
                    differences: r.try_get("differences")?,
                })
            }

            /// Resolves the open exceptions raised about a charge: it was paid or let go.
            async fn resolve_charge_exceptions<'c, E>(e: E, charge: Uuid, resolution: &str, now: DateTime<Utc>) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query("UPDATE exceptions SET resolved_at = $1, resolution = $2 WHERE charge_id = $3 AND resolved_at IS NULL")
                    .bind(ms(now))
                    .bind(resolution)
                    .bind(charge.to_string())
                    .execute(e)
                    .await?;
                Ok(())
            }

            fn exception_from(r: &$row) -> StoreResult<ExceptionRecord> {
                let kind: String = r.try_get("kind")?;
                Ok(ExceptionRecord {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    lane: r.try_get::<Option<String>, _>("lane_id")?.and_then(|s| LaneId::parse(s).ok()),
                    kind: ExceptionKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("exception kind {kind:?}")))?,
                    plate: r.try_get("plate")?,
                    event_id: opt_uuid(r.try_get("event_id")?)?,
                    session_id: opt_uuid(r.try_get("session_id")?)?,
                    charge_id: opt_uuid(r.try_get("charge_id")?)?,
                    detail: r.try_get("detail")?,
                    created_at: at(r.try_get("created_at")?)?,
                    resolved_at: opt_at(r.try_get("resolved_at")?)?,
                    resolution: r.try_get("resolution")?,
                })
            }

            fn lane_from(r: &$row) -> StoreResult<Lane> {
                let direction: String = r.try_get("direction")?;
                let corrupt = |e: parkpay_protocol::IdError| StoreError::Corrupt(e.to_string());
                Ok(Lane {
                    lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(corrupt)?,
                    id: LaneId::parse(r.try_get::<String, _>("lane_id")?).map_err(corrupt)?,
                    direction: match direction.as_str() {
                        "entry" => Direction::Entry,
                        "exit" => Direction::Exit,
                        other => return Err(StoreError::Corrupt(format!("lane direction {other:?}"))),
                    },
                    gateway: GatewayId::parse(r.try_get::<String, _>("gateway_id")?).map_err(corrupt)?,
                    created_at: at(r.try_get("created_at")?)?,
                })
            }

            async fn upsert_lane<'c, E>(e: E, l: &Lane) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query(
                    "INSERT INTO lanes (lot_id, lane_id, direction, gateway_id, created_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (lot_id, lane_id) DO UPDATE SET direction = $3, gateway_id = $4",
                )
                .bind(l.lot.as_str())
                .bind(l.id.as_str())
                .bind(l.direction.as_str())
                .bind(l.gateway.as_str())
                .bind(ms(l.created_at))
                .execute(e)
                .await?;
                Ok(())
            }

            fn open_from(r: &$row) -> StoreResult<OpenSession> {
                Ok(OpenSession {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    plate: r.try_get("plate")?,
                    plate_key: r.try_get("plate_key")?,
                })
            }

            /// The decision stored with an event, if the event is stored.
            async fn stored_decision<'c, E>(e: E, event_id: Uuid) -> StoreResult<Option<Decision>>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query("SELECT decision FROM events WHERE event_id = $1")
                    .bind(event_id.to_string())
                    .fetch_optional(e)
                    .await?
                    .map(|r| json(&r.try_get::<String, _>("decision")?, "decision"))
                    .transpose()
            }

            /// One attempt of a charge, for its history.
            async fn insert_attempt<'c, E>(e: E, charge: Uuid, a: &ChargeAttempt) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query("INSERT INTO charge_attempts (id, charge_id, attempt, at, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(Uuid::now_v7().to_string())
                    .bind(charge.to_string())
                    .bind(a.attempt)
                    .bind(ms(a.at))
                    .bind(a.outcome.clone())
                    .bind(a.detail.clone())
                    .execute(e)
                    .await?;
                Ok(())
            }

            /// A charge's exception, unless the same kind is already open for that charge (a
            /// retried debt that fails again keeps its one exception).
            async fn insert_charge_exception<'c, E>(e: E, x: &ExceptionRecord) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                write_exception(e, x, true).await
            }

            async fn insert_exception<'c, E>(e: E, x: &ExceptionRecord) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                write_exception(e, x, false).await
            }

            async fn write_exception<'c, E>(e: E, x: &ExceptionRecord, unless_open: bool) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                let sql = if unless_open {
                    "INSERT INTO exceptions (id, lot_id, lane_id, kind, plate, event_id, session_id, charge_id, detail, created_at, resolved_at, resolution) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
                     WHERE NOT EXISTS (SELECT 1 FROM exceptions WHERE charge_id = $8 AND kind = $4 AND resolved_at IS NULL)"
                } else {
                    "INSERT INTO exceptions (id, lot_id, lane_id, kind, plate, event_id, session_id, charge_id, detail, created_at, resolved_at, resolution) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                };
                sqlx::query(sql)
                    .bind(x.id.to_string())
                    .bind(x.lot.as_str())
                    .bind(x.lane.as_ref().map(|l| l.to_string()))
                    .bind(x.kind.as_str())
                    .bind(x.plate.clone())
                    .bind(x.event_id.map(|u| u.to_string()))
                    .bind(x.session_id.map(|u| u.to_string()))
                    .bind(x.charge_id.map(|u| u.to_string()))
                    .bind(x.detail.clone())
                    .bind(ms(x.created_at))
                    .bind(x.resolved_at.map(ms))
                    .bind(x.resolution.clone())
                    .execute(e)
                    .await?;
                Ok(())
            }

            async fn insert_outbox<'c, E>(e: E, o: &OutboxMessage, now: DateTime<Utc>) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query("INSERT INTO outbox (id, topic, payload, created_at, published_at) VALUES ($1, $2, $3, $4, NULL)")
                    .bind(o.id.to_string())
                    .bind(o.topic.clone())
                    .bind(o.payload.clone())
                    .bind(ms(now))
                    .execute(e)
                    .await?;
                Ok(())
            }

            async fn insert_list_row<'c, E>(ex: E, e: &ListEntry) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query(
                    "INSERT INTO plate_lists (id, kind, lot_id, plate, valid_from, valid_until, grace_minutes, percent_off, reason, created_by, created_at, revoked_at, revoked_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(e.id.to_string())
                .bind(e.kind.as_str())
                .bind(e.lot.as_ref().map(|l| l.to_string()))
                .bind(e.plate.clone())
                .bind(ms(e.valid_from))
                .bind(e.valid_until.map(ms))
                .bind(e.grace_minutes)
                .bind(e.percent_off.map(i64::from))
                .bind(e.reason.clone())
                .bind(e.created_by.clone())
                .bind(ms(e.created_at))
                .bind(e.revoked_at.map(ms))
                .bind(e.revoked_by.clone())
                .execute(ex)
                .await?;
                Ok(())
            }

            async fn insert_audit_row<'c, E>(e: E, a: &AuditEntry) -> StoreResult<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                // An entry written again (its first write's answer was lost) is written once.
                sqlx::query("INSERT INTO audit (id, at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING")
                    .bind(a.id.to_string())
                    .bind(ms(a.at))
                    .bind(a.actor.clone())
                    .bind(a.action.clone())
                    .bind(a.subject.clone())
                    .bind(a.detail.clone())
                    .execute(e)
                    .await?;
                Ok(())
            }

            /// Writes one passage on `tx`, alone or with a group: the caller commits it when the
            /// outcome is `Committed`, and rolls it back otherwise.
            async fn write_passage(tx: &mut <$db as sqlx::Database>::Connection, w: &PassageWrite) -> StoreResult<PassageOutcome> {
                if !insert_event(&mut *tx, w).await? {
                    return duplicate(&mut *tx, w).await;
                }
                write_changes(&mut *tx, w).await?;
                insert_outbox(&mut *tx, &w.outbox, w.event.received_at).await?;
                Ok(PassageOutcome::Committed)
            }

            /// A passage whose event is stored already: the stored decision, nothing written.
            async fn duplicate(tx: &mut <$db as sqlx::Database>::Connection, w: &PassageWrite) -> StoreResult<PassageOutcome> {
                let stored = stored_decision(&mut *tx, w.event.event_id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("event {} has no decision", w.event.event_id)))?;
                Ok(PassageOutcome::Duplicate(Box::new(stored)))
            }

            const EVENT_COLS: &str = "event_id, lot_id, lane_id, gateway_id, direction, captured_at, received_at, plate, quality, resent, payload, session_id, decision";

            fn bind_event<'q>(q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>, w: &PassageWrite)
                -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>
            {
                let ev = &w.event;
                q.bind(ev.event_id.to_string())
                    .bind(ev.lot.as_str().to_string())
                    .bind(ev.lane.clone())
                    .bind(ev.gateway.clone())
                    .bind(ev.direction.clone())
                    .bind(ms(ev.captured_at))
                    .bind(ms(ev.received_at))
                    .bind(ev.plate.clone())
                    .bind(ev.quality.clone())
                    .bind(i64::from(ev.resent))
                    .bind(ev.payload.clone())
                    .bind(w.session_id.map(|u| u.to_string()))
                    .bind(to_json(&w.decision))
            }

            /// Stores a passage's event; false when its event id is stored already.
            async fn insert_event(tx: &mut <$db as sqlx::Database>::Connection, w: &PassageWrite) -> StoreResult<bool> {
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    format!("INSERT INTO events ({EVENT_COLS}) {} ON CONFLICT (event_id) DO NOTHING", batch::values_of(1, 13))
                });
                let inserted = bind_event(sqlx::query(SQL.as_str()), w).execute(&mut *tx).await?;
                Ok(inserted.rows_affected() == 1)
            }

            /// Stores the events of several passages (with distinct event ids) in one
            /// statement; the ids it stored (the others were stored already).
            async fn insert_events(tx: &mut <$db as sqlx::Database>::Connection, ws: &[&PassageWrite]) -> StoreResult<std::collections::HashSet<String>> {
                let sql = format!("INSERT INTO events ({EVENT_COLS}) {} ON CONFLICT (event_id) DO NOTHING RETURNING event_id", batch::values_of(ws.len(), 13));
                let mut q = sqlx::query(&sql).persistent(false);
                for w in ws {
                    q = bind_event(q, w);
                }
                q.fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| Ok(r.try_get::<String, _>("event_id")?))
                    .collect()
            }

            /// Stores the outbox rows of several passages in one statement.
            async fn insert_outboxes(tx: &mut <$db as sqlx::Database>::Connection, ws: &[&PassageWrite]) -> StoreResult<()> {
                if ws.is_empty() {
                    return Ok(());
                }
                let sql = format!("INSERT INTO outbox (id, topic, payload, created_at) {}", batch::values_of(ws.len(), 4));
                let mut q = sqlx::query(&sql).persistent(false);
                for w in ws {
                    q = q.bind(w.outbox.id.to_string())
                        .bind(w.outbox.topic.clone())
                        .bind(w.outbox.payload.clone())
                        .bind(ms(w.event.received_at));
                }
                q.execute(&mut *tx).await?;
                Ok(())
            }

            /// What a passage changes beside its event and its outbox row: its stays, ticket,
            /// validations, charge, exceptions, resolution and audit rows.
            async fn write_changes(tx: &mut <$db as sqlx::Database>::Connection, w: &PassageWrite) -> StoreResult<()> {
                let ev = &w.event;
                let now = ev.received_at;
                for change in &w.sessions {
                    let r = match change {
                        SessionChange::Open(s, key) => {
                            sqlx::query(
                                "INSERT INTO sessions (id, lot_id, plate, plate_key, status, driver_id, entry_event_id, entry_lane, entry_at, updated_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                            )
                            .bind(s.id.to_string())
                            .bind(s.lot.as_str())
                            .bind(s.plate.clone())
                            .bind(key.clone())
                            .bind(s.status.as_str())
                            .bind(s.driver_id.map(|u| u.to_string()))
                            .bind(s.entry_event_id.map(|u| u.to_string()))
                            .bind(s.entry_lane.as_ref().map(|l| l.to_string()))
                            .bind(ms(s.entry_at))
                            .bind(ms(now))
                            .execute(&mut *tx)
                            .await
                        }
                        SessionChange::Close { id, status, exit_event_id, exit_lane, exit_at, fee, quote_json, driver_id, plate } => {
                            sqlx::query(
                                "UPDATE sessions SET status = $1, exit_event_id = $2, exit_lane = $3, exit_at = $4, fee_minor = $5, currency = $6, \
                                 quote = $7, driver_id = COALESCE($8, driver_id), updated_at = $9, plate = COALESCE($11, plate), \
                                 plate_key = COALESCE($12, plate_key) WHERE id = $10 AND status = 'open'",
                            )
                            .bind(status.as_str())
                            .bind(exit_event_id.to_string())
                            .bind(exit_lane.clone())
                            .bind(ms(*exit_at))
                            .bind(fee.minor)
                            .bind(fee.currency.as_str())
                            .bind(quote_json.clone())
                            .bind(driver_id.map(|u| u.to_string()))
                            .bind(ms(now))
                            .bind(id.to_string())
                            .bind(plate.as_ref().map(|p| p.0.clone()))
                            .bind(plate.as_ref().map(|p| p.1.clone()))
                            .execute(&mut *tx)
                            .await
                        }
                        SessionChange::MoveHeldExit { id, exit_event_id, exit_lane } => {
                            sqlx::query(
                                "UPDATE sessions SET exit_event_id = $1, exit_lane = $2, updated_at = $3 \
                                 WHERE id = $4 AND status = 'awaiting_payment'",
                            )
                            .bind(exit_event_id.to_string())
                            .bind(exit_lane.clone())
                            .bind(ms(now))
                            .bind(id.to_string())
                            .execute(&mut *tx)
                            .await
                        }
                        SessionChange::MarkStale { id } => {
                            sqlx::query("UPDATE sessions SET status = 'exception', updated_at = $1 WHERE id = $2 AND status = 'open'")
                                .bind(ms(now))
                                .bind(id.to_string())
                                .execute(&mut *tx)
                                .await
                        }
                    };
                    match r {
                        Ok(done) if done.rows_affected() == 1 => {}
                        Ok(_) => return Err(StoreError::Conflict("session is no longer open".into())),
                        Err(e) if unique_violation(&e) => return Err(StoreError::Conflict("plate already has an open session".into())),
                        Err(e) => return Err(e.into()),
                    }
                }
                if let Some(t) = &w.ticket {
                    let r = sqlx::query("INSERT INTO tickets (secret_hash, session_id, lot_id, entry_event_id, created_at) VALUES ($1, $2, $3, $4, $5)")
                        .bind(t.secret_hash.clone())
                        .bind(t.session_id.to_string())
                        .bind(w.event.lot.as_str())
                        .bind(t.entry_event_id.to_string())
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await;
                    match r {
                        Err(e) if unique_violation(&e) => return Err(StoreError::Conflict("a ticket was issued for this passage already".into())),
                        other => { other?; }
                    }
                }
                for v in &w.redeem {
                    let done = sqlx::query("UPDATE validations SET redeemed_at = $2 WHERE id = $1 AND redeemed_at IS NULL")
                        .bind(v.to_string())
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if done != 1 {
                        return Err(StoreError::Conflict(format!("validation {v} was redeemed meanwhile")));
                    }
                }
                if let Some(c) = &w.charge {
                    let r = sqlx::query(
                        "INSERT INTO charges (id, session_id, lot_id, driver_id, mandate_id, amount_minor, currency, status, method, idempotency_key, attempts, \
                         next_attempt_at, provider_txn, last_error, created_at, updated_at, settled_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                    )
                    .bind(c.id.to_string())
                    .bind(c.session_id.to_string())
                    .bind(c.lot.as_str())
                    .bind(c.driver_id.map(|u| u.to_string()))
                    .bind(c.mandate_id.map(|u| u.to_string()))
                    .bind(c.amount.minor)
                    .bind(c.amount.currency.as_str())
                    .bind(c.status.as_str())
                    .bind(c.method.as_str())
                    .bind(c.idempotency_key.clone())
                    .bind(c.attempts)
                    .bind(c.next_attempt_at.map(ms))
                    .bind(c.provider_txn.clone())
                    .bind(c.last_error.clone())
                    .bind(ms(c.created_at))
                    .bind(ms(c.updated_at))
                    .bind(c.settled_at.map(ms))
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Err(e) if unique_violation(&e) => return Err(StoreError::Conflict("session already has a charge".into())),
                        other => {
                            other?;
                        }
                    }
                }
                for x in &w.exceptions {
                    insert_exception(&mut *tx, x).await?;
                }
                if let Some((id, resolution)) = &w.resolves {
                    let r = sqlx::query("UPDATE exceptions SET resolved_at = $1, resolution = $2 WHERE id = $3 AND resolved_at IS NULL")
                        .bind(ms(now))
                        .bind(resolution.clone())
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    if r.rows_affected() == 0 {
                        return Err(StoreError::Conflict(format!("exception {id} is already resolved")));
                    }
                }
                for a in &w.audit {
                    insert_audit_row(&mut *tx, a).await?;
                }
                Ok(())
            }


            /// Writes a charge's outcome and releases its lease, on `tx`; `Conflict` if the
            /// lease was lost meanwhile.
            async fn write_charge_update(tx: &mut <$db as sqlx::Database>::Connection, u: &ChargeUpdate) -> StoreResult<()> {
                let r = sqlx::query(
                    "UPDATE charges SET status = $1, attempts = $2, next_attempt_at = $3, provider_txn = COALESCE($4, provider_txn), last_error = $5, \
                     settled_at = $6, updated_at = $7, lease_owner = NULL, lease_until = NULL, advanced = $10 WHERE id = $8 AND lease_owner = $9",
                )
                .bind(u.status.as_str())
                .bind(u.attempts)
                .bind(u.next_attempt_at.map(ms))
                .bind(u.provider_txn.clone())
                .bind(u.last_error.clone())
                .bind(u.settled_at.map(ms))
                .bind(ms(u.attempt.at))
                .bind(u.id.to_string())
                .bind(u.lease_owner.clone())
                .bind(i64::from(u.advanced))
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!("lease on charge {} was lost", u.id)));
                }
                if u.status == ChargeStatus::Succeeded {
                    resolve_charge_exceptions(&mut *tx, u.id, "collected by the provider", u.attempt.at).await?;
                }
                insert_attempt(&mut *tx, u.id, &u.attempt).await?;
                if let Some(x) = &u.exception {
                    insert_charge_exception(&mut *tx, x).await?;
                }
                Ok(())
            }

            /// One write of a group, on the group's transaction.
            async fn write_one(tx: &mut <$db as sqlx::Database>::Connection, job: &Pending) -> StoreResult<Done> {
                match job {
                    Pending::Passage(w, _) => write_passage(tx, w).await.map(Done::Passage),
                    Pending::Charge(u, _) => write_charge_update(tx, u).await.map(|()| Done::Charge),
                }
            }

            /// One write in its own transaction (a duplicate passage writes nothing).
            async fn commit_alone(pool: &sqlx::Pool<$db>, job: &Pending) -> StoreResult<Done> {
                let mut tx = pool.begin().await?;
                let done = write_one(&mut tx, job).await?;
                match done {
                    Done::Passage(PassageOutcome::Duplicate(_)) => tx.rollback().await?,
                    _ => tx.commit().await?,
                }
                Ok(done)
            }

            /// Commits a group of writes: in one transaction (one flush to disk for all of
            /// them) when all of it succeeds, each alone otherwise, so that one write's
            /// conflict is its own. A write's outcome is sent only after its commit: no lane
            /// hears of a decision that could still be lost. (A group whose COMMIT failed may
            /// have been written after all; written again alone, a passage then finds its
            /// event stored and answers with the stored decision, and a charge's update finds
            /// its lease gone and conflicts, as when another instance took it.)
            async fn commit_group(pool: &sqlx::Pool<$db>, group: Vec<Pending>) {
                if group.len() > 1 {
                    match try_group(pool, &group).await {
                        Ok(outcomes) => {
                            for (job, done) in group.into_iter().zip(outcomes) {
                                job.answer(Ok(done));
                            }
                            return;
                        }
                        Err(e) => tracing::info!(
                            writes = group.len(),
                            error = %e,
                            "a group commit failed; each of its writes commits alone"
                        ),
                    }
                }
                for job in group {
                    let done = commit_alone(pool, &job).await;
                    job.answer(done);
                }
            }

            /// A group in one transaction, or the first error if any of it failed (and was
            /// rolled back).
            async fn try_group(pool: &sqlx::Pool<$db>, group: &[Pending]) -> StoreResult<Vec<Done>> {
                let mut tx = pool.begin().await?;
                let passages: Vec<&PassageWrite> = group
                    .iter()
                    .filter_map(|job| match job {
                        Pending::Passage(w, _) => Some(&**w),
                        Pending::Charge(..) => None,
                    })
                    .collect();
                let ids: std::collections::HashSet<_> = passages.iter().map(|w| w.event.event_id).collect();
                let mut outcomes = Vec::with_capacity(group.len());
                if passages.len() < 2 || ids.len() < passages.len() {
                    // Nothing to gather, or the same event twice (each finds the other's).
                    for job in group {
                        outcomes.push(write_one(&mut tx, job).await?);
                    }
                } else {
                    // The events first, in one statement (nothing refers to them), then each
                    // write's changes in the group's order, then the outbox rows in one
                    // statement (nothing refers to them either).
                    let stored = insert_events(&mut tx, &passages).await?;
                    let mut committed = Vec::with_capacity(passages.len());
                    for job in group {
                        outcomes.push(match job {
                            Pending::Passage(w, _) if stored.contains(&w.event.event_id.to_string()) => {
                                write_changes(&mut tx, w).await?;
                                committed.push(&**w);
                                Done::Passage(PassageOutcome::Committed)
                            }
                            Pending::Passage(w, _) => Done::Passage(duplicate(&mut tx, w).await?),
                            Pending::Charge(u, _) => {
                                write_charge_update(&mut tx, u).await?;
                                Done::Charge
                            }
                        });
                    }
                    insert_outboxes(&mut tx, &committed).await?;
                }
                tx.commit().await?;
                Ok(outcomes)
            }

            /// The row index a batched statement's row answers, if it is one of the keys.
            fn key_index(r: &$row, keys: usize) -> StoreResult<Option<usize>> {
                let i: i64 = r.try_get("q_i")?;
                Ok(usize::try_from(i).ok().filter(|i| *i < keys))
            }

            /// Plates' vehicles and whether each is listed for its lot, one statement for all.
            async fn plates_many(pool: &sqlx::Pool<$db>, keys: Vec<(String, LotId)>) -> StoreResult<Vec<(Option<Vehicle>, bool)>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT CAST(q.column3 AS BIGINT) AS q_i, v.*, EXISTS (SELECT 1 FROM plate_lists l WHERE l.plate = q.column1 \
                     AND (l.lot_id = q.column2 OR l.lot_id IS NULL) AND l.revoked_at IS NULL) AS listed \
                     FROM {} AS q LEFT JOIN vehicles v ON v.plate = q.column1",
                    batch::values(keys.len(), 2)
                );
                let mut query = sqlx::query(&sql).persistent(false);
                for (plate, lot) in &keys {
                    query = query.bind(plate.clone()).bind(lot.as_str().to_string());
                }
                let mut out: Vec<Option<(Option<Vehicle>, bool)>> = keys.iter().map(|_| None).collect();
                for r in query.fetch_all(pool).await? {
                    let Some(i) = key_index(&r, keys.len())? else { continue };
                    let vehicle = match r.try_get::<Option<String>, _>("plate")? {
                        Some(_) => Some(vehicle_from(&r)?),
                        None => None,
                    };
                    out[i] = Some((vehicle, r.try_get::<bool, _>("listed")?));
                }
                out.into_iter()
                    .map(|v| v.ok_or_else(|| StoreError::Corrupt("a plate's row is missing from a batch".into())))
                    .collect()
            }

            /// Lots' open stays of plates, with their flags, one statement for all.
            async fn stays_many(pool: &sqlx::Pool<$db>, keys: Vec<(LotId, String)>) -> StoreResult<Vec<Option<StayRow>>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT CAST(q.column3 AS BIGINT) AS q_i, {SESSION_COLS}, \
                     EXISTS (SELECT 1 FROM validations v WHERE v.session_id = s.id AND v.redeemed_at IS NULL) AS validated, \
                     EXISTS (SELECT 1 FROM provider_parkings p WHERE p.session_id = s.id) AS tracked \
                     FROM {} AS q JOIN sessions s ON s.lot_id = q.column1 AND s.plate = q.column2 AND s.status = 'open'",
                    batch::values(keys.len(), 2)
                );
                let mut query = sqlx::query(&sql).persistent(false);
                for (lot, plate) in &keys {
                    query = query.bind(lot.as_str().to_string()).bind(plate.clone());
                }
                let mut out: Vec<Option<StayRow>> = keys.iter().map(|_| None).collect();
                for r in query.fetch_all(pool).await? {
                    let Some(i) = key_index(&r, keys.len())? else { continue };
                    out[i] = Some((session_from(&r)?, r.try_get("validated")?, r.try_get("tracked")?));
                }
                Ok(out)
            }

            /// Drivers' mandates with what each spent since its month's start, and their
            /// arrears, one statement for all.
            async fn payers_many(pool: &sqlx::Pool<$db>, keys: Vec<(Uuid, DateTime<Utc>)>) -> StoreResult<Vec<PayerRow>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT CAST(q.column3 AS BIGINT) AS q_i, m.*, \
                     (SELECT CAST(COALESCE(SUM(c.amount_minor), 0) AS BIGINT) FROM charges c \
                      WHERE c.mandate_id = m.id AND c.created_at >= q.column2 AND c.status NOT IN ('waived')) AS spent, \
                     (SELECT CAST(COALESCE(SUM(a.amount_minor), 0) AS BIGINT) FROM charges a \
                      WHERE a.driver_id = q.column1 AND a.status = 'arrears') AS arrears \
                     FROM {} AS q LEFT JOIN mandates m ON m.driver_id = q.column1 ORDER BY q.column3, m.signed_at",
                    batch::values(keys.len(), 2)
                );
                let mut query = sqlx::query(&sql).persistent(false);
                for (driver, month_start) in &keys {
                    query = query.bind(driver.to_string()).bind(ms(*month_start));
                }
                let mut out: Vec<Option<PayerRow>> = keys.iter().map(|_| None).collect();
                for r in query.fetch_all(pool).await? {
                    let Some(i) = key_index(&r, keys.len())? else { continue };
                    let (mandates, arrears) = out[i].get_or_insert_with(|| (Vec::new(), 0));
                    *arrears = r.try_get("arrears")?;
                    if r.try_get::<Option<String>, _>("id")?.is_some() {
                        mandates.push((mandate_from(&r)?, r.try_get::<i64, _>("spent")?));
                    }
                }
                out.into_iter()
                    .map(|v| v.ok_or_else(|| StoreError::Corrupt("a driver's row is missing from a batch".into())))
                    .collect()
            }

            /// The first of a batch of one.
            fn only<V>(values: Vec<V>) -> StoreResult<V> {
                values.into_iter().next().ok_or_else(|| StoreError::Corrupt("a batch of one answered nothing".into()))
            }

            impl $store {
                /// Starts the batched readers of the hot path on `pool`, `workers` per kind of
                /// read.
                fn batches(pool: sqlx::Pool<$db>, workers: usize) -> Batches {
                    macro_rules! batcher {
                        ($many:ident) => {{
                            let (p1, p2) = (pool.clone(), pool.clone());
                            Batcher::new(
                                workers,
                                move |keys| {
                                    let pool = p1.clone();
                                    async move { $many(&pool, keys).await }
                                },
                                move |key| {
                                    let pool = p2.clone();
                                    async move { only($many(&pool, vec![key]).await?) }
                                },
                            )
                        }};
                    }
                    Batches {
                        plates: batcher!(plates_many),
                        stays: batcher!(stays_many),
                        payers: batcher!(payers_many),
                    }
                }

                /// Starts `n` tasks that commit the writes (passages, charge outcomes) sent on
                /// the returned channel, in groups; they end when the store (the sender) is
                /// dropped.
                fn committers(pool: sqlx::Pool<$db>, n: usize) -> mpsc::Sender<Pending> {
                    let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
                    let queue: Queue = Arc::new(tokio::sync::Mutex::new(rx));
                    for _ in 0..n {
                        let (pool, queue) = (pool.clone(), queue.clone());
                        tokio::spawn(async move {
                            while let Some(group) = next_group(&queue).await {
                                commit_group(&pool, group).await;
                            }
                        });
                    }
                    tx
                }
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> &'static str {
                    <$db as sqlx::Database>::NAME
                }

                async fn ping(&self) -> StoreResult<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                async fn insert_lot(&self, lot: &Lot, lanes: &[Lane]) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "INSERT INTO lots (id, name, capacity, reserved_spaces, currency, tariff, tariff_version, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(lot.id.as_str())
                    .bind(lot.name.clone())
                    .bind(lot.capacity)
                    .bind(lot.reserved_spaces)
                    .bind(lot.tariff.currency.as_str())
                    .bind(to_json(&lot.tariff))
                    .bind(lot.tariff_version)
                    .bind(ms(lot.created_at))
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate(format!("lot {} already exists", lot.id))),
                        other => other.map(|_| ())?,
                    }
                    for l in lanes {
                        upsert_lane(&mut *tx, l).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn update_tariff(&self, lot: &LotId, tariff_json: &str, currency: Currency, audit: &AuditEntry) -> StoreResult<i64> {
                    let mut tx = self.pool.begin().await?;
                    let row = sqlx::query(
                        "UPDATE lots SET tariff = $1, currency = $2, tariff_version = tariff_version + 1 WHERE id = $3 RETURNING tariff_version",
                    )
                    .bind(tariff_json)
                    .bind(currency.as_str())
                    .bind(lot.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("lot {lot}")))?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(row.try_get("tariff_version")?)
                }

                async fn put_lane(&self, lane: &Lane, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    upsert_lane(&mut *tx, lane).await?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn delete_lane(&self, lot: &LotId, lane: &LaneId, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query("DELETE FROM lanes WHERE lot_id = $1 AND lane_id = $2")
                        .bind(lot.as_str())
                        .bind(lane.as_str())
                        .execute(&mut *tx)
                        .await?;
                    if r.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("lane {lot}/{lane}")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn lane(&self, lot: &LotId, lane: &LaneId) -> StoreResult<Option<Lane>> {
                    sqlx::query("SELECT * FROM lanes WHERE lot_id = $1 AND lane_id = $2")
                        .bind(lot.as_str())
                        .bind(lane.as_str())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| lane_from(&r))
                        .transpose()
                }

                async fn lanes(&self, lot: &LotId) -> StoreResult<Vec<Lane>> {
                    sqlx::query("SELECT * FROM lanes WHERE lot_id = $1 ORDER BY lane_id")
                        .bind(lot.as_str())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(lane_from)
                        .collect()
                }

                async fn lot(&self, id: &LotId) -> StoreResult<Option<Lot>> {
                    sqlx::query("SELECT * FROM lots WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| lot_from(&r))
                        .transpose()
                }

                async fn lots(&self) -> StoreResult<Vec<Lot>> {
                    sqlx::query("SELECT * FROM lots ORDER BY id")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(lot_from)
                        .collect()
                }

                async fn lot_stats(&self, lot: &LotId, since: DateTime<Utc>) -> StoreResult<LotStats> {
                    let occupancy: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE lot_id = $1 AND status = 'open'")
                        .bind(lot.as_str())
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("n")?;
                    let revenue_minor: i64 = sqlx::query(
                        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS s FROM charges WHERE lot_id = $1 AND status = 'succeeded' AND settled_at >= $2",
                    )
                    .bind(lot.as_str())
                    .bind(ms(since))
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("s")?;
                    let passages: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE lot_id = $1 AND received_at >= $2")
                        .bind(lot.as_str())
                        .bind(ms(since))
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("n")?;
                    Ok(LotStats { occupancy, revenue_minor, passages })
                }

                async fn insert_driver(&self, d: &Driver) -> StoreResult<()> {
                    sqlx::query("INSERT INTO drivers (id, name, phone, created_at, phone_key) VALUES ($1, $2, $3, $4, $5)")
                        .bind(d.id.to_string())
                        .bind(d.name.clone())
                        .bind(d.phone.clone())
                        .bind(ms(d.created_at))
                        .bind(crate::portal::phone_key(d.phone.as_deref()))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn driver(&self, id: Uuid) -> StoreResult<Option<Driver>> {
                    sqlx::query("SELECT * FROM drivers WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<Driver> {
                            Ok(Driver {
                                id: uuid(&r.try_get::<String, _>("id")?)?,
                                name: r.try_get("name")?,
                                phone: r.try_get("phone")?,
                                created_at: at(r.try_get("created_at")?)?,
                            })
                        })
                        .transpose()
                }

                async fn insert_vehicle(&self, v: &Vehicle, plate_key: &str) -> StoreResult<()> {
                    let r = sqlx::query("INSERT INTO vehicles (plate, plate_key, colour, driver_id, class, locked_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(v.plate.clone())
                        .bind(plate_key)
                        .bind(v.colour.as_str())
                        .bind(v.driver_id.to_string())
                        .bind(v.class.map(|c| c.as_str()))
                        .bind(v.locked_at.map(ms))
                        .bind(ms(v.created_at))
                        .execute(&self.pool)
                        .await;
                    match r {
                        Err(e) if unique_violation(&e) => Err(StoreError::Duplicate(format!("plate {} is already bound", v.plate))),
                        other => other.map(|_| ()).map_err(Into::into),
                    }
                }

                async fn vehicle(&self, plate: &str) -> StoreResult<Option<Vehicle>> {
                    sqlx::query("SELECT * FROM vehicles WHERE plate = $1")
                        .bind(plate)
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| vehicle_from(&r))
                        .transpose()
                }

                async fn plate_facts(&self, plate: &str, lot: &LotId) -> StoreResult<PlateFacts> {
                    let (vehicle, listed) = self.batches.plates.get((plate.to_string(), lot.clone())).await?;
                    let lists = match listed {
                        true => self.lists_of_plate(plate, lot).await?,
                        false => Vec::new(),
                    };
                    Ok(PlateFacts { vehicle, lists })
                }

                async fn set_vehicle_lock(&self, plate: &str, locked_at: Option<DateTime<Utc>>, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    // Locking a locked car (or unlocking an unlocked one) changes nothing.
                    let done = sqlx::query(
                        "UPDATE vehicles SET locked_at = $2 WHERE plate = $1 AND ((locked_at IS NULL) <> ($2 IS NULL))",
                    )
                    .bind(plate)
                    .bind(locked_at.map(ms))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 0 {
                        return match sqlx::query("SELECT 1 AS one FROM vehicles WHERE plate = $1").bind(plate).fetch_optional(&mut *tx).await? {
                            Some(_) => Err(StoreError::Conflict(format!("{plate} is already {}", if locked_at.is_some() { "locked" } else { "unlocked" }))),
                            None => Err(StoreError::NotFound(format!("vehicle {plate}"))),
                        };
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn locked_plates(&self) -> StoreResult<Vec<String>> {
                    sqlx::query("SELECT plate FROM vehicles WHERE locked_at IS NOT NULL ORDER BY plate")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| Ok(r.try_get("plate")?))
                        .collect()
                }

                async fn insert_list_entry(&self, e: &ListEntry, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    insert_list_row(&mut *tx, e).await?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn revoke_list_entry(&self, id: Uuid, by: &str, at: DateTime<Utc>, audit: &AuditEntry) -> StoreResult<ListEntry> {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE plate_lists SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL")
                        .bind(id.to_string())
                        .bind(ms(at))
                        .bind(by)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    let row = sqlx::query("SELECT * FROM plate_lists WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else {
                        return Err(StoreError::NotFound(format!("list entry {id}")));
                    };
                    if done == 0 {
                        return Err(StoreError::Conflict(format!("list entry {id} is already revoked")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    list_entry_from(&row)
                }

                async fn list_entry(&self, id: Uuid) -> StoreResult<Option<ListEntry>> {
                    sqlx::query("SELECT * FROM plate_lists WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| list_entry_from(&r))
                        .transpose()
                }

                async fn list_entries(&self, f: &ListFilter) -> StoreResult<Vec<ListEntry>> {
                    // NULL parameters match everything; `lot` also matches entries for every lot.
                    sqlx::query(
                        "SELECT * FROM plate_lists WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR lot_id = $2 OR lot_id IS NULL) \
                         AND ($3 IS NULL OR plate = $3) AND ($4 = 0 OR (revoked_at IS NULL AND (valid_until IS NULL OR valid_until + grace_minutes * 60000 > $5))) \
                         ORDER BY created_at DESC, id LIMIT $6",
                    )
                    .bind(f.kind.map(|k| k.as_str()))
                    .bind(f.lot.as_ref().map(|l| l.to_string()))
                    .bind(f.plate.clone())
                    .bind(i64::from(f.current_at.is_some()))
                    .bind(f.current_at.map_or(0, ms))
                    .bind(if f.limit > 0 { f.limit } else { 100 })
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(list_entry_from)
                    .collect()
                }

                async fn lists_of_plate(&self, plate: &str, lot: &LotId) -> StoreResult<Vec<ListEntry>> {
                    sqlx::query("SELECT * FROM plate_lists WHERE plate = $1 AND (lot_id = $2 OR lot_id IS NULL) AND revoked_at IS NULL ORDER BY created_at, id")
                        .bind(plate)
                        .bind(lot.as_str())
                        .fetch_all(&self.reader)
                        .await?
                        .iter()
                        .map(list_entry_from)
                        .collect()
                }

                async fn pass_purchase(&self, id: Uuid) -> StoreResult<Option<PassPurchase>> {
                    let Some(r) = sqlx::query("SELECT * FROM pass_purchases WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let currency: String = r.try_get("currency")?;
                    Ok(Some(PassPurchase {
                        id: uuid(&r.try_get::<String, _>("id")?)?,
                        lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        plate: r.try_get("plate")?,
                        driver_id: uuid(&r.try_get::<String, _>("driver_id")?)?,
                        mandate_id: uuid(&r.try_get::<String, _>("mandate_id")?)?,
                        months: r.try_get("months")?,
                        amount: money(r.try_get("amount_minor")?, &currency)?,
                        provider_txn: r.try_get("provider_txn")?,
                        list_entry_id: uuid(&r.try_get::<String, _>("list_entry_id")?)?,
                        created_at: at(r.try_get("created_at")?)?,
                    }))
                }

                async fn record_pass_purchase(&self, p: &PassPurchase, pass: &ListEntry, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    insert_list_row(&mut *tx, pass).await?;
                    let r = sqlx::query(
                        "INSERT INTO pass_purchases (id, lot_id, plate, driver_id, mandate_id, months, amount_minor, currency, provider_txn, list_entry_id, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(p.id.to_string())
                    .bind(p.lot.as_str())
                    .bind(p.plate.clone())
                    .bind(p.driver_id.to_string())
                    .bind(p.mandate_id.to_string())
                    .bind(p.months)
                    .bind(p.amount.minor)
                    .bind(p.amount.currency.as_str())
                    .bind(p.provider_txn.clone())
                    .bind(p.list_entry_id.to_string())
                    .bind(ms(p.created_at))
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate(format!("pass purchase {}", p.id))),
                        other => { other?; }
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn ticket_session(&self, secret_hash: &str) -> StoreResult<Option<Uuid>> {
                    sqlx::query("SELECT session_id FROM tickets WHERE secret_hash = $1")
                        .bind(secret_hash)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| uuid(&r.try_get::<String, _>("session_id")?))
                        .transpose()
                }

                async fn occupancy(&self, lot: &LotId) -> StoreResult<i64> {
                    Ok(sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE lot_id = $1 AND status = 'open'")
                        .bind(lot.as_str())
                        .fetch_one(&self.reader)
                        .await?
                        .try_get("n")?)
                }

                async fn insert_merchant(&self, m: &Merchant, key_hash: &str, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "INSERT INTO merchants (id, lot_id, name, key_hash, minutes_off, amount_off, currency, daily_limit, stackable, created_at, disabled_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(m.id.to_string())
                    .bind(m.lot.as_str())
                    .bind(m.name.clone())
                    .bind(key_hash)
                    .bind(m.minutes_off)
                    .bind(m.amount_off.minor)
                    .bind(m.amount_off.currency.as_str())
                    .bind(m.daily_limit)
                    .bind(i64::from(m.stackable))
                    .bind(ms(m.created_at))
                    .bind(m.disabled_at.map(ms))
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate(format!("merchant {}", m.id))),
                        other => { other?; }
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn merchant_by_key(&self, key_hash: &str) -> StoreResult<Option<Merchant>> {
                    sqlx::query("SELECT * FROM merchants WHERE key_hash = $1 AND disabled_at IS NULL")
                        .bind(key_hash)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| merchant_from(&r))
                        .transpose()
                }

                async fn merchants(&self, lot: &LotId) -> StoreResult<Vec<Merchant>> {
                    sqlx::query("SELECT * FROM merchants WHERE lot_id = $1 ORDER BY name, id")
                        .bind(lot.as_str())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(merchant_from)
                        .collect()
                }

                async fn merchant(&self, id: Uuid) -> StoreResult<Option<Merchant>> {
                    sqlx::query("SELECT * FROM merchants WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| merchant_from(&r))
                        .transpose()
                }

                async fn disable_merchant(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE merchants SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL")
                        .bind(id.to_string())
                        .bind(ms(at))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if done == 0 {
                        return Err(StoreError::NotFound(format!("enabled merchant {id}")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn issue_validation(&self, v: &Validation, stackable: bool, daily_limit: i64, day_start: DateTime<Utc>) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    // Serialises issuing per merchant: the count below and the insert are one step.
                    sqlx::query("UPDATE merchants SET daily_limit = daily_limit WHERE id = $1")
                        .bind(v.merchant_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    let issued: i64 = sqlx::query("SELECT COUNT(*) AS n FROM validations WHERE merchant_id = $1 AND issued_at >= $2")
                        .bind(v.merchant_id.to_string())
                        .bind(ms(day_start))
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                    if issued >= daily_limit {
                        return Err(StoreError::Conflict(format!("the merchant's daily limit of {daily_limit} validations is reached")));
                    }
                    if let Some(session) = v.session_id {
                        check_stacking(&mut tx, session, stackable).await?;
                    }
                    sqlx::query(
                        "INSERT INTO validations (id, merchant_id, lot_id, code, session_id, minutes_off, amount_off, currency, issued_at, bound_at, redeemed_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(v.id.to_string())
                    .bind(v.merchant_id.to_string())
                    .bind(v.lot.as_str())
                    .bind(v.code.clone())
                    .bind(v.session_id.map(|s| s.to_string()))
                    .bind(v.minutes_off)
                    .bind(v.amount_off.minor)
                    .bind(v.amount_off.currency.as_str())
                    .bind(ms(v.issued_at))
                    .bind(v.bound_at.map(ms))
                    .bind(v.redeemed_at.map(ms))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn claim_validation(&self, code: &str, session: Uuid, at: DateTime<Utc>) -> StoreResult<Validation> {
                    let mut tx = self.pool.begin().await?;
                    let row = sqlx::query(&format!("{VALIDATION_SELECT} WHERE v.code = $1"))
                        .bind(code)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else {
                        return Err(StoreError::NotFound("validation code".into()));
                    };
                    let v = validation_from(&row)?;
                    if v.session_id.is_some() {
                        return Err(StoreError::Conflict("this validation was used already".into()));
                    }
                    let stackable: i64 = sqlx::query("SELECT stackable FROM merchants WHERE id = $1")
                        .bind(v.merchant_id.to_string())
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("stackable")?;
                    check_stacking(&mut tx, session, stackable != 0).await?;
                    let done = sqlx::query("UPDATE validations SET session_id = $2, bound_at = $3 WHERE code = $1 AND session_id IS NULL")
                        .bind(code)
                        .bind(session.to_string())
                        .bind(ms(at))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if done != 1 {
                        return Err(StoreError::Conflict("this validation was used already".into()));
                    }
                    tx.commit().await?;
                    Ok(Validation { session_id: Some(session), bound_at: Some(at), ..v })
                }

                async fn validation_by_code(&self, code: &str) -> StoreResult<Option<Validation>> {
                    sqlx::query(&format!("{VALIDATION_SELECT} WHERE v.code = $1"))
                        .bind(code)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| validation_from(&r))
                        .transpose()
                }

                async fn validations_of_session(&self, session: Uuid) -> StoreResult<Vec<Validation>> {
                    sqlx::query(&format!("{VALIDATION_SELECT} WHERE v.session_id = $1 AND v.redeemed_at IS NULL ORDER BY v.issued_at, v.id"))
                        .bind(session.to_string())
                        .fetch_all(&self.reader)
                        .await?
                        .iter()
                        .map(validation_from)
                        .collect()
                }

                async fn validations(&self, merchant: Uuid, limit: i64) -> StoreResult<Vec<Validation>> {
                    sqlx::query(&format!("{VALIDATION_SELECT} WHERE v.merchant_id = $1 ORDER BY v.issued_at DESC, v.id LIMIT $2"))
                        .bind(merchant.to_string())
                        .bind(if limit > 0 { limit } else { 100 })
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(validation_from)
                        .collect()
                }

                async fn update_lot_spaces(&self, lot: &LotId, capacity: i64, reserved: i64, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE lots SET capacity = $2, reserved_spaces = $3 WHERE id = $1")
                        .bind(lot.as_str())
                        .bind(capacity)
                        .bind(reserved)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if done == 0 {
                        return Err(StoreError::NotFound(format!("lot {lot}")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn vehicles_of(&self, driver: Uuid) -> StoreResult<Vec<Vehicle>> {
                    sqlx::query("SELECT * FROM vehicles WHERE driver_id = $1 ORDER BY created_at")
                        .bind(driver.to_string())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(vehicle_from)
                        .collect()
                }

                async fn insert_mandate(&self, m: &Mandate) -> StoreResult<()> {
                    let currency = m.per_charge_cap.or(m.monthly_cap).map(|c| c.currency).unwrap_or_default();
                    sqlx::query(
                        "INSERT INTO mandates (id, driver_id, provider, provider_ref, status, per_charge_cap, monthly_cap, currency, channel, signed_at, revoked_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(m.id.to_string())
                    .bind(m.driver_id.to_string())
                    .bind(m.provider.clone())
                    .bind(m.provider_ref.clone())
                    .bind(m.status.as_str())
                    .bind(m.per_charge_cap.map(|c| c.minor))
                    .bind(m.monthly_cap.map(|c| c.minor))
                    .bind(currency.as_str())
                    .bind(m.channel.clone())
                    .bind(ms(m.signed_at))
                    .bind(m.revoked_at.map(ms))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn mandate(&self, id: Uuid) -> StoreResult<Option<Mandate>> {
                    sqlx::query("SELECT * FROM mandates WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| mandate_from(&r))
                        .transpose()
                }

                async fn mandates_of(&self, driver: Uuid) -> StoreResult<Vec<Mandate>> {
                    sqlx::query("SELECT * FROM mandates WHERE driver_id = $1 ORDER BY signed_at")
                        .bind(driver.to_string())
                        .fetch_all(&self.reader)
                        .await?
                        .iter()
                        .map(mandate_from)
                        .collect()
                }

                async fn set_mandate_status(&self, id: Uuid, status: MandateStatus, now: DateTime<Utc>) -> StoreResult<()> {
                    let revoked = (status == MandateStatus::Revoked).then(|| ms(now));
                    // One conditional write: a revocation is final, and a change decided on what
                    // was read before a concurrent revocation cannot undo it.
                    let r = sqlx::query(
                        "UPDATE mandates SET status = $1, revoked_at = COALESCE($2, revoked_at) WHERE id = $3 AND status <> 'revoked' AND status <> $1",
                    )
                    .bind(status.as_str())
                    .bind(revoked)
                    .bind(id.to_string())
                    .execute(&self.pool)
                    .await?;
                    if r.rows_affected() == 0 {
                        return match self.mandate(id).await? {
                            None => Err(StoreError::NotFound(format!("mandate {id}"))),
                            Some(m) => Err(StoreError::Conflict(format!("mandate {id} is already {}", m.status))),
                        };
                    }
                    Ok(())
                }

                async fn trusted_plates(&self, lot: &LotId, since: DateTime<Utc>, limit: i64) -> StoreResult<Vec<String>> {
                    sqlx::query(
                        "SELECT v.plate FROM vehicles v WHERE v.locked_at IS NULL AND EXISTS (SELECT 1 FROM mandates m WHERE m.driver_id = v.driver_id AND m.status = 'active') \
                         AND NOT EXISTS (SELECT 1 FROM charges c WHERE c.driver_id = v.driver_id AND c.status = 'arrears') \
                         AND EXISTS (SELECT 1 FROM sessions s WHERE s.plate = v.plate AND s.lot_id = $1 AND (s.status = 'open' OR s.entry_at >= $2)) \
                         ORDER BY v.plate LIMIT $3",
                    )
                    .bind(lot.as_str())
                    .bind(ms(since))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| Ok(r.try_get("plate")?))
                    .collect()
                }

                async fn arrears_of(&self, driver: Uuid) -> StoreResult<i64> {
                    Ok(sqlx::query("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS s FROM charges WHERE driver_id = $1 AND status = 'arrears'")
                        .bind(driver.to_string())
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("s")?)
                }

                async fn payer_facts(&self, driver: Uuid, month_start: DateTime<Utc>) -> StoreResult<(Vec<(Mandate, i64)>, i64)> {
                    self.batches.payers.get((driver, month_start)).await
                }

                async fn event_decision(&self, event_id: Uuid) -> StoreResult<Option<Decision>> {
                    stored_decision(&self.reader, event_id).await
                }

                async fn open_session_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<Session>> {
                    Ok(self.batches.stays.get((lot.clone(), plate.to_string())).await?.map(|(s, _, _)| s))
                }

                async fn open_stay_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<OpenStay>> {
                    let Some((session, validated, tracked)) = self.batches.stays.get((lot.clone(), plate.to_string())).await? else {
                        return Ok(None);
                    };
                    let validations = match validated {
                        true => self.validations_of_session(session.id).await?,
                        false => Vec::new(),
                    };
                    let provider = match tracked {
                        true => self.provider_parking(session.id).await?,
                        false => None,
                    };
                    Ok(Some(OpenStay { session, validations, provider }))
                }

                async fn last_exit_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<Session>> {
                    sqlx::query(&format!(
                        "SELECT {SESSION_COLS} FROM sessions WHERE plate = $1 AND lot_id = $2 \
                         AND status IN ('closed', 'awaiting_payment') AND exit_at IS NOT NULL \
                         ORDER BY exit_at DESC LIMIT 1"
                    ))
                    .bind(plate)
                    .bind(lot.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| session_from(&r))
                    .transpose()
                }

                async fn open_sessions_by_key(&self, lot: &LotId, key: &str) -> StoreResult<Vec<OpenSession>> {
                    sqlx::query("SELECT id, plate, plate_key FROM sessions WHERE lot_id = $1 AND plate_key = $2 AND status = 'open'")
                        .bind(lot.as_str())
                        .bind(key)
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(open_from)
                        .collect()
                }

                async fn open_sessions(&self, lot: &LotId) -> StoreResult<Vec<OpenSession>> {
                    sqlx::query("SELECT id, plate, plate_key FROM sessions WHERE lot_id = $1 AND status = 'open'")
                        .bind(lot.as_str())
                        .fetch_all(&self.reader)
                        .await?
                        .iter()
                        .map(open_from)
                        .collect()
                }

                async fn commit_passage(&self, w: &PassageWrite) -> StoreResult<PassageOutcome> {
                    // The committers stop only with the store.
                    let stopped = || StoreError::Database(sqlx::Error::PoolClosed);
                    let (reply, outcome) = oneshot::channel();
                    self.writes.send(Pending::Passage(Box::new(w.clone()), reply)).await.map_err(|_| stopped())?;
                    outcome.await.map_err(|_| stopped())?
                }

                async fn session(&self, id: Uuid) -> StoreResult<Option<Session>> {
                    sqlx::query(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| session_from(&r))
                        .transpose()
                }

                async fn sessions(&self, f: &SessionFilter) -> StoreResult<Vec<Session>> {
                    sqlx::query(&format!(
                        "SELECT {SESSION_COLS} FROM sessions WHERE ($1 IS NULL OR lot_id = $1) AND ($2 IS NULL OR plate = $2) \
                         AND ($3 IS NULL OR status = $3) AND ($5 IS NULL OR plate_key LIKE '%' || $5 || '%') ORDER BY entry_at DESC, id LIMIT $4"
                    ))
                    .bind(f.lot.as_ref().map(|l| l.to_string()))
                    .bind(f.plate.clone())
                    .bind(f.status.map(|s| s.as_str()))
                    .bind(if f.limit > 0 { f.limit } else { 100 })
                    .bind(f.key.clone())
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(session_from)
                    .collect()
                }

                async fn charge(&self, id: Uuid) -> StoreResult<Option<Charge>> {
                    sqlx::query(&format!("SELECT {CHARGE_COLS} FROM charges WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| charge_from(&r))
                        .transpose()
                }

                async fn charge_for_session(&self, session: Uuid) -> StoreResult<Option<Charge>> {
                    sqlx::query(&format!("SELECT {CHARGE_COLS} FROM charges WHERE session_id = $1"))
                        .bind(session.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| charge_from(&r))
                        .transpose()
                }

                async fn charges(&self, f: &ChargeFilter) -> StoreResult<Vec<Charge>> {
                    sqlx::query(&format!(
                        "SELECT {CHARGE_COLS} FROM charges WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR driver_id = $2) \
                         AND ($3 IS NULL OR session_id = $3) ORDER BY updated_at DESC, id LIMIT $4"
                    ))
                    .bind(f.status.map(|s| s.as_str()))
                    .bind(f.driver.map(|u| u.to_string()))
                    .bind(f.session.map(|u| u.to_string()))
                    .bind(if f.limit > 0 { f.limit } else { 100 })
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(charge_from)
                    .collect()
                }

                async fn charge_attempts(&self, id: Uuid) -> StoreResult<Vec<ChargeAttempt>> {
                    sqlx::query("SELECT attempt, at, outcome, detail FROM charge_attempts WHERE charge_id = $1 ORDER BY attempt, at")
                        .bind(id.to_string())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| -> StoreResult<ChargeAttempt> {
                            Ok(ChargeAttempt {
                                attempt: r.try_get("attempt")?,
                                at: at(r.try_get("at")?)?,
                                outcome: r.try_get("outcome")?,
                                detail: r.try_get("detail")?,
                            })
                        })
                        .collect()
                }

                async fn lease_due_charges(&self, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>, limit: i64) -> StoreResult<Vec<Charge>> {
                    // The outer lease check is re-evaluated against the latest row version when two
                    // instances race (PostgreSQL re-checks updated rows; SQLite has one writer), so
                    // each charge is leased to one owner. The rows come back from the update itself:
                    // what this call leased, not whatever an owner of the same name held before.
                    let mut leased = sqlx::query(&format!(
                        "UPDATE charges SET lease_owner = $1, lease_until = $2 \
                         WHERE id IN (SELECT id FROM charges WHERE status IN ('pending', 'submitted', 'accepted', 'failed') \
                                      AND (next_attempt_at IS NULL OR next_attempt_at <= $3) \
                                      AND (lease_until IS NULL OR lease_until < $3) ORDER BY created_at LIMIT $4) \
                         AND (lease_until IS NULL OR lease_until < $3) RETURNING {CHARGE_COLS}"
                    ))
                    .bind(owner)
                    .bind(ms(lease_until))
                    .bind(ms(now))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(charge_from)
                    .collect::<StoreResult<Vec<Charge>>>()?;
                    leased.sort_by_key(|c| (c.created_at, c.id));
                    Ok(leased)
                }

                async fn release_leases_of(&self, instance: &str) -> StoreResult<u64> {
                    let prefix = format!("{instance}:");
                    let len = i32::try_from(prefix.chars().count())
                        .map_err(|_| StoreError::Corrupt(format!("instance name {instance:?} too long")))?;
                    let freed = sqlx::query(
                        "UPDATE charges SET lease_owner = NULL, lease_until = NULL \
                         WHERE lease_owner IS NOT NULL AND substr(lease_owner, 1, $2) = $1",
                    )
                    .bind(prefix)
                    .bind(len)
                    .execute(&self.pool)
                    .await?;
                    Ok(freed.rows_affected())
                }

                async fn beat(&self, instance: &str, now: DateTime<Utc>) -> StoreResult<Vec<(String, i64)>> {
                    sqlx::query(
                        "INSERT INTO instances (name, beat, seen_at) VALUES ($1, 1, $2) \
                         ON CONFLICT (name) DO UPDATE SET beat = instances.beat + 1, seen_at = $2",
                    )
                    .bind(instance)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await?;
                    sqlx::query("DELETE FROM instances WHERE seen_at < $1")
                        .bind(ms(now - chrono::Duration::days(1)))
                        .execute(&self.pool)
                        .await?;
                    sqlx::query("SELECT name, beat FROM instances ORDER BY name")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| Ok((r.try_get("name")?, r.try_get("beat")?)))
                        .collect()
                }

                async fn update_charge(&self, u: &ChargeUpdate) -> StoreResult<()> {
                    // The committers stop only with the store.
                    let stopped = || StoreError::Database(sqlx::Error::PoolClosed);
                    let (reply, outcome) = oneshot::channel();
                    self.writes.send(Pending::Charge(Box::new(u.clone()), reply)).await.map_err(|_| stopped())?;
                    outcome.await.map_err(|_| stopped())?
                }

                async fn pay_directly(&self, p: &DirectPayment) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "UPDATE charges SET status = $4, method = $1, settled_at = $2, updated_at = $2, last_error = NULL \
                         WHERE id = $3 AND status IN ('arrears', 'awaiting_payment')",
                    )
                    .bind(p.method.as_str())
                    .bind(ms(p.at))
                    .bind(p.charge_id.to_string())
                    .bind(p.outcome.as_str())
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Err(StoreError::Conflict(format!("charge {} is not payable", p.charge_id)));
                    }
                    resolve_charge_exceptions(&mut *tx, p.charge_id, &format!("{}: {}", p.outcome, p.audit.actor), p.at).await?;
                    if let Some((session, decision, outbox)) = &p.release {
                        let r = sqlx::query("UPDATE sessions SET status = 'closed', updated_at = $1 WHERE id = $2 AND status = 'awaiting_payment'")
                            .bind(ms(p.at))
                            .bind(session.to_string())
                            .execute(&mut *tx)
                            .await?;
                        if r.rows_affected() == 0 {
                            return Err(StoreError::Conflict(format!("session {session} is not awaiting payment")));
                        }
                        sqlx::query("UPDATE events SET decision = $1 WHERE event_id = $2")
                            .bind(to_json(decision))
                            .bind(decision.event_id.to_string())
                            .execute(&mut *tx)
                            .await?;
                        insert_outbox(&mut *tx, outbox, p.at).await?;
                    }
                    insert_audit_row(&mut *tx, &p.audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn mark_published(&self, ids: &[Uuid], now: DateTime<Utc>) -> StoreResult<()> {
                    for chunk in ids.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("UPDATE outbox SET published_at = ");
                        q.push_bind(ms(now));
                        q.push(" WHERE published_at IS NULL AND id IN (");
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(id.to_string());
                        }
                        q.push(")");
                        q.build().execute(&self.pool).await?;
                    }
                    Ok(())
                }

                async fn unpublished(&self, older_than: DateTime<Utc>, limit: i64) -> StoreResult<Vec<OutboxMessage>> {
                    sqlx::query("SELECT id, topic, payload FROM outbox WHERE published_at IS NULL AND created_at <= $1 ORDER BY created_at, id LIMIT $2")
                        .bind(ms(older_than))
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| -> StoreResult<OutboxMessage> {
                            Ok(OutboxMessage {
                                id: uuid(&r.try_get::<String, _>("id")?)?,
                                topic: r.try_get("topic")?,
                                payload: r.try_get("payload")?,
                            })
                        })
                        .collect()
                }

                async fn exceptions(&self, lot: Option<&LotId>, open_only: bool, limit: i64) -> StoreResult<Vec<ExceptionRecord>> {
                    sqlx::query(&format!(
                        "SELECT {EXCEPTION_COLS} FROM exceptions WHERE ($1 IS NULL OR lot_id = $1) AND ($2 = 0 OR resolved_at IS NULL) \
                         ORDER BY created_at DESC, id LIMIT $3"
                    ))
                    .bind(lot.map(|l| l.to_string()))
                    .bind(i64::from(open_only))
                    .bind(if limit > 0 { limit } else { 100 })
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(exception_from)
                    .collect()
                }

                async fn exception(&self, id: Uuid) -> StoreResult<Option<ExceptionRecord>> {
                    sqlx::query(&format!("SELECT {EXCEPTION_COLS} FROM exceptions WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| exception_from(&r))
                        .transpose()
                }

                async fn open_exceptions_of_event(&self, event_id: Uuid) -> StoreResult<Vec<ExceptionRecord>> {
                    sqlx::query(&format!("SELECT {EXCEPTION_COLS} FROM exceptions WHERE event_id = $1 AND resolved_at IS NULL ORDER BY created_at, id"))
                        .bind(event_id.to_string())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(exception_from)
                        .collect()
                }

                async fn resolve_exception(&self, id: Uuid, resolution: &str, now: DateTime<Utc>) -> StoreResult<()> {
                    let r = sqlx::query("UPDATE exceptions SET resolved_at = $1, resolution = $2 WHERE id = $3 AND resolved_at IS NULL")
                        .bind(ms(now))
                        .bind(resolution)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                    if r.rows_affected() == 0 {
                        return Err(StoreError::Conflict(format!("exception {id} is already resolved")));
                    }
                    Ok(())
                }

                async fn event_payload(&self, event_id: Uuid) -> StoreResult<Option<String>> {
                    sqlx::query("SELECT payload FROM events WHERE event_id = $1")
                        .bind(event_id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| Ok(r.try_get("payload")?))
                        .transpose()
                }

                async fn insert_audit(&self, a: &AuditEntry) -> StoreResult<()> {
                    insert_audit_row(&self.pool, a).await
                }

                async fn audit(&self, limit: i64) -> StoreResult<Vec<AuditEntry>> {
                    sqlx::query("SELECT * FROM audit ORDER BY at DESC, id LIMIT $1")
                        .bind(if limit > 0 { limit } else { 100 })
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(audit_from)
                        .collect()
                }

                async fn insert_dead_letter(&self, d: &DeadLetter, payload: &[u8]) -> StoreResult<()> {
                    sqlx::query("INSERT INTO dead_letters (id, received_at, topic, reason, detail, payload) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(d.id.to_string())
                        .bind(ms(d.received_at))
                        .bind(d.topic.clone())
                        .bind(d.reason.clone())
                        .bind(d.detail.clone())
                        .bind(payload.to_vec())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn dead_letters(&self, limit: i64) -> StoreResult<Vec<DeadLetter>> {
                    sqlx::query("SELECT * FROM dead_letters ORDER BY received_at DESC, id LIMIT $1")
                        .bind(if limit > 0 { limit } else { 100 })
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| -> StoreResult<DeadLetter> {
                            let payload: Vec<u8> = r.try_get("payload")?;
                            Ok(DeadLetter {
                                id: uuid(&r.try_get::<String, _>("id")?)?,
                                received_at: at(r.try_get("received_at")?)?,
                                topic: r.try_get("topic")?,
                                reason: r.try_get("reason")?,
                                detail: r.try_get("detail")?,
                                payload: String::from_utf8_lossy(&payload).into_owned(),
                            })
                        })
                        .collect()
                }

                async fn put_wallet(&self, w: &Wallet, now: DateTime<Utc>) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO sandbox_wallets (reference, balance_minor, currency, fail_next, updated_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (reference) DO UPDATE SET balance_minor = $2, currency = $3, fail_next = $4, updated_at = $5",
                    )
                    .bind(w.reference.clone())
                    .bind(w.balance.minor)
                    .bind(w.balance.currency.as_str())
                    .bind(w.fail_next)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn wallet(&self, reference: &str) -> StoreResult<Option<Wallet>> {
                    sqlx::query("SELECT * FROM sandbox_wallets WHERE reference = $1")
                        .bind(reference)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<Wallet> {
                            Ok(Wallet {
                                reference: r.try_get("reference")?,
                                balance: money(r.try_get("balance_minor")?, &r.try_get::<String, _>("currency")?)?,
                                fail_next: r.try_get("fail_next")?,
                            })
                        })
                        .transpose()
                }

                async fn sandbox_debit(&self, key: &str, reference: &str, amount: Money, now: DateTime<Utc>) -> StoreResult<DebitResult> {
                    if let Some(done) = self.sandbox_lookup(key).await? {
                        return Ok(done);
                    }
                    let mut tx = self.pool.begin().await?;
                    let scripted = sqlx::query("UPDATE sandbox_wallets SET fail_next = fail_next - 1 WHERE reference = $1 AND fail_next > 0")
                        .bind(reference)
                        .execute(&mut *tx)
                        .await?;
                    if scripted.rows_affected() == 1 {
                        tx.commit().await?;
                        return Ok(DebitResult::Unavailable);
                    }
                    let debited = sqlx::query(
                        "UPDATE sandbox_wallets SET balance_minor = balance_minor - $1, updated_at = $2 \
                         WHERE reference = $3 AND currency = $4 AND balance_minor >= $1",
                    )
                    .bind(amount.minor)
                    .bind(ms(now))
                    .bind(reference)
                    .bind(amount.currency.as_str())
                    .execute(&mut *tx)
                    .await?;
                    if debited.rows_affected() == 0 {
                        // Declines are not remembered: a retry after a top-up must be able to succeed.
                        let exists = sqlx::query("SELECT reference FROM sandbox_wallets WHERE reference = $1")
                            .bind(reference)
                            .fetch_optional(&mut *tx)
                            .await?
                            .is_some();
                        tx.rollback().await?;
                        let reason = if exists { "insufficient funds" } else { "no such wallet" };
                        return Ok(DebitResult::Declined { reason: reason.to_string() });
                    }
                    let txn_id = format!("sbx-{}", Uuid::now_v7().simple());
                    let claimed = sqlx::query(
                        "INSERT INTO sandbox_debits (idempotency_key, reference, amount_minor, outcome, txn_id, at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .bind(key)
                    .bind(reference)
                    .bind(amount.minor)
                    .bind("succeeded")
                    .bind(txn_id.clone())
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await?;
                    if claimed.rows_affected() == 0 {
                        // Another call with this key got there first: undo ours, report theirs.
                        tx.rollback().await?;
                        return self
                            .sandbox_lookup(key)
                            .await?
                            .ok_or_else(|| StoreError::Corrupt(format!("debit {key} vanished")));
                    }
                    tx.commit().await?;
                    Ok(DebitResult::Succeeded { txn_id })
                }

                async fn sandbox_lookup(&self, key: &str) -> StoreResult<Option<DebitResult>> {
                    // Only successful debits are stored: a decline must not stop a retry after a top-up.
                    sqlx::query("SELECT txn_id FROM sandbox_debits WHERE idempotency_key = $1")
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<DebitResult> { Ok(DebitResult::Succeeded { txn_id: r.try_get("txn_id")? }) })
                        .transpose()
                }

                async fn insert_account(&self, a: &Account, password_hash: &str, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "INSERT INTO accounts (id, username, password_hash, role, lots, created_at, disabled_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(a.id.to_string())
                    .bind(a.username.clone())
                    .bind(password_hash)
                    .bind(a.grant.role.as_str())
                    .bind(a.grant.lots_text())
                    .bind(ms(a.created_at))
                    .bind(a.disabled_at.map(ms))
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Ok(_) => {}
                        Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate(format!("account {:?} already exists", a.username))),
                        Err(e) => return Err(e.into()),
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn account_by_name(&self, username: &str) -> StoreResult<Option<(Account, String)>> {
                    sqlx::query("SELECT * FROM accounts WHERE username = $1")
                        .bind(username)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<(Account, String)> { Ok((account_from(&r)?, r.try_get("password_hash")?)) })
                        .transpose()
                }

                async fn accounts(&self) -> StoreResult<Vec<Account>> {
                    sqlx::query("SELECT * FROM accounts ORDER BY username")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| account_from(r))
                        .collect()
                }

                async fn insert_login(&self, l: &Login) -> StoreResult<()> {
                    // Expired logins go as new ones come: the table holds only live sessions.
                    sqlx::query("DELETE FROM logins WHERE expires_at < $1")
                        .bind(ms(l.created_at))
                        .execute(&self.pool)
                        .await?;
                    sqlx::query("INSERT INTO logins (token_hash, account_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                        .bind(l.token_hash.clone())
                        .bind(l.account_id.to_string())
                        .bind(l.csrf.clone())
                        .bind(ms(l.created_at))
                        .bind(ms(l.expires_at))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn login(&self, token_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<(Login, Account)>> {
                    sqlx::query(
                        "SELECT l.token_hash, l.csrf, l.created_at AS l_created_at, l.expires_at, a.* FROM logins l JOIN accounts a ON a.id = l.account_id \
                         WHERE l.token_hash = $1 AND l.expires_at > $2 AND a.disabled_at IS NULL",
                    )
                    .bind(token_hash)
                    .bind(ms(now))
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| -> StoreResult<(Login, Account)> {
                        let account = account_from(&r)?;
                        Ok((
                            Login {
                                token_hash: r.try_get("token_hash")?,
                                account_id: account.id,
                                csrf: r.try_get("csrf")?,
                                created_at: at(r.try_get("l_created_at")?)?,
                                expires_at: at(r.try_get("expires_at")?)?,
                            },
                            account,
                        ))
                    })
                    .transpose()
                }

                async fn delete_login(&self, token_hash: &str) -> StoreResult<()> {
                    sqlx::query("DELETE FROM logins WHERE token_hash = $1")
                        .bind(token_hash)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn insert_api_token(&self, t: &ApiToken, token_hash: &str, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO api_tokens (id, name, token_hash, role, lots, created_by, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(t.id.to_string())
                    .bind(t.name.clone())
                    .bind(token_hash)
                    .bind(t.grant.role.as_str())
                    .bind(t.grant.lots_text())
                    .bind(t.created_by.clone())
                    .bind(ms(t.created_at))
                    .bind(t.revoked_at.map(ms))
                    .execute(&mut *tx)
                    .await?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn api_token(&self, token_hash: &str) -> StoreResult<Option<ApiToken>> {
                    sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                        .bind(token_hash)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| token_from(&r))
                        .transpose()
                }

                async fn api_tokens(&self) -> StoreResult<Vec<ApiToken>> {
                    sqlx::query("SELECT * FROM api_tokens ORDER BY created_at, id")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(token_from)
                        .collect()
                }

                async fn revoke_api_token(&self, id: Uuid, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(ms(audit.at))
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("token {id}")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn disable_account(&self, username: &str, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE accounts SET disabled_at = $1 WHERE username = $2 AND disabled_at IS NULL")
                        .bind(ms(audit.at))
                        .bind(username)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("account {username}")));
                    }
                    sqlx::query("DELETE FROM logins WHERE account_id IN (SELECT id FROM accounts WHERE username = $1)")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn put_gateway_key(&self, gateway: &GatewayId, key_hex: &str, replace: bool, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let sql = if replace {
                        "INSERT INTO gateway_keys (gateway_id, key_hex, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (gateway_id) DO UPDATE SET key_hex = $2, created_at = $3"
                    } else {
                        "INSERT INTO gateway_keys (gateway_id, key_hex, created_at) VALUES ($1, $2, $3) ON CONFLICT (gateway_id) DO NOTHING"
                    };
                    let done = sqlx::query(sql)
                        .bind(gateway.as_str())
                        .bind(key_hex)
                        .bind(ms(audit.at))
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::Duplicate(format!("gateway {gateway} already has a key")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn gateway_keys(&self) -> StoreResult<Vec<(String, String)>> {
                    sqlx::query("SELECT gateway_id, key_hex FROM gateway_keys ORDER BY gateway_id")
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| Ok((r.try_get("gateway_id")?, r.try_get("key_hex")?)))
                        .collect()
                }
            }

            /// Ends a history query: rows after `after` in the order newest `at_col` first, then
            /// `id_col`, one more than `limit` (to know whether another page follows).
            fn push_page(b: &mut sqlx::QueryBuilder<'_, $db>, at_col: &str, id_col: &str, after: Option<&Cursor>, limit: i64) {
                if let Some(c) = after {
                    b.push(format!(" AND ({at_col} < ")).push_bind(c.at_ms);
                    b.push(format!(" OR ({at_col} = ")).push_bind(c.at_ms);
                    b.push(format!(" AND {id_col} > ")).push_bind(c.id.clone()).push("))");
                }
                b.push(format!(" ORDER BY {at_col} DESC, {id_col} LIMIT ")).push_bind(limit + 1);
            }

            /// Adds `AND col IN (values...)` to a query; `false` when there are no values (nothing
            /// can match, and `IN ()` is not SQL).
            fn push_in<'a>(b: &mut sqlx::QueryBuilder<'a, $db>, col: &str, values: impl Iterator<Item = String>) -> bool {
                let values: Vec<String> = values.collect();
                if values.is_empty() {
                    return false;
                }
                b.push(format!(" AND {col} IN ("));
                let mut sep = b.separated(", ");
                for v in values {
                    sep.push_bind(v);
                }
                b.push(")");
                true
            }

            #[async_trait]
            impl HistoryStore for $store {
                async fn stay_history(&self, q: &StayQuery) -> StoreResult<Page<Session>> {
                    let limit = page_size(q.limit);
                    let mut b = sqlx::QueryBuilder::<$db>::new(format!("SELECT {SESSION_COLS} FROM sessions WHERE 1 = 1"));
                    if let Some(lots) = &q.lots {
                        if !push_in(&mut b, "lot_id", lots.iter().map(|l| l.to_string())) {
                            return Ok(Page { items: Vec::new(), next: None });
                        }
                    }
                    if let Some(lane) = &q.lane {
                        b.push(" AND (entry_lane = ").push_bind(lane.clone());
                        b.push(" OR exit_lane = ").push_bind(lane.clone()).push(")");
                    }
                    if let Some(from) = q.from {
                        b.push(" AND (exit_at IS NULL OR exit_at >= ").push_bind(ms(from)).push(")");
                    }
                    if let Some(to) = q.to {
                        b.push(" AND entry_at < ").push_bind(ms(to));
                    }
                    if let Some(status) = q.status {
                        b.push(" AND status = ").push_bind(status.as_str());
                    }
                    if let Some(plate) = &q.plate {
                        b.push(" AND plate = ").push_bind(plate.clone());
                    }
                    if let Some(key) = &q.key {
                        // Keys hold only letters and digits (folded), never a LIKE wildcard.
                        b.push(" AND plate_key LIKE ").push_bind(format!("%{key}%"));
                    }
                    push_page(&mut b, "entry_at", "id", q.after.as_ref(), limit);
                    let rows = b.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(session_from).collect::<StoreResult<Vec<_>>>()?;
                    Ok(page_of(items, limit, |s| Cursor { at_ms: ms(s.entry_at), id: s.id.to_string() }))
                }

                async fn passage_history(&self, q: &PassageQuery) -> StoreResult<Page<PassageRecord>> {
                    let limit = page_size(q.limit);
                    let mut b = sqlx::QueryBuilder::<$db>::new(
                        "SELECT event_id, lot_id, lane_id, gateway_id, direction, captured_at, received_at, plate, quality, resent, session_id, decision FROM events WHERE 1 = 1",
                    );
                    if let Some(lots) = &q.lots {
                        if !push_in(&mut b, "lot_id", lots.iter().map(|l| l.to_string())) {
                            return Ok(Page { items: Vec::new(), next: None });
                        }
                    }
                    if let Some(lane) = &q.lane {
                        b.push(" AND lane_id = ").push_bind(lane.clone());
                    }
                    if let Some(from) = q.from {
                        b.push(" AND captured_at >= ").push_bind(ms(from));
                    }
                    if let Some(to) = q.to {
                        b.push(" AND captured_at < ").push_bind(ms(to));
                    }
                    if let Some(d) = &q.direction {
                        b.push(" AND direction = ").push_bind(d.clone());
                    }
                    if let Some(a) = &q.action {
                        // The decision is kept as sent (JSON); each database reads a field its own way.
                        let field = if std::any::type_name::<$db>().contains("Postgres") {
                            "(decision::jsonb ->> 'action')"
                        } else {
                            "json_extract(decision, '$.action')"
                        };
                        b.push(format!(" AND {field} = ")).push_bind(a.clone());
                    }
                    if let Some(plates) = &q.plates {
                        if !push_in(&mut b, "plate", plates.iter().cloned()) {
                            return Ok(Page { items: Vec::new(), next: None });
                        }
                    }
                    push_page(&mut b, "captured_at", "event_id", q.after.as_ref(), limit);
                    let rows = b.build().fetch_all(&self.pool).await?;
                    let items = rows
                        .iter()
                        .map(|r| -> StoreResult<PassageRecord> {
                            let decision: String = r.try_get("decision")?;
                            Ok(PassageRecord {
                                event_id: uuid(&r.try_get::<String, _>("event_id")?)?,
                                lot: LotId::parse(r.try_get::<String, _>("lot_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                                lane: r.try_get("lane_id")?,
                                gateway: r.try_get("gateway_id")?,
                                direction: r.try_get("direction")?,
                                captured_at: at(r.try_get("captured_at")?)?,
                                received_at: at(r.try_get("received_at")?)?,
                                plate: r.try_get("plate")?,
                                quality: r.try_get("quality")?,
                                resent: r.try_get::<i64, _>("resent")? != 0,
                                session_id: r.try_get::<Option<String>, _>("session_id")?.as_deref().map(uuid).transpose()?,
                                decision: serde_json::from_str(&decision)
                                    .map_err(|e| StoreError::Corrupt(format!("decision: {e}")))?,
                            })
                        })
                        .collect::<StoreResult<Vec<_>>>()?;
                    Ok(page_of(items, limit, |p| Cursor { at_ms: ms(p.captured_at), id: p.event_id.to_string() }))
                }

                async fn audit_history(&self, q: &AuditQuery) -> StoreResult<Page<AuditEntry>> {
                    let limit = page_size(q.limit);
                    let mut b = sqlx::QueryBuilder::<$db>::new("SELECT id, at, actor, action, subject, detail FROM audit WHERE 1 = 1");
                    if let Some(actor) = &q.actor {
                        b.push(" AND actor = ").push_bind(actor.clone());
                    }
                    if let Some(action) = &q.action {
                        let prefix = contains_pattern(action);
                        // Anchored at the start: drop the leading wildcard.
                        b.push(" AND action LIKE ").push_bind(prefix[1..].to_string()).push(" ESCAPE '\\'");
                    }
                    if let Some(text) = &q.text {
                        let p = contains_pattern(&text.to_lowercase());
                        b.push(" AND (LOWER(subject) LIKE ").push_bind(p.clone()).push(" ESCAPE '\\'");
                        b.push(" OR LOWER(detail) LIKE ").push_bind(p).push(" ESCAPE '\\')");
                    }
                    if let Some(from) = q.from {
                        b.push(" AND at >= ").push_bind(ms(from));
                    }
                    if let Some(to) = q.to {
                        b.push(" AND at < ").push_bind(ms(to));
                    }
                    push_page(&mut b, "at", "id", q.after.as_ref(), limit);
                    let rows = b.build().fetch_all(&self.pool).await?;
                    let items = rows
                        .iter()
                        .map(audit_from)
                        .collect::<StoreResult<Vec<_>>>()?;
                    Ok(page_of(items, limit, |e| Cursor { at_ms: ms(e.at), id: e.id.to_string() }))
                }
            }

            #[async_trait]
            impl PortalStore for $store {
                async fn insert_portal_code(&self, c: &crate::portal::PortalCode) -> StoreResult<()> {
                    sqlx::query("INSERT INTO portal_codes (id, phone, code_hash, created_at, expires_at, tries, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(c.id.to_string())
                        .bind(c.phone.clone())
                        .bind(c.code_hash.clone())
                        .bind(ms(c.created_at))
                        .bind(ms(c.expires_at))
                        .bind(c.tries)
                        .bind(c.used_at.map(ms))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn portal_code_times(&self, phone: &str, since: DateTime<Utc>) -> StoreResult<Vec<DateTime<Utc>>> {
                    sqlx::query("SELECT created_at FROM portal_codes WHERE phone = $1 AND created_at > $2")
                        .bind(phone)
                        .bind(ms(since))
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| at(r.try_get("created_at")?))
                        .collect()
                }

                async fn latest_portal_code(&self, phone: &str) -> StoreResult<Option<crate::portal::PortalCode>> {
                    sqlx::query("SELECT id, phone, code_hash, created_at, expires_at, tries, used_at FROM portal_codes WHERE phone = $1 ORDER BY created_at DESC, id DESC LIMIT 1")
                        .bind(phone)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<crate::portal::PortalCode> {
                            Ok(crate::portal::PortalCode {
                                id: uuid(&r.try_get::<String, _>("id")?)?,
                                phone: r.try_get("phone")?,
                                code_hash: r.try_get("code_hash")?,
                                created_at: at(r.try_get("created_at")?)?,
                                expires_at: at(r.try_get("expires_at")?)?,
                                tries: r.try_get("tries")?,
                                used_at: opt_at(r.try_get("used_at")?)?,
                            })
                        })
                        .transpose()
                }

                async fn spend_portal_try(&self, id: Uuid, max_tries: i64) -> StoreResult<bool> {
                    let r = sqlx::query("UPDATE portal_codes SET tries = tries + 1 WHERE id = $1 AND tries < $2 AND used_at IS NULL")
                        .bind(id.to_string())
                        .bind(max_tries)
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected() == 1)
                }

                async fn use_portal_code(&self, id: Uuid, at_: DateTime<Utc>) -> StoreResult<bool> {
                    let r = sqlx::query("UPDATE portal_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                        .bind(id.to_string())
                        .bind(ms(at_))
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected() == 1)
                }

                async fn drivers_with_phone(&self, phone: &str) -> StoreResult<Vec<Driver>> {
                    sqlx::query("SELECT id, name, phone, created_at FROM drivers WHERE phone_key = $1 ORDER BY created_at, id LIMIT 50")
                        .bind(phone)
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| -> StoreResult<Driver> {
                            Ok(Driver {
                                id: uuid(&r.try_get::<String, _>("id")?)?,
                                name: r.try_get("name")?,
                                phone: r.try_get("phone")?,
                                created_at: at(r.try_get("created_at")?)?,
                            })
                        })
                        .collect()
                }

                async fn insert_driver_login(&self, l: &crate::portal::DriverLogin) -> StoreResult<()> {
                    sqlx::query("INSERT INTO driver_logins (token_hash, phone, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                        .bind(l.token_hash.clone())
                        .bind(l.phone.clone())
                        .bind(l.csrf.clone())
                        .bind(ms(l.created_at))
                        .bind(ms(l.expires_at))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn driver_login(&self, token_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<crate::portal::DriverLogin>> {
                    sqlx::query("SELECT token_hash, phone, csrf, created_at, expires_at FROM driver_logins WHERE token_hash = $1 AND expires_at > $2")
                        .bind(token_hash)
                        .bind(ms(now))
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<crate::portal::DriverLogin> {
                            Ok(crate::portal::DriverLogin {
                                token_hash: r.try_get("token_hash")?,
                                phone: r.try_get("phone")?,
                                csrf: r.try_get("csrf")?,
                                created_at: at(r.try_get("created_at")?)?,
                                expires_at: at(r.try_get("expires_at")?)?,
                            })
                        })
                        .transpose()
                }

                async fn delete_driver_login(&self, token_hash: &str) -> StoreResult<()> {
                    sqlx::query("DELETE FROM driver_logins WHERE token_hash = $1")
                        .bind(token_hash)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl EvidenceStore for $store {
                async fn insert_evidence(&self, p: &EvidencePicture) -> StoreResult<bool> {
                    let r = sqlx::query(
                        "INSERT INTO evidence (event_id, lot_id, lane_id, format, digest, image, captured_at, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(p.event_id.to_string())
                    .bind(p.lot.to_string())
                    .bind(p.lane.to_string())
                    .bind(p.format.clone())
                    .bind(p.digest.clone())
                    .bind(p.image.clone())
                    .bind(ms(p.captured_at))
                    .bind(ms(p.received_at))
                    .execute(&self.pool)
                    .await?;
                    Ok(r.rows_affected() > 0)
                }

                async fn evidence(&self, event_id: Uuid) -> StoreResult<Option<EvidencePicture>> {
                    sqlx::query("SELECT event_id, lot_id, lane_id, format, digest, image, captured_at, received_at FROM evidence WHERE event_id = $1")
                        .bind(event_id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| -> StoreResult<EvidencePicture> {
                            let lot: String = r.try_get("lot_id")?;
                            let lane: String = r.try_get("lane_id")?;
                            Ok(EvidencePicture {
                                event_id: uuid(&r.try_get::<String, _>("event_id")?)?,
                                lot: LotId::parse(lot.clone()).map_err(|_| StoreError::Corrupt(format!("lot {lot:?}")))?,
                                lane: LaneId::parse(lane.clone()).map_err(|_| StoreError::Corrupt(format!("lane {lane:?}")))?,
                                format: r.try_get("format")?,
                                digest: r.try_get("digest")?,
                                image: r.try_get("image")?,
                                captured_at: at(r.try_get("captured_at")?)?,
                                received_at: at(r.try_get("received_at")?)?,
                            })
                        })
                        .transpose()
                }

                async fn events_with_evidence(&self, event_ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
                    let mut out = Vec::new();
                    for chunk in event_ids.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("SELECT event_id FROM evidence WHERE event_id IN (");
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(id.to_string());
                        }
                        q.push(")");
                        for r in q.build().fetch_all(&self.pool).await? {
                            out.push(uuid(&r.try_get::<String, _>("event_id")?)?);
                        }
                    }
                    Ok(out)
                }

                async fn purge_evidence(&self, before: DateTime<Utc>) -> StoreResult<u64> {
                    let r = sqlx::query("DELETE FROM evidence WHERE received_at < $1")
                        .bind(ms(before))
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected())
                }

                async fn assign_exception(&self, a: &Assignment, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let open: Option<Option<i64>> = sqlx::query("SELECT resolved_at FROM exceptions WHERE id = $1")
                        .bind(a.exception_id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("resolved_at"))
                        .transpose()?;
                    match open {
                        None => return Err(StoreError::NotFound(format!("exception {}", a.exception_id))),
                        Some(Some(_)) => return Err(StoreError::Conflict(format!("exception {} is already resolved", a.exception_id))),
                        Some(None) => {}
                    }
                    sqlx::query(
                        "INSERT INTO exception_assignments (exception_id, assigned_to, assigned_by, assigned_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (exception_id) DO UPDATE SET assigned_to = excluded.assigned_to, assigned_by = excluded.assigned_by, assigned_at = excluded.assigned_at",
                    )
                    .bind(a.exception_id.to_string())
                    .bind(a.assigned_to.clone())
                    .bind(a.assigned_by.clone())
                    .bind(ms(a.assigned_at))
                    .execute(&mut *tx)
                    .await?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn assignments(&self, exception_ids: &[Uuid]) -> StoreResult<Vec<Assignment>> {
                    let mut out = Vec::new();
                    for chunk in exception_ids.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "SELECT exception_id, assigned_to, assigned_by, assigned_at FROM exception_assignments WHERE exception_id IN (",
                        );
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(id.to_string());
                        }
                        q.push(")");
                        for r in q.build().fetch_all(&self.pool).await? {
                            out.push(Assignment {
                                exception_id: uuid(&r.try_get::<String, _>("exception_id")?)?,
                                assigned_to: r.try_get("assigned_to")?,
                                assigned_by: r.try_get("assigned_by")?,
                                assigned_at: at(r.try_get("assigned_at")?)?,
                            });
                        }
                    }
                    Ok(out)
                }

                async fn exceptions_assigned_to(&self, user: &str, lot: Option<&LotId>, open_only: bool, limit: i64) -> StoreResult<Vec<ExceptionRecord>> {
                    sqlx::query(
                        "SELECT e.id, e.lot_id, e.lane_id, e.kind, e.plate, e.event_id, e.session_id, e.charge_id, e.detail, e.created_at, e.resolved_at, e.resolution \
                         FROM exceptions e JOIN exception_assignments a ON a.exception_id = e.id \
                         WHERE a.assigned_to = $1 AND ($2 IS NULL OR e.lot_id = $2) AND ($3 = 0 OR e.resolved_at IS NULL) \
                         ORDER BY e.created_at DESC, e.id LIMIT $4",
                    )
                    .bind(user.to_string())
                    .bind(lot.map(|l| l.to_string()))
                    .bind(i64::from(open_only))
                    .bind(if limit > 0 { limit } else { 100 })
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(exception_from)
                    .collect()
                }
            }

            #[async_trait]
            impl MoneyStore for $store {
                async fn provider_parking(&self, session: Uuid) -> StoreResult<Option<ProviderParking>> {
                    sqlx::query("SELECT session_id, provider, out_parking_no, parking_id, state, block_reason, updated_at FROM provider_parkings WHERE session_id = $1")
                        .bind(session.to_string())
                        .fetch_optional(&self.reader)
                        .await?
                        .map(|r| -> StoreResult<ProviderParking> {
                            let state: String = r.try_get("state")?;
                            Ok(ProviderParking {
                                session_id: uuid(&r.try_get::<String, _>("session_id")?)?,
                                provider: r.try_get("provider")?,
                                out_parking_no: r.try_get("out_parking_no")?,
                                parking_id: r.try_get("parking_id")?,
                                state: ParkingState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("parking state {state:?}")))?,
                                block_reason: r.try_get("block_reason")?,
                                updated_at: at(r.try_get("updated_at")?)?,
                            })
                        })
                        .transpose()
                }

                async fn put_provider_parking(&self, p: &ProviderParking) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO provider_parkings (session_id, provider, out_parking_no, parking_id, state, block_reason, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (session_id) DO UPDATE SET parking_id = $4, state = $5, block_reason = $6, updated_at = $7",
                    )
                    .bind(p.session_id.to_string())
                    .bind(p.provider.clone())
                    .bind(p.out_parking_no.clone())
                    .bind(p.parking_id.clone())
                    .bind(p.state.as_str())
                    .bind(p.block_reason.clone())
                    .bind(ms(p.updated_at))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn set_parking_state(&self, parking_id: &str, state: ParkingState, reason: Option<&str>, now: DateTime<Utc>) -> StoreResult<bool> {
                    let r = sqlx::query("UPDATE provider_parkings SET state = $1, block_reason = $2, updated_at = $3 WHERE parking_id = $4")
                        .bind(state.as_str())
                        .bind(reason)
                        .bind(ms(now))
                        .bind(parking_id)
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected() > 0)
                }

                async fn charge_by_key(&self, key: &str) -> StoreResult<Option<Charge>> {
                    sqlx::query(&format!("SELECT {CHARGE_COLS} FROM charges WHERE idempotency_key = $1"))
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| charge_from(&r))
                        .transpose()
                }

                async fn record_provider_result(&self, u: &ProviderResult) -> StoreResult<bool> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "UPDATE charges SET status = $1, provider_txn = COALESCE($2, provider_txn), settled_at = $3, advanced = $4, last_error = $5, \
                         next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $6 \
                         WHERE id = $7 AND status IN ('pending', 'submitted', 'accepted', 'failed')",
                    )
                    .bind(u.status.as_str())
                    .bind(u.provider_txn.clone())
                    .bind(u.settled_at.map(ms))
                    .bind(i64::from(u.advanced))
                    .bind(u.last_error.clone())
                    .bind(ms(u.attempt.at))
                    .bind(u.charge_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Ok(false);
                    }
                    insert_attempt(&mut *tx, u.charge_id, &u.attempt).await?;
                    if u.status == ChargeStatus::Succeeded {
                        resolve_charge_exceptions(&mut *tx, u.charge_id, "collected by the provider", u.attempt.at).await?;
                    }
                    if let Some(x) = &u.exception {
                        insert_charge_exception(&mut *tx, x).await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                async fn clear_advance(&self, charge: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
                    let r = sqlx::query("UPDATE charges SET advanced = 0, updated_at = $1 WHERE id = $2 AND advanced = 1")
                        .bind(ms(now))
                        .bind(charge.to_string())
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected() > 0)
                }

                async fn retry_charge(&self, charge: Uuid, now: DateTime<Utc>, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "UPDATE charges SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL, updated_at = $1 \
                         WHERE id = $2 AND status = 'arrears' AND method = 'mandate' AND mandate_id IS NOT NULL",
                    )
                    .bind(ms(now))
                    .bind(charge.to_string())
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Err(StoreError::Conflict(format!("charge {charge} is not an arrears debt with a mandate to retry")));
                    }
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn insert_refund(&self, f: &Refund, audit: &AuditEntry) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    let seen = sqlx::query("SELECT id FROM refunds WHERE out_refund_no = $1")
                        .bind(f.out_refund_no.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if seen.is_some() {
                        return Err(StoreError::Duplicate(format!("refund {}", f.out_refund_no)));
                    }
                    let raised = sqlx::query(
                        "UPDATE charges SET refunded_minor = refunded_minor + $1, updated_at = $2 \
                         WHERE id = $3 AND currency = $4 AND status = 'succeeded' AND refunded_minor + $1 <= amount_minor",
                    )
                    .bind(f.amount.minor)
                    .bind(ms(f.created_at))
                    .bind(f.charge_id.to_string())
                    .bind(f.amount.currency.as_str())
                    .execute(&mut *tx)
                    .await?;
                    if raised.rows_affected() == 0 {
                        return Err(StoreError::Conflict(format!(
                            "charge {} was not collected, or {} more would refund more than it took",
                            f.charge_id, f.amount
                        )));
                    }
                    sqlx::query(&format!(
                        "INSERT INTO refunds ({REFUND_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                    ))
                    .bind(f.id.to_string())
                    .bind(f.charge_id.to_string())
                    .bind(f.out_refund_no.clone())
                    .bind(f.amount.minor)
                    .bind(f.amount.currency.as_str())
                    .bind(f.reason.clone())
                    .bind(f.status.as_str())
                    .bind(f.provider_ref.clone())
                    .bind(f.last_error.clone())
                    .bind(f.actor.clone())
                    .bind(ms(f.created_at))
                    .bind(ms(f.updated_at))
                    .bind(f.settled_at.map(ms))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| if unique_violation(&e) { StoreError::Duplicate(format!("refund {}", f.out_refund_no)) } else { e.into() })?;
                    insert_audit_row(&mut *tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn refund(&self, id: Uuid) -> StoreResult<Option<Refund>> {
                    sqlx::query(&format!("SELECT {REFUND_COLS} FROM refunds WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| refund_from(&r))
                        .transpose()
                }

                async fn refund_by_no(&self, no: &str) -> StoreResult<Option<Refund>> {
                    sqlx::query(&format!("SELECT {REFUND_COLS} FROM refunds WHERE out_refund_no = $1"))
                        .bind(no)
                        .fetch_optional(&self.pool)
                        .await?
                        .map(|r| refund_from(&r))
                        .transpose()
                }

                async fn refunds_of(&self, charge: Uuid) -> StoreResult<Vec<Refund>> {
                    sqlx::query(&format!("SELECT {REFUND_COLS} FROM refunds WHERE charge_id = $1 ORDER BY created_at, id"))
                        .bind(charge.to_string())
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(refund_from)
                        .collect()
                }

                async fn unfinished_refunds(&self, limit: i64) -> StoreResult<Vec<Refund>> {
                    sqlx::query(&format!("SELECT {REFUND_COLS} FROM refunds WHERE status IN ('pending', 'processing') ORDER BY updated_at, id LIMIT $1"))
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(refund_from)
                        .collect()
                }

                async fn update_refund(&self, id: Uuid, status: RefundStatus, provider_ref: Option<&str>, last_error: Option<&str>, now: DateTime<Utc>) -> StoreResult<bool> {
                    let mut tx = self.pool.begin().await?;
                    let settled = (status == RefundStatus::Succeeded).then(|| ms(now));
                    let r = sqlx::query(
                        "UPDATE refunds SET status = $1, provider_ref = COALESCE($2, provider_ref), last_error = $3, settled_at = COALESCE($4, settled_at), updated_at = $5 \
                         WHERE id = $6 AND status IN ('pending', 'processing')",
                    )
                    .bind(status.as_str())
                    .bind(provider_ref)
                    .bind(last_error)
                    .bind(settled)
                    .bind(ms(now))
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Ok(false);
                    }
                    if status == RefundStatus::Closed {
                        sqlx::query(
                            "UPDATE charges SET refunded_minor = refunded_minor - (SELECT amount_minor FROM refunds WHERE id = $1), updated_at = $2 \
                             WHERE id = (SELECT charge_id FROM refunds WHERE id = $1)",
                        )
                        .bind(id.to_string())
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                async fn insert_notification(&self, id: &str, provider: &str, event_type: &str, resource: &str, now: DateTime<Utc>) -> StoreResult<bool> {
                    let r = sqlx::query(
                        "INSERT INTO provider_notifications (id, provider, event_type, received_at, resource) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(provider)
                    .bind(event_type)
                    .bind(ms(now))
                    .bind(resource)
                    .execute(&self.pool)
                    .await?;
                    Ok(r.rows_affected() > 0)
                }

                async fn deducted_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<Charge>> {
                    sqlx::query(&format!(
                        "SELECT {CHARGE_COLS} FROM charges WHERE method = 'mandate' AND status = 'succeeded' AND settled_at >= $1 AND settled_at < $2 ORDER BY settled_at, id"
                    ))
                    .bind(ms(from))
                    .bind(ms(to))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(charge_from)
                    .collect()
                }

                async fn refunds_settled_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<(Refund, String)>> {
                    sqlx::query(
                        "SELECT r.id, r.charge_id, r.out_refund_no, r.amount_minor, r.currency, r.reason, r.status, r.provider_ref, r.last_error, r.actor, \
                         r.created_at, r.updated_at, r.settled_at, c.idempotency_key FROM refunds r JOIN charges c ON c.id = r.charge_id \
                         WHERE r.status = 'succeeded' AND r.settled_at >= $1 AND r.settled_at < $2 ORDER BY r.settled_at, r.id",
                    )
                    .bind(ms(from))
                    .bind(ms(to))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| Ok((refund_from(r)?, r.try_get("idempotency_key")?)))
                    .collect()
                }

                async fn insert_reconciliation(&self, run: &ReconRun, items: &[ReconItem]) -> StoreResult<()> {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO reconciliations (id, provider, bill_date, ran_at, actor, status, detail, matched, differences) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(run.id.to_string())
                    .bind(run.provider.clone())
                    .bind(run.bill_date.to_string())
                    .bind(ms(run.ran_at))
                    .bind(run.actor.clone())
                    .bind(run.status.clone())
                    .bind(run.detail.clone())
                    .bind(run.matched)
                    .bind(run.differences)
                    .execute(&mut *tx)
                    .await?;
                    for i in items {
                        sqlx::query(
                            "INSERT INTO reconciliation_items (id, run_id, kind, entry, reference, charge_id, ours_minor, theirs_minor, detail) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        )
                        .bind(Uuid::now_v7().to_string())
                        .bind(run.id.to_string())
                        .bind(i.kind.as_str())
                        .bind(i.entry.clone())
                        .bind(i.reference.clone())
                        .bind(i.charge_id.map(|c| c.to_string()))
                        .bind(i.ours_minor)
                        .bind(i.theirs_minor)
                        .bind(i.detail.clone())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn reconciliations(&self, limit: i64) -> StoreResult<Vec<ReconRun>> {
                    sqlx::query("SELECT id, provider, bill_date, ran_at, actor, status, detail, matched, differences FROM reconciliations ORDER BY ran_at DESC, id DESC LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(recon_from)
                        .collect()
                }

                async fn reconciliation(&self, id: Uuid) -> StoreResult<Option<(ReconRun, Vec<ReconItem>)>> {
                    let Some(run) = sqlx::query("SELECT id, provider, bill_date, ran_at, actor, status, detail, matched, differences FROM reconciliations WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let run = recon_from(&run)?;
                    let items = sqlx::query(
                        "SELECT kind, entry, reference, charge_id, ours_minor, theirs_minor, detail FROM reconciliation_items WHERE run_id = $1 \
                         ORDER BY CASE kind WHEN 'matched' THEN 1 ELSE 0 END, reference",
                    )
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| -> StoreResult<ReconItem> {
                        let kind: String = r.try_get("kind")?;
                        Ok(ReconItem {
                            kind: ReconKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("reconciliation kind {kind:?}")))?,
                            entry: r.try_get("entry")?,
                            reference: r.try_get("reference")?,
                            charge_id: opt_uuid(r.try_get("charge_id")?)?,
                            ours_minor: r.try_get("ours_minor")?,
                            theirs_minor: r.try_get("theirs_minor")?,
                            detail: r.try_get("detail")?,
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                    Ok(Some((run, items)))
                }

                async fn sandbox_refund(&self, no: &str, trade_key: &str, amount_minor: i64, now: DateTime<Utc>) -> StoreResult<SandboxRefund> {
                    let mut tx = self.pool.begin().await?;
                    if let Some(r) = sqlx::query("SELECT refund_id FROM sandbox_refunds WHERE out_refund_no = $1")
                        .bind(no)
                        .fetch_optional(&mut *tx)
                        .await?
                    {
                        return Ok(SandboxRefund::Done { refund_id: r.try_get("refund_id")? });
                    }
                    let Some(trade) = sqlx::query("SELECT reference, amount_minor FROM sandbox_debits WHERE idempotency_key = $1")
                        .bind(trade_key)
                        .fetch_optional(&mut *tx)
                        .await?
                    else {
                        return Ok(SandboxRefund::Refused { reason: format!("no debit {trade_key}") });
                    };
                    let reference: String = trade.try_get("reference")?;
                    let taken: i64 = trade.try_get("amount_minor")?;
                    let given: i64 = sqlx::query("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS given FROM sandbox_refunds WHERE trade_key = $1")
                        .bind(trade_key)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("given")?;
                    if amount_minor <= 0 || given + amount_minor > taken {
                        return Ok(SandboxRefund::Refused { reason: "refund exceeds the debit".into() });
                    }
                    let refund_id = format!("sbr-{}", Uuid::now_v7().simple());
                    sqlx::query("INSERT INTO sandbox_refunds (out_refund_no, trade_key, reference, amount_minor, refund_id, at) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(no)
                        .bind(trade_key)
                        .bind(reference.clone())
                        .bind(amount_minor)
                        .bind(refund_id.clone())
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE sandbox_wallets SET balance_minor = balance_minor + $1, updated_at = $2 WHERE reference = $3")
                        .bind(amount_minor)
                        .bind(ms(now))
                        .bind(reference)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(SandboxRefund::Done { refund_id })
                }

                async fn sandbox_ledger(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<LedgerRow>> {
                    let mut rows = Vec::new();
                    for r in sqlx::query("SELECT idempotency_key, txn_id, amount_minor, at FROM sandbox_debits WHERE outcome = 'succeeded' AND at >= $1 AND at < $2")
                        .bind(ms(from))
                        .bind(ms(to))
                        .fetch_all(&self.pool)
                        .await?
                    {
                        rows.push(LedgerRow {
                            entry: "trade",
                            reference: r.try_get("idempotency_key")?,
                            txn: r.try_get("txn_id")?,
                            amount_minor: r.try_get("amount_minor")?,
                            at: at(r.try_get("at")?)?,
                        });
                    }
                    for r in sqlx::query("SELECT out_refund_no, refund_id, amount_minor, at FROM sandbox_refunds WHERE at >= $1 AND at < $2")
                        .bind(ms(from))
                        .bind(ms(to))
                        .fetch_all(&self.pool)
                        .await?
                    {
                        rows.push(LedgerRow {
                            entry: "refund",
                            reference: r.try_get("out_refund_no")?,
                            txn: r.try_get("refund_id")?,
                            amount_minor: r.try_get("amount_minor")?,
                            at: at(r.try_get("at")?)?,
                        });
                    }
                    Ok(rows)
                }
            }
            #[async_trait]
            impl ReportStore for $store {
                async fn presence(&self, lot: &LotId, spans: &[Span], now: DateTime<Utc>) -> StoreResult<Vec<i64>> {
                    let mut out = vec![0; spans.len()];
                    if spans.is_empty() {
                        return Ok(out);
                    }
                    // Overlap of [entry, exit or now) with [lo, hi): CASE instead of LEAST and
                    // GREATEST, which SQLite does not have.
                    let sql = format!(
                        "{} SELECT b.lo AS lo, CAST(SUM( \
                           (CASE WHEN COALESCE(s.exit_at, $2) < b.hi THEN COALESCE(s.exit_at, $2) ELSE b.hi END) \
                         - (CASE WHEN s.entry_at > b.lo THEN s.entry_at ELSE b.lo END)) AS BIGINT) AS inside \
                         FROM b JOIN sessions s ON s.entry_at < b.hi AND COALESCE(s.exit_at, $2) > b.lo \
                         WHERE s.lot_id = $1 GROUP BY b.lo",
                        spans_table(3, spans.len())
                    );
                    let mut q = sqlx::query(&sql).bind(lot.as_str()).bind(ms(now));
                    for sp in spans {
                        q = q.bind(ms(sp.lo)).bind(ms(sp.hi));
                    }
                    let index = span_index(spans);
                    for r in q.fetch_all(&self.pool).await? {
                        let lo: i64 = r.try_get("lo")?;
                        if let Some(&i) = index.get(&lo) {
                            out[i] = r.try_get("inside")?;
                        }
                    }
                    Ok(out)
                }

                async fn money_by_span(&self, lot: &LotId, spans: &[Span]) -> StoreResult<Vec<MoneyCell>> {
                    let mut out = Vec::new();
                    if spans.is_empty() {
                        return Ok(out);
                    }
                    let index = span_index(spans);
                    let method = |m: &str| ChargeMethod::parse(m).ok_or_else(|| StoreError::Corrupt(format!("charge method {m:?}")));
                    let sql = format!(
                        "{} SELECT b.lo AS lo, c.status AS status, c.method AS method, COUNT(*) AS n, \
                         CAST(SUM(c.amount_minor) AS BIGINT) AS minor \
                         FROM b JOIN charges c ON c.settled_at >= b.lo AND c.settled_at < b.hi \
                         WHERE c.lot_id = $1 AND c.status IN ('succeeded', 'waived') \
                         GROUP BY b.lo, c.status, c.method",
                        spans_table(2, spans.len())
                    );
                    let mut q = sqlx::query(&sql).bind(lot.as_str());
                    for sp in spans {
                        q = q.bind(ms(sp.lo)).bind(ms(sp.hi));
                    }
                    for r in q.fetch_all(&self.pool).await? {
                        let Some(&span) = index.get(&r.try_get::<i64, _>("lo")?) else { continue };
                        let status: String = r.try_get("status")?;
                        let parsed = ChargeStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("charge status {status:?}")))?;
                        let kind = match parsed {
                            ChargeStatus::Succeeded => MoneyKind::Settled(method(&r.try_get::<String, _>("method")?)?),
                            ChargeStatus::Waived => MoneyKind::Waived,
                            ChargeStatus::Pending
                            | ChargeStatus::Submitted
                            | ChargeStatus::Accepted
                            | ChargeStatus::Failed
                            | ChargeStatus::Arrears
                            | ChargeStatus::AwaitingPayment => {
                                return Err(StoreError::Corrupt(format!("charge status {status:?} among settled charges")))
                            }
                        };
                        out.push(MoneyCell { span, kind, count: r.try_get("n")?, minor: r.try_get("minor")? });
                    }
                    let sql = format!(
                        "{} SELECT b.lo AS lo, c.method AS method, COUNT(*) AS n, CAST(SUM(r.amount_minor) AS BIGINT) AS minor \
                         FROM b JOIN refunds r ON r.settled_at >= b.lo AND r.settled_at < b.hi \
                         JOIN charges c ON c.id = r.charge_id \
                         WHERE c.lot_id = $1 AND r.status = 'succeeded' GROUP BY b.lo, c.method",
                        spans_table(2, spans.len())
                    );
                    let mut q = sqlx::query(&sql).bind(lot.as_str());
                    for sp in spans {
                        q = q.bind(ms(sp.lo)).bind(ms(sp.hi));
                    }
                    for r in q.fetch_all(&self.pool).await? {
                        let Some(&span) = index.get(&r.try_get::<i64, _>("lo")?) else { continue };
                        out.push(MoneyCell {
                            span,
                            kind: MoneyKind::Refunded(method(&r.try_get::<String, _>("method")?)?),
                            count: r.try_get("n")?,
                            minor: r.try_get("minor")?,
                        });
                    }
                    Ok(out)
                }

                async fn stay_lengths(&self, lot: &LotId, span: Span, edges_ms: &[i64]) -> StoreResult<Vec<i64>> {
                    let mut out = vec![0; edges_ms.len() + 1];
                    let cases: String = (0..edges_ms.len())
                        .map(|i| format!("WHEN exit_at - entry_at < ${} THEN {i} ", i + 4))
                        .collect();
                    let sql = format!(
                        "SELECT k, COUNT(*) AS n FROM (SELECT CASE {cases}ELSE {} END AS k FROM sessions \
                         WHERE lot_id = $1 AND exit_at IS NOT NULL AND exit_at >= $2 AND exit_at < $3) t GROUP BY k",
                        edges_ms.len()
                    );
                    let mut q = sqlx::query(&sql).bind(lot.as_str()).bind(ms(span.lo)).bind(ms(span.hi));
                    for e in edges_ms {
                        q = q.bind(*e);
                    }
                    for r in q.fetch_all(&self.pool).await? {
                        // The bucket number is a literal of the CASE: INTEGER on both backends.
                        let k: i32 = r.try_get("k")?;
                        if let Some(slot) = usize::try_from(k).ok().and_then(|k| out.get_mut(k)) {
                            *slot = r.try_get("n")?;
                        }
                    }
                    Ok(out)
                }

                async fn entries(&self, lot: &LotId, spans: &[Span]) -> StoreResult<Vec<i64>> {
                    let mut out = vec![0; spans.len()];
                    if spans.is_empty() {
                        return Ok(out);
                    }
                    let sql = format!(
                        "{} SELECT b.lo AS lo, COUNT(*) AS n FROM b JOIN sessions s ON s.entry_at >= b.lo AND s.entry_at < b.hi \
                         WHERE s.lot_id = $1 GROUP BY b.lo",
                        spans_table(2, spans.len())
                    );
                    let mut q = sqlx::query(&sql).bind(lot.as_str());
                    for sp in spans {
                        q = q.bind(ms(sp.lo)).bind(ms(sp.hi));
                    }
                    let index = span_index(spans);
                    for r in q.fetch_all(&self.pool).await? {
                        if let Some(&i) = index.get(&r.try_get::<i64, _>("lo")?) {
                            out[i] = r.try_get("n")?;
                        }
                    }
                    Ok(out)
                }
            }
        };
    };
}

backend!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
backend!(PgStore, sqlx::Postgres, sqlx::postgres::PgRow);
