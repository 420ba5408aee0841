//! Instant arithmetic that never panics, and the meaning of "forever".
//!
//! `Instant + Duration` panics when the sum does not fit, and `Duration::MAX` is the natural
//! way to say "no limit" for a timeout, a TTL or a maximum wait. Every policy therefore adds
//! durations to instants through [`saturating_add`]: a sum that does not fit becomes
//! [`far_future`], thirty years ahead (as tokio does for its own timers), which no call
//! outlives. A configured `Duration::MAX` thus means "never", and no call panics on it.
//!
//! **When not to use it:** for instants that are stored or compared across processes; those
//! are wall-clock times (see [`RetrySchedule`](crate::RetrySchedule)).
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use windlass_policy::time::{far_future, saturating_add};
//!
//! let now = Instant::now();
//! assert_eq!(saturating_add(now, Duration::from_secs(1)), now + Duration::from_secs(1));
//! assert_eq!(saturating_add(now, Duration::MAX), far_future(now));
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// Thirty years: further ahead than any call, timer or process lives.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant that stands for "never" when measured from `now`.
pub fn far_future(now: Instant) -> Instant {
    now.checked_add(FAR).unwrap_or(now)
}

/// `start + d`, or [`far_future`] when `d` is longer than thirty years or the sum does not
/// fit.
pub fn saturating_add(start: Instant, d: Duration) -> Instant {
    if d >= FAR {
        return far_future(start);
    }
    start.checked_add(d).unwrap_or_else(|| far_future(start))
}

/// True when `d` stands for "no limit" (at least thirty years).
pub fn is_forever(d: Duration) -> bool {
    d >= FAR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forever_saturates_and_short_durations_add() {
        let now = Instant::now();
        assert_eq!(saturating_add(now, Duration::ZERO), now);
        assert_eq!(
            saturating_add(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR);
        assert_eq!(saturating_add(now, FAR * 2), now + FAR);
        assert!(is_forever(Duration::MAX));
        assert!(!is_forever(Duration::from_secs(3600)));
    }
}
