//! Delivery settings: which events supersede each other in a slow client's queue
//! (conflation), and how many event-type patterns a client may select.

use super::mapping::Pointer;
use super::settings::Key;
use super::validate::Validator;

/// Most patterns a connection may be allowed: every event offered to the connection is
/// matched against each of them on the consumer's task, so this bounds the fan-out's work
/// per recipient.
const MAX_INTEREST_PATTERNS: usize = 1024;

/// Events of `event_type` with the same value at `key` stand for the same thing (for
/// conflation: a newer one supersedes an older one); `keys::KeyRules` reads them.
#[derive(Clone, Debug)]
pub struct KeyRule {
    /// The event type, exactly.
    pub event_type: String,
    /// Where the key is (e.g. the job id).
    pub key: Pointer,
}

/// How events reach each connection.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Conflatable event types; empty: conflation off.
    pub conflate: Vec<KeyRule>,
    /// Most `types=` patterns one connection may select.
    pub max_interest_patterns: usize,
}

impl Validator<'_> {
    pub(super) fn delivery(&mut self) -> DeliveryConfig {
        let mut conflate = Vec::new();
        for entry in self.list(Key::Conflate) {
            let parsed = entry
                .split_once('=')
                .map(|(t, p)| (t.trim(), Pointer::parse(p.trim())));
            match parsed {
                Some((t, Ok(key))) if !t.is_empty() && !t.contains(char::is_whitespace) => {
                    conflate.push(KeyRule {
                        event_type: t.to_owned(),
                        key,
                    });
                }
                _ => self.problem(
                    Key::Conflate,
                    format_args!("`{entry}` is not `event.type=/json/pointer`"),
                ),
            }
        }
        DeliveryConfig {
            conflate,
            max_interest_patterns: self
                .count::<usize>(Key::MaxInterestPatterns, MAX_INTEREST_PATTERNS),
        }
    }
}
