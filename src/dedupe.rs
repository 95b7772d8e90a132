//! Dedupe: a bounded memory of recently seen `event_id`s, so an event redelivered by the
//! broker (requeued after a link drop) or republished by an at-least-once producer is not
//! delivered twice. Owned by the single consumer task, so it needs no locking.
//!
//! Ids are remembered per tenant: producers may number events per tenant (and the AMQP
//! `message_id` fallback often is), so one tenant's `order-1001` must never suppress
//! another's.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use foldhash::fast::RandomState;

/// A tenant and one of its event ids.
type Key = (Arc<str>, Arc<str>);

/// The last `capacity` distinct (tenant, id) pairs, oldest forgotten first.
pub struct RecentIds {
    seen: HashSet<Key, RandomState>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl RecentIds {
    /// An empty memory for `capacity` ids (at least one).
    pub fn new(capacity: usize) -> RecentIds {
        let capacity = capacity.max(1);
        RecentIds {
            seen: HashSet::with_capacity_and_hasher(capacity.min(1 << 16), RandomState::default()),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
        }
    }

    /// Remembers `id` of `tenant`; false when it was already remembered (a duplicate).
    pub fn insert(&mut self, tenant: &Arc<str>, id: &Arc<str>) -> bool {
        let key: Key = (tenant.clone(), id.clone());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_are_caught_and_old_ids_forgotten() {
        let mut r = RecentIds::new(3);
        let id = |s: &str| Arc::<str>::from(s);
        let t = id("t");
        assert!(r.insert(&t, &id("a")));
        assert!(!r.insert(&t, &id("a")));
        assert!(r.insert(&t, &id("b")));
        assert!(r.insert(&t, &id("c")));
        assert!(r.insert(&t, &id("d")));
        // "a" fell out of the window; "b".."d" are still remembered.
        assert!(r.insert(&t, &id("a")));
        assert!(!r.insert(&t, &id("d")));
        assert_eq!(r.seen.len(), 3);
    }

    #[test]
    fn the_same_id_in_two_tenants_is_not_a_duplicate() {
        let mut r = RecentIds::new(8);
        let id = Arc::<str>::from("order-1001");
        let (a, b) = (Arc::<str>::from("tenant-a"), Arc::<str>::from("tenant-b"));
        assert!(r.insert(&a, &id));
        assert!(r.insert(&b, &id));
        assert!(!r.insert(&b, &id));
    }
}
