//! The context a workflow runs in: journaled steps, durable timers, bounded fan-out.
//!
//! Every resumption of a run executes the workflow's code from the top with a fresh
//! [`FlowContext`] that holds the run's journal. A step already in the journal returns its
//! journaled result without running; the first step that is not runs, and its result is
//! journaled before the code sees it. So the code must reach its steps the same way on every
//! replay: branch on step results, the input and [`FlowContext::now_ms`] of a journaled step,
//! not on the wall clock or randomness outside a step.
//!
//! Internal stops never reach the workflow's code: when a timer must wait, when the journal
//! cannot be written, or when the code contradicts its journal, the step or timer simply never
//! completes and the driver ends this resumption (see [`crate::driver`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;
use windlass_queue::StoreError;

mod step;

pub use step::Step;

use crate::error::{FlowError, ReplayMismatch};
use crate::store::{EntryKind, FlowStore, JournalEntry, RunStart, RunStatus, Started};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest step name or explicit key, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// What the context needs of a store, without its type.
pub(crate) trait Journal: Send + Sync {
    fn record(
        &self,
        run: String,
        entry: JournalEntry,
    ) -> BoxFuture<'static, Result<JournalEntry, StoreError>>;
    fn now_ms(&self) -> i64;
    /// Starts a run (a child), or returns the one with its id.
    fn start_run(&self, start: RunStart) -> BoxFuture<'static, Result<Started, StoreError>>;
    /// Cancels the run `id` if it is a `kind` run started by `parent` (a child of a run
    /// rolling back); whether it moved.
    fn cancel_child(
        &self,
        id: String,
        parent: String,
        kind: &'static str,
        reason: String,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;
}

impl<S: FlowStore> Journal for Arc<S> {
    fn cancel_child(
        &self,
        id: String,
        parent: String,
        kind: &'static str,
        reason: String,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move {
            // Only a run this parent started, of the kind it asked for: an id shared with
            // another parent, or taken by another workflow, is left alone.
            let Some(run) = FlowStore::run(&*store, id.clone()).await? else {
                return Ok(false);
            };
            if run.kind != kind {
                return Ok(false);
            }
            let started_by = windlass_queue::Store::get(&*store, run.job)
                .await?
                .and_then(|j| serde_json::from_value::<crate::driver::RunPayload>(j.payload).ok())
                .and_then(|p| p.parent);
            if started_by.as_deref() != Some(parent.as_str()) {
                return Ok(false);
            }
            Ok(FlowStore::cancel_run(&*store, id, reason)
                .await?
                .is_some_and(|(_, moved)| moved))
        })
    }
    fn start_run(&self, start: RunStart) -> BoxFuture<'static, Result<Started, StoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move { FlowStore::start_run(&*store, start).await })
    }
    fn record(
        &self,
        run: String,
        entry: JournalEntry,
    ) -> BoxFuture<'static, Result<JournalEntry, StoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move { FlowStore::record(&*store, run, entry).await })
    }
    fn now_ms(&self) -> i64 {
        windlass_queue::Store::now_ms(&**self)
    }
}

/// Why a resumption must end before the workflow's code returns.
#[derive(Debug, Clone)]
pub(crate) enum Halt {
    /// The journal could not be written: retry the resumption later.
    Store(StoreError),
    /// The code contradicts the journal, or misuses the context: stop the run.
    Replay(String),
}

/// How a resumption ended early.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    Halt(Halt),
    /// Every branch waits for a timer: resume at this time (ms since the Unix epoch).
    Suspend {
        wake_at_ms: i64,
    },
}

/// A compensation, ready to run.
pub(crate) type Undo = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub(crate) struct Registered {
    /// The step's journal order: compensations run in reverse.
    pub(crate) seq: i64,
    pub(crate) key: String,
    pub(crate) undo: Undo,
}

struct State {
    journal: HashMap<String, JournalEntry>,
    /// The highest `seq` in `journal`.
    last_seq: i64,
    occurrences: HashMap<String, u32>,
    used: HashSet<String>,
    compensations: Vec<Registered>,
    in_flight: usize,
    halt: Option<Halt>,
    wake_at_ms: Option<i64>,
}

/// Where a run's children's jobs go.
#[derive(Debug, Clone)]
pub(crate) struct ChildJobs {
    pub(crate) queue: String,
    pub(crate) attempt_timeout: Duration,
}

struct Inner {
    run: String,
    /// The run's workflow kind (a metrics label).
    kind: String,
    /// The run's trace context (W3C `traceparent`), inherited by its children.
    trace: Option<String>,
    /// The run's deadline (ms, store clock), inherited by its children.
    deadline_ms: Option<i64>,
    store: Arc<dyn Journal>,
    children: ChildJobs,
    state: Mutex<State>,
    changed: Notify,
}

/// What a workflow's code is given: journaled [`step`](Self::step)s, durable
/// [`sleep`](Self::sleep)s and bounded fan-out ([`all`](Self::all)). Cheap to clone.
#[derive(Clone)]
pub struct FlowContext {
    inner: Arc<Inner>,
}

impl fmt::Debug for FlowContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowContext")
            .field("run", &self.inner.run)
            .finish()
    }
}

/// The journal key prefix of the signals named `name` delivered to a run.
pub(crate) fn signal_prefix(name: &str) -> String {
    format!("~signal:{name}:")
}

pub(crate) fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "step and timer names must be 1 to {MAX_NAME_BYTES} bytes, got {name:?}"
        ));
    }
    if name.starts_with(['$', '~']) || name.contains(['#', '[', ']']) {
        return Err(format!(
            "step and timer names must not start with `$` or `~` nor contain `#`, `[` or `]` (they build journal keys), got {name:?}"
        ));
    }
    Ok(())
}

impl FlowContext {
    pub(crate) fn new(
        run: &crate::store::RunRecord,
        trace: Option<String>,
        deadline_ms: Option<i64>,
        journal: Vec<JournalEntry>,
        store: Arc<dyn Journal>,
        children: ChildJobs,
    ) -> Self {
        FlowContext {
            inner: Arc::new(Inner {
                run: run.id.clone(),
                kind: run.kind.clone(),
                trace,
                deadline_ms,
                store,
                children,
                state: Mutex::new(State {
                    last_seq: journal.iter().map(|e| e.seq).max().unwrap_or(0),
                    journal: journal.into_iter().map(|e| (e.key.clone(), e)).collect(),
                    occurrences: HashMap::new(),
                    used: HashSet::new(),
                    compensations: Vec::new(),
                    in_flight: 0,
                    halt: None,
                    wake_at_ms: None,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.inner.run
    }

    /// The run's workflow kind.
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// The run's trace context (a W3C `traceparent`, see
    /// [`RunOptions::trace_context`](crate::RunOptions::trace_context)): pass it on to the
    /// calls a step makes, so they join the run's trace.
    pub fn trace_context(&self) -> Option<&str> {
        self.inner.trace.as_deref()
    }

    /// The store's clock (ms since the Unix epoch). Not journaled: to branch on time, read
    /// it inside a step so replays see the same value.
    pub fn now_ms(&self) -> i64 {
        self.inner.store.now_ms()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; carry on with it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A step: `run` is called (again, for each retry) until it succeeds or its policy
    /// gives up, and its result is journaled before it is returned. If the run's journal
    /// already holds this step, its journaled result is returned and `run` is not called.
    ///
    /// **Matching.** Steps are matched by name, not position, so a step added to the code
    /// does not disturb runs already in flight. A name used again in one run is told apart
    /// by its occurrence: the first `charge` is journaled as `charge`, the second as
    /// `charge#2`, and so on, counted when the step is awaited (or handed to
    /// [`all`](Self::all)). Where the order of calls may differ between replays (steps
    /// started from concurrent branches of your own), give each an explicit
    /// [`key`](Step::key) instead: journaled as `name[key]`. A journal entry under the
    /// step's key that is not a step, or whose output does not decode into `T`, halts the
    /// run with a [`ReplayMismatch`] naming both — never a silent re-run.
    ///
    /// **Failure.** A step whose attempts all fail is journaled as failed and returns
    /// [`FlowError::StepFailed`]; a replay returns the same failure without running it.
    ///
    /// **Compensation.** See [`Step::compensate_with`]. A step that failed is never
    /// compensated: it has no output to undo with, so a step that can fail part-way must
    /// clean up after itself before it returns its error.
    pub fn step<'a, T, E, F, Fut>(&self, name: impl Into<String>, run: F) -> Step<'a, T, F>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display + Send + 'static,
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        Step {
            ctx: self.clone(),
            name: name.into(),
            key: None,
            run,
            retry: None,
            timeout: None,
            undo: None,
            _out: PhantomData,
        }
    }

    /// A durable timer: the run sleeps until `duration` after this timer was first
    /// reached, without holding a worker — the resumption ends, its job is snoozed until
    /// then, and any worker resumes it, across restarts. Timers are matched by name like
    /// steps (journaled as kind `sleep`).
    ///
    /// The timer starts the first time it is reached; a replay after it expired returns at
    /// once, and so does every timer of a run that is rolling back (failed or cancelled). A workflow whose branches all wait for timers is suspended until the earliest;
    /// a branch running a step meanwhile is let finish first.
    pub async fn sleep(&self, name: impl Into<String>, duration: Duration) {
        let name = name.into();
        let key = match self.claim_key(&name, None) {
            Ok(key) => key,
            Err(message) => return self.halt(Halt::Replay(message)).await,
        };
        if self.journaled(crate::driver::FAILURE_KEY).is_some() {
            // Rolling back (failed or cancelled): no timer holds up the compensations; the
            // steps after it are refused anyway.
            return;
        }
        let entry = match self.timer(&key, duration).await {
            Ok(entry) => entry,
            Err(e) => return self.halt(Halt::Store(e)).await,
        };
        let wake_at = match (&entry.kind, &entry.outcome) {
            (EntryKind::Sleep, Ok(v)) if v.is_i64() => v.as_i64().unwrap_or(i64::MAX),
            _ => {
                let mismatch = self.mismatch(format!("timer `{key}`"), &entry);
                return self.halt(Halt::Replay(mismatch.to_string())).await;
            }
        };
        if self.now_ms() >= wake_at {
            return;
        }
        self.suspend_until(wake_at).await
    }

    /// Pends forever after asking the run to suspend until `at` (ms) at the latest: the
    /// resumption ends once no step is running, and the job sleeps until the earliest
    /// such time (or a wake-up).
    async fn suspend_until<T>(&self, at: i64) -> T {
        {
            let mut state = self.lock();
            state.wake_at_ms = Some(state.wake_at_ms.map_or(at, |w| w.min(at)));
        }
        self.inner.changed.notify_waiters();
        std::future::pending().await
    }

    /// Waits for a **signal** named `name` — delivered to the run by
    /// [`Flows::signal`](crate::Flows::signal), from any process — for at most `timeout`
    /// after this wait was first reached: `Some(payload)` when one came, `None` when the time
    /// ran out. Like a [`sleep`](Self::sleep), the wait holds no worker: the resumption ends,
    /// the run's job sleeps until the timeout, and a signal wakes it at once (even one sent
    /// while the run is still busy elsewhere). Waits are matched by name like steps; the
    /// outcome is journaled, so a replay sees the same payload or the same timeout.
    ///
    /// Signals queue up: each wait takes the earliest signal of its name that no earlier wait
    /// took, and one sent before the wait was reached is taken at once. A signal sent after
    /// the wait's timeout is left for a later wait. Two waits for one name in concurrent
    /// branches of a run are not supported (both could take the same signal). A payload that
    /// does not decode into `T` halts the run, naming both sides.
    pub async fn wait_for<T: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        timeout: Duration,
    ) -> Result<Option<T>, FlowError> {
        let name = name.into();
        let key = match self.claim_key(&name, None) {
            Ok(key) => key,
            Err(message) => return self.halt(Halt::Replay(message)).await,
        };
        let asked = || format!("signal wait `{key}` of type {}", std::any::type_name::<T>());
        let entry = match self.journaled(&key) {
            Some(entry) => entry,
            None => {
                if let Some(refused) = self.refused_while_rolling_back(&key) {
                    return Err(refused);
                }
                // The deadline, fixed the first time the wait is reached.
                let until_key = format!("{key}~until");
                let until = match self.timer(&until_key, timeout).await {
                    Ok(entry) => entry,
                    Err(e) => return self.halt(Halt::Store(e)).await,
                };
                let deadline = match (&until.kind, &until.outcome) {
                    (EntryKind::Sleep, Ok(v)) if v.is_i64() => v.as_i64().unwrap_or(i64::MAX),
                    _ => {
                        let mismatch =
                            self.mismatch(format!("the deadline of {}", asked()), &until);
                        return self.halt(Halt::Replay(mismatch.to_string())).await;
                    }
                };
                let now = self.now_ms();
                // The wait began when its deadline was journaled, and ends after the
                // signal it takes.
                let mut after = until.seq;
                let outcome = match self.next_signal(&name, deadline) {
                    Some((signal, seq, payload)) => {
                        after = after.max(seq);
                        Ok(serde_json::json!({
                            "signal": signal,
                            "payload": payload,
                        }))
                    }
                    None if now >= deadline => Err(format!(
                        "no signal `{name}` within {} ms",
                        deadline.saturating_sub(until.started_at_ms)
                    )),
                    None => return self.suspend_until(deadline).await,
                };
                let entry = JournalEntry {
                    seq: 0,
                    key: key.clone(),
                    kind: EntryKind::Signal,
                    outcome,
                    attempts: 0,
                    started_at_ms: until.started_at_ms,
                    finished_at_ms: now,
                    after: Some(after),
                };
                match self.record(entry).await {
                    Ok(stored) => stored,
                    Err(e) => return self.halt(Halt::Store(e)).await,
                }
            }
        };
        let payload = match (&entry.kind, &entry.outcome) {
            (EntryKind::Signal, Err(_)) => return Ok(None),
            (EntryKind::Signal, Ok(v)) => v.get("payload").cloned(),
            _ => None,
        };
        match payload.map(serde_json::from_value::<T>) {
            Some(Ok(value)) => Ok(Some(value)),
            Some(Err(e)) => {
                let mut mismatch = self.mismatch(asked(), &entry);
                mismatch
                    .journaled
                    .push_str(&format!(", which does not decode: {e}"));
                self.halt(Halt::Replay(mismatch.to_string())).await
            }
            None => {
                let mismatch = self.mismatch(asked(), &entry);
                self.halt(Halt::Replay(mismatch.to_string())).await
            }
        }
    }

    /// A **child workflow**: starts a run of `W` with the id `id` (once: the id makes it
    /// idempotent, as [`Flows::start`](crate::Flows::start)) on the flows queue, and waits
    /// for its end without holding a worker — the child's end wakes this run. Returns the
    /// child's output, or [`FlowError::StepFailed`] naming the child when it failed or was
    /// halted. The outcome is journaled in this run as the step `child[<id>]`, so a replay
    /// neither starts the child again nor waits for it. Children run on the workers; give
    /// them ids derived from this run's (e.g. `format!("{}-invoice", ctx.run_id())`).
    ///
    /// An id taken by a run of another workflow halts this run, naming both. A child inherits
    /// its parent's deadline and trace; when the parent rolls back (it failed or was
    /// cancelled) while a child it started is still running, the child is cancelled too and
    /// compensates its own completed steps — when the rollback's replay reaches this call
    /// (a `try_join!` whose other branch fails first never does, and leaves the child
    /// running). A run of the id that this parent did not start is left alone.
    pub async fn child<W: crate::Workflow>(
        &self,
        id: impl Into<String>,
        input: &W::Input,
    ) -> Result<W::Output, FlowError> {
        let id = id.into();
        let key = match self.claim_key("child", Some(&id)) {
            Ok(key) => key,
            Err(message) => return self.halt(Halt::Replay(message)).await,
        };
        let entry = match self.journaled(&key) {
            Some(entry) => entry,
            None => {
                if let Some(refused) = self.refused_while_rolling_back(&key) {
                    // A child started in an earlier attempt and still running is cancelled
                    // with its parent: it rolls back its own completed steps.
                    let reason =
                        format!("cancelled: its parent `{}` is rolling back", self.inner.run);
                    if let Err(e) = self
                        .inner
                        .store
                        .cancel_child(id.clone(), self.inner.run.clone(), W::KIND, reason)
                        .await
                    {
                        tracing::warn!(run = %self.inner.run, child = %id, error = %e, "cancelling a child failed");
                        return self.halt(Halt::Store(e)).await;
                    }
                    return Err(refused);
                }
                let input = match serde_json::to_value(input) {
                    Ok(v) => v,
                    Err(e) => {
                        return Err(FlowError::StepFailed {
                            step: key,
                            attempts: 0,
                            message: format!("the child's input does not serialise: {e}"),
                        });
                    }
                };
                let payload = crate::driver::RunPayload {
                    run: id.clone(),
                    workflow: W::KIND.into(),
                    input,
                    parent: Some(self.inner.run.clone()),
                    deadline_ms: self.inner.deadline_ms,
                };
                let start = match crate::client::run_start(
                    &self.inner.children,
                    payload,
                    None,
                    self.inner.trace.clone(),
                    self.now_ms(),
                ) {
                    Ok(start) => start,
                    Err(message) => return self.halt(Halt::Replay(message)).await,
                };
                let started = match self.inner.store.start_run(start).await {
                    Ok(started) => started,
                    Err(e) => return self.halt(Halt::Store(e)).await,
                };
                let child = started.run;
                if child.kind != W::KIND {
                    let message = format!(
                        "child `{key}` asks for a run of workflow `{}` with id `{id}`, but that id is a run of `{}`",
                        W::KIND,
                        child.kind
                    );
                    return self.halt(Halt::Replay(message)).await;
                }
                let outcome = match child.status {
                    RunStatus::Completed => Ok(child.output.unwrap_or(Value::Null)),
                    RunStatus::Failed | RunStatus::Halted => Err(format!(
                        "child run `{id}` {}: {}",
                        child.status.as_str(),
                        child.error.unwrap_or_default()
                    )),
                    RunStatus::Running | RunStatus::Compensating => {
                        // The child's end wakes this run; the timer is only a safety net
                        // (a crash between the child's end and its wake-up call).
                        return self
                            .suspend_until(self.now_ms().saturating_add(60_000))
                            .await;
                    }
                };
                let now = self.now_ms();
                let entry = JournalEntry {
                    seq: 0,
                    key: key.clone(),
                    kind: EntryKind::Step,
                    outcome,
                    attempts: 1,
                    started_at_ms: child.created_at_ms,
                    finished_at_ms: child.finished_at_ms.unwrap_or(now),
                    // Journaled when the child is over, perhaps resumptions after it
                    // started: what this run had seen then is not known, so the graph
                    // places it by its times.
                    after: None,
                };
                match self.record(entry).await {
                    Ok(stored) => stored,
                    Err(e) => return self.halt(Halt::Store(e)).await,
                }
            }
        };
        let asked = || {
            format!(
                "child `{key}` of type {}",
                std::any::type_name::<W::Output>()
            )
        };
        match (&entry.kind, &entry.outcome) {
            (EntryKind::Step, Ok(v)) => match serde_json::from_value(v.clone()) {
                Ok(out) => Ok(out),
                Err(e) => {
                    let mut mismatch = self.mismatch(asked(), &entry);
                    mismatch
                        .journaled
                        .push_str(&format!(", which does not decode: {e}"));
                    self.halt(Halt::Replay(mismatch.to_string())).await
                }
            },
            (EntryKind::Step, Err(message)) => Err(FlowError::StepFailed {
                step: key,
                attempts: entry.attempts,
                message: message.clone(),
            }),
            _ => {
                let mismatch = self.mismatch(asked(), &entry);
                self.halt(Halt::Replay(mismatch.to_string())).await
            }
        }
    }

    /// The error for a step, wait or child `key` not yet journaled while the run is rolling
    /// back: the run failed in an earlier attempt, its code is replayed only to register
    /// compensations, and it starts nothing new.
    fn refused_while_rolling_back(&self, key: &str) -> Option<FlowError> {
        self.journaled(crate::driver::FAILURE_KEY)
            .map(|_| FlowError::StepFailed {
                step: key.to_owned(),
                attempts: 0,
                message: "not run: the run is rolling back".into(),
            })
    }

    /// The timer journaled under `key`, or a new one ending `duration` from now.
    async fn timer(&self, key: &str, duration: Duration) -> Result<JournalEntry, StoreError> {
        if let Some(entry) = self.journaled(key) {
            return Ok(entry);
        }
        let now = self.now_ms();
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.record(JournalEntry {
            seq: 0,
            key: key.to_owned(),
            kind: EntryKind::Sleep,
            outcome: Ok(Value::from(now.saturating_add(millis))),
            attempts: 0,
            started_at_ms: now,
            finished_at_ms: now,
            after: Some(self.last_seq()),
        })
        .await
    }

    /// The earliest signal named `name`, sent by `deadline`, that no wait of this run took:
    /// its key, its `seq` and its payload.
    fn next_signal(&self, name: &str, deadline: i64) -> Option<(String, i64, Value)> {
        let prefix = signal_prefix(name);
        let state = self.lock();
        let taken: HashSet<&str> = state
            .journal
            .values()
            .filter(|e| e.kind == EntryKind::Signal && !e.key.starts_with("~signal:"))
            .filter_map(|e| e.outcome.as_ref().ok()?.get("signal")?.as_str())
            .collect();
        state
            .journal
            .values()
            .filter(|e| {
                e.kind == EntryKind::Signal
                    && e.key.starts_with(&prefix)
                    && e.finished_at_ms <= deadline
                    && !taken.contains(e.key.as_str())
            })
            .min_by_key(|e| e.seq)
            .and_then(|e| Some((e.key.clone(), e.seq, e.outcome.as_ref().ok()?.clone())))
    }

    /// Runs `steps` concurrently, at most `limit` at a time, and waits until every one has
    /// settled; then returns their outputs in order, or the first error in order. Every
    /// started step finishes (and is journaled) before this returns, so a failure leaves
    /// no step half-run behind the saga's back. Steps get their journal keys in the order
    /// given, before any runs. A `limit` of 0 halts the run (it would wait forever).
    ///
    /// The steps' closures should own what they use (`move` in clones): a workflow's
    /// future must be `Send`, and the compiler cannot yet prove that for a collection of
    /// futures that borrow from the workflow (a step awaited on its own may borrow).
    pub async fn all<T, I>(&self, limit: usize, steps: I) -> Result<Vec<T>, FlowError>
    where
        I: IntoIterator,
        I::Item: IntoFuture<Output = Result<T, FlowError>>,
        <I::Item as IntoFuture>::IntoFuture: Send,
    {
        self.all_settled(limit, steps).await.into_iter().collect()
    }

    /// Like [`all`](Self::all), but returns every step's result.
    pub async fn all_settled<T, I>(&self, limit: usize, steps: I) -> Vec<Result<T, FlowError>>
    where
        I: IntoIterator,
        I::Item: IntoFuture<Output = Result<T, FlowError>>,
        <I::Item as IntoFuture>::IntoFuture: Send,
    {
        if limit == 0 {
            return self
                .halt(Halt::Replay(
                    "FlowContext::all needs a limit of at least 1".into(),
                ))
                .await;
        }
        let futures: Vec<_> = steps.into_iter().map(IntoFuture::into_future).collect();
        futures_util::stream::iter(futures)
            .buffered(limit)
            .collect()
            .await
    }

    /// The journal key for the next use of `name` (with an explicit key, if given), or why
    /// it cannot have one.
    fn claim_key(&self, name: &str, explicit: Option<&str>) -> Result<String, String> {
        valid_name(name)?;
        let mut state = self.lock();
        let key = match explicit {
            Some(k) => {
                if k.is_empty() || k.len() > MAX_NAME_BYTES || k.contains(['[', ']']) {
                    return Err(format!(
                        "explicit step keys must be 1 to {MAX_NAME_BYTES} bytes without `[` or `]`, got {k:?} for step `{name}`"
                    ));
                }
                format!("{name}[{k}]")
            }
            None => {
                let n = state.occurrences.entry(name.to_owned()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    name.to_owned()
                } else {
                    format!("{name}#{n}")
                }
            }
        };
        if !state.used.insert(key.clone()) {
            return Err(format!(
                "the journal key `{key}` was used twice in one run of `{}`: give each use its own explicit key",
                self.inner.run
            ));
        }
        Ok(key)
    }

    fn mismatch(&self, asked: String, entry: &JournalEntry) -> ReplayMismatch {
        let journaled = match &entry.outcome {
            Ok(v) => format!("a {} `{}` with output {v}", entry.kind.as_str(), entry.key),
            Err(e) => format!("a failed {} `{}` ({e})", entry.kind.as_str(), entry.key),
        };
        ReplayMismatch {
            run: self.inner.run.clone(),
            asked,
            journaled,
        }
    }

    /// Records why this resumption must end, and never returns: the driver drops the
    /// workflow's future.
    async fn halt<T>(&self, halt: Halt) -> T {
        {
            let mut state = self.lock();
            if state.halt.is_none() {
                state.halt = Some(halt);
            }
        }
        self.inner.changed.notify_waiters();
        std::future::pending::<T>().await
    }

    /// Resolves when this resumption must end: at once on a halt, or once every branch
    /// waits for a timer and no step is running.
    pub(crate) async fn stopped(&self) -> Stop {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if let Some(halt) = &state.halt {
                    return Stop::Halt(halt.clone());
                }
                if let (Some(wake_at_ms), 0) = (state.wake_at_ms, state.in_flight) {
                    return Stop::Suspend { wake_at_ms };
                }
            }
            notified.await;
        }
    }

    /// A halt recorded while the workflow's code went on (it swallowed a step's error).
    pub(crate) fn halted(&self) -> Option<Halt> {
        self.lock().halt.clone()
    }

    /// The compensations registered by completed steps, latest completed first.
    pub(crate) fn take_compensations(&self) -> Vec<Registered> {
        let mut regs = std::mem::take(&mut self.lock().compensations);
        regs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        regs
    }

    pub(crate) fn journaled(&self, key: &str) -> Option<JournalEntry> {
        self.lock().journal.get(key).cloned()
    }

    /// The `seq` of the latest entry this run's code has seen journaled: what an entry
    /// starting now comes after ([`JournalEntry::after`]).
    pub(crate) fn last_seq(&self) -> i64 {
        self.lock().last_seq
    }

    pub(crate) async fn record(&self, entry: JournalEntry) -> Result<JournalEntry, StoreError> {
        let stored = self
            .inner
            .store
            .record(self.inner.run.clone(), entry)
            .await?;
        let mut state = self.lock();
        state.last_seq = state.last_seq.max(stored.seq);
        state.journal.insert(stored.key.clone(), stored.clone());
        Ok(stored)
    }
}
