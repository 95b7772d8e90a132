//! Server-Sent Events transport: `GET /sse`. One SSE event per domain event (`id:` is the
//! `event_id`, `data:` the envelope on one line), comments as keep-alives, and a final
//! `event: close` naming the reason whenever the gateway ends the stream.
//!
//! The frames are the ones the envelope built once; the stream only hands out clones.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE,
    CACHE_CONTROL, CONTENT_TYPE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::{Instant, Interval, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use crate::hub::{Outgoing, Subscription};
use crate::server::{AppState, ConnectionToken};
use crate::telemetry::{Disconnect, Metrics, Transport};
use crate::transport::{admit, cors_headers, jitter, last_event_id_param};

/// The in-band signal that events may have been lost.
const RESYNC: Bytes = Bytes::from_static(b"event: resync\ndata: {\"type\":\"resync\"}\n\n");

/// Keeps idle streams (and the proxies in between) from timing out.
const KEEP_ALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

/// `GET /sse`.
pub async fn handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    conn_token: Option<Extension<ConnectionToken>>,
    headers: HeaderMap,
) -> Response {
    // A stuck SSE stream is never polled, so it cannot end itself: its kick drops the
    // whole HTTP connection instead.
    let kick = conn_token.map(|t| t.0.0).unwrap_or_default();
    // EventSource sends Last-Event-ID by itself on reconnect, and it is newer than a
    // last_event_id left in the URL from the first connect.
    // Browsers send it as UTF-8, which `to_str` (visible ASCII only) would refuse.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| last_event_id_param(query.as_deref()));
    let admitted = match admit(
        &state,
        &headers,
        query.as_deref(),
        Transport::Sse,
        kick,
        last_event_id,
    )
    .await
    {
        Ok(a) => a,
        Err(r) => {
            let mut resp = r.into_response();
            // Let a cross-origin page read why it was refused.
            cors_headers(&state, &headers, resp.headers_mut());
            return resp;
        }
    };
    let cfg = &state.config;
    let retry_ms = cfg.sse_retry.as_millis() as u64;
    let remaining = admitted.identity.remaining(cfg.jwt.leeway);
    watch_stuck_stream(
        admitted.subscription.kicked.clone(),
        remaining,
        state.shutdown.clone(),
        cfg.shutdown_drain,
        state.metrics.clone(),
    );
    let stream = SseStream {
        kicked: admitted.subscription.kicked.clone(),
        subscription: admitted.subscription,
        shutdown: state.shutdown.clone(),
        deadline: Box::pin(sleep(remaining)),
        keepalive: tokio::time::interval_at(Instant::now() + cfg.sse_keepalive, cfg.sse_keepalive),
        metrics: state.metrics.clone(),
        // The first bytes flush the headers at once and tell EventSource how long to wait
        // before reconnecting.
        pending: std::iter::once(Bytes::from(format!("retry: {retry_ms}\n: connected\n\n")))
            .chain(admitted.replay.into_iter().map(sse_frame))
            .collect(),
        retry_ms,
        drain: cfg.shutdown_drain,
        draining: false,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, SseStream::next));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    cors_headers(&state, &headers, h);
    resp
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
    /// Clone of the subscription's token, taken once rather than per event.
    kicked: CancellationToken,
    shutdown: CancellationToken,
    deadline: Pin<Box<Sleep>>,
    keepalive: Interval,
    metrics: std::sync::Arc<Metrics>,
    /// Sent before anything live: the opening lines, then any replay.
    pending: std::collections::VecDeque<Bytes>,
    retry_ms: u64,
    /// Shutdown drain window.
    drain: Duration,
    /// Set when shutdown begins; `deadline` then moves to a random moment within the
    /// drain window (one timer serves both), delivering what is queued until then.
    draining: bool,
    done: bool,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // Ends the watcher; the connection it belongs to is over anyway.
        self.kicked.cancel();
    }
}

impl SseStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, SseStream)> {
        if let Some(first) = self.pending.pop_front() {
            return Some((Ok(first), self));
        }
        if self.done {
            return None;
        }
        let chunk = loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled(), if !self.draining => {
                    self.draining = true;
                    let at = Instant::now() + jitter(self.drain);
                    if at < self.deadline.deadline() {
                        self.deadline.as_mut().reset(at);
                    }
                }
                _ = self.kicked.cancelled() => {
                    self.done = true;
                    break close_event(Disconnect::SlowClient, None);
                }
                _ = &mut self.deadline => {
                    self.done = true;
                    if self.draining {
                        self.metrics.disconnected(Disconnect::Shutdown);
                        // Spread the reconnects too, not only the disconnects.
                        let retry = self.retry_ms + jitter(self.drain).as_millis() as u64;
                        break close_event(Disconnect::Shutdown, Some(retry));
                    }
                    self.metrics.disconnected(Disconnect::TokenExpired);
                    break close_event(Disconnect::TokenExpired, None);
                }
                item = self.subscription.recv() => match item {
                    Some(item) => break sse_frame(item),
                    None => return None,
                },
                _ = self.keepalive.tick() => break KEEP_ALIVE,
            }
        };
        Some((Ok(chunk), self))
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
