//! Gathers the per-frame reads of one camera burst until the burst can be voted. Pure.
//!
//! Frames travel at QoS 0 and each is read on a blocking thread, so they arrive and finish in any
//! order, and some never arrive. A burst is complete when every one of its `of` frames has been
//! read, or when no frame has arrived for the burst timeout and every frame that did arrive has
//! been read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parkpay_protocol::{DeviceId, PlateCandidate};

/// A burst is named by its camera and the camera's burst number.
pub type BurstKey = (DeviceId, u64);

/// The outcome of reading one frame.
#[derive(Debug, Clone)]
pub enum FrameRead {
    Read {
        candidates: Vec<PlateCandidate>,
        /// SHA-256 (hex) of the frame's encoded image.
        digest: String,
        /// The encoded image itself, kept for the best frame as the passage's evidence.
        image: Arc<Vec<u8>>,
    },
    /// The frame could not be decoded: it votes for nothing, rather than for "no plate".
    Unreadable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletedBurst {
    pub key: BurstKey,
    pub captured_at: DateTime<Utc>,
    pub frames: Vec<Vec<PlateCandidate>>,
    /// The digest of the frame with the most confident read, as the passage's evidence.
    pub evidence_digest: Option<String>,
    /// That frame's encoded image.
    pub evidence_image: Option<Arc<Vec<u8>>>,
}

#[derive(Debug)]
struct Burst {
    of: u32,
    seqs: Vec<u32>,
    done: u32,
    last_arrival: Instant,
    captured_at: DateTime<Utc>,
    frames: Vec<Vec<PlateCandidate>>,
    best: Option<(f32, String, Arc<Vec<u8>>)>,
}

/// Completed keys remembered so a straggler frame does not start a second passage.
const DONE_MEMORY: usize = 64;

#[derive(Debug)]
pub struct BurstCollector {
    timeout: Duration,
    open: HashMap<BurstKey, Burst>,
    done: VecDeque<BurstKey>,
}

/// What to do with an arriving frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Read it, then report the result with [`BurstCollector::read`].
    Read,
    /// Already seen (a QoS redelivery) or its burst is already voted.
    Ignore,
}

impl BurstCollector {
    pub fn new(timeout: Duration) -> BurstCollector {
        BurstCollector {
            timeout,
            open: HashMap::new(),
            done: VecDeque::new(),
        }
    }

    /// A frame arrived, before it is read.
    pub fn arrive(
        &mut self,
        key: BurstKey,
        seq: u32,
        of: u32,
        captured_at: DateTime<Utc>,
        mono: Instant,
    ) -> Arrival {
        if self.done.contains(&key) {
            return Arrival::Ignore;
        }
        let b = self.open.entry(key).or_insert_with(|| Burst {
            of: of.max(1),
            seqs: Vec::new(),
            done: 0,
            last_arrival: mono,
            captured_at,
            frames: Vec::new(),
            best: None,
        });
        if b.seqs.contains(&seq) {
            return Arrival::Ignore;
        }
        b.seqs.push(seq);
        b.last_arrival = mono;
        // The passage happened when the first frame was taken, whichever frame arrives first.
        b.captured_at = b.captured_at.min(captured_at);
        Arrival::Read
    }

    /// A frame's read finished. Returns the burst when this completed it.
    pub fn read(&mut self, key: &BurstKey, result: FrameRead) -> Option<CompletedBurst> {
        let b = self.open.get_mut(key)?;
        b.done += 1;
        if let FrameRead::Read {
            candidates,
            digest,
            image,
        } = result
        {
            let top = candidates.first().map_or(0.0, |c| c.confidence);
            if b.best.as_ref().is_none_or(|(conf, _, _)| top > *conf) {
                b.best = Some((top, digest, image));
            }
            b.frames.push(candidates);
        }
        if b.done >= b.of {
            self.finish(key)
        } else {
            None
        }
    }

    /// Bursts whose arrival window has closed and whose frames are all read.
    pub fn expire(&mut self, mono: Instant) -> Vec<CompletedBurst> {
        let due: Vec<BurstKey> = self
            .open
            .iter()
            .filter(|(_, b)| {
                mono.saturating_duration_since(b.last_arrival) >= self.timeout
                    && b.done as usize >= b.seqs.len()
            })
            .map(|(k, _)| k.clone())
            .collect();
        due.iter().filter_map(|k| self.finish(k)).collect()
    }

    fn finish(&mut self, key: &BurstKey) -> Option<CompletedBurst> {
        let b = self.open.remove(key)?;
        self.done.push_back(key.clone());
        if self.done.len() > DONE_MEMORY {
            self.done.pop_front();
        }
        Some(CompletedBurst {
            key: key.clone(),
            captured_at: b.captured_at,
            frames: b.frames,
            evidence_digest: b.best.as_ref().map(|(_, d, _)| d.clone()),
            evidence_image: b.best.map(|(_, _, i)| i),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::PlateColour;

    fn key(n: u64) -> BurstKey {
        (DeviceId::parse("cam").unwrap(), n)
    }

    fn read(p: &str, conf: f32, digest: &str) -> FrameRead {
        FrameRead::Read {
            candidates: vec![PlateCandidate {
                plate: p.into(),
                confidence: conf,
                colour: PlateColour::Blue,
            }],
            digest: digest.into(),
            image: Arc::new(digest.as_bytes().to_vec()),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn completes_when_all_frames_are_read_in_any_order() {
        let mut c = BurstCollector::new(Duration::from_millis(500));
        let m = Instant::now();
        assert_eq!(c.arrive(key(1), 1, 2, t(1), m), Arrival::Read);
        assert_eq!(c.arrive(key(1), 0, 2, t(0), m), Arrival::Read);
        assert_eq!(
            c.arrive(key(1), 0, 2, t(0), m),
            Arrival::Ignore,
            "redelivery"
        );
        assert!(c.read(&key(1), read("A", 0.7, "d1")).is_none());
        let done = c.read(&key(1), read("A", 0.9, "d0")).unwrap();
        assert_eq!(done.frames.len(), 2);
        assert_eq!(done.captured_at, t(0));
        assert_eq!(done.evidence_digest.as_deref(), Some("d0"));
        assert_eq!(
            done.evidence_image.as_deref().map(Vec::as_slice),
            Some(&b"d0"[..]),
            "the best frame's image goes with its digest"
        );
        assert_eq!(
            c.arrive(key(1), 2, 2, t(0), m),
            Arrival::Ignore,
            "straggler"
        );
    }

    #[test]
    fn a_burst_missing_frames_closes_after_the_timeout_once_its_reads_finish() {
        let mut c = BurstCollector::new(Duration::from_millis(500));
        let m = Instant::now();
        c.arrive(key(2), 0, 3, t(0), m);
        c.arrive(key(2), 1, 3, t(0), m);
        c.read(&key(2), FrameRead::Unreadable);
        assert!(c.expire(m + Duration::from_millis(400)).is_empty());
        assert!(
            c.expire(m + Duration::from_secs(5)).is_empty(),
            "frame 1 is still being read"
        );
        assert!(c.read(&key(2), read("B", 0.9, "x")).is_none());
        let done = c.expire(m + Duration::from_secs(5));
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].frames.len(),
            1,
            "the unreadable frame casts no vote"
        );
    }
}
