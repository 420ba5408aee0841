//! Fallback: answer with something sensible when the real call fails.
//!
//! A stale price, a default avatar or an empty recommendation list is often better than an
//! error page. [`Fallback`] replaces a failure with the result of a fallback function —
//! but only failures that mean "the dependency is unavailable" (transient errors, timeouts,
//! rejections, exhausted retries of transient errors). A permanent or cancelled operation
//! error is the caller's business and passes through untouched, unless [`Fallback::when`]
//! says otherwise.
//!
//! **Cancellation:** a dropped call is not a failure; the fallback never runs for it.
//!
//! ```
//! use windlass_policy::{Fallback, PolicyExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let fallback = Fallback::value(vec!["cached".to_string()]);
//! let out = fallback.call(|| async { Err::<Vec<String>, _>("upstream down") }).await;
//! assert_eq!(out.unwrap(), vec!["cached".to_string()]);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::classify::ErrorClass;
use crate::compose::Compose;
use crate::context::Context;
use crate::error::PolicyError;
use crate::policy::Policy;

type FallbackFn<T, E> = dyn Fn(PolicyError<E>) -> Result<T, PolicyError<E>> + Send + Sync;

/// Replaces handled failures with a fallback result. Cheap to clone.
pub struct Fallback<T, E> {
    f: Arc<FallbackFn<T, E>>,
    handles: fn(&PolicyError<E>) -> bool,
}

impl<T, E> Clone for Fallback<T, E> {
    fn clone(&self) -> Self {
        Fallback {
            f: self.f.clone(),
            handles: self.handles,
        }
    }
}

impl<T, E> std::fmt::Debug for Fallback<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback").finish_non_exhaustive()
    }
}

/// The default rule: fall back unless the root cause is a permanent or cancelled operation
/// error.
pub fn unavailable<E>(e: &PolicyError<E>) -> bool {
    match e {
        PolicyError::Operation { class, .. } => {
            !matches!(class, ErrorClass::Permanent | ErrorClass::Cancelled)
        }
        PolicyError::RetriesExhausted { last, .. } => unavailable(last),
        PolicyError::Timeout(_) | PolicyError::DeadlineExceeded | PolicyError::Rejected(_) => true,
    }
}

impl<T, E> Fallback<T, E> {
    /// Applies the fallback to a failure, if the rule says it handles it.
    pub fn recover(&self, e: PolicyError<E>) -> Result<T, PolicyError<E>> {
        if (self.handles)(&e) {
            tracing::debug!(error = e.kind(), "fallback used");
            (self.f)(e)
        } else {
            Err(e)
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> Fallback<T, E> {
    /// Calls `f` with the failure; `f` may return a substitute or another error.
    pub fn new(
        f: impl Fn(PolicyError<E>) -> Result<T, PolicyError<E>> + Send + Sync + 'static,
    ) -> Self {
        Fallback {
            f: Arc::new(f),
            handles: unavailable::<E>,
        }
    }

    /// Always substitutes a clone of `value`.
    pub fn value(value: T) -> Self
    where
        T: Clone + Sync,
    {
        Fallback::new(move |_| Ok(value.clone()))
    }

    /// Replaces the rule deciding which failures fall back.
    pub fn when(mut self, handles: fn(&PolicyError<E>) -> bool) -> Self {
        self.handles = handles;
        self
    }
}

impl<T, E> Compose for Fallback<T, E> {}

impl<T: Send, E: Send> Policy<T, E> for Fallback<T, E> {
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
            match op(cx).await {
                Ok(v) => Ok(v),
                Err(e) => self.recover(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn permanent_errors_pass_through() {
        let f = Fallback::value(0u32);
        let out = f
            .call_with(
                Context::new(),
                &|_: &&str| ErrorClass::Permanent,
                |_| async { Err("404") },
            )
            .await;
        assert!(matches!(
            out,
            Err(PolicyError::Operation { error: "404", .. })
        ));
        let out = f.call(|| async { Err::<u32, _>("503") }).await;
        assert_eq!(out.unwrap(), 0);
    }

    #[tokio::test]
    async fn timeouts_and_rejections_fall_back_and_custom_rule_applies() {
        let f = Fallback::new(|e: PolicyError<&str>| Ok(e.kind().to_string()));
        let out = f
            .execute(Context::new(), &|_| async {
                Err(PolicyError::Timeout(Duration::from_secs(1)))
            })
            .await;
        assert_eq!(out.unwrap(), "timeout");
        let never = f.clone().when(|_| false);
        let out = never.call(|| async { Err::<String, _>("x") }).await;
        assert!(out.is_err());
    }
}
