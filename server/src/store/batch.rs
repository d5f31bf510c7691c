//! Reads of the hot path gathered across concurrent passages: the lookups that queued while the
//! last batch ran go to the database together, as one statement with one row of keys each, so
//! that a burst of passages costs a few round trips instead of one per passage and read. Alone,
//! a lookup waits for nobody: it is a batch of one.
//!
//! The statements are not kept prepared: their shape changes with the batch's size, and a
//! statement PostgreSQL keeps prepared is planned once for any value (a generic plan), which on
//! a table that was nearly empty when it was planned stays a scan of the whole table as the
//! table grows, until the next ANALYZE. Planned at each use, a batch is planned for the table
//! as it is; the planning is shared by the batch's keys.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{StoreError, StoreResult};

/// The most keys one statement looks up.
pub const MAX_BATCH: usize = 64;

type Job<K, V> = (K, oneshot::Sender<StoreResult<V>>);

/// Looks up values by key in batches, on `workers` tasks that each hold one connection while
/// their statement runs.
pub struct Batcher<K, V> {
    jobs: mpsc::Sender<Job<K, V>>,
}

impl<K, V> Batcher<K, V>
where
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
{
    /// `many` answers a batch of keys with one value per key, in their order; `one` answers a
    /// single key. A batch that fails is looked up again key by key with `one`, so that each
    /// caller gets its own outcome (and a transient failure stays transient for each).
    pub fn new<M, MF, O, OF>(workers: usize, many: M, one: O) -> Batcher<K, V>
    where
        M: Fn(Vec<K>) -> MF + Send + Sync + 'static,
        MF: Future<Output = StoreResult<Vec<V>>> + Send,
        O: Fn(K) -> OF + Send + Sync + 'static,
        OF: Future<Output = StoreResult<V>> + Send,
    {
        let (tx, rx) = mpsc::channel::<Job<K, V>>(4 * MAX_BATCH);
        let queue = Arc::new(Mutex::new(rx));
        let (many, one) = (Arc::new(many), Arc::new(one));
        for _ in 0..workers.max(1) {
            let (queue, many, one) = (queue.clone(), many.clone(), one.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&queue, MAX_BATCH).await {
                    run(batch, many.as_ref(), one.as_ref()).await;
                }
            });
        }
        Batcher { jobs: tx }
    }

    /// The value of one key, looked up with whatever other keys are waiting.
    pub async fn get(&self, key: K) -> StoreResult<V> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send((key, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// Waits for an item, then takes whatever else is already waiting, up to `max`: under load, what
/// queued while the last batch ran goes in together; alone, an item waits for nobody. Shared by
/// the batched reads and the group commit.
pub async fn next_batch<T>(queue: &Mutex<mpsc::Receiver<T>>, max: usize) -> Option<Vec<T>> {
    let mut rx = queue.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn run<K, V, M, MF, O, OF>(batch: Vec<Job<K, V>>, many: &M, one: &O)
where
    K: Clone,
    M: Fn(Vec<K>) -> MF,
    MF: Future<Output = StoreResult<Vec<V>>>,
    O: Fn(K) -> OF,
    OF: Future<Output = StoreResult<V>>,
{
    if batch.len() == 1 {
        let Some((key, reply)) = batch.into_iter().next() else {
            return;
        };
        let _ = reply.send(one(key).await);
        return;
    }
    let keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
    match many(keys).await {
        Ok(values) if values.len() == batch.len() => {
            for ((_, reply), v) in batch.into_iter().zip(values) {
                let _ = reply.send(Ok(v));
            }
        }
        outcome => {
            if let Err(e) = &outcome {
                tracing::debug!(keys = batch.len(), error = %e, "a batched read failed; reading each key alone");
            }
            for (key, reply) in batch {
                let _ = reply.send(one(key).await);
            }
        }
    }
}

/// `VALUES ($1, $2), ($3, $4), ...`: `rows` rows of `width` parameters each, for an INSERT.
pub fn values_of(rows: usize, width: usize) -> String {
    let mut s = String::from("VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        let row: Vec<String> = (0..width)
            .map(|c| format!("${}", r * width + c + 1))
            .collect();
        s.push_str(&format!("({})", row.join(", ")));
    }
    s
}

/// `(VALUES ($1, $2, 0), ($3, $4, 1), ...)`: `rows` rows of `width` parameters each, then the
/// row's index; its columns are `column1` ... (both dialects name them so).
pub fn values(rows: usize, width: usize) -> String {
    let mut s = String::from("(VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..width {
            s.push_str(&format!("${}, ", r * width + c + 1));
        }
        s.push_str(&format!("{r})"));
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn values_number_parameters_row_by_row() {
        assert_eq!(values(2, 2), "(VALUES ($1, $2, 0), ($3, $4, 1))");
        assert_eq!(values(1, 1), "(VALUES ($1, 0))");
        assert_eq!(values_of(2, 3), "VALUES ($1, $2, $3), ($4, $5, $6)");
    }

    #[tokio::test]
    async fn waiting_keys_go_together_and_each_caller_gets_its_own_value() {
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = batches.clone();
        let started = Arc::new(tokio::sync::Notify::new());
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let first_started = started.clone();
        let b = Arc::new(Batcher::new(
            1,
            move |keys: Vec<u32>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, StoreError>(keys.iter().map(|k| k * 10).collect()) }
            },
            move |k: u32| {
                let (mut gate, started) = (gate_rx.clone(), first_started.clone());
                async move {
                    // The first key runs alone and holds the worker until the others queue.
                    started.notify_one();
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, StoreError>(k * 10)
                }
            },
        ));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.get(1).await }
        });
        started.notified().await;
        let rest: Vec<_> = (2..=6)
            .map(|k| {
                let b = b.clone();
                tokio::spawn(async move { b.get(k).await })
            })
            .collect();
        while b.jobs.capacity() > 4 * MAX_BATCH - 5 {
            tokio::task::yield_now().await;
        }
        gate_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 10);
        for (k, h) in (2..=6).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap(), k * 10);
        }
        assert_eq!(
            batches.load(Ordering::SeqCst),
            1,
            "the five waiting keys in one batch"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_answered_key_by_key() {
        let b = Arc::new(Batcher::new(
            1,
            |_keys: Vec<u32>| async { Err::<Vec<u32>, _>(StoreError::Corrupt("batch".into())) },
            |k: u32| async move {
                if k == 3 {
                    Err(StoreError::NotFound("3".into()))
                } else {
                    Ok(k)
                }
            },
        ));
        let hs: Vec<_> = (1..=4)
            .map(|k| {
                let b = b.clone();
                tokio::spawn(async move { b.get(k).await })
            })
            .collect();
        let mut got = Vec::new();
        for h in hs {
            got.push(h.await.unwrap().map_err(|e| e.to_string()));
        }
        assert_eq!(got[0], Ok(1));
        assert_eq!(got[1], Ok(2));
        assert_eq!(got[2], Err("not found: 3".into()));
        assert_eq!(got[3], Ok(4));
    }
}
