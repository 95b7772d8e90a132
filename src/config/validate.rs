//! Validation: typed readers over the raw values that collect every problem instead of
//! stopping at the first, and the assembly of a [`Config`] from each concern's part.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::settings::{Key, Raw};
use super::{Config, LogFormat};

/// Largest values accepted, each far above any sane setting: they catch a typo (an extra
/// digit, bytes given as KiB) before it becomes an allocation or a limit nothing enforces.
/// Durations in whole seconds: a day. Every timeout and interval is far shorter; a longer
/// one would keep a dead client's resources for days.
const MAX_SECS: u64 = 86_400;
/// Connections of one user: no person opens more tabs than this.
const MAX_CONNECTIONS_PER_USER: usize = 100_000;
/// Events waiting per connection, multiplied by every slow connection.
const MAX_SEND_QUEUE_LEN: usize = 1_000_000;
/// Event ids remembered for duplicates, each an allocation held for the process's life.
const MAX_DEDUPE_WINDOW: usize = 10_000_000;
/// A client sends only control messages (at most a token); tungstenite buffers a whole
/// message before handing it over.
const MAX_WS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Held by every WebSocket for its whole life: 1 MiB each is already more than a
/// connection's memory budget.
const MAX_WS_READ_BUFFER_BYTES: usize = 1024 * 1024;
/// An hour: a longer `retry:` leaves a page without events for longer than a deploy takes.
const MAX_SSE_RETRY_MS: u64 = 3_600_000;
/// Threads beyond the largest machines' cores only add switches.
const MAX_WORKER_THREADS: usize = 1024;

/// Reads settings through [`Raw`], recording a problem for each bad value and going on
/// with a placeholder, so one run reports everything. The placeholders never escape: a
/// config with problems is discarded.
pub(super) struct Validator<'a> {
    raw: &'a Raw<'a>,
    /// Every problem found so far, in the order the settings were read.
    pub(super) problems: Vec<String>,
    /// The configuration file's `[[route]]` tables, when it has any.
    pub(super) route_tables: Option<Vec<toml::Table>>,
    /// `config check`: a file is checked where no token key may be configured (CI), so
    /// the missing key source is not a problem there.
    pub(super) checking: bool,
}

impl<'a> Validator<'a> {
    /// Reads `raw`, after the `problems` already found in the flags.
    pub(super) fn new(raw: &'a Raw<'a>, problems: Vec<String>) -> Self {
        Validator {
            raw,
            problems,
            route_tables: None,
            checking: false,
        }
    }

    /// Whether the operator set `key` (flag, variable or file).
    pub(super) fn is_given(&self, key: Key) -> bool {
        self.raw.is_given(key)
    }

    /// Records that `key`'s value is wrong, named the way the operator set it.
    pub(super) fn problem(&mut self, key: Key, what: impl fmt::Display) {
        self.problems.push(format!("{}: {what}", key.label()));
    }

    /// The value, `None` when unset and without a default.
    pub(super) fn optional(&self, key: Key) -> Option<String> {
        self.raw.get(key)
    }

    /// A list setting where an explicitly empty value (or `off`) means none.
    pub(super) fn list(&self, key: Key) -> Vec<String> {
        let raw = self.raw.get_list(key).unwrap_or_default();
        if raw.trim() == "off" {
            return Vec::new();
        }
        split_list(&raw)
    }

    /// A secret, given either directly (`key`) or as the path of a file holding it
    /// (`file_key`, e.g. a mounted Kubernetes or Docker secret), never both. One trailing
    /// newline is trimmed, as editors and `echo` add one. Problems name the setting and
    /// the path, never the value.
    pub(super) fn secret(&mut self, key: Key, file_key: Key) -> Option<String> {
        let Some(path) = self.raw.get(file_key) else {
            return self.raw.get(key);
        };
        if self.raw.is_given(key) {
            self.problem(
                file_key,
                format_args!("set either {} or this, not both", key.setting().env),
            );
            // Read on as if only the value were set, so no second, misleading problem.
            return self.raw.get(key);
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.trim().is_empty() {
                    self.problem(file_key, format_args!("{path} is empty"));
                    return None;
                }
                Some(text.to_owned())
            }
            Err(e) => {
                self.problem(file_key, format_args!("cannot read {path}: {e}"));
                None
            }
        }
    }

    /// The value, empty when unset and without a default.
    pub(super) fn string(&self, key: Key) -> String {
        self.raw.get(key).unwrap_or_default()
    }

    /// The value parsed as `T`, `what` naming the expected form in the problem.
    pub(super) fn parsed<T: std::str::FromStr>(&mut self, key: Key, what: &str) -> Option<T> {
        let value = self.raw.get(key)?;
        match value.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.problem(key, format_args!("`{value}` is not {what}"));
                None
            }
        }
    }

    /// A positive integer within `[1, max]`.
    pub(super) fn count<T>(&mut self, key: Key, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + From<u8> + fmt::Display + Copy,
    {
        let fallback = T::from(1);
        match self.parsed::<T>(key, "a positive whole number") {
            Some(v) if v >= T::from(1) && v <= max => v,
            Some(v) => {
                self.problem(key, format_args!("{v} is out of range (1 to {max})"));
                fallback
            }
            None => fallback,
        }
    }

    /// Whole seconds within one day.
    /// A true/false setting; `false` when a problem was recorded.
    pub(super) fn switch(&mut self, key: Key) -> bool {
        match self.string(key).as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                self.problem(key, format_args!("`{other}` is not true or false"));
                false
            }
        }
    }

    pub(super) fn secs(&mut self, key: Key) -> Duration {
        Duration::from_secs(self.count::<u64>(key, MAX_SECS))
    }

    /// Every setting, read in a fixed order so problems are always listed the same way.
    pub(super) fn build(&mut self) -> Config {
        let listen = self
            .parsed::<SocketAddr>(Key::Listen, "a socket address like 0.0.0.0:8080")
            // Placeholder only: a problem has been recorded.
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut amqp = self.amqp();
        let jwt = self.jwt();
        let allowed_origins = self.allowed_origins();
        let connections = self.connection_limits();
        let (log_format, log) = self.logging();
        let shutdown = self.shutdown_timing();
        let sizes = self.event_sizes();
        let history = self.history();
        let history_stream = self.history_stream(&history);
        let mapping = self.mapping();
        let tables = self.route_tables.take();
        let routes = self.routes(tables.as_deref(), &amqp.bindings, &amqp.exchange, &mapping);
        amqp.bindings = routes.bindings();
        let state = self.state();
        let route_rules: usize = routes
            .list
            .iter()
            .filter_map(|r| r.state.as_ref())
            .map(Vec::len)
            .sum();
        if state.rules.len() + route_rules > usize::from(u16::MAX) {
            self.problems.push(format!(
                "{} state rules in GATEWAY_STATE and the routes together; at most {} are supported",
                state.rules.len() + route_rules,
                u16::MAX
            ));
        }

        Config {
            listen,
            amqp,
            jwt,
            allowed_origins,
            max_connections: connections.total,
            max_pending_connections: connections.pending,
            max_pending_per_address: connections.pending_per_address,
            max_connections_per_user: self
                .count::<usize>(Key::MaxConnectionsPerUser, MAX_CONNECTIONS_PER_USER),
            max_event_bytes: sizes.max_event_bytes,
            send_queue_len: self.count::<usize>(Key::SendQueueLen, MAX_SEND_QUEUE_LEN),
            send_queue_bytes: sizes.send_queue_bytes,
            dedupe_window: self.count::<usize>(Key::DedupeWindow, MAX_DEDUPE_WINDOW),
            history,
            history_stream,
            ws_max_message_bytes: self.count::<usize>(Key::WsMaxMessageBytes, MAX_WS_MESSAGE_BYTES),
            ws_read_buffer_bytes: self
                .count::<usize>(Key::WsReadBufferBytes, MAX_WS_READ_BUFFER_BYTES),
            ws_deflate: self.switch(Key::WsDeflate),
            ws_ping_interval: self.secs(Key::WsPingIntervalSecs),
            idle_timeout: self.secs(Key::IdleTimeoutSecs),
            write_timeout: self.secs(Key::WriteTimeoutSecs),
            handshake_timeout: self.secs(Key::HandshakeTimeoutSecs),
            sse_keepalive: self.secs(Key::SseKeepaliveSecs),
            sse_retry: Duration::from_millis(self.count::<u64>(Key::SseRetryMs, MAX_SSE_RETRY_MS)),
            shutdown_grace: shutdown.grace,
            shutdown_drain: shutdown.drain,
            mapping,
            routes,
            revocation: self.revocation(),
            shard: self.shard(),
            delivery: self.delivery(),
            state,
            demo_dir: self.optional(Key::DemoDir).map(PathBuf::from),
            worker_threads: self.worker_threads(),
            log_format,
            log,
        }
    }

    fn shard(&mut self) -> Option<super::Shard> {
        let raw = self.optional(Key::Shard)?;
        match super::Shard::parse(&raw) {
            Ok(shard) => Some(shard),
            Err(e) => {
                self.problem(Key::Shard, e);
                None
            }
        }
    }

    fn allowed_origins(&mut self) -> Vec<String> {
        let allowed_origins = split_list(&self.string(Key::AllowedOrigins));
        for origin in &allowed_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/');
            if !ok {
                self.problem(
                    Key::AllowedOrigins,
                    format_args!("`{origin}` is not an origin like https://studio.example.com"),
                );
            }
        }
        allowed_origins
    }

    /// `auto` leaves one CPU to the broker client's own I/O thread, which every event
    /// passes through: on two cores, a second worker measurably costs more CPU per event
    /// (wake-ups between workers) than it adds (docs/performance.md).
    fn worker_threads(&mut self) -> usize {
        let value = self.string(Key::WorkerThreads);
        if value.trim() == "auto" {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            return auto_worker_threads(cpus);
        }
        self.count::<usize>(Key::WorkerThreads, MAX_WORKER_THREADS)
    }

    fn logging(&mut self) -> (LogFormat, String) {
        let log_format = match self.string(Key::LogFormat).as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.problem(
                    Key::LogFormat,
                    format_args!("`{other}` is not `text` or `json`"),
                );
                LogFormat::Text
            }
        };
        let log = self.string(Key::Log);
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            self.problem(Key::Log, format_args!("`{log}` is not a valid filter"));
        }
        (log_format, log)
    }
}

/// Worker threads for `cpus` CPUs: all but one, at least one.
pub(super) fn auto_worker_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

/// Items of a comma-separated list, trimmed, empty ones skipped.
pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}
