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
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::hub::{Disconnect, End, Hub, Outgoing, Subscription, Transport};
use crate::transport::lifetime::{Lifetime, WriteError, jitter};
use crate::transport::pending::Pending;
use crate::transport::raw;
use crate::transport::{ConnectionToken, Context, PREFLIGHT_MAX_AGE_SECS};
use crate::transport::{admit, cors_headers, last_event_id_param};

/// The in-band signal that events may have been lost.
const RESYNC: Bytes = Bytes::from_static(b"event: resync\ndata: {\"type\":\"resync\"}\n\n");

/// Keeps idle streams (and the proxies in between) from timing out. A named event rather
/// than a comment, because `EventSource` hides comments: a page can only notice a dead
/// stream (a laptop that slept, a network that changed) by missing heartbeats it can see.
const HEARTBEAT_TEXT: &str = "event: heartbeat\ndata: {}\n\n";
const HEARTBEAT: Bytes = Bytes::from_static(HEARTBEAT_TEXT.as_bytes());

/// `GET /sse` through hyper: requests that the accept loop did not hand to [`serve_raw`]
/// (a request line split across packets, a kept-alive connection's later request).
pub async fn handler(
    State(ctx): State<Context>,
    RawQuery(query): RawQuery,
    connection: Option<Extension<ConnectionToken>>,
    headers: HeaderMap,
) -> Response {
    let mut stream = match open(&ctx, &headers, query.as_deref()).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // A stuck SSE stream is never polled, so it cannot end itself: the watcher drops the
    // whole HTTP connection instead, after giving the stream a chance to say goodbye.
    if let Some(Extension(ConnectionToken(connection))) = connection {
        let stream_done = CancellationToken::new();
        let lifetime = stream.lifetime.watcher();
        ctx.tracker.spawn(watch(
            lifetime,
            ctx.hub.clone(),
            stream_done.clone(),
            connection,
        ));
        stream.watched = Some(stream_done.drop_guard());
    }
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    for (name, value) in STREAM_HEADERS {
        h.insert(*name, HeaderValue::from_static(value));
    }
    cors_headers(&ctx, &headers, h);
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
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
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
    let admitted = match admit(ctx, headers, query, Transport::Sse, last_event_id, Ok(())).await {
        Ok((a, ())) => a,
        Err(r) => {
            let mut resp = r.into_response();
            // Let a cross-origin page read why it was refused.
            cors_headers(ctx, headers, resp.headers_mut());
            return Err(resp);
        }
    };
    let cfg = &ctx.config;
    let retry_ms = cfg.sse_retry.as_millis() as u64;
    Ok(SseStream {
        lifetime: Lifetime::new(
            admitted.identity.remaining(cfg.jwt.leeway),
            admitted.subscription.kick(),
            ctx.clients.clone(),
            cfg.shutdown_drain,
            cfg.write_timeout,
        ),
        subscription: admitted.subscription,
        keepalive: tokio::time::interval_at(Instant::now() + cfg.sse_keepalive, cfg.sse_keepalive),
        // The first bytes flush the headers at once and tell EventSource how long to wait
        // before reconnecting.
        pending: std::iter::once(Bytes::from(format!("retry: {retry_ms}\n: connected\n\n")))
            .chain(admitted.replay.into_iter().map(sse_frame))
            .collect(),
        retry_ms,
        drain: cfg.shutdown_drain,
        closed: false,
        watched: None,
    })
}

/// Serves one `GET /sse` connection without hyper, which would keep its 8 KiB read buffer
/// for the whole life of the stream: the head is read and parsed here (bounded in size
/// and time), the response is written directly, and the body is delimited by closing the
/// connection. Anything unexpected gets a plain HTTP error and the connection closes.
pub async fn serve_raw(
    mut socket: TcpStream,
    ctx: Context,
    head_deadline: Instant,
    pending: Pending,
) {
    // Boxed and gone once streaming starts: reading the head and authenticating take more
    // state than streaming, and this future's size is held per client for its whole life.
    let started = Box::pin(start_raw(&mut socket, ctx, head_deadline, pending)).await;
    let Some((mut stream, response_head)) = started else {
        return;
    };
    let (mut rd, mut wr) = socket.split();
    if let Err(e) = stream.lifetime.write(wr.write_all(&response_head)).await {
        stream.write_failed(e);
        return;
    }
    drop(response_head);
    let mut scratch = [0u8; IGNORED_READ_BYTES];
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
        let result = if stream.closed {
            stream.lifetime.write_last(wr.write_all(&chunk)).await
        } else {
            stream.lifetime.write(wr.write_all(&chunk)).await
        };
        if let Err(e) = result {
            stream.write_failed(e);
            return;
        }
    }
}

/// Room for reading what a client sends on a stream, which is only ever discarded: small,
/// since it sits in every raw SSE connection's task.
const IGNORED_READ_BYTES: usize = 64;

/// Reads and answers the head of a raw SSE request: the stream and its response head, or
/// `None` when an error response was written instead. Nothing of the request outlives it.
async fn start_raw(
    socket: &mut TcpStream,
    ctx: Context,
    head_deadline: Instant,
    pending: Pending,
) -> Option<(SseStream, Bytes)> {
    // Biased to the socket, as in the server's peek: a head that is there is served.
    let head = tokio::select! {
        biased;
        head = tokio::time::timeout_at(head_deadline, raw::read_head(socket)) => head,
        // Made room for a newer socket: this one has had its share of a full cap.
        _ = pending.yielded() => Ok(Err(StatusCode::SERVICE_UNAVAILABLE)),
    };
    drop(pending);
    let (path, query, headers) = match head {
        Ok(Ok(head)) => head,
        Ok(Err(status)) => {
            let _ = raw::write_plain(socket, status).await;
            return None;
        }
        Err(_) => {
            let _ = raw::write_plain(socket, StatusCode::REQUEST_TIMEOUT).await;
            return None;
        }
    };
    if path != "/sse" {
        let _ = raw::write_plain(socket, StatusCode::NOT_FOUND).await;
        return None;
    }
    let stream = match open(&ctx, &headers, query.as_deref()).await {
        Ok(s) => s,
        Err(resp) => {
            let _ = raw::write_response(socket, resp).await;
            return None;
        }
    };
    let mut out = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
    for (name, value) in STREAM_HEADERS {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut cors = HeaderMap::new();
    cors_headers(&ctx, &headers, &mut cors);
    raw::push_headers(&mut out, &cors);
    out.push_str("\r\n");
    Some((stream, Bytes::from(out)))
}

/// `OPTIONS /sse`: a CORS preflight, for clients that send `Authorization` or
/// `Last-Event-ID` cross-origin. EventSource's plain GET needs none.
pub async fn preflight(State(ctx): State<Context>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    cors_headers(&ctx, &headers, h);
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, last-event-id, cache-control"),
    );
    h.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
    );
    resp
}

/// Slack given to a stream to end itself before its connection is dropped from outside.
const STUCK_SLACK: Duration = Duration::from_secs(5);

/// Watches a stream served through hyper, which is polled only when its socket takes
/// data, so a stuck one cannot end itself: when the stream's `lifetime` ends (a kick, its
/// token's expiry, its moment in the drain) and the stream is still there a little later,
/// the watcher records why and drops its HTTP `connection`. It stops as soon as the
/// stream is dropped (`stream_done`).
async fn watch(
    mut lifetime: Lifetime,
    hub: Arc<Hub>,
    stream_done: CancellationToken,
    connection: CancellationToken,
) {
    let why = tokio::select! {
        _ = stream_done.cancelled() => return,
        why = async {
            let why = lifetime.ended().await;
            sleep(STUCK_SLACK).await;
            why
        } => why,
    };
    hub.end(lifetime.kick(), why);
    connection.cancel();
}

struct SseStream {
    /// Events for this connection; where its end is recorded.
    subscription: Subscription,
    /// Token deadline, kick and drain; bounds every write.
    lifetime: Lifetime,
    keepalive: Interval,
    /// Sent before anything live: the opening lines, then any replay.
    pending: std::collections::VecDeque<Bytes>,
    retry_ms: u64,
    /// Shutdown drain window, to spread the reconnects it causes.
    drain: Duration,
    /// The close event has been handed out: the stream is over.
    closed: bool,
    /// Ends the watcher of a stream served through hyper when the stream is dropped
    /// (`None` on the raw path, which needs none).
    watched: Option<DropGuard>,
}

impl SseStream {
    /// Records why a write the stream gave up on ended the connection.
    fn write_failed<E>(&self, e: WriteError<E>) {
        let why = match e {
            WriteError::Failed(_) => End::ClientGone,
            WriteError::Kicked(why) | WriteError::Stuck(why) => why,
        };
        self.subscription.end(why);
    }

    /// The next bytes to send, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.pending.pop_front() {
            if self.pending.is_empty() {
                // Its room would otherwise be held for the stream's whole life.
                self.pending = std::collections::VecDeque::new();
            }
            return Some(first);
        }
        if self.closed {
            return None;
        }
        let chunk = tokio::select! {
            biased;
            why = self.lifetime.ended() => self.close(why),
            item = self.subscription.recv() => match item {
                Some(item) => sse_frame(item),
                None => return None,
            },
            _ = self.keepalive.tick() => match self.subscription.quiet_position() {
                // The browser keeps an `id:` as its resume position even though the
                // heartbeat is no event of the page's.
                Some(p) => Bytes::from(format!("id: {}\n{}", p.token(), HEARTBEAT_TEXT)),
                None => HEARTBEAT,
            },
        };
        Some(chunk)
    }

    /// Records why the stream ends and makes its last event. Only a shutdown's carries
    /// a `retry:`, spread over the drain like the closes; a revoked client gets none, which
    /// would invite a reconnect storm of refused tokens.
    fn close(&mut self, why: End) -> Bytes {
        self.closed = true;
        let why = self.subscription.end(why);
        let retry = (why == End::Gateway(Disconnect::Shutdown))
            .then(|| self.retry_ms + jitter(self.drain).as_millis() as u64);
        close_event(why, retry)
    }
}

/// What the SSE framing adds to a snapshot's JSON.
const SNAPSHOT_FRAME_BYTES: usize = "event: snapshot\ndata: \n\n".len();

/// The SSE bytes of one queued item; events are shared, never re-encoded.
fn sse_frame(item: Outgoing) -> Bytes {
    match item {
        Outgoing::Event(e) => e.sse_frame(),
        Outgoing::Resync => RESYNC,
        Outgoing::Snapshot(json) => {
            let mut frame = Vec::with_capacity(json.len() + SNAPSHOT_FRAME_BYTES);
            frame.extend_from_slice(b"event: snapshot\ndata: ");
            frame.extend_from_slice(json.as_bytes());
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        }
    }
}

/// The last event of a stream the gateway ends: `event: close` with the reason, so a page
/// can tell a deploy from an expired token. On shutdown a `retry:` spreads reconnects.
fn close_event(why: End, retry_ms: Option<u64>) -> Bytes {
    let retry = retry_ms
        .map(|ms| format!("retry: {ms}\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "{retry}event: close\ndata: {{\"type\":\"close\",\"reason\":\"{}\"}}\n\n",
        why.as_str()
    ))
}

#[cfg(test)]
mod tests {
    //! The stream of one SSE connection driven by a real hub, with paused time.

    use super::*;

    struct Setup {
        hub: Arc<Hub>,
        stream: SseStream,
        shutdown: CancellationToken,
    }

    fn open_stream(lifetime: Duration, queue_len: usize) -> Setup {
        let hub = crate::hub::testing::small_hub(queue_len);
        let subscription = hub.subscribe("t", "u", Transport::Sse, None).unwrap();
        let shutdown = CancellationToken::new();
        let keepalive = Duration::from_secs(15);
        let stream = SseStream {
            lifetime: Lifetime::new(
                lifetime,
                subscription.kick(),
                shutdown.clone(),
                Duration::from_secs(3),
                Duration::from_secs(60),
            ),
            subscription,
            keepalive: tokio::time::interval_at(Instant::now() + keepalive, keepalive),
            pending: [Bytes::from_static(b"retry: 2000\n\n")].into(),
            retry_ms: 2000,
            drain: Duration::from_secs(3),
            closed: false,
            watched: None,
        };
        Setup {
            hub,
            stream,
            shutdown,
        }
    }

    use crate::envelope::testing::progress as event;

    async fn next(s: &mut SseStream) -> String {
        String::from_utf8(s.next_chunk().await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn opening_lines_then_events_then_heartbeats() {
        let mut s = open_stream(Duration::from_secs(3600), 16);
        s.hub.publish(&event("a"), 1);
        assert_eq!(next(&mut s.stream).await, "retry: 2000\n\n");
        let a = next(&mut s.stream).await;
        assert!(
            a.starts_with("id: a\n") && a.contains("\"event_id\":\"a\""),
            "{a}"
        );
        assert_eq!(next(&mut s.stream).await, "event: heartbeat\ndata: {}\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn token_expiry_ends_the_stream_with_a_close_event_and_no_retry() {
        let mut s = open_stream(Duration::from_secs(5), 16);
        next(&mut s.stream).await;
        let mut last = next(&mut s.stream).await;
        while last.contains("heartbeat") {
            last = next(&mut s.stream).await;
        }
        assert_eq!(
            last,
            "event: close\ndata: {\"type\":\"close\",\"reason\":\"token_expired\"}\n\n"
        );
        assert!(s.stream.next_chunk().await.is_none());
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::TokenExpired), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_and_a_shutdown_each_end_it_with_their_reason() {
        let mut s = open_stream(Duration::from_secs(3600), 1);
        next(&mut s.stream).await;
        for i in 0..3 {
            s.hub.publish(&event(&format!("e{i}")), 1);
        }
        let mut chunk = next(&mut s.stream).await;
        while !chunk.starts_with("event: close") {
            chunk = next(&mut s.stream).await;
        }
        assert!(chunk.contains("slow_client"), "{chunk}");

        let mut s = open_stream(Duration::from_secs(3600), 16);
        next(&mut s.stream).await;
        s.shutdown.cancel();
        let chunk = next(&mut s.stream).await;
        // The reconnect hint is itself spread over the drain window.
        assert!(chunk.starts_with("retry: "), "{chunk}");
        assert!(chunk.contains("\"reason\":\"shutdown\""), "{chunk}");
        assert_eq!(s.hub.metrics().disconnects.get(Disconnect::Shutdown), 1);
    }
}
