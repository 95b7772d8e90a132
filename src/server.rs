//! Server: the router (`app`) and `run`, which wires broker, hub, auth and transports
//! together and shuts them down in stages. `main` and the tests both call `run`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{KeyError, Verifier};
use crate::broker::Consumer;
use crate::config::Config;
use crate::history::History;
use crate::hub::{Hub, HubLimits};
use crate::telemetry::Metrics;
use crate::transport::{self, demo, sse, ws};

/// Shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Connection registry and fan-out.
    pub hub: Arc<Hub>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Recent events, for resuming clients.
    pub history: Arc<History>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// True while the broker consumer runs.
    pub broker_ready: Arc<AtomicBool>,
    /// True from the first moment of shutdown, so `/readyz` turns 503 at once.
    pub draining: Arc<AtomicBool>,
    /// Cancelled when clients must be closed.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket tasks, which outlive the HTTP server's view of their connection.
    pub tracker: TaskTracker,
}

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A key file could not be used.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The listener failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The router, kept apart from `run` so tests can build the same one.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler).options(sse::preflight))
        .route(
            "/auth/check",
            get(transport::check).options(transport::check_preflight),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/demo", get(demo::redirect))
        .route("/demo/", get(demo::index))
        .route("/demo/{*path}", get(demo::file))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.broker_ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker not connected")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

/// Accepts connections until `stop`, serving each with hyper's HTTP/1 (upgrades
/// included). Written out instead of `axum::serve` for the header read timeout (a client
/// that opens a socket and never sends a request must not hold a descriptor forever) and
/// to count accept failures such as running out of descriptors instead of only logging.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    state: AppState,
    handshake_timeout: std::time::Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let pending = Arc::new(Semaphore::new(state.config.max_pending_connections));
    let mut last_pending_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    metrics.accept_failed();
                    // EMFILE/ENFILE: the connection stays in the backlog; retrying at once
                    // would spin. Back off briefly and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed (out of file descriptors?)");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Silent sockets must not crowd out clients: beyond the cap a new socket is closed
        // at once (the ones already pending still get their full handshake time).
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics.pending_refused();
            if last_pending_warning.is_none_or(|t| t.elapsed() >= PENDING_WARNING_EVERY) {
                last_pending_warning = Some(Instant::now());
                tracing::warn!(
                    client.addr = %peer,
                    limit = state.config.max_pending_connections,
                    "too many connections still sending their request head; closing new ones"
                );
            }
            continue;
        };
        let pending = Pending::new(permit, metrics.clone());
        let _ = stream.set_nodelay(true);
        // One deadline for the whole head, however it is read (peek, raw SSE, hyper).
        let head_deadline = Instant::now() + handshake_timeout;
        // SSE requests are served without hyper (see `sse::serve_raw`): a peek, which
        // consumes nothing, tells them apart; anything else goes to hyper untouched.
        {
            let (state, stop, router) = (state.clone(), stop.clone(), router.clone());
            connections.spawn(async move {
                let mut first = [0u8; SSE_PREFIX.len()];
                let peeked = tokio::select! {
                    r = tokio::time::timeout_at(head_deadline, stream.peek(&mut first)) => r,
                    _ = stop.cancelled() => return,
                };
                match peeked {
                    Ok(Ok(n)) if first[..n] == *SSE_PREFIX => {
                        sse::serve_raw(stream, state, head_deadline, pending).await;
                    }
                    Ok(Ok(_)) => {
                        serve_hyper(stream, peer, router, head_deadline, stop, pending).await
                    }
                    // Nothing sent within the handshake timeout, or the socket failed.
                    _ => {}
                }
            });
        }
    }
    connections.close();
    connections.wait().await;
}

/// Serves one connection with hyper's HTTP/1, upgrades included.
async fn serve_hyper(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    head_deadline: Instant,
    stop: CancellationToken,
    pending: Pending,
) {
    // Released when hyper hands over the first complete request head.
    let pending = Arc::new(std::sync::Mutex::new(Some(pending)));
    // Cancelling this token drops the HTTP connection and its socket. SSE streams use
    // it as their slow-client kick: a stream whose socket is stuck is never polled
    // again, so it cannot end itself.
    let conn_token = CancellationToken::new();
    let service = {
        let (router, token) = (router.clone(), conn_token.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            drop(pending.lock().unwrap_or_else(|p| p.into_inner()).take());
            req.extensions_mut().insert(ConnectionToken(token.clone()));
            tower::ServiceExt::oneshot(router.clone(), req)
        })
    };
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // What is left of the head's time after the peek, not a second full timeout. (It
        // also bounds idle time between kept-alive requests, as a fresh full timeout.)
        let left = head_deadline.saturating_duration_since(Instant::now());
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(left.max(std::time::Duration::from_millis(1)));
        let conn = builder
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = conn_token.cancelled() => Ok(()),
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
        }
    }
}

/// A socket counted against `GATEWAY_MAX_PENDING_CONNECTIONS` until its first request
/// head is complete or it goes away.
pub struct Pending {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Pending {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Pending {
        metrics.pending_opened();
        Pending {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.pending_closed();
    }
}

/// Least time between two warnings about the pending-connection cap.
const PENDING_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What an SSE request starts with.
const SSE_PREFIX: &[u8; 8] = b"GET /sse";

/// Request extension: the token that ends the request's HTTP connection.
#[derive(Clone)]
pub struct ConnectionToken(pub CancellationToken);

/// How often shutdown checks whether the last SSE stream has ended.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Pause after a failed `accept`.
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// How a gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections (or other work) still open when the grace period ran out; 0 for a
    /// clean drain.
    pub cut_connections: usize,
}

/// Serves on `listener` until `shutdown` completes, then drains within the grace period.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Stopped, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let verifier = Arc::new(Verifier::new(&config.jwt)?);
    let hub = Hub::new(
        HubLimits {
            max_connections: config.max_connections,
            max_per_user: config.max_connections_per_user,
            queue_len: config.send_queue_len,
            queue_bytes: config.send_queue_bytes,
        },
        metrics.clone(),
    );
    let history = Arc::new(History::new(config.history));
    // `stop` closes clients and the consumer; `accept_stop` comes later, so that while
    // clients drain, new requests still get answers (`/readyz` 503) instead of waiting in
    // the listen backlog.
    let stop = CancellationToken::new();
    let accept_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let state = AppState {
        config: config.clone(),
        hub: hub.clone(),
        verifier: verifier.clone(),
        history: history.clone(),
        metrics: metrics.clone(),
        broker_ready: Arc::new(AtomicBool::new(false)),
        draining: Arc::new(AtomicBool::new(false)),
        shutdown: stop.clone(),
        tracker: tracker.clone(),
    };

    let consumer = Consumer {
        config: config.amqp.clone(),
        max_event_bytes: config.max_event_bytes,
        mapping: config.mapping.clone(),
        dedupe_window: config.dedupe_window,
        hub,
        history,
        metrics,
        ready: state.broker_ready.clone(),
    };
    let broker = tokio::spawn(consumer.run(stop.clone()));

    if verifier.has_jwks() {
        let (verifier, stop, every) = (verifier.clone(), stop.clone(), config.jwt.jwks_refresh);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => verifier.refresh_jwks().await,
                }
            }
        });
    }

    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "realtime-gateway listening");
    let server = tokio::spawn(accept_loop(
        listener,
        app(state.clone()),
        state.clone(),
        config.handshake_timeout,
        state.metrics.clone(),
        accept_stop.clone(),
    ));

    shutdown.await;
    tracing::info!(
        connections = state.hub.connections(),
        "shutting down: not ready, closing clients"
    );
    state.draining.store(true, Ordering::Release);
    stop.cancel();
    tracker.close();

    let grace = config.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        let _ = broker.await;
        tracker.wait().await;
        // SSE streams are HTTP responses, not tracked tasks: wait for the hub to empty.
        while state.hub.connections() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        accept_stop.cancel();
        let _ = server.await;
    })
    .await;
    let cut_connections = match drained {
        Ok(()) => {
            tracing::info!("shutdown complete");
            0
        }
        Err(_) => {
            let left = state.hub.connections();
            tracing::warn!(
                grace_secs = grace.as_secs(),
                connections = left,
                "grace period ran out; remaining connections are cut"
            );
            left.max(1)
        }
    };
    Ok(Stopped { cut_connections })
}
