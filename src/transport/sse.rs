//! Server-Sent Events transport: `GET /sse`. One SSE event per domain event (`id:` is the
//! `event_id`, `data:` the envelope on one line), `heartbeat` events as keep-alives, and a final
//! `event: close` naming the reason whenever the gateway ends the stream.
//!
//! The frames are the ones the envelope built once; the stream only hands out clones.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, sleep};
use tokio_util::sync::CancellationToken;

use crate::hub::{Outgoing, Subscription};
use crate::server::{AppState, ConnectionToken, Pending};
use crate::telemetry::{Disconnect, Metrics, Transport};
use crate::transport::lifetime::{Ending, Lifetime, WriteError, jitter};
use crate::transport::{admit, cors_headers, last_event_id_param};

/// The in-band signal that events may have been lost.
const RESYNC: Bytes = Bytes::from_static(b"event: resync\ndata: {\"type\":\"resync\"}\n\n");

/// Keeps idle streams (and the proxies in between) from timing out. A named event rather
/// than a comment, because `EventSource` hides comments: a page can only notice a dead
/// stream (a laptop that slept, a network that changed) by missing heartbeats it can see.
const HEARTBEAT: Bytes = Bytes::from_static(b"event: heartbeat\ndata: {}\n\n");

/// `GET /sse` through hyper: requests that the accept loop did not hand to [`serve_raw`]
/// (a request line split across packets, a kept-alive connection's later request).
pub async fn handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    conn_token: Option<Extension<ConnectionToken>>,
    headers: HeaderMap,
) -> Response {
    // A stuck SSE stream is never polled, so it cannot end itself: its kick drops the
    // whole HTTP connection instead.
    let kick = conn_token.map(|t| t.0.0).unwrap_or_default();
    let stream = match open(&state, &headers, query.as_deref(), kick).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    watch_stuck_stream(
        stream.kicked.clone(),
        stream
            .lifetime
            .deadline()
            .saturating_duration_since(Instant::now()),
        state.shutdown.clone(),
        state.config.shutdown_drain,
        state.metrics.clone(),
    );
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    for (name, value) in STREAM_HEADERS {
        h.insert(*name, HeaderValue::from_static(value));
    }
    cors_headers(&state, &headers, h);
    resp
}

/// Response headers of every stream. `x-accel-buffering: no` keeps nginx from buffering.
const STREAM_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
];

/// Admits the request and builds its stream, or the refusal to send instead.
async fn open(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    kick: CancellationToken,
) -> Result<SseStream, Response> {
    // EventSource sends Last-Event-ID by itself on reconnect, and it is newer than a
    // last_event_id left in the URL from the first connect. Browsers send it as UTF-8,
    // which `to_str` (visible ASCII only) would refuse.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| last_event_id_param(query));
    let admitted = match admit(state, headers, query, Transport::Sse, kick, last_event_id).await {
        Ok(a) => a,
        Err(r) => {
            let mut resp = r.into_response();
            // Let a cross-origin page read why it was refused.
            cors_headers(state, headers, resp.headers_mut());
            return Err(resp);
        }
    };
    let cfg = &state.config;
    let retry_ms = cfg.sse_retry.as_millis() as u64;
    let remaining = admitted.identity.remaining(cfg.jwt.leeway);
    let kicked = admitted.subscription.kicked.clone();
    Ok(SseStream {
        lifetime: Lifetime::new(
            remaining,
            kicked.clone(),
            state.shutdown.clone(),
            cfg.shutdown_drain,
            cfg.idle_timeout,
        ),
        kicked,
        subscription: admitted.subscription,
        keepalive: tokio::time::interval_at(Instant::now() + cfg.sse_keepalive, cfg.sse_keepalive),
        metrics: state.metrics.clone(),
        // The first bytes flush the headers at once and tell EventSource how long to wait
        // before reconnecting.
        pending: std::iter::once(Bytes::from(format!("retry: {retry_ms}\n: connected\n\n")))
            .chain(admitted.replay.into_iter().map(sse_frame))
            .collect(),
        retry_ms,
        drain: cfg.shutdown_drain,
        done: false,
    })
}

/// Largest request head the raw path reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most request headers the raw path parses.
const MAX_HEADERS: usize = 64;

/// Serves one `GET /sse` connection without hyper, which would keep its 8 KiB read buffer
/// for the whole life of the stream: the head is read and parsed here (bounded in size
/// and time), the response is written directly, and the body is delimited by closing the
/// connection. Anything unexpected gets a plain HTTP error and the connection closes.
pub async fn serve_raw(
    mut socket: TcpStream,
    state: AppState,
    head_deadline: Instant,
    pending: Pending,
) {
    let head = tokio::time::timeout_at(head_deadline, read_head(&mut socket)).await;
    drop(pending);
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(status)) => {
            let _ = write_plain(&mut socket, status).await;
            return;
        }
        Err(_) => {
            let _ = write_plain(&mut socket, StatusCode::REQUEST_TIMEOUT).await;
            return;
        }
    };
    // Everything from the request is dropped before streaming starts: this future lives as
    // long as the connection, and whatever it still holds is held per client.
    let (mut stream, response_head) = {
        let (path, query, headers) = head;
        if path != "/sse" {
            let _ = write_plain(&mut socket, StatusCode::NOT_FOUND).await;
            return;
        }
        let stream = match open(&state, &headers, query.as_deref(), CancellationToken::new()).await
        {
            Ok(s) => s,
            Err(resp) => {
                let _ = write_response(&mut socket, resp).await;
                return;
            }
        };
        let mut out = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
        for (name, value) in STREAM_HEADERS {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut cors = HeaderMap::new();
        cors_headers(&state, &headers, &mut cors);
        push_headers(&mut out, &cors);
        out.push_str("\r\n");
        (stream, Bytes::from(out))
    };
    let metrics = state.metrics.clone();
    drop(state);
    let (mut rd, mut wr) = socket.split();
    if let Err(e) = stream.lifetime.write(wr.write_all(&response_head)).await {
        count_write_error(&metrics, e);
        return;
    }
    drop(response_head);
    let mut scratch = [0u8; 64];
    loop {
        let chunk = tokio::select! {
            biased;
            c = stream.next_chunk() => c,
            // Anything the client sends is ignored; end of file means it left.
            r = rd.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let Some(chunk) = chunk else { return };
        // The last chunk of a stream that is done (its close event) is written without the
        // shutdown and deadline bounds, which fired already; the write timeout still holds.
        let result = if stream.done {
            stream.lifetime.write_last(wr.write_all(&chunk)).await
        } else {
            stream.lifetime.write(wr.write_all(&chunk)).await
        };
        if let Err(e) = result {
            count_write_error(&metrics, e);
            return;
        }
    }
}

/// Counts a write the gateway gave up on; a kick was counted by the hub, and a failed
/// socket is the client leaving.
fn count_write_error<E>(metrics: &Metrics, e: WriteError<E>) {
    if let WriteError::Stuck(why) = e {
        metrics.disconnected(why);
    }
}

/// Reads and parses a request head: `(path, query, headers)`, or the status to answer.
async fn read_head(
    socket: &mut TcpStream,
) -> Result<(String, Option<String>, HeaderMap), StatusCode> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = socket
            .read(&mut chunk)
            .await
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if n == 0 {
            return Err(StatusCode::BAD_REQUEST);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut parsed);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return Err(StatusCode::METHOD_NOT_ALLOWED);
                }
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                    None => (target.to_owned(), None),
                };
                let mut headers = HeaderMap::with_capacity(req.headers.len());
                for h in req.headers.iter() {
                    let name = axum::http::HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| StatusCode::BAD_REQUEST)?;
                    let value =
                        HeaderValue::from_bytes(h.value).map_err(|_| StatusCode::BAD_REQUEST)?;
                    headers.append(name, value);
                }
                return Ok((path, query, headers));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        }
    }
}

fn push_headers(out: &mut String, headers: &HeaderMap) {
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
}

async fn write_plain(socket: &mut TcpStream, status: StatusCode) -> std::io::Result<()> {
    write_response(socket, status.into_response()).await
}

/// Writes a small, complete response (refusals and errors) and closes.
async fn write_response(socket: &mut TcpStream, resp: Response) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let reason = parts.status.canonical_reason().unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncontent-length: {}\r\n",
        parts.status.as_u16(),
        body.len()
    );
    push_headers(&mut head, &parts.headers);
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body).await?;
    socket.shutdown().await
}

/// `OPTIONS /sse`: a CORS preflight, for clients that send `Authorization` or
/// `Last-Event-ID` cross-origin. EventSource's plain GET needs none.
pub async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    cors_headers(&state, &headers, h);
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, last-event-id, cache-control"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    resp
}

/// Slack given to a stream to end itself before its connection is dropped from outside.
const STUCK_SLACK: Duration = Duration::from_secs(5);

/// A stream whose socket is full is not polled, so its own timers cannot end it. This
/// watcher drops the whole connection (through its kick token) if the stream is still
/// there a little after its token's expiry or after the shutdown drain. It ends at once
/// when the stream ends, since dropping the stream cancels the same token.
fn watch_stuck_stream(
    kick: CancellationToken,
    remaining: Duration,
    shutdown: CancellationToken,
    drain: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = kick.cancelled() => return,
            _ = sleep(remaining.saturating_add(STUCK_SLACK)) => Disconnect::TokenExpired,
            _ = async {
                shutdown.cancelled().await;
                sleep(drain + STUCK_SLACK).await;
            } => Disconnect::Shutdown,
        };
        metrics.disconnected(why);
        kick.cancel();
    });
}

struct SseStream {
    subscription: Subscription,
    /// Clone of the subscription's token, cancelled on drop to end the watcher.
    kicked: CancellationToken,
    /// Token deadline, kick and drain; bounds every write.
    lifetime: Lifetime,
    keepalive: Interval,
    metrics: std::sync::Arc<Metrics>,
    /// Sent before anything live: the opening lines, then any replay.
    pending: std::collections::VecDeque<Bytes>,
    retry_ms: u64,
    /// Shutdown drain window, to spread the reconnects it causes.
    drain: Duration,
    done: bool,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // Ends the watcher; the connection it belongs to is over anyway.
        self.kicked.cancel();
    }
}

impl SseStream {
    /// The next bytes to send, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.pending.pop_front() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        let chunk = tokio::select! {
            biased;
            ending = self.lifetime.ended() => {
                self.done = true;
                match ending {
                    Ending::Kicked => close_event(Disconnect::SlowClient, None),
                    Ending::Shutdown => {
                        self.metrics.disconnected(Disconnect::Shutdown);
                        // Spread the reconnects too, not only the disconnects.
                        let retry = self.retry_ms + jitter(self.drain).as_millis() as u64;
                        close_event(Disconnect::Shutdown, Some(retry))
                    }
                    Ending::TokenExpired => {
                        self.metrics.disconnected(Disconnect::TokenExpired);
                        close_event(Disconnect::TokenExpired, None)
                    }
                }
            }
            item = self.subscription.recv() => match item {
                Some(item) => sse_frame(item),
                None => return None,
            },
            _ = self.keepalive.tick() => HEARTBEAT,
        };
        Some(chunk)
    }
}

/// The SSE bytes of one queued item; events are shared, never re-encoded.
fn sse_frame(item: Outgoing) -> Bytes {
    match item {
        Outgoing::Event(e) => e.sse_frame(),
        Outgoing::Resync => RESYNC,
    }
}

/// The last event of a stream the gateway ends: `event: close` with the reason, so a page
/// can tell a deploy from an expired token. On shutdown a `retry:` spreads reconnects.
fn close_event(why: Disconnect, retry_ms: Option<u64>) -> Bytes {
    let retry = retry_ms
        .map(|ms| format!("retry: {ms}\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "{retry}event: close\ndata: {{\"type\":\"close\",\"reason\":\"{}\"}}\n\n",
        why.as_str()
    ))
}
