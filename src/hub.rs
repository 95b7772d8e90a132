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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::envelope::Event;
use crate::telemetry::{Disconnect, Metrics, Refusal, Transport};

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
    tx: mpsc::Sender<Outgoing>,
    /// Bytes of the events in the queue, shared with the connection, which subtracts
    /// what it takes out.
    queued_bytes: Arc<AtomicUsize>,
    /// Cancelled when the queue overflowed, so the connection task closes the client.
    kick: CancellationToken,
}

/// Connections of one tenant, by user.
#[derive(Default)]
struct Tenant {
    users: HashMap<Arc<str>, Vec<Member>>,
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
    tenants: DashMap<Arc<str>, Tenant>,
    next_id: AtomicU64,
    total: AtomicUsize,
    limits: HubLimits,
    metrics: Arc<Metrics>,
}

/// A connection's membership; dropping it unregisters the connection.
pub struct Subscription {
    hub: Arc<Hub>,
    tenant: Arc<str>,
    user: Arc<str>,
    id: u64,
    /// Events for this connection, in the order the hub received them; take them with
    /// [`Subscription::recv`] / [`Subscription::try_recv`] so the byte budget is returned.
    rx: mpsc::Receiver<Outgoing>,
    queued_bytes: Arc<AtomicUsize>,
    /// Events up to this sequence number were replayed from history; their live copies
    /// are skipped so the resume seam has no duplicate.
    skip_through: Option<u64>,
    /// Cancelled when this connection fell too far behind.
    pub kicked: CancellationToken,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            tenants: DashMap::new(),
            next_id: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            limits,
            metrics,
        })
    }

    /// Registers a connection of `user` in `tenant`, enforcing the connection limits.
    /// `kick` is cancelled if the connection falls too far behind.
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: &str,
        user: &str,
        transport: Transport,
        kick: CancellationToken,
    ) -> Result<Subscription, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused(Refusal::MaxConnections);
            return Err(Refusal::MaxConnections);
        }
        let (tx, rx) = mpsc::channel(self.limits.queue_len);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
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
            if members.len() >= self.limits.max_per_user {
                None
            } else {
                members.push(Member {
                    id,
                    transport,
                    tx,
                    queued_bytes: queued_bytes.clone(),
                    kick: kick.clone(),
                });
                Some((tenant_key, user_key))
            }
        };
        let Some((tenant_key, user_key)) = registered else {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused(Refusal::MaxPerUser);
            return Err(Refusal::MaxPerUser);
        };
        self.metrics.connection_opened(transport);

        Ok(Subscription {
            hub: self.clone(),
            tenant: tenant_key,
            user: user_key,
            id,
            rx,
            queued_bytes,
            skip_through: None,
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
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.connection_closed(t);
        }
    }

    /// Hands `event` to every connection it belongs to, without waiting for any of them.
    /// Returns how many connections it was queued for.
    pub fn publish(&self, event: &Arc<Event>) -> usize {
        let mut counts = [0u64; 2];
        let item = Outgoing::Event(event.clone());
        if let Some(tenant) = self.tenants.get(&*event.tenant) {
            match event.user.as_deref() {
                Some(user) => {
                    if let Some(members) = tenant.users.get(user) {
                        for m in members {
                            self.offer(m, &item, &mut counts);
                        }
                    }
                }
                None => {
                    for members in tenant.users.values() {
                        for m in members {
                            self.offer(m, &item, &mut counts);
                        }
                    }
                }
            }
        }
        let (ws, sse) = (counts[0], counts[1]);
        if ws > 0 {
            self.metrics.delivered(Transport::Ws, ws);
        }
        if sse > 0 {
            self.metrics.delivered(Transport::Sse, sse);
        }
        if ws + sse == 0 {
            self.metrics.event_unrouted();
        } else if let Some(t) = event.event_time_us {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(t);
            self.metrics.observe_latency_us(now - t);
        }
        (ws + sse) as usize
    }

    /// Tells every connection that events may have been lost.
    pub fn resync_all(&self) -> usize {
        let mut counts = [0u64; 2];
        for tenant in self.tenants.iter() {
            for members in tenant.users.values() {
                for m in members {
                    self.offer(m, &Outgoing::Resync, &mut counts);
                }
            }
        }
        let n = counts[0] + counts[1];
        self.metrics.resyncs_sent(n);
        n as usize
    }

    fn offer(&self, m: &Member, item: &Outgoing, counts: &mut [u64; 2]) {
        let bytes = item.bytes();
        let queued = m.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let result = if queued > self.limits.queue_bytes {
            Err(mpsc::error::TrySendError::Full(()))
        } else {
            m.tx.try_send(item.clone()).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            })
        };
        match result {
            Ok(()) => {
                counts[m.transport as usize] += 1;
                let depth = self.limits.queue_len - m.tx.capacity();
                self.metrics.queue_depth(depth, queued);
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                m.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                // The client is not reading. Dropping just this event would leave a
                // silent gap, so the connection is ended instead and the client resumes.
                if !m.kick.is_cancelled() {
                    let (event_id, trace_id) = match item {
                        Outgoing::Event(e) => (&*e.id, e.trace_id.as_deref().unwrap_or("")),
                        Outgoing::Resync => ("", ""),
                    };
                    tracing::warn!(
                        connection.id = m.id,
                        event_id,
                        trace_id,
                        "send queue full; disconnecting slow client"
                    );
                    m.kick.cancel();
                    self.metrics.disconnected(Disconnect::SlowClient);
                }
                self.metrics.delivery_dropped_slow_client();
            }
            // The connection is shutting down; its Subscription is about to go.
            Err(mpsc::error::TrySendError::Closed(())) => {
                m.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
    }

    /// Open connections on this instance.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Subscription {
    /// Connection id, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Skips live events up to and including `seq` (they were replayed).
    pub fn skip_through(&mut self, seq: u64) {
        self.skip_through = Some(seq);
    }

    /// Waits for the next item; `None` only if the hub is gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            let item = self.rx.recv().await?;
            if let Some(item) = self.take(item) {
                return Some(item);
            }
        }
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        loop {
            let item = self.rx.try_recv().ok()?;
            if let Some(item) = self.take(item) {
                return Some(item);
            }
        }
    }

    fn take(&mut self, item: Outgoing) -> Option<Outgoing> {
        self.queued_bytes.fetch_sub(item.bytes(), Ordering::AcqRel);
        match &item {
            Outgoing::Event(e) if self.skip_through.is_some_and(|s| e.seq <= s) => None,
            _ => Some(item),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.tenant, &self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_connections: usize, max_per_user: usize, queue_len: usize) -> Arc<Hub> {
        Hub::new(
            HubLimits {
                max_connections,
                max_per_user,
                queue_len,
                queue_bytes: 1 << 20,
            },
            Arc::new(Metrics::default()),
        )
    }

    fn event(id: &str, tenant: &str, user: Option<&str>) -> Arc<Event> {
        let body = serde_json::json!({
            "event_id": id, "event_type": "render.job.progress.v1",
            "tenant_id": tenant, "user_id": user, "data": {}
        });
        Arc::new(Event::parse(serde_json::to_vec(&body).unwrap(), 4096).unwrap())
    }

    #[test]
    fn routes_by_tenant_and_user() {
        let hub = hub(100, 10, 8);
        let mut a1 = hub
            .subscribe("a", "u1", Transport::Ws, CancellationToken::new())
            .unwrap();
        let mut a2 = hub
            .subscribe("a", "u2", Transport::Sse, CancellationToken::new())
            .unwrap();
        let mut b1 = hub
            .subscribe("b", "u1", Transport::Ws, CancellationToken::new())
            .unwrap();

        assert_eq!(hub.publish(&event("1", "a", Some("u1"))), 1);
        assert_eq!(hub.publish(&event("2", "a", None)), 2);
        assert_eq!(hub.publish(&event("3", "c", None)), 0);
        assert_eq!(hub.publish(&event("4", "b", Some("u2"))), 0);

        let ids = |s: &mut Subscription| {
            let mut v = Vec::new();
            while let Some(Outgoing::Event(e)) = s.try_recv() {
                v.push(e.id.to_string());
            }
            v
        };
        assert_eq!(ids(&mut a1), ["1", "2"]);
        assert_eq!(ids(&mut a2), ["2"]);
        assert!(ids(&mut b1).is_empty());
    }

    #[test]
    fn limits_refuse_and_release() {
        let hub = hub(3, 2, 8);
        let s1 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new())
            .unwrap();
        let _s2 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new())
            .unwrap();
        assert_eq!(
            hub.subscribe("a", "u", Transport::Ws, CancellationToken::new())
                .err(),
            Some(Refusal::MaxPerUser)
        );
        let _s3 = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new())
            .unwrap();
        assert_eq!(
            hub.subscribe("b", "w", Transport::Ws, CancellationToken::new())
                .err(),
            Some(Refusal::MaxConnections)
        );
        drop(s1);
        assert_eq!(hub.connections(), 2);
        assert!(
            hub.subscribe("a", "u", Transport::Ws, CancellationToken::new())
                .is_ok()
        );
    }

    #[test]
    fn unsubscribe_removes_empty_entries() {
        let hub = hub(10, 10, 8);
        let s = hub
            .subscribe("a", "u", Transport::Sse, CancellationToken::new())
            .unwrap();
        drop(s);
        assert!(hub.tenants.is_empty());
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn full_queue_kicks_only_that_connection() {
        let hub = hub(10, 10, 2);
        let slow = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new())
            .unwrap();
        let mut fast = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new())
            .unwrap();
        for i in 0..5 {
            hub.publish(&event(&i.to_string(), "a", None));
            while fast.try_recv().is_some() {}
        }
        assert!(slow.kicked.is_cancelled());
        assert!(!fast.kicked.is_cancelled());
    }

    #[test]
    fn byte_budget_kicks_and_is_returned_on_receive() {
        let hub = Hub::new(
            HubLimits {
                max_connections: 10,
                max_per_user: 10,
                queue_len: 100,
                queue_bytes: 600,
            },
            Arc::new(Metrics::default()),
        );
        let mut s = hub
            .subscribe("a", "u", Transport::Sse, CancellationToken::new())
            .unwrap();
        let e = event("1", "a", None);
        let fits = 600 / e.len();
        for _ in 0..fits {
            assert_eq!(hub.publish(&e), 1);
        }
        while s.try_recv().is_some() {}
        // Budget returned: the same number fits again, one more does not.
        for _ in 0..fits {
            assert_eq!(hub.publish(&e), 1);
        }
        assert!(!s.kicked.is_cancelled());
        assert_eq!(hub.publish(&e), 0);
        assert!(s.kicked.is_cancelled());
    }

    #[test]
    fn resync_reaches_every_connection() {
        let hub = hub(10, 10, 8);
        let mut a = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new())
            .unwrap();
        let mut b = hub
            .subscribe("b", "v", Transport::Sse, CancellationToken::new())
            .unwrap();
        assert_eq!(hub.resync_all(), 2);
        assert!(matches!(a.try_recv(), Some(Outgoing::Resync)));
        assert!(matches!(b.try_recv(), Some(Outgoing::Resync)));
    }

    #[test]
    fn one_event_is_shared_not_copied() {
        let hub = hub(10, 10, 8);
        let mut s1 = hub
            .subscribe("a", "u", Transport::Ws, CancellationToken::new())
            .unwrap();
        let mut s2 = hub
            .subscribe("a", "v", Transport::Ws, CancellationToken::new())
            .unwrap();
        let e = event("1", "a", None);
        hub.publish(&e);
        let (Some(Outgoing::Event(r1)), Some(Outgoing::Event(r2))) = (s1.try_recv(), s2.try_recv())
        else {
            panic!("both connections get the event");
        };
        assert!(Arc::ptr_eq(&r1, &e) && Arc::ptr_eq(&r2, &e));
        assert_eq!(r1.ws_frame().as_ptr(), r2.ws_frame().as_ptr());
    }
}
