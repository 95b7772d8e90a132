//! Pipeline: what becomes of each message the link hands over. It reads the message
//! (revocation events are left to their own feed; the route, the envelope, the route's
//! excluded types), drops duplicates, keeps each event in the history and fans it out
//! through the hub. The link loop (connect, consume, acknowledge, reconnect) only picks
//! the way in:
//!
//! - [`Pipeline::live`]: a message of this instance's queue: history, then clients.
//! - [`Pipeline::backfill`]: the fleet's stream on a fresh start: history only (no client
//!   waits for it yet).
//! - a [`Gap`]: the fleet's stream after the queue was lost, read in full first; once it
//!   shows that it covers the gap, its events go to history and clients.
//!
//! **Duplicates.** One memory of recent ids per tenant, kept across links (redeliveries
//! after a reconnect are exactly what it catches) and shared by the three ways in, so an
//! event that comes both from the stream and from the queue is kept once. A gap's events
//! are checked against it (and entered into it) only when they are delivered: a read that
//! fails half-way is tried again, and must not leave events marked as seen that were never
//! delivered.
//!
//! Every event kept passes through [`Pipeline::keep`], from the live path, the backfill
//! and a gap alike: the history and the latest state per key are fed there.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

use super::{BrokerMetrics, Consumer};
use crate::config::{Binding, Routes, Selected};
use crate::dedupe::RecentIds;
use crate::envelope::{DropReason, Envelope, Event};
use crate::history::History;
use crate::hub::Hub;
use crate::keys::KeyRules;
use crate::mapping::Meta;
use crate::state::StateStore;
use crate::telemetry::untrusted;

/// Called with each event after it entered the history and before the hub fans it out;
/// lets tests hold the consumer exactly at the resume seam.
pub type SeamHook = Arc<dyn Fn(&Event) -> BoxFuture<'static, ()> + Send + Sync>;

/// Parsing, routes, dedupe, history and fan-out, for one consumer.
pub(crate) struct Pipeline {
    /// Largest body accepted.
    max_event_bytes: usize,
    /// Which route each message takes, and so where its envelope fields are found.
    routes: Routes,
    /// Bindings of revocation events, which are never delivered to browsers (they reach
    /// the revocation feed through its own stream).
    revocation_keys: Vec<Binding>,
    /// Which events stand for the same thing: conflation and state keys.
    keys: KeyRules,
    /// The latest event of every state key (`None`: no state is kept).
    state: Option<Arc<StateStore>>,
    /// Recent (tenant, event id) pairs; see "Duplicates" above.
    recent: RecentIds,
    /// Recent events, for resuming clients.
    history: Arc<History>,
    /// Where events go.
    hub: Arc<Hub>,
    /// Messages in, drops, duplicates, history size, backfilled events.
    metrics: Arc<BrokerMetrics>,
    /// See [`SeamHook`]; `None` outside tests.
    seam_hook: Option<SeamHook>,
}

/// A message read: its envelope, validated, and the route it came through (whose rules
/// give its keys).
pub(crate) struct Read {
    envelope: Envelope,
    /// Place of the route in the routes.
    route: usize,
}

/// A gap fill in progress: the fleet's stream read from shortly before the newest event
/// held. Events up to that one are already held; those after it are what the lost queue
/// would have brought.
pub(crate) struct Gap {
    /// The newest event held when the read began.
    last: Arc<Event>,
    /// Roughly when it arrived: the read starts shortly before.
    at: std::time::SystemTime,
    /// The stream showed `last`, so it covers the gap.
    found: bool,
    /// Events read after `last`, in order, not yet made events (see [`Pipeline::keep`]).
    missed: Vec<Read>,
}

impl Gap {
    /// Where the read starts.
    pub(crate) fn since(&self) -> std::time::SystemTime {
        self.at
    }

    /// Whether the stream showed the newest event held, so that what followed it is
    /// everything the lost queue would have brought.
    pub(crate) fn covered(&self) -> bool {
        self.found
    }

    /// Events read after the newest one held.
    pub(crate) fn missed(&self) -> usize {
        self.missed.len()
    }
}

impl Pipeline {
    /// The pipeline of `consumer`'s settings.
    pub(super) fn new(consumer: &Consumer) -> Pipeline {
        Pipeline {
            max_event_bytes: consumer.max_event_bytes,
            routes: consumer.routes.clone(),
            revocation_keys: consumer.revocation_keys.clone(),
            keys: KeyRules::new(
                consumer.conflate.clone(),
                consumer.state_rules.clone(),
                &consumer.routes,
            ),
            state: consumer.state.clone(),
            recent: RecentIds::new(consumer.dedupe_window),
            history: consumer.history.clone(),
            hub: consumer.hub.clone(),
            metrics: consumer.metrics.clone(),
            seam_hook: consumer.seam_hook.clone(),
        }
    }

    /// A message of this instance's queue: into the history, then to its clients.
    pub(super) async fn live(&mut self, delivery: Delivery) {
        let redelivered = delivery.redelivered;
        if let Some(read) = self.read(delivery)
            && self.first_seen(&read.envelope, redelivered)
        {
            self.deliver(read).await;
        }
    }

    /// A message of the fleet's stream on a fresh start: into the history only.
    pub(super) fn backfill(&mut self, delivery: Delivery) {
        let redelivered = delivery.redelivered;
        if let Some(read) = self.read(delivery)
            && self.first_seen(&read.envelope, redelivered)
        {
            self.metrics.backfilled.inc();
            self.keep(read);
        }
    }

    /// Most events the history holds: how many a backfill reads.
    pub(super) fn history_capacity(&self) -> usize {
        self.history.max_events()
    }

    /// A gap fill from the newest event held; `None` when nothing is held (the stream
    /// cannot show where the gap begins).
    pub(super) fn gap(&self) -> Option<Gap> {
        let (last, at) = self.history.last()?;
        Some(Gap {
            last,
            at,
            found: false,
            missed: Vec::new(),
        })
    }

    /// A message of the fleet's stream, read for `gap`: kept aside if it came after the
    /// newest event held. The duplicate memory is not touched (see "Duplicates").
    pub(super) fn read_gap(&self, gap: &mut Gap, delivery: Delivery) {
        let Some(read) = self.read(delivery) else {
            return;
        };
        if gap.found {
            gap.missed.push(read);
        } else {
            let event = &read.envelope;
            gap.found = **event.tenant() == *gap.last.tenant && *event.id() == gap.last.id;
        }
    }

    /// A gap shown to be covered: its events, less those already seen, into the history
    /// and to clients, in order.
    pub(super) async fn fill_gap(&mut self, gap: Gap) {
        for read in gap.missed {
            if self.first_seen(&read.envelope, false) {
                self.metrics.backfilled.inc();
                self.deliver(read).await;
            }
        }
    }

    /// The history holds what this instance can know: resumes waiting for it go on.
    pub(super) fn history_filled(&self) {
        self.history.mark_filled();
    }

    /// Events may have been lost after everything held: resumes from before cannot be
    /// served.
    pub(super) fn history_gap(&self) {
        self.history.mark_gap();
    }

    /// Tells every client that events may have been lost; returns how many were told.
    pub(super) fn resync_all(&self) -> usize {
        self.hub.resync_all()
    }

    /// Reads one message into a validated envelope, or counts why not. Revocation events
    /// are not counted: they are the revocation feed's.
    fn read(&self, delivery: Delivery) -> Option<Read> {
        let key = delivery.routing_key.as_str();
        if self.revocation_keys.iter().any(|b| b.matches(key)) {
            return None;
        }
        self.metrics.received.inc();
        let headers = delivery.properties.headers().as_ref();
        let header = |name: &str| -> Option<String> {
            match headers?.inner().get(name)? {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            }
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        let meta = Meta {
            message_id,
            header: &header,
        };
        let parsed = match self.routes.select(delivery.exchange.as_str(), key) {
            Selected::Route(index, route) => {
                Envelope::read(delivery.data, self.max_event_bytes, &route.mapping, &meta).and_then(
                    |envelope| {
                        if route.excludes(envelope.event_type()) {
                            Err(DropReason::ExcludedType)
                        } else {
                            Ok(Read {
                                envelope,
                                route: index,
                            })
                        }
                    },
                )
            }
            Selected::None => Err(DropReason::NoRoute),
            Selected::Conflict => Err(DropReason::RouteConflict),
        };
        parsed
            .map_err(|reason| {
                self.metrics.dropped.inc(reason);
                tracing::warn!(
                    routing_key = %untrusted(delivery.routing_key.as_str()),
                    reason = reason.as_str(),
                    "dropping message: {reason}"
                );
            })
            .ok()
    }

    /// Whether `event`'s id is new for its tenant (and remembers it); counts it if not.
    fn first_seen(&mut self, event: &Envelope, redelivered: bool) -> bool {
        if self.recent.insert(event.tenant(), event.id()) {
            return true;
        }
        self.metrics.duplicates.inc();
        tracing::debug!(
            event_id = %untrusted(&**event.id()),
            trace_id = %untrusted(event.trace_id().unwrap_or("")),
            redelivered,
            "duplicate event dropped"
        );
        false
    }

    /// Makes the event, complete (with its key), and keeps it in the history: the one
    /// place every event kept passes, whichever way it came. The key is worked out only
    /// here, after the checks that may drop the message.
    fn keep(&self, read: Read) -> (Arc<Event>, u64) {
        let Read { envelope, route } = read;
        let keys = self
            .keys
            .keys(route, envelope.event_type(), envelope.json());
        let event = Arc::new(envelope.into_event(keys));
        let kept = self.history.append(event.clone());
        self.metrics.history_events.set(kept.events as i64);
        self.metrics.history_bytes.set(kept.bytes as i64);
        // Before the fan-out: a snapshot taken meanwhile then reflects the event, and the
        // connection skips its live copy (see `state`).
        if let Some(state) = &self.state
            && event.state_key().is_some()
        {
            let (keys, bytes) = state.update(kept.seq, &event);
            self.metrics.state_keys.set(keys as i64);
            self.metrics.state_bytes.set(bytes as i64);
        }
        (event, kept.seq)
    }

    /// Into the history before the hub: a client registering meanwhile then finds the
    /// event in its replay or gets it live (or both, and skips one).
    async fn deliver(&self, read: Read) {
        let (event, seq) = self.keep(read);
        if let Some(hook) = &self.seam_hook {
            hook(&event).await;
        }
        let recipients = self.hub.publish(&event, seq);
        tracing::debug!(
            event_id = %untrusted(&*event.id),
            event_type = %untrusted(&*event.event_type),
            trace_id = %untrusted(event.trace_id.as_deref().unwrap_or("")),
            recipients,
            "event dispatched"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{HistoryLimits, KeyRule, Mapping, Pointer, Route, StateRule};
    use crate::history::Replay;
    use crate::hub::testing::ids as received;
    use crate::hub::{Outgoing, Subscription, Transport};

    const PROGRESS: &str = "render.job.progress.v1";
    /// Not conflated: every one reaches the client.
    const NOTE: &str = "notification.created.v1";

    /// A pipeline reading the catalog shape from any exchange, with `excluded.#` left
    /// out, revocations on `revoke.#`, and progress conflated by job.
    fn pipeline() -> Pipeline {
        let binding = |key: &str| Binding {
            exchange: "x".into(),
            key: key.into(),
        };
        let route = Route {
            name: "default".into(),
            binding: binding("#"),
            mapping: Mapping::default(),
            exclude_types: vec!["excluded.#".into()],
            state: None,
        };
        let routes = Routes {
            list: vec![route],
            overlaps: Vec::new(),
            default_route: true,
        };
        Pipeline {
            max_event_bytes: 4096,
            revocation_keys: vec![binding("revoke.#")],
            keys: KeyRules::new(
                vec![KeyRule {
                    event_type: PROGRESS.into(),
                    key: Pointer::parse("/data/job_id").unwrap(),
                }],
                Vec::new(),
                &routes,
            ),
            routes,
            state: Some(Arc::new(StateStore::new(crate::state::tests::LIMITS))),
            recent: RecentIds::new(100),
            history: Arc::new(History::new(HistoryLimits {
                max_events: 100,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            })),
            hub: crate::hub::testing::small_hub(100),
            metrics: Arc::default(),
            seam_hook: None,
        }
    }

    fn message(id: &str, event_type: &str) -> Delivery {
        let body = serde_json::json!({
            "event_id": id, "event_type": event_type,
            "tenant_id": "t", "user_id": "u", "data": {"job_id": "j1"}
        });
        let body = serde_json::to_vec(&body).unwrap();
        Delivery::mock(1, "x".into(), event_type.into(), false, body)
    }

    fn client(p: &Pipeline) -> Subscription {
        p.hub.subscribe("t", "u", Transport::Ws, None).unwrap()
    }

    /// What the history holds after `id`, by id.
    fn held_after(p: &Pipeline, id: &str) -> Vec<String> {
        match p.history.since("t", "u", id) {
            Replay::Events { events, .. } => events.iter().map(|e| e.id.to_string()).collect(),
            Replay::Resync => vec!["resync".into()],
        }
    }

    #[tokio::test]
    async fn a_live_event_is_kept_complete_then_delivered_once() {
        let mut p = pipeline();
        let mut c = client(&p);
        p.live(message("e1", PROGRESS)).await;
        p.live(message("e1", PROGRESS)).await;
        let Some(Outgoing::Event(e)) = c.try_recv() else {
            panic!("the event is delivered");
        };
        // The key was set before the event was shared, by the one rule set.
        assert_eq!(e.conflation_key(), Some("render.job.progress.v1\u{0}j1"));
        assert!(c.try_recv().is_none(), "the duplicate is not");
        assert_eq!(p.metrics.duplicates.get(), 1);
        assert_eq!(p.metrics.history_events.get(), 1);
    }

    #[tokio::test]
    async fn revocations_excluded_types_and_duplicates_reach_nobody() {
        let mut p = pipeline();
        let mut c = client(&p);
        let revocation = Delivery::mock(1, "x".into(), "revoke.user".into(), false, b"{}".into());
        p.live(revocation).await;
        p.live(message("e1", "excluded.thing")).await;
        p.live(message("e2", NOTE)).await;
        assert_eq!(received(&mut c), ["e2"]);
        assert_eq!(p.metrics.received.get(), 2, "revocations are the feed's");
        assert_eq!(p.metrics.dropped.get(DropReason::ExcludedType), 1);
    }

    #[tokio::test]
    async fn a_backfill_goes_into_history_only_and_is_not_delivered_again_live() {
        let mut p = pipeline();
        let mut c = client(&p);
        p.backfill(message("e1", NOTE));
        p.backfill(message("e2", NOTE));
        assert!(received(&mut c).is_empty());
        assert_eq!(held_after(&p, "e1"), ["e2"]);
        // The same events arriving through the queue as well.
        p.live(message("e2", NOTE)).await;
        p.live(message("e3", NOTE)).await;
        assert_eq!(received(&mut c), ["e3"]);
        assert_eq!(p.metrics.backfilled.get(), 2);
        assert_eq!(p.metrics.duplicates.get(), 1);
    }

    #[tokio::test]
    async fn a_gap_delivers_what_followed_the_newest_event_held_less_what_was_seen() {
        let mut p = pipeline();
        let mut c = client(&p);
        for id in ["e1", "e2"] {
            p.live(message(id, NOTE)).await;
        }
        received(&mut c);
        let mut gap = p.gap().expect("events are held");
        for id in ["e1", "e2", "e3", "e3", "e4"] {
            p.read_gap(&mut gap, message(id, NOTE));
        }
        assert!(gap.covered());
        p.fill_gap(gap).await;
        assert_eq!(received(&mut c), ["e3", "e4"]);
        assert_eq!(held_after(&p, "e2"), ["e3", "e4"]);
        // A redelivery through the queue afterwards is a duplicate.
        p.live(message("e4", NOTE)).await;
        assert!(received(&mut c).is_empty());
        assert_eq!(p.metrics.duplicates.get(), 2);
    }

    #[tokio::test]
    async fn a_gap_the_stream_cannot_cover_marks_nothing_as_seen() {
        let mut p = pipeline();
        let mut c = client(&p);
        p.live(message("e1", NOTE)).await;
        received(&mut c);
        let mut gap = p.gap().expect("an event is held");
        for id in ["e5", "e6"] {
            p.read_gap(&mut gap, message(id, NOTE));
        }
        assert!(!gap.covered());
        // Not delivered, so not seen: when they come live, they are delivered.
        p.live(message("e5", NOTE)).await;
        assert_eq!(received(&mut c), ["e5"]);
        assert_eq!(p.metrics.duplicates.get(), 0);
    }

    #[tokio::test]
    async fn each_route_keeps_the_state_its_rules_name() {
        let mut p = pipeline();
        let rule = |types: &str, key: &str| StateRule {
            types: crate::config::Pattern::new(types).unwrap(),
            key: Pointer::parse(key).unwrap(),
        };
        let route = |name: &str, key: &str, state| Route {
            name: name.into(),
            binding: Binding {
                exchange: "x".into(),
                key: key.into(),
            },
            mapping: Mapping::default(),
            exclude_types: Vec::new(),
            state,
        };
        p.routes = Routes {
            list: vec![
                route("jobs", "render.#", None),
                route(
                    "orders",
                    "order.#",
                    Some(vec![rule("order.#", "/data/job_id")]),
                ),
                route("quiet", "quiet.#", Some(Vec::new())),
            ],
            overlaps: Vec::new(),
            default_route: false,
        };
        let default = vec![rule("render.job.#", "/data/job_id")];
        p.keys = KeyRules::new(Vec::new(), default, &p.routes);
        let held = |p: &Pipeline| p.state.as_ref().unwrap().size().0;
        p.live(message("e1", "render.job.started.v1")).await;
        assert_eq!(held(&p), 1, "GATEWAY_STATE's rule");
        // The same job id under another rule is another key.
        p.live(message("e2", "order.paid.v1")).await;
        assert_eq!(held(&p), 2, "the route's own rule");
        p.live(message("e3", "quiet.render.job.done")).await;
        p.live(message("e4", "render.other.v1")).await;
        assert_eq!(held(&p), 2, "no rule of their routes names them");
        p.live(message("e5", "order.shipped.v1")).await;
        assert_eq!(held(&p), 2, "the order's state moved on");
    }
}
