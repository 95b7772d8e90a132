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
use tokio_util::sync::CancellationToken;

mod queue;

pub use queue::{Interest, MAX_PATTERN_BYTES, conflate};
use queue::{Offered, SendQueue};

use crate::envelope::Event;
use crate::revocation::Revoked;
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

crate::label_set! {
    /// Why a connection was not admitted (the `reason` of the refusal's body).
    pub enum Refusal as "reason" {
        /// `GATEWAY_MAX_CONNECTIONS` reached: 503.
        MaxConnections = "max_connections",
        /// `GATEWAY_MAX_CONNECTIONS_PER_USER` reached: 429.
        MaxPerUser = "max_connections_per_user",
        /// Cookie auth from an origin not in `GATEWAY_ALLOWED_ORIGINS`: 403.
        Origin = "origin",
        /// The instance is shutting down: 503, so the client tries another.
        Draining = "draining",
    }
}

crate::label_set! {
    /// Why the gateway ended a registered connection.
    pub enum Disconnect as "reason" {
        /// It did not read fast enough: its send queue filled up, or a write stalled.
        SlowClient = "slow_client",
        /// Its token expired.
        TokenExpired = "token_expired",
        /// No pong or message within the idle timeout.
        Idle = "idle",
        /// Sent a message over the size limit.
        MessageTooBig = "message_too_big",
        /// Graceful shutdown.
        Shutdown = "shutdown",
        /// An in-band refresh named another user or tenant.
        Policy = "policy",
        /// The platform banned its user or suspended its tenant.
        Revoked = "revoked",
    }
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
    /// Connections not admitted.
    pub refused: Family<Refusal>,
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
            refused: Family::default(),
            disconnects: Family::default(),
            delivered: Family::default(),
            dropped_slow: Counter::default(),
            unrouted: Counter::default(),
            resyncs: Counter::default(),
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
            "gateway_connections_refused_total",
            "counter",
            "Connections refused by a limit, origin rule or shutdown, by reason.",
            &self.refused,
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
}

/// Bytes a `Resync` counts for in the queue's byte budget.
const RESYNC_BYTES: usize = 32;

impl Outgoing {
    fn bytes(&self) -> usize {
        match self {
            Outgoing::Event(e) => e.len(),
            Outgoing::Resync => RESYNC_BYTES,
        }
    }
}

/// One registered connection, as the fan-out sees it.
struct Member {
    /// Identifies the member for removal.
    id: u64,
    /// Which transport, for per-transport delivery counts.
    transport: Transport,
    /// The connection's bounded queue.
    queue: Arc<SendQueue>,
    /// Cancelled when the connection must go, so its task closes the client.
    kick: CancellationToken,
}

impl Member {
    /// Tells the connection to go, once; false when it was told already.
    fn kick(&self, why: Disconnect) -> bool {
        if self.kick.is_cancelled() {
            return false;
        }
        if why == Disconnect::Revoked {
            self.queue.mark_revoked();
        }
        self.kick.cancel();
        true
    }
}

/// Connections of one tenant, by user.
#[derive(Default)]
struct Tenant {
    users: HashMap<Arc<str>, Vec<Member>, RandomState>,
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
    /// are skipped so the resume seam has no duplicate.
    skip_through: Option<u64>,
    /// For the access log line when the connection ends.
    opened: std::time::Instant,
    transport: Transport,
    delivered: u64,
    /// Cancelled when this connection must go: it fell too far behind, or its access was
    /// revoked ([`Subscription::kick_reason`] tells which).
    pub kicked: CancellationToken,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Arc<Hub> {
        Arc::new(Hub {
            tenants: DashMap::with_hasher(RandomState::default()),
            next_id: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            limits,
            metrics: HubMetrics::default(),
            emptied: tokio::sync::Notify::new(),
        })
    }

    /// What the hub counts; transports count their refusals and disconnects here too.
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Registers a connection of `user` in `tenant`, enforcing the connection limits.
    /// `kick` is cancelled if the connection falls too far behind.
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: &str,
        user: &str,
        transport: Transport,
        kick: CancellationToken,
        interest: Option<Interest>,
    ) -> Result<Subscription, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc(Refusal::MaxConnections);
            return Err(Refusal::MaxConnections);
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
                    kick: kick.clone(),
                });
                Some((tenant_key, user_key))
            }
        };
        let Some((tenant_key, user_key)) = registered else {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc(Refusal::MaxPerUser);
            return Err(Refusal::MaxPerUser);
        };
        self.metrics.open.inc(transport);
        self.metrics.accepted.inc(transport);

        Ok(Subscription {
            hub: self.clone(),
            tenant: tenant_key,
            user: user_key,
            id,
            queue,
            skip_through: None,
            opened: std::time::Instant::now(),
            transport,
            delivered: 0,
            kicked: kick,
        })
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
                if m.kick(Disconnect::SlowClient) {
                    let (event_id, trace_id) = match item {
                        Outgoing::Event(e) => (&*e.id, e.trace_id.as_deref().unwrap_or("")),
                        Outgoing::Resync => ("", ""),
                    };
                    tracing::warn!(
                        connection.id = m.id,
                        event_id = %untrusted(event_id),
                        trace_id = %untrusted(trace_id),
                        "send queue full; disconnecting slow client"
                    );
                    hm.disconnects.inc(Disconnect::SlowClient);
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
                if m.kick(Disconnect::Revoked) {
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
        self.metrics.disconnects.add(Disconnect::Revoked, n as i64);
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
    /// registering it or counting a refusal: what `/auth/check` reports.
    pub fn would_admit(&self, tenant: &str, user: &str) -> Result<(), Refusal> {
        if self.connections() >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        let at_limit = self.tenants.get(tenant).is_some_and(|t| {
            t.users
                .get(user)
                .is_some_and(|m| m.len() >= self.limits.max_per_user)
        });
        if at_limit {
            return Err(Refusal::MaxPerUser);
        }
        Ok(())
    }
}

impl Subscription {
    /// Why the hub kicked this connection (meaningful once `kicked` is cancelled):
    /// `Revoked`, or `SlowClient` for a full queue.
    pub fn kick_reason(&self) -> Disconnect {
        if self.queue.revoked() {
            Disconnect::Revoked
        } else {
            Disconnect::SlowClient
        }
    }

    /// Counts why the gateway ended this connection.
    pub fn disconnected(&self, why: Disconnect) {
        self.hub.metrics.disconnects.inc(why);
    }

    /// Connection id, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Skips live events up to and including `seq` (they were replayed).
    pub fn skip_through(&mut self, seq: u64) {
        self.skip_through = Some(seq);
    }

    /// Waits for the next item. (Kept as `Option` for the transports' loops; the queue
    /// outlives the subscription, so it is never `None` today.)
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            let (item, seq) = self.queue.pop().await;
            if let Some(item) = self.take(item, seq) {
                return Some(item);
            }
        }
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        loop {
            let (item, seq) = self.queue.try_pop()?;
            if let Some(item) = self.take(item, seq) {
                return Some(item);
            }
        }
    }

    fn take(&mut self, item: Outgoing, seq: u64) -> Option<Outgoing> {
        match &item {
            Outgoing::Event(_) if self.skip_through.is_some_and(|s| seq <= s) => None,
            Outgoing::Event(_) => {
                self.delivered += 1;
                Some(item)
            }
            Outgoing::Resync => Some(item),
        }
    }

    /// The access log line of a connection that ended: who, how long, how many events,
    /// and why (`client_closed`, `client_gone`, or a gateway disconnect reason). Never
    /// a token.
    pub fn log_end(&self, reason: &str) {
        tracing::info!(
            connection.id = self.id,
            transport = self.transport.as_str(),
            tenant = %untrusted(&*self.tenant),
            user = %untrusted(&*self.user),
            duration_ms = self.opened.elapsed().as_millis() as u64,
            events = self.delivered,
            reason,
            "connection ended"
        );
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

impl Drop for Subscription {
    fn drop(&mut self) {
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
        std::iter::from_fn(|| s.try_recv())
            .map(|o| match o {
                Outgoing::Event(e) => e.id.to_string(),
                Outgoing::Resync => "resync".into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ids;
    use super::*;

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
        let mut a1 = hub
            .subscribe("a", "u1", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        let mut a2 = hub
            .subscribe("a", "u2", Transport::Sse, CancellationToken::new(), None)
            .unwrap();
        let mut b1 = hub
            .subscribe("b", "u1", Transport::Ws, CancellationToken::new(), None)
            .unwrap();

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
        let s1 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        let _s2 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        assert_eq!(
            hub.subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
                .err(),
            Some(Refusal::MaxPerUser)
        );
        let _s3 = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        assert_eq!(
            hub.subscribe("b", "w", Transport::Ws, CancellationToken::new(), None)
                .err(),
            Some(Refusal::MaxConnections)
        );
        drop(s1);
        assert_eq!(hub.connections(), 2);
        assert!(
            hub.subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
                .is_ok()
        );
    }

    #[test]
    fn unsubscribe_removes_empty_entries() {
        let hub = hub(10, 10, 8);
        let s = hub
            .subscribe("a", "u", Transport::Sse, CancellationToken::new(), None)
            .unwrap();
        drop(s);
        assert!(hub.tenants.is_empty());
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn full_queue_kicks_only_that_connection() {
        let hub = hub(10, 10, 2);
        let slow = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        let mut fast = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        for i in 0..5 {
            hub.publish(&event(&i.to_string(), "a", None), 1);
            while fast.try_recv().is_some() {}
        }
        assert!(slow.kicked.is_cancelled());
        assert!(!fast.kicked.is_cancelled());
    }

    #[test]
    fn byte_budget_kicks_and_is_returned_on_receive() {
        let hub = Hub::new(HubLimits {
            max_connections: 10,
            max_per_user: 10,
            queue_len: 100,
            queue_bytes: 600,
        });
        let mut s = hub
            .subscribe("a", "u", Transport::Sse, CancellationToken::new(), None)
            .unwrap();
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
        assert!(!s.kicked.is_cancelled());
        assert_eq!(hub.publish(&e, 1), 0);
        assert!(s.kicked.is_cancelled());
    }

    #[test]
    fn resync_reaches_every_connection() {
        let hub = hub(10, 10, 8);
        let mut a = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        let mut b = hub
            .subscribe("b", "v", Transport::Sse, CancellationToken::new(), None)
            .unwrap();
        assert_eq!(hub.resync_all(), 2);
        assert!(matches!(a.try_recv(), Some(Outgoing::Resync)));
        assert!(matches!(b.try_recv(), Some(Outgoing::Resync)));
    }

    #[test]
    fn live_copies_of_replayed_events_are_skipped() {
        let hub = hub(10, 10, 8);
        let mut s = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
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
        let mut s1 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
        let mut s2 = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new(), None)
            .unwrap();
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
