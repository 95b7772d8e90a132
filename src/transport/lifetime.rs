//! How long a client connection may live, shared by WebSocket and SSE: its token's expiry,
//! the hub's kick, and the shutdown drain. Every write to the client goes through
//! [`Lifetime::write`], which bounds it by the same three and by the write timeout, so a
//! client that stops reading can never hold a connection past any of them. The same
//! lifetime, [`Lifetime::watcher`], ends an SSE stream served through hyper from outside
//! when its socket is stuck (see `sse`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use crate::hub::{Disconnect, End, Kick};

/// A delay in `[0, window)`, spreading closes (and so reconnects) over the drain window.
pub(crate) fn jitter(window: Duration) -> Duration {
    window.mul_f64(rand::random::<f64>())
}

/// Why a write did not complete. The reason is the connection's [`End`], for the
/// connection to record.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The socket failed (the client left); nothing more can be sent.
    Failed(E),
    /// The hub told the connection to go while the write waited (a full queue, a
    /// revocation); the socket may still take a goodbye.
    Kicked(End),
    /// The write was still waiting when the connection had to end: the token expired,
    /// shutdown began, or the write timeout passed (`slow_client`). The socket is stuck,
    /// so the connection is dropped without a goodbye.
    Stuck(End),
}

/// The deadline, kick and drain of one connection.
pub struct Lifetime {
    /// The token's expiry, or once draining, the moment this connection closes. One timer
    /// serves both, so an idle connection carries one timer less.
    deadline: Pin<Box<Sleep>>,
    /// The hub's kick, asked of the connection's subscription.
    kick: Kick,
    /// Cancelled when the gateway closes its clients (shutdown).
    clients: CancellationToken,
    /// How long after shutdown begins this connection closes: drawn once within the drain
    /// window, so a watcher of the same lifetime ends at the same moment.
    drain_after: Duration,
    draining: bool,
    write_timeout: Duration,
}

impl Lifetime {
    /// A lifetime ending after `remaining` (the token's time left), when `kick` fires, or
    /// when `clients` is cancelled (then at a random moment within `drain`); writes may
    /// wait at most `write_timeout`.
    pub fn new(
        remaining: Duration,
        kick: Kick,
        clients: CancellationToken,
        drain: Duration,
        write_timeout: Duration,
    ) -> Lifetime {
        Lifetime {
            deadline: Box::pin(sleep(remaining)),
            kick,
            clients,
            drain_after: jitter(drain),
            draining: false,
            write_timeout,
        }
    }

    /// The same lifetime, for another task to wait on: it ends when this one does.
    pub fn watcher(&self) -> Lifetime {
        Lifetime {
            deadline: Box::pin(tokio::time::sleep_until(self.deadline.deadline())),
            kick: self.kick.clone(),
            clients: self.clients.clone(),
            drain_after: self.drain_after,
            draining: self.draining,
            write_timeout: self.write_timeout,
        }
    }

    /// The hub's kick of this connection.
    pub fn kick(&self) -> &Kick {
        &self.kick
    }

    /// Whether shutdown has begun for this connection.
    #[cfg(test)]
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The moment the connection ends unless something else ends it first.
    #[cfg(test)]
    pub fn deadline(&self) -> Instant {
        self.deadline.deadline()
    }

    /// Moves the token deadline after an in-band refresh; while draining, the close time
    /// stays.
    pub fn extend(&mut self, remaining: Duration) {
        if !self.draining {
            self.deadline.as_mut().reset(Instant::now() + remaining);
        }
    }

    /// Resolves when the connection must end, with why. Cancel-safe: selecting on it in a
    /// loop keeps the drain moment once shutdown has begun.
    pub async fn ended(&mut self) -> End {
        loop {
            tokio::select! {
                biased;
                _ = self.clients.cancelled(), if !self.draining => self.begin_drain(),
                why = self.kick.kicked() => return why,
                _ = &mut self.deadline => return self.deadline_reason(),
            }
        }
    }

    /// What the deadline means: the token's expiry, or the connection's moment in the
    /// drain.
    fn deadline_reason(&self) -> End {
        End::Gateway(if self.draining {
            Disconnect::Shutdown
        } else {
            Disconnect::TokenExpired
        })
    }

    fn begin_drain(&mut self) {
        self.draining = true;
        let at = Instant::now() + self.drain_after;
        if at < self.deadline.deadline() {
            self.deadline.as_mut().reset(at);
        }
    }

    /// Runs one write to the client, bounded by the kick, the deadline, the start of a
    /// shutdown and the write timeout. Biased toward the write: one that completes at once
    /// never arms the timers.
    pub async fn write<T, E>(
        &mut self,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<T, WriteError<E>> {
        tokio::select! {
            biased;
            r = write => r.map_err(WriteError::Failed),
            why = self.kick.kicked() => Err(WriteError::Kicked(why)),
            _ = &mut self.deadline => Err(WriteError::Stuck(self.deadline_reason())),
            // A stuck socket will not get to close gracefully in the drain anyway.
            _ = self.clients.cancelled(), if !self.draining => {
                Err(WriteError::Stuck(End::Gateway(Disconnect::Shutdown)))
            }
            _ = sleep(self.write_timeout) => Err(WriteError::Stuck(SLOW)),
        }
    }

    /// Like [`Lifetime::write`] for the last bytes of a connection that is ending: only the
    /// write timeout bounds it, since the other ends already fired.
    pub async fn write_last<T, E>(
        &self,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<T, WriteError<E>> {
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r.map_err(WriteError::Failed),
            Err(_) => Err(WriteError::Stuck(SLOW)),
        }
    }
}

/// A write that outlived the write timeout: the client is not reading.
const SLOW: End = End::Gateway(Disconnect::SlowClient);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{Hub, Subscription, Transport};

    const SLOW_CLIENT: End = End::Gateway(Disconnect::SlowClient);
    const REVOKED: End = End::Gateway(Disconnect::Revoked);
    const TOKEN_EXPIRED: End = End::Gateway(Disconnect::TokenExpired);
    const SHUTDOWN: End = End::Gateway(Disconnect::Shutdown);

    /// A registered connection of (t, u) and the hub, to kick it by revoking u.
    fn subscribed() -> (Arc<Hub>, Subscription) {
        let hub = crate::hub::testing::small_hub(8);
        let sub = hub.subscribe("t", "u", Transport::Ws, None).unwrap();
        (hub, sub)
    }

    fn kick(hub: &Hub) {
        hub.revoke(&crate::revocation::Revoked::User("u".into()));
    }

    fn lifetime(remaining: Duration) -> (Lifetime, Arc<Hub>, Subscription, CancellationToken) {
        let (hub, sub) = subscribed();
        let clients = CancellationToken::new();
        let l = Lifetime::new(
            remaining,
            sub.kick(),
            clients.clone(),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        (l, hub, sub, clients)
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_deadline_ends_it() {
        let (mut l, ..) = lifetime(Duration::from_secs(5));
        assert_eq!(l.ended().await, TOKEN_EXPIRED);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_ends_it_with_the_hubs_reason() {
        let (mut l, hub, _sub, _) = lifetime(Duration::from_secs(3600));
        kick(&hub);
        assert_eq!(l.ended().await, REVOKED);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_it_within_the_drain_window() {
        let (mut l, _, _, clients) = lifetime(Duration::from_secs(3600));
        clients.cancel();
        let start = Instant::now();
        assert_eq!(l.ended().await, SHUTDOWN);
        assert!(start.elapsed() <= Duration::from_secs(3));
        assert!(l.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_ends_when_its_lifetime_does() {
        let (mut l, _, _, clients) = lifetime(Duration::from_secs(3600));
        let mut w = l.watcher();
        clients.cancel();
        let (ended, watched) = tokio::join!(l.ended(), w.ended());
        assert_eq!((ended, watched), (SHUTDOWN, SHUTDOWN));
        assert_eq!(l.deadline(), w.deadline());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_moves_the_deadline_but_not_while_draining() {
        let (mut l, _, _, clients) = lifetime(Duration::from_secs(5));
        l.extend(Duration::from_secs(100));
        assert!(l.deadline() > Instant::now() + Duration::from_secs(90));
        clients.cancel();
        assert_eq!(l.ended().await, SHUTDOWN);
        let close_at = l.deadline();
        l.extend(Duration::from_secs(1000));
        assert_eq!(l.deadline(), close_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_completes_is_bounded_by_each_end() {
        let never = || std::future::pending::<Result<(), ()>>();
        let stuck = |r: Result<(), WriteError<()>>| match r {
            Err(WriteError::Stuck(why)) => why,
            other => panic!("not stuck: {other:?}"),
        };
        // The write timeout: a slow client.
        let (mut l, ..) = lifetime(Duration::from_secs(3600));
        assert_eq!(stuck(l.write(never()).await), SLOW_CLIENT);
        // The token's expiry comes first.
        let (mut l, ..) = lifetime(Duration::from_secs(5));
        assert_eq!(stuck(l.write(never()).await), TOKEN_EXPIRED);
        // Shutdown.
        let (mut l, _, _, clients) = lifetime(Duration::from_secs(3600));
        clients.cancel();
        assert_eq!(stuck(l.write(never()).await), SHUTDOWN);
        // A kick.
        let (mut l, hub, _sub, _) = lifetime(Duration::from_secs(3600));
        kick(&hub);
        assert!(matches!(
            l.write(never()).await,
            Err(WriteError::Kicked(REVOKED))
        ));
        // The last write of an ending connection: the timeout alone.
        let (l, ..) = lifetime(Duration::ZERO);
        assert_eq!(stuck(l.write_last(never()).await), SLOW_CLIENT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_completes_wins_over_expired_timers() {
        let (mut l, hub, _sub, _) = lifetime(Duration::ZERO);
        kick(&hub);
        assert!(l.write(async { Ok::<_, ()>(7) }).await.is_ok());
    }
}
