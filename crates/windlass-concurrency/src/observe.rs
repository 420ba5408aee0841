//! One place to see everything: every live policy's state and every golden signal, as one
//! [`Snapshot`], and as Prometheus text for one `/metrics`.
//!
//! The policy layer lists its live policies ([`windlass_policy::observe::snapshot`]) and
//! this layer measures the golden signals ([`crate::signals::snapshot`]);
//! a dashboard wants both at once, under one naming scheme. [`snapshot`] reads both;
//! [`Snapshot::to_prometheus`] renders them in the Prometheus text format with the same
//! metric names and labels the `metrics` facade uses (`windlass_` prefix, base units,
//! `_total` counters, one label for the instance: `name`), so a dashboard built on one
//! works on the other.
//!
//! **When not to use it:** with a `metrics` exporter installed, scrape that: it has every
//! counter with every label (reasons, outcomes). This is the dependency-free view, for a
//! status page or a process without an exporter; it carries the state an exporter cannot
//! (which breakers are open, what is stuck).
//!
//! ```
//! use windlass_concurrency::observe;
//! use windlass_policy::CircuitBreaker;
//!
//! let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
//! let now = observe::snapshot();
//! assert!(now.policies.iter().any(|p| p.name.as_ref() == "payments"));
//! assert!(now.to_prometheus().contains("windlass_breaker_state{name=\"payments\"} 0"));
//! # drop(breaker);
//! ```

use std::fmt::Write as _;

use windlass_policy::observe::{PolicySnapshot, PolicyState};

use crate::signals::{self, Signals};

/// Every live policy and every golden signal, read at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Each live named policy's state, in the order they were built.
    pub policies: Vec<PolicySnapshot>,
    /// The golden signals: in flight, latency, lag, silent errors, stuck operations.
    pub signals: Signals,
}

/// Reads every policy's state and every golden signal now.
pub fn snapshot() -> Snapshot {
    Snapshot {
        policies: windlass_policy::observe::snapshot(),
        signals: signals::snapshot(),
    }
}

/// Collects samples family by family, so each family's `# TYPE` line comes once, first.
#[derive(Default)]
struct Families {
    order: Vec<(&'static str, &'static str, &'static str)>,
    samples: std::collections::HashMap<&'static str, Vec<String>>,
}

impl Families {
    fn add(
        &mut self,
        family: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        if !self.samples.contains_key(family) {
            self.order.push((family, kind, help));
        }
        let mut line = String::from(family);
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        self.samples.entry(family).or_default().push(line);
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (family, kind, help) in self.order {
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for line in &self.samples[family] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Escapes a label value as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn count(n: impl TryInto<u64>) -> f64 {
    n.try_into().unwrap_or(u64::MAX) as f64
}

impl Snapshot {
    /// The snapshot in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut f = Families::default();
        for p in &self.policies {
            policy_samples(&mut f, p);
        }
        let s = &self.signals;
        for op in &s.latency {
            let name = [("name", op.name)];
            f.add(
                "windlass_op_in_flight",
                "gauge",
                "Instrumented operations running now.",
                &name,
                count(op.in_flight),
            );
            f.add(
                "windlass_op_completed_total",
                "counter",
                "Instrumented operations that completed.",
                &name,
                count(op.count),
            );
            f.add(
                "windlass_op_cancelled_total",
                "counter",
                "Instrumented operations dropped before completing.",
                &name,
                count(op.cancelled),
            );
            f.add(
                "windlass_op_slow_polls_total",
                "counter",
                "Polls that held their thread longer than the monitor's slow_poll.",
                &name,
                count(op.slow_polls),
            );
            for (q, d) in [("0.5", op.p50), ("0.95", op.p95), ("0.99", op.p99)] {
                f.add(
                    "windlass_op_duration_seconds",
                    "summary",
                    "Latency of the last 1,024 completions.",
                    &[("name", op.name), ("quantile", q)],
                    d.as_secs_f64(),
                );
            }
        }
        let mut stuck: Vec<(&str, u64)> = Vec::new();
        for op in &s.stuck {
            match stuck.iter_mut().find(|(n, _)| *n == op.name) {
                Some((_, c)) => *c += 1,
                None => stuck.push((op.name, 1)),
            }
        }
        for (name, n) in stuck {
            f.add(
                "windlass_op_stuck",
                "gauge",
                "Operations running longer than the stuck threshold.",
                &[("name", name)],
                count(n),
            );
        }
        f.add(
            "windlass_runtime_lag_seconds",
            "gauge",
            "The runtime's latest scheduling lag.",
            &[],
            s.lag.last.as_secs_f64(),
        );
        f.add(
            "windlass_runtime_lag_max_seconds",
            "gauge",
            "The largest scheduling lag seen.",
            &[],
            s.lag.max.as_secs_f64(),
        );
        f.add(
            "windlass_detached_failures_total",
            "counter",
            "Detached tasks that failed or panicked.",
            &[],
            count(s.silent_errors),
        );
        f.render()
    }
}

fn policy_samples(f: &mut Families, p: &PolicySnapshot) {
    let name = [("name", p.name.as_ref())];
    match &p.state {
        PolicyState::Retry {
            calls,
            retries,
            gave_up,
        } => {
            f.add(
                "windlass_retry_calls_total",
                "counter",
                "Calls made through a retry policy.",
                &name,
                count(*calls),
            );
            f.add(
                "windlass_retry_retries_total",
                "counter",
                "Attempts beyond the first.",
                &name,
                count(*retries),
            );
            f.add(
                "windlass_retry_gave_up_total",
                "counter",
                "Calls a retry policy gave up on.",
                &name,
                count(*gave_up),
            );
        }
        PolicyState::CircuitBreaker {
            state,
            failure_rate,
            slow_call_rate,
            calls_in_window,
            openings,
            retry_after,
        } => {
            f.add("windlass_breaker_state", "gauge", "Breaker state: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only.", &name, state.gauge_value());
            if let Some(rate) = failure_rate {
                f.add(
                    "windlass_breaker_failure_rate",
                    "gauge",
                    "Failure rate over the calls the state judges (absent until measured).",
                    &name,
                    *rate,
                );
            }
            if let Some(rate) = slow_call_rate {
                f.add(
                    "windlass_breaker_slow_call_rate",
                    "gauge",
                    "Slow-call rate over the same calls (absent until measured).",
                    &name,
                    *rate,
                );
            }
            f.add(
                "windlass_breaker_window_calls",
                "gauge",
                "Calls the current state's decision rests on.",
                &name,
                count(*calls_in_window),
            );
            f.add(
                "windlass_breaker_openings_total",
                "counter",
                "Times the breaker opened.",
                &name,
                count(*openings),
            );
            if let Some(wait) = retry_after {
                f.add(
                    "windlass_breaker_retry_after_seconds",
                    "gauge",
                    "Time until an open breaker admits a probe.",
                    &name,
                    wait.as_secs_f64(),
                );
            }
        }
        PolicyState::Bulkhead {
            in_use,
            queued,
            max_concurrent,
        } => {
            f.add(
                "windlass_bulkhead_in_use",
                "gauge",
                "Bulkhead slots in use.",
                &name,
                count(*in_use),
            );
            f.add(
                "windlass_bulkhead_queued",
                "gauge",
                "Calls waiting for a bulkhead slot.",
                &name,
                count(*queued),
            );
            f.add(
                "windlass_bulkhead_max_concurrent",
                "gauge",
                "The bulkhead's concurrency limit.",
                &name,
                count(*max_concurrent),
            );
        }
        PolicyState::RateLimiter { admitted, rejected } => {
            f.add(
                "windlass_rate_limit_admitted_total",
                "counter",
                "Calls a rate limiter admitted.",
                &name,
                count(*admitted),
            );
            f.add(
                "windlass_rate_limit_rejected_total",
                "counter",
                "Calls a rate limiter rejected.",
                &name,
                count(*rejected),
            );
        }
        PolicyState::ConcurrencyLimiter {
            limit,
            in_flight,
            shed,
        } => {
            f.add(
                "windlass_concurrency_limit",
                "gauge",
                "The concurrency limit now in force.",
                &name,
                count(*limit),
            );
            f.add(
                "windlass_concurrency_in_flight",
                "gauge",
                "Calls in flight through a concurrency limiter.",
                &name,
                count(*in_flight),
            );
            f.add(
                "windlass_concurrency_shed_total",
                "counter",
                "Calls shed by a concurrency limiter.",
                &name,
                count(*shed),
            );
        }
        PolicyState::Hedge { hedges, hedge_wins } => {
            f.add(
                "windlass_hedge_attempts_total",
                "counter",
                "Extra attempts a hedge started.",
                &name,
                count(*hedges),
            );
            f.add(
                "windlass_hedge_wins_total",
                "counter",
                "Calls won by an extra attempt.",
                &name,
                count(*hedge_wins),
            );
        }
        // A state this version does not know how to render is left out, not guessed at.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windlass_policy::{Bulkhead, CircuitBreaker, Retry};

    /// One sample line: `family{labels} value`.
    fn parse(line: &str) -> (&str, Vec<(String, String)>, f64) {
        let (head, value) = line.rsplit_once(' ').expect("a value");
        let (family, labels) = match head.split_once('{') {
            Some((f, rest)) => (f, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once("=\"").expect("k=\"v\"");
                (k.to_string(), v.strip_suffix('"').unwrap_or(v).to_string())
            })
            .collect();
        (family, labels, value.parse().expect("a number"))
    }

    #[tokio::test(start_paused = true)]
    async fn one_snapshot_holds_policies_and_signals_under_one_naming_scheme() {
        let breaker = CircuitBreaker::builder()
            .name("obs-breaker")
            .build()
            .unwrap();
        breaker.force_open();
        let bulkhead = Bulkhead::builder()
            .name("obs \"bulk\"")
            .max_concurrent(3)
            .build()
            .unwrap();
        let _slot = bulkhead.try_acquire().unwrap();
        let _retry = Retry::builder().name("obs-retry").build().unwrap();
        signals::instrument("obs-op", async {}).await;

        let snap = snapshot();
        assert!(
            snap.policies
                .iter()
                .any(|p| p.name.as_ref() == "obs-breaker")
        );
        assert!(
            snap.signals
                .latency
                .iter()
                .any(|l| l.name == "obs-op" && l.count >= 1)
        );

        let text = snap.to_prometheus();
        let mut typed = std::collections::HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').unwrap();
                assert!(
                    typed.insert(family.to_string(), kind.to_string()).is_none(),
                    "one TYPE per family: {family}"
                );
            } else if !line.starts_with("# HELP ") {
                samples.push(parse(line));
            }
        }
        for (family, labels, _) in &samples {
            let kind = typed
                .get(*family)
                .unwrap_or_else(|| panic!("{family} has a TYPE"));
            assert!(family.starts_with("windlass_"), "{family}");
            assert!(
                family.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{family}"
            );
            assert_eq!(
                kind == "counter",
                family.ends_with("_total"),
                "{family}: counters and only counters end in _total"
            );
            // One label names the instance, in every layer.
            assert!(
                labels.iter().all(|(k, _)| k == "name" || k == "quantile"),
                "{family}: {labels:?}"
            );
        }
        let value = |family: &str, name: &str| {
            samples
                .iter()
                .find(|(f, l, _)| *f == family && l.iter().any(|(k, v)| k == "name" && v == name))
                .map(|s| s.2)
        };
        assert_eq!(
            value("windlass_breaker_state", "obs-breaker"),
            Some(4.0),
            "forced open"
        );
        assert_eq!(
            value("windlass_bulkhead_in_use", "obs \\\"bulk\\\""),
            Some(1.0),
            "escaped name"
        );
        assert_eq!(value("windlass_retry_calls_total", "obs-retry"), Some(0.0));
        assert!(value("windlass_op_completed_total", "obs-op").is_some_and(|v| v >= 1.0));
        // A rate that was never measured is absent, not a healthy-looking 0.
        assert_eq!(value("windlass_breaker_failure_rate", "obs-breaker"), None);
    }
}
