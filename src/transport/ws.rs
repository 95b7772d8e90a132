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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, Verifier, WS_PROTOCOL};
use crate::hub::{Disconnect, Outgoing, Subscription, Transport};
use crate::transport::lifetime::{Ending, Lifetime, WriteError};
use crate::transport::{Context, TransportMetrics};
use crate::transport::{NotAdmitted, authenticate, last_event_id_param, register};

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
    State(ctx): State<Context>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Authenticate before looking at the upgrade, so every unauthenticated request gets
    // 401 whatever else is wrong with it; register only a real upgrade.
    let identity = match authenticate(&ctx, &headers, query.as_deref(), Transport::Ws).await {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let Ok(upgrade) = upgrade else {
        return NotAdmitted::NotWebSocket.into_response();
    };
    let last_event_id = last_event_id_param(query.as_deref());
    let admitted = match register(
        &ctx,
        identity,
        Transport::Ws,
        CancellationToken::new(),
        last_event_id,
    ) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let cfg = &ctx.config;
    let lifetime = Lifetime::new(
        admitted.identity.remaining(cfg.jwt.leeway),
        admitted.subscription.kicked.clone(),
        ctx.shutdown.clone(),
        cfg.shutdown_drain,
        cfg.idle_timeout,
    );
    let session = Session {
        replay: admitted.replay,
        identity: admitted.identity,
        subscription: admitted.subscription,
        lifetime,
        verifier: ctx.verifier.clone(),
        metrics: ctx.metrics.clone(),
        ping_interval: cfg.ws_ping_interval,
        idle_timeout: cfg.idle_timeout,
        leeway: cfg.jwt.leeway,
    };
    let tracker = ctx.tracker.clone();
    upgrade
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        // Frames go out as they are written; batching is done by feeding several and
        // flushing once, which keeps no idle write buffer per connection.
        .write_buffer_size(0)
        // What may wait unsent for a client that does not read: one event frame plus the
        // pongs tungstenite queues by itself for the client's pings. Beyond it, pongs are
        // coalesced and our next write fails, ending the connection as a slow client; without
        // it, a ping flood from a client that never reads grows this buffer without bound.
        .max_write_buffer_size(max_write_buffer_bytes(cfg.max_event_bytes))
        .max_message_size(cfg.ws_max_message_bytes)
        .max_frame_size(cfg.ws_max_message_bytes)
        // Selected when offered (with the token as `bearer.<token>` beside it); a client
        // that offers no protocol gets none, as before.
        .protocols([WS_PROTOCOL])
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            tracker.track_future(serve(sink, stream, session))
        })
}

/// Room for control frames (pongs, replies, close) next to one event in the write buffer.
const CONTROL_HEADROOM_BYTES: usize = 16 * 1024;

/// The WebSocket write buffer limit for a largest event of `max_event_bytes`.
pub fn max_write_buffer_bytes(max_event_bytes: usize) -> usize {
    // 14 bytes: the largest frame header.
    max_event_bytes + 14 + CONTROL_HEADROOM_BYTES
}

/// Everything one WebSocket connection needs.
pub struct Session {
    /// Sent before live events: what a resuming client missed, or a resync.
    pub replay: Vec<Outgoing>,
    /// Who is connected; `expires_at` moves forward on a refresh.
    pub identity: Identity,
    /// Events for this connection.
    pub subscription: Subscription,
    /// Token deadline, kick and drain; bounds every write.
    pub lifetime: Lifetime,
    /// For in-band token refresh.
    pub verifier: Arc<Verifier>,
    /// Counters (disconnects go to the subscription's hub).
    pub metrics: Arc<TransportMetrics>,
    /// Ping period.
    pub ping_interval: Duration,
    /// Silence that ends the connection.
    pub idle_timeout: Duration,
    /// Added to `exp`.
    pub leeway: Duration,
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

impl End {
    /// The end of a connection whose write did not complete.
    fn from_write<E: StdError + 'static>(e: WriteError<E>) -> End {
        match e {
            WriteError::Kicked => End::Close(close_code::SLOW_CLIENT, "slow client", None),
            WriteError::Stuck(why) => End::Dropped(why),
            // The write buffer is full: pongs the client solicited but never read.
            WriteError::Failed(e) if is_write_buffer_full(&e) => {
                End::Dropped(Disconnect::SlowClient)
            }
            WriteError::Failed(_) => End::Gone,
        }
    }

    fn from_ending(e: Ending) -> End {
        match e {
            Ending::Kicked => End::Close(close_code::SLOW_CLIENT, "slow client", None),
            Ending::TokenExpired => End::Close(
                close_code::TOKEN_EXPIRED,
                "token expired",
                Some(Disconnect::TokenExpired),
            ),
            Ending::Shutdown => End::Close(
                close_code::GOING_AWAY,
                "server shutting down",
                Some(Disconnect::Shutdown),
            ),
        }
    }
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
    S::Error: StdError + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let conn_id = session.subscription.id();
    tracing::debug!(connection.id = conn_id, tenant = %session.identity.tenant, user = %session.identity.user, "websocket open");
    let end = match replay(&mut sink, &mut session).await {
        Ok(()) => run(&mut sink, &mut stream, &mut session).await,
        Err(end) => end,
    };
    finish(sink, stream, &session, end).await;
    tracing::debug!(connection.id = conn_id, "websocket closed");
}

/// Sends the replay before live events; live events wait in the queue meanwhile (and
/// their copies of replayed events are skipped by the subscription).
async fn replay<S>(sink: &mut S, session: &mut Session) -> Result<(), End>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let replay = std::mem::take(&mut session.replay);
    if replay.is_empty() {
        return Ok(());
    }
    let write = async {
        for item in replay {
            sink.feed(frame(item)).await?;
        }
        sink.flush().await
    };
    session.lifetime.write(write).await.map_err(End::from_write)
}

/// The connection's main loop: client messages, pings and deliveries, until it ends.
async fn run<S, R, E>(sink: &mut S, stream: &mut R, session: &mut Session) -> End
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let mut ping = tokio::time::interval_at(
        Instant::now() + session.ping_interval,
        session.ping_interval,
    );
    let mut last_heard = Instant::now();
    loop {
        let step = tokio::select! {
            biased;
            ending = session.lifetime.ended() => Err(End::from_ending(ending)),
            msg = stream.next() => {
                last_heard = Instant::now();
                on_message(sink, session, msg).await
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= session.idle_timeout {
                    Err(End::Close(close_code::IDLE, "idle timeout", Some(Disconnect::Idle)))
                } else {
                    let ping = sink.send(Message::Ping(Default::default()));
                    session.lifetime.write(ping).await.map_err(End::from_write)
                }
            }
            // Deliveries come after the client's own messages and pings, so a steady
            // backlog cannot starve the reads that prove it alive.
            item = session.subscription.recv() => match item {
                Some(item) => deliver(sink, session, item).await,
                None => Err(End::Gone),
            },
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes once. A client
/// that stopped reading blocks the write: more events make the hub kick it; without them,
/// its token's expiry, the drain or the write timeout end it all the same.
async fn deliver<S>(sink: &mut S, session: &mut Session, first: Outgoing) -> Result<(), End>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let sub = &mut session.subscription;
    let write = async {
        sink.feed(frame(first)).await?;
        for _ in 1..MAX_BATCH {
            match sub.try_recv() {
                Some(item) => sink.feed(frame(item)).await?,
                None => break,
            }
        }
        sink.flush().await
    };
    session.lifetime.write(write).await.map_err(End::from_write)
}

/// Handles one read from the client; `Err` ends the connection.
async fn on_message<S, E>(
    sink: &mut S,
    session: &mut Session,
    msg: Option<Result<Message, E>>,
) -> Result<(), End>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
    E: StdError + 'static,
{
    match msg {
        None => Err(End::Gone),
        Some(Err(e)) if is_too_big(&e) => Err(End::Close(
            close_code::TOO_BIG,
            "message too big",
            Some(Disconnect::MessageTooBig),
        )),
        Some(Err(e)) => {
            tracing::debug!(connection.id = session.subscription.id(), error = %e, "websocket read error");
            Err(End::Gone)
        }
        Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
        Some(Ok(Message::Text(text))) => {
            let Some(reply) = control(session, &text).await? else {
                return Ok(());
            };
            // Bounded like every write: a client that sends and never reads blocks here
            // (and so stops being read) until one of the connection's ends.
            let send = sink.send(Message::Text(reply));
            session.lifetime.write(send).await.map_err(End::from_write)
        }
        // Pings are answered by tungstenite; pongs only prove liveness.
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
        Some(Ok(Message::Binary(_))) => {
            session.metrics.client_messages_ignored.inc();
            Ok(())
        }
    }
}

/// Says goodbye as the end requires, each step bounded.
async fn finish<S, R, E>(mut sink: S, mut stream: R, session: &Session, end: End)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let conn_id = session.subscription.id();
    match end {
        End::Close(code, reason, why) => {
            if let Some(why) = why {
                session.subscription.disconnected(why);
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
            session.subscription.disconnected(why);
            tracing::debug!(
                connection.id = conn_id,
                reason = why.as_str(),
                "dropping stuck websocket"
            );
        }
        End::Gone => {}
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
async fn control(session: &mut Session, text: &str) -> Result<Option<Utf8Bytes>, End> {
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Ping) => Ok(Some(Utf8Bytes::from_static(r#"{"type":"pong"}"#))),
        Ok(Control::Refresh { token }) => match session.verifier.verify(&token).await {
            Ok(id) if id.tenant == session.identity.tenant && id.user == session.identity.user => {
                session.identity.expires_at = id.expires_at;
                session
                    .lifetime
                    .extend(session.identity.remaining(session.leeway));
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
                session.metrics.auth_failures.inc(reason);
                // The current token is still good until its exp; say so and carry on.
                Ok(Some(Utf8Bytes::from(format!(
                    r#"{{"type":"error","reason":"refresh_{}"}}"#,
                    reason.as_str()
                ))))
            }
        },
        Err(_) => {
            session.metrics.client_messages_ignored.inc();
            Ok(Some(Utf8Bytes::from_static(
                r#"{"type":"error","reason":"unknown_message"}"#,
            )))
        }
    }
}

/// Whether a read error is tungstenite refusing a message or frame over the size limit.
fn is_too_big(e: &(dyn StdError + 'static)) -> bool {
    tungstenite_error(e).is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// Whether a write error is tungstenite's write buffer limit.
fn is_write_buffer_full(e: &(dyn StdError + 'static)) -> bool {
    tungstenite_error(e).is_some_and(|t| matches!(t, tungstenite::Error::WriteBufferFull(_)))
}

/// The tungstenite error inside `e`, however it is wrapped.
fn tungstenite_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a tungstenite::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
