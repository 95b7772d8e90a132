//! History: a bounded memory of recent deliverable events, so a client that reconnects
//! (to this or any other instance: every instance receives every bound event) can be sent
//! what it missed, in order.
//!
//! Events are kept in arrival order with a sequence number; indexes by `event_id`, by
//! (tenant, user) and by tenant (for tenant-wide events) make resuming one user cost
//! what that user missed, not what the whole history holds.

use std::collections::hash_map;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use foldhash::fast::RandomState;

use crate::config::HistoryLimits;
use crate::envelope::{Event, Position};

/// What a resuming client gets before live events.
#[derive(Debug)]
pub enum Replay {
    /// These events, in order (possibly none); live events up to and including sequence
    /// `through` are already among them and must be skipped.
    Events {
        /// Missed events, oldest first.
        events: Vec<Arc<Event>>,
        /// Highest sequence number the history held when the replay was taken.
        through: u64,
    },
    /// The id is unknown, too old, or events may have been lost since: refetch.
    Resync,
}

/// One event held. Its sequence number (its place in this instance's arrival order) is its
/// position: `first_seq` plus its index.
struct Entry {
    event: Arc<Event>,
    at: Instant,
    /// The event's resume position, held here so that finding one reads the entries in
    /// a row instead of every event behind its pointer.
    position: Position,
}

/// What [`History::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's sequence number: live events up to a replay's `through` were in it.
    pub seq: u64,
    /// Events held afterwards.
    pub events: usize,
    /// Bytes held afterwards.
    pub bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Arrival order; sequence numbers are consecutive, `entries[0]` has `first_seq`.
    entries: VecDeque<Entry>,
    first_seq: u64,
    bytes: usize,
    /// By (tenant, `event_id`): ids are only unique within a tenant, and a resume must
    /// only ever find its own tenant's events.
    by_id: HashMap<(Arc<str>, Arc<str>), u64, RandomState>,
    by_user: HashMap<(Arc<str>, Arc<str>), VecDeque<u64>, RandomState>,
    by_tenant: HashMap<Arc<str>, VecDeque<u64>, RandomState>,
    /// Events up to this sequence number may have gaps after them (broker queue lost).
    gap_after: Option<u64>,
    /// Each tenant's newest event, kept after it leaves the history: a page whose
    /// position is its tenant's newest event missed nothing, however long ago that was.
    /// At most [`MAX_TENANTS_REMEMBERED`] tenants.
    newest: HashMap<Arc<str>, Newest, RandomState>,
}

/// A tenant's newest event, as a position.
#[derive(Clone, Debug)]
struct Newest {
    position: Position,
    seq: u64,
    /// Its user (`None`: tenant-wide): only they may name it by its event id.
    user: Option<Arc<str>>,
}

/// Tenants whose newest event is remembered beyond the history; past it the longest
/// quiet ones are forgotten (their pages then resync, as before).
const MAX_TENANTS_REMEMBERED: usize = 100_000;

/// The shared history of one instance.
pub struct History {
    inner: Mutex<Inner>,
    limits: HistoryLimits,
    /// True once the history holds what this instance can know (the backfill from the
    /// fleet's stream, or the first broker link when there is none): resumes wait for it.
    filled: tokio::sync::watch::Sender<bool>,
}

impl History {
    /// An empty history.
    pub fn new(limits: HistoryLimits) -> History {
        History {
            inner: Mutex::new(Inner {
                first_seq: 1,
                ..Inner::default()
            }),
            limits,
            filled: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Most events held.
    pub fn max_events(&self) -> usize {
        self.limits.max_events
    }

    /// Marks the history as filled (see [`History::wait_filled`]).
    pub fn mark_filled(&self) {
        self.filled.send_replace(true);
    }

    /// Waits, at most `limit`, until the history is filled: a client resuming on an
    /// instance that is still backfilling would otherwise get `resync` for an event the
    /// backfill is about to bring.
    pub async fn wait_filled(&self, limit: std::time::Duration) {
        let mut rx = self.filled.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|f| *f)).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the event, appends it, and evicts what the limits no longer allow. Returns
    /// its number and the size held afterwards, read under the same lock so the consumer
    /// never locks twice per event.
    pub fn append(&self, event: Arc<Event>) -> Appended {
        let mut h = self.lock();
        let now = Instant::now();
        let seq = h.first_seq + h.entries.len() as u64;
        // The keys share the event's strings: no allocation per event beyond the maps'.
        let id = event.id.clone();
        let tenant = event.tenant.clone();
        h.by_id.insert((tenant.clone(), id), seq);
        // Positions are not indexed: a page quiet for long names its tenant's newest event
        // (`newest`), and one that names an older event is rare enough to find by a scan
        // (`Inner::position_of`); an index cost a map insert and remove per event.
        let position = event.position();
        let newest = Newest {
            position,
            seq,
            user: event.user.clone(),
        };
        match h.newest.get_mut(&tenant) {
            Some(held) => *held = newest,
            None => {
                if h.newest.len() >= MAX_TENANTS_REMEMBERED {
                    forget_quietest(&mut h.newest);
                }
                h.newest.insert(tenant.clone(), newest);
            }
        }
        match &event.user {
            Some(user) => h
                .by_user
                .entry((tenant, user.clone()))
                .or_default()
                .push_back(seq),
            None => h.by_tenant.entry(tenant).or_default().push_back(seq),
        }
        h.bytes += event.len();
        h.entries.push_back(Entry {
            event,
            at: now,
            position,
        });
        self.evict(&mut h, now);
        Appended {
            seq,
            events: h.entries.len(),
            bytes: h.bytes,
        }
    }

    /// The newest event held and roughly when it arrived (wall clock), if any.
    pub fn last(&self) -> Option<(Arc<Event>, std::time::SystemTime)> {
        let h = self.lock();
        let e = h.entries.back()?;
        let at = std::time::SystemTime::now()
            .checked_sub(e.at.elapsed())
            .unwrap_or(std::time::UNIX_EPOCH);
        Some((e.event.clone(), at))
    }

    /// Records that events may have been lost after everything held so far.
    pub fn mark_gap(&self) {
        let mut h = self.lock();
        let last = h.first_seq + h.entries.len() as u64 - 1;
        h.gap_after = Some(last);
    }

    fn evict(&self, h: &mut Inner, now: Instant) {
        while let Some(front) = h.entries.front() {
            let over = h.entries.len() > self.limits.max_events
                || h.bytes > self.limits.max_bytes
                || now.duration_since(front.at) > self.limits.max_age;
            if !over {
                break;
            }
            let Some(old) = h.entries.pop_front() else {
                break;
            };
            let seq = h.first_seq;
            h.first_seq += 1;
            h.bytes -= old.event.len();
            let key = (old.event.tenant.clone(), old.event.id.clone());
            // One lookup in the usual case; the id's entry is another event's only when
            // the id came again after the duplicate memory forgot it.
            if let Some(held) = h.by_id.remove(&key)
                && held != seq
            {
                h.by_id.insert(key, held);
            }
            let e = &old.event;
            match &e.user {
                Some(user) => {
                    if let hash_map::Entry::Occupied(mut q) =
                        h.by_user.entry((e.tenant.clone(), user.clone()))
                    {
                        q.get_mut().pop_front();
                        if q.get().is_empty() {
                            q.remove();
                        }
                    }
                }
                None => {
                    if let Some(q) = h.by_tenant.get_mut(&*e.tenant) {
                        q.pop_front();
                        if q.is_empty() {
                            h.by_tenant.remove(&*e.tenant);
                        }
                    }
                }
            }
        }
    }

    /// What a client of (`tenant`, `user`) that last saw `last_id` missed. Call it after the
    /// client is registered in the hub, so nothing falls between replay and live events.
    pub fn since(&self, tenant: &str, user: &str, last_id: &str) -> Replay {
        let mut h = self.lock();
        self.evict(&mut h, Instant::now());
        let through = h.first_seq + h.entries.len() as u64 - 1;
        let first_seq = h.first_seq;
        let from = match h.by_id.get(&(Arc::from(tenant), Arc::from(last_id))) {
            Some(&from) => {
                let seen = &h.entries[(from - first_seq) as usize].event;
                // The id must be one this client could have seen; a guessed id of
                // another tenant's event gets a resync, not a position in someone
                // else's stream.
                let visible =
                    &*seen.tenant == tenant && seen.user.as_deref().is_none_or(|u| u == user);
                if !visible {
                    return Replay::Resync;
                }
                from
            }
            // A position, or an event id the history no longer holds: it may still be the
            // tenant's newest event (a page quiet for longer than the history's age).
            None => {
                let named = match Position::parse(last_id) {
                    Some(p) => h.position_of(tenant, p),
                    None => h.newest_by_id(tenant, user, last_id),
                };
                match named {
                    Some(from) => from,
                    None => return Replay::Resync,
                }
            }
        };
        // Events may have been lost after the gap: a position before it cannot be resumed.
        if h.gap_after.is_some_and(|gap| from <= gap) {
            return Replay::Resync;
        }
        let after = |q: Option<&VecDeque<u64>>| -> Vec<u64> {
            q.map(|q| {
                let start = q.partition_point(|s| *s <= from);
                q.range(start..).copied().collect()
            })
            .unwrap_or_default()
        };
        let own = after(h.by_user.get(&(Arc::from(tenant), Arc::from(user))));
        let wide = after(h.by_tenant.get(tenant));
        // Merge the two ordered lists.
        let (mut i, mut j) = (0, 0);
        let mut events = Vec::with_capacity(own.len() + wide.len());
        while i < own.len() || j < wide.len() {
            let seq = if j == wide.len() || (i < own.len() && own[i] < wide[j]) {
                i += 1;
                own[i - 1]
            } else {
                j += 1;
                wide[j - 1]
            };
            events.push(h.entries[(seq - first_seq) as usize].event.clone());
        }
        Replay::Events { events, through }
    }

    /// Events and bytes held.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let h = self.lock();
        (h.entries.len(), h.bytes)
    }
}

impl Inner {
    /// Where position `p` of `tenant` is: an event held (of that tenant: positions are
    /// hashes), or the tenant's newest event even after it left the history (nothing of
    /// the tenant came since, so a resume from there replays nothing).
    fn position_of(&self, tenant: &str, p: Position) -> Option<u64> {
        // The tenant's newest event first: what a quiet page holds, found without a scan.
        if let Some(newest) = self.newest.get(tenant)
            && newest.position == p
        {
            return Some(newest.seq);
        }
        // Newest first: a page resumes from a recent event. Positions are hashes, so the
        // tenant is checked too.
        let at = self
            .entries
            .iter()
            .rposition(|e| e.position == p && &*e.event.tenant == tenant)?;
        Some(self.first_seq + at as u64)
    }

    /// Where event `id` of `tenant` is when the history no longer holds it: only if it
    /// was the tenant's newest event, and one `user` could have received.
    fn newest_by_id(&self, tenant: &str, user: &str, id: &str) -> Option<u64> {
        let newest = self.newest.get(tenant)?;
        let visible = newest.user.as_deref().is_none_or(|u| u == user);
        (visible && newest.position == Position::of(tenant, id)).then_some(newest.seq)
    }
}

/// Forgets the tenths of `newest` whose newest events are the oldest.
fn forget_quietest(newest: &mut HashMap<Arc<str>, Newest, RandomState>) {
    let mut seqs: Vec<u64> = newest.values().map(|n| n.seq).collect();
    let cut = seqs.len() / 10;
    let (_, &mut limit, _) = seqs.select_nth_unstable(cut);
    newest.retain(|_, n| n.seq > limit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> HistoryLimits {
        HistoryLimits {
            max_events: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        }
    }

    fn push(h: &History, id: &str, tenant: &str, user: Option<&str>) -> Arc<Event> {
        let body = serde_json::json!({
            "event_id": id, "event_type": "render.job.progress.v1",
            "tenant_id": tenant, "user_id": user, "data": {}
        });
        let event = Arc::new(Event::parse(serde_json::to_vec(&body).unwrap(), 4096).unwrap());
        h.append(event.clone());
        event
    }

    fn ids(r: Replay) -> Vec<String> {
        match r {
            Replay::Events { events, .. } => events.iter().map(|e| e.id.to_string()).collect(),
            Replay::Resync => vec!["RESYNC".into()],
        }
    }

    #[test]
    fn replays_own_and_tenant_wide_events_in_order() {
        let h = History::new(limits());
        push(&h, "1", "t", Some("u"));
        push(&h, "2", "t", Some("v"));
        push(&h, "3", "t", None);
        push(&h, "4", "other", Some("u"));
        push(&h, "5", "t", Some("u"));
        push(&h, "6", "t", None);
        assert_eq!(ids(h.since("t", "u", "1")), ["3", "5", "6"]);
        assert_eq!(ids(h.since("t", "v", "2")), ["3", "6"]);
        assert_eq!(ids(h.since("t", "u", "6")), Vec::<String>::new());
        // A tenant-wide id is a valid position for every user of the tenant.
        assert_eq!(ids(h.since("t", "v", "3")), ["6"]);
    }

    #[test]
    fn unknown_foreign_or_gapped_ids_resync() {
        let h = History::new(limits());
        push(&h, "1", "t", Some("u"));
        push(&h, "2", "other", Some("u"));
        assert_eq!(ids(h.since("t", "u", "nope")), ["RESYNC"]);
        assert_eq!(
            ids(h.since("t", "u", "2")),
            ["RESYNC"],
            "another tenant's id"
        );
        assert_eq!(ids(h.since("t", "v", "1")), ["RESYNC"], "another user's id");
        h.mark_gap();
        push(&h, "3", "t", Some("u"));
        assert_eq!(
            ids(h.since("t", "u", "1")),
            ["RESYNC"],
            "a gap lies after it"
        );
        assert_eq!(ids(h.since("t", "u", "3")), Vec::<String>::new());
        push(&h, "4", "t", Some("u"));
        assert_eq!(ids(h.since("t", "u", "3")), ["4"]);
    }

    #[test]
    fn ids_are_per_tenant() {
        let h = History::new(limits());
        push(&h, "order-1001", "a", Some("u"));
        push(&h, "order-1001", "b", Some("u"));
        push(&h, "order-1002", "a", Some("u"));
        push(&h, "order-1002", "b", Some("u"));
        // Each tenant resumes from its own event of that id, whichever came last.
        assert_eq!(ids(h.since("a", "u", "order-1001")), ["order-1002"]);
        assert_eq!(ids(h.since("b", "u", "order-1001")), ["order-1002"]);
        assert_eq!(ids(h.since("a", "u", "order-1002")), Vec::<String>::new());
    }

    #[test]
    fn evicts_by_count_bytes_and_age() {
        let h = History::new(HistoryLimits {
            max_events: 3,
            ..limits()
        });
        for i in 0..5 {
            push(&h, &i.to_string(), "t", Some("u"));
        }
        assert_eq!(h.size().0, 3);
        assert_eq!(ids(h.since("t", "u", "1")), ["RESYNC"]);
        assert_eq!(ids(h.since("t", "u", "2")), ["3", "4"]);

        let one = push(&History::new(limits()), "b9", "t", None).len();
        let h = History::new(HistoryLimits {
            max_bytes: one * 2,
            ..limits()
        });
        for i in 0..4 {
            push(&h, &format!("b{i}"), "t", None);
        }
        assert_eq!(h.size(), (2, one * 2));

        let h = History::new(HistoryLimits {
            max_age: Duration::ZERO,
            ..limits()
        });
        push(&h, "old", "t", Some("u"));
        push(&h, "new", "t", Some("u"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(ids(h.since("t", "u", "old")), ["RESYNC"]);
        // Gone from the history, but the tenant's newest event: nothing was missed.
        assert_eq!(ids(h.since("t", "u", "new")), Vec::<String>::new());
        assert_eq!(h.size().0, 0);
        assert!(h.by_user_is_empty());
    }

    impl History {
        fn by_user_is_empty(&self) -> bool {
            let h = self.lock();
            h.by_user.is_empty() && h.by_tenant.is_empty() && h.by_id.is_empty()
        }
    }

    #[test]
    fn positions_resume_from_any_event_of_the_tenant_and_from_its_newest_after_eviction() {
        let h = History::new(HistoryLimits {
            max_events: 3,
            ..limits()
        });
        let other = push(&h, "v1", "t", Some("v"));
        push(&h, "u1", "t", Some("u"));
        // Another user's event as a position: its id stays hidden, the resume works.
        assert_eq!(ids(h.since("t", "u", &other.position().token())), ["u1"]);
        assert_eq!(
            ids(h.since("other", "u", &other.position().token())),
            ["RESYNC"]
        );
        let newest = push(&h, "v2", "t", Some("v"));
        push(&h, "x", "elsewhere", None);
        push(&h, "y", "elsewhere", None);
        push(&h, "z", "elsewhere", None);
        // Evicted, but still the tenant's newest: nothing to replay, no resync.
        assert_eq!(
            ids(h.since("t", "u", &newest.position().token())),
            Vec::<String>::new()
        );
        // By id only for whom it was visible.
        assert_eq!(ids(h.since("t", "v", "v2")), Vec::<String>::new());
        assert_eq!(ids(h.since("t", "u", "v2")), ["RESYNC"]);
        assert_eq!(ids(h.since("t", "u", "p:zz")), ["RESYNC"]);
    }
}
