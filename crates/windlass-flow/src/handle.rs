//! [`RunHandle`]: one run, followed from outside it: its result, status, journal, and
//! cancel. Got from [`Flows::start`](crate::Flows::start) or
//! [`Flows::handle`](crate::Flows::handle); it holds only the run's id, so it may be
//! dropped and got again at any time.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::context::ChildJobs;
use crate::error::{CancelError, CancelOutcome, WaitError};
use crate::store::{FlowStore, JournalEntry, RunRecord, RunStatus};

/// A handle on one run: await its result, read its status and journal.
pub struct RunHandle<S, O> {
    store: Arc<S>,
    /// Where a new job for the run goes, should a cancel find it stranded.
    jobs: ChildJobs,
    id: String,
    _out: PhantomData<fn() -> O>,
}

impl<S, O> RunHandle<S, O> {
    pub(crate) fn new(store: Arc<S>, jobs: ChildJobs, id: String) -> Self {
        RunHandle {
            store,
            jobs,
            id,
            _out: PhantomData,
        }
    }
}

impl<S, O> std::fmt::Debug for RunHandle<S, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle").field("id", &self.id).finish()
    }
}

impl<S: FlowStore, O: DeserializeOwned> RunHandle<S, O> {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run as stored now.
    pub async fn record(&self) -> Result<RunRecord, WaitError> {
        self.store
            .run(self.id.clone())
            .await?
            .ok_or_else(|| WaitError::NotFound(self.id.clone()))
    }

    /// Cancels the run, as [`Flows::cancel`](crate::Flows::cancel) does.
    pub async fn cancel(&self, reason: impl Into<String>) -> Result<CancelOutcome, CancelError> {
        crate::client::cancel(&*self.store, &self.jobs, self.id.clone(), reason.into()).await
    }

    /// Where the run is.
    pub async fn status(&self) -> Result<RunStatus, WaitError> {
        Ok(self.record().await?.status)
    }

    /// The run's journal: its finished steps, timers and compensations, in order.
    pub async fn journal(&self) -> Result<Vec<JournalEntry>, WaitError> {
        Ok(self.store.journal(self.id.clone()).await?)
    }

    /// Waits up to `timeout` for the run to finish, reading it every `poll`; returns its
    /// output, or why there is none.
    pub async fn result(&self, timeout: Duration, poll: Duration) -> Result<O, WaitError> {
        let deadline = windlass_policy::time::saturating_add(tokio::time::Instant::now(), timeout);
        loop {
            let run = self.record().await?;
            match run.status {
                RunStatus::Completed => {
                    let output = run.output.unwrap_or(serde_json::Value::Null);
                    return serde_json::from_value(output).map_err(|e| WaitError::Output {
                        run: self.id.clone(),
                        message: e.to_string(),
                    });
                }
                RunStatus::Failed => {
                    return Err(WaitError::Failed(run.error.unwrap_or_default()));
                }
                RunStatus::Halted => {
                    return Err(WaitError::Halted(run.error.unwrap_or_default()));
                }
                RunStatus::Running | RunStatus::Compensating => {
                    // A run whose job is over can never finish: say so instead of waiting.
                    let job = self.store.get(run.job).await?.map(|j| j.state);
                    if let Some(state) = job.filter(|s| s.is_terminal()) {
                        let again = self.record().await?;
                        if !again.status.is_terminal() {
                            return Err(WaitError::Stranded {
                                run: self.id.clone(),
                                job_state: state.as_str(),
                                status: again.status.as_str(),
                            });
                        }
                        continue;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout(self.id.clone()));
            }
            tokio::time::sleep(poll).await;
        }
    }
}
