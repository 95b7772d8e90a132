//! Dedupe: a bounded memory of recently seen `event_id`s, so an event redelivered by the
//! broker (requeued after a link drop) or republished by an at-least-once producer is not
//! delivered twice. Owned by the single consumer task, so it needs no locking.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// The last `capacity` distinct ids, oldest forgotten first.
pub struct RecentIds {
    seen: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    capacity: usize,
}

impl RecentIds {
    /// An empty memory for `capacity` ids (at least one).
    pub fn new(capacity: usize) -> RecentIds {
        let capacity = capacity.max(1);
        RecentIds {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
        }
    }

    /// Remembers `id`; false when it was already remembered (a duplicate).
    pub fn insert(&mut self, id: &Arc<str>) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(id.clone());
        self.order.push_back(id.clone());
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
        assert!(r.insert(&id("a")));
        assert!(!r.insert(&id("a")));
        assert!(r.insert(&id("b")));
        assert!(r.insert(&id("c")));
        assert!(r.insert(&id("d")));
        // "a" fell out of the window; "b".."d" are still remembered.
        assert!(r.insert(&id("a")));
        assert!(!r.insert(&id("d")));
        assert_eq!(r.seen.len(), 3);
    }
}
