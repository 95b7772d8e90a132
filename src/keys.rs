//! Keys: which events stand for the same thing, so that a newer one supersedes an older
//! one. Two kinds, each read per event type from a JSON pointer into the envelope:
//! - the **conflation key** (`GATEWAY_CONFLATE`, exact types): in a connection's queue an
//!   unsent event is replaced by a newer one with the same key;
//! - the **state key** (`GATEWAY_STATE`, type patterns, or a route's own `state` rules): the
//!   event is the latest state of that key (a render job), kept for snapshots.
//!
//! Both are worked out once, by [`KeyRules::keys`], when the event is made.

use std::sync::Arc;

use crate::config::{KeyRule, Routes, StateRule};
use crate::envelope::{EventKeys, StateKey};
use crate::mapping::key_at;

/// The event types that have a key, and where each keeps it.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    conflate: Vec<KeyRule>,
    /// Every state rule once: `GATEWAY_STATE`'s first, then the routes' own. A rule's
    /// place here is part of its keys, so a job whose events come through two routes with
    /// the same rule is one key, and keys of different rules never meet.
    state: Vec<StateRule>,
    /// The rules (places in `state`, in order) each route's events take, by the route's
    /// place in the routes; a route not listed takes `GATEWAY_STATE`'s.
    by_route: Vec<Vec<u16>>,
    /// `GATEWAY_STATE`'s rules.
    default: Vec<u16>,
}

impl KeyRules {
    /// Rules as configured: `state` is `GATEWAY_STATE`'s, which a route without `state`
    /// rules of its own uses. Empty: no event has a key of that kind.
    pub fn new(conflate: Vec<KeyRule>, state: Vec<StateRule>, routes: &Routes) -> KeyRules {
        let mut all: Vec<StateRule> = Vec::new();
        // The configuration allows at most u16::MAX rules in all; past that (never) a rule
        // is left out rather than given another's place.
        let mut places = |rules: &[StateRule]| -> Vec<u16> {
            rules
                .iter()
                .filter_map(|rule| {
                    let place = all.iter().position(|r| r == rule).unwrap_or_else(|| {
                        all.push(rule.clone());
                        all.len() - 1
                    });
                    u16::try_from(place).ok()
                })
                .collect()
        };
        let default = places(&state);
        let by_route = routes
            .list
            .iter()
            .map(|route| match &route.state {
                None => default.clone(),
                Some(rules) => places(rules),
            })
            .collect();
        KeyRules {
            conflate,
            state: all,
            by_route,
            default,
        }
    }

    /// The keys of an event of `event_type` whose envelope is `json`, which came through
    /// the route at `route` in the routes. A key exists when a rule names the type and the
    /// envelope has a string or number at the rule's pointer. When both rules read the
    /// same pointer, the envelope is searched once.
    pub fn keys(&self, route: usize, event_type: &str, json: &str) -> EventKeys {
        let conflate = self.conflate.iter().find(|r| r.event_type == event_type);
        let conflated = conflate.and_then(|r| key_at(json, &r.key));
        let places = self.by_route.get(route).unwrap_or(&self.default);
        let state = places
            .iter()
            .map(|&place| (place, &self.state[usize::from(place)]))
            .find(|(_, r)| r.types.matches(event_type))
            .and_then(|(rule, r)| {
                let value = match (&conflated, conflate) {
                    (Some(v), Some(c)) if c.key == r.key => v.as_str().into(),
                    _ => Arc::from(key_at(json, &r.key)?),
                };
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
    use crate::config::{Binding, Mapping, Pattern, Pointer, Route};

    fn rule(types: &str, key: &str) -> StateRule {
        StateRule {
            types: Pattern::new(types).unwrap(),
            key: Pointer::parse(key).unwrap(),
        }
    }

    fn route(state: Option<Vec<StateRule>>) -> Route {
        Route {
            name: "r".into(),
            binding: Binding {
                exchange: "x".into(),
                key: "#".into(),
            },
            mapping: Mapping::default(),
            exclude_types: Vec::new(),
            state,
        }
    }

    /// Routes: 0 takes `GATEWAY_STATE`'s rules, 1 has its own (orders by `/data/order_id`
    /// and render jobs as `GATEWAY_STATE` says), 2 keeps no state.
    const DEFAULT: usize = 0;
    const OWN: usize = 1;
    const NONE: usize = 2;

    fn rules() -> KeyRules {
        let routes = Routes {
            list: vec![
                route(None),
                route(Some(vec![
                    rule("order.#", "/data/order_id"),
                    rule("render.job.#", "/data/job_id"),
                ])),
                route(Some(Vec::new())),
            ],
            overlaps: Vec::new(),
            default_route: false,
        };
        KeyRules::new(
            vec![KeyRule {
                event_type: "render.job.progress.v1".into(),
                key: Pointer::parse("/data/job_id").unwrap(),
            }],
            vec![
                rule("render.job.#", "/data/job_id"),
                rule("export.#", "/data/export_id"),
            ],
            &routes,
        )
    }

    #[test]
    fn a_conflation_key_is_the_type_and_the_value_at_its_pointer() {
        let json = r#"{"event_type":"p","data":{"job_id":"j-1"}}"#;
        let keys = rules().keys(DEFAULT, "render.job.progress.v1", json);
        assert_eq!(
            keys.conflation.as_deref(),
            Some("render.job.progress.v1\u{0}j-1")
        );
        let other = rules().keys(DEFAULT, "render.job.completed.v1", json);
        assert_eq!(other.conflation, None, "no conflation rule names the type");
        let none = rules().keys(DEFAULT, "render.job.progress.v1", r#"{"data":{}}"#);
        assert_eq!(none, EventKeys::default(), "no value there");
        let no_rules = KeyRules::new(Vec::new(), Vec::new(), &Routes::default());
        assert_eq!(no_rules.keys(DEFAULT, "p", json), EventKeys::default());
    }

    #[test]
    fn a_state_key_is_the_first_matching_rule_and_its_value() {
        let job = r#"{"data":{"job_id":"j-1","export_id":"x-9","order_id":"o-3"}}"#;
        for t in ["render.job.progress.v1", "render.job.completed.v1"] {
            let state = rules().keys(DEFAULT, t, job).state.unwrap();
            assert_eq!((state.rule, &*state.value), (0, "j-1"), "{t}");
        }
        let export = rules().keys(DEFAULT, "export.done.v1", job).state.unwrap();
        assert_eq!((export.rule, &*export.value), (1, "x-9"));
        let state = |route, t| rules().keys(route, t, job).state;
        assert_eq!(state(DEFAULT, "notification.created.v1"), None);
        assert_eq!(state(DEFAULT, "order.paid.v1"), None, "not GATEWAY_STATE's");
        let number = rules().keys(DEFAULT, "render.job.queued.v1", r#"{"data":{"job_id":42}}"#);
        assert_eq!(number.state.unwrap().value.as_ref(), "42");
    }

    #[test]
    fn a_route_with_its_own_rules_takes_only_those() {
        let job = r#"{"data":{"job_id":"j-1","export_id":"x-9","order_id":"o-3"}}"#;
        let state = |route, t| rules().keys(route, t, job).state;
        let order = state(OWN, "order.paid.v1").unwrap();
        assert_eq!(
            (order.rule, &*order.value),
            (2, "o-3"),
            "after GATEWAY_STATE's"
        );
        assert_eq!(
            state(OWN, "export.done.v1"),
            None,
            "GATEWAY_STATE's, not the route's"
        );
        // The same rule in a route and in GATEWAY_STATE is one rule: a job whose events
        // come both ways is one key.
        assert_eq!(
            state(OWN, "render.job.completed.v1"),
            state(DEFAULT, "render.job.completed.v1")
        );
        for t in ["render.job.completed.v1", "export.done.v1", "order.paid.v1"] {
            assert_eq!(state(NONE, t), None, "{t}: the route keeps no state");
        }
        let conflated = rules().keys(NONE, "render.job.progress.v1", job);
        assert!(
            conflated.conflation.is_some(),
            "conflation is not per route"
        );
    }
}
