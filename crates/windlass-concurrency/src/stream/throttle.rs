//! Throttle: at most one value per window, leading, trailing or both.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// Which values of a window a throttle emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleMode {
    /// The first value, at once; the rest of the window is ignored.
    Leading,
    /// The last value of the window, when it ends.
    Trailing,
    /// The first at once, and the last (if another came) when the window ends.
    Both,
}

pin_project_lite::pin_project! {
    /// See [`StreamOps::throttle`](super::StreamOps::throttle).
    #[must_use = "streams do nothing unless polled"]
    pub struct Throttle<S: Stream> {
        #[pin]
        inner: S,
        #[pin]
        sleep: Sleep,
        window: Duration,
        mode: ThrottleMode,
        open: bool,
        trailing: Option<S::Item>,
        done: bool,
    }
}

impl<S: Stream> Throttle<S> {
    pub(super) fn new(inner: S, window: Duration, mode: ThrottleMode) -> Self {
        Throttle {
            inner,
            sleep: tokio::time::sleep(Duration::ZERO),
            window,
            mode,
            open: false,
            trailing: None,
            done: false,
        }
    }
}

impl<S: Stream> Stream for Throttle<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut this = self.project();
        loop {
            if !*this.done {
                match this.inner.as_mut().poll_next(cx) {
                    Poll::Ready(Some(item)) => {
                        if !*this.open {
                            *this.open = true;
                            this.sleep.as_mut().reset(Instant::now() + *this.window);
                            if *this.mode != ThrottleMode::Trailing {
                                return Poll::Ready(Some(item));
                            }
                            *this.trailing = Some(item);
                        } else if *this.mode != ThrottleMode::Leading {
                            *this.trailing = Some(item);
                        }
                        continue;
                    }
                    Poll::Ready(None) => *this.done = true,
                    Poll::Pending => {}
                }
            }
            if *this.done {
                // The input ended: a waiting trailing value is still emitted, then the end.
                return Poll::Ready(this.trailing.take());
            }
            if *this.open && this.sleep.as_mut().poll(cx).is_ready() {
                *this.open = false;
                if let Some(item) = this.trailing.take() {
                    // A trailing emission opens the next window (as in RxJS).
                    *this.open = true;
                    this.sleep.as_mut().reset(Instant::now() + *this.window);
                    return Poll::Ready(Some(item));
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}
