//! WebSocket transport: `GET /ws`. One text frame per event, JSON control messages,
//! ping/pong liveness, and a close handshake with a documented code for every way the
//! gateway ends a connection.
//!
//! The connection loop is generic over `Sink`/`Stream` so it can be driven by channels in
//! unit tests as well as by a real socket.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, Verifier};
use crate::hub::{Outgoing, Subscription};
use crate::server::AppState;
use crate::telemetry::{Disconnect, Metrics, Transport};
use crate::transport::{Rejection, authenticate, jitter, last_event_id_param, register};

/// Close codes the gateway sends. 4000-4999 are for applications (RFC 6455 7.4.2).
pub mod close_code {
    /// Graceful shutdown or restart of this instance: reconnect (to another instance).
    pub const GOING_AWAY: u16 = 1001;
    /// An invalid control message or a refresh token for someone else.
    pub const POLICY: u16 = 1008;
    /// The client sent a message over `GATEWAY_WS_MAX_MESSAGE_BYTES`.
    pub const TOO_BIG: u16 = 1009;
    /// The client did not read fast enough; its send queue overflowed. Reconnect.
    pub const SLOW_CLIENT: u16 = 4000;
    /// The token expired; reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing heard from the client (not even a pong) within the idle timeout.
    pub const IDLE: u16 = 4002;
}

/// Most frames written before one flush, so a long backlog still lets the loop look at
/// shutdown and the client's messages.
const MAX_BATCH: usize = 64;
/// Time allowed for the close handshake before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /ws`.
pub async fn handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Authenticate before looking at the upgrade, so every unauthenticated request gets
    // 401 whatever else is wrong with it; register only a real upgrade.
    let identity = match authenticate(&state, &headers, query.as_deref(), Transport::Ws).await {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let Ok(upgrade) = upgrade else {
        return Rejection::NotWebSocket.into_response();
    };
    let last_event_id = last_event_id_param(query.as_deref());
    let admitted = match register(
        &state,
        identity,
        Transport::Ws,
        CancellationToken::new(),
        last_event_id,
    ) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let cfg = &state.config;
    let session = Session {
        replay: admitted.replay,
        identity: admitted.identity,
        subscription: admitted.subscription,
        shutdown: state.shutdown.clone(),
        verifier: state.verifier.clone(),
        metrics: state.metrics.clone(),
        ping_interval: cfg.ws_ping_interval,
        idle_timeout: cfg.idle_timeout,
        leeway: cfg.jwt.leeway,
        drain: cfg.shutdown_drain,
    };
    let tracker = state.tracker.clone();
    upgrade
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        // Frames go out as they are written; batching is done by feeding several and
        // flushing once, which keeps no idle write buffer per connection.
        .write_buffer_size(0)
        .max_message_size(cfg.ws_max_message_bytes)
        .max_frame_size(cfg.ws_max_message_bytes)
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            tracker.track_future(serve(sink, stream, session))
        })
}

/// Everything one WebSocket connection needs.
pub struct Session {
    /// Sent before live events: what a resuming client missed, or a resync.
    pub replay: Vec<Outgoing>,
    /// Who is connected; `expires_at` moves forward on a refresh.
    pub identity: Identity,
    /// Events for this connection.
    pub subscription: Subscription,
    /// Gateway shutdown.
    pub shutdown: CancellationToken,
    /// For in-band token refresh.
    pub verifier: Arc<Verifier>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Ping period.
    pub ping_interval: Duration,
    /// Silence that ends the connection.
    pub idle_timeout: Duration,
    /// Added to `exp`.
    pub leeway: Duration,
    /// Shutdown drain window.
    pub drain: Duration,
}

/// How the loop ended.
enum End {
    /// The gateway closes with this code; the reason is counted unless the hub already
    /// did (slow clients are counted where they are kicked).
    Close(u16, &'static str, Option<Disconnect>),
    /// The client sent a close frame; answer it.
    ClientClosed,
    /// The socket is gone; nothing more can be sent.
    Gone,
    /// The socket is stuck; dropped without a close handshake, counted.
    Dropped(Disconnect),
}

/// Messages a client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    /// Application-level ping for clients (browsers) that cannot send ping frames.
    Ping,
    /// A fresh token for the same user and tenant, to outlive the current `exp`.
    Refresh { token: String },
}

/// Drives one connection until it ends.
pub async fn serve<S, R, E>(mut sink: S, mut stream: R, mut session: Session)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let conn_id = session.subscription.id();
    tracing::debug!(connection.id = conn_id, tenant = %session.identity.tenant, user = %session.identity.user, "websocket open");
    let mut deadline: std::pin::Pin<Box<Sleep>> =
        Box::pin(sleep(session.identity.remaining(session.leeway)));
    let mut ping = tokio::time::interval_at(
        Instant::now() + session.ping_interval,
        session.ping_interval,
    );
    let mut last_heard = Instant::now();
    // Cloned once: the loop selects on them for every event.
    let kicked = session.subscription.kicked.clone();
    let shutdown = session.shutdown.clone();

    // Set when shutdown begins: this connection closes at a random moment within the
    // drain window, still delivering what is queued until then.
    // The deadline timer doubles as the drain timer, so an idle connection carries one
    // timer less.
    let mut draining = false;

    // Replay first; live events wait in the queue meanwhile (and their copies of replayed
    // events are skipped by the subscription).
    let replay = std::mem::take(&mut session.replay);
    if !replay.is_empty() {
        let write = async {
            for item in replay {
                sink.feed(frame(item)).await?;
            }
            sink.flush().await
        };
        let ok = tokio::select! {
            biased;
            r = write => r.is_ok(),
            _ = kicked.cancelled() => false,
            _ = &mut deadline => false,
            _ = sleep(session.idle_timeout) => false,
        };
        if !ok {
            tracing::debug!(connection.id = conn_id, "client gone during replay");
            return;
        }
    }

    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                let at = Instant::now() + jitter(session.drain);
                if at < deadline.deadline() {
                    deadline.as_mut().reset(at);
                }
            }

            _ = kicked.cancelled() => break End::Close(close_code::SLOW_CLIENT, "slow client", None),
            _ = &mut deadline => {
                break if draining {
                    End::Close(close_code::GOING_AWAY, "server shutting down", Some(Disconnect::Shutdown))
                } else {
                    End::Close(close_code::TOKEN_EXPIRED, "token expired", Some(Disconnect::TokenExpired))
                };
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None => break End::Gone,
                    Some(Err(e)) => {
                        if is_too_big(&e) {
                            break End::Close(close_code::TOO_BIG, "message too big", Some(Disconnect::MessageTooBig));
                        }
                        tracing::debug!(connection.id = conn_id, error = %e, "websocket read error");
                        break End::Gone;
                    }
                    Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    Some(Ok(Message::Text(text))) => {
                        match control(&mut session, &text, &mut deadline, draining).await {
                            Ok(Some(reply)) => {
                                if send_or_stop(&mut sink, Message::Text(reply), &kicked).await.is_err() {
                                    break End::Gone;
                                }
                            }
                            Ok(None) => {}
                            Err(end) => break end,
                        }
                    }
                    // Pings are answered by tungstenite; pongs only prove liveness.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Binary(_))) => session.metrics.client_message_ignored(),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= session.idle_timeout {
                    break End::Close(close_code::IDLE, "idle timeout", Some(Disconnect::Idle));
                }
                if send_or_stop(&mut sink, Message::Ping(Default::default()), &kicked).await.is_err() {
                    break End::Gone;
                }
            }
            // Deliveries come after the client's own messages and pings, so a steady
            // backlog cannot starve the reads that prove it alive.
            item = session.subscription.recv() => {
                let Some(item) = item else { break End::Gone };
                let sub = &mut session.subscription;
                let write = async {
                    sink.feed(frame(item)).await?;
                    for _ in 1..MAX_BATCH {
                        match sub.try_recv() {
                            Some(item) => sink.feed(frame(item)).await?,
                            None => break,
                        }
                    }
                    sink.flush().await
                };
                // A client that stopped reading blocks the write. More events make the hub
                // kick it; without them, its token's expiry, the drain, or a write that
                // takes longer than the idle timeout end it all the same.
                // Biased, write first: a write that completes at once never arms the timers.
                tokio::select! {
                    biased;
                    r = write => if r.is_err() { break End::Gone },
                    _ = kicked.cancelled() => break End::Close(close_code::SLOW_CLIENT, "slow client", None),
                    _ = &mut deadline => break End::Dropped(if draining { Disconnect::Shutdown } else { Disconnect::TokenExpired }),
                    _ = sleep(session.idle_timeout) => break End::Dropped(Disconnect::SlowClient),
                }
            }
        }
    };

    match end {
        End::Close(code, reason, why) => {
            if let Some(why) = why {
                session.metrics.disconnected(why);
            }
            tracing::debug!(connection.id = conn_id, code, reason, "closing websocket");
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            // Send our close, then give the client a moment to answer it.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if sink.send(frame).await.is_ok() {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
        }
        // tungstenite queued the reply to the client's close; flushing sends it.
        End::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
        End::Dropped(why) => {
            session.metrics.disconnected(why);
            tracing::debug!(
                connection.id = conn_id,
                reason = why.as_str(),
                "dropping stuck websocket"
            );
        }
        End::Gone => {}
    }
    tracing::debug!(connection.id = conn_id, "websocket closed");
}

/// Sends one message unless the connection is kicked meanwhile.
async fn send_or_stop<S: Sink<Message> + Unpin>(
    sink: &mut S,
    msg: Message,
    kicked: &CancellationToken,
) -> Result<(), ()> {
    tokio::select! {
        r = sink.send(msg) => r.map_err(|_| ()),
        _ = kicked.cancelled() => Err(()),
    }
}

/// The text frame for one queued item; events are shared, never re-encoded.
fn frame(item: Outgoing) -> Message {
    match item {
        Outgoing::Event(e) => Message::Text(e.ws_frame()),
        Outgoing::Resync => Message::Text(Utf8Bytes::from_static(RESYNC)),
    }
}

/// The in-band signal that events may have been lost.
pub const RESYNC: &str = r#"{"type":"resync"}"#;

/// Handles one text message from the client; `Err` ends the connection.
async fn control(
    session: &mut Session,
    text: &str,
    deadline: &mut std::pin::Pin<Box<Sleep>>,
    draining: bool,
) -> Result<Option<Utf8Bytes>, End> {
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Ping) => Ok(Some(Utf8Bytes::from_static(r#"{"type":"pong"}"#))),
        Ok(Control::Refresh { token }) => match session.verifier.verify(&token).await {
            Ok(id) if id.tenant == session.identity.tenant && id.user == session.identity.user => {
                session.identity.expires_at = id.expires_at;
                // While draining, the deadline is the close time and stays.
                if !draining {
                    deadline
                        .as_mut()
                        .reset(Instant::now() + session.identity.remaining(session.leeway));
                }
                Ok(Some(Utf8Bytes::from(format!(
                    r#"{{"type":"refreshed","exp":{}}}"#,
                    id.expires_at
                ))))
            }
            Ok(_) => {
                tracing::info!(
                    connection.id = session.subscription.id(),
                    "refresh token names another user or tenant"
                );
                Err(End::Close(
                    close_code::POLICY,
                    "refresh token for another identity",
                    Some(Disconnect::Policy),
                ))
            }
            Err(reason) => {
                session.metrics.auth_failed(reason);
                // The current token is still good until its exp; say so and carry on.
                Ok(Some(Utf8Bytes::from(format!(
                    r#"{{"type":"error","reason":"refresh_{}"}}"#,
                    reason.as_str()
                ))))
            }
        },
        Err(_) => {
            session.metrics.client_message_ignored();
            Ok(Some(Utf8Bytes::from_static(
                r#"{"type":"error","reason":"unknown_message"}"#,
            )))
        }
    }
}

/// Whether a read error is tungstenite refusing a message or frame over the size limit.
fn is_too_big(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        cur = err.source();
    }
    false
}
