//! Lots and lanes change rarely and are read for every passage, so the hot path keeps them in
//! memory for a moment instead of asking the database each time. A change made through this
//! instance is seen at once (it forgets the entry); one made through another instance within
//! [`TTL`]. Only things that exist are kept: an unknown lot or lane is looked up every time, so
//! a lane configured on another instance works at once and made-up topic names fill no memory.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use parkpay_protocol::{LaneId, LotId};

use crate::domain::{Lane, Lot};
use crate::store::{Store, StoreResult};

/// How long a cached lot or lane is used before it is read again.
pub const TTL: Duration = Duration::from_secs(2);

struct Entries<K, V> {
    map: HashMap<K, (V, Instant)>,
    /// Bumped by every `forget`: a lookup that started before it does not store what it read.
    generation: u64,
}

pub struct Recent<K, V> {
    ttl: Duration,
    entries: RwLock<Entries<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    pub fn new(ttl: Duration) -> Recent<K, V> {
        Recent {
            ttl,
            entries: RwLock::new(Entries {
                map: HashMap::new(),
                generation: 0,
            }),
        }
    }

    /// The value for `key`: the cached one while it is fresh, else `fetch`'s (kept when it is
    /// `Some`).
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> StoreResult<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<V>>>,
    {
        let generation = {
            let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some((v, at)) = e.map.get(key) {
                if at.elapsed() < self.ttl {
                    return Ok(Some(v.clone()));
                }
            }
            e.generation
        };
        let fresh = fetch().await?;
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match &fresh {
            Some(v) if e.generation == generation => {
                e.map.insert(key.clone(), (v.clone(), Instant::now()));
            }
            _ => {
                e.map.remove(key);
            }
        }
        Ok(fresh)
    }

    /// Drops `key`, so the next lookup reads the store.
    pub fn forget(&self, key: &K) {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        e.generation += 1;
        e.map.remove(key);
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        e.generation += 1;
        e.map.clear();
    }
}

/// The lots and lanes the hot path reads, each kept for [`TTL`].
pub struct Configured {
    lots: Recent<LotId, Arc<Lot>>,
    lanes: Recent<(LotId, LaneId), Lane>,
}

impl Default for Configured {
    fn default() -> Self {
        Configured {
            lots: Recent::new(TTL),
            lanes: Recent::new(TTL),
        }
    }
}

impl Configured {
    pub async fn lot(&self, store: &dyn Store, id: &LotId) -> StoreResult<Option<Arc<Lot>>> {
        self.lots
            .get(id, || async { Ok(store.lot(id).await?.map(Arc::new)) })
            .await
    }

    pub async fn lane(
        &self,
        store: &dyn Store,
        lot: &LotId,
        lane: &LaneId,
    ) -> StoreResult<Option<Lane>> {
        self.lanes
            .get(&(lot.clone(), lane.clone()), || store.lane(lot, lane))
            .await
    }

    /// A lot was created or its tariff changed here.
    pub fn forget_lot(&self, id: &LotId) {
        self.lots.forget(id);
    }

    /// A lane was configured or removed here.
    pub fn forget_lane(&self, lot: &LotId, lane: &LaneId) {
        self.lanes.forget(&(lot.clone(), lane.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn keeps_what_exists_until_forgotten_and_never_what_does_not() {
        let cache: Recent<&str, u32> = Recent::new(Duration::from_secs(60));
        let reads = AtomicU32::new(0);
        let fetch = |v: Option<u32>| {
            reads.fetch_add(1, Ordering::SeqCst);
            async move { Ok(v) }
        };
        assert_eq!(cache.get(&"a", || fetch(Some(1))).await.unwrap(), Some(1));
        assert_eq!(cache.get(&"a", || fetch(Some(2))).await.unwrap(), Some(1));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the second lookup was cached"
        );
        cache.forget(&"a");
        assert_eq!(cache.get(&"a", || fetch(Some(2))).await.unwrap(), Some(2));
        // Absent values are looked up every time.
        assert_eq!(cache.get(&"b", || fetch(None)).await.unwrap(), None);
        assert_eq!(cache.get(&"b", || fetch(Some(3))).await.unwrap(), Some(3));
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        cache.clear();
        assert_eq!(cache.get(&"b", || fetch(Some(4))).await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn an_entry_expires_after_its_ttl() {
        let cache: Recent<&str, u32> = Recent::new(Duration::ZERO);
        assert_eq!(
            cache.get(&"a", || async { Ok(Some(1)) }).await.unwrap(),
            Some(1)
        );
        assert_eq!(
            cache.get(&"a", || async { Ok(Some(2)) }).await.unwrap(),
            Some(2)
        );
    }

    #[tokio::test]
    async fn a_lookup_overtaken_by_a_change_does_not_store_the_old_value() {
        let cache: Recent<&str, u32> = Recent::new(Duration::from_secs(60));
        let got = cache
            .get(&"a", || async {
                // The lot changes (and is forgotten) while its old row is being read.
                cache.forget(&"a");
                Ok(Some(1))
            })
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        assert_eq!(
            cache.get(&"a", || async { Ok(Some(2)) }).await.unwrap(),
            Some(2)
        );
    }
}
