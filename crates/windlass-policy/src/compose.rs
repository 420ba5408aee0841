//! Composition: [`Compose::then`] nests one policy inside another.
//!
//! `a.then(b)` runs `b` inside `a`. Composition is static (no boxing, no allocation); an
//! `Option<P>` is a policy that is present or not, an `Arc<P>` a shared one, and
//! [`Identity`] the policy that does nothing. For the documented default order of every
//! policy at once, use [`Pipeline`](crate::Pipeline) instead.
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

use crate::classify::{Classify, ErrorClass};
use crate::context::Context;
use crate::error::PolicyError;
use crate::policy::Policy;

/// Composition: `outer.then(inner)` runs `inner` inside `outer`, so
/// `retry.then(breaker)` retries calls through the breaker. Implemented by every policy type.
pub trait Compose: Sized {
    /// Runs `inner` inside `self`.
    fn then<P: Compose>(self, inner: P) -> Stack<Self, P> {
        Stack { outer: self, inner }
    }

    /// This policy carrying `classifier` as its own ([`Policy::class_of`]), so that
    /// [`PolicyExt::call`](crate::PolicyExt::call), a tower layer and any stack it is nested
    /// in classify the operation's errors with it. It overrides the classifier of a
    /// pipeline inside.
    fn classified_by<C>(self, classifier: C) -> Classified<Self, C> {
        Classified {
            policy: self,
            classifier,
        }
    }
}

impl<A: Compose, B: Compose> Compose for Stack<A, B> {}
impl<P: Compose> Compose for Option<P> {}
impl<P: Compose> Compose for std::sync::Arc<P> {}
impl Compose for Identity {}
impl<P, C> Compose for Classified<P, C> {}

/// A policy with a classifier of its own. Built by [`Compose::classified_by`].
#[derive(Debug, Clone)]
pub struct Classified<P, C> {
    policy: P,
    classifier: C,
}

impl<P, C> Classified<P, C> {
    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<T: Send, E: Send, P: Policy<T, E>, C: Classify<E>> Policy<T, E> for Classified<P, C> {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        self.policy.execute(cx, op)
    }

    fn class_of(&self, error: &E) -> Option<ErrorClass> {
        Some(self.classifier.classify(error))
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
    use crate::policy::PolicyExt;
    use crate::{Backoff, Retry};

    #[tokio::test(start_paused = true)]
    async fn a_classified_policy_classifies_however_it_is_called() {
        let retry = Retry::builder()
            .max_attempts(5)
            .backoff(Backoff::Constant(std::time::Duration::from_millis(1)))
            .build()
            .unwrap();
        let policy = std::sync::Arc::new(retry.classified_by(|_: &&str| ErrorClass::Permanent));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let op = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>("404") }
        };
        // Directly, behind an Arc, and nested in a stack: one attempt each (permanent).
        let out = policy.call(op).await;
        assert_eq!(out.unwrap_err().class(), ErrorClass::Permanent);
        let _ = Identity.then(policy.clone()).call(op).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
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
