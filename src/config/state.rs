//! State settings: which events are the state of a key (by default a render job, `render.job.#`, by its
//! `job_id`), and how much of it each instance keeps.

use std::time::Duration;

use super::mapping::Pointer;
use super::settings::Key;
use super::topic::Pattern;
use super::validate::Validator;

/// Most keys allowed per user or tenant: each holds one event in memory.
const MAX_KEYS: usize = 10_000_000;
/// Bytes of state held: 16 GiB, more than an instance's memory.
const MAX_STATE_BYTES: usize = 1 << 34;

/// Most rules in `GATEWAY_STATE`, and in each route's `state`: a rule's place is kept in a
/// `u16` with every event that has a state key.
pub(super) const MAX_RULES: usize = 1_000;

/// What a state rule that does not parse is told.
pub(super) const NOT_A_RULE: &str = "is not `event.type.pattern=/json/pointer`";

/// Events whose type matches `types` are the state of the key at `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRule {
    /// Event types, as a topic pattern (`render.job.*`).
    pub types: Pattern,
    /// Where the key is (the job id).
    pub key: Pointer,
}

impl StateRule {
    /// One rule as written, `event.type.pattern=/json/pointer` (the same in `GATEWAY_STATE`
    /// and in a route's `state` list); `None` when it is not one.
    pub(super) fn parse(entry: &str) -> Option<StateRule> {
        let (types, key) = entry.split_once('=')?;
        let types = types.trim();
        if types.is_empty() || types.contains(char::is_whitespace) {
            return None;
        }
        Some(StateRule {
            types: Pattern::new(types)?,
            key: Pointer::parse(key.trim()).ok()?,
        })
    }
}

/// Bounds of the state each instance keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Keys one user's events may hold (the tenant-wide events count as one more user).
    pub max_keys_per_user: usize,
    /// Keys one tenant may hold, its users' and its tenant-wide ones together.
    pub max_keys_per_tenant: usize,
    /// Bytes of events held in all.
    pub max_bytes: usize,
    /// A key not updated for this long is forgotten.
    pub max_age: Duration,
}

/// Latest state per key.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// In order: an event takes the first rule its type matches. Empty: no state.
    pub rules: Vec<StateRule>,
    /// What each instance keeps.
    pub limits: StateLimits,
}

impl Validator<'_> {
    pub(super) fn state(&mut self) -> StateConfig {
        let mut rules = Vec::new();
        for entry in self.list(Key::State) {
            match StateRule::parse(&entry) {
                Some(rule) => rules.push(rule),
                None => self.problem(Key::State, format_args!("`{entry}` {NOT_A_RULE}")),
            }
        }
        if rules.len() > MAX_RULES {
            self.problem(Key::State, "too many rules");
        }
        let limits = StateLimits {
            max_keys_per_user: self.count::<usize>(Key::StateMaxKeysPerUser, MAX_KEYS),
            max_keys_per_tenant: self.count::<usize>(Key::StateMaxKeysPerTenant, MAX_KEYS),
            max_bytes: self.count::<usize>(Key::StateMaxBytes, MAX_STATE_BYTES),
            max_age: self.secs(Key::StateMaxAgeSecs),
        };
        StateConfig { rules, limits }
    }
}
