//! Configuration: every setting is a flag and a `GATEWAY_*` variable, parsed and validated
//! in full before anything binds a port.
//!
//! The table in [`SETTINGS`] is the single source for parsing, `--help` and error messages,
//! so a setting cannot exist in one and be missing from another. The environment is read
//! through a closure so tests pass a map and never mutate the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest envelope accepted from the broker; larger bodies are dropped as `oversized`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
/// Events a connection may have waiting before it counts as a slow client.
pub const DEFAULT_SEND_QUEUE_LEN: usize = 256;
/// Largest message a WebSocket client may send (control messages carry at most a token).
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Read buffer per WebSocket; tungstenite's 128 KiB default would dominate memory at scale.
/// Clients send only small control messages; larger frames grow the buffer as needed.
pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 1024;

/// One row of the settings table.
pub struct Setting {
    /// Key used internally and as the flag name (`--amqp-url`).
    pub name: &'static str,
    /// Environment variable read when the flag is absent.
    pub env: &'static str,
    /// Default, as the user would type it; `None` means "unset".
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

macro_rules! settings {
    ($( $name:literal, $env:literal, $default:expr, $help:literal; )*) => {
        /// Every setting the gateway understands, in `--help` order.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { name: $name, env: $env, default: $default, help: $help }, )*
        ];
    };
}

settings! {
    "listen", "GATEWAY_LISTEN", Some("0.0.0.0:8080"), "listen address (one listener for /ws, /sse, /healthz, /readyz, /metrics)";
    "amqp-url", "GATEWAY_AMQP_URL", Some("amqp://guest:guest@127.0.0.1:5672/%2f"), "RabbitMQ URL";
    "amqp-exchange", "GATEWAY_AMQP_EXCHANGE", Some("flatrender.events"), "topic exchange to bind to (declared durable topic if absent)";
    "amqp-bindings", "GATEWAY_AMQP_BINDINGS", Some("render.job.#,notification.#"), "comma-separated binding keys; `exchange:key` binds to another exchange";
    "amqp-exchange-declare", "GATEWAY_AMQP_EXCHANGE_DECLARE", Some("declare"), "`declare` (durable topic if absent) or `passive` (must exist)";
    "amqp-queue", "GATEWAY_AMQP_QUEUE", None, "this instance's queue name (default: realtime-gateway.<host>.<random>)";
    "amqp-prefetch", "GATEWAY_AMQP_PREFETCH", Some("512"), "unacknowledged deliveries the broker may push at once";
    "amqp-queue-expires-secs", "GATEWAY_AMQP_QUEUE_EXPIRES_SECS", Some("30"), "how long the queue outlives a lost broker link (x-expires)";
    "amqp-queue-max-length", "GATEWAY_AMQP_QUEUE_MAX_LENGTH", Some("100000"), "most messages the queue holds while nobody consumes (oldest dropped)";
    "amqp-queue-max-bytes", "GATEWAY_AMQP_QUEUE_MAX_BYTES", Some("67108864"), "most bytes the queue holds while nobody consumes (oldest dropped)";
    "amqp-reconnect-max-secs", "GATEWAY_AMQP_RECONNECT_MAX_SECS", Some("30"), "cap of the broker reconnect backoff";
    "jwt-secret", "GATEWAY_JWT_SECRET", None, "HS256 secret, at least 32 bytes";
    "jwt-public-key-file", "GATEWAY_JWT_PUBLIC_KEY_FILE", None, "PEM public key (RSA for RS256, P-256 for ES256)";
    "jwt-jwks-url", "GATEWAY_JWT_JWKS_URL", None, "JWKS endpoint (keys by kid, cached, refreshed)";
    "jwt-jwks-refresh-secs", "GATEWAY_JWT_JWKS_REFRESH_SECS", Some("300"), "how often the JWKS is refetched";
    "jwt-jwks-min-refetch-secs", "GATEWAY_JWT_JWKS_MIN_REFETCH_SECS", Some("10"), "least time between refetches caused by an unknown kid";
    "jwt-issuer", "GATEWAY_JWT_ISSUER", None, "required iss, checked when set";
    "jwt-audience", "GATEWAY_JWT_AUDIENCE", None, "required aud, checked when set";
    "jwt-tenant-claim", "GATEWAY_JWT_TENANT_CLAIM", Some("tenant_id"), "claim naming the tenant; sub names the user";
    "jwt-cookie", "GATEWAY_JWT_COOKIE", Some("access_token"), "cookie that may carry the token";
    "jwt-leeway-secs", "GATEWAY_JWT_LEEWAY_SECS", Some("30"), "clock skew allowed on exp/nbf";
    "allowed-origins", "GATEWAY_ALLOWED_ORIGINS", None, "comma-separated browser origins allowed for cookie auth and CORS";
    "max-connections", "GATEWAY_MAX_CONNECTIONS", None, "open client connections in total (default: sized from the open-file limit)";
    "max-connections-per-user", "GATEWAY_MAX_CONNECTIONS_PER_USER", Some("16"), "open connections per tenant and user";
    "max-event-bytes", "GATEWAY_MAX_EVENT_BYTES", Some("65536"), "largest event body accepted from the broker";
    "send-queue-len", "GATEWAY_SEND_QUEUE_LEN", Some("256"), "events waiting per connection before it is a slow client";
    "send-queue-bytes", "GATEWAY_SEND_QUEUE_BYTES", Some("1048576"), "bytes of events waiting per connection before it is a slow client";
    "history-max-events", "GATEWAY_HISTORY_MAX_EVENTS", Some("10000"), "recent events kept for resuming clients";
    "history-max-bytes", "GATEWAY_HISTORY_MAX_BYTES", Some("16777216"), "bytes of recent events kept for resuming clients";
    "history-max-age-secs", "GATEWAY_HISTORY_MAX_AGE_SECS", Some("300"), "oldest event kept for resuming clients";
    "dedupe-window", "GATEWAY_DEDUPE_WINDOW", Some("16384"), "recent event_ids remembered to drop redelivered duplicates";
    "ws-max-message-bytes", "GATEWAY_WS_MAX_MESSAGE_BYTES", Some("16384"), "largest message a WebSocket client may send";
    "ws-read-buffer-bytes", "GATEWAY_WS_READ_BUFFER_BYTES", Some("1024"), "read buffer per WebSocket";
    "ws-ping-interval-secs", "GATEWAY_WS_PING_INTERVAL_SECS", Some("25"), "WebSocket ping interval";
    "idle-timeout-secs", "GATEWAY_IDLE_TIMEOUT_SECS", Some("60"), "a WebSocket silent this long (no pong, no message) is closed";
    "handshake-timeout-secs", "GATEWAY_HANDSHAKE_TIMEOUT_SECS", Some("10"), "time allowed to send request headers";
    "sse-keepalive-secs", "GATEWAY_SSE_KEEPALIVE_SECS", Some("15"), "interval of SSE keep-alive comments";
    "sse-retry-ms", "GATEWAY_SSE_RETRY_MS", Some("2000"), "reconnect delay suggested to EventSource (retry:)";
    "shutdown-grace-secs", "GATEWAY_SHUTDOWN_GRACE_SECS", Some("10"), "longest a graceful shutdown may take";
    "shutdown-drain-secs", "GATEWAY_SHUTDOWN_DRAIN_SECS", Some("3"), "window over which clients are closed at random on shutdown (less than the grace period)";
    "event-id-pointer", "GATEWAY_EVENT_ID_POINTER", Some("/event_id"), "JSON pointer to the event id (fallback: AMQP message_id)";
    "event-type-pointer", "GATEWAY_EVENT_TYPE_POINTER", Some("/event_type"), "JSON pointer to the event type";
    "event-time-pointer", "GATEWAY_EVENT_TIME_POINTER", Some("/event_time"), "JSON pointer to the RFC 3339 event time (latency metric only)";
    "tenant-pointer", "GATEWAY_TENANT_POINTER", Some("/tenant_id"), "JSON pointer to the tenant";
    "user-pointer", "GATEWAY_USER_POINTER", Some("/user_id"), "JSON pointer to the user";
    "trace-id-pointer", "GATEWAY_TRACE_ID_POINTER", Some("/trace_id"), "JSON pointer to the trace id (logs)";
    "event-type-header", "GATEWAY_EVENT_TYPE_HEADER", Some("x-event-type"), "AMQP header with the event type when the body has none";
    "tenant-header", "GATEWAY_TENANT_HEADER", None, "AMQP header with the tenant when the body has none (off when unset)";
    "user-header", "GATEWAY_USER_HEADER", None, "AMQP header with the user when the body has none (off when unset)";
    "single-tenant", "GATEWAY_SINGLE_TENANT", None, "single-tenant mode: every token and event belong to this tenant";
    "tenant-wide-events", "GATEWAY_TENANT_WIDE_EVENTS", Some("true"), "deliver events without a user to their whole tenant (false: to nobody)";
    "demo-dir", "GATEWAY_DEMO_DIR", None, "serve the demo page from this directory under /demo/ (off when unset)";
    "log-format", "GATEWAY_LOG_FORMAT", Some("text"), "text or json";
    "log", "GATEWAY_LOG", Some("info"), "log filter (tracing EnvFilter syntax)";
}

/// Where the gateway finds token verification keys. At least one must be set.
#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM public key file, RSA (RS256) or P-256 (ES256).
    pub public_key_file: Option<PathBuf>,
    /// JWKS endpoint for keys selected by `kid`.
    pub jwks_url: Option<String>,
    /// Periodic JWKS refresh, so rotated keys appear without a restart.
    pub jwks_refresh: Duration,
    /// Floor between refetches triggered by unknown `kid`s, so forged kids cannot make
    /// the gateway hammer the identity provider.
    pub jwks_min_refetch: Duration,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Claim that names the tenant.
    pub tenant_claim: String,
    /// Cookie that may carry the token.
    pub cookie: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Single-tenant mode: tokens need no tenant claim; everyone is in this tenant.
    pub single_tenant: Option<String>,
}

/// Broker side settings.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Broker URL, credentials included; never logged whole.
    pub url: String,
    /// Topic exchange the queue is bound to.
    pub exchange: String,
    /// Exchange and binding key pairs.
    pub bindings: Vec<Binding>,
    /// Declare exchanges (durable topic) or only check that they exist.
    pub declare_exchanges: bool,
    /// Queue name; chosen once per process so a reconnect re-declares the same queue.
    pub queue: String,
    /// basic.qos prefetch.
    pub prefetch: u16,
    /// x-expires: how long the queue survives without a consumer.
    pub queue_expires: Duration,
    /// x-max-length, so a dead instance cannot fill the broker.
    pub queue_max_length: u32,
    /// x-max-length-bytes, for the same reason.
    pub queue_max_bytes: u64,
    /// Cap of the exponential reconnect backoff.
    pub reconnect_max: Duration,
}

/// One binding of the gateway's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Exchange.
    pub exchange: String,
    /// Binding key.
    pub key: String,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Everything the gateway needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Broker settings.
    pub amqp: AmqpConfig,
    /// Token verification.
    pub jwt: JwtConfig,
    /// Origins allowed to use cookie auth and to read `/sse` cross-origin.
    pub allowed_origins: Vec<String>,
    /// Total client connections.
    pub max_connections: usize,
    /// Connections per (tenant, user).
    pub max_connections_per_user: usize,
    /// Largest event body.
    pub max_event_bytes: usize,
    /// Per-connection send queue length.
    pub send_queue_len: usize,
    /// Per-connection send queue bytes.
    pub send_queue_bytes: usize,
    /// Recent event ids remembered for duplicate suppression.
    pub dedupe_window: usize,
    /// What the resume history keeps.
    pub history: crate::history::HistoryLimits,
    /// Largest incoming WebSocket message.
    pub ws_max_message_bytes: usize,
    /// WebSocket read buffer.
    pub ws_read_buffer_bytes: usize,
    /// WebSocket ping interval.
    pub ws_ping_interval: Duration,
    /// Silence after which a WebSocket is closed.
    pub idle_timeout: Duration,
    /// Time allowed for request headers.
    pub handshake_timeout: Duration,
    /// SSE keep-alive comment interval.
    pub sse_keepalive: Duration,
    /// SSE `retry:` hint.
    pub sse_retry: Duration,
    /// Bound on graceful shutdown.
    pub shutdown_grace: Duration,
    /// Clients are closed at random moments within this window, so a fleet of browsers
    /// does not reconnect in one spike.
    pub shutdown_drain: Duration,
    /// Where envelope fields are found.
    pub mapping: crate::mapping::Mapping,
    /// Directory of the demo page, served under `/demo/` when set.
    pub demo_dir: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
}

/// What parsing the command line and environment produced.
#[derive(Debug)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// The user asked for `--help`; print this text.
    Help(String),
    /// The user asked for `--version`.
    Version,
}

/// Every problem found, reported together so an operator fixes them in one go.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses flags (without the program name) and the environment, flags winning.
    pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut problems = Vec::new();
        let mut flags: HashMap<&'static str, String> = HashMap::new();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok(Parsed::Help(help_text())),
                "-V" | "--version" => return Ok(Parsed::Version),
                _ => {}
            }
            let Some(body) = arg.strip_prefix("--") else {
                problems.push(format!("unexpected argument `{arg}` (see --help)"));
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let Some(setting) = SETTINGS.iter().find(|s| s.name == name) else {
                problems.push(format!("unknown flag `--{name}` (see --help)"));
                continue;
            };
            match inline.or_else(|| args.next()) {
                Some(value) => {
                    flags.insert(setting.name, value);
                }
                None => problems.push(format!("flag `--{name}` needs a value")),
            }
        }

        let raw = Raw { flags, env: &env };
        let mut v = Validator {
            raw: &raw,
            problems,
        };
        let config = v.build();
        if v.problems.is_empty() {
            Ok(Parsed::Run(Box::new(config)))
        } else {
            Err(ConfigError(v.problems))
        }
    }
}

struct Raw<'a> {
    flags: HashMap<&'static str, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Raw<'_> {
    fn setting(name: &str) -> &'static Setting {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("setting `{name}` missing from SETTINGS"))
    }

    /// Flag, else variable, else default; empty values count as unset so that
    /// `GATEWAY_JWT_SECRET=` in a compose file does not become an empty secret.
    fn get(&self, name: &str) -> Option<String> {
        let s = Self::setting(name);
        self.flags
            .get(s.name)
            .cloned()
            .or_else(|| (self.env)(s.env))
            .filter(|v| !v.trim().is_empty())
            .or_else(|| s.default.map(str::to_owned))
    }
}

struct Validator<'a> {
    raw: &'a Raw<'a>,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn label(name: &str) -> String {
        let s = Raw::setting(name);
        format!("{} (--{})", s.env, s.name)
    }

    fn string(&mut self, name: &str) -> String {
        self.raw.get(name).unwrap_or_default()
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str, what: &str) -> Option<T> {
        let value = self.raw.get(name)?;
        match value.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.problems
                    .push(format!("{}: `{value}` is not {what}", Self::label(name)));
                None
            }
        }
    }

    /// A positive integer within `[1, max]`.
    fn count<T>(&mut self, name: &str, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + From<u8> + fmt::Display + Copy,
    {
        let fallback = T::from(1);
        match self.parsed::<T>(name, "a positive whole number") {
            Some(v) if v >= T::from(1) && v <= max => v,
            Some(v) => {
                self.problems.push(format!(
                    "{}: {v} is out of range (1 to {max})",
                    Self::label(name)
                ));
                fallback
            }
            None => fallback,
        }
    }

    fn secs(&mut self, name: &str) -> Duration {
        Duration::from_secs(self.count::<u64>(name, 86_400))
    }

    fn build(&mut self) -> Config {
        let listen = self
            .parsed::<SocketAddr>("listen", "a socket address like 0.0.0.0:8080")
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));

        let url = self.string("amqp-url");
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            self.problems.push(format!(
                "{}: must start with amqp:// or amqps://",
                Self::label("amqp-url")
            ));
        }
        if url.starts_with("amqps://") {
            // The build carries no TLS stack for AMQP (see README, "Configuration").
            self.problems.push(format!(
                "{}: amqps:// is not supported by this build; terminate TLS in front of RabbitMQ or use amqp:// on a private network",
                Self::label("amqp-url")
            ));
        }
        let exchange = self.string("amqp-exchange");
        if exchange.is_empty() || exchange.len() > 255 {
            self.problems.push(format!(
                "{}: must be 1 to 255 bytes",
                Self::label("amqp-exchange")
            ));
        }
        let mut bindings = Vec::new();
        for entry in split_list(&self.string("amqp-bindings")) {
            // `exchange:key`; plain keys bind to GATEWAY_AMQP_EXCHANGE. Topic keys have no
            // colons, so the first one separates.
            let (ex, key) = match entry.split_once(':') {
                Some((ex, key)) => (ex.trim().to_owned(), key.trim().to_owned()),
                None => (exchange.clone(), entry.clone()),
            };
            let bad = ex.is_empty()
                || ex.len() > 255
                || key.is_empty()
                || key.len() > 255
                || key.chars().chain(ex.chars()).any(char::is_whitespace);
            if bad {
                self.problems.push(format!(
                    "{}: `{entry}` is not `key` or `exchange:key`",
                    Self::label("amqp-bindings")
                ));
            }
            bindings.push(Binding { exchange: ex, key });
        }
        if bindings.is_empty() {
            self.problems.push(format!(
                "{}: at least one binding key is needed",
                Self::label("amqp-bindings")
            ));
        }
        let declare_exchanges = match self.string("amqp-exchange-declare").as_str() {
            "declare" => true,
            "passive" => false,
            other => {
                self.problems.push(format!(
                    "{}: `{other}` is not `declare` or `passive`",
                    Self::label("amqp-exchange-declare")
                ));
                true
            }
        };
        let queue = self
            .raw
            .get("amqp-queue")
            .unwrap_or_else(default_queue_name);
        if queue.len() > 255 || queue.starts_with("amq.") {
            self.problems.push(format!(
                "{}: must be at most 255 bytes and not start with `amq.`",
                Self::label("amqp-queue")
            ));
        }
        let amqp = AmqpConfig {
            url,
            exchange,
            bindings,
            declare_exchanges,
            queue,
            prefetch: self.count::<u16>("amqp-prefetch", u16::MAX),
            queue_expires: self.secs("amqp-queue-expires-secs"),
            queue_max_length: self.count::<u32>("amqp-queue-max-length", u32::MAX),
            queue_max_bytes: self.count::<u64>("amqp-queue-max-bytes", u64::MAX),
            reconnect_max: self.secs("amqp-reconnect-max-secs"),
        };

        let jwt = self.jwt();

        let allowed_origins = split_list(&self.string("allowed-origins"));
        for origin in &allowed_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/');
            if !ok {
                self.problems.push(format!(
                    "{}: `{origin}` is not an origin like https://studio.example.com",
                    Self::label("allowed-origins")
                ));
            }
        }

        let max_connections = match self.raw.get("max-connections") {
            Some(_) => self.count::<usize>("max-connections", 10_000_000),
            None => default_max_connections(),
        };

        let log_format = match self.string("log-format").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.problems.push(format!(
                    "{}: `{other}` is not `text` or `json`",
                    Self::label("log-format")
                ));
                LogFormat::Text
            }
        };
        let log = self.string("log");
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            self.problems.push(format!(
                "{}: `{log}` is not a valid filter",
                Self::label("log")
            ));
        }

        let shutdown_grace = self.secs("shutdown-grace-secs");
        let shutdown_drain =
            match self.parsed::<u64>("shutdown-drain-secs", "a whole number of seconds") {
                Some(v) if Duration::from_secs(v) < shutdown_grace => Duration::from_secs(v),
                Some(v) => {
                    self.problems.push(format!(
                        "{}: {v} must be less than GATEWAY_SHUTDOWN_GRACE_SECS ({})",
                        Self::label("shutdown-drain-secs"),
                        shutdown_grace.as_secs()
                    ));
                    Duration::ZERO
                }
                None => Duration::ZERO,
            };

        let max_event_bytes = self.count::<usize>("max-event-bytes", 16 * 1024 * 1024);
        let send_queue_bytes = self.count::<usize>("send-queue-bytes", 1 << 30);
        if send_queue_bytes < max_event_bytes {
            // Otherwise one large event would kick every recipient as a slow client.
            self.problems.push(format!(
                "{}: {send_queue_bytes} must be at least GATEWAY_MAX_EVENT_BYTES ({max_event_bytes})",
                Self::label("send-queue-bytes")
            ));
        }

        Config {
            listen,
            amqp,
            jwt,
            allowed_origins,
            max_connections,
            max_connections_per_user: self.count::<usize>("max-connections-per-user", 100_000),
            max_event_bytes,
            send_queue_len: self.count::<usize>("send-queue-len", 1_000_000),
            send_queue_bytes,
            dedupe_window: self.count::<usize>("dedupe-window", 10_000_000),
            history: crate::history::HistoryLimits {
                max_events: self.count::<usize>("history-max-events", 10_000_000),
                max_bytes: self.count::<usize>("history-max-bytes", 1 << 34),
                max_age: self.secs("history-max-age-secs"),
            },
            ws_max_message_bytes: self.count::<usize>("ws-max-message-bytes", 16 * 1024 * 1024),
            ws_read_buffer_bytes: self.count::<usize>("ws-read-buffer-bytes", 1024 * 1024),
            ws_ping_interval: self.secs("ws-ping-interval-secs"),
            idle_timeout: self.secs("idle-timeout-secs"),
            handshake_timeout: self.secs("handshake-timeout-secs"),
            sse_keepalive: self.secs("sse-keepalive-secs"),
            sse_retry: Duration::from_millis(self.count::<u64>("sse-retry-ms", 3_600_000)),
            shutdown_grace,
            shutdown_drain,
            mapping: self.mapping(),
            demo_dir: self.raw.get("demo-dir").map(PathBuf::from),
            log_format,
            log,
        }
    }

    fn pointer(&mut self, name: &str) -> crate::mapping::Pointer {
        let raw = self.string(name);
        crate::mapping::Pointer::parse(&raw).unwrap_or_else(|e| {
            self.problems.push(format!("{}: {e}", Self::label(name)));
            crate::mapping::Pointer::parse("/invalid").expect("literal pointer")
        })
    }

    fn mapping(&mut self) -> crate::mapping::Mapping {
        let tenant_wide_events = match self.string("tenant-wide-events").as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                self.problems.push(format!(
                    "{}: `{other}` is not true or false",
                    Self::label("tenant-wide-events")
                ));
                true
            }
        };
        crate::mapping::Mapping {
            event_id: self.pointer("event-id-pointer"),
            event_type: self.pointer("event-type-pointer"),
            event_time: self.pointer("event-time-pointer"),
            tenant: self.pointer("tenant-pointer"),
            user: self.pointer("user-pointer"),
            trace_id: self.pointer("trace-id-pointer"),
            event_type_header: self.raw.get("event-type-header"),
            tenant_header: self.raw.get("tenant-header"),
            user_header: self.raw.get("user-header"),
            single_tenant: self.raw.get("single-tenant"),
            tenant_wide_events,
        }
    }

    fn jwt(&mut self) -> JwtConfig {
        let secret = self.raw.get("jwt-secret");
        if let Some(s) = &secret
            && s.len() < 32
        {
            // RFC 7518 3.2: an HS256 key shorter than the hash output is brute-forceable.
            self.problems.push(format!(
                "{}: must be at least 32 bytes",
                Self::label("jwt-secret")
            ));
        }
        let public_key_file = self.raw.get("jwt-public-key-file").map(PathBuf::from);
        if let Some(path) = &public_key_file
            && let Err(e) = std::fs::metadata(path)
        {
            self.problems.push(format!(
                "{}: cannot read {}: {e}",
                Self::label("jwt-public-key-file"),
                path.display()
            ));
        }
        let jwks_url = self.raw.get("jwt-jwks-url");
        if let Some(url) = &jwks_url
            && reqwest::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            self.problems.push(format!(
                "{}: `{url}` is not an http(s) URL",
                Self::label("jwt-jwks-url")
            ));
        }
        if secret.is_none() && public_key_file.is_none() && jwks_url.is_none() {
            self.problems.push(
                "no token key configured: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY_FILE or GATEWAY_JWT_JWKS_URL"
                    .to_owned(),
            );
        }
        let tenant_claim = self.string("jwt-tenant-claim");
        if tenant_claim.is_empty() {
            self.problems.push(format!(
                "{}: must not be empty",
                Self::label("jwt-tenant-claim")
            ));
        }
        let cookie = self.string("jwt-cookie");
        let leeway = match self.parsed::<u64>("jwt-leeway-secs", "a whole number of seconds") {
            Some(v) if v <= 600 => Duration::from_secs(v),
            Some(v) => {
                self.problems.push(format!(
                    "{}: {v} is out of range (0 to 600)",
                    Self::label("jwt-leeway-secs")
                ));
                Duration::ZERO
            }
            None => Duration::ZERO,
        };
        JwtConfig {
            secret,
            public_key_file,
            jwks_url,
            jwks_refresh: self.secs("jwt-jwks-refresh-secs"),
            jwks_min_refetch: self.secs("jwt-jwks-min-refetch-secs"),
            issuer: self.raw.get("jwt-issuer"),
            audience: self.raw.get("jwt-audience"),
            tenant_claim,
            cookie,
            leeway,
            single_tenant: self.raw.get("single-tenant"),
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A name the gateway chooses (never a server-generated `amq.gen-*` one, which cannot be
/// re-declared after a reconnect), unique per process.
fn default_queue_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("realtime-gateway.{host}.{:08x}", rand::random::<u32>())
}

/// Descriptors kept back for the listener, the broker link, logs and JWKS fetches.
const RESERVED_FDS: usize = 128;
/// Used when the open-file limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

/// Sized for the machine: each connection holds one descriptor, so the soft open-file
/// limit is the real ceiling; refusing with 503 below it beats failing `accept`.
fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        })
        .map(|soft| soft.saturating_sub(RESERVED_FDS).max(1))
        .unwrap_or(FALLBACK_MAX_CONNECTIONS)
}

/// `--help` text, generated from [`SETTINGS`].
pub fn help_text() -> String {
    let mut out = String::from(
        "realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE\n\n\
         Usage: realtime-gateway [--flag value | --flag=value]...\n\
         \x20      realtime-gateway healthcheck [--listen ADDR]\n\
         \x20          GET /healthz on this host at the --listen (or GATEWAY_LISTEN) port;\n\
         \x20          exit 0 when it answers 200 (for container health checks)\n\n\
         Every flag can also be given as its environment variable; flags win.\n\n\
         Token keys: at least one of --jwt-secret (HS256, at least 32 bytes),\n\
         --jwt-public-key-file (RS256/ES256 PEM) and --jwt-jwks-url is required; none is a\n\
         startup error. With several, a token's alg picks the key: HS256 the secret;\n\
         RS256/ES256 with a kid the JWKS knows that key; otherwise the PEM key.\n\n",
    );
    for s in SETTINGS {
        let default = s.default.unwrap_or("(unset)");
        out.push_str(&format!(
            "  --{:<28} {}\n      {}\n      default: {}\n",
            s.name, s.env, s.help, default
        ));
    }
    out.push_str("\n  -h, --help      this text\n  -V, --version   print the version\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(args.iter().copied(), move |k| env.get(k).cloned())
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env).expect("valid config") {
            Parsed::Run(c) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    const SECRET: (&str, &str) = ("GATEWAY_JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[], &[SECRET]);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.amqp.exchange, "flatrender.events");
        let keys: Vec<_> = c
            .amqp
            .bindings
            .iter()
            .map(|b| (b.exchange.as_str(), b.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("flatrender.events", "render.job.#"),
                ("flatrender.events", "notification.#")
            ]
        );
        assert!(c.amqp.declare_exchanges);
        assert_eq!(c.mapping.tenant.to_string(), "/tenant_id");
        assert!(c.mapping.single_tenant.is_none() && c.mapping.tenant_header.is_none());
        assert!(c.amqp.queue.starts_with("realtime-gateway."));
        assert_eq!(c.jwt.tenant_claim, "tenant_id");
        assert_eq!(c.jwt.cookie, "access_token");
        assert_eq!(c.jwt.leeway, Duration::from_secs(30));
        assert_eq!(c.max_connections_per_user, 16);
        assert!(c.max_connections >= 1);
        assert_eq!(c.max_event_bytes, DEFAULT_MAX_EVENT_BYTES);
        assert_eq!(c.send_queue_len, DEFAULT_SEND_QUEUE_LEN);
        assert_eq!(c.ws_max_message_bytes, DEFAULT_WS_MAX_MESSAGE_BYTES);
        assert_eq!(c.ws_read_buffer_bytes, DEFAULT_WS_READ_BUFFER_BYTES);
    }

    #[test]
    fn flags_win_over_environment() {
        let c = config(
            &["--listen", "127.0.0.1:9000", "--amqp-exchange=x.flag"],
            &[
                SECRET,
                ("GATEWAY_LISTEN", "127.0.0.1:1"),
                ("GATEWAY_AMQP_EXCHANGE", "x.env"),
                ("GATEWAY_AMQP_BINDINGS", " a.# , b.*.c ,"),
            ],
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.amqp.exchange, "x.flag");
        let keys: Vec<_> = c
            .amqp
            .bindings
            .iter()
            .map(|b| (b.exchange.as_str(), b.key.as_str()))
            .collect();
        assert_eq!(keys, [("x.flag", "a.#"), ("x.flag", "b.*.c")]);
    }

    #[test]
    fn every_problem_is_reported_by_name() {
        let err = parse(
            &["--bogus", "1"],
            &[
                ("GATEWAY_LISTEN", "nowhere"),
                ("GATEWAY_MAX_CONNECTIONS_PER_USER", "0"),
                ("GATEWAY_JWT_LEEWAY_SECS", "-3"),
                ("GATEWAY_LOG_FORMAT", "xml"),
                ("GATEWAY_AMQP_URL", "http://x"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "--bogus",
            "GATEWAY_LISTEN",
            "GATEWAY_MAX_CONNECTIONS_PER_USER",
            "GATEWAY_JWT_LEEWAY_SECS",
            "GATEWAY_LOG_FORMAT",
            "GATEWAY_AMQP_URL",
            "no token key configured",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn bindings_across_exchanges_and_mapping() {
        let c = config(
            &[],
            &[
                SECRET,
                (
                    "GATEWAY_AMQP_BINDINGS",
                    "orders:order.*, payments:payment.#,plain.#",
                ),
                ("GATEWAY_AMQP_EXCHANGE_DECLARE", "passive"),
                ("GATEWAY_USER_POINTER", "/metadata/user_id"),
                ("GATEWAY_SINGLE_TENANT", "app"),
                ("GATEWAY_TENANT_WIDE_EVENTS", "false"),
            ],
        );
        let keys: Vec<_> = c
            .amqp
            .bindings
            .iter()
            .map(|b| (b.exchange.as_str(), b.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("orders", "order.*"),
                ("payments", "payment.#"),
                ("flatrender.events", "plain.#")
            ]
        );
        assert!(!c.amqp.declare_exchanges);
        assert_eq!(c.mapping.user.to_string(), "/metadata/user_id");
        assert_eq!(c.mapping.single_tenant.as_deref(), Some("app"));
        assert!(!c.mapping.tenant_wide_events);
        let err = parse(
            &[],
            &[
                SECRET,
                ("GATEWAY_AMQP_BINDINGS", ":x,a:"),
                ("GATEWAY_TENANT_POINTER", "tenant"),
                ("GATEWAY_TENANT_WIDE_EVENTS", "maybe"),
            ],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "`:x`",
            "`a:`",
            "GATEWAY_TENANT_POINTER",
            "GATEWAY_TENANT_WIDE_EVENTS",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
    }

    #[test]
    fn short_secret_and_bad_origin_are_refused() {
        let err = parse(
            &[],
            &[
                ("GATEWAY_JWT_SECRET", "short"),
                (
                    "GATEWAY_ALLOWED_ORIGINS",
                    "https://ok.example,studio.example",
                ),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GATEWAY_JWT_SECRET"));
        assert!(err.contains("studio.example"));
        assert!(!err.contains("https://ok.example`"));
    }

    #[test]
    fn empty_variable_counts_as_unset() {
        let err = parse(&[], &[("GATEWAY_JWT_SECRET", "")]).unwrap_err();
        assert!(err.to_string().contains("no token key configured"));
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for s in SETTINGS {
            assert!(
                readme.contains(&format!("`{}`", s.env)),
                "{} missing from README",
                s.env
            );
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let Parsed::Help(text) = parse(&["--help"], &[]).unwrap() else {
            panic!("expected help");
        };
        for needle in ["healthcheck [--listen ADDR]", "at least one of", "32 bytes"] {
            assert!(text.contains(needle), "{needle} missing from help");
        }
        for s in SETTINGS {
            assert!(text.contains(s.env), "{} missing from help", s.env);
            assert!(text.contains(&format!("--{}", s.name)));
            if let Some(d) = s.default {
                assert!(text.contains(d));
            }
        }
    }
}
