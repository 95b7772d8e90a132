//! Keys: which events stand for the same thing, so that a newer one supersedes an older
//! one. Two kinds, each read per event type from a JSON pointer into the envelope:
//! - the **conflation key** (`GATEWAY_CONFLATE`, exact types): in a connection's queue an
//!   unsent event is replaced by a newer one with the same key;
//! - the **state key** (`GATEWAY_STATE`, type patterns): the event is the latest state of
//!   that key (a render job), kept for snapshots.
//!
//! Both are worked out once, by [`KeyRules::keys`], when the event is made.

use std::sync::Arc;

use crate::config::{KeyRule, StateRule};
use crate::envelope::{EventKeys, StateKey};
use crate::mapping::key_at;

/// The event types that have a key, and where each keeps it.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    conflate: Vec<KeyRule>,
    state: Vec<StateRule>,
}

impl KeyRules {
    /// Rules as configured; empty: no event has a key of that kind.
    pub fn new(conflate: Vec<KeyRule>, state: Vec<StateRule>) -> KeyRules {
        KeyRules { conflate, state }
    }

    /// The keys of an event of `event_type` whose envelope is `json`. A key exists when a
    /// rule names the type and the envelope has a string or number at the rule's pointer.
    /// When both rules read the same pointer, the envelope is searched once.
    pub fn keys(&self, event_type: &str, json: &str) -> EventKeys {
        let conflate = self.conflate.iter().find(|r| r.event_type == event_type);
        let conflated = conflate.and_then(|r| key_at(json, &r.key));
        let state = self
            .state
            .iter()
            .enumerate()
            .find(|(_, r)| r.types.matches(event_type))
            .and_then(|(i, r)| {
                let value = match (&conflated, conflate) {
                    (Some(v), Some(c)) if c.key == r.key => v.as_str().into(),
                    _ => Arc::from(key_at(json, &r.key)?),
                };
                // The configuration allows at most u16::MAX rules.
                let rule = u16::try_from(i).ok()?;
                Some(StateKey { rule, value })
            });
        EventKeys {
            // Keys of different types never collide: the type is part of the key.
            conflation: conflated.map(|key| format!("{event_type}\u{0}{key}").into()),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Pattern, Pointer};

    fn rules() -> KeyRules {
        KeyRules::new(
            vec![KeyRule {
                event_type: "render.job.progress.v1".into(),
                key: Pointer::parse("/data/job_id").unwrap(),
            }],
            vec![
                StateRule {
                    types: Pattern::new("render.job.#").unwrap(),
                    key: Pointer::parse("/data/job_id").unwrap(),
                },
                StateRule {
                    types: Pattern::new("export.#").unwrap(),
                    key: Pointer::parse("/data/export_id").unwrap(),
                },
            ],
        )
    }

    #[test]
    fn a_conflation_key_is_the_type_and_the_value_at_its_pointer() {
        let json = r#"{"event_type":"p","data":{"job_id":"j-1"}}"#;
        let keys = rules().keys("render.job.progress.v1", json);
        assert_eq!(
            keys.conflation.as_deref(),
            Some("render.job.progress.v1\u{0}j-1")
        );
        let other = rules().keys("render.job.completed.v1", json);
        assert_eq!(other.conflation, None, "no conflation rule names the type");
        let none = rules().keys("render.job.progress.v1", r#"{"data":{}}"#);
        assert_eq!(none, EventKeys::default(), "no value there");
        assert_eq!(KeyRules::default().keys("p", json), EventKeys::default());
    }

    #[test]
    fn a_state_key_is_the_first_matching_rule_and_its_value() {
        let job = r#"{"data":{"job_id":"j-1","export_id":"x-9"}}"#;
        for t in ["render.job.progress.v1", "render.job.completed.v1"] {
            let state = rules().keys(t, job).state.unwrap();
            assert_eq!((state.rule, &*state.value), (0, "j-1"), "{t}");
        }
        let export = rules().keys("export.done.v1", job).state.unwrap();
        assert_eq!((export.rule, &*export.value), (1, "x-9"));
        assert_eq!(rules().keys("notification.created.v1", job).state, None);
        let number = rules().keys("render.job.queued.v1", r#"{"data":{"job_id":42}}"#);
        assert_eq!(number.state.unwrap().value.as_ref(), "42");
    }
}
