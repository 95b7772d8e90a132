//! Keys: which events stand for the same thing (the progress of one render job), so that
//! a newer one supersedes an older one. A key is read per event type from a JSON pointer
//! into the envelope; conflation uses it today, and a store of the latest state per key
//! would read its keys the same way, through [`KeyRules::key`].

use crate::config::KeyRule;
use crate::mapping::key_at;

/// The event types that have a key, and where each keeps it.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    rules: Vec<KeyRule>,
}

impl KeyRules {
    /// Rules as configured; empty: no event has a key.
    pub fn new(rules: Vec<KeyRule>) -> KeyRules {
        KeyRules { rules }
    }

    /// The key of an event of `event_type` whose envelope is `json`, if a rule names the
    /// type and the envelope has a string or number at the rule's pointer. Keys of
    /// different types never collide: the type is part of the key.
    pub fn key(&self, event_type: &str, json: &str) -> Option<Box<str>> {
        let rule = self.rules.iter().find(|r| r.event_type == event_type)?;
        let key = key_at(json, &rule.key)?;
        Some(format!("{}\u{0}{key}", rule.event_type).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pointer;

    #[test]
    fn a_key_is_the_type_and_the_value_at_its_pointer() {
        let rules = KeyRules::new(vec![KeyRule {
            event_type: "p".into(),
            key: Pointer::parse("/data/job_id").unwrap(),
        }]);
        let json = r#"{"event_type":"p","data":{"job_id":"j-1"}}"#;
        let (p, other) = (rules.key("p", json), rules.key("q", json));
        assert_eq!(p.as_deref(), Some("p\u{0}j-1"));
        assert_eq!(other, None, "no rule names the type");
        assert_eq!(rules.key("p", r#"{"data":{}}"#), None, "no value there");
        assert_eq!(KeyRules::default().key("p", json), None);
    }
}
