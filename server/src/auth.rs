//! Who is asking, and what they may do. Operators sign in with a password (argon2) and get an
//! HTTP-only session cookie plus a CSRF token that every write must echo; integrations use
//! bearer tokens. Both carry a [`Grant`]: a role and, optionally, the lots it is limited to.
//! Only SHA-256 digests of cookie tokens and API tokens are stored, so a copy of the database
//! does not let anyone sign in. See `docs/security.md`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parkpay_protocol::LotId;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::{Grant, Role};

/// What a request wants to do; each role allows a fixed set (see [`allows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Lots, lanes, sessions, charges, exceptions, stats, the live stream, metrics.
    View,
    /// Lift a barrier by hand.
    OperateLanes,
    /// Resolve an exception by reading the plate (may charge a mandate).
    CorrectPlates,
    /// Take a cash payment at the booth, and see charges with their drivers.
    TakeCash,
    /// The money desk: refund, waive, retry a debt, reconcile with the provider.
    ManageMoney,
    /// Driver records: names, phones, plates, mandates.
    SeeDrivers,
    /// Register drivers, vehicles and mandates (an integration's job).
    ManageDrivers,
    /// The white and black lists, passes and visitor grants of a lot.
    ManageLists,
    /// Lots, tariffs, lanes, spaces.
    Configure,
    /// Accounts and API tokens.
    ManageAccess,
    /// The audit log and dead letters.
    ReadAudit,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::OperateLanes => "operate lanes",
            Action::CorrectPlates => "correct plates",
            Action::TakeCash => "take payments",
            Action::ManageMoney => "refund, waive or reconcile",
            Action::SeeDrivers => "see drivers",
            Action::ManageDrivers => "manage drivers",
            Action::ManageLists => "manage plate lists",
            Action::Configure => "configure lots",
            Action::ManageAccess => "manage accounts",
            Action::ReadAudit => "read the audit log",
        }
    }
}

/// The role table: admin may do everything; an operator runs lanes and keeps the lot's plate
/// lists; finance handles money
/// and sees drivers; a viewer only looks.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => true,
        Role::Operator => matches!(
            action,
            View | OperateLanes | CorrectPlates | TakeCash | ManageLists
        ),
        Role::Finance => matches!(
            action,
            View | TakeCash | ManageMoney | SeeDrivers | ReadAudit
        ),
        Role::Viewer => matches!(action, View),
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A signed-in browser; writes must carry this CSRF token.
    Session { csrf: String, token_hash: String },
    /// A bearer token (not sent by browsers on their own, so no CSRF token is needed).
    Token,
}

/// The caller of a request: the name the audit log records and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `alice` for an account, `token:billing` for an API token.
    pub name: String,
    pub grant: Grant,
    pub via: Via,
}

impl Identity {
    pub fn may(&self, action: Action) -> bool {
        allows(self.grant.role, action)
    }

    pub fn may_on(&self, action: Action, lot: &LotId) -> bool {
        self.may(action) && self.grant.covers(lot)
    }
}

/// SHA-256 hex of a secret token: what the store keeps and looks up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random secret, as hex (`bytes` of entropy).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash of a random password, checked when the username is unknown, so the answer takes as
/// long as for a wrong password and does not tell which usernames exist.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

/// Checks a password against a stored argon2 hash (or against nothing, in the same time).
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    let hash: &str = match stored {
        Some(h) => h,
        None => dummy_hash(),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && stored.is_some()
}

/// Rules for a password an account is created with.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < 12 {
        return Err("password must have at least 12 characters".into());
    }
    if n > 256 {
        return Err("password must have at most 256 characters".into());
    }
    Ok(())
}

/// Rules for a username.
pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err("username must be 1-64 characters from A-Z a-z 0-9 . _ - @".into());
    }
    Ok(())
}

/// Constant-time equality of two short secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fixed-window counter per key: at most `max` hits per `window`. Used for sign-in attempts
/// and the public pages. Memory is bounded: when it holds too many keys, expired ones go, and
/// if that is not enough the oldest window is dropped.
pub struct RateLimiter {
    max: u32,
    window: Duration,
    hits: Mutex<HashMap<String, (Instant, u32)>>,
}

const MAX_KEYS: usize = 50_000;

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            max,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a hit for `key`; `Err(retry_after)` when the key is over its limit.
    pub fn hit(&self, key: &str) -> Result<(), Duration> {
        self.check(key, true)
    }

    /// Whether `key` is over its limit, without counting a hit.
    pub fn blocked(&self, key: &str) -> Result<(), Duration> {
        self.check(key, false)
    }

    fn check(&self, key: &str, count: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        if hits.len() >= MAX_KEYS && !hits.contains_key(key) {
            let window = self.window;
            hits.retain(|_, (start, _)| now.duration_since(*start) < window);
            if hits.len() >= MAX_KEYS {
                if let Some(oldest) = hits
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone())
                {
                    hits.remove(&oldest);
                }
            }
        }
        let entry = hits.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            return Err(self.window.saturating_sub(now.duration_since(entry.0)));
        }
        if count {
            entry.1 += 1;
        }
        Ok(())
    }

    /// Forgets `key` (a successful sign-in clears its failures).
    pub fn clear(&self, key: &str) {
        self.hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_the_table_says() {
        assert!(allows(Role::Admin, Action::ManageAccess));
        assert!(allows(Role::Operator, Action::CorrectPlates));
        assert!(!allows(Role::Operator, Action::Configure));
        assert!(!allows(Role::Operator, Action::SeeDrivers));
        assert!(allows(Role::Finance, Action::TakeCash));
        assert!(!allows(Role::Finance, Action::OperateLanes));
        assert!(!allows(Role::Viewer, Action::TakeCash));
        assert!(allows(Role::Viewer, Action::View));
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", Some(&h)));
        assert!(!verify_password("correct horse batterx", Some(&h)));
        assert!(!verify_password("correct horse battery", None));
        assert!(!verify_password("anything", Some("not a hash")));
    }

    #[test]
    fn rate_limiter_blocks_after_max_and_clears() {
        let r = RateLimiter::new(2, Duration::from_secs(60));
        assert!(r.hit("a").is_ok());
        assert!(r.hit("a").is_ok());
        assert!(r.hit("a").is_err());
        assert!(r.blocked("a").is_err());
        assert!(r.hit("b").is_ok(), "keys are independent");
        r.clear("a");
        assert!(r.hit("a").is_ok());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
