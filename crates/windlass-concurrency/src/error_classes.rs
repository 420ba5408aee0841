//! Every error of this layer gives the [`ErrorClass`] its docs promise, and a wrapped
//! error keeps the class of what it wraps: the shared failure vocabulary holds across
//! layers.

use std::panic::Location;
use std::time::Duration;

use windlass_policy::{ClassifiedError, ConfigError, ErrorClass, PolicyError, Rejection};

use crate::actor::{AskError, TrySendError};
use crate::gather::GatherError;
use crate::map::MapError;
use crate::offload::OffloadError;
use crate::scope::{PanicPayload, ScopeError};
use crate::supervisor::Escalated;

/// A user error with a class of its choosing.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Classed(ErrorClass);

impl ClassifiedError for Classed {
    fn error_class(&self) -> ErrorClass {
        self.0
    }
}

const ALL: [ErrorClass; 4] = [
    ErrorClass::Transient,
    ErrorClass::Permanent,
    ErrorClass::RetryAfter(Duration::from_secs(2)),
    ErrorClass::Cancelled,
];

#[test]
fn wrappers_keep_the_class_of_what_they_wrap() {
    let site = Location::caller();
    for class in ALL {
        let failed = ScopeError::Failed {
            index: 0,
            site,
            error: Classed(class),
            suppressed: vec![],
        };
        assert_eq!(failed.error_class(), class, "scope");
        assert_eq!(MapError::Failed(Classed(class)).error_class(), class, "map");
        let leg = GatherError::Failed {
            index: 1,
            error: Classed(class),
        };
        assert_eq!(leg.error_class(), class, "gather");
        // A policy error around an operation error keeps the classifier's verdict.
        let op: PolicyError<Classed> = PolicyError::operation(Classed(class), class);
        assert_eq!(op.error_class(), class, "policy");
    }
}

#[test]
fn this_layers_own_failures_have_their_documented_class() {
    let site = Location::caller();
    let panicked: ScopeError<Classed> = ScopeError::Panicked {
        index: 0,
        site,
        message: "boom".into(),
        payload: PanicPayload(Box::new("boom")),
        suppressed: vec![],
    };
    let cancelled: ScopeError<Classed> = ScopeError::Cancelled { index: 0, site };
    let escalated = Escalated {
        task: "t",
        site,
        restarts: 3,
        last_failure: "x".into(),
    };
    let config: MapError<Classed> = MapError::Config(ConfigError::new("map", "limit", "is 0"));
    let table = [
        (
            "scope panicked",
            panicked.error_class(),
            ErrorClass::Permanent,
        ),
        (
            "scope cancelled",
            cancelled.error_class(),
            ErrorClass::Cancelled,
        ),
        ("escalated", escalated.error_class(), ErrorClass::Permanent),
        ("map config", config.error_class(), ErrorClass::Permanent),
        (
            "offload full",
            OffloadError::Full("p".into()).error_class(),
            ErrorClass::Transient,
        ),
        (
            "offload panicked",
            OffloadError::Panicked("boom".into()).error_class(),
            ErrorClass::Permanent,
        ),
        (
            "offload shutdown",
            OffloadError::Shutdown.error_class(),
            ErrorClass::Cancelled,
        ),
        (
            "mailbox full",
            TrySendError::Full(()).error_class(),
            ErrorClass::Transient,
        ),
        (
            "actor stopped",
            TrySendError::Stopped(()).error_class(),
            ErrorClass::Permanent,
        ),
        (
            "ask stopped",
            AskError::Stopped.error_class(),
            ErrorClass::Permanent,
        ),
        (
            "ask no reply",
            AskError::NoReply.error_class(),
            ErrorClass::Transient,
        ),
        (
            "gather empty",
            GatherError::<Classed>::Empty.error_class(),
            ErrorClass::Permanent,
        ),
        (
            "rejection",
            Rejection::RateLimited {
                name: "r".into(),
                retry_after: Duration::from_secs(1),
            }
            .error_class(),
            ErrorClass::RetryAfter(Duration::from_secs(1)),
        ),
    ];
    for (what, got, want) in table {
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn all_legs_failed_is_as_hopeful_as_its_most_hopeful_leg() {
    use ErrorClass::*;
    let all = |classes: &[ErrorClass]| {
        GatherError::AllFailed(classes.iter().copied().map(Classed).collect()).error_class()
    };
    let after = |s| RetryAfter(Duration::from_secs(s));
    assert_eq!(all(&[Permanent, Transient]), Transient);
    assert_eq!(
        all(&[Permanent, after(1), after(3)]),
        RetryAfter(Duration::from_secs(3))
    );
    // One leg that may be retried at once beats another's later `Retry-After`.
    assert_eq!(all(&[after(3), Transient]), Transient);
    assert_eq!(all(&[Cancelled, Cancelled]), Cancelled);
    assert_eq!(all(&[Cancelled, Permanent]), Permanent);
    assert_eq!(all(&[]), Permanent);
}
