//! Sliding windows of call outcomes, updated in O(1) per call.
//!
//! The count-based window remembers the last `size` outcomes in a ring; the time-based
//! window keeps one bucket per second for the last `seconds` seconds. Both keep running
//! totals and subtract what leaves the window, so neither ever rescans.

use tokio::time::Instant;

/// One call's outcome as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub failed: bool,
    pub slow: bool,
}

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Totals {
    fn add(&mut self, o: Outcome) {
        self.calls += 1;
        self.failures += u64::from(o.failed);
        self.slow += u64::from(o.slow);
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }

    pub fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f64 / self.calls as f64
        }
    }
}

#[derive(Debug)]
pub(crate) enum Window {
    Count {
        ring: Box<[u8]>,
        head: usize,
        len: usize,
        totals: Totals,
    },
    Time {
        start: Instant,
        last_epoch: u64,
        buckets: Box<[(u64, Totals)]>,
        totals: Totals,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Window {
    pub fn count(size: usize) -> Self {
        Window::Count {
            ring: vec![0; size].into_boxed_slice(),
            head: 0,
            len: 0,
            totals: Totals::default(),
        }
    }

    pub fn time(seconds: usize, now: Instant) -> Self {
        Window::Time {
            start: now,
            last_epoch: 0,
            buckets: vec![(0, Totals::default()); seconds].into_boxed_slice(),
            totals: Totals::default(),
        }
    }

    /// Forgets every outcome.
    pub fn reset(&mut self, now: Instant) {
        *self = match self {
            Window::Count { ring, .. } => Window::count(ring.len()),
            Window::Time { buckets, .. } => Window::time(buckets.len(), now),
        };
    }

    pub fn record(&mut self, o: Outcome, now: Instant) {
        match self {
            Window::Count {
                ring,
                head,
                len,
                totals,
            } => {
                if *len == ring.len() {
                    let old = ring[*head];
                    totals.sub(Totals {
                        calls: 1,
                        failures: u64::from(old & FAILED != 0),
                        slow: u64::from(old & SLOW != 0),
                    });
                } else {
                    *len += 1;
                }
                ring[*head] = (if o.failed { FAILED } else { 0 }) | (if o.slow { SLOW } else { 0 });
                *head = (*head + 1) % ring.len();
                totals.add(o);
            }
            Window::Time { .. } => {
                let epoch = self.advance(now);
                if let Window::Time {
                    buckets, totals, ..
                } = self
                {
                    let n = buckets.len();
                    buckets[(epoch % n as u64) as usize].1.add(o);
                    totals.add(o);
                }
            }
        }
    }

    /// Drops the time buckets that left the window; returns the current epoch.
    fn advance(&mut self, now: Instant) -> u64 {
        match self {
            Window::Count { .. } => 0,
            Window::Time {
                start,
                last_epoch,
                buckets,
                totals,
            } => {
                let epoch = now.saturating_duration_since(*start).as_secs();
                let n = buckets.len() as u64;
                if epoch > *last_epoch {
                    // Visit at most n buckets, however long the window was idle.
                    let from = (*last_epoch + 1).max(epoch.saturating_sub(n - 1));
                    for e in from..=epoch {
                        let b = &mut buckets[(e % n) as usize];
                        totals.sub(b.1);
                        *b = (e, Totals::default());
                    }
                    *last_epoch = epoch;
                }
                epoch
            }
        }
    }

    pub fn totals(&mut self, now: Instant) -> Totals {
        self.advance(now);
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const F: Outcome = Outcome {
        failed: true,
        slow: false,
    };
    const S: Outcome = Outcome {
        failed: false,
        slow: false,
    };

    #[test]
    fn count_window_forgets_oldest() {
        let now = Instant::now();
        let mut w = Window::count(3);
        for o in [F, F, S, S] {
            w.record(o, now);
        }
        let t = w.totals(now);
        assert_eq!((t.calls, t.failures), (3, 1));
    }

    #[test]
    fn time_window_expires_buckets() {
        let t0 = Instant::now();
        let mut w = Window::time(10, t0);
        w.record(F, t0);
        w.record(F, t0 + Duration::from_secs(5));
        assert_eq!(w.totals(t0 + Duration::from_secs(9)).failures, 2);
        assert_eq!(w.totals(t0 + Duration::from_secs(10)).failures, 1);
        assert_eq!(w.totals(t0 + Duration::from_secs(15)).failures, 0);
        // A long idle gap costs at most one pass over the buckets.
        w.record(S, t0 + Duration::from_secs(10_000));
        assert_eq!(w.totals(t0 + Duration::from_secs(10_000)).calls, 1);
    }
}
