//! Retry budgets: a cap on retries as a share of recent calls, so that retries cannot
//! storm a failing service.
//!
//! Each call deposits into the budget; each retry withdraws. Over a sliding time window,
//! retries may be at most `retry_ratio` of calls, plus a floor of `min_per_sec` so that a
//! quiet client can still retry. This is tower's TPS budget model (defaults: 10 s window,
//! 10 retries per second, 20%). When a dependency fails hard, a retry budget turns "every
//! client triples its load" into "load grows by at most 20%".

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, ensure, ensure_range};

const SLOTS: usize = 10;

/// A retry budget shared by every call through one or more retry policies.
#[derive(Debug)]
pub struct RetryBudget {
    slot_width: Duration,
    deposit: i64,
    withdraw: i64,
    reserve: i64,
    state: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    start: Instant,
    /// Index of the slot for `epoch`.
    epoch: u64,
    balance: [i64; SLOTS],
}

impl RetryBudget {
    /// A budget over a `window` (1 to 60 s), allowing `min_per_sec` retries per second plus
    /// `retry_ratio` (0 to 1000) retries per call.
    pub fn new(window: Duration, min_per_sec: u32, retry_ratio: f64) -> Result<Self, ConfigError> {
        ensure(
            window >= Duration::from_secs(1) && window <= Duration::from_secs(60),
            "retry budget",
            "window",
            "must be between 1 s and 60 s",
        )?;
        ensure_range(retry_ratio, 0.0, 1000.0, "retry budget", "retry_ratio")?;
        // Integer arithmetic: with ratio r, a deposit adds `deposit` and a retry costs
        // `withdraw` so that withdraw / deposit = 1 / r.
        let (deposit, withdraw) = if retry_ratio == 0.0 {
            (0, 1)
        } else if retry_ratio <= 1.0 {
            (1, (1.0 / retry_ratio).round() as i64)
        } else {
            (1000, (1000.0 / retry_ratio).round().max(1.0) as i64)
        };
        let reserve = i64::from(min_per_sec) * window.as_secs() as i64 * withdraw;
        Ok(RetryBudget {
            slot_width: window / SLOTS as u32,
            deposit,
            withdraw,
            reserve,
            state: Mutex::new(Slots {
                start: Instant::now(),
                epoch: 0,
                balance: [0; SLOTS],
            }),
        })
    }

    fn with_slots<R>(&self, f: impl FnOnce(&mut Slots, usize) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now_epoch = (s.start.elapsed().as_nanos() / self.slot_width.as_nanos().max(1)) as u64;
        // Clear the slots that fell out of the window since the last call (at most all).
        let gap = now_epoch.saturating_sub(s.epoch).min(SLOTS as u64);
        for i in 1..=gap {
            let idx = ((s.epoch + i) % SLOTS as u64) as usize;
            s.balance[idx] = 0;
        }
        s.epoch = s.epoch.max(now_epoch);
        let idx = (s.epoch % SLOTS as u64) as usize;
        f(&mut s, idx)
    }

    /// Records a call (not a retry).
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        self.with_slots(|s, idx| s.balance[idx] += self.deposit);
    }

    /// Takes one retry from the budget; false when none is left.
    pub fn withdraw(&self) -> bool {
        self.with_slots(|s, idx| {
            let sum: i64 = s.balance.iter().sum();
            if sum + self.reserve >= self.withdraw {
                s.balance[idx] -= self.withdraw;
                true
            } else {
                false
            }
        })
    }

    /// Retries that could be made now.
    pub fn available(&self) -> u64 {
        self.with_slots(|s, _| {
            let sum: i64 = s.balance.iter().sum::<i64>() + self.reserve;
            (sum.max(0) / self.withdraw.max(1)) as u64
        })
    }
}

impl Default for RetryBudget {
    /// tower's defaults: 10 s window, 10 retries per second, 20% of calls.
    fn default() -> Self {
        RetryBudget {
            slot_width: Duration::from_secs(1),
            deposit: 1,
            withdraw: 5,
            reserve: 10 * 10 * 5,
            state: Mutex::new(Slots {
                start: Instant::now(),
                epoch: 0,
                balance: [0; SLOTS],
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_limits_retries() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20, "20% of 100 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_quiet_clients_and_window_expires() {
        let b = RetryBudget::new(Duration::from_secs(10), 1, 0.0).unwrap();
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10, "1 per second over a 10 s window");
        // Withdrawals age out with the window.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn invalid_budgets_rejected() {
        assert!(RetryBudget::new(Duration::from_millis(10), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, -0.5).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, f64::NAN).is_err());
    }
}
