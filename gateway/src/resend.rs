//! When an undecided event goes out again: a pure schedule, no I/O.
//!
//! Every event the gateway publishes stays in the journal until its decision arrives. Publishing
//! once is not enough: a broker that lost its state, or a server that subscribed a moment too
//! late, drops an event without anybody noticing, and no reconnect of ours follows to replay it.
//! So each journaled event is due again `initial` after it was sent, then after twice that, up to
//! `max`, each delay randomised by ±[`JITTER`] so gateways that lost the server together do not
//! resend in lockstep. A decision for the event takes it off the schedule.
//!
//! The shell in [`crate::gateway`] tells the schedule what was sent and decided, asks it on every
//! tick what is due, and does the reading and publishing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parkpay_protocol::EventId;

/// How far a delay may stray either way, as a fraction of it.
pub const JITTER: f64 = 0.2;

/// The resend timer's settings (`resend_initial` and `resend_max` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendPolicy {
    /// From a send to the first resend.
    pub initial: Duration,
    /// The longest gap between two resends of one event.
    pub max: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    /// The delay, before jitter, from `at` to the resend after it.
    next: Duration,
}

/// Undecided events and when each is due to be sent again.
#[derive(Debug)]
pub struct Resends {
    policy: ResendPolicy,
    due: BTreeMap<EventId, Due>,
}

/// `base` scaled by a factor in `1 ± JITTER`; `unit` is a uniform draw from `0.0..1.0`.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    base.mul_f64(1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0))
}

impl Resends {
    pub fn new(policy: ResendPolicy) -> Resends {
        Resends {
            policy,
            due: BTreeMap::new(),
        }
    }

    /// `id` went out just now (fresh, or replayed after a connect): it is due `initial` from
    /// `now`, and the backoff starts over.
    pub fn sent(&mut self, id: EventId, now: Instant, unit: f64) {
        let first = self.policy.initial.min(self.policy.max);
        self.due.insert(
            id,
            Due {
                at: now + jittered(first, unit),
                next: (first * 2).min(self.policy.max),
            },
        );
    }

    /// `id` has its decision (or left the journal some other way): never resend it.
    pub fn decided(&mut self, id: EventId) {
        self.due.remove(&id);
    }

    /// Up to `limit` ids due at `now`, oldest event first. Each is rescheduled as if resent now,
    /// its delay doubled up to `max`; one not taken because of `limit` stays due.
    pub fn take_due(
        &mut self,
        now: Instant,
        limit: usize,
        mut unit: impl FnMut() -> f64,
    ) -> Vec<EventId> {
        let ids: Vec<EventId> = self
            .due
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        for id in &ids {
            if let Some(d) = self.due.get_mut(id) {
                d.at = now + jittered(d.next, unit());
                d.next = (d.next * 2).min(self.policy.max);
            }
        }
        ids
    }

    /// Events on the schedule.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ResendPolicy = ResendPolicy {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(60),
    };
    /// The middle of the jitter range: no jitter at all.
    const MID: f64 = 0.5;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The instants, as seconds after `t0`, at which `id` is resent when asked every second.
    fn resend_times(r: &mut Resends, t0: Instant, until: u64) -> Vec<u64> {
        (0..=until)
            .filter(|s| !r.take_due(t0 + secs(*s), 100, || MID).is_empty())
            .collect()
    }

    #[test]
    fn an_undecided_event_is_resent_with_doubling_delays_up_to_the_cap() {
        let mut r = Resends::new(POLICY);
        let t0 = Instant::now();
        r.sent(EventId::new(), t0, MID);
        assert_eq!(
            resend_times(&mut r, t0, 400),
            vec![5, 15, 35, 75, 135, 195, 255, 315, 375],
            "5 s, then 10, 20, 40, then every 60 s"
        );
    }

    #[test]
    fn a_decision_stops_the_resends() {
        let mut r = Resends::new(POLICY);
        let t0 = Instant::now();
        let (a, b) = (EventId::new(), EventId::new());
        r.sent(a, t0, MID);
        r.sent(b, t0, MID);
        assert_eq!(r.take_due(t0 + secs(5), 100, || MID), vec![a, b]);
        r.decided(a);
        r.decided(EventId::new());
        assert_eq!(r.len(), 1);
        assert_eq!(r.take_due(t0 + secs(15), 100, || MID), vec![b]);
        r.decided(b);
        assert!(r.is_empty());
        assert!(r.take_due(t0 + secs(1000), 100, || MID).is_empty());
    }

    #[test]
    fn sending_again_restarts_the_backoff() {
        let mut r = Resends::new(POLICY);
        let t0 = Instant::now();
        let id = EventId::new();
        r.sent(id, t0, MID);
        assert_eq!(resend_times(&mut r, t0, 100), vec![5, 15, 35, 75]);
        // A reconnect replays the whole journal: the next resend is `initial` after that.
        r.sent(id, t0 + secs(100), MID);
        assert!(r.take_due(t0 + secs(104), 100, || MID).is_empty());
        assert_eq!(r.take_due(t0 + secs(105), 100, || MID), vec![id]);
    }

    #[test]
    fn the_limit_leaves_the_rest_due_oldest_first() {
        let mut r = Resends::new(POLICY);
        let t0 = Instant::now();
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        for id in ids.iter().rev() {
            r.sent(*id, t0, MID);
        }
        let now = t0 + secs(6);
        assert_eq!(r.take_due(now, 2, || MID), ids[..2]);
        assert_eq!(r.take_due(now, 2, || MID), ids[2..4]);
        assert_eq!(r.take_due(now, 2, || MID), ids[4..]);
        assert!(r.take_due(now, 2, || MID).is_empty());
    }

    #[test]
    fn jitter_stays_within_its_band() {
        assert_eq!(jittered(secs(10), 0.0), secs(8));
        assert_eq!(jittered(secs(10), MID), secs(10));
        assert_eq!(jittered(secs(10), 1.0), secs(12));
        assert_eq!(jittered(secs(10), 7.0), secs(12), "a bad draw is clamped");
        let mut r = Resends::new(POLICY);
        let t0 = Instant::now();
        let id = EventId::new();
        r.sent(id, t0, 0.0);
        assert_eq!(r.take_due(t0 + secs(4), 1, || 0.0), vec![id], "5 s - 20 %");
    }

    #[test]
    fn an_initial_delay_above_the_cap_is_capped() {
        let mut r = Resends::new(ResendPolicy {
            initial: secs(90),
            max: secs(60),
        });
        let t0 = Instant::now();
        r.sent(EventId::new(), t0, MID);
        assert_eq!(resend_times(&mut r, t0, 200), vec![60, 120, 180]);
    }
}
