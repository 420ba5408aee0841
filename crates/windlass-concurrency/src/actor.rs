//! Supervised actors: a task that owns its state and is reached only through a bounded
//! mailbox.
//!
//! Shared state behind locks invites deadlocks, lock contention and torn updates; the BEAM
//! answer is an *actor*: one task owns the state, others send it messages, and a supervisor
//! restarts it with fresh state when it crashes. [`spawn_actor`] does that on tokio. The
//! mailbox is bounded, so a slow actor pushes back on its senders
//! ([`ActorRef::send`] waits; [`ActorRef::try_send`] fails at once) instead of growing
//! without limit. The mailbox survives restarts: messages queued behind a crash are handled
//! by the restarted actor. The message being handled when the actor failed is lost (the
//! Erlang rule), and the failure is logged and counted.
//!
//! The actor stops when every [`ActorRef`] is dropped and its mailbox is drained.
//!
//! ```
//! use tokio::sync::oneshot;
//! use windlass_concurrency::{Actor, Supervisor, spawn_actor};
//!
//! enum Msg { Add(u64), Get(oneshot::Sender<u64>) }
//!
//! struct Counter(u64);
//!
//! impl Actor for Counter {
//!     type Message = Msg;
//!     type Error = std::convert::Infallible;
//!     async fn handle(&mut self, msg: Msg) -> Result<(), Self::Error> {
//!         match msg {
//!             Msg::Add(n) => self.0 += n,
//!             Msg::Get(reply) => { let _ = reply.send(self.0); }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let supervisor = Supervisor::builder().build().unwrap();
//! let (counter, _task) = spawn_actor("counter", &supervisor, 64, || Counter(0));
//! counter.send(Msg::Add(2)).await.unwrap();
//! counter.send(Msg::Add(3)).await.unwrap();
//! assert_eq!(counter.ask(Msg::Get).await.unwrap(), 5);
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::supervisor::{Escalated, Supervisor};
use windlass_policy::{ClassifiedError, ErrorClass};

/// A task that owns its state and handles one message at a time.
pub trait Actor: Send + 'static {
    /// What it is sent.
    type Message: Send + 'static;
    /// A failure; the supervisor restarts the actor with fresh state.
    type Error: Display + Send + 'static;
    /// Handles one message.
    fn handle(
        &mut self,
        msg: Self::Message,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The actor has stopped (escalated, or its task was aborted); the message comes back.
#[derive(thiserror::Error)]
#[error("the actor has stopped")]
pub struct ActorStopped<M>(pub M);

// By hand, so that messages need not be `Debug`.
impl<M> std::fmt::Debug for ActorStopped<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorStopped(..)")
    }
}

impl<M> std::fmt::Debug for TrySendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "Full(..)",
            TrySendError::Stopped(_) => "Stopped(..)",
        })
    }
}

/// Why [`ActorRef::try_send`] failed; the message comes back.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError<M> {
    /// The mailbox is full: the actor is behind.
    #[error("the actor's mailbox is full")]
    Full(M),
    /// The actor has stopped.
    #[error("the actor has stopped")]
    Stopped(M),
}

/// A full mailbox is transient (the actor is behind); a stopped actor is gone for good.
impl<M> ClassifiedError for TrySendError<M> {
    fn error_class(&self) -> ErrorClass {
        match self {
            TrySendError::Full(_) => ErrorClass::Transient,
            TrySendError::Stopped(_) => ErrorClass::Permanent,
        }
    }
}

/// Why [`ActorRef::ask`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// The actor has stopped before the message was delivered.
    #[error("the actor has stopped")]
    Stopped,
    /// The actor dropped the reply channel (it failed while handling the message).
    #[error("the actor failed while handling the request")]
    NoReply,
}

/// A stopped actor is gone for good (permanent); one that failed while handling the
/// request may handle it after its restart (transient).
impl ClassifiedError for AskError {
    fn error_class(&self) -> ErrorClass {
        match self {
            AskError::Stopped => ErrorClass::Permanent,
            AskError::NoReply => ErrorClass::Transient,
        }
    }
}

/// A handle for sending to an actor. Cheap to clone.
#[derive(Debug)]
pub struct ActorRef<M> {
    tx: mpsc::Sender<M>,
}

impl<M> Clone for ActorRef<M> {
    fn clone(&self) -> Self {
        ActorRef {
            tx: self.tx.clone(),
        }
    }
}

impl<M: Send + 'static> ActorRef<M> {
    /// Sends a message, waiting while the mailbox is full (backpressure).
    pub async fn send(&self, msg: M) -> Result<(), ActorStopped<M>> {
        self.tx.send(msg).await.map_err(|e| ActorStopped(e.0))
    }

    /// Sends a message if the mailbox has room now.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) => TrySendError::Full(m),
            mpsc::error::TrySendError::Closed(m) => TrySendError::Stopped(m),
        })
    }

    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn ask<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> M) -> Result<R, AskError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))
            .await
            .map_err(|_| AskError::Stopped)?;
        answer.await.map_err(|_| AskError::NoReply)
    }

    /// Free places in the mailbox.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

/// Spawns an actor under `supervisor` with a mailbox of `mailbox` messages (at least 1).
/// `make` builds its state, again after each failure.
///
/// # Panics
/// Outside a tokio runtime, like `tokio::spawn`.
#[track_caller]
pub fn spawn_actor<A, F>(
    name: &'static str,
    supervisor: &Supervisor,
    mailbox: usize,
    mut make: F,
) -> (ActorRef<A::Message>, JoinHandle<Result<(), Escalated>>)
where
    A: Actor,
    F: FnMut() -> A + Send + 'static,
{
    let (tx, rx) = mpsc::channel(mailbox.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let handle = supervisor.spawn(name, move || {
        let mut actor = make();
        let rx = rx.clone();
        async move {
            // Only one run of the actor exists at a time, so this lock is never contended;
            // it lets the mailbox outlive a crashed run.
            let mut rx = rx.lock().await;
            while let Some(msg) = rx.recv().await {
                actor.handle(msg).await?;
            }
            Ok::<(), A::Error>(())
        }
    });
    (ActorRef { tx }, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use windlass_policy::{Backoff, Jitter};

    enum Msg {
        Add(u64),
        Crash,
        Get(oneshot::Sender<u64>),
    }

    struct Acc(u64);

    impl Actor for Acc {
        type Message = Msg;
        type Error = &'static str;
        async fn handle(&mut self, msg: Msg) -> Result<(), &'static str> {
            match msg {
                Msg::Add(n) => self.0 += n,
                Msg::Crash => return Err("asked to crash"),
                Msg::Get(r) => {
                    let _ = r.send(self.0);
                }
            }
            Ok(())
        }
    }

    fn supervisor() -> Supervisor {
        Supervisor::builder()
            .max_restarts(2)
            .backoff(
                Backoff::Constant(Duration::from_millis(1)),
                Jitter::None,
                Duration::from_millis(1),
            )
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn restarted_with_fresh_state_and_mailbox_kept() {
        let (a, _h) = spawn_actor("acc", &supervisor(), 16, || Acc(0));
        a.send(Msg::Add(5)).await.unwrap();
        a.send(Msg::Crash).await.unwrap();
        a.send(Msg::Add(1)).await.unwrap(); // queued behind the crash: handled after restart
        assert_eq!(
            a.ask(Msg::Get).await.unwrap(),
            1,
            "fresh state after the restart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_escalates_and_senders_learn_it() {
        let (a, h) = spawn_actor("acc-loop", &supervisor(), 16, || Acc(0));
        for _ in 0..3 {
            a.send(Msg::Crash).await.unwrap();
        }
        let esc = h.await.unwrap().unwrap_err();
        assert_eq!(esc.restarts, 2);
        assert!(matches!(
            a.send(Msg::Add(1)).await,
            Err(ActorStopped(Msg::Add(1)))
        ));
        assert_eq!(a.ask(Msg::Get).await.unwrap_err(), AskError::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_mailbox_pushes_back() {
        let (a, _h) = spawn_actor("acc-full", &supervisor(), 2, || Acc(0));
        // The actor has not run yet on this single thread: two messages fill its mailbox.
        a.try_send(Msg::Add(1)).unwrap();
        a.try_send(Msg::Add(1)).unwrap();
        assert!(matches!(
            a.try_send(Msg::Add(1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(a.ask(Msg::Get).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_every_ref_is_dropped() {
        let (a, h) = spawn_actor("acc-stop", &supervisor(), 4, || Acc(0));
        a.send(Msg::Add(1)).await.unwrap();
        drop(a);
        assert!(h.await.unwrap().is_ok());
    }
}
