//! One connection's send queue: bounded in events and bytes, filled by the fan-out without
//! ever waiting, emptied by the connection's task.
//!
//! Two things happen on the way in. **Interest**: events of types the client did not ask
//! for never enter (they cost the client nothing). **Conflation**: an event with a
//! conflation key (say, progress of one render job) replaces the older unsent event with
//! the same key, which leaves the queue and the new one joins at the tail. What a client
//! receives is so always a subsequence of the events in their original order, missing
//! only superseded progress, and a client that reads slowly keeps up with the latest
//! state instead of being disconnected. Events without a key (a job's completion, a
//! notification) are never dropped: when they do not fit, the connection is a slow client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use super::Outgoing;
use super::end::EndState;
use crate::config::{Pattern, with_words};
use crate::envelope::Event;

/// Longest interest pattern accepted.
pub const MAX_PATTERN_BYTES: usize = 255;
/// Most wildcard words (`*`, `#`) in one pattern, once runs of `#` count as one. No
/// selection needs more, and with fewer the matcher's worst case stays near one pass.
pub const MAX_PATTERN_WILDCARDS: usize = 8;

/// Longest state key a client may select.
pub const MAX_KEY_BYTES: usize = 255;

/// What a client asked for: event types as topic patterns (`*` one word, `#` any number),
/// and optionally state keys (a job page's job): an event that is the state of a key then
/// reaches the client only when its key is selected; events that are no state pass on
/// their type alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    patterns: Vec<Pattern>,
    /// `None`: every key its types select.
    keys: Option<Vec<Arc<str>>>,
}

impl Interest {
    /// Validates `patterns`: at most `max` of them, each at most [`MAX_PATTERN_BYTES`],
    /// made of letters, digits, `_`, `-`, `.`, `*`, `#`, without empty words; `*` and `#`
    /// stand alone as words, at most [`MAX_PATTERN_WILDCARDS`] of them. A run of `#` is
    /// kept as one (`#.#` selects what `#` does).
    pub fn new<S: AsRef<str>>(patterns: &[S], max: usize) -> Result<Interest, String> {
        if patterns.len() > max {
            return Err(format!("at most {max} patterns"));
        }
        let mut out: Vec<Pattern> = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = check_pattern(p.as_ref())?;
            if !out.iter().any(|q| q.as_str() == p) {
                out.extend(Pattern::new(&p));
            }
        }
        Ok(Interest {
            patterns: out,
            keys: None,
        })
    }

    /// Every event type (`#`), as a selection of keys alone starts.
    pub fn everything() -> Interest {
        Interest {
            patterns: Pattern::new("#").into_iter().collect(),
            keys: None,
        }
    }

    /// Whether `event` is wanted: its type, and its state key if it has one.
    pub fn wants(&self, event: &Event) -> bool {
        self.wants_type(&event.event_type)
            && match (&self.keys, event.state_key()) {
                (Some(keys), Some(k)) => keys.contains(&k.value),
                _ => true,
            }
    }

    /// Whether an event of `event_type` is wanted. The type is split into words once for
    /// all patterns; see [`Pattern`] for what a pattern can cost.
    pub fn wants_type(&self, event_type: &str) -> bool {
        with_words(event_type, |words| {
            self.patterns.iter().any(|p| p.matches_words(words))
        })
    }

    /// The state keys selected (`None`: all).
    pub fn keys(&self) -> Option<Vec<&str>> {
        self.keys.as_ref().map(|k| k.iter().map(|k| &**k).collect())
    }

    /// This selection with `more` state keys selected (duplicates ignored), at most `max`
    /// keys in all; the first narrows "every key" to its list.
    pub fn watch<S: AsRef<str>>(&self, more: &[S], max: usize) -> Result<Interest, String> {
        let mut keys = self.keys.clone().unwrap_or_default();
        for k in more {
            let k = k.as_ref();
            check_key(k)?;
            if !keys.iter().any(|have| &**have == k) {
                keys.push(k.into());
            }
        }
        if keys.len() > max {
            return Err(format!("at most {max} keys"));
        }
        Ok(Interest {
            patterns: self.patterns.clone(),
            keys: Some(keys),
        })
    }

    /// This selection without the state keys `less`; with none left it selects no keyed
    /// event (a page that stopped watching its last job).
    pub fn unwatch<S: AsRef<str>>(&self, less: &[S]) -> Interest {
        let keys = self.keys.as_ref().map(|k| {
            k.iter()
                .filter(|k| !less.iter().any(|l| l.as_ref() == &***k))
                .cloned()
                .collect()
        });
        Interest {
            patterns: self.patterns.clone(),
            keys: keys.or(Some(Vec::new())),
        }
    }

    /// The patterns, in the order they were first given.
    pub fn patterns(&self) -> Vec<&str> {
        self.patterns.iter().map(Pattern::as_str).collect()
    }

    /// This selection with `more` added (duplicates ignored), within `max`.
    pub fn with<S: AsRef<str>>(&self, more: &[S], max: usize) -> Result<Interest, String> {
        let mut all = self.patterns();
        all.extend(more.iter().map(AsRef::as_ref));
        Interest::new(&all, max).map(|i| Interest {
            keys: self.keys.clone(),
            ..i
        })
    }

    /// This selection without `less` (compared as [`Interest::new`] keeps them).
    pub fn without<S: AsRef<str>>(&self, less: &[S]) -> Interest {
        let less: Vec<String> = less.iter().map(|l| collapse_hashes(l.as_ref())).collect();
        let patterns = self
            .patterns
            .iter()
            .filter(|p| !less.iter().any(|l| l == p.as_str()))
            .cloned()
            .collect();
        Interest {
            patterns,
            keys: self.keys.clone(),
        }
    }
}

/// A state key a client may select: 1 to [`MAX_KEY_BYTES`] bytes of letters, digits and
/// `_ - . : @`, which covers ids of every common shape and nothing that needs escaping.
fn check_key(k: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@');
    if k.is_empty() || k.len() > MAX_KEY_BYTES || !k.chars().all(allowed) {
        return Err(format!(
            "keys are 1 to {MAX_KEY_BYTES} bytes of letters, digits, _ - . : @"
        ));
    }
    Ok(())
}

/// `p` checked, with its runs of `#` collapsed.
fn check_pattern(p: &str) -> Result<String, String> {
    if p.is_empty() || p.len() > MAX_PATTERN_BYTES {
        return Err(format!("patterns are 1 to {MAX_PATTERN_BYTES} bytes"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '#');
    if !p.chars().all(allowed) {
        return Err(format!(
            "`{p}` has a character other than letters, digits, _ - . * #"
        ));
    }
    for word in p.split('.') {
        let wild_inside = word.len() > 1 && word.contains(['*', '#']);
        if word.is_empty() || wild_inside {
            return Err(format!(
                "`{p}` has an empty word or a wildcard inside a word"
            ));
        }
    }
    let p = collapse_hashes(p);
    if p.split('.').filter(|w| matches!(*w, "*" | "#")).count() > MAX_PATTERN_WILDCARDS {
        return Err(format!(
            "`{p}` has more than {MAX_PATTERN_WILDCARDS} wildcard words"
        ));
    }
    Ok(p)
}

/// `p` with every run of `#` words as one `#`.
fn collapse_hashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut previous = "";
    for word in p.split('.') {
        if word == "#" && previous == "#" {
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(word);
        previous = word;
    }
    out
}

/// What became of an offered item.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued; the queue now holds this many items and bytes.
    Queued(usize, usize),
    /// Queued in place of an older event with the same conflation key.
    Conflated(usize, usize),
    /// Not of interest to this client.
    Filtered,
    /// No room: the client is not keeping up.
    Full,
    /// The connection is gone.
    Closed,
}

/// A queued item and the sequence number of its event in the history (0 for a resync),
/// which the connection compares with its replay to skip live copies at the resume seam.
struct Queued {
    item: Outgoing,
    seq: u64,
}

struct Inner {
    items: VecDeque<Queued>,
    bytes: usize,
    /// `None`: everything the token allows.
    interest: Option<Interest>,
    closed: bool,
}

/// A connection's queue, shared by the fan-out (which offers) and the connection (which
/// takes).
pub struct SendQueue {
    inner: Mutex<Inner>,
    /// Why the connection ended and the hub's kick (kept here rather than in an
    /// allocation of their own per connection).
    end: EndState,
    /// The connection's task, woken by an offer: one waiter only, so an atomic slot rather
    /// than a `Notify` and its lock, taken for every delivery.
    wake: AtomicWaker,
    max_len: usize,
    max_bytes: usize,
}

impl SendQueue {
    /// An empty queue holding at most `max_len` items and `max_bytes` bytes.
    pub fn new(max_len: usize, max_bytes: usize, interest: Option<Interest>) -> SendQueue {
        SendQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                interest,
                closed: false,
            }),
            end: EndState::default(),
            wake: AtomicWaker::new(),
            max_len,
            max_bytes,
        }
    }

    /// Appends `item` (`bytes` long), releases the lock and wakes the connection; returns
    /// the items and bytes queued.
    fn push(
        &self,
        mut q: std::sync::MutexGuard<'_, Inner>,
        item: &Outgoing,
        seq: u64,
        bytes: usize,
    ) -> (usize, usize) {
        q.items.push_back(Queued {
            item: item.clone(),
            seq,
        });
        q.bytes += bytes;
        let sizes = (q.items.len(), q.bytes);
        // The lock is released before the wake, so the woken task never waits for it.
        drop(q);
        self.wake.wake();
        sizes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `item`, number `seq` in the history (0 for a resync), without waiting.
    pub fn offer(&self, item: &Outgoing, seq: u64) -> Offered {
        let bytes = item.bytes();
        let mut q = self.lock();
        if q.closed {
            return Offered::Closed;
        }
        if let Outgoing::Event(e) = item {
            if q.interest.as_ref().is_some_and(|i| !i.wants(e)) {
                return Offered::Filtered;
            }
            if let Some(key) = e.conflation_key() {
                let older = q.items.iter().position(
                    |o| matches!(&o.item, Outgoing::Event(x) if x.conflation_key() == Some(key)),
                );
                if let Some(i) = older
                    && let Some(old) = q.items.remove(i)
                {
                    q.bytes -= old.item.bytes();
                    if q.bytes + bytes <= self.max_bytes {
                        let (items, bytes) = self.push(q, item, seq, bytes);
                        return Offered::Conflated(items, bytes);
                    }
                    // A newer event too large for the room the older one left.
                    q.bytes += old.item.bytes();
                    q.items.insert(i, old);
                    return Offered::Full;
                }
            }
        }
        if q.items.len() >= self.max_len || q.bytes + bytes > self.max_bytes {
            return Offered::Full;
        }
        let (items, bytes) = self.push(q, item, seq, bytes);
        Offered::Queued(items, bytes)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// The next item and its sequence number, if one is waiting.
    pub fn try_pop(&self) -> Option<(Outgoing, u64)> {
        let mut q = self.lock();
        let Queued { item, seq } = q.items.pop_front()?;
        q.bytes -= item.bytes();
        Some((item, seq))
    }

    /// Waits for the next item and its sequence number. One task only may wait (the
    /// connection's).
    pub async fn pop(&self) -> (Outgoing, u64) {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.try_pop() {
                return Poll::Ready(item);
            }
            self.wake.register(cx.waker());
            // An offer between the look above and the registration woke nobody: look again.
            match self.try_pop() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Why the connection ended, and its kick.
    pub fn end(&self) -> &EndState {
        &self.end
    }

    /// Replaces the selection; `None` is everything the token allows.
    pub fn set_interest(&self, interest: Option<Interest>) {
        self.lock().interest = interest;
    }

    /// The current selection.
    pub fn interest(&self) -> Option<Interest> {
        self.lock().interest.clone()
    }

    /// Refuses everything from now on and frees what is queued.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
    }
}

/// Conflates a replay: of the events sharing a conflation key, only the last is kept, in
/// its place; everything else stays, in order.
pub fn conflate(events: Vec<Outgoing>) -> (Vec<Outgoing>, usize) {
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, o) in events.iter().enumerate() {
        if let Outgoing::Event(e) = o
            && let Some(k) = e.conflation_key()
        {
            last.insert(k, i);
        }
    }
    let keep: Vec<bool> = events
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            Outgoing::Event(e) => e.conflation_key().is_none_or(|k| last.get(k) == Some(&i)),
            Outgoing::Resync | Outgoing::Snapshot(_) => true,
        })
        .collect();
    let dropped = keep.iter().filter(|k| !**k).count();
    let kept = events
        .into_iter()
        .zip(keep)
        .filter_map(|(o, k)| k.then_some(o))
        .collect();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::testing::labels;

    fn event(id: &str, ty: &str, key: Option<&str>) -> Outgoing {
        Outgoing::Event(Arc::new(crate::envelope::testing::keyed(id, ty, key)))
    }

    fn ids(q: &SendQueue) -> Vec<String> {
        labels(std::iter::from_fn(|| q.try_pop()).map(|(o, _)| o))
    }

    const P: &str = "render.job.progress.v1";

    #[test]
    fn newer_progress_replaces_older_and_joins_the_tail() {
        let q = SendQueue::new(3, 1 << 20, None);
        assert!(matches!(
            q.offer(&event("p1", P, Some("j1")), 1),
            Offered::Queued(1, _)
        ));
        assert!(matches!(
            q.offer(&event("p2", P, Some("j2")), 1),
            Offered::Queued(2, _)
        ));
        assert!(matches!(
            q.offer(&event("n1", "notification.created.v1", None), 1),
            Offered::Queued(3, _)
        ));
        // Full, but conflatable: it does not count toward the limit.
        assert!(matches!(
            q.offer(&event("p3", P, Some("j1")), 1),
            Offered::Conflated(3, _)
        ));
        // A non-conflatable event does not fit.
        assert_eq!(
            q.offer(&event("n2", "notification.created.v1", None), 1),
            Offered::Full
        );
        assert_eq!(ids(&q), ["p2", "n1", "p3"]);
    }

    #[test]
    fn interest_filters_before_the_queue() {
        let interest = Interest::new(&["render.job.#"], 8).unwrap();
        let q = SendQueue::new(8, 1 << 20, Some(interest));
        assert_eq!(
            q.offer(&event("n", "notification.created.v1", None), 1),
            Offered::Filtered
        );
        assert!(matches!(
            q.offer(&event("p", P, None), 1),
            Offered::Queued(1, _)
        ));
        q.set_interest(None);
        assert!(matches!(
            q.offer(&event("n", "notification.created.v1", None), 1),
            Offered::Queued(2, _)
        ));
        q.close();
        assert_eq!(q.offer(&event("x", P, None), 1), Offered::Closed);
    }

    #[test]
    fn patterns_are_checked() {
        assert!(Interest::new(&["render.job.#", "notification.*.v1", "a-b_c.d"], 8).is_ok());
        for bad in [
            "",
            "a..b",
            "a.b*",
            "render job",
            "a/b",
            "ä",
            &"x".repeat(256),
        ] {
            assert!(Interest::new(&[bad], 8).is_err(), "{bad:?}");
        }
        assert!(Interest::new(&["a", "b", "c"], 2).is_err());
        let i = Interest::new(&["a"], 3)
            .unwrap()
            .with(&["b", "a"], 3)
            .unwrap();
        assert_eq!(i.patterns(), ["a", "b"]);
        assert_eq!(i.without(&["a"]).patterns(), ["b"]);
        assert!(i.wants_type("a") && !i.wants_type("c"));
    }

    #[test]
    fn hash_runs_count_once_and_wildcards_are_capped() {
        // What a probe sent: 100 `#` words, accepted as the one `#` they mean.
        let run = format!("{}.z0", ["#"; 100].join("."));
        let i = Interest::new(&[run.as_str()], 8).unwrap();
        assert_eq!(i.patterns(), ["#.z0"]);
        assert!(i.wants_type("a.b.c.z0") && !i.wants_type("a.b.c.d"));
        // Removing it as the client sent it works too.
        assert!(i.without(&[run.as_str()]).patterns().is_empty());
        let eight = ["*"; MAX_PATTERN_WILDCARDS].join(".");
        assert!(Interest::new(&[eight.as_str()], 8).is_ok());
        let nine = format!("{eight}.#");
        assert!(Interest::new(&[nine.as_str()], 8).is_err());
        let spread = ["#.a"; MAX_PATTERN_WILDCARDS + 1].join(".");
        assert!(Interest::new(&[spread.as_str()], 8).is_err());
    }

    #[test]
    fn replays_keep_the_last_of_each_key_in_place() {
        let replay = vec![
            event("p1", P, Some("j1")),
            event("p2", P, Some("j2")),
            event("p3", P, Some("j1")),
            event("done1", "render.job.completed.v1", None),
            event("p4", P, Some("j2")),
        ];
        let (kept, dropped) = conflate(replay);
        assert_eq!(labels(&kept), ["p3", "done1", "p4"]);
        assert_eq!(dropped, 2);
    }

    #[tokio::test]
    async fn pop_waits_for_an_offer() {
        let q = Arc::new(SendQueue::new(4, 1 << 20, None));
        let taker = {
            let q = q.clone();
            tokio::spawn(async move { q.pop().await })
        };
        tokio::task::yield_now().await;
        q.offer(&event("late", P, None), 1);
        assert!(matches!(taker.await.unwrap(), (Outgoing::Event(e), _) if &*e.id == "late"));
    }
}
