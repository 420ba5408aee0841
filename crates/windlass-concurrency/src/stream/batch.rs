//! Batching: group values by size or time, whichever comes first — with a fixed size, or
//! one tuned to a target latency.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use windlass_policy::ConfigError;

/// How an adaptive batch tunes its size.
///
/// After each batch is handed out, the time until the consumer asks for the next one is
/// taken as that batch's processing time. If a *full* batch was processed faster than
/// `target`, the next may be larger (`+growth`, up to `max`); if processing took longer than
/// `target`, it shrinks (`x shrink`, down to `min`). A batch cut short by `max_wait` (the
/// input ran dry: a shallow queue) does not grow the size: latency, not throughput, matters
/// then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveBatch {
    /// Smallest batch size (at least 1).
    pub min: usize,
    /// Largest batch size.
    pub max: usize,
    /// The size of the first batch.
    pub initial: usize,
    /// The processing time per batch to aim for.
    pub target: Duration,
    /// Longest a value waits for its batch to fill.
    pub max_wait: Duration,
    /// Added to the size after a fast, full batch.
    pub growth: usize,
    /// Multiplier applied after a slow batch, in (0, 1).
    pub shrink: f64,
}

impl Default for AdaptiveBatch {
    fn default() -> Self {
        AdaptiveBatch {
            min: 1,
            max: 1024,
            initial: 16,
            target: Duration::from_millis(50),
            max_wait: Duration::from_millis(10),
            growth: 8,
            shrink: 0.5,
        }
    }
}

impl AdaptiveBatch {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem: &str| Err(ConfigError::new("adaptive batch", field, problem));
        if self.min == 0 {
            return bad("min", "must be at least 1");
        }
        if !(self.min <= self.initial && self.initial <= self.max) {
            return bad("initial", "must be within [min, max]");
        }
        if self.target.is_zero() {
            return bad("target", "must be positive");
        }
        if !(self.shrink > 0.0 && self.shrink < 1.0) {
            return bad("shrink", "must be within (0, 1)");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Sizing {
    Fixed(usize),
    Adaptive {
        cfg: AdaptiveBatch,
        size: usize,
        /// When the last batch was handed out, and whether it was full.
        handed_out: Option<(Instant, bool)>,
    },
}

pin_project_lite::pin_project! {
    /// See [`StreamOps::batch`](super::StreamOps::batch) and
    /// [`StreamOps::adaptive_batch`](super::StreamOps::adaptive_batch).
    #[must_use = "streams do nothing unless polled"]
    pub struct Batch<S: Stream> {
        #[pin]
        inner: S,
        #[pin]
        sleep: Sleep,
        max_wait: Duration,
        sizing: Sizing,
        buf: Vec<S::Item>,
        done: bool,
    }
}

impl<S: Stream> Batch<S> {
    pub(super) fn fixed(inner: S, size: usize, max_wait: Duration) -> Self {
        Batch {
            inner,
            sleep: tokio::time::sleep(Duration::ZERO),
            max_wait,
            sizing: Sizing::Fixed(size),
            buf: Vec::new(),
            done: false,
        }
    }

    pub(super) fn adaptive(inner: S, cfg: AdaptiveBatch) -> Self {
        Batch {
            inner,
            sleep: tokio::time::sleep(Duration::ZERO),
            max_wait: cfg.max_wait,
            sizing: Sizing::Adaptive {
                cfg,
                size: cfg.initial,
                handed_out: None,
            },
            buf: Vec::new(),
            done: false,
        }
    }

    /// The batch size the next batch aims for.
    pub fn current_size(&self) -> usize {
        match self.sizing {
            Sizing::Fixed(n) => n,
            Sizing::Adaptive { size, .. } => size,
        }
    }
}

impl<S: Stream> Stream for Batch<S> {
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        // Feedback: the consumer is back, so the previous batch has been processed.
        if let Sizing::Adaptive {
            cfg,
            size,
            handed_out,
        } = this.sizing
            && let Some((at, full)) = handed_out.take()
        {
            let took = at.elapsed();
            if took > cfg.target {
                *size = ((*size as f64 * cfg.shrink) as usize).max(cfg.min);
            } else if full {
                *size = (*size + cfg.growth).min(cfg.max);
            }
        }
        let target = match *this.sizing {
            Sizing::Fixed(n) => n,
            Sizing::Adaptive { size, .. } => size,
        };
        let emit = |buf: &mut Vec<S::Item>, sizing: &mut Sizing, full: bool| {
            if let Sizing::Adaptive { handed_out, .. } = sizing {
                *handed_out = Some((Instant::now(), full));
            }
            // One allocation per batch: the next buffer is sized for a full batch, so it
            // never regrows while filling.
            std::mem::replace(buf, Vec::with_capacity(target))
        };
        while !*this.done {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if this.buf.is_empty() {
                        this.sleep.as_mut().reset(Instant::now() + *this.max_wait);
                        this.buf.reserve(target);
                    }
                    this.buf.push(item);
                    if this.buf.len() >= target {
                        return Poll::Ready(Some(emit(this.buf, this.sizing, true)));
                    }
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => break,
            }
        }
        if *this.done {
            if this.buf.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(emit(this.buf, this.sizing, false)));
        }
        if !this.buf.is_empty() && this.sleep.poll(cx).is_ready() {
            return Poll::Ready(Some(emit(this.buf, this.sizing, false)));
        }
        Poll::Pending
    }
}
