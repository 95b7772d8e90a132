//! Broker settings: the cluster's nodes and how to reach them (TLS, heartbeat), exchanges
//! and bindings, and the gateway's own queue.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};

use super::settings::Key;
use super::validate::{Validator, split_list};

/// Broker side settings.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// The nodes of one cluster, in the order given (the broker shuffles them per
    /// instance); at least one.
    pub nodes: Vec<BrokerNode>,
    /// Certificates for `amqps://` nodes.
    pub tls: TlsFiles,
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

/// One broker node: where it is, credentials and connection options included.
#[derive(Clone)]
pub struct BrokerNode {
    /// The parsed URL with the default heartbeat applied. Holds the password: never
    /// logged (the `Debug` implementation shows [`BrokerNode::masked`]).
    pub uri: AMQPUri,
    /// `host:port`, how logs and metrics name the node.
    pub addr: String,
    /// The URL with its password replaced by `***`, for logs.
    pub masked: String,
}

impl BrokerNode {
    /// Whether the node is reached over TLS.
    pub fn tls(&self) -> bool {
        matches!(self.uri.scheme, AMQPScheme::AMQPS)
    }
}

impl fmt::Debug for BrokerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

/// Files of the TLS settings, read on every connect so that rotated certificates are
/// picked up by the next reconnect without a restart.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// PEM CA certificates trusted besides the system roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its key, presented to the broker.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One binding of the gateway's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Exchange.
    pub exchange: String,
    /// Binding key.
    pub key: String,
}

impl Binding {
    /// Whether a message published with `routing_key` matches this binding's key, with
    /// topic-exchange rules: words between dots, `*` one word, `#` zero or more.
    pub fn matches(&self, routing_key: &str) -> bool {
        super::topic::topic_matches(&self.key, routing_key)
    }
}

impl Validator<'_> {
    pub(super) fn amqp(&mut self) -> AmqpConfig {
        let nodes = self.amqp_nodes();
        let tls = self.amqp_tls(&nodes);
        let exchange = self.string(Key::AmqpExchange);
        if exchange.is_empty() || exchange.len() > 255 {
            self.problem(Key::AmqpExchange, "must be 1 to 255 bytes");
        }
        let bindings = self.bindings(&exchange);
        let declare_exchanges = match self.string(Key::AmqpExchangeDeclare).as_str() {
            "declare" => true,
            "passive" => false,
            other => {
                self.problem(
                    Key::AmqpExchangeDeclare,
                    format_args!("`{other}` is not `declare` or `passive`"),
                );
                true
            }
        };
        let queue = self
            .optional(Key::AmqpQueue)
            .unwrap_or_else(default_queue_name);
        if queue.len() > 255 || queue.starts_with("amq.") {
            self.problem(
                Key::AmqpQueue,
                "must be at most 255 bytes and not start with `amq.`",
            );
        }
        AmqpConfig {
            nodes,
            tls,
            exchange,
            bindings,
            declare_exchanges,
            queue,
            prefetch: self.count::<u16>(Key::AmqpPrefetch, u16::MAX),
            queue_expires: self.secs(Key::AmqpQueueExpiresSecs),
            queue_max_length: self.count::<u32>(Key::AmqpQueueMaxLength, u32::MAX),
            queue_max_bytes: self.count::<u64>(Key::AmqpQueueMaxBytes, u64::MAX),
            reconnect_max: self.secs(Key::AmqpReconnectMaxSecs),
        }
    }

    /// The node URLs, each parsed, with the default heartbeat applied. Problems name a
    /// node by its position and masked URL (by its position only when no URL can be made
    /// out), never by its password.
    fn amqp_nodes(&mut self) -> Vec<BrokerNode> {
        let heartbeat = self.count::<u16>(Key::AmqpHeartbeatSecs, 3_600);
        let before = self.problems.len();
        let list = self
            .secret(Key::AmqpUrl, Key::AmqpUrlFile)
            .unwrap_or_default();
        let urls = split_list(&list);
        let mut nodes = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let n = i + 1;
            match (parse_node(url, heartbeat), mask_password(url)) {
                (Ok(node), _) => nodes.push(node),
                (Err(why), Some(masked)) => {
                    self.problem(Key::AmqpUrl, format_args!("node {n} (`{masked}`): {why}"));
                }
                // No user info to be found: any of it may be a password.
                (Err(why), None) => self.problem(Key::AmqpUrl, format_args!("node {n}: {why}")),
            }
        }
        // Unless the file could not be read, which is the problem to report.
        if urls.is_empty() && self.problems.len() == before {
            self.problem(
                Key::AmqpUrl,
                "at least one amqp:// or amqps:// URL is needed",
            );
        }
        let tls = nodes.iter().filter(|n| n.tls()).count();
        if tls != 0 && tls != nodes.len() {
            // A list that mixes them would fall back to plain text when the TLS nodes fail.
            self.problem(
                Key::AmqpUrl,
                "mixes amqp:// and amqps:// nodes; list the nodes of one cluster, all over TLS or none",
            );
        }
        nodes
    }

    /// The TLS files, checked readable, and consistent with the nodes: TLS settings
    /// without an `amqps://` node, or EXTERNAL without a client certificate, would not do
    /// what the operator meant.
    fn amqp_tls(&mut self, nodes: &[BrokerNode]) -> TlsFiles {
        let file = |v: &mut Self, key: Key| {
            let path = v.optional(key).map(PathBuf::from)?;
            match std::fs::read(&path) {
                Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN ") => Some(path),
                Ok(_) => {
                    v.problem(key, format_args!("{} holds no PEM block", path.display()));
                    None
                }
                Err(e) => {
                    v.problem(key, format_args!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        };
        let ca_file = file(self, Key::AmqpTlsCaFile);
        let cert = file(self, Key::AmqpTlsCertFile);
        let key = file(self, Key::AmqpTlsKeyFile);
        let given = |v: &Self, k: Key| v.optional(k).is_some();
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => {
                if given(self, Key::AmqpTlsCertFile) != given(self, Key::AmqpTlsKeyFile) {
                    self.problem(
                        Key::AmqpTlsCertFile,
                        "needs GATEWAY_AMQP_TLS_KEY_FILE, and the other way round",
                    );
                }
                None
            }
        };
        let any_tls = nodes.iter().any(BrokerNode::tls);
        for k in [
            Key::AmqpTlsCaFile,
            Key::AmqpTlsCertFile,
            Key::AmqpTlsKeyFile,
        ] {
            if given(self, k) && !nodes.is_empty() && !any_tls {
                self.problem(k, "is set, but no node is amqps://");
            }
        }
        let external = nodes
            .iter()
            .any(|n| matches!(n.uri.query.auth_mechanism, Some(SASLMechanism::External)));
        if external && client.is_none() && !given(self, Key::AmqpTlsCertFile) {
            self.problem(
                Key::AmqpUrl,
                "auth_mechanism=external needs a client certificate (GATEWAY_AMQP_TLS_CERT_FILE and GATEWAY_AMQP_TLS_KEY_FILE)",
            );
        }
        TlsFiles { ca_file, client }
    }

    /// `exchange:key` entries, plain keys binding to `default_exchange`.
    fn bindings(&mut self, default_exchange: &str) -> Vec<Binding> {
        let mut bindings = Vec::new();
        for entry in split_list(&self.string(Key::AmqpBindings)) {
            // Topic keys have no colons, so the first one separates.
            let (ex, key) = match entry.split_once(':') {
                Some((ex, key)) => (ex.trim().to_owned(), key.trim().to_owned()),
                None => (default_exchange.to_owned(), entry.clone()),
            };
            let bad = ex.is_empty()
                || ex.len() > 255
                || key.is_empty()
                || key.len() > 255
                || key.chars().chain(ex.chars()).any(char::is_whitespace);
            if bad {
                self.problem(
                    Key::AmqpBindings,
                    format_args!("`{entry}` is not `key` or `exchange:key`"),
                );
            }
            bindings.push(Binding { exchange: ex, key });
        }
        if bindings.is_empty() {
            self.problem(Key::AmqpBindings, "at least one binding key is needed");
        }
        bindings
    }
}

/// `url` parsed as one node. The error never quotes the URL (it may hold a password).
fn parse_node(url: &str, default_heartbeat: u16) -> Result<BrokerNode, String> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err("must start with amqp:// or amqps://".to_owned());
    }
    let masked = mask_password(url).ok_or("not a URL")?;
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("not a URL: {e} (percent-encode `/ ? # @ :` in the user and password)")
    })?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("has no host")?
        .to_owned();
    // `amqp://u:4821/x@mq` is host `u`, port 4821 to a parser, but the mask hides
    // everything up to the last `@`: had it been accepted, the node's name (`u:4821`, in
    // every log line) would show part of the password.
    if !host.eq_ignore_ascii_case(host_after_userinfo(url)) {
        return Err(
            "user info and host cannot be told apart (percent-encode `/ ? # @ :` in the user and password, and `@` in the vhost)".to_owned(),
        );
    }
    let mut uri: AMQPUri = url.parse().map_err(|_| {
        "not a valid AMQP URL (check the port, the percent-encoding of user and password, and the query)".to_owned()
    })?;
    // The AMQP URL parser only keeps host names; an IP address would become `localhost`.
    uri.authority.host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    uri.query.heartbeat.get_or_insert(default_heartbeat);
    let addr = format!("{host}:{}", uri.authority.port);
    Ok(BrokerNode { uri, addr, masked })
}

/// The host as [`mask_password`] finds it: after the last `@` (or the `://`), up to the
/// port, path, query or fragment; an IPv6 address keeps its brackets.
fn host_after_userinfo(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_on = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let end = if host_on.starts_with('[') {
        host_on.find(']').map_or(host_on.len(), |i| i + 1)
    } else {
        host_on.find([':', '/', '?', '#']).unwrap_or(host_on.len())
    };
    &host_on[..end]
}

/// `url` with the password of its user info replaced by `***`, or `None` when `url` does
/// not even start with a scheme and `://` (then any of it may be a password).
///
/// The user info is found by text, not by a URL parser: it ends at the *last* `@`, so a
/// password holding `/ ? # @` unencoded (which a parser reads as path, query or fragment)
/// is still masked whole. The price: an `@` in the vhost or query hides the host too,
/// which is more than needed but never a password.
pub fn mask_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return None;
    }
    let masked = match rest.rsplit_once('@') {
        Some((userinfo, host_on)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host_on}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    Some(masked)
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

#[cfg(test)]
mod node_tests {
    use std::collections::HashMap;

    use super::super::settings::Raw;
    use super::*;

    #[test]
    fn passwords_are_masked() {
        for (url, want) in [
            (
                "amqps://gw:s3cr%40t@mq.example:5671/%2f?heartbeat=5",
                "amqps://gw:***@mq.example:5671/%2f?heartbeat=5",
            ),
            ("amqp://gw@mq/%2f", "amqp://gw@mq/%2f"),
            ("amqp://mq:5672", "amqp://mq:5672"),
            ("amqp://u:p@ss@mq/%2f", "amqp://u:***@mq/%2f"),
            // Unencoded `/ ? #` would end the user info for a URL parser.
            ("amqp://u:pa/ss@mq/%2f", "amqp://u:***@mq/%2f"),
            ("amqp://u:pa?ss@mq:5672/%2f", "amqp://u:***@mq:5672/%2f"),
            ("amqps://u:pa#ss@mq", "amqps://u:***@mq"),
            ("amqp://u:12/34@mq/%2f", "amqp://u:***@mq/%2f"),
            (
                "amqp://u:a/b?c#d@e@mq/%2f?heartbeat=5",
                "amqp://u:***@mq/%2f?heartbeat=5",
            ),
            // An `@` after the host hides the host rather than risk showing a password.
            ("amqp://u:p@mq/v@x", "amqp://u:***@x"),
        ] {
            assert_eq!(mask_password(url).as_deref(), Some(want), "{url}");
        }
        for unparsable in [
            "u:secret@mq/%2f",
            "secret",
            "://u:secret@mq",
            "a b://u:secret@mq",
        ] {
            assert_eq!(mask_password(unparsable), None, "{unparsable}");
        }
    }

    #[test]
    fn node_problems_never_quote_a_password() {
        for (url, secret) in [
            ("amqp://u:pa/ss@mq/%2f", "pa/ss"),
            ("amqp://u:pa?ss@mq/%2f", "pa?ss"),
            ("amqp://u:pa#ss@mq/%2f", "pa#ss"),
            ("amqp://u:12/34@mq/%2f", "12/34"),
            ("amqp://u:hunter2@mq:notaport/", "hunter2"),
            ("u:hunter2@mq/%2f", "hunter2"),
            ("http://u:hunter2@mq/", "hunter2"),
        ] {
            let env = |k: &str| (k == "GATEWAY_AMQP_URL").then(|| url.to_owned());
            let raw = Raw::new(HashMap::new(), &env);
            let mut v = Validator::new(&raw, Vec::new());
            v.amqp_nodes();
            let text = v.problems.join("\n");
            assert!(text.contains("node 1"), "{url}: {text}");
            assert!(!text.contains(secret), "{url}: {text}");
        }
    }

    #[test]
    fn nodes_get_the_default_heartbeat_and_a_host_port_name() {
        let n = parse_node("amqps://u:p@10.1.2.3/%2f", 15).unwrap();
        assert_eq!(n.addr, "10.1.2.3:5671");
        assert_eq!(n.uri.authority.host, "10.1.2.3");
        assert_eq!(n.uri.query.heartbeat, Some(15));
        assert!(n.tls());
        assert_eq!(format!("{n:?}"), "amqps://u:***@10.1.2.3/%2f");
        let n = parse_node("amqp://gw:p%2F@[::1]:5673/%2f", 15).unwrap();
        assert_eq!(
            (n.addr.as_str(), n.masked.as_str()),
            ("[::1]:5673", "amqp://gw:***@[::1]:5673/%2f")
        );
        let n = parse_node("amqp://mq.example:5673/%2f?heartbeat=60", 15).unwrap();
        assert_eq!(
            (n.addr.as_str(), n.uri.query.heartbeat),
            ("mq.example:5673", Some(60))
        );
        // An `@` after the host would make the mask hide the wrong part.
        assert!(parse_node("amqp://u:p@mq/v@x", 15).is_err());
        let err = parse_node("amqp://u:hunter2@mq:notaport/", 15).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
