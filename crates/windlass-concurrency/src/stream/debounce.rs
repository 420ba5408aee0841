//! Debounce (trailing): emit a value only once the input has been quiet for a while.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// See [`StreamOps::debounce`](super::StreamOps::debounce).
    #[must_use = "streams do nothing unless polled"]
    pub struct Debounce<S: Stream> {
        #[pin]
        inner: S,
        #[pin]
        sleep: Sleep,
        quiet: Duration,
        pending: Option<S::Item>,
        is_error: fn(&S::Item) -> bool,
        done: bool,
    }
}

impl<S: Stream> Debounce<S> {
    pub(super) fn new(inner: S, quiet: Duration, is_error: fn(&S::Item) -> bool) -> Self {
        Debounce {
            inner,
            sleep: tokio::time::sleep(Duration::ZERO),
            quiet,
            pending: None,
            is_error,
            done: false,
        }
    }
}

impl<S: Stream> Stream for Debounce<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut this = self.project();
        while !*this.done {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if (this.is_error)(&item) {
                        // An error passes at once; the value it interrupted is dropped.
                        *this.pending = None;
                        return Poll::Ready(Some(item));
                    }
                    *this.pending = Some(item);
                    this.sleep.as_mut().reset(Instant::now() + *this.quiet);
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => break,
            }
        }
        if *this.done {
            // The input ended: flush the last value, then end.
            return Poll::Ready(this.pending.take());
        }
        if this.pending.is_some() && this.sleep.poll(cx).is_ready() {
            return Poll::Ready(this.pending.take());
        }
        Poll::Pending
    }
}
