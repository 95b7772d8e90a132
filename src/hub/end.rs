//! Why a connection ended: the one reason type, and where it is recorded. Whoever ends a
//! connection (the hub's kick, the connection's own lifetime, a stuck write, the client)
//! records its reason in the connection's [`EndState`]; the first reason recorded stands,
//! so each connection's end is counted once, and its access log line names that reason.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;

use crate::telemetry::Label;

crate::label_set! {
    /// Why the gateway ended a registered connection (`gateway_disconnects_total`).
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

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed it (a WebSocket close frame).
    ClientClosed,
    /// The client left without a word, or its socket failed: what is recorded when
    /// nothing else was.
    ClientGone,
    /// The gateway ended it; counted in `gateway_disconnects_total`.
    Gateway(Disconnect),
}

impl End {
    /// The `reason` of the access log line.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::Gateway(why) => why.as_str(),
        }
    }

    /// Its code in [`EndState`]; 0 is "not recorded yet".
    fn code(self) -> u8 {
        match self {
            End::ClientClosed => 1,
            End::ClientGone => 2,
            // Seven reasons: the codes fit a byte with room to spare.
            End::Gateway(why) => 3 + why.index() as u8,
        }
    }

    fn from_code(code: u8) -> Option<End> {
        match code {
            0 => None,
            1 => Some(End::ClientClosed),
            2 => Some(End::ClientGone),
            n => Disconnect::ALL
                .get(usize::from(n - 3))
                .map(|why| End::Gateway(*why)),
        }
    }
}

/// One connection's end, shared by the hub (which kicks) and the connection (which ends
/// itself, or is told to go). Kept inside the connection's send queue rather than in an
/// allocation of its own.
#[derive(Debug, Default)]
pub struct EndState {
    /// The first reason recorded, as [`End::code`].
    reason: AtomicU8,
    /// Cancelled when the hub tells the connection to go, after the reason is recorded.
    kick: CancellationToken,
}

impl EndState {
    /// Records `why` unless a reason was recorded already: `Ok` when `why` stands, else the
    /// reason recorded before.
    pub(super) fn record(&self, why: End) -> Result<(), End> {
        match self
            .reason
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(earlier) => Err(End::from_code(earlier).unwrap_or(why)),
        }
    }

    /// The reason recorded, if any.
    pub(super) fn recorded(&self) -> Option<End> {
        End::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Tells the connection to go (its reason is recorded first).
    pub(super) fn kick(&self) {
        self.kick.cancel();
    }

    /// Whether the connection was told to go.
    #[cfg(test)]
    pub(super) fn is_kicked(&self) -> bool {
        self.kick.is_cancelled()
    }

    /// Resolves when the connection is told to go, with the reason the hub recorded.
    pub(super) async fn kicked(&self) -> End {
        self.kick.cancelled().await;
        // Recorded before the kick, so never missing; a client that left is the honest
        // answer if it were.
        self.recorded().unwrap_or(End::ClientGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_its_code() {
        let mut all = vec![End::ClientClosed, End::ClientGone];
        all.extend(Disconnect::ALL.iter().map(|d| End::Gateway(*d)));
        for why in all {
            assert_eq!(End::from_code(why.code()), Some(why));
        }
        assert_eq!(End::from_code(0), None);
    }

    #[test]
    fn the_first_reason_recorded_stands() {
        let end = EndState::default();
        assert_eq!(end.recorded(), None);
        assert_eq!(end.record(End::Gateway(Disconnect::Revoked)), Ok(()));
        assert_eq!(
            end.record(End::Gateway(Disconnect::TokenExpired)),
            Err(End::Gateway(Disconnect::Revoked))
        );
        assert_eq!(
            end.record(End::ClientGone),
            Err(End::Gateway(Disconnect::Revoked))
        );
        assert_eq!(end.recorded(), Some(End::Gateway(Disconnect::Revoked)));
    }

    #[tokio::test]
    async fn a_kick_carries_its_reason() {
        let end = EndState::default();
        end.record(End::Gateway(Disconnect::SlowClient)).unwrap();
        end.kick();
        assert!(end.is_kicked());
        assert_eq!(end.kicked().await, End::Gateway(Disconnect::SlowClient));
    }
}
