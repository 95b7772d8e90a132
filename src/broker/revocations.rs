//! The revocation feed: a RabbitMQ stream, shared by every instance, that keeps the
//! platform's ban and suspension events for the revocation TTL.
//!
//! The stream is bound to the revocation keys, so the broker copies each such event into
//! it as it is published. Every instance reads it from "now minus the TTL" at start, so
//! an instance that starts after a ban knows it; it does not report ready until it has
//! read up to a marker it published itself on connecting, so that "ready" means "knows
//! every revocation published before it started". It then follows the stream live and
//! closes the named connections within moments of the event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::connect::Nodes;
use super::streams::{bind, declare_stream, marker_of, publish_marker};
use super::{Backoff, LinkError};
use crate::config::{AmqpConfig, Pointer, RevocationConfig};
use crate::envelope::rfc3339_micros;
use crate::hub::Hub;
use crate::revocation::{RevocationKind, Revocations, Revoked};
use crate::telemetry::untrusted;

/// Credit of the stream consumer (streams require a prefetch).
const PREFETCH: u16 = 256;

/// Reads the revocation stream and applies it.
pub struct RevocationFeed {
    /// The broker: its nodes, TLS settings and reconnect cap, as for the consumer.
    pub broker: AmqpConfig,
    /// Which events, where their subject is, the stream and its retention.
    pub config: RevocationConfig,
    /// Where revocations are remembered (for admission).
    pub revocations: Arc<Revocations>,
    /// Whose connections are closed.
    pub hub: Arc<Hub>,
    /// Set once the feed has read everything published before this instance started;
    /// `/readyz` waits for it.
    pub caught_up: Arc<AtomicBool>,
}

impl RevocationFeed {
    /// Runs until `shutdown`, reconnecting as needed and resuming after the last offset
    /// read.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.broker.reconnect_max);
        let mut nodes = Nodes::new(&self.broker);
        let mut next_offset: Option<i64> = None;
        loop {
            let mut read_any = false;
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.session(&mut nodes, &mut next_offset, &mut read_any) => r,
            };
            let e = match result {
                Ok(()) => LinkError::StreamEnded,
                Err(e) => e,
            };
            if !backoff
                .wait(
                    read_any,
                    &e,
                    nodes.connected(),
                    "revocation stream",
                    &shutdown,
                )
                .await
            {
                break;
            }
        }
        tracing::info!("revocation feed stopped");
    }

    async fn session(
        &self,
        nodes: &mut Nodes,
        next_offset: &mut Option<i64>,
        read_any: &mut bool,
    ) -> Result<(), LinkError> {
        let (conn, node) = nodes.connect("realtime-gateway revocations").await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        self.declare(&channel).await?;
        let marker = publish_marker(&channel, &self.config.stream).await?;
        let mut consumer = channel
            .basic_consume(
                self.config.stream.as_str().into(),
                "realtime-gateway-revocations".into(),
                BasicConsumeOptions::default(),
                start_at(*next_offset, self.config.ttl),
            )
            .await?;
        tracing::info!(
            amqp.node = %node,
            stream = %self.config.stream,
            "reading revocations"
        );
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            *read_any = true;
            if let Some(offset) = header_long(&delivery, "x-stream-offset") {
                *next_offset = Some(offset + 1);
            }
            match marker_of(&delivery) {
                Some(m) if m == marker => {
                    if !self.caught_up.swap(true, Ordering::AcqRel) {
                        tracing::info!("revocations caught up");
                    }
                }
                Some(_) => {}
                None => self.apply(&delivery),
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
        Err(LinkError::StreamEnded)
    }

    /// Declares the stream and binds it to the revocation keys.
    async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let cfg = &self.config;
        // Revocations are small and rare; the byte cap only guards against a runaway
        // producer.
        declare_stream(channel, &cfg.stream, cfg.ttl, 1 << 30).await?;
        bind(channel, &cfg.stream, &cfg.user_keys).await?;
        bind(channel, &cfg.stream, &cfg.tenant_keys).await
    }

    /// Reads one revocation event and applies it: remembered first, then every matching
    /// connection closed, so a connection admitted meanwhile is caught by one or the other.
    fn apply(&self, delivery: &Delivery) {
        let metrics = self.revocations.metrics();
        let key = delivery.routing_key.as_str();
        let parsed = serde_json::from_slice::<Value>(&delivery.data).ok();
        let (kind, pointer) = if self.config.user_keys.iter().any(|b| b.matches(key)) {
            (RevocationKind::User, &self.config.user_pointer)
        } else if self.config.tenant_keys.iter().any(|b| b.matches(key)) {
            (RevocationKind::Tenant, &self.config.tenant_pointer)
        } else {
            return;
        };
        let Some(who) = parsed.as_ref().and_then(|v| subject(v, pointer, kind)) else {
            metrics.events.inc(RevocationKind::Invalid);
            tracing::warn!(
                routing_key = %untrusted(key),
                "dropping revocation event without a usable subject"
            );
            return;
        };
        // Never later than now: a producer clock ahead must not refuse tokens issued
        // after the ban was read.
        let at = parsed
            .as_ref()
            .map_or_else(now_secs, event_time_secs)
            .min(now_secs());
        let trace_id = parsed
            .as_ref()
            .and_then(|v| v.get("trace_id"))
            .and_then(Value::as_str)
            .unwrap_or("");
        metrics.events.inc(kind);
        if self.revocations.revoke(who.clone(), at) {
            let closed = self.hub.revoke(&who);
            tracing::info!(
                routing_key = %untrusted(key),
                kind = kind.as_str(),
                closed,
                trace_id = %untrusted(trace_id),
                "access revoked"
            );
        }
    }
}

/// Where to start reading: after the last offset read, or at "now minus the TTL".
fn start_at(next_offset: Option<i64>, ttl: Duration) -> FieldTable {
    let mut args = FieldTable::default();
    let value = match next_offset {
        Some(offset) => AMQPValue::LongLongInt(offset),
        None => AMQPValue::Timestamp(now_secs().saturating_sub(ttl.as_secs())),
    };
    args.insert("x-stream-offset".into(), value);
    args
}

/// The revoked user or tenant: a non-empty string at `pointer`, nothing else.
fn subject(v: &Value, pointer: &Pointer, kind: RevocationKind) -> Option<Revoked> {
    let s = v.pointer(&pointer.to_string())?.as_str()?;
    if s.is_empty() {
        return None;
    }
    match kind {
        RevocationKind::User => Some(Revoked::User(s.to_owned())),
        RevocationKind::Tenant => Some(Revoked::Tenant(s.to_owned())),
        RevocationKind::Invalid => None,
    }
}

/// The event's `event_time` in seconds, or now when it has none: tokens issued before
/// the moment the platform acted are the ones refused.
fn event_time_secs(v: &Value) -> u64 {
    v.get("event_time")
        .and_then(Value::as_str)
        .and_then(rfc3339_micros)
        .map(|us| (us / 1_000_000).max(0) as u64)
        .unwrap_or_else(now_secs)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header<'d>(delivery: &'d Delivery, name: &str) -> Option<&'d AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(name))
}

fn header_long(delivery: &Delivery, name: &str) -> Option<i64> {
    match header(delivery, name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_must_be_non_empty_strings() {
        let user = Pointer::parse("/user_id").unwrap();
        let ok = serde_json::json!({"user_id": "u1"});
        assert_eq!(
            subject(&ok, &user, RevocationKind::User),
            Some(Revoked::User("u1".into()))
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"user_id": ""}),
            serde_json::json!({"user_id": null}),
            serde_json::json!({"user_id": 7}),
            serde_json::json!({"user_id": ["*"]}),
        ] {
            assert_eq!(subject(&bad, &user, RevocationKind::User), None, "{bad}");
        }
    }

    #[test]
    fn the_revocation_time_is_the_event_time() {
        let v = serde_json::json!({"event_time": "2026-05-27T10:15:00Z"});
        assert_eq!(event_time_secs(&v), 1_779_876_900);
        let now = now_secs();
        assert!(event_time_secs(&serde_json::json!({})) >= now);
    }
}
