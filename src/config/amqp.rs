//! Broker settings: URL, exchanges and bindings, and the gateway's own queue.

use std::time::Duration;

use super::settings::Key;
use super::validate::{Validator, split_list};

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

impl Binding {
    /// Whether a message published with `routing_key` matches this binding's key, with
    /// topic-exchange rules: words between dots, `*` one word, `#` zero or more.
    pub fn matches(&self, routing_key: &str) -> bool {
        topic_matches(&self.key, routing_key)
    }
}

/// Topic-exchange matching of `routing_key` against `pattern`.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    matches_words(&pattern, &key)
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((word, rest)) => match key.split_first() {
            Some((k, key_rest)) => (*word == "*" || word == k) && matches_words(rest, key_rest),
            None => false,
        },
    }
}

impl Validator<'_> {
    pub(super) fn amqp(&mut self) -> AmqpConfig {
        let url = self.amqp_url();
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
            url,
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

    fn amqp_url(&mut self) -> String {
        let url = self.string(Key::AmqpUrl);
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            self.problem(Key::AmqpUrl, "must start with amqp:// or amqps://");
        }
        if url.starts_with("amqps://") {
            // The build carries no TLS stack for AMQP (see README, "Configuration").
            self.problem(
                Key::AmqpUrl,
                "amqps:// is not supported by this build; terminate TLS in front of RabbitMQ or use amqp:// on a private network",
            );
        }
        url
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
mod topic_tests {
    use super::topic_matches;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        for (p, k, want) in [
            ("identity.user.banned.v1", "identity.user.banned.v1", true),
            ("identity.user.banned.v1", "identity.user.banned.v2", false),
            ("identity.*.banned.v1", "identity.user.banned.v1", true),
            ("identity.#", "identity.user.banned.v1", true),
            ("identity.#", "identity", true),
            ("#", "a.b", true),
            ("render.job.#", "render.jobs.x", false),
            ("*.job.*", "render.job", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
        ] {
            assert_eq!(topic_matches(p, k), want, "{p} vs {k}");
        }
    }
}
