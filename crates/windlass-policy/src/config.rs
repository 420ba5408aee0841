//! The error every builder in Windlass returns for invalid settings.
//!
//! Settings are checked once, when a policy, pool or operator is built, so that running it
//! never fails (or panics) on a configured value. [`ConfigError`] names the component being
//! built and the field that was wrong, and says what was wrong with it.
//!
//! ```
//! use windlass_policy::{ConfigError, Retry};
//!
//! let err = Retry::builder().max_attempts(0).build().unwrap_err();
//! assert_eq!(err.component(), "retry");
//! assert_eq!(err.field(), "max_attempts");
//! let mine = ConfigError::new("thumbnailer", "width", "must be positive");
//! assert_eq!(mine.to_string(), "invalid thumbnailer configuration: `width` must be positive");
//! ```

/// A component's configuration was rejected at build time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {component} configuration: `{field}` {problem}")]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    problem: String,
}

/// Invalid settings fail the same way every time: permanent.
impl crate::classify::ClassifiedError for ConfigError {
    fn error_class(&self) -> crate::classify::ErrorClass {
        crate::classify::ErrorClass::Permanent
    }
}

impl ConfigError {
    /// The `field` of `component` is wrong, as `problem` says.
    pub fn new(component: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            component,
            field,
            problem: problem.into(),
        }
    }

    /// Which component was being built (`"retry"`, `"circuit breaker"`, `"offload"`, ...).
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The setting that was wrong.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What was wrong with it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// Checks a condition while building `component`, failing with a [`ConfigError`].
pub fn ensure(
    ok: bool,
    component: &'static str,
    field: &'static str,
    problem: &str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(component, field, problem))
    }
}

/// Checks that a float is finite and inside `[lo, hi]`.
pub fn ensure_range(
    value: f64,
    lo: f64,
    hi: f64,
    component: &'static str,
    field: &'static str,
) -> Result<(), ConfigError> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ConfigError::new(
            component,
            field,
            format!("must be within [{lo}, {hi}], got {value}"),
        ))
    }
}
