//! Time as the system sees it. Every component takes an `Arc<dyn Clock>` so tariffs, timeouts and
//! the simulator's compressed days are testable; production uses [`SystemClock`].

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// How long to wait in real time for `span` of this clock's time to pass.
    fn real(&self, span: Duration) -> Duration {
        span
    }
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a chosen instant and runs `speed` times faster than real time, so the
/// simulator can pass a day in minutes while every component agrees on what time it is.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    origin_real: Instant,
    origin: DateTime<Utc>,
    speed: f64,
}

impl ScaledClock {
    /// `speed` must be finite and positive; anything else is treated as 1.
    pub fn new(origin: DateTime<Utc>, speed: f64) -> ScaledClock {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        ScaledClock {
            origin_real: Instant::now(),
            origin,
            speed,
        }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.origin_real.elapsed();
        let scaled_ns = (real.as_nanos() as f64 * self.speed) as i64;
        // Truncate to milliseconds: envelopes and both databases keep millisecond instants,
        // so a time read here survives a round trip unchanged.
        let t = self.origin + chrono::Duration::nanoseconds(scaled_ns);
        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
    }

    fn real(&self, span: Duration) -> Duration {
        span.div_f64(self.speed)
    }
}

/// A clock that runs in real time from a chosen instant and can be moved forward by hand, so a
/// test can let a car stay a week without waiting a week.
#[derive(Debug)]
pub struct ManualClock {
    origin_real: Instant,
    origin: DateTime<Utc>,
    offset_ms: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn new(origin: DateTime<Utc>) -> ManualClock {
        ManualClock {
            origin_real: Instant::now(),
            origin,
            offset_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Moves the clock forward by `span`.
    pub fn advance(&self, span: chrono::Duration) {
        self.offset_ms
            .fetch_add(span.num_milliseconds(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let real = chrono::Duration::milliseconds(self.origin_real.elapsed().as_millis() as i64);
        let offset = chrono::Duration::milliseconds(
            self.offset_ms.load(std::sync::atomic::Ordering::SeqCst),
        );
        self.origin + real + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_fast_and_maps_spans_back() {
        let origin = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .into();
        let c = ScaledClock::new(origin, 3600.0);
        assert!(c.now() >= origin);
        assert_eq!(c.real(Duration::from_secs(3600)), Duration::from_secs(1));
        assert_eq!(ScaledClock::new(origin, -1.0).speed(), 1.0);
    }

    #[test]
    fn manual_clock_jumps_forward() {
        let origin = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .into();
        let c = ManualClock::new(origin);
        c.advance(chrono::Duration::days(7));
        let d = c.now() - origin;
        assert!(
            d >= chrono::Duration::days(7)
                && d < chrono::Duration::days(7) + chrono::Duration::minutes(1)
        );
    }
}
