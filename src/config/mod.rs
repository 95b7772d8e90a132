//! Configuration: every setting is a flag and a `GATEWAY_*` variable, parsed and validated
//! in full before anything binds a port.
//!
//! The table in [`SETTINGS`] is the single source for parsing, defaults, `--help` and error
//! messages, so a setting cannot exist in one and be missing from another; code names a
//! setting by its [`Key`]. The environment is read through a closure so tests pass a map
//! and never mutate the process environment.
//!
//! Files by concern: `settings` (the table, [`Key`], flag > variable > default), `validate`
//! (typed readers that collect every problem, and the assembly of [`Config`]), `amqp`,
//! `jwt`, `mapping` and `limits` (each concern's types and checks), `topic` (topic patterns
//! and their matcher). Configuration stands
//! beside the data flow: it imports none of it, and the flow imports its types from here.

mod amqp;
mod delivery;
mod file;
mod jwt;
mod limits;
mod mapping;
mod revocation;
mod routes;
mod settings;
mod shard;
mod state;
#[cfg(test)]
mod tests;
mod topic;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use amqp::{AmqpConfig, Binding, BrokerNode, TlsFiles, mask_password};
pub use delivery::{DeliveryConfig, KeyRule};
pub use jwt::JwtConfig;
pub use limits::{HistoryLimits, HistoryStream};
pub use mapping::{Mapping, Pointer};
pub use revocation::RevocationConfig;
pub use routes::{Route, Routes, Selected};
pub use settings::{Key, SETTINGS, Setting};
pub use shard::{Shard, shard_of};
pub use state::{StateConfig, StateLimits, StateRule};
pub use topic::{Pattern, patterns_overlap, topic_matches, with_words};

use file::ConfigFile;
use settings::Raw;
use validate::Validator;

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
    pub history: HistoryLimits,
    /// Largest incoming WebSocket message.
    pub ws_max_message_bytes: usize,
    /// WebSocket read buffer.
    pub ws_read_buffer_bytes: usize,
    /// Whether a WebSocket client's `permessage-deflate` offer is accepted: compressed
    /// event frames for clients that ask, at the cost of CPU per event.
    pub ws_deflate: bool,
    /// WebSocket ping interval.
    pub ws_ping_interval: Duration,
    /// Silence after which a WebSocket is closed.
    pub idle_timeout: Duration,
    /// Longest one write to a client may wait (an event, a replay, a reply, a ping):
    /// beyond it the client is not reading and the connection is dropped as slow.
    pub write_timeout: Duration,
    /// Time allowed for request headers.
    pub handshake_timeout: Duration,
    /// Sockets whose first request head is not complete yet; a flood of silent sockets
    /// takes at most these descriptors, never those of admitted clients.
    pub max_pending_connections: usize,
    /// Pending sockets one client address may hold (`None`: no limit, as behind a proxy,
    /// where every socket comes from the proxy's address).
    pub max_pending_per_address: Option<usize>,
    /// SSE heartbeat interval.
    pub sse_keepalive: Duration,
    /// SSE `retry:` hint.
    pub sse_retry: Duration,
    /// Bound on graceful shutdown.
    pub shutdown_grace: Duration,
    /// Clients are closed at random moments within this window, so a fleet of browsers
    /// does not reconnect in one spike.
    pub shutdown_drain: Duration,
    /// Where envelope fields are found: the mapping settings, which the default route
    /// uses and file routes start from.
    pub mapping: Mapping,
    /// Where the history is backfilled from, if anywhere.
    pub history_stream: Option<HistoryStream>,
    /// Conflation and interest limits.
    pub delivery: DeliveryConfig,
    /// Latest state per key, for snapshots.
    pub state: StateConfig,
    /// Which bindings bring which events, and how each route's events are read.
    pub routes: Routes,
    /// Which events revoke users and tenants, and how long revocations are kept.
    pub revocation: RevocationConfig,
    /// This instance's shard (`None`: unsharded, every tenant is served): clients of
    /// another shard's tenants are refused with where to go, never served silently.
    pub shard: Option<Shard>,
    /// Directory of the demo page, served under `/demo/` when set.
    pub demo_dir: Option<PathBuf>,
    /// Runtime worker threads.
    pub worker_threads: usize,
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
    /// Whether any event can be the latest state of a key: a rule in `GATEWAY_STATE` that a
    /// route uses, or in a route of its own. Without one no state is kept, and connections
    /// get no snapshots either.
    pub fn keeps_state(&self) -> bool {
        self.routes.list.iter().any(|r| match &r.state {
            Some(rules) => !rules.is_empty(),
            None => !self.state.rules.is_empty(),
        })
    }

    /// Parses flags (without the program name) and the environment, flags winning.
    pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut problems = Vec::new();
        let mut flags: HashMap<Key, String> = HashMap::new();
        let mut args = args.into_iter().map(Into::into).enumerate();
        while let Some((i, arg)) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok(Parsed::Help(help_text())),
                "-V" | "--version" => return Ok(Parsed::Version),
                _ => {}
            }
            let Some(body) = arg.strip_prefix("--") else {
                // Not quoted: after a misspelt `--jwt-secret`, this is the secret.
                problems.push(format!(
                    "unexpected argument {} (flags start with --; see --help)",
                    i + 1
                ));
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let Some(key) = Key::from_flag(name) else {
                problems.push(format!("unknown flag `--{name}` (see --help)"));
                continue;
            };
            match inline.or_else(|| args.next().map(|(_, value)| value)) {
                Some(value) => {
                    flags.insert(key, value);
                }
                None => problems.push(format!("flag `--{name}` needs a value")),
            }
        }

        Config::validate(flags, &env, problems, false).map(|c| Parsed::Run(Box::new(c)))
    }

    /// `config check FILE`: the configuration a start with `GATEWAY_CONFIG=FILE` would
    /// use (variables still override), with overlapping routes that disagree counted as
    /// problems too, and without requiring a token key (files are checked in CI).
    pub fn check(path: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let flags = HashMap::from([(Key::Config, path.to_owned())]);
        Config::validate(flags, &env, Vec::new(), true)
    }

    fn validate(
        flags: HashMap<Key, String>,
        env: &dyn Fn(&str) -> Option<String>,
        mut problems: Vec<String>,
        checking: bool,
    ) -> Result<Config, ConfigError> {
        let raw = Raw::new(flags, env);
        let file = match raw.get(Key::Config) {
            Some(path) => ConfigFile::load(&path, &mut problems),
            None => ConfigFile::default(),
        };
        let raw = raw.with_file(file.settings);
        let mut v = Validator::new(&raw, problems);
        v.route_tables = file.routes;
        v.checking = checking;
        let config = v.build();
        if checking {
            v.problems.extend(config.routes.overlaps.iter().cloned());
        }
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(v.problems))
        }
    }
}

/// `--help` text, generated from [`SETTINGS`].
pub fn help_text() -> String {
    let mut out = String::from(
        "realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE\n\n\
         Usage: realtime-gateway [--flag value | --flag=value]...\n\
         \x20      realtime-gateway config check FILE   (validate a GATEWAY_CONFIG file, print its routes)\n\
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
