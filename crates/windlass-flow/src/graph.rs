//! A run's recorded dependency graph, for Mermaid or Graphviz (DOT).
//!
//! Entry B follows entry A when A was finished before B started and no third entry lies
//! wholly between them. Steps that ran at the same time (a fan-out) have no edge between
//! them, so the picture shows what actually ran in parallel, not what the code could have
//! run in parallel.
//!
//! "A was finished before B started" is read from what the run knew: each entry records the
//! `seq` of the latest entry journaled when it started, as known to the resumption that ran
//! it ([`JournalEntry::after`]), so A precedes B when `A.seq <= B.after`, whatever the
//! clock's resolution (two sub-millisecond steps side by side are not a chain). An entry
//! without it (`after` unknown: a child's end, a signal sent from outside, an entry written
//! by an older version) is placed by its times instead: A finished at or before B started
//! (in milliseconds, stored order breaking a tie).

use std::fmt::Write as _;

use crate::store::{EntryKind, JournalEntry};

/// One edge: indexes into the entries given.
pub type Edge = (usize, usize);

/// The edges between `entries` (see the module docs), in order.
pub fn edges(entries: &[JournalEntry]) -> Vec<Edge> {
    let before = |a: &JournalEntry, b: &JournalEntry| {
        a.seq < b.seq
            && match b.after {
                Some(after) => a.seq <= after,
                None => a.finished_at_ms <= b.started_at_ms,
            }
    };
    let mut out = Vec::new();
    for (bi, b) in entries.iter().enumerate() {
        for (ai, a) in entries.iter().enumerate() {
            if ai == bi || !before(a, b) {
                continue;
            }
            let covered = entries
                .iter()
                .enumerate()
                .any(|(ci, c)| ci != ai && ci != bi && before(a, c) && before(c, b));
            if !covered {
                out.push((ai, bi));
            }
        }
    }
    out
}

fn label(e: &JournalEntry) -> String {
    let status = match (&e.kind, &e.outcome) {
        (EntryKind::Sleep, _) => "timer".to_owned(),
        (EntryKind::Compensation, _) => "undone".to_owned(),
        (EntryKind::Signal, Ok(_)) => "signal".to_owned(),
        (EntryKind::Signal, Err(m)) => format!("signal: {m}"),
        (EntryKind::Failure, Err(m)) => format!("failed: {m}"),
        (_, Ok(_)) => format!(
            "ok, {} attempt(s), {} ms",
            e.attempts,
            e.finished_at_ms - e.started_at_ms
        ),
        (_, Err(m)) => format!("failed after {} attempt(s): {m}", e.attempts),
    };
    format!("{}\\n{}", e.key, status).replace('"', "'")
}

/// The graph in Mermaid (`flowchart TD`).
pub fn mermaid(entries: &[JournalEntry]) -> String {
    let mut s = String::from("flowchart TD\n");
    for (i, e) in entries.iter().enumerate() {
        let _ = writeln!(s, "    n{i}[\"{}\"]", label(e).replace("\\n", "<br/>"));
    }
    for (a, b) in edges(entries) {
        let _ = writeln!(s, "    n{a} --> n{b}");
    }
    s
}

/// The graph in Graphviz DOT.
pub fn dot(entries: &[JournalEntry]) -> String {
    let mut s = String::from("digraph run {\n    rankdir=TB;\n");
    for (i, e) in entries.iter().enumerate() {
        let shape = match e.kind {
            EntryKind::Step => "box",
            EntryKind::Sleep => "ellipse",
            EntryKind::Compensation => "box, style=dashed",
            EntryKind::Failure => "octagon",
            EntryKind::Signal => "cds",
        };
        let _ = writeln!(s, "    n{i} [label=\"{}\", shape={shape}];", label(e));
    }
    for (a, b) in edges(entries) {
        let _ = writeln!(s, "    n{a} -> n{b};");
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// An entry placed by its times only (`after` unknown).
    fn entry(seq: i64, key: &str, start: i64, end: i64) -> JournalEntry {
        JournalEntry {
            seq,
            key: key.into(),
            kind: EntryKind::Step,
            outcome: Ok(Value::Null),
            attempts: 1,
            started_at_ms: start,
            finished_at_ms: end,
            after: None,
        }
    }

    /// An entry that started after the entry `after`, everything in one millisecond.
    fn seen(seq: i64, key: &str, after: i64) -> JournalEntry {
        JournalEntry {
            after: Some(after),
            ..entry(seq, key, 7, 7)
        }
    }

    #[test]
    fn what_each_entry_had_seen_orders_it_below_the_clocks_resolution() {
        // fetch, then three thumbnails at once, then upload, all in one millisecond (the
        // times alone would make a chain of it).
        let entries = vec![
            seen(1, "fetch", 0),
            seen(2, "thumb[a]", 1),
            seen(3, "thumb[b]", 1),
            seen(4, "thumb[c]", 1),
            seen(5, "upload", 4),
        ];
        assert_eq!(
            edges(&entries),
            vec![(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)]
        );
        // A chain in one millisecond stays a chain.
        let chain = vec![seen(1, "a", 0), seen(2, "b", 1), seen(3, "c", 2)];
        assert_eq!(edges(&chain), vec![(0, 1), (1, 2)]);
        // Entries of other runs take seqs between a run's own: only what it saw counts.
        let sparse = vec![seen(10, "a", 0), seen(15, "b", 10), seen(40, "c", 10)];
        assert_eq!(edges(&sparse), vec![(0, 1), (0, 2)]);
    }

    #[test]
    fn a_fan_out_has_no_edges_between_its_branches() {
        // fetch, then three thumbnails at once, then upload.
        let entries = vec![
            entry(1, "fetch", 0, 10),
            entry(2, "thumb[a]", 10, 30),
            entry(3, "thumb[b]", 11, 25),
            entry(4, "thumb[c]", 12, 28),
            entry(5, "upload", 30, 40),
        ];
        assert_eq!(
            edges(&entries),
            vec![(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)]
        );
        let m = mermaid(&entries);
        assert!(m.contains("n0 --> n1") && m.contains("n3 --> n4") && !m.contains("n1 --> n2"));
        let d = dot(&entries);
        assert!(d.starts_with("digraph run {") && d.contains("n2 -> n4;"));
    }

    #[test]
    fn a_chain_has_only_its_direct_edges() {
        let entries = vec![
            entry(1, "a", 0, 1),
            entry(2, "b", 1, 2),
            entry(3, "c", 2, 3),
        ];
        assert_eq!(edges(&entries), vec![(0, 1), (1, 2)]);
    }
}
