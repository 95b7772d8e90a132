//! Revocation settings: which events ban a user or suspend a tenant, where in them the
//! subject is, and how long every instance remembers it.

use std::time::Duration;

use super::amqp::Binding;
use super::limits::MAX_QUEUE_NAME_BYTES;
use super::mapping::Pointer;
use super::settings::Key;
use super::validate::Validator;

/// Longest a revocation may be remembered: a year, longer than any token should live; the
/// remembered entries are bounded by count as well (`revocation::MAX_ENTRIES`).
const MAX_REVOCATION_TTL_SECS: u64 = 365 * 86_400;

/// Which events revoke access, and how they are kept.
#[derive(Clone, Debug)]
pub struct RevocationConfig {
    /// Events that revoke the user named at `user_pointer`.
    pub user_keys: Vec<Binding>,
    /// Where the revoked user (a token's `sub`) is.
    pub user_pointer: Pointer,
    /// Events that revoke the tenant named at `tenant_pointer`.
    pub tenant_keys: Vec<Binding>,
    /// Where the revoked tenant is.
    pub tenant_pointer: Pointer,
    /// How long a revocation is remembered (and kept in the stream): the longest token
    /// lifetime accepted.
    pub ttl: Duration,
    /// The stream every instance reads revocations from.
    pub stream: String,
}

impl RevocationConfig {
    /// Whether any revocation keys are configured.
    pub fn enabled(&self) -> bool {
        !(self.user_keys.is_empty() && self.tenant_keys.is_empty())
    }
}

impl Validator<'_> {
    pub(super) fn revocation(&mut self) -> RevocationConfig {
        let exchange = self.string(Key::AmqpExchange);
        let stream = self.string(Key::RevocationStream);
        if stream.is_empty() || stream.len() > MAX_QUEUE_NAME_BYTES || stream.starts_with("amq.") {
            self.problem(
                Key::RevocationStream,
                "must be 1 to 255 bytes and not start with `amq.`",
            );
        }
        RevocationConfig {
            user_keys: self.revocation_keys(Key::RevocationUserKeys, &exchange),
            user_pointer: self.pointer(Key::RevocationUserPointer),
            tenant_keys: self.revocation_keys(Key::RevocationTenantKeys, &exchange),
            tenant_pointer: self.pointer(Key::RevocationTenantPointer),
            // Up to a year, like the longest connection a token can hold.
            ttl: Duration::from_secs(
                self.count::<u64>(Key::RevocationTtlSecs, MAX_REVOCATION_TTL_SECS),
            ),
            stream,
        }
    }

    fn revocation_keys(&mut self, key: Key, default_exchange: &str) -> Vec<Binding> {
        let mut out = Vec::new();
        for entry in self.list(key) {
            let (exchange, rk) = match entry.split_once(':') {
                Some((ex, k)) => (ex.trim().to_owned(), k.trim().to_owned()),
                None => (default_exchange.to_owned(), entry.clone()),
            };
            if exchange.is_empty() || rk.is_empty() || rk.contains(char::is_whitespace) {
                self.problem(
                    key,
                    format_args!("`{entry}` is not `key` or `exchange:key`"),
                );
                continue;
            }
            out.push(Binding { exchange, key: rk });
        }
        out
    }
}
