//! `windlass limits show|set|clear QUEUE`: the limits a queue's claims obey in every process.
//!
//! Limits live in the job store (`Store::set_limits`), so changing them here reaches every
//! worker on the database (PostgreSQL workers re-read them within a second). `set` changes only
//! the limits named and keeps the rest; `none` removes one.

use std::fmt::Write as _;
use std::time::Duration;

use windlass_queue::{Queue, QueueLimits, Rate, Store};

/// A change to one limit: keep it, remove it, or set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    /// Leave it as it is.
    #[default]
    Keep,
    /// No limit.
    Remove,
    /// This limit.
    Set(T),
}

impl<T: Copy> Change<T> {
    fn apply(self, old: Option<T>) -> Option<T> {
        match self {
            Change::Keep => old,
            Change::Remove => None,
            Change::Set(v) => Some(v),
        }
    }
}

/// What `windlass limits set` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsChange {
    /// Jobs of the queue running at once.
    pub max_running: Change<u32>,
    /// Jobs of one limit key running at once.
    pub max_running_per_key: Change<u32>,
    /// Job starts of the queue per window.
    pub rate: Change<Rate>,
    /// Job starts of one limit key per window.
    pub rate_per_key: Change<Rate>,
}

impl LimitsChange {
    /// The limits after this change.
    pub fn apply(self, old: QueueLimits) -> QueueLimits {
        QueueLimits {
            max_running: self.max_running.apply(old.max_running),
            max_running_per_key: self.max_running_per_key.apply(old.max_running_per_key),
            rate: self.rate.apply(old.rate),
            rate_per_key: self.rate_per_key.apply(old.rate_per_key),
        }
    }
}

/// Parses a count limit: a positive number, or `none`.
pub fn parse_count(s: &str) -> Result<Change<u32>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Change::Remove);
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!(
            "`{s}`: expected a positive whole number, or `none`"
        )),
        Ok(n) => Ok(Change::Set(n)),
    }
}

/// Parses a rate: `COUNT/WINDOW` (`100/s`, `600/1m`, `20/10s`), or `none`.
pub fn parse_rate(s: &str) -> Result<Change<Rate>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Change::Remove);
    }
    let (count, window) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected COUNT/WINDOW, e.g. 100/s or 600/1m"))?;
    let count: u32 = match count.parse() {
        Ok(0) | Err(_) => return Err(format!("`{s}`: the count must be a positive whole number")),
        Ok(n) => n,
    };
    // `100/s` means per one second.
    let window = if window.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(window)?
    } else {
        parse_duration(&format!("1{window}"))?
    };
    Ok(Change::Set(Rate { count, window }))
}

/// Parses `30s`, `15m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, e.g. 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Shows a queue's limits (after `change`, if one is given: then stores them first).
pub async fn run<S: Store>(
    queue: &Queue<S>,
    name: String,
    change: Option<LimitsChange>,
    json: bool,
) -> anyhow::Result<String> {
    if name.is_empty() {
        anyhow::bail!("the queue name must not be empty");
    }
    let mut limits = queue.store().limits(name.clone()).await?;
    if let Some(change) = change {
        limits = change.apply(limits);
        queue.set_limits(name.clone(), limits).await?;
    }
    Ok(if json {
        serde_json::to_string_pretty(&serde_json::json!({ "queue": name, "limits": limits }))?
    } else {
        table(&name, &limits)
    })
}

fn table(name: &str, l: &QueueLimits) -> String {
    let count = |v: Option<u32>| v.map_or("no limit".to_string(), |n| n.to_string());
    let rate = |v: Option<Rate>| {
        v.map_or("no limit".to_string(), |r| {
            format!("{} per {:?}", r.count, r.window)
        })
    };
    let mut out = format!("queue {name}\n");
    let _ = writeln!(out, "  running at once:          {}", count(l.max_running));
    let _ = writeln!(
        out,
        "  running at once per key:  {}",
        count(l.max_running_per_key)
    );
    let _ = writeln!(out, "  starts:                   {}", rate(l.rate));
    let _ = writeln!(out, "  starts per key:           {}", rate(l.rate_per_key));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;
    use windlass_sqlite::SqliteStore;

    #[test]
    fn counts_and_rates_parse_or_say_what_is_wrong() {
        assert_eq!(parse_count("4"), Ok(Change::Set(4)));
        assert_eq!(parse_count("none"), Ok(Change::Remove));
        assert!(parse_count("0").unwrap_err().contains("positive"));
        assert!(parse_count("-1").is_err());
        let per_second = Rate {
            count: 100,
            window: Duration::from_secs(1),
        };
        assert_eq!(parse_rate("100/s"), Ok(Change::Set(per_second)));
        assert_eq!(parse_rate("100/1s"), Ok(Change::Set(per_second)));
        assert_eq!(
            parse_rate("600/10m"),
            Ok(Change::Set(Rate {
                count: 600,
                window: Duration::from_secs(600)
            }))
        );
        assert_eq!(parse_rate("NONE"), Ok(Change::Remove));
        assert!(parse_rate("100").unwrap_err().contains("COUNT/WINDOW"));
        assert!(parse_rate("0/s").unwrap_err().contains("positive"));
        assert!(parse_rate("5/3w").unwrap_err().contains("unit"));
    }

    #[tokio::test]
    async fn set_changes_only_the_limits_named_and_the_store_keeps_them() {
        let queue = Queue::new(SqliteStore::memory_builder().open().await.unwrap());
        let out = run(&queue, "mail".into(), None, false).await.unwrap();
        assert!(out.contains("running at once:          no limit"), "{out}");

        let first = LimitsChange {
            max_running: Change::Set(4),
            rate_per_key: parse_rate("10/m").unwrap(),
            ..LimitsChange::default()
        };
        run(&queue, "mail".into(), Some(first), false)
            .await
            .unwrap();
        let second = LimitsChange {
            max_running_per_key: Change::Set(2),
            rate_per_key: Change::Remove,
            ..LimitsChange::default()
        };
        run(&queue, "mail".into(), Some(second), false)
            .await
            .unwrap();
        let stored = queue.store().limits("mail".into()).await.unwrap();
        assert_eq!(
            stored,
            QueueLimits {
                max_running: Some(4),
                max_running_per_key: Some(2),
                rate: None,
                rate_per_key: None,
            }
        );
        let json: serde_json::Value =
            serde_json::from_str(&run(&queue, "mail".into(), None, true).await.unwrap()).unwrap();
        assert_eq!(json["limits"]["max_running"], 4);
        // Another queue is untouched.
        assert_eq!(
            queue.store().limits("other".into()).await.unwrap(),
            QueueLimits::default()
        );
        assert!(run(&queue, String::new(), None, false).await.is_err());
    }
}
