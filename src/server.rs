//! Server: the router (`app`), the accept loop, and `run`, which wires broker, hub, auth
//! and transports together and shuts them down in stages. `main` and the tests both call
//! `run`. This is the top of the module graph: it imports everything, nothing imports it.
//!
//! Every task the gateway starts is tracked by one `TaskTracker`, under one tree of
//! cancellation tokens: `listening` (the listener and idle HTTP connections) is the root,
//! `clients` (connections and the consumer) its child, so shutdown cancels the clients
//! first and the listener last, and waits for both within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{KeyError, Verifier};
use crate::broker::revocations::RevocationFeed;
use crate::broker::{BrokerMetrics, Consumer, SeamHook};
use crate::config::Config;
use crate::demo::{self, DemoDir};
use crate::history::History;
use crate::hub::{Hub, HubLimits};
use crate::revocation::{self, Revocations};
use crate::state::StateStore;
use crate::telemetry::Exposition;
use crate::transport::pending::{Pending, PendingSockets};
use crate::transport::{self, ConnectionToken, Context, TransportMetrics, sse, ws};

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

/// How a gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections (or other work) still open when the grace period ran out; 0 for a
    /// clean drain.
    pub cut_connections: usize,
}

/// Instrumentation for tests; the default is what production runs.
#[derive(Clone, Default)]
pub struct Hooks {
    /// See [`SeamHook`].
    pub seam: Option<SeamHook>,
}

/// What `/readyz` and `/metrics` read.
#[derive(Clone)]
struct Ops {
    broker_ready: Arc<AtomicBool>,
    /// Revocations read up to this instance's start (always true when they are off).
    revocations_ready: Arc<AtomicBool>,
    revocations: Arc<Revocations>,
    draining: Arc<AtomicBool>,
    hub: Arc<Hub>,
    transport: Arc<TransportMetrics>,
    broker: Arc<BrokerMetrics>,
}

/// The router, kept apart from `run` so tests can build the same one.
fn app(ctx: Context, ops: Ops, demo_dir: DemoDir) -> Router {
    let transports = Router::new()
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler).options(sse::preflight))
        .route(
            "/auth/check",
            get(transport::check).options(transport::check_preflight),
        )
        .with_state(ctx);
    let demo = Router::new()
        .route("/demo", get(demo::redirect))
        .route("/demo/", get(demo::index))
        .route("/demo/{*path}", get(demo::file))
        .with_state(demo_dir);
    let (ready, metrics) = (ops.clone(), ops);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(ready.clone())))
        .route("/metrics", get(move || render_metrics(metrics.clone())))
        .merge(transports)
        .merge(demo)
}

async fn readyz(ops: Ops) -> impl IntoResponse {
    if ops.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !ops.broker_ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "broker not connected")
    } else if !ops.revocations_ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "reading revocations")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn render_metrics(ops: Ops) -> impl IntoResponse {
    let text = Exposition::render(&[
        ops.hub.metrics(),
        &*ops.transport,
        &*ops.broker,
        ops.revocations.metrics(),
    ]);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

/// What the accept loop needs.
struct Listener {
    listener: TcpListener,
    router: Router,
    ctx: Context,
    tasks: TaskTracker,
    /// Cancelled when the gateway stops listening (the last stage of shutdown).
    listening: CancellationToken,
}

/// Accepts connections until `listening` is cancelled, serving each with hyper's HTTP/1 (upgrades
/// included), or, for SSE, the raw path. Written out instead of `axum::serve` for one head
/// deadline per connection (a socket that never sends a request must not hold a
/// descriptor), the admission of pending sockets (`transport::pending`: at the cap the loop
/// stops accepting, and the oldest silent socket yields), and to count accept failures such
/// as running out of descriptors instead of only logging them.
async fn accept_loop(l: Listener) {
    let metrics = l.ctx.metrics.clone();
    let config = &l.ctx.config;
    let pending = PendingSockets::new(
        config.max_pending_connections,
        config.max_pending_per_address,
        metrics.clone(),
    );
    loop {
        // Connections beyond the cap wait in the listen backlog, not closed.
        tokio::select! {
            _ = l.listening.cancelled() => break,
            _ = pending.room() => {}
        }
        let (stream, peer) = tokio::select! {
            _ = l.listening.cancelled() => break,
            r = l.listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    metrics.accept_errors.inc();
                    // EMFILE/ENFILE: the connection stays in the backlog; retrying at once
                    // would spin. Back off briefly and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed (out of file descriptors?)");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let pending = pending.admit(peer.ip());
        let (ctx, router, listening) = (l.ctx.clone(), l.router.clone(), l.listening.clone());
        l.tasks.spawn(serve_connection(
            stream, peer, ctx, router, listening, pending,
        ));
    }
}

/// Serves one accepted socket. SSE requests are served without hyper (see
/// `sse::serve_raw`): a peek, which consumes nothing, tells them apart; anything else goes
/// to hyper untouched.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Context,
    router: Router,
    listening: CancellationToken,
    pending: Pending,
) {
    let _ = stream.set_nodelay(true);
    // One deadline for the whole head, however it is read (peek, raw SSE, hyper).
    let head_deadline = Instant::now() + ctx.config.handshake_timeout;
    let mut first = [0u8; SSE_PREFIX.len()];
    // Biased to the socket: a client whose request is already waiting was only slow to
    // get the CPU (a storm on a busy machine), not silent, and is served even if it was
    // asked to yield meanwhile.
    let peeked = tokio::select! {
        biased;
        r = tokio::time::timeout_at(head_deadline, stream.peek(&mut first)) => r,
        _ = listening.cancelled() => return,
        // Silent while every slot was taken: closed to make room.
        _ = pending.yielded() => return,
    };
    match peeked {
        Ok(Ok(n)) if first[..n] == *SSE_PREFIX => {
            sse::serve_raw(stream, ctx, head_deadline, pending).await;
        }
        // Boxed: hyper's connection state would otherwise size every SSE connection's
        // task too, for its whole life; a WebSocket's hyper phase ends at the upgrade.
        Ok(Ok(_)) => {
            Box::pin(serve_hyper(
                stream,
                peer,
                router,
                head_deadline,
                listening,
                pending,
            ))
            .await
        }
        // Nothing sent within the handshake timeout, or the socket failed.
        _ => {}
    }
}

/// Serves one connection with hyper's HTTP/1, upgrades included.
async fn serve_hyper(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    head_deadline: Instant,
    listening: CancellationToken,
    pending: Pending,
) {
    // Released when hyper hands over the first complete request head; until then the
    // connection is closed if it has to make room (the token never fires after that, since
    // only pending sockets are asked to yield).
    let yielded = pending.yield_token();
    let pending = Arc::new(std::sync::Mutex::new(Some(pending)));
    // Cancelling this token drops the HTTP connection and its socket: the watcher of an
    // SSE stream does, since a stream whose socket is stuck is never polled again, so it
    // cannot end itself.
    let connection = CancellationToken::new();
    let service = {
        let (router, connection) = (router.clone(), connection.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            drop(pending.lock().unwrap_or_else(|p| p.into_inner()).take());
            req.extensions_mut()
                .insert(ConnectionToken(connection.clone()));
            tower::ServiceExt::oneshot(router.clone(), req)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // What is left of the head's time after the peek, not a second full timeout. (It also
    // bounds idle time between kept-alive requests, as a fresh full timeout.)
    let left = head_deadline.saturating_duration_since(Instant::now());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(left.max(Duration::from_millis(1)));
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        _ = connection.cancelled() => Ok(()),
        _ = yielded.cancelled() => Ok(()),
        _ = listening.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
    }
}

/// What an SSE request starts with.
const SSE_PREFIX: &[u8; 8] = b"GET /sse";

/// Pause after a failed `accept`.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections the kernel holds for the accept loop (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). While every pending slot is taken the loop
/// accepts nothing, so a reconnect storm waits here instead of being refused: 1 500
/// browsers resuming at once need room for all of them, and tokio's default is 1 024.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the gateway's listener, with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted instance can bind while the old one's
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves on `listener` until `shutdown` completes, then drains within the grace period.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Stopped, StartError> {
    run_with(listener, config, shutdown, Hooks::default()).await
}

/// [`run`], with test instrumentation.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hooks: Hooks,
) -> Result<Stopped, StartError> {
    let config = Arc::new(config);
    let verifier = Arc::new(Verifier::new(&config.jwt)?);
    let listening = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (ctx, ops) = wire(&config, verifier, listening.child_token(), &tasks);
    spawn_broker_side(&ctx, &ops, hooks);
    if ctx.verifier.has_jwks() {
        let every = config.jwt.jwks_refresh;
        tasks.spawn(refresh_jwks(
            ctx.verifier.clone(),
            every,
            ctx.clients.clone(),
        ));
    }

    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "realtime-gateway listening");
    let demo_dir = DemoDir(config.demo_dir.clone().map(Arc::new));
    tasks.spawn(accept_loop(Listener {
        listener,
        router: app(ctx.clone(), ops, demo_dir),
        ctx: ctx.clone(),
        tasks: tasks.clone(),
        listening: listening.clone(),
    }));

    shutdown.await;
    Ok(drain(&ctx, &ctx.hub, &tasks, &listening).await)
}

/// The shared state of the transports and of `/readyz` and `/metrics`.
fn wire(
    config: &Arc<Config>,
    verifier: Arc<Verifier>,
    clients: CancellationToken,
    tasks: &TaskTracker,
) -> (Context, Ops) {
    // No rules, no state: connections then get no snapshots either.
    let state = config
        .keeps_state()
        .then(|| Arc::new(StateStore::new(config.state.limits)));
    let hub = Hub::with_state(
        HubLimits {
            max_connections: config.max_connections,
            max_per_user: config.max_connections_per_user,
            queue_len: config.send_queue_len,
            queue_bytes: config.send_queue_bytes,
        },
        state.clone(),
    );
    let revocations = Revocations::new(config.revocation.ttl.as_secs(), revocation::MAX_ENTRIES);
    let ctx = Context {
        config: config.clone(),
        state,
        hub: hub.clone(),
        verifier,
        history: Arc::new(History::new(config.history)),
        revocations: Arc::new(revocations),
        metrics: Arc::new(TransportMetrics::default()),
        draining: Arc::new(AtomicBool::new(false)),
        clients,
        tracker: tasks.clone(),
    };
    let ops = Ops {
        broker_ready: Arc::new(AtomicBool::new(false)),
        revocations_ready: Arc::new(AtomicBool::new(!config.revocation.enabled())),
        revocations: ctx.revocations.clone(),
        draining: ctx.draining.clone(),
        hub,
        transport: ctx.metrics.clone(),
        broker: Arc::new(BrokerMetrics::default()),
    };
    (ctx, ops)
}

/// The consumer and, when revocations are on, the revocation feed, under the clients'
/// token.
fn spawn_broker_side(ctx: &Context, ops: &Ops, hooks: Hooks) {
    let config = &ctx.config;
    let consumer = Consumer {
        config: config.amqp.clone(),
        max_event_bytes: config.max_event_bytes,
        routes: config.routes.clone(),
        dedupe_window: config.dedupe_window,
        hub: ctx.hub.clone(),
        history: ctx.history.clone(),
        metrics: ops.broker.clone(),
        ready: ops.broker_ready.clone(),
        seam_hook: hooks.seam,
        revocation_keys: revocation_keys(config),
        conflate: config.delivery.conflate.clone(),
        state_rules: config.state.rules.clone(),
        state: ctx.state.clone(),
        history_stream: config.history_stream.clone(),
    };
    ctx.tracker.spawn(consumer.run(ctx.clients.clone()));
    if config.revocation.enabled() {
        let feed = RevocationFeed {
            broker: config.amqp.clone(),
            config: config.revocation.clone(),
            revocations: ctx.revocations.clone(),
            hub: ctx.hub.clone(),
            caught_up: ops.revocations_ready.clone(),
        };
        ctx.tracker.spawn(feed.run(ctx.clients.clone()));
    }
}

/// The bindings that carry revocations.
fn revocation_keys(config: &Config) -> Vec<crate::config::Binding> {
    let r = &config.revocation;
    r.user_keys.iter().chain(&r.tenant_keys).cloned().collect()
}

/// Refetches the JWKS periodically, so rotated keys appear without a restart.
async fn refresh_jwks(verifier: Arc<Verifier>, every: Duration, clients: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = clients.cancelled() => break,
            _ = tick.tick() => verifier.refresh_jwks().await,
        }
    }
}

/// Graceful shutdown: not ready, clients closed over the drain window, then the listener;
/// everything within the grace period.
async fn drain(
    ctx: &Context,
    hub: &Hub,
    tasks: &TaskTracker,
    listening: &CancellationToken,
) -> Stopped {
    tracing::info!(
        connections = hub.connections(),
        "shutting down: not ready, closing clients"
    );
    ctx.draining.store(true, Ordering::Release);
    // The listener keeps answering while clients drain (`/readyz` 503, new clients 503
    // `draining`) instead of leaving requests in the backlog.
    ctx.clients.cancel();
    tasks.close();
    let grace = ctx.config.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        hub.emptied().await;
        listening.cancel();
        tasks.wait().await;
    })
    .await;
    listening.cancel();
    let cut_connections = match drained {
        Ok(()) => {
            tracing::info!("shutdown complete");
            0
        }
        Err(_) => {
            let left = hub.connections();
            tracing::warn!(
                grace_secs = grace.as_secs(),
                connections = left,
                tasks = tasks.len(),
                "grace period ran out; remaining connections are cut"
            );
            left.max(1)
        }
    };
    Stopped { cut_connections }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_and_well_formed() {
        let hub = Hub::new(HubLimits {
            max_connections: 1,
            max_per_user: 1,
            queue_len: 1,
            queue_bytes: 1,
        });
        let (transport, broker) = (TransportMetrics::default(), BrokerMetrics::default());
        let revocations = Revocations::new(1, 1);
        let text = Exposition::render(&[hub.metrics(), &transport, &broker, revocations.metrics()]);
        let page = include_str!("../docs/operations.md");
        let mut names = 0;
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = name.split(' ').next().unwrap();
            names += 1;
            assert!(
                page.contains(&format!("`{name}`")),
                "{name} missing from docs/operations.md"
            );
        }
        assert!(names >= 24, "only {names} metrics rendered");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        // Every documented label value appears, including the refusal during shutdown.
        for series in [
            "gateway_connections_refused_total{reason=\"draining\"} 0",
            "gateway_disconnects_total{reason=\"policy\"} 0",
            "gateway_auth_failures_total{reason=\"keys_unavailable\"} 0",
            "gateway_events_dropped_total{reason=\"no_user\"} 0",
            "gateway_resumes_total{outcome=\"resync\"} 0",
            "gateway_connections{transport=\"sse\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing");
        }
    }
}
