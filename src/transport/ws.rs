//! WebSocket transport: `GET /ws`. One text frame per event, JSON control messages,
//! ping/pong liveness, and a close handshake with a documented code for every way the
//! gateway ends a connection.
//!
//! The connection loop is generic over `Sink`/`Stream` so it can be driven by channels in
//! unit tests as well as by a real socket.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::Utf8Bytes;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth::{AuthFailure, Identity, Verifier, WS_PROTOCOL};
use crate::hub::{Disconnect, End, Interest, Outgoing, Subscription, Transport};
use crate::revocation::Revocations;
use crate::telemetry::untrusted;
use crate::transport::deflate::{self, Deflate, InflatedTooBig, Inflating};
use crate::transport::lifetime::{Lifetime, WriteError};
use crate::transport::{Context, NotAdmitted, TransportMetrics, admit, last_event_id_param};

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
    /// The platform banned the user or suspended the tenant. Do not reconnect: sign out.
    pub const REVOKED: u16 = 4003;
    /// The token expired; reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing heard from the client (not even a pong) within the idle timeout.
    pub const IDLE: u16 = 4002;
}

/// The close frame for each way the gateway ends a connection: code and reason.
fn close_frame(why: Disconnect) -> (u16, &'static str) {
    match why {
        Disconnect::SlowClient => (close_code::SLOW_CLIENT, "slow client"),
        Disconnect::TokenExpired => (close_code::TOKEN_EXPIRED, "token expired"),
        Disconnect::Idle => (close_code::IDLE, "idle timeout"),
        Disconnect::MessageTooBig => (close_code::TOO_BIG, "message too big"),
        Disconnect::Shutdown => (close_code::GOING_AWAY, "server shutting down"),
        Disconnect::Policy => (close_code::POLICY, "refresh token for another identity"),
        Disconnect::Revoked => (close_code::REVOKED, "revoked"),
    }
}

/// Most frames written before one flush, so a long backlog still lets the loop look at
/// shutdown and the client's messages.
const MAX_BATCH: usize = 64;
/// Time allowed for the close handshake before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A WebSocket upgrade request, checked like any (RFC 6455 4.2.1) before the token is:
/// what the gateway needs to answer it. The gateway takes the upgrade itself rather than
/// through axum's, to put [`Inflating`] under tungstenite and to send compressed frames.
pub struct Handshake {
    /// `Sec-WebSocket-Key`, for `Sec-WebSocket-Accept`.
    key: HeaderValue,
    /// hyper's handle on the connection, ready once the 101 is sent.
    on_upgrade: OnUpgrade,
    /// Whether the client offered the gateway's subprotocol (then it is selected).
    protocol: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = NotAdmitted;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAdmitted> {
        let h = &parts.headers;
        let is_upgrade = parts.method == Method::GET
            && has_token(h, &CONNECTION, "upgrade")
            && has_token(h, &UPGRADE, "websocket")
            && h.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let key = h.get(SEC_WEBSOCKET_KEY).cloned();
        let protocol = has_token(h, &SEC_WEBSOCKET_PROTOCOL, WS_PROTOCOL);
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        match (is_upgrade, key, on_upgrade) {
            (true, Some(key), Some(on_upgrade)) => Ok(Handshake {
                key,
                on_upgrade,
                protocol,
            }),
            _ => Err(NotAdmitted::NotWebSocket),
        }
    }
}

/// Whether a comma-separated header (any of its lines) lists `token`, in any case.
fn has_token(headers: &HeaderMap, name: &axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `GET /ws`.
pub async fn handler(
    State(ctx): State<Context>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<Handshake, NotAdmitted>,
) -> Response {
    let query = query.as_deref();
    // Only a real upgrade is registered; checked after the token by `admit`.
    let last_event_id = last_event_id_param(query);
    let (admitted, upgrade) =
        match admit(&ctx, &headers, query, Transport::Ws, last_event_id, upgrade).await {
            Ok(a) => a,
            Err(r) => return r.into_response(),
        };
    let cfg = &ctx.config;
    // With the option off, an offer is ignored: the answer names no extension.
    let deflate = cfg
        .ws_deflate
        .then(|| deflate::negotiate(&headers))
        .flatten();
    let lifetime = Lifetime::new(
        admitted.identity.remaining(cfg.jwt.leeway),
        admitted.subscription.kick(),
        ctx.clients.clone(),
        cfg.shutdown_drain,
        cfg.write_timeout,
    );
    let connection = WsConnection {
        replay: admitted.replay,
        identity: admitted.identity,
        subscription: admitted.subscription,
        lifetime,
        verifier: ctx.verifier.clone(),
        revocations: ctx.revocations.clone(),
        metrics: ctx.metrics.clone(),
        ping_interval: cfg.ws_ping_interval,
        idle_timeout: cfg.idle_timeout,
        leeway: cfg.jwt.leeway,
        max_interest_patterns: cfg.delivery.max_interest_patterns,
        deflate,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        // Frames go out as they are written; batching is done by feeding several and
        // flushing once, which keeps no idle write buffer per connection.
        .write_buffer_size(0)
        // What may wait unsent for a client that does not read: one event frame plus the
        // pongs tungstenite queues by itself for the client's pings. Beyond it, pongs are
        // coalesced and our next write fails, ending the connection as a slow client; without
        // it, a ping flood from a client that never reads grows this buffer without bound.
        .max_write_buffer_size(max_write_buffer_bytes(cfg.max_event_bytes))
        .max_message_size(Some(cfg.ws_max_message_bytes))
        .max_frame_size(Some(cfg.ws_max_message_bytes));
    let max_message_bytes = cfg.ws_max_message_bytes;
    let tracker = ctx.tracker.clone();
    let Handshake {
        key,
        on_upgrade,
        protocol,
    } = upgrade;
    tokio::spawn(async move {
        // The client went away before the 101 reached it: dropping the connection records
        // that, as for any end.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = Inflating::new(TokioIo::new(upgraded), deflate.is_some(), max_message_bytes);
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let (sink, stream) = socket.split();
        tracker.track_future(serve(sink, stream, connection)).await;
    });
    switching_protocols(&key, protocol, deflate)
}

/// The 101 answer: the accept key; the gateway's subprotocol when offered (with the token
/// as `bearer.<token>` beside it), none otherwise; `permessage-deflate` when negotiated.
fn switching_protocols(key: &HeaderValue, protocol: bool, deflate: Option<Deflate>) -> Response {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if protocol {
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    if let Some(answer) = deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
        h.insert(SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    response
}

/// Room for control frames (pongs, replies, close) next to one event in the write buffer.
const CONTROL_HEADROOM_BYTES: usize = 16 * 1024;
/// The largest WebSocket frame header: 2 bytes, an 8-byte length (a server sends no mask).
const MAX_FRAME_HEADER_BYTES: usize = 14;

/// The WebSocket write buffer limit for a largest event of `max_event_bytes`.
pub fn max_write_buffer_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes + MAX_FRAME_HEADER_BYTES + CONTROL_HEADROOM_BYTES
}

/// Everything one WebSocket connection needs.
pub struct WsConnection {
    /// Sent before live events: what a resuming client missed, or a resync.
    pub replay: Vec<Outgoing>,
    /// Who is connected; `expires_at` moves forward on a refresh.
    pub identity: Identity,
    /// Events for this connection; where its end is recorded.
    pub subscription: Subscription,
    /// Token deadline, kick and drain; bounds every write.
    pub lifetime: Lifetime,
    /// For in-band token refresh.
    pub verifier: Arc<Verifier>,
    /// A refresh token issued before a revocation is refused.
    pub revocations: Arc<Revocations>,
    /// Counters (disconnects are counted where the subscription records them).
    pub metrics: Arc<TransportMetrics>,
    /// Ping period.
    pub ping_interval: Duration,
    /// Silence that ends the connection.
    pub idle_timeout: Duration,
    /// Added to `exp`.
    pub leeway: Duration,
    /// Most event-type patterns the client may select.
    pub max_interest_patterns: usize,
    /// `permessage-deflate` when the client negotiated it: events go out compressed.
    pub deflate: Option<Deflate>,
}

/// How the connection loop stopped. Why it stopped is recorded in the subscription first;
/// each carries the reason that stands.
#[derive(Debug)]
enum Stop {
    /// Part with the goodbye the reason calls for: a close frame, or the answer to the
    /// client's.
    Goodbye(End),
    /// The socket is gone or stuck: nothing more can be sent.
    Silent(End),
}

impl WsConnection {
    /// Records `why` and parts with a goodbye.
    fn goodbye(&self, why: End) -> Stop {
        Stop::Goodbye(self.subscription.end(why))
    }

    /// Records `why`; the socket can take nothing more.
    fn silent(&self, why: End) -> Stop {
        Stop::Silent(self.subscription.end(why))
    }

    /// How a write that did not complete ends the connection.
    fn write_failed<E: StdError + 'static>(&self, e: WriteError<E>) -> Stop {
        match e {
            WriteError::Kicked(why) => self.goodbye(why),
            WriteError::Stuck(why) => self.silent(why),
            // The write buffer is full: pongs the client solicited but never read.
            WriteError::Failed(e) if is_write_buffer_full(&e) => {
                self.silent(End::Gateway(Disconnect::SlowClient))
            }
            WriteError::Failed(_) => self.silent(End::ClientGone),
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
    /// Select these event types too (the first one replaces the default, everything);
    /// with `snapshot`, the latest state of what is selected follows.
    Subscribe {
        types: Vec<String>,
        #[serde(default)]
        snapshot: bool,
    },
    /// Stop receiving these patterns.
    Unsubscribe { types: Vec<String> },
    /// Select these state keys too (the first one narrows "every key" to its list); with
    /// `snapshot`, their latest state follows.
    Watch {
        keys: Vec<String>,
        #[serde(default)]
        snapshot: bool,
    },
    /// Stop receiving these state keys.
    Unwatch { keys: Vec<String> },
}

/// Drives one connection until it ends.
pub async fn serve<S, R, E>(mut sink: S, mut stream: R, mut conn: WsConnection)
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    conn.subscription
        .span()
        .in_scope(|| tracing::debug!("websocket open"));
    // The replay, control replies and the goodbye are boxed: kept inline, their states
    // would size every connection's task for its whole life (see Performance, memory).
    let replayed = if conn.replay.is_empty() {
        Ok(())
    } else {
        Box::pin(replay(&mut sink, &mut conn)).await
    };
    let stop = match replayed {
        Ok(()) => run(&mut sink, &mut stream, &mut conn).await,
        Err(stop) => stop,
    };
    Box::pin(finish(sink, stream, &conn, stop)).await;
}

/// Sends the replay before live events; live events wait in the queue meanwhile (and
/// their copies of replayed events are skipped by the subscription). Only called with a
/// replay to send.
async fn replay<S>(sink: &mut S, conn: &mut WsConnection) -> Result<(), Stop>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let replay = std::mem::take(&mut conn.replay);
    let deflate = conn.deflate;
    let write = async {
        for item in replay {
            sink.feed(frame(item, deflate)).await?;
        }
        sink.flush().await
    };
    let written = conn.lifetime.write(write).await;
    written.map_err(|e| conn.write_failed(e))
}

/// The connection's main loop: client messages, pings and deliveries, until it ends.
async fn run<S, R, E>(sink: &mut S, stream: &mut R, conn: &mut WsConnection) -> Stop
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let mut ping =
        tokio::time::interval_at(Instant::now() + conn.ping_interval, conn.ping_interval);
    let mut last_heard = Instant::now();
    loop {
        let step = tokio::select! {
            biased;
            why = conn.lifetime.ended() => Err(conn.goodbye(why)),
            msg = stream.next() => {
                last_heard = Instant::now();
                on_message(sink, conn, msg).await
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= conn.idle_timeout {
                    Err(conn.goodbye(End::Gateway(Disconnect::Idle)))
                } else {
                    let ping = sink.send(Message::Ping(Default::default()));
                    let written = conn.lifetime.write(ping).await;
                    match written.map_err(|e| conn.write_failed(e)) {
                        Ok(()) => send_position(sink, conn).await,
                        failed => failed,
                    }
                }
            }
            // Deliveries come after the client's own messages and pings, so a steady
            // backlog cannot starve the reads that prove it alive.
            item = conn.subscription.recv() => match item {
                Some(item) => deliver(sink, conn, item).await,
                None => Err(conn.silent(End::ClientGone)),
            },
        };
        if let Err(stop) = step {
            return stop;
        }
    }
}

/// With the keep-alive, a quiet connection's resume position,
/// `{"type":"position","position":"p:..."}`: the client keeps it as its last event id.
async fn send_position<S>(sink: &mut S, conn: &mut WsConnection) -> Result<(), Stop>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let Some(position) = conn.subscription.quiet_position() else {
        return Ok(());
    };
    let text = format!(r#"{{"type":"position","position":"{}"}}"#, position.token());
    let written = conn
        .lifetime
        .write(sink.send(Message::Text(text.into())))
        .await;
    written.map_err(|e| conn.write_failed(e))
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes once. A client
/// that stopped reading blocks the write: more events make the hub kick it; without them,
/// its token's expiry, the drain or the write timeout end it all the same.
async fn deliver<S>(sink: &mut S, conn: &mut WsConnection, first: Outgoing) -> Result<(), Stop>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let deflate = conn.deflate;
    let sub = &mut conn.subscription;
    let write = async {
        sink.feed(frame(first, deflate)).await?;
        for _ in 1..MAX_BATCH {
            match sub.try_recv() {
                Some(item) => sink.feed(frame(item, deflate)).await?,
                None => break,
            }
        }
        sink.flush().await
    };
    let written = conn.lifetime.write(write).await;
    written.map_err(|e| conn.write_failed(e))
}

/// Handles one read from the client; `Err` ends the connection.
async fn on_message<S, E>(
    sink: &mut S,
    conn: &mut WsConnection,
    msg: Option<Result<Message, E>>,
) -> Result<(), Stop>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
    E: StdError + 'static,
{
    match msg {
        None => Err(conn.silent(End::ClientGone)),
        Some(Err(e)) if is_too_big(&e) => {
            Err(conn.goodbye(End::Gateway(Disconnect::MessageTooBig)))
        }
        Some(Err(e)) => {
            conn.subscription
                .span()
                .in_scope(|| tracing::debug!(error = %e, "websocket read error"));
            Err(conn.silent(End::ClientGone))
        }
        Some(Ok(Message::Close(_))) => Err(conn.goodbye(End::ClientClosed)),
        Some(Ok(Message::Text(text))) => Box::pin(on_text(sink, conn, text)).await,
        // Pings are answered by tungstenite; pongs only prove liveness.
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
        // tungstenite never reads a raw frame; a binary message is not a control message.
        Some(Ok(Message::Binary(_) | Message::Frame(_))) => {
            conn.metrics.client_messages_ignored.inc();
            Ok(())
        }
    }
}

/// Answers a control message, if it needs an answer.
async fn on_text<S>(sink: &mut S, conn: &mut WsConnection, text: Utf8Bytes) -> Result<(), Stop>
where
    S: Sink<Message> + Unpin,
    S::Error: StdError + 'static,
{
    let Some(reply) = control(conn, &text).await? else {
        return Ok(());
    };
    // Bounded like every write: a client that sends and never reads blocks here
    // (and so stops being read) until one of the connection's ends.
    let send = sink.send(Message::Text(reply));
    let written = conn.lifetime.write(send).await;
    written.map_err(|e| conn.write_failed(e))
}

/// Parts as the stop requires, each step bounded. The access log line follows when the
/// subscription is dropped.
async fn finish<S, R, E>(mut sink: S, mut stream: R, conn: &WsConnection, stop: Stop)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let span = conn.subscription.span();
    match stop {
        Stop::Goodbye(End::Gateway(why)) => {
            let (code, reason) = close_frame(why);
            span.in_scope(|| tracing::debug!(code, reason, "closing websocket"));
            let frame = Message::Close(Some(CloseFrame {
                code: code.into(),
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
        Stop::Goodbye(End::ClientClosed) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
        Stop::Silent(End::Gateway(why)) => {
            span.in_scope(|| tracing::debug!(reason = why.as_str(), "dropping stuck websocket"));
        }
        Stop::Goodbye(End::ClientGone) | Stop::Silent(End::ClientGone | End::ClientClosed) => {}
    }
}

/// The text frame for one queued item; events are shared, never re-encoded (nor
/// compressed again: with `permessage-deflate` their one compressed payload is shared).
fn frame(item: Outgoing, deflate: Option<Deflate>) -> Message {
    match (item, deflate) {
        (Outgoing::Event(e), Some(d)) => d.event_frame(&e),
        (Outgoing::Event(e), None) => Message::Text(e.ws_frame()),
        (Outgoing::Resync, _) => Message::Text(Utf8Bytes::from_static(RESYNC)),
        // A snapshot is this connection's own: compressed for it alone.
        (Outgoing::Snapshot(json), Some(d)) => d.text_frame(json),
        (Outgoing::Snapshot(json), None) => Message::Text(json),
    }
}

/// The in-band signal that events may have been lost.
pub const RESYNC: &str = r#"{"type":"resync"}"#;

/// Handles one text message from the client; `Err` ends the connection.
async fn control(conn: &mut WsConnection, text: &str) -> Result<Option<Utf8Bytes>, Stop> {
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Ping) => Ok(Some(Utf8Bytes::from_static(r#"{"type":"pong"}"#))),
        Ok(Control::Subscribe { types, snapshot }) => {
            Ok(Some(select(conn, Change::Subscribe(&types), snapshot)))
        }
        Ok(Control::Unsubscribe { types }) => {
            Ok(Some(select(conn, Change::Unsubscribe(&types), false)))
        }
        Ok(Control::Watch { keys, snapshot }) => {
            Ok(Some(select(conn, Change::Watch(&keys), snapshot)))
        }
        Ok(Control::Unwatch { keys }) => Ok(Some(select(conn, Change::Unwatch(&keys), false))),
        Ok(Control::Refresh { token }) => match verify_refresh(conn, &token).await {
            Ok(id) if id.tenant == conn.identity.tenant && id.user == conn.identity.user => {
                conn.identity.expires_at = id.expires_at;
                conn.lifetime.extend(conn.identity.remaining(conn.leeway));
                Ok(Some(Utf8Bytes::from(format!(
                    r#"{{"type":"refreshed","exp":{}}}"#,
                    id.expires_at
                ))))
            }
            Ok(_) => {
                conn.subscription
                    .span()
                    .in_scope(|| tracing::info!("refresh token names another user or tenant"));
                Err(conn.goodbye(End::Gateway(Disconnect::Policy)))
            }
            Err(reason) => {
                conn.metrics.auth_failures.inc(reason);
                // The current token is still good until its exp; say so and carry on.
                Ok(Some(Utf8Bytes::from(format!(
                    r#"{{"type":"error","reason":"refresh_{}"}}"#,
                    reason.as_str()
                ))))
            }
        },
        Err(_) => {
            conn.metrics.client_messages_ignored.inc();
            Ok(Some(Utf8Bytes::from_static(
                r#"{"type":"error","reason":"unknown_message"}"#,
            )))
        }
    }
}

/// A change of a connection's selection.
#[derive(Clone, Copy)]
enum Change<'a> {
    Subscribe(&'a [String]),
    Unsubscribe(&'a [String]),
    Watch(&'a [String]),
    Unwatch(&'a [String]),
}

/// Changes the connection's selection and answers with the result:
/// `{"type":"subscribed","types":[...]}` (`["#"]` for everything; with `"keys":[...]` once
/// keys are selected), or an error that leaves the selection as it was. With `snapshot`,
/// the latest state of the new selection is sent next, before any further event.
fn select(conn: &mut WsConnection, change: Change<'_>, snapshot: bool) -> Utf8Bytes {
    let max = conn.max_interest_patterns;
    let current = conn.subscription.interest();
    let next = match (current, change) {
        // The default is everything; the first subscribe narrows it to its list.
        (None, Change::Subscribe(types)) => Interest::new(types, max),
        (Some(i), Change::Subscribe(types)) => i.with(types, max),
        (None, Change::Unsubscribe(types)) => Ok(Interest::everything().without(types)),
        (Some(i), Change::Unsubscribe(types)) => Ok(i.without(types)),
        (i, Change::Watch(keys)) => i.unwrap_or_else(Interest::everything).watch(keys, max),
        (i, Change::Unwatch(keys)) => Ok(i.unwrap_or_else(Interest::everything).unwatch(keys)),
    };
    let bad = match change {
        Change::Watch(_) | Change::Unwatch(_) => r#"{"type":"error","reason":"invalid_keys"}"#,
        _ => r#"{"type":"error","reason":"invalid_types"}"#,
    };
    match next {
        Ok(interest) => {
            let mut reply = serde_json::json!({"type": "subscribed", "types": interest.patterns()});
            if let Some(keys) = interest.keys() {
                reply["keys"] = serde_json::json!(keys);
            }
            conn.subscription.set_interest(Some(interest));
            if snapshot {
                conn.subscription.snapshot_next();
            }
            Utf8Bytes::from(reply.to_string())
        }
        Err(why) => {
            conn.metrics.client_messages_ignored.inc();
            conn.subscription
                .span()
                .in_scope(|| tracing::debug!(reason = %untrusted(&why), "bad selection"));
            Utf8Bytes::from_static(bad)
        }
    }
}

/// Verifies a refresh token, revocations included.
async fn verify_refresh(conn: &WsConnection, token: &str) -> Result<Identity, AuthFailure> {
    let id = conn.verifier.verify(token).await?;
    if conn.revocations.is_revoked(&id) {
        return Err(AuthFailure::Revoked);
    }
    Ok(id)
}

/// Whether a read error is tungstenite refusing a message or frame over the size limit,
/// or a compressed message that inflates beyond it.
fn is_too_big(e: &(dyn StdError + 'static)) -> bool {
    tungstenite_error(e).is_some_and(|t| match t {
        tungstenite::Error::Capacity(_) => true,
        tungstenite::Error::Io(io) => io.get_ref().is_some_and(|e| e.is::<InflatedTooBig>()),
        _ => false,
    })
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

#[cfg(test)]
mod tests {
    //! The connection loop driven by channels: a recording sink for what the gateway sends,
    //! a channel for what the client sends, a real hub and verifier.

    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context as TaskContext, Poll};

    use futures_util::stream;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::JwtConfig;
    use crate::telemetry::Label;
    use tokio_util::sync::CancellationToken;

    use crate::hub::Hub;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// Records every message; `stalled` makes it stop accepting, like a full socket.
    #[derive(Clone, Default)]
    struct Client {
        sent: Arc<Mutex<Vec<Message>>>,
        stalled: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Client {
        fn texts(&self) -> Vec<String> {
            let sent = self.sent.lock().unwrap();
            sent.iter()
                .filter_map(|m| match m {
                    Message::Text(t) => Some(t.to_string()),
                    _ => None,
                })
                .collect()
        }
        fn close_code(&self) -> Option<u16> {
            let sent = self.sent.lock().unwrap();
            sent.iter().find_map(|m| match m {
                Message::Close(Some(f)) => Some(u16::from(f.code)),
                _ => None,
            })
        }
    }

    impl Sink<Message> for Client {
        type Error = std::io::Error;
        fn poll_ready(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            if self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.sent.lock().unwrap().push(item);
            Ok(())
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.poll_ready(cx)
        }
        fn poll_close(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Setup {
        hub: Arc<Hub>,
        client: Client,
        to_gateway: mpsc::UnboundedSender<Result<Message, std::io::Error>>,
        metrics: Arc<TransportMetrics>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(sub: &str, exp: u64) -> String {
        let claims = serde_json::json!({"sub": sub, "tenant_id": "t", "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// A connection of (t, u) whose token lasts `lifetime`, served on a task.
    fn connect(lifetime: Duration, queue_len: usize) -> Setup {
        let hub = crate::hub::testing::small_hub(queue_len);
        let subscription = hub.subscribe("t", "u", Transport::Ws, None).unwrap();
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(TransportMetrics::default());
        let jwt = JwtConfig {
            secret: Some(SECRET.into()),
            tenant_claim: "tenant_id".into(),
            ..JwtConfig::default()
        };
        let connection = WsConnection {
            replay: Vec::new(),
            identity: Identity {
                tenant: "t".into(),
                user: "u".into(),
                expires_at: now() + lifetime.as_secs(),
                issued_at: Some(now()),
            },
            lifetime: Lifetime::new(
                lifetime,
                subscription.kick(),
                shutdown.clone(),
                Duration::from_secs(3),
                Duration::from_secs(60),
            ),
            subscription,
            verifier: Arc::new(Verifier::new(&jwt).unwrap()),
            revocations: Arc::new(Revocations::new(3600, 100)),
            metrics: metrics.clone(),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(600),
            leeway: Duration::ZERO,
            max_interest_patterns: 8,
            deflate: None,
        };
        let client = Client::default();
        let (to_gateway, rx) = mpsc::unbounded_channel();
        let incoming = Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let task = tokio::spawn(serve(client.clone(), incoming, connection));
        Setup {
            hub,
            client,
            to_gateway,
            metrics,
            shutdown,
            task,
        }
    }

    use crate::envelope::testing::progress as event;

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_sent_in_order_and_control_messages_answered() {
        let s = connect(Duration::from_secs(3600), 16);
        for id in ["a", "b", "c"] {
            s.hub.publish(&event(id), 1);
        }
        let text = |t: &str| Ok(Message::Text(t.into()));
        s.to_gateway.send(text(r#"{"type":"ping"}"#)).unwrap();
        s.to_gateway.send(text(r#"{"type":"dance"}"#)).unwrap();
        settle().await;
        let texts = s.client.texts();
        let ids: Vec<_> = texts.iter().filter(|t| t.contains("event_id")).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[0].contains("\"a\"") && ids[2].contains("\"c\""));
        assert!(texts.contains(&r#"{"type":"pong"}"#.to_owned()));
        assert!(texts.contains(&r#"{"type":"error","reason":"unknown_message"}"#.to_owned()));
        assert_eq!(s.metrics.client_messages_ignored.get(), 1);
        drop(s.to_gateway);
        s.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_deadline_closes_with_4001_and_a_refresh_extends_it() {
        let s = connect(Duration::from_secs(5), 16);
        let refresh = format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            token("u", now() + 100)
        );
        s.to_gateway
            .send(Ok(Message::Text(refresh.into())))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(s.client.close_code(), None, "refreshed, still open");
        assert!(s.client.texts().iter().any(|t| t.contains("refreshed")));
        tokio::time::sleep(Duration::from_secs(100)).await;
        s.task.await.unwrap();
        assert_eq!(s.client.close_code(), Some(close_code::TOKEN_EXPIRED));
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::TokenExpired), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_for_someone_else_closes_with_1008() {
        let s = connect(Duration::from_secs(3600), 16);
        let refresh = format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            token("v", now() + 100)
        );
        s.to_gateway
            .send(Ok(Message::Text(refresh.into())))
            .unwrap();
        s.task.await.unwrap();
        assert_eq!(s.client.close_code(), Some(close_code::POLICY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_closes_with_4000() {
        let s = connect(Duration::from_secs(3600), 2);
        s.client
            .stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for i in 0..10 {
            s.hub.publish(&event(&format!("e{i}")), 1);
            settle().await;
        }
        s.client
            .stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        s.task.await.unwrap();
        assert_eq!(s.client.close_code(), Some(close_code::SLOW_CLIENT));
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::SlowClient), 1);
        assert_eq!(s.hub.connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revocation_closes_with_4003_counted_once() {
        let s = connect(Duration::from_secs(3600), 16);
        settle().await;
        assert_eq!(
            s.hub.revoke(&crate::revocation::Revoked::User("u".into())),
            1
        );
        s.task.await.unwrap();
        assert_eq!(s.client.close_code(), Some(close_code::REVOKED));
        let counts: Vec<_> = Disconnect::ALL
            .iter()
            .map(|d| s.hub.metrics().disconnects.get(*d))
            .collect();
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::Revoked), 1);
        assert_eq!(counts.iter().sum::<i64>(), 1, "{counts:?}");
        assert_eq!(s.hub.connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_takes_a_write_is_dropped_after_the_write_timeout() {
        let s = connect(Duration::from_secs(3600), 16);
        s.client
            .stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        s.to_gateway
            .send(Ok(Message::Text(r#"{"type":"ping"}"#.into())))
            .unwrap();
        // The reply cannot be written; 60 s later the connection is given up on.
        s.task.await.unwrap();
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::SlowClient), 1);
        assert_eq!(
            s.client.close_code(),
            None,
            "a stuck socket gets no goodbye"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_with_1001_within_the_drain() {
        let s = connect(Duration::from_secs(3600), 16);
        let start = Instant::now();
        s.shutdown.cancel();
        s.task.await.unwrap();
        assert_eq!(s.client.close_code(), Some(close_code::GOING_AWAY));
        assert!(start.elapsed() <= Duration::from_secs(3) + CLOSE_TIMEOUT);
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::Shutdown), 1);
    }
}
