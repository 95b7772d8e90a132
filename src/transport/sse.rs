//! Server-Sent Events transport: `GET /sse`. One SSE event per domain event (`id:` is the
//! `event_id`, `data:` the envelope on one line), comments as keep-alives, and a final
//! `event: close` naming the reason whenever the gateway ends the stream.
//!
//! The frames are the ones the envelope built once; the stream only hands out clones.

use std::convert::Infallible;
use std::pin::Pin;

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

use crate::hub::Subscription;
use crate::server::AppState;
use crate::telemetry::{Disconnect, Metrics, Transport};
use crate::transport::{admit, cors_headers};

/// Keeps idle streams (and the proxies in between) from timing out.
const KEEP_ALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

/// `GET /sse`.
pub async fn handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let admitted = match admit(&state, &headers, query.as_deref(), Transport::Sse).await {
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
    let stream = SseStream {
        kicked: admitted.subscription.kicked.clone(),
        subscription: admitted.subscription,
        shutdown: state.shutdown.clone(),
        deadline: Box::pin(sleep(admitted.identity.remaining(cfg.jwt.leeway))),
        keepalive: tokio::time::interval_at(Instant::now() + cfg.sse_keepalive, cfg.sse_keepalive),
        metrics: state.metrics.clone(),
        // The first bytes flush the headers at once and tell EventSource how long to wait
        // before reconnecting.
        pending: Some(Bytes::from(format!("retry: {retry_ms}\n: connected\n\n"))),
        retry_ms,
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

struct SseStream {
    subscription: Subscription,
    /// Clone of the subscription's token, taken once rather than per event.
    kicked: CancellationToken,
    shutdown: CancellationToken,
    deadline: Pin<Box<Sleep>>,
    keepalive: Interval,
    metrics: std::sync::Arc<Metrics>,
    pending: Option<Bytes>,
    retry_ms: u64,
    done: bool,
}

impl SseStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, SseStream)> {
        if let Some(first) = self.pending.take() {
            return Some((Ok(first), self));
        }
        if self.done {
            return None;
        }
        let chunk = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                self.done = true;
                self.metrics.disconnected(Disconnect::Shutdown);
                close_event(Disconnect::Shutdown, Some(self.retry_ms))
            }
            _ = self.kicked.cancelled() => {
                self.done = true;
                self.metrics.disconnected(Disconnect::SlowClient);
                close_event(Disconnect::SlowClient, None)
            }
            _ = &mut self.deadline => {
                self.done = true;
                self.metrics.disconnected(Disconnect::TokenExpired);
                close_event(Disconnect::TokenExpired, None)
            }
            event = self.subscription.rx.recv() => match event {
                Some(e) => e.sse_frame(),
                None => return None,
            },
            _ = self.keepalive.tick() => KEEP_ALIVE,
        };
        Some((Ok(chunk), self))
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
