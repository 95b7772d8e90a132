//! How long a client connection may live, shared by WebSocket and SSE: its token's expiry,
//! the hub's slow-client kick, and the shutdown drain. Every write to the client goes
//! through [`Lifetime::write`], which bounds it by the same three and by a write timeout,
//! so a client that stops reading can never hold a connection past any of them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use crate::hub::Disconnect;

/// A delay in `[0, window)`, spreading closes (and so reconnects) over the drain window.
pub(crate) fn jitter(window: Duration) -> Duration {
    window.mul_f64(rand::random::<f64>())
}

/// Why a connection's lifetime ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The hub found its send queue full (already counted there).
    Kicked,
    /// Its token expired.
    TokenExpired,
    /// Its moment in the shutdown drain came.
    Shutdown,
}

/// Why a write did not complete.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The socket failed (the client left); nothing more can be sent.
    Failed(E),
    /// The hub kicked the connection while the write waited.
    Kicked,
    /// The write was still waiting when the connection had to end: the token expired,
    /// shutdown began, or the write timeout passed (`slow_client`). The socket is stuck,
    /// so the connection is dropped without a goodbye.
    Stuck(Disconnect),
}

/// The deadline, kick and drain of one connection.
pub struct Lifetime {
    /// The token's expiry, or once draining, the moment this connection closes. One timer
    /// serves both, so an idle connection carries one timer less.
    deadline: Pin<Box<Sleep>>,
    kicked: CancellationToken,
    shutdown: CancellationToken,
    drain: Duration,
    draining: bool,
    write_timeout: Duration,
}

impl Lifetime {
    /// A lifetime ending after `remaining` (the token's time left), when `kicked` or
    /// `shutdown` (then at a random moment within `drain`) is cancelled; writes may wait
    /// at most `write_timeout`.
    pub fn new(
        remaining: Duration,
        kicked: CancellationToken,
        shutdown: CancellationToken,
        drain: Duration,
        write_timeout: Duration,
    ) -> Lifetime {
        Lifetime {
            deadline: Box::pin(sleep(remaining)),
            kicked,
            shutdown,
            drain,
            draining: false,
            write_timeout,
        }
    }

    /// Whether shutdown has begun for this connection.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The moment the connection ends unless something else ends it first.
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

    /// Resolves when the connection must end. Cancel-safe: selecting on it in a loop
    /// keeps the drain moment once shutdown has begun.
    pub async fn ended(&mut self) -> Ending {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled(), if !self.draining => self.begin_drain(),
                _ = self.kicked.cancelled() => return Ending::Kicked,
                _ = &mut self.deadline => {
                    return if self.draining { Ending::Shutdown } else { Ending::TokenExpired };
                }
            }
        }
    }

    fn begin_drain(&mut self) {
        self.draining = true;
        let at = Instant::now() + jitter(self.drain);
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
            _ = self.kicked.cancelled() => Err(WriteError::Kicked),
            _ = &mut self.deadline => Err(WriteError::Stuck(if self.draining {
                Disconnect::Shutdown
            } else {
                Disconnect::TokenExpired
            })),
            // A stuck socket will not get to close gracefully in the drain anyway.
            _ = self.shutdown.cancelled(), if !self.draining => Err(WriteError::Stuck(Disconnect::Shutdown)),
            _ = sleep(self.write_timeout) => Err(WriteError::Stuck(Disconnect::SlowClient)),
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
            Err(_) => Err(WriteError::Stuck(Disconnect::SlowClient)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetime(remaining: Duration) -> (Lifetime, CancellationToken, CancellationToken) {
        let (kick, stop) = (CancellationToken::new(), CancellationToken::new());
        let l = Lifetime::new(
            remaining,
            kick.clone(),
            stop.clone(),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        (l, kick, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_deadline_ends_it() {
        let (mut l, _, _) = lifetime(Duration::from_secs(5));
        assert_eq!(l.ended().await, Ending::TokenExpired);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_ends_it() {
        let (mut l, kick, _) = lifetime(Duration::from_secs(3600));
        kick.cancel();
        assert_eq!(l.ended().await, Ending::Kicked);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_it_within_the_drain_window() {
        let (mut l, _, stop) = lifetime(Duration::from_secs(3600));
        stop.cancel();
        let start = Instant::now();
        assert_eq!(l.ended().await, Ending::Shutdown);
        assert!(start.elapsed() <= Duration::from_secs(3));
        assert!(l.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_moves_the_deadline_but_not_while_draining() {
        let (mut l, _, stop) = lifetime(Duration::from_secs(5));
        l.extend(Duration::from_secs(100));
        assert!(l.deadline() > Instant::now() + Duration::from_secs(90));
        stop.cancel();
        assert_eq!(l.ended().await, Ending::Shutdown);
        let close_at = l.deadline();
        l.extend(Duration::from_secs(1000));
        assert_eq!(l.deadline(), close_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_completes_is_bounded_by_each_end() {
        let never = || std::future::pending::<Result<(), ()>>();
        // The write timeout: a slow client.
        let (mut l, _, _) = lifetime(Duration::from_secs(3600));
        assert!(matches!(
            l.write(never()).await,
            Err(WriteError::Stuck(Disconnect::SlowClient))
        ));
        // The token's expiry comes first.
        let (mut l, _, _) = lifetime(Duration::from_secs(5));
        assert!(matches!(
            l.write(never()).await,
            Err(WriteError::Stuck(Disconnect::TokenExpired))
        ));
        // Shutdown.
        let (mut l, _, stop) = lifetime(Duration::from_secs(3600));
        stop.cancel();
        assert!(matches!(
            l.write(never()).await,
            Err(WriteError::Stuck(Disconnect::Shutdown))
        ));
        // A kick.
        let (mut l, kick, _) = lifetime(Duration::from_secs(3600));
        kick.cancel();
        assert!(matches!(l.write(never()).await, Err(WriteError::Kicked)));
        // The last write of an ending connection: the timeout alone.
        let (l, _, _) = lifetime(Duration::ZERO);
        assert!(matches!(
            l.write_last(never()).await,
            Err(WriteError::Stuck(Disconnect::SlowClient))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_completes_wins_over_expired_timers() {
        let (mut l, kick, _) = lifetime(Duration::ZERO);
        kick.cancel();
        assert!(l.write(async { Ok::<_, ()>(7) }).await.is_ok());
    }
}
