//! Live counts of a run, kept as it happens so a watcher can read them at any moment without
//! asking the server: cars in and out, cars held at a barrier, charges, exceptions, and the
//! decision latency measured at the lane side.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

/// Counters and latency samples shared by the parts of a run that see each thing happen.
#[derive(Debug, Default)]
pub struct Tally {
    entered: AtomicU64,
    left: AtomicU64,
    done: AtomicU64,
    held: AtomicU64,
    lifted: AtomicU64,
    charged: Mutex<HashSet<Uuid>>,
    exceptions: Mutex<HashSet<Uuid>>,
    attended: Mutex<HashSet<String>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally::default()
    }

    /// A car drove through an entry barrier.
    pub fn entered(&self) {
        self.entered.fetch_add(1, Ordering::Relaxed);
    }

    /// A car drove through an exit barrier.
    pub fn left(&self) {
        self.left.fetch_add(1, Ordering::Relaxed);
    }

    /// A car finished its run, however it went.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// A car stands at a barrier that did not open on its arrival, until the guard is dropped
    /// (the car drove through or backed out).
    pub fn hold(&self) -> HeldGuard<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        HeldGuard(self)
    }

    /// The attendant lifted an exit barrier by hand for a car whose stay was already closed.
    pub fn lifted(&self) {
        self.lifted.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the attendant lifted a barrier by hand.
    pub fn lifts(&self) -> u64 {
        self.lifted.load(Ordering::Relaxed)
    }

    /// A passage closed a stay with a fee to pay; the server charges it (by deduction or at the
    /// exit) exactly once per stay, so stays are counted, not decisions.
    pub fn charged(&self, session: Uuid) {
        lock(&self.charged).insert(session);
    }

    /// An exception was seen open in the exception queue.
    pub fn exception(&self, id: Uuid) {
        lock(&self.exceptions).insert(id);
    }

    /// The attendant read a car's plate off the car and corrected a passage with it: the
    /// reader did not vouch for it (or misread it). Counted per car (its plate).
    pub fn attended(&self, plate: &str) {
        lock(&self.attended).insert(plate.to_string());
    }

    /// One decision, from the passage event's publication to the decision's arrival.
    pub fn decision_latency(&self, d: Duration) {
        lock(&self.latencies).push(d);
    }

    /// The latency samples so far, summarised.
    pub fn latency(&self) -> LatencySummary {
        let mut samples = lock(&self.latencies);
        // The order samples arrived in means nothing; sorting in place keeps the next sort cheap.
        samples.sort_unstable();
        LatencySummary::of_sorted(&samples)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            entered: self.entered.load(Ordering::Relaxed),
            left: self.left.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            charged: lock(&self.charged).len() as u64,
            exceptions: lock(&self.exceptions).len() as u64,
            attended: lock(&self.attended).len() as u64,
            latency: self.latency(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: whatever a panicking holder left is still worth counting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A car held at a barrier; dropping it lets the car go from the count.
#[derive(Debug)]
pub struct HeldGuard<'a>(&'a Tally);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Exact quantiles of the decision latency samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
}

impl LatencySummary {
    /// Summarises samples sorted in ascending order.
    pub fn of_sorted(sorted: &[Duration]) -> LatencySummary {
        LatencySummary {
            count: sorted.len() as u64,
            p50: quantile(sorted, 0.50),
            p90: quantile(sorted, 0.90),
            p99: quantile(sorted, 0.99),
            max: sorted.last().copied(),
        }
    }
}

/// The `q` quantile of samples sorted in ascending order, by the nearest-rank rule: the smallest
/// sample with at least a fraction `q` of all samples at or below it. Always one of the samples;
/// `None` when there are none.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // q * n can land a hair above an integer in floating point (0.07 * 100 = 7.000000000000001).
    let rank = ((q.clamp(0.0, 1.0) * n as f64) - 1e-9).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// Milliseconds with one decimal (`2.1 ms`), or a dash before the first sample.
pub fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".to_string(),
    }
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Cars let in through an entry barrier.
    pub entered: u64,
    /// Cars let out through an exit barrier.
    pub left: u64,
    /// Cars whose run is over (out, or turned away).
    pub done: u64,
    /// Cars standing at a barrier that did not open for them on arrival.
    pub held: u64,
    /// Stays closed with a fee to charge.
    pub charged: u64,
    /// Exceptions seen open in the queue.
    pub exceptions: u64,
    /// Cars whose plate the attendant had to read off the car at least once.
    pub attended: u64,
    pub latency: LatencySummary,
}

impl fmt::Display for Snapshot {
    /// The one-line summary: `in 52  out 40  charged 33  held 1  exceptions 7  decision p50
    /// 2.1 ms  p99 9.8 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {}  out {}  charged {}  held {}  exceptions {}  decision p50 {}  p99 {}",
            self.entered,
            self.left,
            self.charged,
            self.held,
            self.exceptions,
            ms(self.latency.p50),
            ms(self.latency.p99),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn quantiles_are_exact_samples_by_nearest_rank() {
        // 1..=100 ms: the q quantile is q * 100 ms exactly.
        let hundred: Vec<u64> = (1..=100).collect();
        let s = LatencySummary::of_sorted(&millis(&hundred));
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Some(Duration::from_millis(50)));
        assert_eq!(s.p90, Some(Duration::from_millis(90)));
        assert_eq!(s.p99, Some(Duration::from_millis(99)));
        assert_eq!(s.max, Some(Duration::from_millis(100)));
        assert_eq!(
            quantile(&millis(&hundred), 0.07),
            Some(Duration::from_millis(7))
        );

        // A skewed sample of ten: one slow decision owns p99 and the maximum alone.
        let ten = millis(&[1, 2, 2, 3, 3, 3, 4, 5, 8, 40]);
        let s = LatencySummary::of_sorted(&ten);
        assert_eq!(s.p50, Some(Duration::from_millis(3)));
        assert_eq!(s.p90, Some(Duration::from_millis(8)));
        assert_eq!(s.p99, Some(Duration::from_millis(40)));
        assert_eq!(s.max, Some(Duration::from_millis(40)));
        assert_eq!(quantile(&ten, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&ten, 1.0), Some(Duration::from_millis(40)));

        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(LatencySummary::of_sorted(&[]), LatencySummary::default());
        let one = millis(&[7]);
        assert_eq!(quantile(&one, 0.99), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_tally_sorts_samples_it_was_given_in_any_order() {
        let t = Tally::new();
        for m in [9, 1, 5, 3, 7, 2, 8, 4, 10, 6] {
            t.decision_latency(Duration::from_millis(m));
        }
        let s = t.latency();
        assert_eq!(s.p50, Some(Duration::from_millis(5)));
        assert_eq!(s.p90, Some(Duration::from_millis(9)));
        assert_eq!(s.max, Some(Duration::from_millis(10)));
    }

    #[test]
    fn held_cars_leave_the_count_when_they_go_and_charges_and_attended_cars_count_once() {
        let t = Tally::new();
        let a = t.hold();
        let b = t.hold();
        assert_eq!(t.snapshot().held, 2);
        drop(a);
        assert_eq!(t.snapshot().held, 1);
        drop(b);
        let stay = Uuid::from_u128(1);
        t.charged(stay);
        t.charged(stay);
        t.exception(Uuid::from_u128(2));
        t.exception(Uuid::from_u128(2));
        // A car the attendant read twice (at its entry and at its exit) is one car.
        t.attended("京A12345");
        t.attended("京A12345");
        t.attended("京B12345");
        let s = t.snapshot();
        assert_eq!((s.held, s.charged, s.exceptions, s.attended), (0, 1, 1, 2));
        assert_eq!(
            s.to_string(),
            "in 0  out 0  charged 1  held 0  exceptions 1  decision p50 -  p99 -"
        );
    }
}
