//! Use cases that manage who may do what: operator accounts, API tokens and gateway keys.
//! Each is audited under the identity that made it (`cli` for the command line).

use chrono::{DateTime, Utc};
use parkpay_protocol::GatewayId;
use uuid::Uuid;

use crate::app::{App, AppError, AppResult};
use crate::auth::{check_password, check_username, hash_password, random_hex, token_hash};
use crate::domain::*;

/// A new gateway key: 32 random bytes, as hex.
pub const GATEWAY_KEY_BYTES: usize = 32;

impl App {
    fn access_audit(
        &self,
        actor: &str,
        action: &str,
        subject: String,
        detail: String,
    ) -> AuditEntry {
        AuditEntry {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            subject,
            detail,
        }
    }

    /// Creates an operator account with an argon2 hash of its password.
    pub async fn create_account(
        &self,
        username: &str,
        password: &str,
        grant: Grant,
        actor: &str,
    ) -> AppResult<Account> {
        check_username(username).map_err(AppError::Unprocessable)?;
        check_password(password).map_err(AppError::Unprocessable)?;
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| AppError::Unprocessable(e.to_string()))?
            .map_err(AppError::Unprocessable)?;
        let a = Account {
            id: Uuid::now_v7(),
            username: username.to_string(),
            grant,
            created_at: self.clock.now(),
            disabled_at: None,
        };
        let audit = self.access_audit(
            actor,
            "account.created",
            format!("account {}", a.username),
            describe(&a.grant),
        );
        self.store.insert_account(&a, &hash, &audit).await?;
        Ok(a)
    }

    /// Creates an API token; the secret is returned once and only its digest is kept.
    pub async fn create_token(
        &self,
        name: &str,
        grant: Grant,
        actor: &str,
    ) -> AppResult<(ApiToken, String)> {
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(AppError::Unprocessable(
                "token name must be 1-64 printable characters".into(),
            ));
        }
        let secret = format!("ppt_{}", random_hex(32));
        let t = ApiToken {
            id: Uuid::now_v7(),
            name: name.to_string(),
            grant,
            created_by: actor.to_string(),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        let audit = self.access_audit(
            actor,
            "token.created",
            format!("token {}", t.name),
            describe(&t.grant),
        );
        self.store
            .insert_api_token(&t, &token_hash(&secret), &audit)
            .await?;
        Ok((t, secret))
    }

    /// Makes (or with `replace`, rotates) a gateway's signing key and returns it as hex. The
    /// running servers pick it up the first time that gateway's lane is heard from.
    pub async fn add_gateway_key(
        &self,
        gateway: &GatewayId,
        replace: bool,
        actor: &str,
    ) -> AppResult<String> {
        let key = random_hex(GATEWAY_KEY_BYTES);
        let audit = self.access_audit(
            actor,
            if replace {
                "gateway.key_rotated"
            } else {
                "gateway.key_created"
            },
            format!("gateway {gateway}"),
            String::new(),
        );
        self.store
            .put_gateway_key(gateway, &key, replace, &audit)
            .await?;
        self.keys.forget(gateway.as_str());
        Ok(key)
    }

    /// Signs an operator in: a new login with its cookie token (returned once) and CSRF token.
    pub async fn sign_in(
        &self,
        account: &Account,
        ttl: chrono::Duration,
    ) -> AppResult<(Login, String)> {
        let token = random_hex(32);
        let now: DateTime<Utc> = self.clock.now();
        let login = Login {
            token_hash: token_hash(&token),
            account_id: account.id,
            csrf: random_hex(32),
            created_at: now,
            expires_at: now + ttl,
        };
        self.store.insert_login(&login).await?;
        self.store
            .insert_audit(&self.access_audit(
                &account.username,
                "account.signed_in",
                format!("account {}", account.username),
                String::new(),
            ))
            .await?;
        Ok((login, token))
    }
}

fn describe(g: &Grant) -> String {
    match g.lots_text() {
        Some(lots) => format!("role {} on lots {lots}", g.role),
        None => format!("role {} on every lot", g.role),
    }
}

/// Parses `--lots a,b` (or nothing, for every lot).
pub fn parse_grant(role: &str, lots: Option<&str>) -> Result<Grant, String> {
    let role = Role::parse(role)
        .ok_or_else(|| format!("role {role:?} is not one of admin, operator, finance, viewer"))?;
    let lots = match lots {
        None => None,
        Some(text) => {
            let mut out = Vec::new();
            for s in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                out.push(parkpay_protocol::LotId::parse(s).map_err(|e| e.to_string())?);
            }
            if out.is_empty() {
                return Err("lots: name at least one lot, or leave it out for every lot".into());
            }
            Some(out)
        }
    };
    Ok(Grant { role, lots })
}

/// Stands in for the broker where there is none (the administration commands).
struct NoBroker;

#[async_trait::async_trait]
impl crate::app::Outbound for NoBroker {
    async fn publish(&self, _: &str, _: Vec<u8>, _: bool) -> Result<(), String> {
        Err("no broker in an administration command".into())
    }
}

impl App {
    /// An `App` over a store alone, for administration commands that touch no lane.
    pub fn offline(
        store: std::sync::Arc<dyn crate::store::Store>,
        clock: std::sync::Arc<dyn parkpay_protocol::Clock>,
    ) -> App {
        use std::sync::Arc;
        App {
            keys: Arc::new(crate::keys::KeyRing::new(
                Default::default(),
                store.clone(),
                true,
            )),
            store: store.clone(),
            clock: clock.clone(),
            outbound: Arc::new(NoBroker),
            live: crate::live::Live::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            config: Arc::default(),
            published: crate::app::Published::channel().0,
            charges_due: Arc::new(tokio::sync::Notify::new()),
            allowlists_due: Arc::new(tokio::sync::Notify::new()),
            provider: Arc::new(crate::payments::SandboxProvider::new(
                store.clone(),
                clock.clone(),
                std::time::Duration::ZERO,
            )),
            settings: Arc::new(crate::app::AppSettings {
                public_url: String::new(),
                limits: crate::decide::TimeLimits::unbounded(),
                secure_cookies: true,
                sandbox_secret: None,
            }),
            portal: Arc::new(crate::portal::PortalSettings::from_config(
                &Default::default(),
            )),
        }
    }
}
