//! Latest state per key: for every state key the gateway knows (by default a render job,
//! keyed by its `job_id`), the latest event of that key, so a page that opens, wakes or
//! resyncs gets the current state of what it shows at once (a snapshot) instead of waiting
//! for the next change or refetching over REST.
//!
//! Fed by the pipeline from the live path and from the history stream's backfill, in the
//! pipeline's order, so an old and a fresh instance hold the same state for every key whose
//! latest event the stream still holds. Bounded in keys per user, keys per tenant, bytes
//! and age; the least recently updated key goes first.
//!
//! A snapshot and the live events after it meet without a gap or a duplicate through the
//! pipeline's sequence numbers: the snapshot answers the highest sequence it reflects
//! (`through`), and a connection drops the keyed live events it already holds up to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::time::Instant;

use crate::config::StateLimits;
use crate::envelope::{Event, StateKey};

struct Slot {
    tenant: Arc<str>,
    /// Its user (`None`: the tenant-wide events).
    user: Option<Arc<str>>,
    key: StateKey,
    event: Arc<Event>,
    /// The pipeline's sequence number of `event`.
    seq: u64,
    at: Instant,
}

/// One tenant's keys. Indexed per tenant, so that an update hashes the tenant once and
/// then only the key and the user (the unrouted benchmark's profile had the state store
/// at a fifth of the gateway's CPU with flat maps keyed by tenant and key).
#[derive(Default)]
struct Tenant {
    /// The slot of each key: every slot held is its key's.
    keys: HashMap<StateKey, u64, RandomState>,
    /// The tenant's slots in update order: its limit takes the first.
    order: BTreeSet<u64>,
    /// Each user's slots (`None`: the tenant-wide events') in update order: a user's
    /// limit takes the first.
    users: HashMap<Option<Arc<str>>, BTreeSet<u64>, RandomState>,
}

#[derive(Default)]
struct Inner {
    /// Every slot, by update order: the first is the least recently updated (the bytes
    /// and age limits take it).
    slots: BTreeMap<u64, Slot>,
    next: u64,
    /// Tenants with at least one slot.
    tenants: HashMap<Arc<str>, Tenant, RandomState>,
    bytes: usize,
    /// Highest pipeline sequence number applied.
    through: u64,
}

/// The latest event of every state key.
pub struct StateStore {
    inner: Mutex<Inner>,
    limits: StateLimits,
}

/// The state a connection selects, oldest update first.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The latest event of each selected key, in the order the keys were last updated.
    pub events: Vec<Arc<Event>>,
    /// The highest pipeline sequence number the snapshot reflects: keyed live events up
    /// to it are already in it, or superseded by it.
    pub through: u64,
}

impl StateStore {
    /// An empty store.
    pub fn new(limits: StateLimits) -> StateStore {
        StateStore {
            inner: Mutex::default(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock's data is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `event` (sequence `seq` in the pipeline) the state of its key, and forgets
    /// what the limits no longer allow. Returns (keys, bytes) held afterwards. An event
    /// without a state key changes nothing.
    pub fn update(&self, seq: u64, event: &Arc<Event>) -> (usize, usize) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(key) = event.state_key() else {
            return (s.slots.len(), s.bytes);
        };
        s.through = s.through.max(seq);
        let tenant = s.tenants.entry(event.tenant.clone()).or_default();
        if let Some(&old) = tenant.keys.get(key) {
            if s.slots.get(&old).is_some_and(|slot| slot.seq > seq) {
                // An older event than the state held (a backfill behind the live path):
                // the state does not go back.
                return (s.slots.len(), s.bytes);
            }
            tenant.forget(old, &mut s.slots, &mut s.bytes);
        }
        let at = s.next;
        s.next += 1;
        tenant.keys.insert(key.clone(), at);
        tenant.order.insert(at);
        let user = tenant.users.entry(event.user.clone()).or_default();
        user.insert(at);
        let user_over = user.len() > self.limits.max_keys_per_user;
        s.bytes += event.len();
        s.slots.insert(
            at,
            Slot {
                tenant: event.tenant.clone(),
                user: event.user.clone(),
                key: key.clone(),
                event: event.clone(),
                seq,
                at: Instant::now(),
            },
        );
        if user_over {
            let max = self.limits.max_keys_per_user;
            tenant.enforce_user(&event.user, max, &mut s.slots, &mut s.bytes);
        }
        while tenant.order.len() > self.limits.max_keys_per_tenant {
            let Some(&oldest) = tenant.order.first() else {
                break;
            };
            tenant.forget(oldest, &mut s.slots, &mut s.bytes);
        }
        if tenant.order.is_empty() {
            // Only with a limit of 0 keys: nothing of it is held.
            s.tenants.remove(&event.tenant);
        }
        while s.bytes > self.limits.max_bytes {
            let Some(&oldest) = s.slots.keys().next() else {
                break;
            };
            s.remove(oldest);
        }
        s.expire(self.limits.max_age);
        (s.slots.len(), s.bytes)
    }

    /// The latest state of every key of `tenant` that `user` may see (its own and the
    /// tenant-wide keys) and `wants` selects, oldest update first.
    pub fn snapshot(
        &self,
        tenant: &str,
        user: &str,
        wants: impl Fn(&Event, &StateKey) -> bool,
    ) -> Snapshot {
        let mut s = self.lock();
        s.expire(self.limits.max_age);
        let Some(t) = s.tenants.get(tenant) else {
            return Snapshot {
                events: Vec::new(),
                through: s.through,
            };
        };
        let mut updates: Vec<u64> = [Some(Arc::from(user)), None]
            .iter()
            .filter_map(|u| t.users.get(u))
            .flat_map(|set| set.iter().copied())
            .collect();
        updates.sort_unstable();
        let events = updates
            .into_iter()
            .filter_map(|at| s.slots.get(&at))
            .filter(|slot| wants(&slot.event, &slot.key))
            .map(|slot| slot.event.clone())
            .collect();
        Snapshot {
            events,
            through: s.through,
        }
    }

    /// Keys and bytes held.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let s = self.lock();
        (s.slots.len(), s.bytes)
    }
}

impl Tenant {
    /// Forgets slot `at`, one of this tenant's: from `slots` and from the indexes.
    fn forget(&mut self, at: u64, slots: &mut BTreeMap<u64, Slot>, bytes: &mut usize) {
        let Some(slot) = slots.remove(&at) else {
            return;
        };
        *bytes -= slot.event.len();
        self.keys.remove(&slot.key);
        self.order.remove(&at);
        if let Some(set) = self.users.get_mut(&slot.user) {
            set.remove(&at);
            if set.is_empty() {
                self.users.remove(&slot.user);
            }
        }
    }

    /// Forgets `user`'s least recently updated keys beyond `max`.
    fn enforce_user(
        &mut self,
        user: &Option<Arc<str>>,
        max: usize,
        slots: &mut BTreeMap<u64, Slot>,
        bytes: &mut usize,
    ) {
        while let Some(oldest) = self
            .users
            .get(user)
            .filter(|set| set.len() > max)
            .and_then(|set| set.first().copied())
        {
            self.forget(oldest, slots, bytes);
        }
    }
}

impl Inner {
    /// Forgets slot `at`, and its tenant when that was the tenant's last.
    fn remove(&mut self, at: u64) {
        let Some(name) = self.slots.get(&at).map(|slot| slot.tenant.clone()) else {
            return;
        };
        let Some(tenant) = self.tenants.get_mut(&name) else {
            return;
        };
        tenant.forget(at, &mut self.slots, &mut self.bytes);
        if tenant.order.is_empty() {
            self.tenants.remove(&name);
        }
    }

    fn expire(&mut self, max_age: Duration) {
        while let Some((&at, slot)) = self.slots.first_key_value() {
            if slot.at.elapsed() < max_age {
                break;
            }
            self.remove(at);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::EventKeys;
    use crate::envelope::testing::event;

    pub(crate) const LIMITS: StateLimits = StateLimits {
        max_keys_per_user: 100,
        max_keys_per_tenant: 1000,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
    };

    fn ids(s: &Snapshot) -> Vec<String> {
        s.events.iter().map(|e| e.id.to_string()).collect()
    }

    fn put(store: &StateStore, seq: u64, id: &str, job: &str, user: Option<&str>) {
        let e = Arc::new(event_of(id, job, user));
        store.update(seq, &e);
    }

    /// A progress event of `job`, the state of that job.
    pub(crate) fn event_of(id: &str, job: &str, user: Option<&str>) -> Event {
        let keys = EventKeys {
            conflation: None,
            state: Some(StateKey {
                rule: 0,
                value: job.into(),
            }),
        };
        event(id, "render.job.progress.v1", "t", user).with_keys(keys)
    }

    #[test]
    fn keeps_the_latest_event_per_key_in_update_order() {
        let store = StateStore::new(LIMITS);
        put(&store, 1, "a1", "a", Some("u"));
        put(&store, 2, "b1", "b", Some("u"));
        put(&store, 3, "a2", "a", Some("u"));
        put(&store, 4, "t1", "t", None);
        put(&store, 5, "x1", "x", Some("someone-else"));
        let s = store.snapshot("t", "u", |_, _| true);
        assert_eq!(ids(&s), ["b1", "a2", "t1"]);
        assert_eq!(s.through, 5);
        // Another tenant's user of the same name sees nothing of it.
        assert!(store.snapshot("other", "u", |_, _| true).events.is_empty());
        // Selected by key.
        let one = store.snapshot("t", "u", |_, k| &*k.value == "a");
        assert_eq!(ids(&one), ["a2"]);
    }

    #[test]
    fn an_older_event_never_replaces_a_newer_state() {
        let store = StateStore::new(LIMITS);
        put(&store, 7, "new", "a", Some("u"));
        put(&store, 3, "old", "a", Some("u"));
        assert_eq!(ids(&store.snapshot("t", "u", |_, _| true)), ["new"]);
    }

    #[test]
    fn limits_forget_the_least_recently_updated_key() {
        let store = StateStore::new(StateLimits {
            max_keys_per_user: 2,
            max_keys_per_tenant: 3,
            ..LIMITS
        });
        put(&store, 1, "a", "a", Some("u"));
        put(&store, 2, "b", "b", Some("u"));
        put(&store, 3, "a2", "a", Some("u"));
        put(&store, 4, "c", "c", Some("u"));
        // Per user: b was the least recently updated.
        assert_eq!(ids(&store.snapshot("t", "u", |_, _| true)), ["a2", "c"]);
        put(&store, 5, "v1", "v1", Some("v"));
        put(&store, 6, "v2", "v2", Some("v"));
        // Per tenant: 3 keys; a2 goes.
        assert_eq!(store.size().0, 3);
        assert_eq!(ids(&store.snapshot("t", "u", |_, _| true)), ["c"]);
        let bytes = StateStore::new(StateLimits {
            max_bytes: 1,
            ..LIMITS
        });
        put(&bytes, 1, "a", "a", Some("u"));
        assert_eq!(bytes.size(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_not_updated_within_the_age_are_forgotten() {
        let store = StateStore::new(StateLimits {
            max_age: Duration::from_secs(60),
            ..LIMITS
        });
        put(&store, 1, "a", "a", Some("u"));
        tokio::time::advance(Duration::from_secs(30)).await;
        put(&store, 2, "b", "b", Some("u"));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(ids(&store.snapshot("t", "u", |_, _| true)), ["b"]);
    }

    /// What the state costs, printed (no assertion: timings belong to benchmarks):
    /// `cargo test --release --lib state::tests::cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost() {
        let store = StateStore::new(StateLimits {
            max_keys_per_user: 100_000,
            max_keys_per_tenant: 1_000_000,
            max_bytes: 1 << 30,
            ..LIMITS
        });
        let jobs: Vec<Arc<Event>> = (0..100)
            .map(|j| Arc::new(event_of(&format!("e{j}"), &format!("job-{j}"), Some("u"))))
            .collect();
        let updates = 100_000;
        let started = std::time::Instant::now();
        for i in 0..updates {
            store.update(i + 1, &jobs[(i % 100) as usize]);
        }
        let update = started.elapsed() / updates as u32;
        let snapshots = 10_000;
        let started = std::time::Instant::now();
        for _ in 0..snapshots {
            std::hint::black_box(store.snapshot("t", "u", |_, _| true));
        }
        let snapshot = started.elapsed() / snapshots;
        // The unrouted benchmark's pattern: every event a new job of a new user, so each
        // one evicts the tenant's least recently updated key.
        let full = StateStore::new(StateLimits {
            max_keys_per_tenant: 20_000,
            max_bytes: 1 << 30,
            ..LIMITS
        });
        let fresh: Vec<Arc<Event>> = (0..updates)
            .map(|j| {
                let user = format!("user-{}", j % 100_000);
                Arc::new(event_of(&format!("e{j}"), &format!("job-{j}"), Some(&user)))
            })
            .collect();
        let started = std::time::Instant::now();
        for (i, event) in fresh.iter().enumerate() {
            full.update(i as u64 + 1, event);
        }
        let evicting = started.elapsed() / updates as u32;
        eprintln!(
            "update per event: {update:?}; a new key evicting the oldest: {evicting:?}; \
             snapshot of a user's 100 jobs: {snapshot:?}"
        );
    }
}
