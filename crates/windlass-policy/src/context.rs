//! The `Policy` trait, the per-call [`Context`], and composition.
//!
//! A policy wraps an *operation*: a closure that starts one attempt of the work and returns
//! its future. Policies that repeat the work (retry, hedge) call the closure again, so it
//! must be `Fn`, not `FnOnce`. Each call receives a [`Context`] that carries what outer
//! policies decided — the deadline, the priority, whether the work is idempotent, which
//! attempt this is — so an inner policy can respect it (a retry never sleeps past an outer
//! deadline).
//!
//! Policies compose with [`Compose::then`]: `a.then(b)` runs `b` inside `a`. Composition
//! is static (no boxing, no allocation); an `Option<P>` is a policy that is present or not.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Compose, PolicyExt, Retry, Timeout};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = Retry::builder().max_attempts(3).build().unwrap()
//!     .then(Timeout::new(Duration::from_secs(1)).unwrap());
//! let out: Result<u32, _> = policy.call(|| async { Ok::<_, std::io::Error>(7) }).await;
//! assert_eq!(out.unwrap(), 7);
//! # }
//! ```

use std::future::Future;

use tokio::time::Instant;

use crate::classify::{Classify, ErrorClass};
use crate::error::PolicyError;

/// How important a call is. Load shedding drops lower priorities first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Shed first: prefetches, analytics, retries of background work.
    Low = 0,
    /// Ordinary traffic.
    #[default]
    Normal = 1,
    /// User-facing work that should survive moderate overload.
    High = 2,
    /// Never shed before the limit itself is reached: health checks, payments.
    Critical = 3,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// A short lowercase name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// What outer policies tell inner ones about the current call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    deadline: Option<Instant>,
    priority: Priority,
    idempotent: bool,
    attempt: u32,
    /// The attempt's start, once a policy has read the clock: the policies of one attempt
    /// share one clock read instead of taking one each.
    now: Option<Instant>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// A context with no deadline, normal priority, idempotent work, attempt 1.
    pub fn new() -> Self {
        Context {
            deadline: None,
            priority: Priority::Normal,
            idempotent: true,
            attempt: 1,
            now: None,
        }
    }

    /// The current attempt's start time: the clock as first read by a policy for this
    /// attempt, or read now if none has. Policies pass it inward with
    /// [`with_now`](Self::with_now) so that one attempt costs one clock read; a policy that
    /// waits (for a permit or a slot) passes [`without_now`](Self::without_now) instead, and
    /// a new attempt starts without one.
    pub fn now(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }

    /// This context with the attempt's start time known.
    pub fn with_now(mut self, now: Instant) -> Self {
        self.now = Some(now);
        self
    }

    /// This context with the start time forgotten (after a wait, it is stale).
    pub fn without_now(mut self) -> Self {
        self.now = None;
        self
    }

    /// The instant by which the whole operation must finish, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// This context with the deadline tightened to `deadline` (a later deadline than the
    /// current one is ignored: an inner policy can only shorten the budget).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(match self.deadline {
            Some(current) if current <= deadline => current,
            _ => deadline,
        });
        self
    }

    /// The call's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// This context with another priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Whether running the work twice is safe. Hedging runs only idempotent work, and a
    /// retry of non-idempotent work happens only when the failed attempt never reached the
    /// other side (it was rejected locally).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// This context marked idempotent or not.
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Which attempt this is, starting at 1 (set by retry and hedge).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This context for the given attempt number (a new attempt reads the clock afresh).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self.now = None;
        self
    }
}

/// A resilience policy: runs an operation under some rule.
///
/// `op` starts one attempt; the policy may call it zero times (a rejection), once, or
/// several times (retry, hedge). Dropping the returned future cancels whatever is in
/// flight: the attempt, a backoff sleep, a wait for a permit. Nothing is spawned, so
/// nothing leaks, and a dropped call is never retried or counted as a failure.
pub trait Policy<T: Send, E: Send>: Sync {
    /// Runs `op` under this policy.
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send;

    /// The class this policy gives an operation's error, if it carries a classifier (a
    /// [`Pipeline`](crate::Pipeline) does; a stack asks its layers, outermost first).
    /// [`PolicyExt::call`] and [`PolicyExt::call_in`] classify with it, so a pipeline's
    /// classifier applies however the pipeline is called: directly, behind an `Arc`, or
    /// nested in a stack. `None` (the default) means "no opinion": the error is transient.
    fn class_of(&self, error: &E) -> Option<ErrorClass> {
        let _ = error;
        None
    }
}

/// Composition: `outer.then(inner)` runs `inner` inside `outer`, so
/// `retry.then(breaker)` retries calls through the breaker. Implemented by every policy type.
pub trait Compose: Sized {
    /// Runs `inner` inside `self`.
    fn then<P: Compose>(self, inner: P) -> Stack<Self, P> {
        Stack { outer: self, inner }
    }
}

impl<A: Compose, B: Compose> Compose for Stack<A, B> {}
impl<P: Compose> Compose for Option<P> {}
impl<P: Compose> Compose for std::sync::Arc<P> {}
impl Compose for Identity {}

/// How to call an operation through any [`Policy`]: one name per idea.
///
/// - [`call`](Self::call): a fresh [`Context`], errors classified by the policy's own
///   classifier ([`Policy::class_of`]; transient when it has none).
/// - [`call_in`](Self::call_in): the same, from a given context (priority, idempotence,
///   deadline); the operation receives each attempt's context.
/// - [`call_with`](Self::call_with): from a given context with an explicit classifier,
///   which overrides the policy's own.
pub trait PolicyExt<T: Send, E: Send>: Policy<T, E> {
    /// Calls `op` under this policy, classifying its errors with the policy's own
    /// classifier.
    fn call<F, Fut>(&self, op: F) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        self.call_in(Context::new(), move |_| op())
    }

    /// Calls `op` under this policy from `cx`, classifying its errors with the policy's own
    /// classifier. `op` receives the context of each attempt.
    fn call_in<F, Fut>(
        &self,
        cx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        F: Fn(Context) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        async move {
            let own = OwnClassifier(self, std::marker::PhantomData);
            self.call_with(cx, &own, op).await
        }
    }

    /// Calls `op` under this policy, starting from `cx`, classifying its errors with
    /// `classifier` (instead of the policy's own). `op` receives the context of each
    /// attempt.
    fn call_with<C, F, Fut>(
        &self,
        cx: Context,
        classifier: &C,
        op: F,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        C: Classify<E>,
        F: Fn(Context) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        async move {
            let classified = |cx: Context| {
                let attempt = op(cx);
                async move {
                    attempt.await.map_err(|error| {
                        let class = classifier.classify(&error);
                        PolicyError::Operation { error, class }
                    })
                }
            };
            self.execute(cx, &classified).await
        }
    }
}

impl<T: Send, E: Send, P: Policy<T, E>> PolicyExt<T, E> for P {}

/// A policy's own classifier, transient when it has none.
struct OwnClassifier<'a, P: ?Sized, T>(&'a P, std::marker::PhantomData<fn() -> T>);

impl<T: Send, E: Send, P: Policy<T, E> + ?Sized> Classify<E> for OwnClassifier<'_, P, T> {
    fn classify(&self, error: &E) -> ErrorClass {
        self.0.class_of(error).unwrap_or(ErrorClass::Transient)
    }
}

/// Two policies, `inner` running inside `outer`. Built by [`Compose::then`].
#[derive(Debug, Clone)]
pub struct Stack<A, B> {
    outer: A,
    inner: B,
}

impl<A, B> Stack<A, B> {
    /// The outer policy.
    pub fn outer(&self) -> &A {
        &self.outer
    }

    /// The inner policy.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<T: Send, E: Send, A: Policy<T, E>, B: Policy<T, E>> Policy<T, E> for Stack<A, B> {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        async move {
            let inner = |cx: Context| self.inner.execute(cx, op);
            self.outer.execute(cx, &inner).await
        }
    }

    fn class_of(&self, error: &E) -> Option<ErrorClass> {
        self.outer
            .class_of(error)
            .or_else(|| self.inner.class_of(error))
    }
}

/// An optional policy: `None` runs the operation directly.
impl<T: Send, E: Send, P: Policy<T, E>> Policy<T, E> for Option<P> {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        async move {
            match self {
                Some(policy) => policy.execute(cx, op).await,
                None => op(cx).await,
            }
        }
    }

    fn class_of(&self, error: &E) -> Option<ErrorClass> {
        self.as_ref().and_then(|p| p.class_of(error))
    }
}

/// A shared policy is still a policy.
impl<T: Send, E: Send, P: Policy<T, E> + Send> Policy<T, E> for std::sync::Arc<P> {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        (**self).execute(cx, op)
    }

    fn class_of(&self, error: &E) -> Option<ErrorClass> {
        (**self).class_of(error)
    }
}

/// The policy that does nothing: runs the operation once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<T: Send, E: Send> Policy<T, E> for Identity {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        op(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_only_tightens() {
        let now = Instant::now();
        let cx = Context::new().with_deadline(now + Duration::from_secs(5));
        let tighter = cx.with_deadline(now + Duration::from_secs(1));
        assert_eq!(tighter.deadline(), Some(now + Duration::from_secs(1)));
        let looser = tighter.with_deadline(now + Duration::from_secs(9));
        assert_eq!(looser.deadline(), Some(now + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn identity_and_none_call_once() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let op = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>("no") }
        };
        let none: Option<Identity> = None;
        assert!(none.call(op).await.is_err());
        assert!(Identity.call(op).await.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
