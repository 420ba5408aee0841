//! The [`Policy`] trait and the ways to call through one ([`PolicyExt`]).
//!
//! A policy wraps an *operation*: a closure that starts one attempt of the work and returns
//! its future. Policies that repeat the work (retry, hedge) call the closure again, so it
//! must be `Fn`, not `FnOnce`. Each call receives a [`Context`] from the policy outside it.
//! Implement [`Policy`] for a rule of your own; call any policy with [`PolicyExt::call`].
//!
//! ```
//! use windlass_policy::{Identity, PolicyExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let out: Result<u32, _> = Identity.call(|| async { Ok::<_, std::io::Error>(7) }).await;
//! assert_eq!(out.unwrap(), 7);
//! # }
//! ```

use std::future::Future;

use crate::classify::{Classify, ErrorClass};
use crate::context::Context;
use crate::error::PolicyError;

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
