//! Sockets accepted but still sending their first request head ("pending"), and the
//! admission policy that keeps them from shutting clients out.
//!
//! A silent socket holds a descriptor and a task until the head timeout, so their number is
//! capped (`GATEWAY_MAX_PENDING_CONNECTIONS`). What happens at the cap decides who suffers:
//! - **A burst** (a reconnect storm after an instance died) is many clients that each send
//!   their head at once. When every slot is taken the accept loop stops accepting: the rest
//!   wait in the kernel's listen backlog for the moment a head completes, and none is
//!   closed without an answer.
//! - **Silent sockets** must not keep the slots: when the cap is full, the oldest pending
//!   socket that has had [`YIELD_AFTER`] gives its slot to the next one. A client sends its
//!   head within a round trip, so only sockets that send nothing lose theirs, and an
//!   attacker has to open `cap / YIELD_AFTER` sockets a second to keep the instance busy,
//!   while clients behind them in the backlog still get in.
//! - **One address** may hold at most `GATEWAY_MAX_PENDING_PER_ADDRESS` pending sockets
//!   when that is set: its oldest yields to its newest, whatever its age, so it can only
//!   ever occupy that many slots. Off by default: behind a proxy every socket comes from
//!   the proxy's address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TransportMetrics;

/// How long a pending socket keeps its slot against newcomers once the cap is full. Far
/// longer than a request head takes to arrive, far shorter than the head timeout.
pub const YIELD_AFTER: Duration = Duration::from_secs(1);

crate::label_set! {
    /// Why a pending socket was closed to make room.
    pub enum Yielded as "reason" {
        /// It was the oldest when every slot was taken.
        Oldest = "oldest",
        /// Its address held `GATEWAY_MAX_PENDING_PER_ADDRESS` pending sockets.
        Address = "address",
    }
}

/// The pending sockets of one listener.
pub struct PendingSockets {
    inner: Mutex<Inner>,
    /// Signalled whenever a slot frees.
    freed: Notify,
    cap: usize,
    per_address: Option<usize>,
    metrics: Arc<TransportMetrics>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By id, which grows with accept time: the first is the oldest.
    sockets: BTreeMap<u64, Socket>,
    per_address: HashMap<IpAddr, usize>,
}

struct Socket {
    since: Instant,
    addr: IpAddr,
    /// Cancelled when the socket must yield its slot.
    yield_token: CancellationToken,
}

impl PendingSockets {
    /// At most `cap` pending sockets (at least one), `per_address` of them from one
    /// address when set.
    pub fn new(
        cap: usize,
        per_address: Option<usize>,
        metrics: Arc<TransportMetrics>,
    ) -> Arc<PendingSockets> {
        Arc::new(PendingSockets {
            inner: Mutex::default(),
            freed: Notify::new(),
            cap: cap.max(1),
            per_address,
            metrics,
        })
    }

    /// Returns once a socket may be accepted: a slot is free, or the oldest pending socket
    /// has had [`YIELD_AFTER`] and gave its slot up.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let oldest_yields_at = {
                let mut inner = self.lock();
                let Some((&id, oldest)) = inner.sockets.first_key_value() else {
                    return;
                };
                if inner.sockets.len() < self.cap {
                    return;
                }
                let at = oldest.since + YIELD_AFTER;
                if at <= Instant::now() {
                    self.make_yield(&mut inner, id, Yielded::Oldest);
                    return;
                }
                at
            };
            self.metrics.accept_paused.inc();
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(oldest_yields_at) => {}
            }
        }
    }

    /// Counts a socket just accepted from `addr` as pending until the returned guard is
    /// dropped; first, when its address holds its limit already, the address's oldest
    /// yields.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Pending {
        let mut inner = self.lock();
        let at_limit = |n: &usize| self.per_address.is_some_and(|limit| *n >= limit);
        if inner.per_address.get(&addr).is_some_and(at_limit) {
            let oldest = inner.sockets.iter().find(|(_, s)| s.addr == addr);
            if let Some((&id, _)) = oldest {
                self.make_yield(&mut inner, id, Yielded::Address);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let yield_token = CancellationToken::new();
        inner.sockets.insert(
            id,
            Socket {
                since: Instant::now(),
                addr,
                yield_token: yield_token.clone(),
            },
        );
        *inner.per_address.entry(addr).or_default() += 1;
        self.metrics.pending.add(1);
        Pending {
            id,
            sockets: self.clone(),
            yield_token,
        }
    }

    /// Frees `id`'s slot at once and tells its task to close the socket.
    fn make_yield(&self, inner: &mut Inner, id: u64, why: Yielded) {
        if let Some(socket) = self.remove(inner, id) {
            socket.yield_token.cancel();
            self.metrics.pending_yielded.inc(why);
            tracing::debug!(
                client.addr = %socket.addr,
                reason = why.as_str(),
                "pending socket closed to make room"
            );
        }
    }

    fn remove(&self, inner: &mut Inner, id: u64) -> Option<Socket> {
        let socket = inner.sockets.remove(&id)?;
        if let Some(n) = inner.per_address.get_mut(&socket.addr) {
            *n -= 1;
            if *n == 0 {
                inner.per_address.remove(&socket.addr);
            }
        }
        self.metrics.pending.add(-1);
        self.freed.notify_one();
        Some(socket)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock's data is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A socket counted as pending until its first request head is complete or it goes away
/// (dropped), or until it must yield its slot ([`Pending::yielded`]).
pub struct Pending {
    id: u64,
    sockets: Arc<PendingSockets>,
    yield_token: CancellationToken,
}

impl Pending {
    /// Completes when this socket must give its slot up: its task then closes it.
    pub async fn yielded(&self) {
        self.yield_token.cancelled().await;
    }

    /// The token [`Pending::yielded`] waits for, for a task that hands the guard on.
    pub fn yield_token(&self) -> CancellationToken {
        self.yield_token.clone()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut inner = self.sockets.lock();
        self.sockets.remove(&mut inner, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_accept_waits_then_the_oldest_yields() {
        let metrics = Arc::new(TransportMetrics::default());
        let set = PendingSockets::new(2, None, metrics.clone());
        let first = set.admit(addr(1));
        tokio::time::advance(Duration::from_millis(300)).await;
        let second = set.admit(addr(2));
        // Full: no room until the first has had its time.
        let waited = Instant::now();
        set.room().await;
        assert_eq!(waited.elapsed(), YIELD_AFTER - Duration::from_millis(300));
        assert!(first.yield_token.is_cancelled() && !second.yield_token.is_cancelled());
        assert_eq!(metrics.pending_yielded.get(Yielded::Oldest), 1);
        assert_eq!(metrics.pending.get(), 1);
        // The yielded guard's drop frees nothing twice.
        drop(first);
        assert_eq!(metrics.pending.get(), 1);
        let _third = set.admit(addr(3));
        assert_eq!(metrics.pending.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_head_frees_its_slot_at_once() {
        let metrics = Arc::new(TransportMetrics::default());
        let set = PendingSockets::new(1, None, metrics.clone());
        let only = set.admit(addr(1));
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move { set.room().await })
        };
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(only);
        waiter.await.unwrap();
        assert_eq!(metrics.pending_yielded.get(Yielded::Oldest), 0);
        assert_eq!(metrics.accept_paused.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_at_most_its_limit() {
        let metrics = Arc::new(TransportMetrics::default());
        let set = PendingSockets::new(100, Some(2), metrics.clone());
        let a1 = set.admit(addr(1));
        let b1 = set.admit(addr(2));
        let a2 = set.admit(addr(1));
        let a3 = set.admit(addr(1));
        assert!(a1.yield_token.is_cancelled());
        assert!(!a2.yield_token.is_cancelled() && !a3.yield_token.is_cancelled());
        assert!(!b1.yield_token.is_cancelled());
        assert_eq!(metrics.pending_yielded.get(Yielded::Address), 1);
        assert_eq!(metrics.pending.get(), 3);
    }
}
