//! Gateway keys: each gateway has one HMAC key, from `[mqtt.gateway_keys]` in the config or made
//! by `parkpay-server gateway add` (stored in the database). The gateway signs its events with
//! it; the server checks them with it and signs what it sends that gateway (decisions, commands,
//! allowlists), which the gateway checks in turn. See `docs/security.md`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parkpay_protocol::{LaneId, LotId, Topic};

use crate::app::Outbound;
use crate::config::hex_decode;
use crate::store::{Store, StoreResult};

/// How long a gateway found without a key stays "without a key" before the store is asked again
/// (a key added by the command line is picked up within this).
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Keys read from the store, and when each gateway without one was last looked up.
#[derive(Default)]
struct Stored {
    keys: HashMap<String, Vec<u8>>,
    missing: HashMap<String, Instant>,
}

/// How long a lane's gateway, as read from the store, is used before it is read again: signing a
/// decision then costs no query. A lane moved to another gateway on this instance is forgotten at
/// once; on another instance, within this.
const LANE_TTL: Duration = Duration::from_secs(5);

type LaneGateways = HashMap<(LotId, LaneId), (Option<String>, Instant)>;

pub struct KeyRing {
    configured: HashMap<String, Vec<u8>>,
    stored: RwLock<Stored>,
    lanes: RwLock<LaneGateways>,
    store: Arc<dyn Store>,
    required: bool,
}

impl KeyRing {
    pub fn new(
        configured: HashMap<String, Vec<u8>>,
        store: Arc<dyn Store>,
        required: bool,
    ) -> KeyRing {
        KeyRing {
            configured,
            stored: RwLock::new(Stored::default()),
            lanes: RwLock::new(HashMap::new()),
            store,
            required,
        }
    }

    /// Whether a gateway without a key is refused (and gets nothing unsigned from us).
    pub fn required(&self) -> bool {
        self.required
    }

    /// The gateway's key, if it has one.
    pub async fn key(&self, gateway: &str) -> StoreResult<Option<Vec<u8>>> {
        if let Some(k) = self.configured.get(gateway) {
            return Ok(Some(k.clone()));
        }
        {
            let stored = self.stored.read().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = stored.keys.get(gateway) {
                return Ok(Some(k.clone()));
            }
            if stored
                .missing
                .get(gateway)
                .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
            {
                return Ok(None);
            }
        }
        let all = self.store.gateway_keys().await?;
        let mut stored = self.stored.write().unwrap_or_else(|p| p.into_inner());
        for (gw, hex) in all {
            if let Some(k) = hex_decode(&hex) {
                stored.keys.insert(gw, k);
            }
        }
        let found = stored.keys.get(gateway).cloned();
        if found.is_none() {
            stored.missing.insert(gateway.to_string(), Instant::now());
        }
        Ok(found)
    }

    /// Drops what is cached about a gateway (its key was just made or rotated).
    pub fn forget(&self, gateway: &str) {
        let mut stored = self.stored.write().unwrap_or_else(|p| p.into_inner());
        stored.keys.remove(gateway);
        stored.missing.remove(gateway);
    }

    /// The key of the gateway that serves a lane.
    pub async fn for_lane(&self, lot: &LotId, lane: &LaneId) -> StoreResult<Option<Vec<u8>>> {
        let at = (lot.clone(), lane.clone());
        let cached = self
            .lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&at)
            .filter(|(_, when)| when.elapsed() < LANE_TTL)
            .map(|(gw, _)| gw.clone());
        let gateway = match cached {
            Some(gw) => gw,
            None => {
                let gw = self
                    .store
                    .lane(lot, lane)
                    .await?
                    .map(|l| l.gateway.to_string());
                let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
                if lanes.len() > 100_000 {
                    lanes.clear();
                }
                lanes.insert(at, (gw.clone(), Instant::now()));
                gw
            }
        };
        match gateway {
            Some(gw) => self.key(&gw).await,
            None => Ok(None),
        }
    }

    /// Drops what is cached about a lane (it was reconfigured here).
    pub fn forget_lane(&self, lot: &LotId, lane: &LaneId) {
        self.lanes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(lot.clone(), lane.clone()));
    }
}

/// Signs every message bound for a gateway with that gateway's key on its way out, whichever
/// path it takes (a fresh decision, the outbox resending one, a command, an allowlist).
pub struct SigningOutbound {
    pub inner: Arc<dyn Outbound>,
    pub keys: Arc<KeyRing>,
}

#[async_trait]
impl Outbound for SigningOutbound {
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        let key = match Topic::parse(topic) {
            Ok(Topic::Decisions(lot, lane)) | Ok(Topic::Commands(lot, lane)) => {
                self.keys.for_lane(&lot, &lane).await
            }
            Ok(Topic::Allowlist(_, gateway)) => self.keys.key(gateway.as_str()).await,
            _ => Ok(None),
        }
        .map_err(|e| format!("cannot look up the gateway key: {e}"))?;
        let payload = match key {
            Some(key) => parkpay_protocol::sign(&payload, &key)
                .map_err(|e| format!("cannot sign the message: {e}"))?,
            None if self.keys.required() => {
                return Err(format!(
                    "no key for the gateway of {topic}: it would refuse an unsigned message"
                ))
            }
            None => payload,
        };
        self.inner.publish(topic, payload, retain).await
    }
}
