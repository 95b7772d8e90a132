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

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::envelope::Event;
use crate::telemetry::{Metrics, Refusal, Transport};

/// One registered connection, as the fan-out sees it.
struct Member {
    /// Identifies the member for removal.
    id: u64,
    /// Which transport, for per-transport delivery counts.
    transport: Transport,
    /// The connection's bounded queue.
    tx: mpsc::Sender<Arc<Event>>,
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
    /// Events for this connection, in the order the hub received them.
    pub rx: mpsc::Receiver<Arc<Event>>,
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
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: &str,
        user: &str,
        transport: Transport,
    ) -> Result<Subscription, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused(Refusal::MaxConnections);
            return Err(Refusal::MaxConnections);
        }
        let (tx, rx) = mpsc::channel(self.limits.queue_len);
        let kick = CancellationToken::new();
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
            kicked: kick,
        })
    }

    fn unsubscribe(&self, tenant: &Arc<str>, user: &Arc<str>, id: u64) {
        let mut transport = None;
        if let Some(mut t) = self.tenants.get_mut(tenant) {
            if let Some(members) = t.users.get_mut(user) {
                if let Some(pos) = members.iter().position(|m| m.id == id) {
                    transport = Some(members.swap_remove(pos).transport);
                }
                if members.is_empty() {
                    t.users.remove(user);
                }
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
        if let Some(tenant) = self.tenants.get(&*event.tenant) {
            match event.user.as_deref() {
                Some(user) => {
                    if let Some(members) = tenant.users.get(user) {
                        for m in members {
                            self.offer(m, event, &mut counts);
                        }
                    }
                }
                None => {
                    for members in tenant.users.values() {
                        for m in members {
                            self.offer(m, event, &mut counts);
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
        }
        (ws + sse) as usize
    }

    fn offer(&self, m: &Member, event: &Arc<Event>, counts: &mut [u64; 2]) {
        match m.tx.try_send(event.clone()) {
            Ok(()) => counts[m.transport as usize] += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The client is not reading. Dropping just this event would leave a
                // silent gap, so the connection is ended instead and the client resumes.
                if !m.kick.is_cancelled() {
                    tracing::warn!(
                        connection.id = m.id,
                        event_id = %event.id,
                        "send queue full; disconnecting slow client"
                    );
                    m.kick.cancel();
                }
                self.metrics.delivery_dropped_slow_client();
            }
            // The connection is shutting down; its Subscription is about to go.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
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
        let mut a1 = hub.subscribe("a", "u1", Transport::Ws).unwrap();
        let mut a2 = hub.subscribe("a", "u2", Transport::Sse).unwrap();
        let mut b1 = hub.subscribe("b", "u1", Transport::Ws).unwrap();

        assert_eq!(hub.publish(&event("1", "a", Some("u1"))), 1);
        assert_eq!(hub.publish(&event("2", "a", None)), 2);
        assert_eq!(hub.publish(&event("3", "c", None)), 0);
        assert_eq!(hub.publish(&event("4", "b", Some("u2"))), 0);

        let ids = |s: &mut Subscription| {
            let mut v = Vec::new();
            while let Ok(e) = s.rx.try_recv() {
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
        let s1 = hub.subscribe("a", "u", Transport::Ws).unwrap();
        let _s2 = hub.subscribe("a", "u", Transport::Ws).unwrap();
        assert_eq!(
            hub.subscribe("a", "u", Transport::Ws).err(),
            Some(Refusal::MaxPerUser)
        );
        let _s3 = hub.subscribe("a", "v", Transport::Ws).unwrap();
        assert_eq!(
            hub.subscribe("b", "w", Transport::Ws).err(),
            Some(Refusal::MaxConnections)
        );
        drop(s1);
        assert_eq!(hub.connections(), 2);
        assert!(hub.subscribe("a", "u", Transport::Ws).is_ok());
    }

    #[test]
    fn unsubscribe_removes_empty_entries() {
        let hub = hub(10, 10, 8);
        let s = hub.subscribe("a", "u", Transport::Sse).unwrap();
        drop(s);
        assert!(hub.tenants.is_empty());
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn full_queue_kicks_only_that_connection() {
        let hub = hub(10, 10, 2);
        let slow = hub.subscribe("a", "u", Transport::Ws).unwrap();
        let mut fast = hub.subscribe("a", "v", Transport::Ws).unwrap();
        for i in 0..5 {
            hub.publish(&event(&i.to_string(), "a", None));
            while fast.rx.try_recv().is_ok() {}
        }
        assert!(slow.kicked.is_cancelled());
        assert!(!fast.kicked.is_cancelled());
    }

    #[test]
    fn one_event_is_shared_not_copied() {
        let hub = hub(10, 10, 8);
        let mut s1 = hub.subscribe("a", "u", Transport::Ws).unwrap();
        let mut s2 = hub.subscribe("a", "v", Transport::Ws).unwrap();
        let e = event("1", "a", None);
        hub.publish(&e);
        let r1 = s1.rx.try_recv().unwrap();
        let r2 = s2.rx.try_recv().unwrap();
        assert!(Arc::ptr_eq(&r1, &e) && Arc::ptr_eq(&r2, &e));
        assert_eq!(r1.ws_frame().as_ptr(), r2.ws_frame().as_ptr());
    }
}
