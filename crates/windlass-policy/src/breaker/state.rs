//! The breaker's states.

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A fixed number of probe calls pass; their outcomes decide open or closed.
    HalfOpen,
    /// Calls pass and nothing is counted.
    Disabled,
    /// Calls are rejected until someone changes the state by hand.
    ForcedOpen,
    /// Calls pass and are counted; the breaker reports, but never opens.
    MetricsOnly,
}

impl BreakerState {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Disabled => "disabled",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::MetricsOnly => "metrics_only",
        }
    }

    pub(super) fn code(self) -> u64 {
        self.gauge_value() as u64
    }

    pub(super) fn from_code(code: u64) -> Self {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            3 => BreakerState::Disabled,
            4 => BreakerState::ForcedOpen,
            _ => BreakerState::MetricsOnly,
        }
    }

    /// The value of the `windlass_breaker_state` gauge: closed 0, open 1, half-open 2,
    /// disabled 3, forced open 4, metrics only 5.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
            BreakerState::Disabled => 3.0,
            BreakerState::ForcedOpen => 4.0,
            BreakerState::MetricsOnly => 5.0,
        }
    }
}
