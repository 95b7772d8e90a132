//! Transports: what `/ws` and `/sse` share, the admission of a request (token, origin,
//! limits) before any upgrade or stream starts, and the refusals it can answer with.

pub mod deflate;
pub mod lifetime;
pub mod pending;
pub mod raw;
pub mod sse;
pub mod ws;

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, ORIGIN,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthFailure, Identity, TokenSource, Verifier, find_token};
use crate::config::{Config, Shard, shard_of};
use crate::envelope::Event;
use crate::history::{History, Replay};
use crate::hub::{Hub, Interest, LimitReached, Outgoing, Subscription, Transport, conflate};
use crate::revocation::Revocations;
use crate::state::StateStore;
use crate::telemetry::{Collect, Counter, Exposition, Family, Gauge, untrusted};

/// What every transport handler shares; built once by the server.
#[derive(Clone)]
pub struct Context {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Connection registry and fan-out.
    pub hub: Arc<Hub>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Recent events, for resuming clients.
    pub history: Arc<History>,
    /// The latest state per key, for snapshots (`None`: no state is kept).
    pub state: Option<Arc<StateStore>>,
    /// Banned users and suspended tenants.
    pub revocations: Arc<Revocations>,
    /// What the transports count.
    pub metrics: Arc<TransportMetrics>,
    /// True from the first moment of shutdown: new clients are refused.
    pub draining: Arc<AtomicBool>,
    /// Cancelled when the gateway closes its clients (each within the drain window).
    pub clients: CancellationToken,
    /// Tracks connection tasks, which outlive the HTTP server's view of their connection.
    pub tracker: TaskTracker,
}

/// Request extension: the token that ends the request's HTTP connection (hyper path).
#[derive(Clone)]
pub struct ConnectionToken(pub CancellationToken);

crate::label_set! {
    /// Why a connection was not admitted (the `reason` of the refusal's body).
    pub enum Refusal as "reason" {
        /// `GATEWAY_MAX_CONNECTIONS` reached: 503.
        MaxConnections = "max_connections",
        /// `GATEWAY_MAX_CONNECTIONS_PER_USER` reached: 429.
        MaxPerUser = "max_connections_per_user",
        /// Cookie auth from an origin not in `GATEWAY_ALLOWED_ORIGINS`: 403.
        Origin = "origin",
        /// The instance is shutting down: 503, so the client tries another.
        Draining = "draining",
        /// The token's tenant belongs to another shard (`GATEWAY_SHARD`): 421, naming it.
        WrongShard = "wrong_shard",
    }
}

impl From<LimitReached> for Refusal {
    fn from(limit: LimitReached) -> Refusal {
        match limit {
            LimitReached::Connections => Refusal::MaxConnections,
            LimitReached::PerUser => Refusal::MaxPerUser,
        }
    }
}

crate::label_set! {
    /// What a client that reconnected with a last event id got.
    pub enum Resume as "outcome" {
        /// The events it missed.
        Replayed = "replayed",
        /// A resync: the id was unknown, too old, or events may have been lost since.
        Resync = "resync",
    }
}

/// What the transports count; disconnects go to the hub's metrics, where each
/// connection's end is recorded.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Connections not admitted, by reason.
    pub refused: Family<Refusal>,
    /// Refused tokens, including failed in-band refreshes.
    pub auth_failures: Family<AuthFailure>,
    /// Client messages not understood.
    pub client_messages_ignored: Counter,
    /// Resumes, by outcome.
    pub resumes: Family<Resume>,
    /// Failed accepts.
    pub accept_errors: Counter,
    /// Sockets whose first request head is not complete yet.
    pub pending: Gauge,
    /// Pending sockets closed to make room, by reason.
    pub pending_yielded: Family<pending::Yielded>,
    /// Times the accept loop waited because every pending slot was taken.
    pub accept_paused: Counter,
}

impl Collect for TransportMetrics {
    fn collect(&self, o: &mut Exposition) {
        o.family(
            "gateway_connections_refused_total",
            "counter",
            "Connections refused by a limit, origin rule or shutdown, by reason.",
            &self.refused,
        );
        o.family(
            "gateway_auth_failures_total",
            "counter",
            "Refused tokens, by reason.",
            &self.auth_failures,
        );
        o.family(
            "gateway_resumes_total",
            "counter",
            "Clients that reconnected with a last event id, by outcome.",
            &self.resumes,
        );
        o.counter(
            "gateway_client_messages_ignored_total",
            "Client messages the gateway did not understand.",
            &self.client_messages_ignored,
        );
        o.counter(
            "gateway_accept_errors_total",
            "Failed accepts (e.g. out of file descriptors).",
            &self.accept_errors,
        );
        o.gauge(
            "gateway_pending_connections",
            "Accepted sockets that have not sent a complete request head yet.",
            &self.pending,
        );
        o.family(
            "gateway_pending_connections_yielded_total",
            "counter",
            "Pending sockets closed to make room for new ones, by reason.",
            &self.pending_yielded,
        );
        o.counter(
            "gateway_accept_paused_total",
            "Times new sockets waited in the listen backlog because every pending slot was taken.",
            &self.accept_paused,
        );
    }
}

/// `Retry-After` of a refusal that passes (a limit, a drain): long enough for a limit to
/// free up or a load balancer to route elsewhere, short enough not to strand a page.
const RETRY_AFTER_SECS: &str = "5";
/// How long a browser may reuse a CORS preflight answer (`Access-Control-Max-Age`): ten
/// minutes, under Chromium's own cap of two hours.
pub(crate) const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// Why a request is not admitted. Bodies name the reason, never internals or the token.
#[derive(Debug)]
pub enum NotAdmitted {
    /// 401.
    Unauthorized(AuthFailure),
    /// 403, 429 or 503.
    Refused(Refusal),
    /// 400: `/ws` without a WebSocket handshake.
    NotWebSocket,
    /// 400: a `types=` selection that is not a list of valid patterns.
    BadTypes,
    /// 400: a `keys=` selection that is not a list of valid keys.
    BadKeys,
    /// 421: the tenant's shard, which this instance (of another shard) does not serve.
    WrongShard(Shard),
}

impl IntoResponse for NotAdmitted {
    fn into_response(self) -> Response {
        if let NotAdmitted::WrongShard(shard) = self {
            // Where to go, so a client (or whatever routes it) can follow; no Retry-After:
            // retrying here never helps.
            let body = format!(
                r#"{{"error":"wrong_shard","reason":"shard","shard":{},"shards":{}}}"#,
                shard.index, shard.count
            );
            return (
                StatusCode::MISDIRECTED_REQUEST,
                [("content-type", "application/json")],
                body,
            )
                .into_response();
        }
        let (status, error, reason) = match self {
            NotAdmitted::Unauthorized(r) => (StatusCode::UNAUTHORIZED, "unauthorized", r.as_str()),
            NotAdmitted::Refused(r @ Refusal::Origin) => {
                (StatusCode::FORBIDDEN, "forbidden", r.as_str())
            }
            NotAdmitted::Refused(r @ Refusal::MaxPerUser) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                r.as_str(),
            ),
            NotAdmitted::Refused(r @ Refusal::MaxConnections) => {
                (StatusCode::SERVICE_UNAVAILABLE, "over_capacity", r.as_str())
            }
            NotAdmitted::Refused(r @ Refusal::Draining) => {
                (StatusCode::SERVICE_UNAVAILABLE, "draining", r.as_str())
            }
            NotAdmitted::NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected a WebSocket upgrade",
            ),
            NotAdmitted::BadTypes => (StatusCode::BAD_REQUEST, "bad_request", "types"),
            NotAdmitted::BadKeys => (StatusCode::BAD_REQUEST, "bad_request", "keys"),
            NotAdmitted::WrongShard(_) | NotAdmitted::Refused(Refusal::WrongShard) => {
                (StatusCode::MISDIRECTED_REQUEST, "wrong_shard", "shard")
            }
        };
        let body = format!(r#"{{"error":"{error}","reason":"{reason}"}}"#);
        let mut resp = (status, [("content-type", "application/json")], body).into_response();
        let headers = resp.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        resp
    }
}

/// A request that passed every check: its identity and its place in the hub.
pub struct Admitted {
    /// Who the token speaks for.
    pub identity: Identity,
    /// Registration in the hub, made before the upgrade so no event published after the
    /// handshake answer can be missed.
    pub subscription: Subscription,
    /// What to send before live events when the client resumes: missed events, or a
    /// resync. Empty for a fresh connection.
    pub replay: Vec<Outgoing>,
}

/// The `last_event_id` query parameter, if present and not empty.
pub fn last_event_id_param(query: Option<&str>) -> Option<String> {
    query_param(query, "last_event_id")
}

/// The admission of `/ws` and `/sse`, before any upgrade or stream starts: token and
/// origin first (so every unauthenticated request gets 401, whatever else is wrong with
/// it), then the transport's own `handshake` (a WebSocket upgrade, handed back once
/// admitted), the `types=` selection, and the limits as the connection registers.
pub async fn admit<H>(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
    transport: Transport,
    last_event_id: Option<String>,
    handshake: Result<H, NotAdmitted>,
) -> Result<(Admitted, H), NotAdmitted> {
    let identity = authenticate(ctx, headers, query, transport).await?;
    let handshake = handshake?;
    let interest = interest_param(ctx, query)?;
    let snapshot = query_param(query, "snapshot").is_some_and(|v| v == "1" || v == "true");
    if last_event_id.is_some() {
        // A resuming client waits (at most the handshake timeout) for an instance that
        // has just started to fill its history, rather than getting `resync` for what the
        // backfill brings.
        ctx.history.wait_filled(ctx.config.handshake_timeout).await;
    }
    let admitted = register(ctx, identity, transport, last_event_id, interest, snapshot)?;
    Ok((admitted, handshake))
}

/// The first non-empty value of query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The `types=` and `keys=` query parameters: comma-separated event-type patterns and
/// state keys the client wants (`None`: everything its token allows). A bad selection is
/// a 400, before any upgrade.
fn interest_param(ctx: &Context, query: Option<&str>) -> Result<Option<Interest>, NotAdmitted> {
    let list = |name| {
        query_param(query, name).map(|raw| {
            raw.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
    };
    let max = ctx.config.delivery.max_interest_patterns;
    let (types, keys) = (list("types"), list("keys"));
    let refuse = |why: String, refusal| {
        ctx.metrics.client_messages_ignored.inc();
        tracing::info!(reason = %untrusted(&why), "refused: bad selection");
        refusal
    };
    let interest = match &types {
        Some(patterns) => {
            Some(Interest::new(patterns, max).map_err(|why| refuse(why, NotAdmitted::BadTypes))?)
        }
        None => None,
    };
    match keys {
        None => Ok(interest),
        Some(keys) => interest
            .unwrap_or_else(Interest::everything)
            .watch(&keys, max)
            .map(Some)
            .map_err(|why| refuse(why, NotAdmitted::BadKeys)),
    }
}

/// Token and origin checks, and a 503 while draining: everything short of registering.
pub async fn authenticate(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
    transport: Transport,
) -> Result<Identity, NotAdmitted> {
    let Some((token, source)) = find_token(headers, query, &ctx.config.jwt.cookie) else {
        return Err(refuse_auth(ctx, AuthFailure::Missing, transport));
    };
    let identity = match ctx.verifier.verify(&token).await {
        Ok(id) if ctx.revocations.is_revoked(&id) => {
            return Err(refuse_auth(ctx, AuthFailure::Revoked, transport));
        }
        Ok(id) => id,
        Err(reason) => return Err(refuse_auth(ctx, reason, transport)),
    };
    // A cookie rides along with any page's request, so only listed origins may use it
    // (cross-site WebSocket hijacking). Requests without Origin are not from a browser
    // page on another site.
    if source == TokenSource::Cookie
        && let Some(origin) = headers.get(ORIGIN)
        && !origin_allowed(ctx, origin)
    {
        ctx.metrics.refused.inc(Refusal::Origin);
        tracing::info!(transport = transport.as_str(), origin = %untrusted(origin), "refused: cookie auth from a disallowed origin");
        return Err(NotAdmitted::Refused(Refusal::Origin));
    }
    if ctx.draining.load(Ordering::Acquire) {
        ctx.metrics.refused.inc(Refusal::Draining);
        return Err(NotAdmitted::Refused(Refusal::Draining));
    }
    if let Some(own) = ctx.config.shard
        && !own.owns(&identity.tenant)
    {
        let theirs = Shard {
            index: shard_of(&identity.tenant, own.count),
            count: own.count,
        };
        ctx.metrics.refused.inc(Refusal::WrongShard);
        tracing::info!(transport = transport.as_str(), shard = %own, tenant_shard = %theirs, "refused: tenant of another shard");
        return Err(NotAdmitted::WrongShard(theirs));
    }
    Ok(identity)
}

/// Registers an authenticated client in the hub and works out its replay.
fn register(
    ctx: &Context,
    identity: Identity,
    transport: Transport,
    last_event_id: Option<String>,
    interest: Option<Interest>,
    snapshot: bool,
) -> Result<Admitted, NotAdmitted> {
    let subscription = ctx
        .hub
        .subscribe(&identity.tenant, &identity.user, transport, interest)
        .map_err(|limit| {
            let r = Refusal::from(limit);
            ctx.metrics.refused.inc(r);
            tracing::info!(
                transport = transport.as_str(),
                tenant = %untrusted(&identity.tenant),
                user = %untrusted(&identity.user),
                reason = r.as_str(),
                "connection refused"
            );
            NotAdmitted::Refused(r)
        })?;
    let mut subscription = subscription;
    // Checked after registering: a revocation recorded meanwhile is either seen here, or
    // its kick finds this connection in the hub.
    if ctx.revocations.is_revoked(&identity) {
        drop(subscription);
        return Err(refuse_auth(ctx, AuthFailure::Revoked, transport));
    }
    // Registered first, history read second: an event arriving in between is in both,
    // and the live copy is skipped.
    // A snapshot when asked for, and after every resync (the page then needs no REST call
    // to recover). A served resume that asks for one gets it after its replay (a page that
    // mounted a job while offline has nothing of it yet): the snapshot is the newest
    // state, so nothing replayed after it could take a job back.
    let asked = snapshot && subscription.has_state();
    let replay = match last_event_id {
        None if asked => vec![subscription.snapshot()],
        None => Vec::new(),
        Some(id) => match ctx.history.since(&identity.tenant, &identity.user, &id) {
            Replay::Events { events, through } => {
                ctx.metrics.resumes.inc(Resume::Replayed);
                subscription.skip_through(through);
                let mut replay = replay_for(&subscription, events);
                if asked {
                    replay.push(subscription.snapshot());
                }
                replay
            }
            Replay::Resync => {
                ctx.metrics.resumes.inc(Resume::Resync);
                ctx.hub.metrics().resyncs.inc();
                let mut replay = vec![Outgoing::Resync];
                if subscription.has_state() {
                    replay.push(subscription.snapshot());
                }
                replay
            }
        },
    };
    Ok(Admitted {
        identity,
        subscription,
        replay,
    })
}

/// A replay as the connection's queue would have delivered it: only the selected types,
/// and superseded progress conflated away.
fn replay_for(subscription: &Subscription, events: Vec<Arc<Event>>) -> Vec<Outgoing> {
    let interest = subscription.interest();
    let wanted = events
        .into_iter()
        .filter(|e| interest.as_ref().is_none_or(|i| i.wants(e)))
        .map(Outgoing::Event)
        .collect();
    let (kept, conflated) = conflate(wanted);
    if conflated > 0 {
        subscription.count_conflated(conflated);
    }
    kept
}

fn refuse_auth(ctx: &Context, reason: AuthFailure, transport: Transport) -> NotAdmitted {
    ctx.metrics.auth_failures.inc(reason);
    tracing::info!(
        transport = transport.as_str(),
        reason = reason.as_str(),
        "token refused"
    );
    NotAdmitted::Unauthorized(reason)
}

fn origin_allowed(ctx: &Context, origin: &HeaderValue) -> bool {
    origin.to_str().is_ok_and(|o| {
        ctx.config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(o))
    })
}

/// CORS headers, so a studio page on another origin can read `/sse` with `EventSource`.
/// A listed origin may send credentials (the cookie), so it is echoed with
/// `Allow-Credentials`; any other origin gets `*`, which browsers honour only for requests
/// without credentials: a token in the URL is usable from anywhere (the token is the
/// authorization), a cookie only from the listed origins.
pub fn cors_headers(ctx: &Context, request: &HeaderMap, response: &mut HeaderMap) {
    response.append(VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = request.get(ORIGIN) else {
        return;
    };
    if origin_allowed(ctx, origin) {
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else {
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
}

/// `GET /auth/check`: what a `/ws` or `/sse` request with the same token would get, without
/// connecting: 204, or the refusal (status, JSON reason, `Retry-After`) it would meet.
/// Browsers hide the status of a refused WebSocket handshake; this is how a client learns
/// whether to fetch a new token, wait, or fall back to SSE. Counted like a connection
/// attempt, so it is no cheaper to abuse than one.
pub async fn check(
    axum::extract::State(ctx): axum::extract::State<Context>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let verdict = match authenticate(&ctx, &headers, query.as_deref(), Transport::Ws).await {
        Ok(id) => ctx
            .hub
            .would_admit(&id.tenant, &id.user)
            .map_err(|limit| NotAdmitted::Refused(limit.into())),
        Err(r) => Err(r),
    };
    let mut resp = match verdict {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    };
    // Read from any origin without credentials: the answer is about the token the
    // caller already holds.
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        axum::http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `OPTIONS /auth/check`: the preflight for a cross-origin probe with `Authorization`.
pub async fn check_preflight() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization"),
    );
    h.insert(
        axum::http::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
    );
    resp
}

#[cfg(test)]
mod tests {
    use axum::http::header::COOKIE;

    use super::*;
    use crate::config::Parsed;
    use crate::envelope::Event;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn context(args: &[&str]) -> Context {
        let mut all = vec!["--jwt-secret", SECRET];
        all.extend_from_slice(args);
        let Ok(Parsed::Run(config)) = Config::parse(all, |_| None) else {
            panic!("test config");
        };
        let config = Arc::new(*config);
        Context {
            state: None,
            hub: Hub::new(crate::hub::HubLimits {
                max_connections: config.max_connections,
                max_per_user: config.max_connections_per_user,
                queue_len: config.send_queue_len,
                queue_bytes: config.send_queue_bytes,
            }),
            verifier: Arc::new(Verifier::new(&config.jwt).unwrap()),
            history: Arc::new(History::new(config.history)),
            revocations: Arc::new(Revocations::new(3600, 100)),
            metrics: Arc::new(TransportMetrics::default()),
            draining: Arc::new(AtomicBool::new(false)),
            clients: CancellationToken::new(),
            tracker: TaskTracker::new(),
            config,
        }
    }

    fn token(user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = serde_json::json!({"sub": user, "tenant_id": "t", "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn bearer(user: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("Bearer {}", token(user));
        h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    async fn status(ctx: &Context, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        match authenticate(ctx, headers, None, Transport::Sse).await {
            Ok(_) => Ok(()),
            Err(refusal) => {
                let resp = refusal.into_response();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
                Err((status, String::from_utf8(body.to_vec()).unwrap()))
            }
        }
    }

    #[tokio::test]
    async fn refusals_have_their_status_reason_and_label() {
        let ctx = context(&["--allowed-origins", "https://studio.example"]);
        assert!(status(&ctx, &bearer("u")).await.is_ok());

        let (code, body) = status(&ctx, &HeaderMap::new()).await.unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(body, r#"{"error":"unauthorized","reason":"missing"}"#);
        assert_eq!(ctx.metrics.auth_failures.get(AuthFailure::Missing), 1);

        let mut cookie = HeaderMap::new();
        cookie.insert(
            COOKIE,
            format!("access_token={}", token("u")).parse().unwrap(),
        );
        cookie.insert(ORIGIN, "https://evil.example".parse().unwrap());
        let (code, _) = status(&ctx, &cookie).await.unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(ctx.metrics.refused.get(Refusal::Origin), 1);

        ctx.draining.store(true, Ordering::Release);
        let (code, body) = status(&ctx, &bearer("u")).await.unwrap_err();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");
        assert_eq!(ctx.metrics.refused.get(Refusal::Draining), 1);
        assert_eq!(ctx.metrics.refused.get(Refusal::MaxConnections), 0);
    }

    #[tokio::test]
    async fn resuming_replays_known_ids_and_resyncs_unknown_ones() {
        let ctx = context(&[]);
        let body = |id: &str| {
            serde_json::to_vec(&serde_json::json!({
                "event_id": id, "event_type": "x", "tenant_id": "t", "user_id": "u"
            }))
            .unwrap()
        };
        for id in ["1", "2", "3"] {
            ctx.history
                .append(Arc::new(Event::parse(body(id), 4096).unwrap()));
        }
        let identity = |user: &str| Identity {
            tenant: "t".into(),
            user: user.into(),
            expires_at: u64::MAX,
            issued_at: None,
        };
        let replayed = register(
            &ctx,
            identity("u"),
            Transport::Ws,
            Some("1".into()),
            None,
            false,
        )
        .unwrap()
        .replay;
        assert_eq!(crate::hub::testing::labels(&replayed), ["2", "3"]);
        let unknown = register(
            &ctx,
            identity("u"),
            Transport::Ws,
            Some("9".into()),
            None,
            false,
        );
        assert!(matches!(unknown.unwrap().replay[..], [Outgoing::Resync]));
        // Another user of the tenant cannot resume from u's events.
        let foreign = register(
            &ctx,
            identity("v"),
            Transport::Ws,
            Some("1".into()),
            None,
            false,
        );
        assert!(matches!(foreign.unwrap().replay[..], [Outgoing::Resync]));
        assert_eq!(ctx.metrics.resumes.get(Resume::Replayed), 1);
        assert_eq!(ctx.metrics.resumes.get(Resume::Resync), 2);
    }
}
