//! Domain types: what the business logic speaks. Rows become these at the storage seam, wire
//! messages at the ingest seam; neither leaks past them.

use chrono::{DateTime, Utc};
use parkpay_protocol::{Direction, GatewayId, LaneId, LotId, Money, PlateColour};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    pub created_at: DateTime<Utc>,
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
