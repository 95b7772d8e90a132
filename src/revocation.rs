//! Revocations: users banned and tenants suspended by the platform, remembered for as long
//! as a token issued before them could still be valid, so that no such token connects or
//! refreshes again. The broker feeds it (from a RabbitMQ stream every instance reads, see
//! `broker::revocations`); admission consults it; the hub closes the connections it names.
//!
//! Memory is bounded: each entry lives for the configured TTL (the longest token lifetime
//! accepted) and the number of entries is capped; `gateway_revocations_active` shows it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::Identity;
use crate::telemetry::{Collect, Counter, Exposition, Family, Gauge};

crate::label_set! {
    /// What a revocation event names, or why one was not applied.
    pub enum RevocationKind as "kind" {
        /// A user (its `sub`, in any tenant).
        User = "user",
        /// A whole tenant.
        Tenant = "tenant",
        /// A malformed revocation event: dropped, never read as "revoke everyone".
        Invalid = "invalid",
    }
}

/// Most revocations remembered at once; beyond it the oldest are forgotten (counted), so a
/// flood of revocation events cannot exhaust memory.
pub const MAX_ENTRIES: usize = 1_000_000;

/// One revocation: who, and from when tokens are no good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// A user, by `sub`.
    User(String),
    /// A tenant.
    Tenant(String),
}

/// What is counted.
#[derive(Debug, Default)]
pub struct RevocationMetrics {
    /// Revocation events, by kind.
    pub events: Family<RevocationKind>,
    /// Entries held.
    pub active: Gauge,
    /// Entries forgotten before their TTL because of the cap.
    pub evicted: Counter,
    /// Times the stream was found re-created (or truncated) on reconnecting and read
    /// again from "now minus the TTL".
    pub rereads: Counter,
}

impl Collect for RevocationMetrics {
    fn collect(&self, o: &mut Exposition) {
        o.family(
            "gateway_revocations_total",
            "counter",
            "Revocation events read, by kind (invalid ones are dropped).",
            &self.events,
        );
        o.gauge(
            "gateway_revocations_active",
            "Revoked users and tenants remembered.",
            &self.active,
        );
        o.counter(
            "gateway_revocations_evicted_total",
            "Revocations forgotten before their TTL because too many were held.",
            &self.evicted,
        );
        o.counter(
            "gateway_revocation_stream_rereads_total",
            "Times the revocation stream was found re-created and read again from now minus the TTL.",
            &self.rereads,
        );
    }
}

/// A revoked subject: from when, and how many entries of `order` name it.
#[derive(Clone, Copy, Debug)]
struct Cutoff {
    at: u64,
    refs: usize,
}

#[derive(Default)]
struct Inner {
    /// `sub` → revoked at (seconds since the epoch).
    users: HashMap<String, Cutoff>,
    /// tenant → revoked at.
    tenants: HashMap<String, Cutoff>,
    /// Insertion order with the time each entry expires, for pruning.
    order: VecDeque<(u64, Revoked)>,
}

/// The revocations this instance knows.
pub struct Revocations {
    inner: Mutex<Inner>,
    ttl_secs: u64,
    max_entries: usize,
    metrics: RevocationMetrics,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Revocations {
    /// Remembers each revocation for `ttl_secs`.
    pub fn new(ttl_secs: u64, max_entries: usize) -> Revocations {
        Revocations {
            inner: Mutex::new(Inner::default()),
            ttl_secs,
            max_entries: max_entries.max(1),
            metrics: RevocationMetrics::default(),
        }
    }

    /// What is counted.
    pub fn metrics(&self) -> &RevocationMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that tokens of `who` issued before `at` (seconds) are no good. Returns
    /// false when there is nothing to do: the revocation is past its TTL, or one as late
    /// is already held (the same ban read again, as when the stream is re-read). Then the
    /// caller must not close connections either: those left are ones admitted since, with
    /// tokens issued after the ban.
    pub fn revoke(&self, who: Revoked, at: u64) -> bool {
        let now = now_secs();
        let expires = at.saturating_add(self.ttl_secs);
        if expires <= now {
            return false;
        }
        let mut inner = self.lock();
        self.prune(&mut inner, now);
        let (map, key) = match &who {
            Revoked::User(k) => (&mut inner.users, k.clone()),
            Revoked::Tenant(k) => (&mut inner.tenants, k.clone()),
        };
        // One as late is held, and for at least as long as this one would be: nothing new.
        if map.get(&key).is_some_and(|held| held.at >= at) {
            return false;
        }
        // A later revocation of the same subject moves its cut-off forward.
        let entry = map.entry(key).or_insert(Cutoff { at, refs: 0 });
        entry.at = entry.at.max(at);
        entry.refs += 1;
        inner.order.push_back((expires, who));
        while inner.order.len() > self.max_entries {
            if let Some((_, old)) = inner.order.pop_front() {
                Self::forget(&mut inner, &old);
                self.metrics.evicted.inc();
            }
        }
        self.metrics
            .active
            .set((inner.users.len() + inner.tenants.len()) as i64);
        true
    }

    fn forget(inner: &mut Inner, who: &Revoked) {
        let (map, key) = match who {
            Revoked::User(u) => (&mut inner.users, u),
            Revoked::Tenant(t) => (&mut inner.tenants, t),
        };
        // Only when no later entry for the same subject remains.
        if let Some(c) = map.get_mut(key) {
            c.refs -= 1;
            if c.refs == 0 {
                map.remove(key);
            }
        }
    }

    fn prune(&self, inner: &mut Inner, now: u64) {
        while inner.order.front().is_some_and(|(exp, _)| *exp <= now) {
            if let Some((_, who)) = inner.order.pop_front() {
                Self::forget(inner, &who);
            }
        }
    }

    /// Whether a token of `identity` is revoked: issued before a revocation of its user or
    /// tenant, or without `iat` (so it could be from before).
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        let inner = self.lock();
        if inner.users.is_empty() && inner.tenants.is_empty() {
            return false;
        }
        let cutoff = [
            inner.users.get(&identity.user),
            inner.tenants.get(&identity.tenant),
        ]
        .into_iter()
        .flatten()
        .map(|c| c.at)
        .max();
        match (cutoff, identity.issued_at) {
            (None, _) => false,
            (Some(_), None) => true,
            // A token issued in the same second as the ban is refused: the second is all
            // the resolution `iat` has, and refusing is the safe side.
            (Some(at), Some(iat)) => iat <= at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(tenant: &str, user: &str, iat: Option<u64>) -> Identity {
        Identity {
            tenant: tenant.into(),
            user: user.into(),
            expires_at: u64::MAX,
            issued_at: iat,
        }
    }

    #[test]
    fn tokens_from_before_a_revocation_are_refused_later_ones_accepted() {
        let r = Revocations::new(3600, 100);
        let now = now_secs();
        assert!(r.revoke(Revoked::User("mallory".into()), now - 10));
        assert!(r.is_revoked(&id("a", "mallory", Some(now - 100))));
        assert!(
            r.is_revoked(&id("b", "mallory", None)),
            "no iat: could be older"
        );
        assert!(
            !r.is_revoked(&id("a", "mallory", Some(now))),
            "issued after the ban"
        );
        assert!(!r.is_revoked(&id("a", "alice", Some(now - 100))));

        assert!(r.revoke(Revoked::Tenant("a".into()), now - 5));
        assert!(r.is_revoked(&id("a", "alice", Some(now - 100))));
        assert!(!r.is_revoked(&id("b", "alice", Some(now - 100))));
        assert_eq!(r.metrics().active.get(), 2);
    }

    #[test]
    fn a_revocation_read_again_changes_nothing() {
        let r = Revocations::new(3600, 100);
        let now = now_secs();
        assert!(r.revoke(Revoked::User("mallory".into()), now - 10));
        assert!(
            !r.revoke(Revoked::User("mallory".into()), now - 10),
            "same ban"
        );
        assert!(
            !r.revoke(Revoked::User("mallory".into()), now - 20),
            "older ban"
        );
        assert!(!r.is_revoked(&id("a", "mallory", Some(now - 5))));
        assert!(
            r.revoke(Revoked::User("mallory".into()), now),
            "a later ban"
        );
        assert!(r.is_revoked(&id("a", "mallory", Some(now - 5))));
        assert_eq!(r.metrics().active.get(), 1);
    }

    #[test]
    fn entries_expire_with_the_ttl_and_are_capped() {
        let r = Revocations::new(60, 2);
        let now = now_secs();
        assert!(
            !r.revoke(Revoked::User("old".into()), now - 120),
            "past its TTL"
        );
        for u in ["a", "b", "c"] {
            assert!(r.revoke(Revoked::User(u.into()), now));
        }
        assert_eq!(r.metrics().active.get(), 2);
        assert_eq!(r.metrics().evicted.get(), 1);
        assert!(
            !r.is_revoked(&id("t", "a", None)),
            "the oldest was forgotten"
        );
        assert!(r.is_revoked(&id("t", "c", None)));
    }
}
