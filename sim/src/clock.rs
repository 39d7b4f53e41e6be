//! The simulated clock: a start time, `tokio::time` elapsed since, and an
//! offset moved by `Sim::advance_clock`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Simulated Unix time in milliseconds.
#[derive(Debug)]
pub(crate) struct SimClock {
    start_unix_ms: i64,
    start: tokio::time::Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    pub(crate) fn new(start_unix_s: Option<i64>) -> SimClock {
        let start_unix_ms = match start_unix_s {
            Some(seconds) => seconds.saturating_mul(1000),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        };
        SimClock {
            start_unix_ms,
            start: tokio::time::Instant::now(),
            offset_ms: AtomicI64::new(0),
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_unix_ms
            .saturating_add(elapsed)
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(duration_ms(by), Ordering::Relaxed);
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The quota day of a Unix time in ms: days since the epoch in Beijing time.
pub(crate) fn quota_day(now_ms: i64) -> i64 {
    (now_ms.div_euclid(1000) + 8 * 3600).div_euclid(86_400)
}
