//! Every builder of this layer rejects a meaningless setting with a `ConfigError` that
//! names the component and the field (the validation audit of issue 6).

#![allow(clippy::unwrap_used)] // a test file

use std::time::Duration;

use futures_util::stream;
use windlass_concurrency::signals::{Monitor, MonitorConfig};
use windlass_concurrency::stream::{AdaptiveBatch, StreamOps};
use windlass_concurrency::{Offload, Supervisor};
use windlass_policy::{Backoff, ConfigError, Jitter};

#[track_caller]
fn rejects<T>(result: Result<T, ConfigError>, component: &str, field: &str) {
    match result {
        Ok(_) => panic!("accepted an invalid `{field}`"),
        Err(e) => {
            assert_eq!((e.component(), e.field()), (component, field), "{e}");
            assert!(
                e.to_string().contains(field),
                "the message names the field: {e}"
            );
        }
    }
}

#[test]
fn offload_and_supervisor() {
    rejects(Offload::new("p", 0, 4), "offload", "threads");
    rejects(Offload::new("p", 2, usize::MAX), "offload", "queue");
    rejects(
        Supervisor::builder().within(Duration::ZERO).build(),
        "supervisor",
        "within",
    );
    rejects(
        Supervisor::builder()
            .backoff(
                Backoff::exponential(Duration::from_millis(10)),
                Jitter::Proportional(2.0),
                Duration::from_secs(1),
            )
            .build(),
        "supervisor",
        "jitter.factor",
    );
}

#[tokio::test]
async fn monitor() {
    let cfg = MonitorConfig {
        probe_interval: Duration::ZERO,
        ..MonitorConfig::default()
    };
    rejects(Monitor::start(cfg), "monitor", "probe_interval");
    let cfg = MonitorConfig {
        stuck_after: Duration::ZERO,
        ..MonitorConfig::default()
    };
    rejects(Monitor::start(cfg), "monitor", "stuck_after");
    let cfg = MonitorConfig {
        slow_poll: Duration::ZERO,
        ..MonitorConfig::default()
    };
    rejects(Monitor::start(cfg), "monitor", "slow_poll");
}

#[tokio::test]
async fn stream_operators() {
    let input = || stream::iter(0..4);
    rejects(input().batch(0, Duration::from_millis(5)), "batch", "size");
    let adaptive = |f: fn(&mut AdaptiveBatch)| {
        let mut cfg = AdaptiveBatch::default();
        f(&mut cfg);
        input().adaptive_batch(cfg).map(|_| ())
    };
    assert!(adaptive(|_| {}).is_ok(), "the defaults are valid");
    assert!(adaptive(|c| c.min = 0).is_err());
    assert!(adaptive(|c| c.max = c.min.saturating_sub(1)).is_err());
    assert!(adaptive(|c| c.target = Duration::ZERO).is_err());
    assert!(adaptive(|c| c.shrink = 0.0).is_err());
    assert!(adaptive(|c| c.shrink = 1.0).is_err());
}
