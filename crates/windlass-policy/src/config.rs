//! The error every policy builder returns for invalid settings.

/// A policy's configuration was rejected at build time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {policy} configuration: `{field}` {problem}")]
pub struct ConfigError {
    /// Which policy was being built (`"retry"`, `"circuit breaker"`, ...).
    pub policy: &'static str,
    /// The setting that was wrong.
    pub field: &'static str,
    /// What was wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(
        policy: &'static str,
        field: &'static str,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError {
            policy,
            field,
            problem: problem.into(),
        }
    }
}

/// Checks a condition while building `policy`, failing with a [`ConfigError`].
pub(crate) fn ensure(
    ok: bool,
    policy: &'static str,
    field: &'static str,
    problem: &str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(policy, field, problem))
    }
}

/// Checks that a float is finite and inside `[lo, hi]`.
pub(crate) fn ensure_range(
    value: f64,
    lo: f64,
    hi: f64,
    policy: &'static str,
    field: &'static str,
) -> Result<(), ConfigError> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ConfigError::new(
            policy,
            field,
            format!("must be within [{lo}, {hi}], got {value}"),
        ))
    }
}
