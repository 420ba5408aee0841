//! Which journal entries an operator's resume retires (see [`Flows::resume`](crate::Flows::resume)).
//!
//! A resumed run replays its code against what is left of its journal, so the choice of
//! what to retire *is* the semantics of "resume from the failed step":
//! - the run's failure (`$failure`) goes: the run is no longer failing;
//! - a step that failed goes: it runs again;
//! - a completed step whose compensation ran goes, with its `~undo:` entry: its effect was
//!   undone, so it must be done again (and may be compensated again later);
//! - a signal wait that timed out goes, with its journaled deadline: it waits again, from a
//!   new deadline;
//! - everything else stays: completed, uncompensated steps keep their results; timers keep
//!   their wake-up times (one whose time has passed does not sleep again); delivered
//!   signals, waits that took one, and children keep their outcomes. A failed child stays
//!   failed: resume the child first, or its parent fails again.
//!
//! Entries are renamed `~r<n>:<key>` — `n` one more than any earlier resume's — never
//! deleted: the run's history stays readable, and the names can match no step.

use std::collections::HashSet;

use crate::driver::FAILURE_KEY;
use crate::store::{EntryKind, JournalEntry};

/// The prefix of a compensation's key.
const UNDO: &str = "~undo:";

/// The suffix of a signal wait's journaled deadline (`<wait key>~until`).
const UNTIL: &str = "~until";

/// The `(from, to)` renames that retire what a resume must run again, in journal order.
pub(crate) fn retirements(journal: &[JournalEntry]) -> Vec<(String, String)> {
    let n = 1 + journal
        .iter()
        .filter_map(|e| resume_number(&e.key))
        .max()
        .unwrap_or(0);
    let undone: HashSet<&str> = journal
        .iter()
        .filter(|e| e.kind == EntryKind::Compensation)
        .filter_map(|e| e.key.strip_prefix(UNDO))
        .collect();
    let timed_out: HashSet<&str> = journal
        .iter()
        .filter(|e| e.kind == EntryKind::Signal && e.outcome.is_err())
        .map(|e| e.key.as_str())
        .collect();
    journal
        .iter()
        .filter(|e| resume_number(&e.key).is_none())
        .filter(|e| match e.kind {
            EntryKind::Failure => e.key == FAILURE_KEY,
            EntryKind::Compensation => true,
            EntryKind::Step => e.outcome.is_err() || undone.contains(e.key.as_str()),
            // A wait that timed out waits again, from a new deadline.
            EntryKind::Signal => e.outcome.is_err(),
            EntryKind::Sleep => e
                .key
                .strip_suffix(UNTIL)
                .is_some_and(|wait| timed_out.contains(wait)),
        })
        .map(|e| (e.key.clone(), format!("~r{n}:{}", e.key)))
        .collect()
}

/// `n` for a key retired by the `n`th resume (`~r<n>:...`).
fn resume_number(key: &str) -> Option<u32> {
    let rest = key.strip_prefix("~r")?;
    let (n, _) = rest.split_once(':')?;
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, kind: EntryKind, ok: bool) -> JournalEntry {
        JournalEntry {
            seq: 0,
            key: key.into(),
            kind,
            outcome: if ok { Ok(json!(1)) } else { Err("no".into()) },
            attempts: 1,
            started_at_ms: 0,
            finished_at_ms: 0,
            after: None,
        }
    }

    fn from(renames: &[(String, String)]) -> Vec<&str> {
        renames.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn a_failed_saga_retires_its_failure_failed_step_and_compensated_steps() {
        let journal = [
            entry("reserve", EntryKind::Step, true),
            entry("audit", EntryKind::Step, true),
            entry("nap", EntryKind::Sleep, true),
            entry("charge", EntryKind::Step, true),
            entry("ship", EntryKind::Step, false),
            entry(FAILURE_KEY, EntryKind::Failure, false),
            entry("~undo:charge", EntryKind::Compensation, true),
            entry("~undo:reserve", EntryKind::Compensation, true),
            entry("~signal:go:1-2", EntryKind::Signal, true),
        ];
        let renames = retirements(&journal);
        // `audit` (no compensation), the timer and the signal stay.
        assert_eq!(
            from(&renames),
            [
                "reserve",
                "charge",
                "ship",
                "$failure",
                "~undo:charge",
                "~undo:reserve"
            ]
        );
        assert!(renames.iter().all(|(f, t)| *t == format!("~r1:{f}")));
    }

    #[test]
    fn a_second_resume_numbers_past_the_first_and_ignores_its_retired_entries() {
        let journal = [
            entry("~r1:ship", EntryKind::Step, false),
            entry("~r1:$failure", EntryKind::Failure, false),
            entry("ship", EntryKind::Step, false),
            entry(FAILURE_KEY, EntryKind::Failure, false),
        ];
        let renames = retirements(&journal);
        assert_eq!(
            renames,
            [
                ("ship".to_owned(), "~r2:ship".to_owned()),
                ("$failure".to_owned(), "~r2:$failure".to_owned())
            ]
        );
    }

    #[test]
    fn a_timed_out_wait_is_retired_with_its_deadline_but_a_taken_one_stays() {
        let journal = [
            entry("approved~until", EntryKind::Sleep, true),
            entry("approved", EntryKind::Signal, false),
            entry("paid~until", EntryKind::Sleep, true),
            entry("paid", EntryKind::Signal, true),
            entry("nap", EntryKind::Sleep, true),
        ];
        assert_eq!(from(&retirements(&journal)), ["approved~until", "approved"]);
    }

    #[test]
    fn a_halted_run_without_failures_retires_nothing() {
        let journal = [
            entry("a", EntryKind::Step, true),
            entry("b", EntryKind::Step, true),
        ];
        assert!(retirements(&journal).is_empty());
    }

    #[test]
    fn resume_numbers_parse_only_their_own_shape() {
        assert_eq!(resume_number("~r12:x"), Some(12));
        assert_eq!(resume_number("~r:x"), None);
        assert_eq!(resume_number("~rx:y"), None);
        assert_eq!(resume_number("~undo:x"), None);
        assert_eq!(resume_number("r1:x"), None);
    }
}
