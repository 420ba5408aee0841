//! What the demos measure about themselves, without instrumenting the binary: peak resident
//! memory from the kernel (`/proc/self/status`, reset through `/proc/self/clear_refs`) and
//! peak in-flight items from a counter the demo holds.
//!
//! The `windlass` binary carries no measuring allocator and no test toolkit: it is the
//! binary that will run `serve` in production. On systems without `/proc` the memory
//! figures are reported as 0.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory now.
pub fn resident_bytes() -> u64 {
    status_bytes("VmRSS:").unwrap_or(0)
}

/// Peak resident memory since the last [`reset_peak`] (or since start).
pub fn peak_resident_bytes() -> u64 {
    status_bytes("VmHWM:").unwrap_or(0)
}

/// Starts a new peak: the kernel resets the high-water mark to the current resident size.
pub fn reset_peak() {
    // Best effort: without /proc (or permission) the peak covers the whole run.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Counts items in flight and remembers the most at once.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<(AtomicUsize, AtomicUsize)>);

/// One item in flight; leaves when dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<(AtomicUsize, AtomicUsize)>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    /// An item enters.
    pub fn enter(&self) -> InFlightGuard {
        let now = self.0.0.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.1.fetch_max(now, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    /// Counts `fut` in flight while it runs.
    pub async fn track<F: Future>(&self, fut: F) -> F::Output {
        let _guard = self.enter();
        fut.await
    }

    /// The most items in flight at once.
    pub fn peak(&self) -> usize {
        self.0.1.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peak_in_flight_is_the_most_at_once() {
        let f = InFlight::default();
        let a = f.enter();
        let b = f.enter();
        drop(a);
        let _c = f.enter();
        drop(b);
        assert_eq!(f.track(async { 1 }).await, 1);
        assert_eq!(f.peak(), 2);
    }

    #[test]
    fn memory_readings_are_plausible_on_linux() {
        if std::path::Path::new("/proc/self/status").exists() {
            reset_peak();
            let (now, peak) = (resident_bytes(), peak_resident_bytes());
            assert!(now > 0 && peak >= now / 2, "rss {now}, peak {peak}");
        }
    }
}
