//! Distinct until changed: drop a value equal (or equal by key) to the one before it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

pin_project_lite::pin_project! {
    /// See [`StreamOps::distinct_until_changed_by`](super::StreamOps::distinct_until_changed_by).
    #[must_use = "streams do nothing unless polled"]
    pub struct DistinctUntilChanged<S, F, K> {
        #[pin]
        inner: S,
        key: F,
        last: Option<K>,
    }
}

impl<S, F, K> DistinctUntilChanged<S, F, K> {
    pub(super) fn new(inner: S, key: F) -> Self {
        DistinctUntilChanged {
            inner,
            key,
            last: None,
        }
    }
}

impl<S, F, K> Stream for DistinctUntilChanged<S, F, K>
where
    S: Stream,
    F: FnMut(&S::Item) -> K,
    K: PartialEq,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut this = self.project();
        loop {
            match std::task::ready!(this.inner.as_mut().poll_next(cx)) {
                Some(item) => {
                    let k = (this.key)(&item);
                    if this.last.as_ref() != Some(&k) {
                        *this.last = Some(k);
                        return Poll::Ready(Some(item));
                    }
                }
                None => return Poll::Ready(None),
            }
        }
    }
}
