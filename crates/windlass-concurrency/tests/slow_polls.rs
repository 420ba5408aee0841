//! A poll that holds its thread is named, with its stage: the task that blocked the
//! runtime. (Its own test binary: the monitor's threshold is process-wide.)

#![allow(clippy::unwrap_used)] // a test file

use std::time::Duration;

use windlass_concurrency::signals::{self, Monitor, MonitorConfig, instrument, stage};

/// Work that holds the thread for a moment without awaiting.
fn crunch() -> u64 {
    (0..10_000u64).map(std::hint::black_box).sum()
}

#[tokio::test]
async fn a_blocking_poll_is_named_with_its_stage_only_while_a_monitor_runs() {
    instrument("t.unwatched", async {
        crunch();
    })
    .await;
    // Every poll is "slow" against a 1 ns threshold: what is measured is who gets named.
    let monitor = Monitor::start(MonitorConfig {
        slow_poll: Duration::from_nanos(1),
        ..MonitorConfig::default()
    })
    .unwrap();
    instrument("t.blocker", async {
        stage("resizing images");
        crunch();
    })
    .await;
    drop(monitor);
    instrument("t.after", async {
        crunch();
    })
    .await;

    let s = signals::snapshot();
    let slow: Vec<_> = s.slow_polls.iter().map(|p| p.name).collect();
    assert!(slow.contains(&"t.blocker"), "{slow:?}");
    assert!(
        !slow.contains(&"t.unwatched"),
        "not timed before the monitor"
    );
    assert!(!slow.contains(&"t.after"), "not timed after it stopped");
    let blocker = s.slow_polls.iter().find(|p| p.name == "t.blocker").unwrap();
    assert!(blocker.took > Duration::ZERO);
    assert_eq!(blocker.stage.map(|s| s.label), Some("resizing images"));
    let latency = s.latency.iter().find(|l| l.name == "t.blocker").unwrap();
    assert!(latency.slow_polls >= 1);
}
