//! Test helpers that Windlass's own crates share: short durations, a concurrency gauge and
//! scratch directories, written once instead of once per test module.
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
//!
//! let dir = windlass_test_support::ScratchDir::new("doc");
//! std::fs::write(dir.file("jobs.db"), b"").unwrap();
//! let kept = dir.path().to_path_buf();
//! drop(dir);
//! assert!(!kept.exists());
//! ```

pub mod metrics_capture;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// An empty directory of its own under the system's temporary directory, removed (with
/// what is in it) when dropped: a test's database files, never shared with another test.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new, empty directory whose name starts with `windlass-{name}`.
    ///
    /// # Panics
    /// If the directory cannot be created (test code).
    pub fn new(name: &str) -> ScratchDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "windlass-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        ScratchDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `file` in the directory (not created).
    pub fn file(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
