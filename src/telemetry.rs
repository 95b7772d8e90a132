//! Telemetry: the Prometheus metrics every other module counts into, and log setup.
//!
//! Metrics are plain atomics with fixed label sets: the fan-out bumps them per delivery,
//! so they must cost no more than an uncontended add, and `/metrics` renders them by hand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::config::{Config, LogFormat};
use crate::envelope::Rejection;

/// Client transports, a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`.
    Ws,
    /// `GET /sse`.
    Sse,
}

impl Transport {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

/// Why a token was refused; the names are metric labels and the `reason` of a 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token in header, query or cookie.
    Missing,
    /// Not three base64url parts with a JSON header.
    Malformed,
    /// `none`, or an algorithm no configured key has.
    Algorithm,
    /// `kid` not in the JWKS (after a bounded refetch).
    UnknownKey,
    /// Signature does not verify.
    Signature,
    /// `exp` passed (beyond leeway).
    Expired,
    /// `nbf` in the future (beyond leeway).
    NotYetValid,
    /// `iss` differs from `GATEWAY_JWT_ISSUER`.
    Issuer,
    /// `aud` differs from `GATEWAY_JWT_AUDIENCE`.
    Audience,
    /// `sub`, the tenant claim or `exp` missing or not a non-empty string / number.
    Claims,
    /// The JWKS could not be fetched yet.
    KeysUnavailable,
}

impl AuthFailure {
    /// Every variant, for metrics.
    pub const ALL: [AuthFailure; 11] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Algorithm,
        AuthFailure::UnknownKey,
        AuthFailure::Signature,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Issuer,
        AuthFailure::Audience,
        AuthFailure::Claims,
        AuthFailure::KeysUnavailable,
    ];

    /// Metric label and the `reason` field of a 401 body.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Signature => "signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Audience => "audience",
            AuthFailure::Claims => "claims",
            AuthFailure::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Why a connection was refused or closed by the gateway (not by the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `GATEWAY_MAX_CONNECTIONS` reached: 503.
    MaxConnections,
    /// `GATEWAY_MAX_CONNECTIONS_PER_USER` reached: 429.
    MaxPerUser,
    /// Cookie auth from an origin not in `GATEWAY_ALLOWED_ORIGINS`: 403.
    Origin,
}

impl Refusal {
    /// Every variant, for metrics.
    pub const ALL: [Refusal; 3] = [
        Refusal::MaxConnections,
        Refusal::MaxPerUser,
        Refusal::Origin,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPerUser => "max_connections_per_user",
            Refusal::Origin => "origin",
        }
    }
}

/// Why the gateway ended a live connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// Its send queue filled up.
    SlowClient,
    /// Its token expired.
    TokenExpired,
    /// No pong or message within the idle timeout.
    Idle,
    /// Sent a message over the size limit.
    MessageTooBig,
    /// Graceful shutdown.
    Shutdown,
}

impl Disconnect {
    /// Every variant, for metrics.
    pub const ALL: [Disconnect; 5] = [
        Disconnect::SlowClient,
        Disconnect::TokenExpired,
        Disconnect::Idle,
        Disconnect::MessageTooBig,
        Disconnect::Shutdown,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::SlowClient => "slow_client",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::Idle => "idle",
            Disconnect::MessageTooBig => "message_too_big",
            Disconnect::Shutdown => "shutdown",
        }
    }
}

/// All counters and gauges of one gateway instance.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: [AtomicI64; 2],
    connections_total: [AtomicU64; 2],
    events_received: AtomicU64,
    events_dropped: [AtomicU64; Rejection::ALL.len()],
    events_unrouted: AtomicU64,
    deliveries: [AtomicU64; 2],
    deliveries_dropped_slow: AtomicU64,
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    disconnects: [AtomicU64; Disconnect::ALL.len()],
    broker_connected: AtomicI64,
    broker_reconnects: AtomicU64,
    client_messages_ignored: AtomicU64,
    accept_errors: AtomicU64,
}

impl Metrics {
    /// A connection opened.
    pub fn connection_opened(&self, t: Transport) {
        self.connections[t.idx()].fetch_add(1, Relaxed);
        self.connections_total[t.idx()].fetch_add(1, Relaxed);
    }
    /// A connection closed.
    pub fn connection_closed(&self, t: Transport) {
        self.connections[t.idx()].fetch_sub(1, Relaxed);
    }
    /// Open connections of one transport.
    pub fn open_connections(&self, t: Transport) -> i64 {
        self.connections[t.idx()].load(Relaxed)
    }
    /// A message arrived from the broker.
    pub fn event_received(&self) {
        self.events_received.fetch_add(1, Relaxed);
    }
    /// A message was dropped as undeliverable.
    pub fn event_dropped(&self, r: Rejection) {
        let i = Rejection::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.events_dropped[i].fetch_add(1, Relaxed);
    }
    /// A valid event had no connected recipient on this instance.
    pub fn event_unrouted(&self) {
        self.events_unrouted.fetch_add(1, Relaxed);
    }
    /// `n` events were handed to connections of transport `t`.
    pub fn delivered(&self, t: Transport, n: u64) {
        self.deliveries[t.idx()].fetch_add(n, Relaxed);
    }
    /// An event could not be queued for a connection because its queue was full.
    pub fn delivery_dropped_slow_client(&self) {
        self.deliveries_dropped_slow.fetch_add(1, Relaxed);
    }
    /// A token was refused.
    pub fn auth_failed(&self, r: AuthFailure) {
        let i = AuthFailure::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.auth_failures[i].fetch_add(1, Relaxed);
    }
    /// A connection was refused by a limit or origin rule.
    pub fn refused(&self, r: Refusal) {
        let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.refusals[i].fetch_add(1, Relaxed);
    }
    /// The gateway ended a connection.
    pub fn disconnected(&self, d: Disconnect) {
        let i = Disconnect::ALL.iter().position(|x| *x == d).unwrap_or(0);
        self.disconnects[i].fetch_add(1, Relaxed);
    }
    /// Broker link state changed.
    pub fn broker_connected(&self, up: bool) {
        self.broker_connected.store(i64::from(up), Relaxed);
    }
    /// The broker link was (re)established after a failure.
    pub fn broker_reconnected(&self) {
        self.broker_reconnects.fetch_add(1, Relaxed);
    }
    /// A client sent a message the gateway does not understand.
    pub fn client_message_ignored(&self) {
        self.client_messages_ignored.fetch_add(1, Relaxed);
    }

    /// `accept` failed (usually: out of file descriptors).
    pub fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let transports = [Transport::Ws, Transport::Sse];

        header(
            &mut out,
            "gateway_connections",
            "gauge",
            "Open client connections.",
        );
        for t in transports {
            let v = self.connections[t.idx()].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_connections{{transport=\"{}\"}} {v}",
                t.as_str()
            );
        }
        header(
            &mut out,
            "gateway_connections_accepted_total",
            "counter",
            "Client connections accepted.",
        );
        for t in transports {
            let v = self.connections_total[t.idx()].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_connections_accepted_total{{transport=\"{}\"}} {v}",
                t.as_str()
            );
        }
        header(
            &mut out,
            "gateway_events_received_total",
            "counter",
            "Messages received from the broker.",
        );
        let _ = writeln!(
            out,
            "gateway_events_received_total {}",
            self.events_received.load(Relaxed)
        );
        header(
            &mut out,
            "gateway_events_dropped_total",
            "counter",
            "Messages not delivered to anyone, by reason.",
        );
        for (i, r) in Rejection::ALL.iter().enumerate() {
            let v = self.events_dropped[i].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_events_dropped_total{{reason=\"{}\"}} {v}",
                r.as_str()
            );
        }
        header(
            &mut out,
            "gateway_events_unrouted_total",
            "counter",
            "Valid events with no recipient connected to this instance.",
        );
        let _ = writeln!(
            out,
            "gateway_events_unrouted_total {}",
            self.events_unrouted.load(Relaxed)
        );
        header(
            &mut out,
            "gateway_events_delivered_total",
            "counter",
            "Events handed to client connections (one per recipient).",
        );
        for t in transports {
            let v = self.deliveries[t.idx()].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_events_delivered_total{{transport=\"{}\"}} {v}",
                t.as_str()
            );
        }
        header(
            &mut out,
            "gateway_deliveries_dropped_total",
            "counter",
            "Per-connection deliveries dropped, by reason.",
        );
        let _ = writeln!(
            out,
            "gateway_deliveries_dropped_total{{reason=\"slow_client\"}} {}",
            self.deliveries_dropped_slow.load(Relaxed)
        );
        header(
            &mut out,
            "gateway_auth_failures_total",
            "counter",
            "Refused tokens, by reason.",
        );
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            let v = self.auth_failures[i].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_auth_failures_total{{reason=\"{}\"}} {v}",
                r.as_str()
            );
        }
        header(
            &mut out,
            "gateway_connections_refused_total",
            "counter",
            "Connections refused by limits or origin rules.",
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let v = self.refusals[i].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_connections_refused_total{{reason=\"{}\"}} {v}",
                r.as_str()
            );
        }
        header(
            &mut out,
            "gateway_disconnects_total",
            "counter",
            "Connections ended by the gateway, by reason.",
        );
        for (i, d) in Disconnect::ALL.iter().enumerate() {
            let v = self.disconnects[i].load(Relaxed);
            let _ = writeln!(
                out,
                "gateway_disconnects_total{{reason=\"{}\"}} {v}",
                d.as_str()
            );
        }
        header(
            &mut out,
            "gateway_client_messages_ignored_total",
            "counter",
            "Client messages the gateway did not understand.",
        );
        let _ = writeln!(
            out,
            "gateway_client_messages_ignored_total {}",
            self.client_messages_ignored.load(Relaxed)
        );
        header(
            &mut out,
            "gateway_broker_connected",
            "gauge",
            "1 while the broker consumer is running.",
        );
        let _ = writeln!(
            out,
            "gateway_broker_connected {}",
            self.broker_connected.load(Relaxed)
        );
        header(
            &mut out,
            "gateway_broker_reconnects_total",
            "counter",
            "Broker links re-established after a failure.",
        );
        let _ = writeln!(
            out,
            "gateway_broker_reconnects_total {}",
            self.broker_reconnects.load(Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Installs the global log subscriber. Call once, from `main`; tests leave logging alone
/// or install their own.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text_with_every_label() {
        let m = Metrics::default();
        m.connection_opened(Transport::Ws);
        m.event_dropped(Rejection::NotJson);
        m.auth_failed(AuthFailure::Expired);
        let text = m.render();
        assert!(text.contains("gateway_connections{transport=\"ws\"} 1"));
        assert!(text.contains("gateway_connections{transport=\"sse\"} 0"));
        assert!(text.contains("gateway_events_dropped_total{reason=\"not_json\"} 1"));
        assert!(text.contains("gateway_auth_failures_total{reason=\"expired\"} 1"));
        let readme = include_str!("../README.md");
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = name.split(' ').next().unwrap();
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} missing from README"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
