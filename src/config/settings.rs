//! The settings table: one row per setting, the single source of its flag, variable,
//! default and `--help` line, and of the [`Key`] that code looks it up by.

use std::collections::HashMap;

/// One row of the settings table.
pub struct Setting {
    /// The typed name code uses for this row.
    pub key: Key,
    /// Flag name (`--amqp-url`).
    pub name: &'static str,
    /// Environment variable read when the flag is absent.
    pub env: &'static str,
    /// Default, as the user would type it; `None` means "unset". The only copy of it:
    /// code that needs the value reads the setting like any other.
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

macro_rules! settings {
    ($( $key:ident, $name:literal, $env:literal, $default:expr, $help:literal; )*) => {
        /// A setting, by type rather than by string, so a misspelt lookup does not compile.
        /// Variants are in table order: a key's discriminant is its row in [`SETTINGS`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Key {
            $( #[doc = concat!("`--", $name, "`, `", $env, "`")] $key, )*
        }

        /// Every setting the gateway understands, in `--help` order.
        pub static SETTINGS: &[Setting] = &[
            $( Setting { key: Key::$key, name: $name, env: $env, default: $default, help: $help }, )*
        ];
    };
}

settings! {
    Config, "config", "GATEWAY_CONFIG", None, "TOML file with settings and routes; flags and variables override its settings";
    Listen, "listen", "GATEWAY_LISTEN", Some("0.0.0.0:8080"), "listen address (one listener for /ws, /sse, /healthz, /readyz, /metrics)";
    AmqpUrl, "amqp-url", "GATEWAY_AMQP_URL", Some("amqp://guest:guest@127.0.0.1:5672/%2f"), "RabbitMQ URL, or a comma-separated list of the URLs of one cluster's nodes";
    AmqpUrlFile, "amqp-url-file", "GATEWAY_AMQP_URL_FILE", None, "file holding GATEWAY_AMQP_URL (a mounted secret; trailing newline trimmed)";
    AmqpTlsCaFile, "amqp-tls-ca-file", "GATEWAY_AMQP_TLS_CA_FILE", None, "PEM CA certificate(s) trusted for amqps:// besides the system roots";
    AmqpTlsCertFile, "amqp-tls-cert-file", "GATEWAY_AMQP_TLS_CERT_FILE", None, "PEM client certificate (chain) presented over amqps://";
    AmqpTlsKeyFile, "amqp-tls-key-file", "GATEWAY_AMQP_TLS_KEY_FILE", None, "PEM private key of the client certificate";
    AmqpHeartbeatSecs, "amqp-heartbeat-secs", "GATEWAY_AMQP_HEARTBEAT_SECS", Some("15"), "AMQP heartbeat proposed to the broker (a URL's ?heartbeat= wins)";
    AmqpExchange, "amqp-exchange", "GATEWAY_AMQP_EXCHANGE", Some("flatrender.events"), "topic exchange to bind to (declared durable topic if absent)";
    AmqpBindings, "amqp-bindings", "GATEWAY_AMQP_BINDINGS", Some("render.job.#,notification.#"), "comma-separated binding keys; `exchange:key` binds to another exchange";
    AmqpExchangeDeclare, "amqp-exchange-declare", "GATEWAY_AMQP_EXCHANGE_DECLARE", Some("declare"), "`declare` (durable topic if absent) or `passive` (must exist)";
    AmqpQueue, "amqp-queue", "GATEWAY_AMQP_QUEUE", None, "this instance's queue name (default: realtime-gateway.<host>.<random>)";
    AmqpPrefetch, "amqp-prefetch", "GATEWAY_AMQP_PREFETCH", Some("512"), "unacknowledged deliveries the broker may push at once";
    AmqpQueueExpiresSecs, "amqp-queue-expires-secs", "GATEWAY_AMQP_QUEUE_EXPIRES_SECS", Some("30"), "how long the queue outlives a lost broker link (x-expires)";
    AmqpQueueMaxLength, "amqp-queue-max-length", "GATEWAY_AMQP_QUEUE_MAX_LENGTH", Some("100000"), "most messages the queue holds while nobody consumes (oldest dropped)";
    AmqpQueueMaxBytes, "amqp-queue-max-bytes", "GATEWAY_AMQP_QUEUE_MAX_BYTES", Some("67108864"), "most bytes the queue holds while nobody consumes (oldest dropped)";
    AmqpReconnectMaxSecs, "amqp-reconnect-max-secs", "GATEWAY_AMQP_RECONNECT_MAX_SECS", Some("30"), "cap of the broker reconnect backoff";
    JwtSecret, "jwt-secret", "GATEWAY_JWT_SECRET", None, "HS256 secret, at least 32 bytes";
    JwtSecretFile, "jwt-secret-file", "GATEWAY_JWT_SECRET_FILE", None, "file holding GATEWAY_JWT_SECRET (a mounted secret; trailing newline trimmed)";
    JwtPublicKeyFile, "jwt-public-key-file", "GATEWAY_JWT_PUBLIC_KEY_FILE", None, "PEM public key (RSA for RS256, P-256 for ES256)";
    JwtJwksUrl, "jwt-jwks-url", "GATEWAY_JWT_JWKS_URL", None, "JWKS endpoint (keys by kid, cached, refreshed)";
    JwtJwksRefreshSecs, "jwt-jwks-refresh-secs", "GATEWAY_JWT_JWKS_REFRESH_SECS", Some("300"), "how often the JWKS is refetched";
    JwtJwksMinRefetchSecs, "jwt-jwks-min-refetch-secs", "GATEWAY_JWT_JWKS_MIN_REFETCH_SECS", Some("10"), "least time between refetches caused by an unknown kid";
    JwtIssuer, "jwt-issuer", "GATEWAY_JWT_ISSUER", None, "required iss, checked when set";
    JwtAudience, "jwt-audience", "GATEWAY_JWT_AUDIENCE", None, "required aud, checked when set";
    JwtTenantClaim, "jwt-tenant-claim", "GATEWAY_JWT_TENANT_CLAIM", Some("tenant_id"), "claim naming the tenant; sub names the user";
    JwtCookie, "jwt-cookie", "GATEWAY_JWT_COOKIE", Some("access_token"), "cookie that may carry the token";
    JwtLeewaySecs, "jwt-leeway-secs", "GATEWAY_JWT_LEEWAY_SECS", Some("30"), "clock skew allowed on exp/nbf";
    AllowedOrigins, "allowed-origins", "GATEWAY_ALLOWED_ORIGINS", None, "comma-separated browser origins allowed for cookie auth and CORS";
    MaxConnections, "max-connections", "GATEWAY_MAX_CONNECTIONS", None, "open client connections in total (default: open-file limit - 128 - GATEWAY_MAX_PENDING_CONNECTIONS)";
    MaxPendingConnections, "max-pending-connections", "GATEWAY_MAX_PENDING_CONNECTIONS", Some("256"), "accepted sockets still sending their request head; when all are taken the gateway accepts no more until one completes or the oldest yields";
    MaxPendingPerAddress, "max-pending-per-address", "GATEWAY_MAX_PENDING_PER_ADDRESS", None, "pending sockets one client address may hold; its oldest yields to its newest (unset: no limit; set it where clients connect directly, not behind a proxy)";
    MaxConnectionsPerUser, "max-connections-per-user", "GATEWAY_MAX_CONNECTIONS_PER_USER", Some("16"), "open connections per tenant and user";
    // Larger bodies are dropped as `oversized`.
    MaxEventBytes, "max-event-bytes", "GATEWAY_MAX_EVENT_BYTES", Some("65536"), "largest event body accepted from the broker";
    SendQueueLen, "send-queue-len", "GATEWAY_SEND_QUEUE_LEN", Some("256"), "events waiting per connection before it is a slow client";
    SendQueueBytes, "send-queue-bytes", "GATEWAY_SEND_QUEUE_BYTES", Some("1048576"), "bytes of events waiting per connection before it is a slow client";
    HistoryMaxEvents, "history-max-events", "GATEWAY_HISTORY_MAX_EVENTS", Some("10000"), "recent events kept for resuming clients";
    HistoryMaxBytes, "history-max-bytes", "GATEWAY_HISTORY_MAX_BYTES", Some("16777216"), "bytes of recent events kept for resuming clients";
    HistoryMaxAgeSecs, "history-max-age-secs", "GATEWAY_HISTORY_MAX_AGE_SECS", Some("300"), "oldest event kept for resuming clients";
    Shard, "shard", "GATEWAY_SHARD", None, "this instance's shard of a fleet sharded by tenant, as k/S: clients of other shards' tenants are refused (421 wrong_shard); unset: every tenant";
    HistoryStream, "history-stream", "GATEWAY_HISTORY_STREAM", Some("realtime-gateway.history"), "RabbitMQ stream the fleet's history is backfilled from (declared if absent; `off` or empty: none, clients resync after breaks)";
    HistoryStreamMaxBytes, "history-stream-max-bytes", "GATEWAY_HISTORY_STREAM_MAX_BYTES", Some("1073741824"), "most bytes the history stream keeps (x-max-length-bytes)";
    DedupeWindow, "dedupe-window", "GATEWAY_DEDUPE_WINDOW", Some("16384"), "recent event_ids remembered to drop redelivered duplicates";
    // Clients send only control messages, which carry at most a token.
    WsMaxMessageBytes, "ws-max-message-bytes", "GATEWAY_WS_MAX_MESSAGE_BYTES", Some("16384"), "largest message a WebSocket client may send";
    // tungstenite's 128 KiB default would dominate memory at scale; the few larger
    // frames grow the buffer as needed.
    WsReadBufferBytes, "ws-read-buffer-bytes", "GATEWAY_WS_READ_BUFFER_BYTES", Some("512"), "read buffer per WebSocket (longer messages are read in several steps)";
    // Off by default: it trades CPU per event (one compression, shared) for bytes on the wire.
    WsDeflate, "ws-deflate", "GATEWAY_WS_DEFLATE", Some("false"), "accept permessage-deflate (RFC 7692) from WebSocket clients that offer it";
    WsPingIntervalSecs, "ws-ping-interval-secs", "GATEWAY_WS_PING_INTERVAL_SECS", Some("25"), "WebSocket ping interval";
    IdleTimeoutSecs, "idle-timeout-secs", "GATEWAY_IDLE_TIMEOUT_SECS", Some("60"), "a WebSocket silent this long (no pong, no message) is closed";
    // As long as the idle timeout by default: that is what bounded writes before they had
    // a setting of their own.
    WriteTimeoutSecs, "write-timeout-secs", "GATEWAY_WRITE_TIMEOUT_SECS", Some("60"), "a write to a client still not taken after this long drops the connection as a slow client";
    HandshakeTimeoutSecs, "handshake-timeout-secs", "GATEWAY_HANDSHAKE_TIMEOUT_SECS", Some("10"), "time allowed to send request headers";
    SseKeepaliveSecs, "sse-keepalive-secs", "GATEWAY_SSE_KEEPALIVE_SECS", Some("15"), "interval of SSE heartbeat events";
    SseRetryMs, "sse-retry-ms", "GATEWAY_SSE_RETRY_MS", Some("2000"), "reconnect delay suggested to EventSource (retry:)";
    ShutdownGraceSecs, "shutdown-grace-secs", "GATEWAY_SHUTDOWN_GRACE_SECS", Some("10"), "longest a graceful shutdown may take";
    ShutdownDrainSecs, "shutdown-drain-secs", "GATEWAY_SHUTDOWN_DRAIN_SECS", Some("3"), "window over which clients are closed at random on shutdown (less than the grace period)";
    EventIdPointer, "event-id-pointer", "GATEWAY_EVENT_ID_POINTER", Some("/event_id"), "JSON pointer to the event id (fallback: AMQP message_id)";
    EventTypePointer, "event-type-pointer", "GATEWAY_EVENT_TYPE_POINTER", Some("/event_type"), "JSON pointer to the event type";
    EventTimePointer, "event-time-pointer", "GATEWAY_EVENT_TIME_POINTER", Some("/event_time"), "JSON pointer to the RFC 3339 event time (latency metric only)";
    TenantPointer, "tenant-pointer", "GATEWAY_TENANT_POINTER", Some("/tenant_id"), "JSON pointer to the tenant";
    UserPointer, "user-pointer", "GATEWAY_USER_POINTER", Some("/user_id"), "JSON pointer to the user";
    TraceIdPointer, "trace-id-pointer", "GATEWAY_TRACE_ID_POINTER", Some("/trace_id"), "JSON pointer to the trace id (logs)";
    EventTypeHeader, "event-type-header", "GATEWAY_EVENT_TYPE_HEADER", Some("x-event-type"), "AMQP header with the event type when the body has none";
    TenantHeader, "tenant-header", "GATEWAY_TENANT_HEADER", None, "AMQP header with the tenant when the body has none (off when unset)";
    UserHeader, "user-header", "GATEWAY_USER_HEADER", None, "AMQP header with the user when the body has none (off when unset)";
    SingleTenant, "single-tenant", "GATEWAY_SINGLE_TENANT", None, "single-tenant mode: every token and event belong to this tenant";
    TenantWideEvents, "tenant-wide-events", "GATEWAY_TENANT_WIDE_EVENTS", Some("true"), "deliver events without a user to their whole tenant (false: to nobody)";
    Conflate, "conflate", "GATEWAY_CONFLATE", Some("render.job.progress.v1=/data/job_id"), "event types whose unsent events a newer one with the same key replaces, as `type=/json/pointer`, comma-separated (`off` or empty: none)";
    State, "state", "GATEWAY_STATE", Some("render.job.#=/data/job_id"), "events that are the latest state of a key, for snapshots, as `type.pattern=/json/pointer`, comma-separated; an event takes the first rule its type matches (`off` or empty: none)";
    StateMaxKeysPerUser, "state-max-keys-per-user", "GATEWAY_STATE_MAX_KEYS_PER_USER", Some("1000"), "state keys kept per user (and for a tenant's tenant-wide events); the least recently updated goes first";
    StateMaxKeysPerTenant, "state-max-keys-per-tenant", "GATEWAY_STATE_MAX_KEYS_PER_TENANT", Some("20000"), "state keys kept per tenant";
    StateMaxBytes, "state-max-bytes", "GATEWAY_STATE_MAX_BYTES", Some("67108864"), "bytes of state events kept in all";
    StateMaxAgeSecs, "state-max-age-secs", "GATEWAY_STATE_MAX_AGE_SECS", Some("3600"), "a state key not updated for this long is forgotten";
    MaxInterestPatterns, "max-interest-patterns", "GATEWAY_MAX_INTEREST_PATTERNS", Some("32"), "most event-type patterns one connection may select (types=, subscribe)";
    RevocationUserKeys, "revocation-user-keys", "GATEWAY_REVOCATION_USER_KEYS", Some("identity.user.banned.v1"), "routing keys whose events revoke the user they name (`exchange:key` allowed; `off` or empty: none)";
    RevocationUserPointer, "revocation-user-pointer", "GATEWAY_REVOCATION_USER_POINTER", Some("/user_id"), "JSON pointer to the revoked user (a token's sub) in those events";
    RevocationTenantKeys, "revocation-tenant-keys", "GATEWAY_REVOCATION_TENANT_KEYS", Some("identity.tenant.suspended.v1"), "routing keys whose events revoke the tenant they name (`off` or empty: none)";
    RevocationTenantPointer, "revocation-tenant-pointer", "GATEWAY_REVOCATION_TENANT_POINTER", Some("/tenant_id"), "JSON pointer to the revoked tenant in those events";
    RevocationTtlSecs, "revocation-ttl-secs", "GATEWAY_REVOCATION_TTL_SECS", Some("86400"), "how long a revocation is remembered: the longest token lifetime accepted";
    RevocationStream, "revocation-stream", "GATEWAY_REVOCATION_STREAM", Some("realtime-gateway.revocations"), "RabbitMQ stream every instance reads revocations from (declared if absent)";
    DemoDir, "demo-dir", "GATEWAY_DEMO_DIR", None, "serve the demo page from this directory under /demo/ (off when unset)";
    WorkerThreads, "worker-threads", "GATEWAY_WORKER_THREADS", Some("auto"), "threads running connections and the consumer; `auto`: one less than the CPUs available, at least 1 (the broker client reads on a thread of its own)";
    LogFormat, "log-format", "GATEWAY_LOG_FORMAT", Some("text"), "text or json";
    Log, "log", "GATEWAY_LOG", Some("info"), "log filter (tracing EnvFilter syntax)";
}

impl Key {
    /// This key's row of the table.
    pub fn setting(self) -> &'static Setting {
        &SETTINGS[self as usize]
    }

    /// The key whose flag is `--{name}`.
    pub fn from_flag(name: &str) -> Option<Key> {
        SETTINGS.iter().find(|s| s.name == name).map(|s| s.key)
    }

    /// How problems name the setting: both ways an operator may have set it.
    pub fn label(self) -> String {
        let s = self.setting();
        format!("{} (--{})", s.env, s.name)
    }
}

/// The values as given, before validation.
pub(super) struct Raw<'a> {
    flags: HashMap<Key, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Settings of the `GATEWAY_CONFIG` file, below flags and variables.
    file: HashMap<Key, String>,
}

impl<'a> Raw<'a> {
    /// Values from `flags`, else from the environment read through `env`.
    pub(super) fn new(
        flags: HashMap<Key, String>,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Raw {
            flags,
            env,
            file: HashMap::new(),
        }
    }

    /// Adds the settings of a configuration file, which flags and variables override.
    pub(super) fn with_file(mut self, file: HashMap<Key, String>) -> Self {
        self.file = file;
        self
    }

    /// The value the operator gave (flag, variable or file), ignoring the default.
    fn given(&self, key: Key) -> Option<String> {
        self.flags
            .get(&key)
            .cloned()
            .or_else(|| (self.env)(key.setting().env))
            .or_else(|| self.file.get(&key).cloned())
    }

    /// Whether the operator set `key` at all (to a non-empty value).
    pub(super) fn is_given(&self, key: Key) -> bool {
        self.given(key).is_some_and(|v| !v.trim().is_empty())
    }

    /// Like [`Raw::get`], but an explicitly empty value is `Some("")` rather than the
    /// default: for lists where empty means "none".
    pub(super) fn get_list(&self, key: Key) -> Option<String> {
        match self.given(key) {
            Some(v) if v.trim().is_empty() => Some(String::new()),
            Some(v) => Some(v),
            None => key.setting().default.map(str::to_owned),
        }
    }

    /// Flag, else variable, else file, else default; empty values count as unset so that
    /// `GATEWAY_JWT_SECRET=` in a compose file does not become an empty secret.
    pub(super) fn get(&self, key: Key) -> Option<String> {
        let s = key.setting();
        self.flags
            .get(&key)
            .cloned()
            .or_else(|| (self.env)(s.env))
            .filter(|v| !v.trim().is_empty())
            .or_else(|| self.file.get(&key).cloned())
            .filter(|v| !v.trim().is_empty())
            .or_else(|| s.default.map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_names_its_own_row() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert_eq!(s.key as usize, i, "{}", s.name);
            assert!(std::ptr::eq(s.key.setting(), s));
            assert_eq!(Key::from_flag(s.name), Some(s.key));
            // The variant, the flag and the variable spell the same words.
            let words: Vec<String> = s.name.split('-').map(str::to_owned).collect();
            let pascal: String = words
                .iter()
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            assert_eq!(format!("{:?}", s.key), pascal);
            assert_eq!(s.env, format!("GATEWAY_{}", words.join("_").to_uppercase()));
        }
        assert_eq!(Key::from_flag("bogus"), None);
    }

    #[test]
    fn flag_then_variable_then_default_and_empty_is_unset() {
        let env = |k: &str| match k {
            "GATEWAY_AMQP_EXCHANGE" => Some("x.env".to_owned()),
            "GATEWAY_LISTEN" => Some("127.0.0.1:1".to_owned()),
            "GATEWAY_JWT_SECRET" => Some("  ".to_owned()),
            _ => None,
        };
        let flags = HashMap::from([(Key::Listen, "127.0.0.1:2".to_owned())]);
        let raw = Raw::new(flags, &env);
        assert_eq!(raw.get(Key::Listen).as_deref(), Some("127.0.0.1:2"));
        assert_eq!(raw.get(Key::AmqpExchange).as_deref(), Some("x.env"));
        assert_eq!(raw.get(Key::LogFormat).as_deref(), Some("text"));
        assert_eq!(raw.get(Key::JwtSecret), None);
    }
}
