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
    /// The instance is shutting down: 503, so the client tries another.
    Draining,
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
            Refusal::Draining => "draining",
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
    /// An in-band refresh named another user or tenant.
    Policy,
}

impl Disconnect {
    /// Every variant, for metrics.
    pub const ALL: [Disconnect; 6] = [
        Disconnect::SlowClient,
        Disconnect::TokenExpired,
        Disconnect::Idle,
        Disconnect::MessageTooBig,
        Disconnect::Shutdown,
        Disconnect::Policy,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::SlowClient => "slow_client",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::Idle => "idle",
            Disconnect::MessageTooBig => "message_too_big",
            Disconnect::Shutdown => "shutdown",
            Disconnect::Policy => "policy",
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
    duplicates_dropped: AtomicU64,
    resyncs: AtomicU64,
    queue_depth_hwm: AtomicU64,
    queue_bytes_hwm: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    history_events: AtomicU64,
    history_bytes: AtomicU64,
    resumes: [AtomicU64; 2],
}

/// Upper bounds of the latency histogram, in microseconds: from event_time (set by the
/// producer) to the hand-off into connection queues.
const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

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

    /// A redelivered or republished `event_id` was dropped.
    pub fn duplicate_dropped(&self) {
        self.duplicates_dropped.fetch_add(1, Relaxed);
    }

    /// `n` connections were sent the resync signal.
    pub fn resyncs_sent(&self, n: u64) {
        self.resyncs.fetch_add(n, Relaxed);
    }

    /// A connection queue reached this depth (events and bytes); keeps the maximum.
    pub fn queue_depth(&self, events: usize, bytes: usize) {
        self.queue_depth_hwm.fetch_max(events as u64, Relaxed);
        self.queue_bytes_hwm.fetch_max(bytes as u64, Relaxed);
    }

    /// Size of the resume history.
    pub fn history_size(&self, events: usize, bytes: usize) {
        self.history_events.store(events as u64, Relaxed);
        self.history_bytes.store(bytes as u64, Relaxed);
    }

    /// A client asked to resume; `replayed` tells whether it got its missed events (or a
    /// resync).
    pub fn resumed(&self, replayed: bool) {
        self.resumes[usize::from(!replayed)].fetch_add(1, Relaxed);
    }

    /// One event's age at hand-off. Negative ages (producer clock ahead) count as zero.
    pub fn observe_latency_us(&self, us: i64) {
        let us = us.max(0) as u64;
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len() - 1);
        if us <= LATENCY_BUCKETS_US[LATENCY_BUCKETS_US.len() - 1] {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(us, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        let transports = [Transport::Ws, Transport::Sse];
        let by_transport =
            |a: &[AtomicU64; 2]| transports.map(|t| (t.as_str(), a[t.idx()].load(Relaxed)));

        let open = transports.map(|t| {
            (
                t.as_str(),
                self.connections[t.idx()].load(Relaxed).max(0) as u64,
            )
        });
        labeled(
            o,
            "gateway_connections",
            "gauge",
            "Open client connections.",
            "transport",
            &open,
        );
        labeled(
            o,
            "gateway_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            "transport",
            &by_transport(&self.connections_total),
        );
        scalar(
            o,
            "gateway_events_received_total",
            "counter",
            "Messages received from the broker.",
            &self.events_received,
        );
        labeled(
            o,
            "gateway_events_dropped_total",
            "counter",
            "Messages not delivered to anyone, by reason.",
            "reason",
            &pairs(&Rejection::ALL.map(Rejection::as_str), &self.events_dropped),
        );
        scalar(
            o,
            "gateway_events_unrouted_total",
            "counter",
            "Valid events with no recipient connected to this instance.",
            &self.events_unrouted,
        );
        scalar(
            o,
            "gateway_duplicates_dropped_total",
            "counter",
            "Events dropped because their event_id was seen recently.",
            &self.duplicates_dropped,
        );
        labeled(
            o,
            "gateway_events_delivered_total",
            "counter",
            "Events handed to client connections (one per recipient).",
            "transport",
            &by_transport(&self.deliveries),
        );
        labeled(
            o,
            "gateway_deliveries_dropped_total",
            "counter",
            "Per-connection deliveries refused, by reason.",
            "reason",
            &[("slow_client", self.deliveries_dropped_slow.load(Relaxed))],
        );
        scalar(
            o,
            "gateway_history_events",
            "gauge",
            "Events held for resuming clients.",
            &self.history_events,
        );
        scalar(
            o,
            "gateway_history_bytes",
            "gauge",
            "Bytes of envelopes held for resuming clients.",
            &self.history_bytes,
        );
        let resumes = [
            ("replayed", self.resumes[0].load(Relaxed)),
            ("resync", self.resumes[1].load(Relaxed)),
        ];
        labeled(
            o,
            "gateway_resumes_total",
            "counter",
            "Clients that reconnected with a last event id, by outcome.",
            "outcome",
            &resumes,
        );
        scalar(
            o,
            "gateway_resyncs_sent_total",
            "counter",
            "Resync signals queued to connections.",
            &self.resyncs,
        );
        labeled(
            o,
            "gateway_auth_failures_total",
            "counter",
            "Refused tokens, by reason.",
            "reason",
            &pairs(
                &AuthFailure::ALL.map(AuthFailure::as_str),
                &self.auth_failures,
            ),
        );
        labeled(
            o,
            "gateway_connections_refused_total",
            "counter",
            "Connections refused by limits or origin rules.",
            "reason",
            &pairs(&Refusal::ALL.map(Refusal::as_str), &self.refusals),
        );
        labeled(
            o,
            "gateway_disconnects_total",
            "counter",
            "Connections ended by the gateway, by reason.",
            "reason",
            &pairs(&Disconnect::ALL.map(Disconnect::as_str), &self.disconnects),
        );
        scalar(
            o,
            "gateway_client_messages_ignored_total",
            "counter",
            "Client messages the gateway did not understand.",
            &self.client_messages_ignored,
        );
        scalar(
            o,
            "gateway_accept_errors_total",
            "counter",
            "Failed accepts (e.g. out of file descriptors).",
            &self.accept_errors,
        );
        scalar(
            o,
            "gateway_send_queue_high_water_events",
            "gauge",
            "Deepest any connection's send queue has been, in events.",
            &self.queue_depth_hwm,
        );
        scalar(
            o,
            "gateway_send_queue_high_water_bytes",
            "gauge",
            "Fullest any connection's send queue has been, in bytes.",
            &self.queue_bytes_hwm,
        );
        header(
            o,
            "gateway_broker_connected",
            "gauge",
            "1 while the broker consumer is running.",
        );
        let _ = writeln!(
            o,
            "gateway_broker_connected {}",
            self.broker_connected.load(Relaxed)
        );
        scalar(
            o,
            "gateway_broker_reconnects_total",
            "counter",
            "Broker links re-established after a failure.",
            &self.broker_reconnects,
        );

        header(
            o,
            "gateway_event_latency_seconds",
            "histogram",
            "From the envelope's event_time to the hand-off into connection queues.",
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                o,
                "gateway_event_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            o,
            "gateway_event_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(o, "gateway_event_latency_seconds_sum {sum}");
        let _ = writeln!(o, "gateway_event_latency_seconds_count {count}");
        out
    }
}

fn pairs<const N: usize>(
    labels: &[&'static str; N],
    values: &[AtomicU64; N],
) -> [(&'static str, u64); N] {
    std::array::from_fn(|i| (labels[i], values[i].load(Relaxed)))
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: &AtomicU64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {}", value.load(Relaxed));
}

fn labeled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) {
    header(out, name, kind, help);
    for (l, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Installs the global log subscriber. Call once, from `main`; tests leave logging alone
/// or install their own.
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::new(&config.log);
    // Colour codes only for a person at a terminal; in files, pipes and log collectors
    // they are noise around every field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
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
        m.observe_latency_us(1_500);
        m.observe_latency_us(-5);
        m.observe_latency_us(60_000_000);
        let text = m.render();
        assert!(text.contains("gateway_event_latency_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("gateway_event_latency_seconds_bucket{le=\"0.0025\"} 2"));
        assert!(text.contains("gateway_event_latency_seconds_bucket{le=\"10\"} 2"));
        assert!(text.contains("gateway_event_latency_seconds_bucket{le=\"+Inf\"} 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
