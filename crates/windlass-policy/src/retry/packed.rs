//! A retry schedule's compact stored form: a JSON array of its fields, a third the size.
//!
//! A durable job keeps its [`RetrySchedule`] in its row, written once per job and rewritten
//! with every update of the row. In the usual JSON form (an object per struct, a
//! `{"secs":..,"nanos":..}` object per duration) the default schedule takes 157 bytes,
//! about half a queued job's row; as [`PackedSchedule`] writes it, 53:
//!
//! ```text
//! {"max_attempts":25,"backoff":{"kind":"exponential","initial":{"secs":1,"nanos":0},"factor":2.0},"jitter":{"kind":"full"},"max_delay":{"secs":3600,"nanos":0}}
//! [25,["exponential",[1,0],2.0],["full",null],[3600,0]]
//! ```
//!
//! **Read by the same `Deserialize`**, no new reader: serde reads a struct from a sequence
//! of its fields in declaration order, a duration from `[secs, nanos]`, an internally
//! tagged enum (`Backoff`) from its tag followed by its fields, and an adjacently tagged
//! one (`Jitter`) from `[tag, content]`. So a process of an older version, which only knows
//! the object form, reads the packed form too (a rolling upgrade never meets a row it
//! cannot read), and a row written in the object form still reads. Only the field order is
//! a contract: fields of these three types are never reordered. A reorder of a struct's
//! declaration alone fails the round-trip tests below (the packer writes fields by name, the
//! reader takes them by position); a reorder of both the declaration and the packer would
//! pass the round trip, but not the fixed strings, which stand for what older versions read.
//!
//! **When not to use it:** for configuration that people read or write: that is what the
//! object form is for.
//!
//! ```
//! use windlass_policy::RetrySchedule;
//!
//! let schedule = RetrySchedule::default();
//! let stored = serde_json::to_string(&schedule.packed()).unwrap();
//! let read: RetrySchedule = serde_json::from_str(&stored).unwrap();
//! assert_eq!(read, schedule);
//! ```

use std::time::Duration;

use serde::ser::{Serialize, SerializeTuple, Serializer};

use super::backoff::{Backoff, Jitter};
use super::schedule::RetrySchedule;

/// A [`RetrySchedule`] that serialises as its compact stored form; made by
/// [`RetrySchedule::packed`]. Deserialise with `RetrySchedule`'s own `Deserialize`.
#[derive(Debug, Clone, Copy)]
pub struct PackedSchedule<'a>(&'a RetrySchedule);

impl RetrySchedule {
    /// This schedule in its compact stored form (see [`PackedSchedule`]).
    pub fn packed(&self) -> PackedSchedule<'_> {
        PackedSchedule(self)
    }
}

impl Serialize for PackedSchedule<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(&r.max_attempts)?;
        t.serialize_element(&PackedBackoff(&r.backoff))?;
        t.serialize_element(&PackedJitter(r.jitter))?;
        t.serialize_element(&PackedDuration(r.max_delay))?;
        t.end()
    }
}

/// `[secs, nanos]`.
struct PackedDuration(Duration);

impl Serialize for PackedDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0.as_secs(), self.0.subsec_nanos()).serialize(s)
    }
}

/// `[tag, fields...]`, as serde reads an internally tagged enum from a sequence.
struct PackedBackoff<'a>(&'a Backoff);

impl Serialize for PackedBackoff<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self.0 {
            // A newtype variant's fields are its value's: a duration's secs and nanos.
            Backoff::Constant(d) => ("constant", d.as_secs(), d.subsec_nanos()).serialize(s),
            Backoff::Linear { initial, step } => {
                ("linear", PackedDuration(initial), PackedDuration(step)).serialize(s)
            }
            Backoff::Exponential { initial, factor } => {
                ("exponential", PackedDuration(initial), factor).serialize(s)
            }
        }
    }
}

/// `[tag, content]`, as serde reads an adjacently tagged enum from a sequence (a unit
/// variant's content is `null`).
struct PackedJitter(Jitter);

impl Serialize for PackedJitter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tag = match self.0 {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
            Jitter::DecorrelatedV2 => "decorrelated_v2",
            Jitter::Proportional(f) => return ("proportional", f).serialize(s),
        };
        (tag, ()).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packed(r: &RetrySchedule) -> String {
        serde_json::to_string(&r.packed()).expect("a schedule serialises")
    }

    fn read(s: &str) -> RetrySchedule {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s} does not read back: {e}"))
    }

    #[test]
    fn the_default_job_schedule_packs_to_a_third_and_reads_back() {
        let r = RetrySchedule {
            max_attempts: 25,
            backoff: Backoff::exponential(Duration::from_secs(1)),
            jitter: Jitter::Full,
            max_delay: Duration::from_secs(3600),
        };
        let s = packed(&r);
        // Fixed strings: a change to the packed form, or to the order of fields that the
        // older readers rely on, fails here.
        assert_eq!(
            s,
            r#"[25,["exponential",[1,0],2.0],["full",null],[3600,0]]"#
        );
        assert_eq!(read(&s), r);
        let object = serde_json::to_string(&r).expect("object form");
        assert_eq!((s.len(), object.len()), (53, 157));
        assert_eq!(read(&object), r, "the object form still reads");
    }

    #[test]
    fn every_variant_has_a_fixed_packed_form() {
        let d = Duration::from_millis(1500);
        let cases = [
            (
                Backoff::Constant(d),
                Jitter::None,
                r#"["constant",1,500000000]"#,
                r#"["none",null]"#,
            ),
            (
                Backoff::Linear {
                    initial: d,
                    step: Duration::from_secs(2),
                },
                Jitter::Equal,
                r#"["linear",[1,500000000],[2,0]]"#,
                r#"["equal",null]"#,
            ),
            (
                Backoff::exponential(d),
                Jitter::Proportional(0.25),
                r#"["exponential",[1,500000000],2.0]"#,
                r#"["proportional",0.25]"#,
            ),
            (
                Backoff::Constant(d),
                Jitter::Decorrelated,
                r#"["constant",1,500000000]"#,
                r#"["decorrelated",null]"#,
            ),
            (
                Backoff::Constant(d),
                Jitter::DecorrelatedV2,
                r#"["constant",1,500000000]"#,
                r#"["decorrelated_v2",null]"#,
            ),
        ];
        for (backoff, jitter, b, j) in cases {
            let r = RetrySchedule {
                max_attempts: 3,
                backoff,
                jitter,
                max_delay: Duration::MAX,
            };
            let s = packed(&r);
            assert_eq!(s, format!("[3,{b},{j},[{},999999999]]", u64::MAX));
            assert_eq!(read(&s), r);
        }
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::MAX),
            Just(Duration::ZERO),
        ]
    }

    fn schedule() -> impl Strategy<Value = RetrySchedule> {
        let backoff = prop_oneof![
            duration().prop_map(Backoff::Constant),
            (duration(), duration()).prop_map(|(initial, step)| Backoff::Linear { initial, step }),
            (duration(), 1.0f64..1e6)
                .prop_map(|(initial, factor)| Backoff::Exponential { initial, factor }),
        ];
        let jitter = prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            Just(Jitter::DecorrelatedV2),
            (0.0f64..=1.0).prop_map(Jitter::Proportional),
        ];
        (1u32.., backoff, jitter, duration()).prop_map(
            |(max_attempts, backoff, jitter, max_delay)| RetrySchedule {
                max_attempts,
                backoff,
                jitter,
                max_delay,
            },
        )
    }

    proptest! {
        /// Any schedule reads back from its packed form exactly as from its object form
        /// (itself, up to serde_json's float parsing, which may differ in the last bit in
        /// both forms alike), and the packed form is always the shorter.
        #[test]
        fn a_packed_schedule_reads_back_as_its_object_form_does(r in schedule()) {
            let s = packed(&r);
            let object = serde_json::to_string(&r).expect("object form");
            prop_assert_eq!(read(&s), read(&object));
            prop_assert!(s.len() < object.len());
        }
    }
}
