//! Domain types: what the business logic speaks. Rows become these at the storage seam, wire
//! messages at the ingest seam; neither leaks past them.

use chrono::{DateTime, Utc};
use parkpay_protocol::{Direction, GatewayId, LaneId, LotId, Money, PlateColour};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::tariff::VehicleClass;
use crate::tariff::{Quote, Tariff};

/// Declares a status enum stored as text, with an exhaustive string mapping both ways.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Where a stay is in its life.
    SessionStatus {
        Open => "open",
        AwaitingPayment => "awaiting_payment",
        Closed => "closed",
        Exception => "exception",
    }
);

text_enum!(
    /// A charge's lifecycle: pending -> submitted -> accepted -> succeeded | failed; failed
    /// retries with backoff and, after the last try, becomes arrears.
    ChargeStatus {
        Pending => "pending",
        Submitted => "submitted",
        Accepted => "accepted",
        Succeeded => "succeeded",
        Failed => "failed",
        Arrears => "arrears",
        AwaitingPayment => "awaiting_payment",
        Waived => "waived",
    }
);

impl ChargeStatus {
    /// States the payment worker still has to move.
    pub fn is_worker_owned(self) -> bool {
        match self {
            ChargeStatus::Pending
            | ChargeStatus::Submitted
            | ChargeStatus::Accepted
            | ChargeStatus::Failed => true,
            ChargeStatus::Succeeded
            | ChargeStatus::Arrears
            | ChargeStatus::AwaitingPayment
            | ChargeStatus::Waived => false,
        }
    }

    /// States in which a driver may settle the charge by paying directly.
    pub fn is_payable(self) -> bool {
        match self {
            ChargeStatus::Arrears | ChargeStatus::AwaitingPayment => true,
            ChargeStatus::Pending
            | ChargeStatus::Submitted
            | ChargeStatus::Accepted
            | ChargeStatus::Succeeded
            | ChargeStatus::Failed
            | ChargeStatus::Waived => false,
        }
    }
}

text_enum!(
    /// A deduction mandate (代扣协议).
    MandateStatus {
        Pending => "pending",
        Active => "active",
        Paused => "paused",
        Revoked => "revoked",
    }
);

text_enum!(
    /// What an operator must look at.
    ExceptionKind {
        NoEntry => "no_entry",
        Unreadable => "unreadable",
        LowConfidence => "low_confidence",
        Ambiguous => "ambiguous",
        StaleEntry => "stale_entry",
        ChargeFailed => "charge_failed",
        UnknownLot => "unknown_lot",
        ClockSkew => "clock_skew",
        ExitBeforeEntry => "exit_before_entry",
        PricingFailed => "pricing_failed",
        Blacklisted => "blacklisted",
        LockedExit => "locked_exit",
    }
);

text_enum!(
    /// How a charge is collected.
    ChargeMethod {
        Mandate => "mandate",
        PayAtExit => "pay_at_exit",
        Qr => "qr",
        Cash => "cash",
    }
);

#[derive(Debug, Clone, Serialize)]
pub struct Lot {
    pub id: LotId,
    pub name: String,
    pub capacity: i64,
    /// Spaces kept for pass holders: other cars are refused once `capacity - reserved_spaces`
    /// are inside.
    pub reserved_spaces: i64,
    pub tariff: Tariff,
    pub tariff_version: i64,
    pub created_at: DateTime<Utc>,
}

/// A lane as configured: which gateway speaks for it and which way cars pass. Events from
/// anyone else, or in the other direction, are dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lane {
    pub lot: LotId,
    pub id: LaneId,
    pub direction: Direction,
    pub gateway: GatewayId,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Driver {
    pub id: Uuid,
    pub name: String,
    pub phone: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vehicle {
    pub plate: String,
    pub colour: PlateColour,
    pub driver_id: Uuid,
    /// The class the registration gives; `None`: read from the plate (see [`class_of`]).
    pub class: Option<VehicleClass>,
    /// Set while the owner has locked the car: its exits are held.
    pub locked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The class a vehicle is priced as: its registration's, or else what its plate says (a Chinese
/// plate of eight characters is a new-energy plate; a yellow plate is a large vehicle's).
pub fn class_of(
    registered: Option<VehicleClass>,
    plate: &str,
    colour: Option<PlateColour>,
) -> VehicleClass {
    if let Some(c) = registered {
        return c;
    }
    let cn_new_energy =
        plate.chars().next().is_some_and(|c| !c.is_ascii()) && plate.chars().count() == 8;
    if cn_new_energy || colour == Some(PlateColour::Green) {
        VehicleClass::NewEnergy
    } else if colour == Some(PlateColour::Yellow) {
        VehicleClass::Large
    } else {
        VehicleClass::Small
    }
}

/// A shop or a mall that validates stays (商户优惠) at one lot. It signs its requests with its own
/// key; each validation takes `minutes_off` off the stay and/or `amount_off` off the fee.
#[derive(Debug, Clone, Serialize)]
pub struct Merchant {
    pub id: Uuid,
    pub lot: LotId,
    pub name: String,
    pub minutes_off: i64,
    pub amount_off: Money,
    /// Validations it may issue per calendar day of the lot.
    pub daily_limit: i64,
    /// Its validations may be added to a stay that has another one.
    pub stackable: bool,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// One validation: bound to a stay when issued for a plate, or when a driver claims its code;
/// redeemed by that stay's exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validation {
    pub id: Uuid,
    pub merchant_id: Uuid,
    /// The merchant's name, for the receipt.
    pub merchant: String,
    pub lot: LotId,
    /// Set for a validation handed out as a QR code, until and after it is claimed.
    pub code: Option<String>,
    pub session_id: Option<Uuid>,
    pub minutes_off: i64,
    pub amount_off: Money,
    pub issued_at: DateTime<Utc>,
    pub bound_at: Option<DateTime<Utc>>,
    pub redeemed_at: Option<DateTime<Utc>>,
}

/// A pass bought through the payment provider (its list entry is the pass itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassPurchase {
    /// The buyer's idempotency key, and the provider's.
    pub id: Uuid,
    pub lot: LotId,
    pub plate: String,
    pub driver_id: Uuid,
    pub mandate_id: Uuid,
    pub months: i64,
    pub amount: Money,
    pub provider_txn: String,
    pub list_entry_id: Uuid,
    pub created_at: DateTime<Utc>,
}

text_enum!(
    /// The lists a plate can be on (docs/tariffs.md, "Lists, passes and classes").
    ListKind {
        White => "white",
        Black => "black",
        Pass => "pass",
        Visitor => "visitor",
    }
);

/// A plate on one of a lot's lists (or every lot's, when `lot` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub id: Uuid,
    pub kind: ListKind,
    pub lot: Option<LotId>,
    pub plate: String,
    pub valid_from: DateTime<Utc>,
    /// `None`: open-ended (white and black lists only).
    pub valid_until: Option<DateTime<Utc>>,
    /// A pass is still honoured this long after `valid_until`.
    pub grace_minutes: i64,
    /// A visitor grant with a discount instead of a free window.
    pub percent_off: Option<u32>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl ListEntry {
    /// The end of the window the entry covers, its grace included; `None`: no end.
    pub fn covers_until(&self) -> Option<DateTime<Utc>> {
        self.valid_until
            .map(|u| u + chrono::TimeDelta::minutes(self.grace_minutes))
    }

    /// In force at `t`: not revoked, and `t` within `[valid_from, covers_until)`.
    pub fn in_force_at(&self, t: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.valid_from <= t
            && self.covers_until().is_none_or(|end| t < end)
    }

    /// Whether the entry touches `[from, to]` at all (a pass that covered part of a stay).
    pub fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.valid_from <= to
            && self.covers_until().is_none_or(|end| from < end)
    }

    pub fn applies_to(&self, lot: &LotId) -> bool {
        self.lot.as_ref().is_none_or(|l| l == lot)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Mandate {
    pub id: Uuid,
    pub driver_id: Uuid,
    pub provider: String,
    pub provider_ref: String,
    pub status: MandateStatus,
    pub per_charge_cap: Option<Money>,
    pub monthly_cap: Option<Money>,
    pub channel: String,
    pub signed_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: Uuid,
    pub lot: LotId,
    pub plate: String,
    pub status: SessionStatus,
    pub driver_id: Option<Uuid>,
    pub entry_event_id: Option<Uuid>,
    pub entry_lane: Option<LaneId>,
    pub entry_at: DateTime<Utc>,
    pub exit_event_id: Option<Uuid>,
    pub exit_lane: Option<LaneId>,
    pub exit_at: Option<DateTime<Utc>>,
    pub fee: Option<Money>,
    pub quote: Option<Quote>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Charge {
    pub id: Uuid,
    pub session_id: Uuid,
    pub lot: LotId,
    pub driver_id: Option<Uuid>,
    pub mandate_id: Option<Uuid>,
    pub amount: Money,
    pub status: ChargeStatus,
    pub method: ChargeMethod,
    pub idempotency_key: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub provider_txn: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
    /// What refunds have given back or are giving back (pending, processing or succeeded).
    pub refunded: Money,
    /// The provider advanced the money (WeChat Pay's 垫资) and the driver has not repaid it.
    pub advanced: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeAttempt {
    pub attempt: i64,
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExceptionRecord {
    pub id: Uuid,
    pub lot: LotId,
    pub lane: Option<LaneId>,
    pub kind: ExceptionKind,
    pub plate: Option<String>,
    pub event_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub charge_id: Option<Uuid>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    /// The payload as received, lossily decoded for display.
    pub payload: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wallet {
    pub reference: String,
    pub balance: Money,
    /// Transient failures the sandbox will script before the next debit goes through.
    pub fail_next: i64,
}

text_enum!(
    /// What an operator account or API token may do (see `docs/security.md`).
    Role {
        Admin => "admin",
        Operator => "operator",
        Finance => "finance",
        Viewer => "viewer",
    }
);

/// A role, and the lots it applies to (`None`: every lot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub role: Role,
    pub lots: Option<Vec<LotId>>,
}

impl Grant {
    /// Whether the holder may see and act on `lot`.
    pub fn covers(&self, lot: &LotId) -> bool {
        self.lots.as_ref().is_none_or(|l| l.contains(lot))
    }

    /// The stored form of `lots`: comma-separated (lot ids cannot hold a comma).
    pub fn lots_text(&self) -> Option<String> {
        self.lots
            .as_ref()
            .map(|l| l.iter().map(LotId::as_str).collect::<Vec<_>>().join(","))
    }

    pub fn parse_lots(text: Option<&str>) -> Option<Vec<LotId>> {
        text.map(|t| {
            t.split(',')
                .filter_map(|s| LotId::parse(s.trim()).ok())
                .collect()
        })
    }
}

/// An operator's account. The password hash never leaves the store layer.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: Uuid,
    pub username: String,
    #[serde(flatten)]
    pub grant: Grant,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A signed-in browser session: the cookie holds a random token, the store its SHA-256.
#[derive(Debug, Clone)]
pub struct Login {
    pub token_hash: String,
    pub account_id: Uuid,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A bearer token for an integration, scoped like an account.
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    #[serde(flatten)]
    pub grant: Grant,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

text_enum!(
    /// A refund's life: pending (not yet taken by the provider) -> processing -> succeeded, or
    /// closed / abnormal (the money did not reach the driver; closed gives the amount back to
    /// what may be refunded).
    RefundStatus {
        Pending => "pending",
        Processing => "processing",
        Succeeded => "succeeded",
        Closed => "closed",
        Abnormal => "abnormal",
    }
);

/// Money given back on a charge, under our own `out_refund_no` (a retry reuses it).
#[derive(Debug, Clone, Serialize)]
pub struct Refund {
    pub id: Uuid,
    pub charge_id: Uuid,
    pub out_refund_no: String,
    pub amount: Money,
    pub reason: String,
    pub status: RefundStatus,
    pub provider_ref: Option<String>,
    pub last_error: Option<String>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

text_enum!(
    /// Whether the provider will deduct for a stay (WeChat Pay's parking state).
    ParkingState {
        Normal => "normal",
        Blocked => "blocked",
    }
);

/// A stay as the payment provider knows it: WeChat Pay's parking entry.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderParking {
    pub session_id: Uuid,
    pub provider: String,
    pub out_parking_no: String,
    pub parking_id: Option<String>,
    pub state: ParkingState,
    /// PAUSE, OVERDUE, OUT_SERVICE, EVALUATION_FAILED: why the provider will not deduct.
    pub block_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

text_enum!(
    /// One line of a reconciliation: how our ledger and the provider's bill compare.
    ReconKind {
        Matched => "matched",
        MissingAtProvider => "missing_at_provider",
        MissingHere => "missing_here",
        AmountDiffers => "amount_differs",
    }
);

/// One reconciliation of a day's bill against our charges and refunds.
#[derive(Debug, Clone, Serialize)]
pub struct ReconRun {
    pub id: Uuid,
    pub provider: String,
    /// The bill's day (the provider's calendar, China Standard Time for WeChat Pay).
    pub bill_date: chrono::NaiveDate,
    pub ran_at: DateTime<Utc>,
    pub actor: String,
    /// done, not_ready (the bill is not out yet) or failed.
    pub status: String,
    pub detail: String,
    pub matched: i64,
    pub differences: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconItem {
    pub kind: ReconKind,
    /// trade or refund
    pub entry: String,
    /// out_trade_no or out_refund_no
    pub reference: String,
    pub charge_id: Option<Uuid>,
    pub ours_minor: Option<i64>,
    pub theirs_minor: Option<i64>,
    pub detail: String,
}

/// The picture of a passage a gateway would not vouch for, kept by its event id. Personal data:
/// purged after `evidence.retention_days`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidencePicture {
    pub event_id: Uuid,
    pub lot: LotId,
    pub lane: LaneId,
    /// `jpeg` or `png`.
    pub format: String,
    /// SHA-256 (hex) of `image`.
    pub digest: String,
    pub image: Vec<u8>,
    pub captured_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// Who handles an open exception, and who said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub exception_id: Uuid,
    pub assigned_to: String,
    pub assigned_by: String,
    pub assigned_at: DateTime<Utc>,
}
