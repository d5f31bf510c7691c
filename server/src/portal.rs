//! The driver portal: a driver signs in with their phone number and a one-time code sent by
//! SMS, then sees their plates, mandates, stays and debts (`/me`); anyone may look up the open
//! stay of an exact plate (`/find`) to reach its pay page.
//!
//! Codes: 6 digits from the operating system's CSPRNG, kept only as a SHA-256 over the code's
//! own id, the phone and the digits; valid [`PortalSettings::code_ttl`]; every try is counted
//! before it is compared, so at most [`PortalSettings::max_tries`] comparisons are ever made
//! for one code, even by requests racing each other. Asking for a code answers the same for a
//! registered and an unknown number (a code is made and limited either way, only a registered
//! number is sent one), and a code for a number no driver has never signs in.
//!
//! A driver's sign-in is its own cookie and table ([`DriverLogin`]), for a phone number: it
//! covers every driver record registered with that number and reaches no operator route.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parkpay_protocol::Money;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, AppError, AppResult};
use crate::auth::{random_hex, same_secret, token_hash, RateLimiter};
use crate::domain::*;

/// A phone number in E.164 form (`+8613800138000`). Mainland mobile numbers may be written
/// with or without `+86`/`0086` and with spaces, dashes, dots or brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Phone, String> {
        if raw.chars().count() > 32 {
            return Err("phone must be at most 32 characters".into());
        }
        let s: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}'))
            .collect();
        let (international, digits) = if let Some(rest) = s.strip_prefix('+') {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("00") {
            (true, rest)
        } else {
            (false, s.as_str())
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("phone must be digits, optionally after + and a country code".into());
        }
        let mainland = |n: &str| n.len() == 11 && n.starts_with('1');
        if !international {
            // `86` before a mainland number is its country code written without `+`.
            let national = match digits.strip_prefix("86") {
                Some(n) if digits.len() == 13 => n,
                _ => digits,
            };
            return if mainland(national) {
                Ok(Phone(format!("+86{national}")))
            } else {
                Err(
                    "phone: a mainland mobile number has 11 digits starting with 1; \
                     write others with + and the country code"
                        .into(),
                )
            };
        }
        if let Some(national) = digits.strip_prefix("86") {
            return if mainland(national) {
                Ok(Phone(format!("+86{national}")))
            } else {
                Err("phone: a +86 mobile number has 11 digits starting with 1".into())
            };
        }
        if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
            return Err("phone: an international number has 8 to 15 digits after +".into());
        }
        Ok(Phone(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with its middle hidden (`+86 138****8000`), for pages and logs.
    pub fn masked(&self) -> String {
        let digits = &self.0[1..];
        let (cc, national) = match digits.strip_prefix("86") {
            Some(n) => ("86", n),
            None => ("", digits),
        };
        let n = national.len();
        let keep_head = 3.min(n.saturating_sub(4));
        let head = &national[..keep_head];
        let tail = &national[n.saturating_sub(4)..];
        let stars = "*".repeat(n - keep_head - tail.len());
        if cc.is_empty() {
            format!("+{head}{stars}{tail}")
        } else {
            format!("+{cc} {head}{stars}{tail}")
        }
    }
}

/// The key a stored driver's phone is found by: its E.164 form, or `None` when it is not a
/// number [`Phone::parse`] takes (such a driver cannot sign in to the portal).
pub fn phone_key(stored: Option<&str>) -> Option<String> {
    stored
        .and_then(|p| Phone::parse(p).ok())
        .map(|p| p.as_str().to_string())
}

/// Sends text messages. Sending happens off the request (the answer must not reveal whether a
/// number is registered by how long it takes), so a failure is logged, not returned to anyone.
#[async_trait]
pub trait SmsSender: Send + Sync + 'static {
    async fn send(&self, phone: &Phone, text: &str) -> Result<(), String>;
}

/// For development: writes each message, code included, to the log at info.
#[derive(Debug, Default)]
pub struct LogSms;

#[async_trait]
impl SmsSender for LogSms {
    async fn send(&self, phone: &Phone, text: &str) -> Result<(), String> {
        tracing::info!(phone = %phone.as_str(), %text, "SMS (development sender: not sent, only logged)");
        Ok(())
    }
}

/// For tests: keeps every message in memory, where the test reads the code.
#[derive(Debug, Default)]
pub struct MemorySms {
    sent: Mutex<Vec<(String, String)>>,
}

impl MemorySms {
    /// The texts sent to `phone` (E.164), oldest first.
    pub fn messages_to(&self, phone: &str) -> Vec<String> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(to, _)| to == phone)
            .map(|(_, text)| text.clone())
            .collect()
    }

    /// Every message sent, as (phone, text).
    pub fn all(&self) -> Vec<(String, String)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl SmsSender for MemorySms {
    async fn send(&self, phone: &Phone, text: &str) -> Result<(), String> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((phone.as_str().to_string(), text.to_string()));
        Ok(())
    }
}

/// The portal's sender and limits (from `[sms]` in the configuration).
pub struct PortalSettings {
    pub sender: Arc<dyn SmsSender>,
    /// The same sender when it is the in-memory one (tests read codes from it).
    pub memory: Option<Arc<MemorySms>>,
    pub code_ttl: chrono::Duration,
    pub max_tries: i64,
    /// The shortest time between two codes for one number.
    pub resend_after: chrono::Duration,
    pub codes_per_hour: usize,
    /// Code requests one client address may make per hour (any numbers).
    pub per_address: RateLimiter,
    /// Tries (right or wrong) one client address may make per hour.
    pub tries_per_address: RateLimiter,
    pub session_ttl: chrono::Duration,
}

impl PortalSettings {
    pub fn from_config(c: &crate::config::SmsConfig) -> PortalSettings {
        let memory = (c.sender == "memory").then(|| Arc::new(MemorySms::default()));
        let sender: Arc<dyn SmsSender> = match &memory {
            Some(m) => m.clone(),
            None => Arc::new(LogSms),
        };
        let hour = Duration::from_secs(3600);
        PortalSettings {
            sender,
            memory,
            code_ttl: chrono::Duration::seconds(i64::from(c.code_ttl_secs)),
            max_tries: i64::from(c.max_tries),
            resend_after: chrono::Duration::seconds(i64::from(c.resend_after_secs)),
            codes_per_hour: c.codes_per_hour as usize,
            per_address: RateLimiter::new(c.codes_per_address_per_hour, hour),
            tries_per_address: RateLimiter::new(c.tries_per_address_per_hour, hour),
            session_ttl: chrono::Duration::hours(i64::from(c.session_hours)),
        }
    }
}

/// A one-time code as stored: only its hash.
#[derive(Debug, Clone)]
pub struct PortalCode {
    pub id: Uuid,
    pub phone: String,
    pub code_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub tries: i64,
    pub used_at: Option<DateTime<Utc>>,
}

/// A driver's sign-in: the SHA-256 of its cookie, the phone it is for, its CSRF token.
#[derive(Debug, Clone)]
pub struct DriverLogin {
    pub token_hash: String,
    pub phone: String,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn code_hash(id: Uuid, phone: &str, code: &str) -> String {
    hex::encode(Sha256::digest(format!("{id}:{phone}:{code}").as_bytes()))
}

/// Six digits, uniform (rejection sampling over the OS generator's u32s).
fn new_code() -> String {
    let mut rng = rand::rngs::OsRng;
    loop {
        let n = rng.next_u32();
        // 4_294_000_000 is the largest multiple of 1_000_000 below 2^32.
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// Why a code request is refused: asked again too soon (the wait).
#[derive(Debug)]
pub struct TooSoon(pub Duration);

fn wait(d: chrono::Duration) -> Duration {
    d.to_std()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

/// A stay as its driver (or the finder of its plate) sees it, with the fee so far.
#[derive(Debug, Clone)]
pub struct StayView {
    pub session: Session,
    pub lot_name: Option<String>,
    pub time_zone: Option<String>,
    /// What leaving now would cost (an open stay), or the fee fixed at the exit.
    pub fee_due: Option<Money>,
    pub charge: Option<Charge>,
}

impl App {
    fn portal(&self) -> &PortalSettings {
        &self.portal
    }

    /// Makes a code for `phone` and sends it if a driver has that number. The same outcome,
    /// and the same limits, whether or not one does.
    pub async fn request_portal_code(&self, phone: &Phone) -> AppResult<Result<(), TooSoon>> {
        let p = self.portal();
        let now = self.clock.now();
        let recent = self
            .store
            .portal_code_times(phone.as_str(), now - chrono::Duration::hours(1))
            .await?;
        if let Some(last) = recent.iter().max() {
            if now - *last < p.resend_after {
                return Ok(Err(TooSoon(wait(p.resend_after - (now - *last)))));
            }
        }
        if recent.len() >= p.codes_per_hour {
            let oldest = recent.iter().min().copied().unwrap_or(now);
            return Ok(Err(TooSoon(wait(
                chrono::Duration::hours(1) - (now - oldest),
            ))));
        }
        let code = new_code();
        let id = Uuid::now_v7();
        self.store
            .insert_portal_code(&PortalCode {
                id,
                phone: phone.as_str().to_string(),
                code_hash: code_hash(id, phone.as_str(), &code),
                created_at: now,
                expires_at: now + p.code_ttl,
                tries: 0,
                used_at: None,
            })
            .await?;
        let known = !self
            .store
            .drivers_with_phone(phone.as_str())
            .await?
            .is_empty();
        if known {
            let sender = p.sender.clone();
            let phone = phone.clone();
            let minutes = p.code_ttl.num_minutes().max(1);
            let text = format!(
                "【parkpay】您的验证码 {code}，{minutes} 分钟内有效，请勿告诉他人。 \
                 Your parkpay code is {code}; valid {minutes} min. Do not share it."
            );
            tokio::spawn(async move {
                if let Err(e) = sender.send(&phone, &text).await {
                    tracing::warn!(phone = %phone.masked(), error = %e, "could not send a sign-in code");
                }
            });
        }
        Ok(Ok(()))
    }

    /// Checks a code; on success signs the number in and returns the login and its cookie
    /// token. `None` for every refusal alike: wrong, expired, used, tried too often, unknown.
    pub async fn verify_portal_code(
        &self,
        phone: &Phone,
        code: &str,
    ) -> AppResult<Option<(DriverLogin, String, Vec<Driver>)>> {
        let p = self.portal();
        let now = self.clock.now();
        let Some(c) = self.store.latest_portal_code(phone.as_str()).await? else {
            return Ok(None);
        };
        if c.used_at.is_some() || c.expires_at <= now || c.tries >= p.max_tries {
            return Ok(None);
        }
        // Counted before it is compared: racing tries cannot get more comparisons.
        if !self.store.spend_portal_try(c.id, p.max_tries).await? {
            return Ok(None);
        }
        let sent = code_hash(c.id, phone.as_str(), code.trim());
        if !same_secret(&sent, &c.code_hash) {
            return Ok(None);
        }
        let drivers = self.store.drivers_with_phone(phone.as_str()).await?;
        if drivers.is_empty() || !self.store.use_portal_code(c.id, now).await? {
            return Ok(None);
        }
        let token = random_hex(32);
        let login = DriverLogin {
            token_hash: token_hash(&token),
            phone: phone.as_str().to_string(),
            csrf: random_hex(32),
            created_at: now,
            expires_at: now + p.session_ttl,
        };
        self.store.insert_driver_login(&login).await?;
        self.store
            .insert_audit(&AuditEntry {
                id: Uuid::now_v7(),
                at: now,
                actor: driver_actor(&drivers),
                action: "driver.signed_in".into(),
                subject: format!("driver {}", drivers[0].id),
                detail: format!("portal, phone {}", phone.masked()),
            })
            .await?;
        Ok(Some((login, token, drivers)))
    }

    /// What a stay owes now: the fee fixed at the exit, or for an open stay what leaving now
    /// would cost under the lot's tariff and the plate's lists and validations.
    pub async fn stay_view(&self, s: Session) -> AppResult<StayView> {
        let lot = self.store.lot(&s.lot).await?;
        let charge = self.store.charge_for_session(s.id).await?;
        let now = self.clock.now();
        let fee_due = match (&s.status, &lot) {
            (SessionStatus::Open, Some(lot))
                if now > s.entry_at
                    && now - s.entry_at
                        <= chrono::Duration::days(crate::http::MAX_PREVIEW_DAYS) =>
            {
                let lists = self.store.lists_of_plate(&s.plate, &lot.id).await?;
                let validations = self.store.validations_of_session(s.id).await?;
                let vehicle = self.store.vehicle(&s.plate).await?;
                let class = class_of(
                    vehicle.as_ref().and_then(|v| v.class),
                    &s.plate,
                    vehicle.map(|v| v.colour),
                );
                let terms = crate::decide::terms_for(&lists, &validations, class, s.entry_at, now);
                crate::tariff::quote_with(&lot.tariff, s.entry_at, now, &terms)
                    .ok()
                    .map(|q| q.total)
            }
            _ => charge.as_ref().map(|c| c.amount).or(s.fee),
        };
        Ok(StayView {
            lot_name: lot.as_ref().map(|l| l.name.clone()),
            time_zone: lot.as_ref().map(|l| l.tariff.time_zone.to_string()),
            session: s,
            fee_due,
            charge,
        })
    }

    /// The current stays (open, or held at an exit for payment) of exactly this plate.
    pub async fn current_stays_of_plate(&self, plate: &str) -> AppResult<Vec<StayView>> {
        let mut out = Vec::new();
        for status in [SessionStatus::Open, SessionStatus::AwaitingPayment] {
            let found = self
                .store
                .sessions(&crate::store::SessionFilter {
                    plate: Some(plate.to_string()),
                    status: Some(status),
                    limit: 20,
                    ..Default::default()
                })
                .await?;
            for s in found.into_iter().filter(|s| s.plate == plate) {
                out.push(self.stay_view(s).await?);
            }
        }
        Ok(out)
    }

    /// Ends a driver's sign-in.
    pub async fn sign_out_driver(&self, token_hash: &str, actor: &str) -> AppResult<()> {
        self.store.delete_driver_login(token_hash).await?;
        self.store
            .insert_audit(&AuditEntry {
                id: Uuid::now_v7(),
                at: self.clock.now(),
                actor: actor.to_string(),
                action: "driver.signed_out".into(),
                subject: actor.replacen("driver:", "driver ", 1),
                detail: "portal".into(),
            })
            .await
            .map_err(AppError::from)
    }
}

/// How a signed-in driver appears in the audit log: `driver:<id>` of their first record.
pub fn driver_actor(drivers: &[Driver]) -> String {
    drivers
        .first()
        .map(|d| format!("driver:{}", d.id))
        .unwrap_or_else(|| "driver:unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mainland_numbers_are_one_number_however_written() {
        for raw in [
            "13800138000",
            "+86 138 0013 8000",
            "+8613800138000",
            "0086 138-0013-8000",
            "(+86) 138.0013.8000",
            "86 13800138000",
        ] {
            assert_eq!(
                Phone::parse(raw).map(|p| p.0),
                Ok("+8613800138000".to_string()),
                "{raw}"
            );
        }
        assert_eq!(
            Phone::parse("+44 7700 900123").map(|p| p.0),
            Ok("+447700900123".into())
        );
        for bad in [
            "",
            "1380013800",
            "23800138000",
            "+86 2380013800",
            "abc",
            "+0123456789",
            "138001380001",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn masks_the_middle() {
        let p = Phone::parse("13800138000").unwrap();
        assert_eq!(p.masked(), "+86 138****8000");
        assert_eq!(
            Phone::parse("+447700900123").unwrap().masked(),
            "+447*****0123"
        );
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
