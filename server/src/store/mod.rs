//! The storage seam: one trait, two backends (SQLite and PostgreSQL), one conformance suite.
//!
//! Methods are shaped by use case, not by table: `commit_passage` writes an event, its session
//! changes, its charge, its exceptions and its outbox row in one transaction. Idempotency and
//! races are settled by constraints (event id, one open session per plate and lot, one charge per
//! session, idempotency keys) and by conditional updates, never by message order.

mod batch;
mod history;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parkpay_protocol::{Currency, Decision, GatewayId, LaneId, LotId, Money};
use uuid::Uuid;

use crate::domain::*;

pub use history::*;
pub use sql::{PgStore, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Duplicate(String),
    /// A conditional update lost a race; the caller re-reads and decides again.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH (embedded) or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Failures that may pass by themselves: a connection dropped or refused, the pool
    /// exhausted, the database restarting or shutting down a session, a busy lock. Anything
    /// else (a constraint, a value the database refuses) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                // PostgreSQL: connection exceptions (08), operator intervention such as an
                // admin shutdown (57), insufficient resources (53), serialization failure and
                // deadlock (40001, 40P01). SQLite: BUSY (5) and LOCKED (6), with extended codes.
                code.starts_with("08")
                    || code.starts_with("57")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01"
                    || matches!(code.parse::<i64>(), Ok(c) if c & 0xff == 5 || c & 0xff == 6)
            }
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The event row written with a passage.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub lot: LotId,
    pub lane: String,
    pub gateway: String,
    pub direction: String,
    pub captured_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub plate: Option<String>,
    pub quality: String,
    pub resent: bool,
    pub payload: String,
}

/// A change to a session, applied inside the passage transaction.
#[derive(Debug, Clone)]
pub enum SessionChange {
    Open(Session, /* plate_key */ String),
    /// Close an open session: fails with `Conflict` if it is no longer open.
    Close {
        id: Uuid,
        status: SessionStatus,
        exit_event_id: Uuid,
        exit_lane: String,
        exit_at: DateTime<Utc>,
        fee: Money,
        quote_json: String,
        driver_id: Option<Uuid>,
        /// The plate (and its key) the stay turned out to be, when the entry was misread and an
        /// attendant matched the exit to it.
        plate: Option<(String, String)>,
    },
    /// A second entry for a plate already inside: the stale session becomes an exception.
    MarkStale {
        id: Uuid,
    },
    /// A stay held for payment whose car came back to an exit: its payment now opens this exit.
    /// Fails with `Conflict` if the stay is no longer awaiting payment.
    MoveHeldExit {
        id: Uuid,
        exit_event_id: Uuid,
        exit_lane: String,
    },
}

#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Everything one passage writes, atomically.
#[derive(Debug, Clone)]
pub struct PassageWrite {
    pub event: NewEvent,
    /// An exception this passage resolves (an attendant's correction), with the resolution;
    /// `Conflict` if it was resolved meanwhile, and then nothing is written.
    pub resolves: Option<(Uuid, String)>,
    pub audit: Vec<AuditEntry>,
    /// Merchant validations the passage redeems; `Conflict` if one was redeemed meanwhile.
    pub redeem: Vec<Uuid>,
    /// A ticket for a car without a plate, issued with the stay this passage opens; `Conflict`
    /// if the held passage already has one.
    pub ticket: Option<NewTicket>,
    pub session_id: Option<Uuid>,
    pub decision: Decision,
    pub sessions: Vec<SessionChange>,
    pub charge: Option<Charge>,
    pub exceptions: Vec<ExceptionRecord>,
    pub outbox: OutboxMessage,
}

/// A ticket for a plateless car: the SHA-256 of the phone's secret, the stay it opened and the
/// held entry it was issued for.
#[derive(Debug, Clone)]
pub struct NewTicket {
    pub secret_hash: String,
    pub session_id: Uuid,
    pub entry_event_id: Uuid,
}

#[derive(Debug, Clone)]
pub enum PassageOutcome {
    Committed,
    /// The event id was already stored: here is the decision made the first time.
    Duplicate(Box<Decision>),
}

/// An open session as the matcher sees it.
#[derive(Debug, Clone)]
pub struct OpenSession {
    pub id: Uuid,
    pub plate: String,
    pub plate_key: String,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub lot: Option<LotId>,
    pub plate: Option<String>,
    /// Plates whose match key holds this one (confusable characters alike: 0/O/D/Q, 8/B, ...):
    /// the whole plate, or the part someone remembers.
    pub key: Option<String>,
    pub status: Option<SessionStatus>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub kind: Option<ListKind>,
    /// Entries of this lot and those for every lot.
    pub lot: Option<LotId>,
    pub plate: Option<String>,
    /// Only entries not revoked and not yet ended at this instant.
    pub current_at: Option<DateTime<Utc>>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ChargeFilter {
    pub status: Option<ChargeStatus>,
    pub driver: Option<Uuid>,
    pub session: Option<Uuid>,
    pub limit: i64,
}

/// How a worker moves a charge it holds the lease on.
#[derive(Debug, Clone)]
pub struct ChargeUpdate {
    pub id: Uuid,
    pub lease_owner: String,
    pub status: ChargeStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub provider_txn: Option<String>,
    pub last_error: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
    /// The provider advanced the money (垫资).
    pub advanced: bool,
    pub attempt: ChargeAttempt,
    pub exception: Option<ExceptionRecord>,
}

/// Settling a payable charge (arrears, or a fee held at the exit) by direct payment.
#[derive(Debug, Clone)]
pub struct DirectPayment {
    pub charge_id: Uuid,
    pub method: ChargeMethod,
    /// `Succeeded` (paid) or `Waived` (an operator let it go, with the reason in the audit).
    pub outcome: ChargeStatus,
    pub at: DateTime<Utc>,
    /// Set when paying releases a car held at the exit: the session closes and the lane opens.
    pub release: Option<(Uuid, Decision, OutboxMessage)>,
    pub audit: AuditEntry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitResult {
    Succeeded {
        txn_id: String,
    },
    Declined {
        reason: String,
    },
    /// Scripted transient failure: the caller should retry with the same key.
    Unavailable,
}

#[derive(Debug, Clone, Default)]
pub struct LotStats {
    pub occupancy: i64,
    pub revenue_minor: i64,
    pub passages: i64,
}

/// What the provider said about a debit, recorded outside the worker's lease (a notification,
/// or a poll): moves the charge only forward from a state the worker owns.
#[derive(Debug, Clone)]
pub struct ProviderResult {
    pub charge_id: Uuid,
    /// Succeeded or Arrears.
    pub status: ChargeStatus,
    pub provider_txn: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
    pub advanced: bool,
    pub last_error: Option<String>,
    pub attempt: ChargeAttempt,
    /// Raised with an arrears result.
    pub exception: Option<ExceptionRecord>,
}

/// A row of the provider's ledger (the sandbox's own, for its bill).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// trade or refund
    pub entry: &'static str,
    /// The trade's out_trade_no (our idempotency key), or the refund's out_refund_no.
    pub reference: String,
    pub txn: String,
    pub amount_minor: i64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxRefund {
    Done { refund_id: String },
    Refused { reason: String },
}

/// An open stay with what an exit reads beside it.
#[derive(Debug, Clone)]
pub struct OpenStay {
    pub session: Session,
    pub validations: Vec<Validation>,
    pub provider: Option<ProviderParking>,
}

/// What a read plate leads to before any stay: its vehicle and its list entries for a lot.
#[derive(Debug, Clone, Default)]
pub struct PlateFacts {
    pub vehicle: Option<Vehicle>,
    pub lists: Vec<ListEntry>,
}

/// Payments beyond the debit: the provider's view of stays, refunds, notifications,
/// reconciliation and the money desk. Every backend implements it beside [`Store`].
#[async_trait]
pub trait MoneyStore: Send + Sync {
    async fn provider_parking(&self, session: Uuid) -> StoreResult<Option<ProviderParking>>;
    async fn put_provider_parking(&self, p: &ProviderParking) -> StoreResult<()>;
    /// The provider changed what it will do for a car inside (by its parking id).
    async fn set_parking_state(
        &self,
        parking_id: &str,
        state: ParkingState,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn charge_by_key(&self, idempotency_key: &str) -> StoreResult<Option<Charge>>;
    /// Records a provider's result unless the charge has moved past the worker's states;
    /// frees any lease (the worker then finds it lost) and, for success, resolves the charge's
    /// open exceptions. Returns whether anything changed.
    async fn record_provider_result(&self, r: &ProviderResult) -> StoreResult<bool>;
    /// The driver paid back what the provider advanced.
    async fn clear_advance(&self, charge: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    /// An arrears charge goes back to the worker (attempts start again); audited.
    async fn retry_charge(
        &self,
        charge: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// Inserts a refund and raises the charge's refunded amount in one transaction, only if
    /// the charge was collected and the total stays within it (`Conflict` otherwise). An
    /// `out_refund_no` seen before is `Duplicate`.
    async fn insert_refund(&self, r: &Refund, audit: &AuditEntry) -> StoreResult<()>;
    async fn refund(&self, id: Uuid) -> StoreResult<Option<Refund>>;
    async fn refund_by_no(&self, out_refund_no: &str) -> StoreResult<Option<Refund>>;
    async fn refunds_of(&self, charge: Uuid) -> StoreResult<Vec<Refund>>;
    /// Refunds the provider has not finished (pending or processing), oldest first.
    async fn unfinished_refunds(&self, limit: i64) -> StoreResult<Vec<Refund>>;
    /// Moves a pending or processing refund on; closing it gives its amount back to what may
    /// be refunded. Returns whether anything changed.
    async fn update_refund(
        &self,
        id: Uuid,
        status: RefundStatus,
        provider_ref: Option<&str>,
        last_error: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Keeps a provider notification once by its id; false when it was seen before.
    async fn insert_notification(
        &self,
        id: &str,
        provider: &str,
        event_type: &str,
        resource: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Charges collected by deduction that settled in `[from, to)`.
    async fn deducted_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<Charge>>;
    /// Refunds that succeeded in `[from, to)`, with their charge's idempotency key.
    async fn refunds_settled_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<(Refund, String)>>;
    async fn insert_reconciliation(&self, run: &ReconRun, items: &[ReconItem]) -> StoreResult<()>;
    async fn reconciliations(&self, limit: i64) -> StoreResult<Vec<ReconRun>>;
    async fn reconciliation(&self, id: Uuid) -> StoreResult<Option<(ReconRun, Vec<ReconItem>)>>;
    /// The sandbox provider: gives back part of a debit, once per `out_refund_no`.
    async fn sandbox_refund(
        &self,
        out_refund_no: &str,
        trade_key: &str,
        amount_minor: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<SandboxRefund>;
    /// The sandbox provider's ledger in `[from, to)`: its bill.
    async fn sandbox_ledger(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<LedgerRow>>;
}

/// A half-open stretch of time `[lo, hi)`: a report's hour or day on the lot's wall clock,
/// computed by the caller (time zones are not the database's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub lo: DateTime<Utc>,
    pub hi: DateTime<Utc>,
}

/// What a report's money cell holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyKind {
    /// Charges that succeeded (were collected) by this method.
    Settled(ChargeMethod),
    /// Charges let go by the money desk.
    Waived,
    /// Refunds that succeeded, by the method of the charge they give back.
    Refunded(ChargeMethod),
}

/// The sum of one kind of money in one span (by index into the spans asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoneyCell {
    pub span: usize,
    pub kind: MoneyKind,
    pub count: i64,
    pub minor: i64,
}

/// Aggregates for reports: the database sums, the caller only shapes the answer. Every backend
/// implements it beside [`Store`].
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Per span, in the order given: the milliseconds cars spent inside the lot during it
    /// (each stay's overlap with the span, summed; a car still inside counts until `now`).
    async fn presence(
        &self,
        lot: &LotId,
        spans: &[Span],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>>;
    /// Per span: what settled (by method), what was waived, and what was refunded.
    async fn money_by_span(&self, lot: &LotId, spans: &[Span]) -> StoreResult<Vec<MoneyCell>>;
    /// Stays that left during `span`, counted by length: bucket `i` holds the stays shorter
    /// than `edges_ms[i]` and not shorter than `edges_ms[i - 1]`; the last, those at least
    /// `edges_ms[last]` long. Returns `edges_ms.len() + 1` counts.
    async fn stay_lengths(
        &self,
        lot: &LotId,
        span: Span,
        edges_ms: &[i64],
    ) -> StoreResult<Vec<i64>>;
    /// Per span, in the order given: the stays that began in it.
    async fn entries(&self, lot: &LotId, spans: &[Span]) -> StoreResult<Vec<i64>>;
}

/// The driver portal: one-time codes, drivers' sign-ins, drivers by phone number. Every
/// backend implements it beside [`Store`].
#[async_trait]
pub trait PortalStore: Send + Sync {
    async fn insert_portal_code(&self, c: &crate::portal::PortalCode) -> StoreResult<()>;
    /// When each code for `phone` made since `since` was made.
    async fn portal_code_times(
        &self,
        phone: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<DateTime<Utc>>>;
    /// The newest code for `phone` (only the newest can sign in).
    async fn latest_portal_code(
        &self,
        phone: &str,
    ) -> StoreResult<Option<crate::portal::PortalCode>>;
    /// Counts one try, if the code has tries left and is unused: `false` when it has not.
    async fn spend_portal_try(&self, id: Uuid, max_tries: i64) -> StoreResult<bool>;
    /// Marks a code used, once: `false` when it already was.
    async fn use_portal_code(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    /// The drivers registered with this phone (E.164), oldest first.
    async fn drivers_with_phone(&self, phone: &str) -> StoreResult<Vec<Driver>>;
    async fn insert_driver_login(&self, l: &crate::portal::DriverLogin) -> StoreResult<()>;
    /// A driver's sign-in by its cookie's hash, unless it has expired.
    async fn driver_login(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<crate::portal::DriverLogin>>;
    async fn delete_driver_login(&self, token_hash: &str) -> StoreResult<()>;
}

/// Evidence pictures and who handles which exception. Every backend implements it beside
/// [`Store`].
#[async_trait]
pub trait EvidenceStore: Send + Sync {
    /// Keeps a picture once per event; false when the event already has one (a redelivery).
    async fn insert_evidence(&self, p: &EvidencePicture) -> StoreResult<bool>;
    async fn evidence(&self, event_id: Uuid) -> StoreResult<Option<EvidencePicture>>;
    /// Which of these events have a picture.
    async fn events_with_evidence(&self, event_ids: &[Uuid]) -> StoreResult<Vec<Uuid>>;
    /// Deletes the pictures received before `before`; returns how many.
    async fn purge_evidence(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Gives an open exception to someone (replacing whoever had it), with its audit row, in
    /// one transaction: `NotFound` without such an exception, `Conflict` once it is resolved.
    async fn assign_exception(&self, a: &Assignment, audit: &AuditEntry) -> StoreResult<()>;
    /// The assignments of these exceptions (those that have one).
    async fn assignments(&self, exception_ids: &[Uuid]) -> StoreResult<Vec<Assignment>>;
    /// Exceptions given to `user`, newest first, like [`Store::exceptions`].
    async fn exceptions_assigned_to(
        &self,
        user: &str,
        lot: Option<&LotId>,
        open_only: bool,
        limit: i64,
    ) -> StoreResult<Vec<ExceptionRecord>>;
}

#[async_trait]
pub trait Store:
    MoneyStore + HistoryStore + PortalStore + ReportStore + EvidenceStore + Send + Sync + 'static
{
    fn backend(&self) -> &'static str;
    async fn ping(&self) -> StoreResult<()>;

    // Lots and lanes
    /// Creates a lot with its lanes, in one transaction.
    async fn insert_lot(&self, lot: &Lot, lanes: &[Lane]) -> StoreResult<()>;
    /// Replaces a lot's tariff and writes the audit row with it.
    async fn update_tariff(
        &self,
        lot: &LotId,
        tariff_json: &str,
        currency: Currency,
        audit: &AuditEntry,
    ) -> StoreResult<i64>;
    /// Creates or replaces a lane's configuration.
    async fn put_lane(&self, lane: &Lane, audit: &AuditEntry) -> StoreResult<()>;
    async fn delete_lane(&self, lot: &LotId, lane: &LaneId, audit: &AuditEntry) -> StoreResult<()>;
    async fn lane(&self, lot: &LotId, lane: &LaneId) -> StoreResult<Option<Lane>>;
    async fn lanes(&self, lot: &LotId) -> StoreResult<Vec<Lane>>;
    async fn lot(&self, id: &LotId) -> StoreResult<Option<Lot>>;
    async fn lots(&self) -> StoreResult<Vec<Lot>>;
    async fn lot_stats(&self, lot: &LotId, since: DateTime<Utc>) -> StoreResult<LotStats>;

    // Drivers, vehicles, mandates
    async fn insert_driver(&self, d: &Driver) -> StoreResult<()>;
    async fn driver(&self, id: Uuid) -> StoreResult<Option<Driver>>;
    async fn insert_vehicle(&self, v: &Vehicle, plate_key: &str) -> StoreResult<()>;
    async fn vehicle(&self, plate: &str) -> StoreResult<Option<Vehicle>>;
    /// The vehicle registered with exactly this plate and [`Store::lists_of_plate`], in one
    /// statement when no list names the plate (the usual case).
    async fn plate_facts(&self, plate: &str, lot: &LotId) -> StoreResult<PlateFacts>;
    async fn vehicles_of(&self, driver: Uuid) -> StoreResult<Vec<Vehicle>>;
    /// Locks (`Some`) or unlocks (`None`) a vehicle, with its audit row; `Conflict` if it is
    /// already so, `NotFound` if no such vehicle is registered.
    async fn set_vehicle_lock(
        &self,
        plate: &str,
        locked_at: Option<DateTime<Utc>>,
        audit: &AuditEntry,
    ) -> StoreResult<()>;

    async fn locked_plates(&self) -> StoreResult<Vec<String>>;

    // Lists and spaces
    async fn insert_list_entry(&self, e: &ListEntry, audit: &AuditEntry) -> StoreResult<()>;
    /// Revokes a list entry for good and returns it; `Conflict` if it was revoked already.
    async fn revoke_list_entry(
        &self,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> StoreResult<ListEntry>;
    async fn list_entry(&self, id: Uuid) -> StoreResult<Option<ListEntry>>;
    async fn list_entries(&self, f: &ListFilter) -> StoreResult<Vec<ListEntry>>;
    /// Every unrevoked entry for `plate` that applies to `lot` (its own or every lot's), whatever
    /// its validity: the decision reads the windows.
    async fn lists_of_plate(&self, plate: &str, lot: &LotId) -> StoreResult<Vec<ListEntry>>;
    /// Cars inside `lot` now: its open sessions.
    async fn occupancy(&self, lot: &LotId) -> StoreResult<i64>;
    async fn pass_purchase(&self, id: Uuid) -> StoreResult<Option<PassPurchase>>;
    /// Records a paid purchase with the pass it bought, in one transaction; `Duplicate` if a
    /// purchase with this id exists (a concurrent retry).
    async fn record_pass_purchase(
        &self,
        p: &PassPurchase,
        pass: &ListEntry,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// The stay a ticket's secret (its SHA-256) opened.
    async fn ticket_session(&self, secret_hash: &str) -> StoreResult<Option<Uuid>>;

    // Merchants and validations
    /// `Duplicate` if the id or key exists.
    async fn insert_merchant(
        &self,
        m: &Merchant,
        key_hash: &str,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// The enabled merchant with this key.
    async fn merchant_by_key(&self, key_hash: &str) -> StoreResult<Option<Merchant>>;
    async fn merchants(&self, lot: &LotId) -> StoreResult<Vec<Merchant>>;
    async fn merchant(&self, id: Uuid) -> StoreResult<Option<Merchant>>;
    /// Disables a merchant for good: its key is refused from then on. `NotFound` if there is no
    /// such enabled merchant.
    async fn disable_merchant(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// Issues a validation, bound to a stay or not, within the merchant's `daily_limit` counted
    /// from `day_start`; a bound one also within "one per stay unless stackable". `Conflict`
    /// names the rule that refused it.
    async fn issue_validation(
        &self,
        v: &Validation,
        stackable: bool,
        daily_limit: i64,
        day_start: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Binds the unbound validation with `code` to an open session; `NotFound` for no such
    /// code, `Conflict` if it was claimed already or the stay has a validation it may not join.
    async fn claim_validation(
        &self,
        code: &str,
        session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Validation>;
    /// The validation with this code.
    async fn validation_by_code(&self, code: &str) -> StoreResult<Option<Validation>>;
    /// The session's validations not yet redeemed.
    async fn validations_of_session(&self, session: Uuid) -> StoreResult<Vec<Validation>>;
    async fn validations(&self, merchant: Uuid, limit: i64) -> StoreResult<Vec<Validation>>;
    async fn update_lot_spaces(
        &self,
        lot: &LotId,
        capacity: i64,
        reserved: i64,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    async fn insert_mandate(&self, m: &Mandate) -> StoreResult<()>;
    async fn mandate(&self, id: Uuid) -> StoreResult<Option<Mandate>>;
    async fn mandates_of(&self, driver: Uuid) -> StoreResult<Vec<Mandate>>;
    /// Moves a mandate to `status`; `Conflict` if it is revoked already (revocation is final)
    /// or already in that status, `NotFound` if there is no such mandate.
    async fn set_mandate_status(
        &self,
        id: Uuid,
        status: MandateStatus,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Plates (not locked) whose drivers hold an active mandate and owe nothing, and that are parked in
    /// `lot` or entered it since `since`: the lot's gateways may let them out on their own
    /// while the server is unreachable. Nobody else's plates go to a lot's gateways.
    async fn trusted_plates(
        &self,
        lot: &LotId,
        since: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<String>>;
    /// Sum of the driver's unpaid arrears.
    async fn arrears_of(&self, driver: Uuid) -> StoreResult<i64>;
    /// What an exit needs to know of a driver, in one query: each mandate with what was charged
    /// under it since `month_start` (for a monthly cap), and the driver's arrears.
    async fn payer_facts(
        &self,
        driver: Uuid,
        month_start: DateTime<Utc>,
    ) -> StoreResult<(Vec<(Mandate, i64)>, i64)>;

    // Passages
    async fn event_decision(&self, event_id: Uuid) -> StoreResult<Option<Decision>>;
    /// The open session of exactly this plate (there is at most one per lot).
    async fn open_session_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<Session>>;
    /// [`Store::open_session_of`] with what an exit needs beside it, in one statement: the
    /// stay's unredeemed validations and the provider's view of it, each read only when the
    /// statement found one (most stays have neither).
    async fn open_stay_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<OpenStay>>;
    /// The latest stay of exactly this plate on the lot that ended at an exit: closed, or held
    /// there for payment.
    async fn last_exit_of(&self, lot: &LotId, plate: &str) -> StoreResult<Option<Session>>;
    async fn open_sessions_by_key(&self, lot: &LotId, key: &str) -> StoreResult<Vec<OpenSession>>;
    async fn open_sessions(&self, lot: &LotId) -> StoreResult<Vec<OpenSession>>;
    async fn commit_passage(&self, w: &PassageWrite) -> StoreResult<PassageOutcome>;
    async fn session(&self, id: Uuid) -> StoreResult<Option<Session>>;
    async fn sessions(&self, f: &SessionFilter) -> StoreResult<Vec<Session>>;

    // Charges
    async fn charge(&self, id: Uuid) -> StoreResult<Option<Charge>>;
    async fn charge_for_session(&self, session: Uuid) -> StoreResult<Option<Charge>>;
    async fn charges(&self, f: &ChargeFilter) -> StoreResult<Vec<Charge>>;
    async fn charge_attempts(&self, id: Uuid) -> StoreResult<Vec<ChargeAttempt>>;
    /// Leases up to `limit` due charges to `owner` until `lease_until`. Several workers (and
    /// several server instances) may call this at once; each charge goes to one of them.
    async fn lease_due_charges(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<Charge>>;
    /// Frees every lease held by `instance`'s payment worker (owners `"{instance}:..."`), so
    /// other workers take its charges at once; returns how many were freed. Safe while that
    /// worker still runs: its update then fails with `Conflict`, and a debit it may have made
    /// is found again by the charge's idempotency key.
    async fn release_leases_of(&self, instance: &str) -> StoreResult<u64>;
    /// Counts one heartbeat of `instance` and returns every known instance's name and beat
    /// count; instances not seen for a day are forgotten.
    async fn beat(&self, instance: &str, now: DateTime<Utc>) -> StoreResult<Vec<(String, i64)>>;
    /// Applies a worker's update; `Conflict` if the lease was lost.
    async fn update_charge(&self, u: &ChargeUpdate) -> StoreResult<()>;
    async fn pay_directly(&self, p: &DirectPayment) -> StoreResult<()>;

    // Outbox
    /// Marks outbox rows as handed to the broker (any number in one statement).
    async fn mark_published(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()>;
    async fn unpublished(
        &self,
        older_than: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<OutboxMessage>>;

    // Operations
    async fn exceptions(
        &self,
        lot: Option<&LotId>,
        open_only: bool,
        limit: i64,
    ) -> StoreResult<Vec<ExceptionRecord>>;
    async fn exception(&self, id: Uuid) -> StoreResult<Option<ExceptionRecord>>;
    /// The open exceptions a passage event raised.
    async fn open_exceptions_of_event(&self, event_id: Uuid) -> StoreResult<Vec<ExceptionRecord>>;
    /// Marks an open exception resolved; `Conflict` if somebody resolved it first.
    async fn resolve_exception(
        &self,
        id: Uuid,
        resolution: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The payload of a stored passage event, as received.
    async fn event_payload(&self, event_id: Uuid) -> StoreResult<Option<String>>;
    async fn insert_audit(&self, a: &AuditEntry) -> StoreResult<()>;
    async fn audit(&self, limit: i64) -> StoreResult<Vec<AuditEntry>>;
    async fn insert_dead_letter(&self, d: &DeadLetter, payload: &[u8]) -> StoreResult<()>;
    async fn dead_letters(&self, limit: i64) -> StoreResult<Vec<DeadLetter>>;

    // Access: accounts, signed-in sessions, API tokens, gateway keys
    /// `Duplicate` if the username is taken.
    async fn insert_account(
        &self,
        a: &Account,
        password_hash: &str,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// The account and its password hash.
    async fn account_by_name(&self, username: &str) -> StoreResult<Option<(Account, String)>>;
    async fn accounts(&self) -> StoreResult<Vec<Account>>;
    async fn insert_login(&self, l: &Login) -> StoreResult<()>;
    /// The unexpired login with this token hash, and its account (if not disabled).
    async fn login(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Login, Account)>>;
    async fn delete_login(&self, token_hash: &str) -> StoreResult<()>;
    async fn insert_api_token(
        &self,
        t: &ApiToken,
        token_hash: &str,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// The unrevoked token with this hash.
    async fn api_token(&self, token_hash: &str) -> StoreResult<Option<ApiToken>>;
    async fn api_tokens(&self) -> StoreResult<Vec<ApiToken>>;
    /// Revokes a token for good; `NotFound` if there is no such unrevoked token.
    async fn revoke_api_token(&self, id: Uuid, audit: &AuditEntry) -> StoreResult<()>;
    /// Disables an account and ends its sign-ins; `NotFound` if there is no such enabled one.
    async fn disable_account(&self, username: &str, audit: &AuditEntry) -> StoreResult<()>;
    /// Stores a gateway's key; `Duplicate` if it has one and `replace` is false.
    async fn put_gateway_key(
        &self,
        gateway: &GatewayId,
        key_hex: &str,
        replace: bool,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    async fn gateway_keys(&self) -> StoreResult<Vec<(String, String)>>;

    // Sandbox payment provider state
    async fn put_wallet(&self, w: &Wallet, at: DateTime<Utc>) -> StoreResult<()>;
    async fn wallet(&self, reference: &str) -> StoreResult<Option<Wallet>>;
    /// Debits a wallet once per idempotency key: a repeat returns the first result.
    async fn sandbox_debit(
        &self,
        key: &str,
        reference: &str,
        amount: Money,
        at: DateTime<Utc>,
    ) -> StoreResult<DebitResult>;
    async fn sandbox_lookup(&self, key: &str) -> StoreResult<Option<DebitResult>>;
}

/// Opens the store a URL names, running its migrations: `sqlite://` or `postgres://`.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

pub(crate) fn money(minor: i64, currency: &str) -> StoreResult<Money> {
    let c = Currency::parse(currency)
        .ok_or_else(|| StoreError::Corrupt(format!("currency {currency:?}")))?;
    Ok(Money::new(minor, c))
}
