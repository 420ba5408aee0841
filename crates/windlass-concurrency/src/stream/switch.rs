//! Switch to latest: each new value cancels the work started for the previous one.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

pin_project_lite::pin_project! {
    /// See [`StreamOps::switch_latest`](super::StreamOps::switch_latest).
    #[must_use = "streams do nothing unless polled"]
    pub struct SwitchLatest<S, F, Fut> {
        #[pin]
        inner: S,
        f: F,
        #[pin]
        current: Option<Fut>,
        done: bool,
    }
}

impl<S, F, Fut> SwitchLatest<S, F, Fut> {
    pub(super) fn new(inner: S, f: F) -> Self {
        SwitchLatest {
            inner,
            f,
            current: None,
            done: false,
        }
    }
}

impl<S, F, Fut> Stream for SwitchLatest<S, F, Fut>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: std::future::Future,
{
    type Item = Fut::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Fut::Output>> {
        let mut this = self.project();
        // Take the newest value available; each replaces (drops) the work before it.
        while !*this.done {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => this.current.set(Some((this.f)(item))),
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => break,
            }
        }
        if let Some(fut) = this.current.as_mut().as_pin_mut() {
            if let Poll::Ready(out) = fut.poll(cx) {
                this.current.set(None);
                return Poll::Ready(Some(out));
            }
            return Poll::Pending;
        }
        if *this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
