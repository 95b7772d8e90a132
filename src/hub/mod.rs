//! Hub: the registry of live connections by tenant and user, and the fan-out that hands
//! each event to exactly the connections it belongs to.
//!
//! Always be receiving: the broker consumer calls [`Hub::publish`] for every event and must
//! never wait for a client. Each connection has a bounded queue filled with `try_send`; a
//! connection whose queue is full is told to go (it is a slow client) and the event is
//! counted, so one stalled browser cannot hold back the broker or anybody else.
//! DashMap guards are only held inside synchronous code, never across an `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use foldhash::fast::RandomState;

mod end;
mod queue;

pub use end::{Disconnect, End};
pub use queue::{Interest, conflate};
use queue::{Offered, SendQueue};

use tungstenite::Utf8Bytes;

use crate::envelope::{Event, Position};
use crate::revocation::Revoked;
use crate::state::StateStore;
use crate::telemetry::{Collect, Counter, Exposition, Family, Gauge, Histogram, untrusted};

crate::label_set! {
    /// The kind of a registered connection, for per-transport counts.
    pub enum Transport as "transport" {
        /// `GET /ws`.
        Ws = "ws",
        /// `GET /sse`.
        Sse = "sse",
    }
}

/// A connection limit the hub enforces, reached: the connection is not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitReached {
    /// `GATEWAY_MAX_CONNECTIONS`: this instance is full.
    Connections,
    /// `GATEWAY_MAX_CONNECTIONS_PER_USER`: this user has as many as allowed.
    PerUser,
}

/// Upper bounds of the latency histogram, in microseconds: from `event_time` (set by the
/// producer) to the hand-off into connection queues.
const LATENCY_BUCKETS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// What the hub counts: the life of connections and the fan-out.
#[derive(Debug)]
pub struct HubMetrics {
    /// Open connections.
    pub open: Family<Transport>,
    /// Connections admitted.
    pub accepted: Family<Transport>,
    /// Connections the gateway ended.
    pub disconnects: Family<Disconnect>,
    /// Events queued to connections, one per recipient.
    pub delivered: Family<Transport>,
    /// Deliveries refused by a full send queue.
    pub dropped_slow: Counter,
    /// Valid events nobody on this instance receives.
    pub unrouted: Counter,
    /// Resync signals queued.
    pub resyncs: Counter,
    /// Snapshots of the latest state sent.
    pub snapshots: Counter,
    /// Unsent events superseded by a newer one with the same conflation key.
    pub conflated: Counter,
    /// Deliveries skipped because the client did not ask for the event's type.
    pub filtered: Counter,
    /// Deepest send queue seen, in events.
    pub queue_events_high_water: Gauge,
    /// Fullest send queue seen, in bytes.
    pub queue_bytes_high_water: Gauge,
    /// From `event_time` to the hand-off.
    pub latency_us: Histogram,
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics {
            open: Family::default(),
            accepted: Family::default(),
            disconnects: Family::default(),
            delivered: Family::default(),
            dropped_slow: Counter::default(),
            unrouted: Counter::default(),
            resyncs: Counter::default(),
            snapshots: Counter::default(),
            conflated: Counter::default(),
            filtered: Counter::default(),
            queue_events_high_water: Gauge::default(),
            queue_bytes_high_water: Gauge::default(),
            latency_us: Histogram::new(LATENCY_BUCKETS_US, 1e6),
        }
    }
}

impl Collect for HubMetrics {
    fn collect(&self, o: &mut Exposition) {
        o.family(
            "gateway_connections",
            "gauge",
            "Open client connections.",
            &self.open,
        );
        o.family(
            "gateway_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &self.accepted,
        );
        o.family(
            "gateway_disconnects_total",
            "counter",
            "Connections ended by the gateway, by reason.",
            &self.disconnects,
        );
        o.family(
            "gateway_events_delivered_total",
            "counter",
            "Events handed to client connections (one per recipient).",
            &self.delivered,
        );
        o.counter_with(
            "gateway_deliveries_dropped_total",
            "Per-connection deliveries refused, by reason.",
            ("reason", "slow_client"),
            &self.dropped_slow,
        );
        o.counter(
            "gateway_events_unrouted_total",
            "Valid events with no recipient connected to this instance.",
            &self.unrouted,
        );
        o.counter(
            "gateway_resyncs_sent_total",
            "Resync signals queued to connections.",
            &self.resyncs,
        );
        o.counter(
            "gateway_snapshots_sent_total",
            "Snapshots of the latest state per key sent to connections.",
            &self.snapshots,
        );
        o.counter(
            "gateway_events_conflated_total",
            "Unsent events superseded by a newer one with the same conflation key (live and in replays).",
            &self.conflated,
        );
        o.counter(
            "gateway_events_filtered_total",
            "Deliveries skipped because the client did not select the event's type.",
            &self.filtered,
        );
        o.gauge(
            "gateway_send_queue_high_water_events",
            "Deepest any connection's send queue has been, in events.",
            &self.queue_events_high_water,
        );
        o.gauge(
            "gateway_send_queue_high_water_bytes",
            "Fullest any connection's send queue has been, in bytes.",
            &self.queue_bytes_high_water,
        );
        o.histogram(
            "gateway_event_latency_seconds",
            "From the envelope's event_time to the hand-off into connection queues.",
            &self.latency_us,
        );
    }
}

/// What a connection's queue carries.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A domain event, shared by every recipient.
    Event(Arc<Event>),
    /// Events may have been lost (the broker queue was gone after a link outage): the
    /// client should refetch its state.
    Resync,
    /// The latest state of every key the connection selects, as one message (the
    /// WebSocket text, the SSE data): made for one connection, never queued.
    Snapshot(Utf8Bytes),
}

/// Bytes a `Resync` counts for in the queue's byte budget.
const RESYNC_BYTES: usize = 32;

impl Outgoing {
    fn bytes(&self) -> usize {
        match self {
            Outgoing::Event(e) => e.len(),
            Outgoing::Resync => RESYNC_BYTES,
            Outgoing::Snapshot(json) => json.len(),
        }
    }
}

/// One registered connection, as the fan-out sees it.
struct Member {
    /// Identifies the member for removal.
    id: u64,
    /// Which transport, for per-transport delivery counts.
    transport: Transport,
    /// The connection's bounded queue, and its end.
    queue: Arc<SendQueue>,
}

/// Connections of one tenant, by user.
#[derive(Default)]
struct Tenant {
    users: HashMap<Arc<str>, Vec<Member>, RandomState>,
    /// The newest event of the tenant fanned out to every connection it went to: its
    /// sequence number and resume position. Written by the consumer only, after the
    /// fan-out, so a connection that reads it and then finds its own queue empty has
    /// been sent everything of the tenant up to it.
    newest_seq: AtomicU64,
    newest_position: AtomicU64,
}

/// Limits the hub enforces at registration.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    /// All connections of this instance.
    pub max_connections: usize,
    /// Connections of one (tenant, user).
    pub max_per_user: usize,
    /// Events waiting per connection.
    pub queue_len: usize,
    /// Bytes of events waiting per connection.
    pub queue_bytes: usize,
}

/// Registry and fan-out.
pub struct Hub {
    /// Looked up for every event; foldhash rather than SipHash (keys come from signed
    /// tokens and the platform's events, and the seed is still random per process).
    tenants: DashMap<Arc<str>, Tenant, RandomState>,
    next_id: AtomicU64,
    total: AtomicUsize,
    limits: HubLimits,
    metrics: HubMetrics,
    /// Woken when the last connection leaves, for the shutdown drain.
    emptied: tokio::sync::Notify,
    /// The latest state per key, for snapshots; `None`: no state is kept.
    state: Option<Arc<StateStore>>,
}

/// A connection's membership; dropping it unregisters the connection.
pub struct Subscription {
    hub: Arc<Hub>,
    tenant: Arc<str>,
    user: Arc<str>,
    id: u64,
    /// Events for this connection, in the order the hub received them (less superseded
    /// progress and what the client is not interested in).
    queue: Arc<SendQueue>,
    /// Events up to this sequence number were replayed from history; their live copies
    /// are skipped so the resume seam has no duplicate (0: none).
    skip_through: u64,
    /// Keyed events up to this sequence number are reflected in a snapshot sent; their
    /// live copies are skipped (0: none).
    skip_state_through: u64,
    /// A snapshot is due before the next event (after a resync, or asked for in band).
    snapshot_due: bool,
    /// The newest sequence number the client holds a position for: the last event it was
    /// sent, or the last quiet position (0: none).
    position_seq: u64,
    /// For the access log line when the connection ends.
    opened: std::time::Instant,
    transport: Transport,
    delivered: u64,
}

/// How a connection learns that the hub told it to go, and why; asked of its
/// [`Subscription`]. A handle on the connection's queue, which holds its end.
#[derive(Clone)]
pub struct Kick(Arc<SendQueue>);

impl Kick {
    /// Resolves when the hub tells the connection to go (it fell too far behind, or its
    /// access was revoked), with that reason.
    pub async fn kicked(&self) -> End {
        self.0.end().kicked().await
    }

    /// Whether the hub told the connection to go.
    #[cfg(test)]
    pub fn is_kicked(&self) -> bool {
        self.0.end().is_kicked()
    }
}

impl Hub {
    /// An empty hub that keeps no state (connections get no snapshots).
    #[cfg(test)]
    pub fn new(limits: HubLimits) -> Arc<Hub> {
        Hub::with_state(limits, None)
    }

    /// An empty hub whose connections get snapshots of `state`.
    pub fn with_state(limits: HubLimits, state: Option<Arc<StateStore>>) -> Arc<Hub> {
        Arc::new(Hub {
            tenants: DashMap::with_hasher(RandomState::default()),
            next_id: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            limits,
            metrics: HubMetrics::default(),
            emptied: tokio::sync::Notify::new(),
            state,
        })
    }

    /// What the hub counts.
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Registers a connection of `user` in `tenant`, enforcing the connection limits.
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: &str,
        user: &str,
        transport: Transport,
        interest: Option<Interest>,
    ) -> Result<Subscription, LimitReached> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitReached::Connections);
        }
        let queue = Arc::new(SendQueue::new(
            self.limits.queue_len,
            self.limits.queue_bytes,
            interest,
        ));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);

        let registered = {
            let mut entry = self.tenants.entry(Arc::from(tenant)).or_default();
            let tenant_key = entry.key().clone();
            let users = &mut entry.value_mut().users;
            let user_key = match users.get_key_value(user) {
                Some((k, _)) => k.clone(),
                None => Arc::from(user),
            };
            // Limits are validated to be at least 1, so a user at the limit has members
            // and no empty entry is left behind by a refusal.
            let members = users.entry(user_key.clone()).or_default();
            if members.is_empty() {
                // Most users have one connection: room for one, not the four `push`
                // would make (held for the connection's life).
                members.reserve_exact(1);
            }
            if members.len() >= self.limits.max_per_user {
                None
            } else {
                members.push(Member {
                    id,
                    transport,
                    queue: queue.clone(),
                });
                Some((tenant_key, user_key))
            }
        };
        let Some((tenant_key, user_key)) = registered else {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitReached::PerUser);
        };
        self.metrics.open.inc(transport);
        self.metrics.accepted.inc(transport);

        Ok(Subscription {
            hub: self.clone(),
            tenant: tenant_key,
            user: user_key,
            id,
            queue,
            skip_through: 0,
            skip_state_through: 0,
            snapshot_due: false,
            position_seq: 0,
            opened: std::time::Instant::now(),
            transport,
            delivered: 0,
        })
    }

    /// Records why a connection ended, unless a reason was recorded already, and counts
    /// it if the gateway ended it: the one place a disconnect is counted, at the moment it
    /// is decided (not when a close handshake or a stuck socket finally lets go). Returns
    /// the reason that stands.
    pub fn end(&self, kick: &Kick, why: End) -> End {
        self.end_of(&kick.0, why)
    }

    fn end_of(&self, queue: &SendQueue, why: End) -> End {
        match self.record_end(queue, why) {
            Ok(()) => why,
            Err(earlier) => earlier,
        }
    }

    /// [`Hub::end`]: `Err` with the earlier reason when one was recorded already.
    fn record_end(&self, queue: &SendQueue, why: End) -> Result<(), End> {
        queue.end().record(why)?;
        if let End::Gateway(reason) = why {
            self.metrics.disconnects.inc(reason);
        }
        Ok(())
    }

    /// Tells a connection to go for `why`, unless it is ending already; false then.
    fn kick(&self, m: &Member, why: Disconnect) -> bool {
        if self.record_end(&m.queue, End::Gateway(why)).is_err() {
            return false;
        }
        m.queue.end().kick();
        true
    }

    fn unsubscribe(&self, tenant: &Arc<str>, user: &Arc<str>, id: u64) {
        let mut transport = None;
        if let Some(mut t) = self.tenants.get_mut(tenant)
            && let Some(members) = t.users.get_mut(user)
        {
            if let Some(pos) = members.iter().position(|m| m.id == id) {
                transport = Some(members.swap_remove(pos).transport);
            }
            if members.is_empty() {
                t.users.remove(user);
            }
        }
        self.tenants.remove_if(tenant, |_, t| t.users.is_empty());
        if let Some(t) = transport {
            if self.total.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.emptied.notify_waiters();
            }
            self.metrics.open.add(t, -1);
        }
    }

    /// Hands `event`, number `seq` in the history, to every connection it belongs to,
    /// without waiting for any of them. Returns how many connections it was queued for.
    pub fn publish(&self, event: &Arc<Event>, seq: u64) -> usize {
        let mut counts = [0u64; 2];
        let item = Outgoing::Event(event.clone());
        if let Some(tenant) = self.tenants.get(&*event.tenant) {
            match event.user.as_deref() {
                Some(user) => {
                    if let Some(members) = tenant.users.get(user) {
                        for m in members {
                            self.offer(m, &item, seq, &mut counts);
                        }
                    }
                }
                None => {
                    for members in tenant.users.values() {
                        for m in members {
                            self.offer(m, &item, seq, &mut counts);
                        }
                    }
                }
            }
            // Position first: a reader that sees the new sequence sees its position too.
            tenant
                .newest_position
                .store(event.position().0, Ordering::Release);
            tenant.newest_seq.store(seq, Ordering::Release);
        }
        let (ws, sse) = (counts[0], counts[1]);
        if ws > 0 {
            self.metrics.delivered.add(Transport::Ws, ws as i64);
        }
        if sse > 0 {
            self.metrics.delivered.add(Transport::Sse, sse as i64);
        }
        if ws + sse == 0 {
            self.metrics.unrouted.inc();
        } else if let Some(t) = event.event_time_us {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(t);
            self.metrics.latency_us.observe(now - t);
        }
        (ws + sse) as usize
    }

    /// Tells every connection that events may have been lost.
    pub fn resync_all(&self) -> usize {
        let mut counts = [0u64; 2];
        for tenant in self.tenants.iter() {
            for members in tenant.users.values() {
                for m in members {
                    self.offer(m, &Outgoing::Resync, 0, &mut counts);
                }
            }
        }
        let n = counts[0] + counts[1];
        self.metrics.resyncs.add(n);
        n as usize
    }

    fn offer(&self, m: &Member, item: &Outgoing, seq: u64, counts: &mut [u64; 2]) {
        let hm = &self.metrics;
        let offered = m.queue.offer(item, seq);
        match offered {
            Offered::Queued(depth, bytes) | Offered::Conflated(depth, bytes) => {
                counts[m.transport as usize] += 1;
                hm.queue_events_high_water.raise(depth as i64);
                hm.queue_bytes_high_water.raise(bytes as i64);
                if matches!(offered, Offered::Conflated(..)) {
                    hm.conflated.inc();
                }
            }
            Offered::Filtered => hm.filtered.inc(),
            Offered::Closed => {}
            Offered::Full => {
                // The client is not reading. Dropping just this event would leave a
                // silent gap, so the connection is ended instead and the client resumes.
                if self.kick(m, Disconnect::SlowClient) {
                    let (event_id, trace_id) = match item {
                        Outgoing::Event(e) => (&*e.id, e.trace_id.as_deref().unwrap_or("")),
                        Outgoing::Resync | Outgoing::Snapshot(_) => ("", ""),
                    };
                    tracing::warn!(
                        connection.id = m.id,
                        event_id = %untrusted(event_id),
                        trace_id = %untrusted(trace_id),
                        "send queue full; disconnecting slow client"
                    );
                }
                hm.dropped_slow.inc();
            }
        }
    }

    /// Open connections on this instance.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Closes every connection of a revoked user (by `sub`, in every tenant) or tenant;
    /// returns how many were told to go.
    pub fn revoke(&self, who: &Revoked) -> usize {
        let mut n = 0;
        let mut kick_all = |members: &[Member]| {
            for m in members {
                if self.kick(m, Disconnect::Revoked) {
                    n += 1;
                }
            }
        };
        match who {
            Revoked::User(user) => {
                for tenant in self.tenants.iter() {
                    if let Some(members) = tenant.users.get(user.as_str()) {
                        kick_all(members);
                    }
                }
            }
            Revoked::Tenant(tenant) => {
                if let Some(t) = self.tenants.get(tenant.as_str()) {
                    for members in t.users.values() {
                        kick_all(members);
                    }
                }
            }
        }
        n
    }

    /// Resolves once no connection is registered.
    pub async fn emptied(&self) {
        loop {
            // Registered before the check, so a departure in between is not missed.
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Whether a new connection of (`tenant`, `user`) would be admitted now, without
    /// registering it: what `/auth/check` reports.
    pub fn would_admit(&self, tenant: &str, user: &str) -> Result<(), LimitReached> {
        if self.connections() >= self.limits.max_connections {
            return Err(LimitReached::Connections);
        }
        let at_limit = self.tenants.get(tenant).is_some_and(|t| {
            t.users
                .get(user)
                .is_some_and(|m| m.len() >= self.limits.max_per_user)
        });
        if at_limit {
            return Err(LimitReached::PerUser);
        }
        Ok(())
    }
}

impl Subscription {
    /// How the connection learns that the hub told it to go.
    pub fn kick(&self) -> Kick {
        Kick(self.queue.clone())
    }

    /// Records why the connection ended (see [`Hub::end`]); returns the reason that
    /// stands, which is an earlier one if something else ended it first.
    pub fn end(&self, why: End) -> End {
        self.hub.end_of(&self.queue, why)
    }

    /// The connection's span: its id, transport, tenant and user on every line logged in
    /// it. Made when something is logged rather than held for the connection's life: an
    /// open span keeps its fields in the log subscriber, and most connections log only
    /// their end.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "connection",
            id = self.id,
            transport = self.transport.as_str(),
            tenant = %untrusted(&*self.tenant),
            user = %untrusted(&*self.user),
        )
    }

    /// Skips live events up to and including `seq` (they were replayed).
    pub fn skip_through(&mut self, seq: u64) {
        self.skip_through = seq;
        // The replay ends there: a quiet position must not move the client back.
        self.position_seq = self.position_seq.max(seq);
    }

    /// Whether the gateway keeps state, so that snapshots can be sent.
    pub fn has_state(&self) -> bool {
        self.hub.state.is_some()
    }

    /// The latest state of every key this connection selects (its types and keys), as
    /// one message, oldest update first; keyed live events it reflects are skipped from
    /// here on, so a snapshot and the live events after it have no gap and no duplicate.
    /// Capped at the send queue's bytes: the newest states that fit, marked truncated.
    pub fn snapshot(&mut self) -> Outgoing {
        let interest = self.queue.interest();
        let snapshot = match &self.hub.state {
            Some(state) => state.snapshot(&self.tenant, &self.user, |e, _| {
                interest.as_ref().is_none_or(|i| i.wants(e))
            }),
            None => Default::default(),
        };
        self.skip_state_through = self.skip_state_through.max(snapshot.through);
        self.hub.metrics.snapshots.inc();
        Outgoing::Snapshot(snapshot_message(
            &snapshot.events,
            self.hub.limits.queue_bytes,
        ))
    }

    /// A resume position for a quiet connection: its tenant's newest event, when that is
    /// newer than anything the client holds and nothing is waiting to be sent to it (so it
    /// has been sent everything of the tenant up to there). A page that selected nothing
    /// that happened then resumes from here within the history's age instead of getting
    /// `resync`.
    pub fn quiet_position(&mut self) -> Option<Position> {
        let tenant = self.hub.tenants.get(&*self.tenant)?;
        // Sequence before position, and both before the queue: see `Tenant`.
        let seq = tenant.newest_seq.load(Ordering::Acquire);
        let position = Position(tenant.newest_position.load(Ordering::Acquire));
        drop(tenant);
        if seq <= self.position_seq || !self.queue.is_empty() || self.snapshot_due {
            return None;
        }
        self.position_seq = seq;
        Some(position)
    }

    /// Sends a snapshot before the next event (the client asked for one in band).
    pub fn snapshot_next(&mut self) {
        self.snapshot_due = self.has_state();
    }

    /// Waits for the next item. (Kept as `Option` for the transports' loops; the queue
    /// outlives the subscription, so it is never `None` today.)
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if self.snapshot_due {
                self.snapshot_due = false;
                return Some(self.snapshot());
            }
            let (item, seq) = self.queue.pop().await;
            if let Some(item) = self.take(item, seq) {
                return Some(item);
            }
        }
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        loop {
            if self.snapshot_due {
                self.snapshot_due = false;
                return Some(self.snapshot());
            }
            let (item, seq) = self.queue.try_pop()?;
            if let Some(item) = self.take(item, seq) {
                return Some(item);
            }
        }
    }

    fn take(&mut self, item: Outgoing, seq: u64) -> Option<Outgoing> {
        match &item {
            Outgoing::Event(_) if seq <= self.skip_through => None,
            Outgoing::Event(e) if e.state_key().is_some() && seq <= self.skip_state_through => None,
            Outgoing::Event(_) => {
                self.delivered += 1;
                self.position_seq = self.position_seq.max(seq);
                Some(item)
            }
            // After a resync the state follows at once, so no page needs REST to recover.
            Outgoing::Resync => {
                self.snapshot_due = self.has_state();
                Some(item)
            }
            Outgoing::Snapshot(_) => Some(item),
        }
    }

    /// The event types this connection receives (`None`: all its token allows).
    pub fn interest(&self) -> Option<Interest> {
        self.queue.interest()
    }

    /// Changes the event types this connection receives, from the next event on.
    pub fn set_interest(&self, interest: Option<Interest>) {
        self.queue.set_interest(interest);
    }

    /// Counts replayed events that a newer one superseded.
    pub fn count_conflated(&self, n: usize) {
        self.hub.metrics.conflated.add(n as u64);
    }
}

/// `{"type":"snapshot","events":[...],"truncated":false}`: the events' own one-line JSON,
/// oldest update first; when they exceed `max_bytes`, the newest that fit.
fn snapshot_message(events: &[Arc<Event>], max_bytes: usize) -> Utf8Bytes {
    let mut room = max_bytes;
    let fit = events
        .iter()
        .rev()
        .take_while(|e| match room.checked_sub(e.len() + 1) {
            Some(left) => {
                room = left;
                true
            }
            None => false,
        })
        .count();
    let kept = &events[events.len() - fit..];
    let mut json = String::with_capacity(max_bytes - room + 64);
    json.push_str(r#"{"type":"snapshot","events":["#);
    for (i, e) in kept.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(e.json());
    }
    json.push_str(if fit < events.len() {
        "],\"truncated\":true}"
    } else {
        "],\"truncated\":false}"
    });
    Utf8Bytes::from(json)
}

impl Drop for Subscription {
    /// The access log line, once per connection: who (the span), how long, how many
    /// events, and why it ended. Never a token.
    fn drop(&mut self) {
        let why = self.end(End::ClientGone);
        self.span().in_scope(|| {
            tracing::info!(
                duration_ms = self.opened.elapsed().as_millis() as u64,
                events = self.delivered,
                reason = why.as_str(),
                "connection ended"
            );
        });
        self.queue.close();
        self.hub.unsubscribe(&self.tenant, &self.user, self.id);
    }
}

/// Helpers for the unit tests of this and other modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Outgoing, Subscription};

    /// What is waiting for `s`, by id (`resync` for a resync).
    pub(crate) fn ids(s: &mut Subscription) -> Vec<String> {
        labels(std::iter::from_fn(|| s.try_recv()))
    }

    /// A hub for tests: 10 connections, 10 per user, `queue_len` events of 1 MiB in all
    /// per connection.
    pub(crate) fn small_hub(queue_len: usize) -> std::sync::Arc<super::Hub> {
        super::Hub::new(super::HubLimits {
            max_connections: 10,
            max_per_user: 10,
            queue_len,
            queue_bytes: 1 << 20,
        })
    }

    /// Items by label: an event by its id, `resync`, `snapshot`.
    pub(crate) fn labels(
        items: impl IntoIterator<Item = impl std::borrow::Borrow<Outgoing>>,
    ) -> Vec<String> {
        items
            .into_iter()
            .map(|o| match o.borrow() {
                Outgoing::Event(e) => e.id.to_string(),
                Outgoing::Resync => "resync".into(),
                Outgoing::Snapshot(_) => "snapshot".into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ids;
    use super::*;
    use crate::telemetry::Label;

    fn hub(max_connections: usize, max_per_user: usize, queue_len: usize) -> Arc<Hub> {
        Hub::new(HubLimits {
            max_connections,
            max_per_user,
            queue_len,
            queue_bytes: 1 << 20,
        })
    }

    fn event(id: &str, tenant: &str, user: Option<&str>) -> Arc<Event> {
        Arc::new(crate::envelope::testing::event(
            id,
            "render.job.progress.v1",
            tenant,
            user,
        ))
    }

    #[test]
    fn routes_by_tenant_and_user() {
        let hub = hub(100, 10, 8);
        let mut a1 = hub.subscribe("a", "u1", Transport::Ws, None).unwrap();
        let mut a2 = hub.subscribe("a", "u2", Transport::Sse, None).unwrap();
        let mut b1 = hub.subscribe("b", "u1", Transport::Ws, None).unwrap();

        assert_eq!(hub.publish(&event("1", "a", Some("u1")), 1), 1);
        assert_eq!(hub.publish(&event("2", "a", None), 1), 2);
        assert_eq!(hub.publish(&event("3", "c", None), 1), 0);
        assert_eq!(hub.publish(&event("4", "b", Some("u2")), 1), 0);

        assert_eq!(ids(&mut a1), ["1", "2"]);
        assert_eq!(ids(&mut a2), ["2"]);
        assert!(ids(&mut b1).is_empty());
    }

    #[test]
    fn limits_refuse_and_release() {
        let hub = hub(3, 2, 8);
        let s1 = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        let _s2 = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        assert_eq!(
            hub.subscribe("a", "u", Transport::Ws, None).err(),
            Some(LimitReached::PerUser)
        );
        let _s3 = hub.subscribe("a", "v", Transport::Ws, None).unwrap();
        assert_eq!(
            hub.subscribe("b", "w", Transport::Ws, None).err(),
            Some(LimitReached::Connections)
        );
        drop(s1);
        assert_eq!(hub.connections(), 2);
        assert!(hub.subscribe("a", "u", Transport::Ws, None).is_ok());
    }

    #[test]
    fn unsubscribe_removes_empty_entries() {
        let hub = hub(10, 10, 8);
        let s = hub.subscribe("a", "u", Transport::Sse, None).unwrap();
        drop(s);
        assert!(hub.tenants.is_empty());
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn full_queue_kicks_only_that_connection() {
        let hub = hub(10, 10, 2);
        let slow = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        let mut fast = hub.subscribe("a", "v", Transport::Ws, None).unwrap();
        for i in 0..5 {
            hub.publish(&event(&i.to_string(), "a", None), 1);
            while fast.try_recv().is_some() {}
        }
        assert!(slow.kick().is_kicked());
        assert!(!fast.kick().is_kicked());
    }

    #[test]
    fn a_connections_end_is_counted_once_whatever_ends_it() {
        let hub = hub(10, 10, 1);
        let count = |why| hub.metrics().disconnects.get(why);
        let revoke = || hub.revoke(&Revoked::User("u".into()));

        // Nothing recorded: the client left, and the gateway counts nothing.
        drop(hub.subscribe("a", "u", Transport::Ws, None).unwrap());
        assert!(Disconnect::ALL.iter().all(|d| count(*d) == 0));

        // Kicked as slow; the connection then ends on its own reason, which does not count.
        let s = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        for i in 0..3 {
            hub.publish(&event(&i.to_string(), "a", Some("u")), 1);
        }
        assert!(s.kick().is_kicked());
        let slow = End::Gateway(Disconnect::SlowClient);
        assert_eq!(s.end(End::Gateway(Disconnect::TokenExpired)), slow);
        assert_eq!(revoke(), 0, "already ending: not kicked again");
        drop(s);
        assert_eq!(count(Disconnect::SlowClient), 1);
        assert_eq!(count(Disconnect::TokenExpired), 0);
        assert_eq!(count(Disconnect::Revoked), 0);

        // Ended by the connection first: a later kick neither kicks nor counts.
        let s = hub.subscribe("a", "u", Transport::Sse, None).unwrap();
        s.end(End::Gateway(Disconnect::Shutdown));
        assert_eq!(revoke(), 0);
        assert!(!s.kick().is_kicked());
        drop(s);
        assert_eq!(count(Disconnect::Shutdown), 1);
        assert_eq!(count(Disconnect::Revoked), 0);

        // Revoked twice, and the connection's own ends after it: one revocation counted.
        let s = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        assert_eq!(revoke(), 1);
        assert_eq!(revoke(), 0);
        assert_eq!(s.end(End::ClientClosed), End::Gateway(Disconnect::Revoked));
        drop(s);
        assert_eq!(count(Disconnect::Revoked), 1);
        assert_eq!(count(Disconnect::SlowClient), 1);
    }

    #[test]
    fn byte_budget_kicks_and_is_returned_on_receive() {
        let hub = Hub::new(HubLimits {
            max_connections: 10,
            max_per_user: 10,
            queue_len: 100,
            queue_bytes: 600,
        });
        let mut s = hub.subscribe("a", "u", Transport::Sse, None).unwrap();
        let e = event("1", "a", None);
        let fits = 600 / e.len();
        for _ in 0..fits {
            assert_eq!(hub.publish(&e, 1), 1);
        }
        while s.try_recv().is_some() {}
        // Budget returned: the same number fits again, one more does not.
        for _ in 0..fits {
            assert_eq!(hub.publish(&e, 1), 1);
        }
        assert!(!s.kick().is_kicked());
        assert_eq!(hub.publish(&e, 1), 0);
        assert!(s.kick().is_kicked());
    }

    #[test]
    fn resync_reaches_every_connection() {
        let hub = hub(10, 10, 8);
        let mut a = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        let mut b = hub.subscribe("b", "v", Transport::Sse, None).unwrap();
        assert_eq!(hub.resync_all(), 2);
        assert!(matches!(a.try_recv(), Some(Outgoing::Resync)));
        assert!(matches!(b.try_recv(), Some(Outgoing::Resync)));
    }

    #[test]
    fn live_copies_of_replayed_events_are_skipped() {
        let hub = hub(10, 10, 8);
        let mut s = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        for seq in 1..=4 {
            hub.publish(&event(&seq.to_string(), "a", None), seq);
        }
        // A replay taken now held events up to number 2.
        s.skip_through(2);
        hub.resync_all();
        assert_eq!(ids(&mut s), ["3", "4", "resync"]);
    }

    #[test]
    fn one_event_is_shared_not_copied() {
        let hub = hub(10, 10, 8);
        let mut s1 = hub.subscribe("a", "u", Transport::Ws, None).unwrap();
        let mut s2 = hub.subscribe("a", "v", Transport::Ws, None).unwrap();
        let e = event("1", "a", None);
        hub.publish(&e, 1);
        let (Some(Outgoing::Event(r1)), Some(Outgoing::Event(r2))) = (s1.try_recv(), s2.try_recv())
        else {
            panic!("both connections get the event");
        };
        assert!(Arc::ptr_eq(&r1, &e) && Arc::ptr_eq(&r2, &e));
        assert_eq!(r1.ws_frame().as_ptr(), r2.ws_frame().as_ptr());
    }
}
