//! A real process kill: `windlass demo thumbnails` starts a durable workflow, lets a
//! separate worker process drive it, kills that process with SIGKILL mid-run, and finishes
//! the run in a worker of its own. The finished run reports every image, and only images in
//! flight at the kill (at most the fan-out limit) were processed twice: everything journaled
//! before the kill was not run again.
#![allow(clippy::unwrap_used)] // test code

use std::process::Command;

#[test]
fn a_killed_worker_process_s_run_is_resumed_without_redoing_journaled_steps() {
    let out = Command::new(env!("CARGO_BIN_EXE_windlass"))
        .args([
            "demo",
            "thumbnails",
            "--items",
            "80",
            "--limit",
            "4",
            "--kill-after",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["killed"], true);
    let before = r["uploaded_before_kill"].as_u64().unwrap();
    assert!((20..80).contains(&before), "{r}");
    assert_eq!(r["images_done"], 80);
    assert_eq!(r["images_uploaded"], 80);
    let total = r["uploads_total"].as_u64().unwrap();
    assert!(
        (80..=84).contains(&total),
        "only the (at most 4) images in flight at the kill are uploaded twice: {r}"
    );
    assert!(r["uploaded_twice"].as_u64().unwrap() <= 4, "{r}");
}
