//! A step: [`FlowContext::step`]'s builder, and what awaiting it does — claim the journal
//! key, return the journaled result if there is one, or run the closure under its retry and
//! timeout, journal the outcome (first writer wins) and register its compensation.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument as _;
use windlass_policy::{PolicyExt, Retry};

use super::{BoxFuture, FlowContext, Halt, Registered, Undo};
use crate::error::FlowError;
use crate::store::{EntryKind, JournalEntry};

/// A running step, counted until it ends — or its future is dropped (a `select!` that
/// took another branch), so a timer beside it is not kept waiting for it.
pub(super) struct InFlight(FlowContext);

impl InFlight {
    pub(super) fn enter(ctx: &FlowContext) -> Self {
        ctx.lock().in_flight += 1;
        InFlight(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.inner.changed.notify_waiters();
    }
}

/// What a [`Step`] outputs, and how long what it borrows must live.
pub(super) type StepMarker<'a, T> = (fn() -> T, &'a ());

/// A step being set up: see [`FlowContext::step`]. Await it to run it.
#[must_use = "a step does nothing until awaited"]
pub struct Step<'a, T, F> {
    pub(super) ctx: FlowContext,
    pub(super) name: String,
    pub(super) key: Option<String>,
    pub(super) run: F,
    pub(super) retry: Option<Retry>,
    pub(super) timeout: Option<Duration>,
    pub(super) undo: Option<Box<dyn FnOnce(Value) -> Undo + Send>>,
    pub(super) _out: PhantomData<StepMarker<'a, T>>,
}

impl<T, F> fmt::Debug for Step<'_, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish()
    }
}

/// One attempt's failure: the step's own error, or its timeout.
#[derive(Debug)]
enum AttemptError<E> {
    Failed(E),
    TimedOut(Duration),
}

impl<E: fmt::Display> fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Failed(e) => e.fmt(f),
            AttemptError::TimedOut(d) => write!(f, "attempt timed out after {d:?}"),
        }
    }
}

impl<'a, T, E, F, Fut> Step<'a, T, F>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: fmt::Display + Send + 'static,
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<T, E>> + Send,
{
    /// Journals this step as `name[key]` instead of by occurrence.
    pub fn key(mut self, key: impl fmt::Display) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Retries failed attempts with this policy (the policy layer's [`Retry`]: attempts,
    /// backoff, jitter, a deadline). Every error of the step is retried as transient (the
    /// step's error type is only displayed); a step that must not be retried on some errors
    /// should return `Ok` of an outcome type for them. Without a policy, a step makes one
    /// attempt.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Fails an attempt that takes longer than this (a transient failure: retried).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Registers how to undo this step: if the run later fails, `undo` is called with this
    /// step's output. Compensations run in the reverse order of their steps' completion,
    /// each retried (5 attempts, exponential backoff from 100 ms) and then, if still
    /// failing, retried with the whole rollback by the queue (the run's job fails
    /// transiently and is resumed with its backoff). Each finished compensation is
    /// journaled, so a crash mid-rollback resumes the rollback and skips what was undone;
    /// like a step, a compensation's effect can repeat if the process dies between the
    /// effect and its journal write, so make it idempotent. A step that never ran, or
    /// failed, is never compensated.
    pub fn compensate_with<G, GFut, GE>(mut self, undo: G) -> Self
    where
        G: Fn(T) -> GFut + Send + Sync + 'static,
        GFut: Future<Output = Result<(), GE>> + Send + 'static,
        GE: fmt::Display + Send + 'static,
    {
        let undo = Arc::new(undo);
        self.undo = Some(Box::new(move |output: Value| -> Undo {
            Arc::new(move || {
                let undo = Arc::clone(&undo);
                let output = output.clone();
                Box::pin(async move {
                    let output: T = serde_json::from_value(output)
                        .map_err(|e| format!("the step's output does not decode: {e}"))?;
                    undo(output).await.map_err(|e| e.to_string())
                })
            })
        }));
        self
    }

    async fn execute(self, key: Result<String, String>) -> Result<T, FlowError> {
        let Step {
            ctx,
            name,
            run,
            retry,
            timeout,
            undo,
            ..
        } = self;
        let key = match key {
            Ok(key) => key,
            Err(message) => return ctx.halt(Halt::Replay(message)).await,
        };
        let asked = || format!("step `{key}` of type {}", std::any::type_name::<T>());
        let journaled = ctx.journaled(&key);
        let entry = match journaled {
            Some(entry) => {
                metrics::counter!("windlass_flow_steps_replayed_total", "workflow" => ctx.inner.kind.clone())
                    .increment(1);
                entry
            }
            None => {
                if ctx.halted().is_some() {
                    // The resumption is ending: start nothing new.
                    return std::future::pending().await;
                }
                if let Some(refused) = ctx.refused_while_rolling_back(&key) {
                    return Err(refused);
                }
                let in_flight = InFlight::enter(&ctx);
                let started = ctx.now_ms();
                let after = Some(ctx.last_seq());
                let clock = tokio::time::Instant::now();
                let span = tracing::info_span!("step", run = %ctx.inner.run, step = %key);
                let attempts = AtomicU32::new(0);
                let attempt = || {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let fut = run();
                    async move {
                        match timeout {
                            Some(d) => match tokio::time::timeout(d, fut).await {
                                Ok(r) => r.map_err(AttemptError::Failed),
                                Err(_) => Err(AttemptError::TimedOut(d)),
                            },
                            None => fut.await.map_err(AttemptError::Failed),
                        }
                    }
                };
                let result = async {
                    match &retry {
                        Some(retry) => retry.call(attempt).await.map_err(|e| e.to_string()),
                        None => attempt().await.map_err(|e| e.to_string()),
                    }
                }
                .instrument(span.clone())
                .await;
                let labels = [("workflow", ctx.inner.kind.clone()), ("step", name.clone())];
                metrics::histogram!("windlass_flow_step_duration_seconds", &labels)
                    .record(clock.elapsed().as_secs_f64());
                let outcome_label = if result.is_ok() {
                    "completed"
                } else {
                    "failed"
                };
                metrics::counter!(
                    "windlass_flow_steps_total",
                    "workflow" => ctx.inner.kind.clone(),
                    "step" => name.clone(),
                    "outcome" => outcome_label,
                )
                .increment(1);
                if let Err(e) = &result {
                    span.in_scope(|| tracing::warn!(error = %e, "step failed"));
                }
                let outcome = match result {
                    Ok(v) => serde_json::to_value(&v)
                        .map_err(|e| format!("the step's output does not serialise: {e}")),
                    Err(e) => Err(e),
                };
                let entry = JournalEntry {
                    seq: 0,
                    key: key.clone(),
                    kind: EntryKind::Step,
                    outcome,
                    attempts: attempts.load(Ordering::Relaxed),
                    started_at_ms: started,
                    finished_at_ms: ctx.now_ms(),
                    after,
                };
                let stored = ctx.record(entry).await;
                drop(in_flight);
                match stored {
                    Ok(stored) => stored,
                    Err(e) => return ctx.halt(Halt::Store(e)).await,
                }
            }
        };
        if entry.kind != EntryKind::Step {
            let mismatch = ctx.mismatch(asked(), &entry);
            return ctx.halt(Halt::Replay(mismatch.to_string())).await;
        }
        match &entry.outcome {
            Ok(value) => {
                let output: T = match serde_json::from_value(value.clone()) {
                    Ok(output) => output,
                    Err(e) => {
                        let mut mismatch = ctx.mismatch(asked(), &entry);
                        mismatch
                            .journaled
                            .push_str(&format!(", which does not decode: {e}"));
                        return ctx.halt(Halt::Replay(mismatch.to_string())).await;
                    }
                };
                if let Some(undo) = undo {
                    ctx.lock().compensations.push(Registered {
                        seq: entry.seq,
                        key: key.clone(),
                        undo: undo(value.clone()),
                    });
                }
                Ok(output)
            }
            Err(message) => Err(FlowError::StepFailed {
                step: key,
                attempts: entry.attempts,
                message: message.clone(),
            }),
        }
    }
}

impl<'a, T, E, F, Fut> IntoFuture for Step<'a, T, F>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: fmt::Display + Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
{
    type Output = Result<T, FlowError>;
    type IntoFuture = BoxFuture<'a, Result<T, FlowError>>;

    /// Claims the step's journal key now, in program order, then runs it when polled.
    fn into_future(self) -> Self::IntoFuture {
        let key = self.ctx.claim_key(&self.name, self.key.as_deref());
        Box::pin(self.execute(key))
    }
}
