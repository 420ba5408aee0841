//! Test helpers that Windlass's own crates share: short durations and a concurrency gauge,
//! written once instead of once per test module.
//!
//! For Windlass's tests only (`publish = false`, a dev-dependency). The toolkit for
//! *users'* tests (marble streams, fault injection) is `windlass_concurrency::testing`.
//!
//! ```
//! use windlass_test_support::{Peak, ms};
//!
//! let peak = Peak::new();
//! let inside = peak.enter();
//! assert_eq!((peak.now(), peak.max()), (1, 1));
//! drop(inside);
//! assert_eq!(peak.now(), 0);
//! assert_eq!(ms(1500), std::time::Duration::from_secs_f64(1.5));
//! ```

pub mod metrics_capture;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// `v` milliseconds.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// How many things run at once, and the most that ever did: hold an [`Inside`] while
/// inside the section being measured.
#[derive(Debug, Clone, Default)]
pub struct Peak {
    now: Arc<AtomicU32>,
    max: Arc<AtomicU32>,
}

impl Peak {
    /// A gauge at zero.
    pub fn new() -> Self {
        Peak::default()
    }

    /// Enters the section; leaving is dropping the guard.
    pub fn enter(&self) -> Inside {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        Inside(self.now.clone())
    }

    /// Inside the section now.
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::SeqCst)
    }

    /// The most ever inside at once.
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::SeqCst)
    }
}

/// One occupant of a [`Peak`]'s section.
#[derive(Debug)]
pub struct Inside(Arc<AtomicU32>);

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_tracks_the_most_inside_at_once() {
        let p = Peak::new();
        let a = p.enter();
        let b = p.enter();
        assert_eq!((p.now(), p.max()), (2, 2));
        drop(a);
        let c = p.enter();
        drop((b, c));
        assert_eq!((p.now(), p.max()), (0, 2));
    }
}
