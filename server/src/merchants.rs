//! Merchant validations (商户优惠/停车券): a shop or a mall takes time or money off a stay at its
//! lot. A merchant is created by an operator and gets a key of its own (only its SHA-256 is
//! kept); with it, it validates a parked car by plate, or hands out a code (a QR code) that a
//! driver claims for their stay. The stay's exit redeems its validations, once
//! ([`crate::decide`] prices them, the passage transaction marks them redeemed).

use chrono::{DateTime, TimeZone, Utc};
use parkpay_protocol::{LotId, Money, Plate};
use serde::Deserialize;
use uuid::Uuid;

use crate::app::{App, AppError, AppResult};
use crate::auth::{random_hex, token_hash};
use crate::domain::*;
use crate::tariff::{Tariff, MAX_PRICE_MINOR};

/// The most time one validation may take off a stay: a week.
pub const MAX_MINUTES_OFF: i64 = 7 * 24 * 60;

/// A merchant as an operator creates it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMerchant {
    pub name: String,
    #[serde(default)]
    pub minutes_off: i64,
    #[serde(default)]
    pub amount_off: Option<Money>,
    pub daily_limit: i64,
    #[serde(default)]
    pub stackable: bool,
}

fn unprocessable(field: &str, why: impl std::fmt::Display) -> AppError {
    AppError::Unprocessable(format!("{field}: {why}"))
}

/// The start of the lot's calendar day holding `now`.
fn day_start(now: DateTime<Utc>, tariff: &Tariff) -> DateTime<Utc> {
    let tz = tariff.time_zone;
    let date = now.with_timezone(&tz).date_naive();
    date.and_hms_opt(0, 0, 0)
        .and_then(|midnight| tz.from_local_datetime(&midnight).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}

impl App {
    /// Creates a merchant of `lot` and returns it with its key, shown this once.
    pub async fn create_merchant(
        &self,
        lot: &LotId,
        n: NewMerchant,
        actor: &str,
    ) -> AppResult<(Merchant, String)> {
        let lot = self
            .store
            .lot(lot)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("lot {lot}")))?;
        let name = n.name.trim();
        if name.is_empty() || name.chars().count() > 120 || name.chars().any(char::is_control) {
            return Err(unprocessable("name", "1-120 printable characters"));
        }
        if !(0..=MAX_MINUTES_OFF).contains(&n.minutes_off) {
            return Err(unprocessable(
                "minutes_off",
                format!("0 to {MAX_MINUTES_OFF}"),
            ));
        }
        let currency = lot.tariff.currency;
        let amount_off = n.amount_off.unwrap_or(Money::new(0, currency));
        if amount_off.currency != currency {
            return Err(unprocessable(
                "amount_off",
                format!("must be in the lot's currency {}", currency.as_str()),
            ));
        }
        if !(0..=MAX_PRICE_MINOR).contains(&amount_off.minor) {
            return Err(unprocessable(
                "amount_off",
                format!("0 to {MAX_PRICE_MINOR} minor units"),
            ));
        }
        if n.minutes_off == 0 && amount_off.minor == 0 {
            return Err(unprocessable(
                "minutes_off",
                "a validation takes time (minutes_off) or money (amount_off) off, or both",
            ));
        }
        if !(1..=100_000).contains(&n.daily_limit) {
            return Err(unprocessable("daily_limit", "1 to 100000"));
        }
        let now = self.clock.now();
        let m = Merchant {
            id: Uuid::now_v7(),
            lot: lot.id.clone(),
            name: name.to_string(),
            minutes_off: n.minutes_off,
            amount_off,
            daily_limit: n.daily_limit,
            stackable: n.stackable,
            created_at: now,
            disabled_at: None,
        };
        let key = format!("pmk_{}", random_hex(32));
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: "merchant.created".to_string(),
            subject: format!("merchant {} ({})", m.id, m.name),
            detail: format!(
                "lot {}, {} min and {} off, {} a day{}",
                m.lot,
                m.minutes_off,
                m.amount_off,
                m.daily_limit,
                if m.stackable { ", stackable" } else { "" }
            ),
        };
        self.store
            .insert_merchant(&m, &token_hash(&key), &audit)
            .await?;
        Ok((m, key))
    }

    /// The enabled merchant whose key this is.
    pub async fn merchant_by_key(&self, key: &str) -> AppResult<Option<Merchant>> {
        Ok(self.store.merchant_by_key(&token_hash(key)).await?)
    }

    fn new_validation(&self, m: &Merchant) -> Validation {
        Validation {
            id: Uuid::now_v7(),
            merchant_id: m.id,
            merchant: m.name.clone(),
            lot: m.lot.clone(),
            code: None,
            session_id: None,
            minutes_off: m.minutes_off,
            amount_off: m.amount_off,
            issued_at: self.clock.now(),
            bound_at: None,
            redeemed_at: None,
        }
    }

    async fn merchant_day_start(&self, m: &Merchant) -> AppResult<DateTime<Utc>> {
        let lot = self
            .lot(&m.lot)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("lot {}", m.lot)))?;
        Ok(day_start(self.clock.now(), &lot.tariff))
    }

    /// The merchant validates the stay of the car with `plate` parked at its lot now.
    pub async fn validate_plate(&self, m: &Merchant, plate: &str) -> AppResult<Validation> {
        let plate = Plate::parse(plate).map_err(|e| unprocessable("plate", e))?;
        let session = self
            .store
            .open_session_of(&m.lot, plate.as_str())
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!("a car {} parked at lot {}", plate.as_str(), m.lot))
            })?;
        let mut v = self.new_validation(m);
        v.session_id = Some(session.id);
        v.bound_at = Some(v.issued_at);
        let day = self.merchant_day_start(m).await?;
        self.store
            .issue_validation(&v, m.stackable, m.daily_limit, day)
            .await?;
        self.audit_validation(
            m,
            &v,
            format!("for {} (session {})", plate.as_str(), session.id),
        )
        .await?;
        Ok(v)
    }

    async fn audit_validation(
        &self,
        m: &Merchant,
        v: &Validation,
        detail: String,
    ) -> AppResult<()> {
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: v.issued_at,
            actor: format!("merchant:{}", m.name),
            action: "validation.issued".to_string(),
            subject: format!("validation {}", v.id),
            detail,
        };
        Ok(self.store.insert_audit(&audit).await?)
    }

    /// The merchant hands out a validation as a code (printed as a QR code on the receipt): it
    /// counts against today's limit when issued, and applies to the stay of whoever claims it.
    pub async fn validation_code(&self, m: &Merchant) -> AppResult<Validation> {
        let mut v = self.new_validation(m);
        v.code = Some(random_hex(12));
        let day = self.merchant_day_start(m).await?;
        self.store
            .issue_validation(&v, m.stackable, m.daily_limit, day)
            .await?;
        self.audit_validation(m, &v, "as a code".to_string())
            .await?;
        Ok(v)
    }

    /// A driver claims a validation code for the stay of their car, parked at the code's lot.
    pub async fn claim_validation(&self, code: &str, plate: &str) -> AppResult<Validation> {
        let plate = Plate::parse(plate).map_err(|e| unprocessable("plate", e))?;
        let v = self
            .store
            .validation_by_code(code)
            .await?
            .ok_or_else(|| AppError::NotFound("validation code".to_string()))?;
        if v.session_id.is_some() {
            return Err(AppError::Conflict(
                "this validation was used already".into(),
            ));
        }
        let session = self
            .store
            .open_session_of(&v.lot, plate.as_str())
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!("a car {} parked at lot {}", plate.as_str(), v.lot))
            })?;
        let claimed = self
            .store
            .claim_validation(code, session.id, self.clock.now())
            .await?;
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            actor: format!("driver of {}", plate.as_str()),
            action: "validation.claimed".to_string(),
            subject: format!("validation {}", claimed.id),
            detail: format!("session {} of {}", session.id, claimed.merchant),
        };
        self.store.insert_audit(&audit).await?;
        Ok(claimed)
    }
}
