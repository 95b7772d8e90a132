//! The revocation feed: a RabbitMQ stream, shared by every instance, that keeps the
//! platform's ban and suspension events for the revocation TTL.
//!
//! The stream is bound to the revocation keys, so the broker copies each such event into
//! it as it is published. Every instance reads it from "now minus the TTL" at start, so
//! an instance that starts after a ban knows it; it does not report ready until it has
//! read up to a marker it published itself on connecting, so that "ready" means "knows
//! every revocation published before it started". It then follows the stream live and
//! closes the named connections within moments of the event.
//!
//! After a broken link it resumes after the last message read, once it has checked that
//! the stream still holds that message there: a stream re-created meanwhile (broker data
//! lost, or deleted and declared again) starts its offsets over, and resuming at the old
//! offset would skip every ban until the new stream reached it. Such a stream is read
//! again from "now minus the TTL"; bans read twice change nothing (see `Revocations`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::connect::Nodes;
use super::streams::{
    bind, declare_stream, holds_after, marker_of, offset_of, probe, publish_marker,
};
use super::{Backoff, LinkError};
use crate::config::{AmqpConfig, Pointer, RevocationConfig};
use crate::envelope::rfc3339_micros;
use crate::hub::Hub;
use crate::revocation::{RevocationKind, Revocations, Revoked};
use crate::telemetry::untrusted;

/// Credit of the stream consumer (streams require a prefetch).
const PREFETCH: u16 = 256;

/// The last message the feed read: where to resume, and what must still be there for the
/// stream to be the one it was reading.
#[derive(Clone, Copy, Debug)]
struct LastRead {
    offset: u64,
    /// Of the message, not its position, so a re-created stream that has grown past
    /// `offset` does not pass for the old one.
    fingerprint: u64,
}

impl LastRead {
    fn of(delivery: &Delivery) -> Option<LastRead> {
        Some(LastRead {
            offset: offset_of(delivery)?,
            fingerprint: fingerprint(delivery),
        })
    }
}

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
    /// Runs until `shutdown`, reconnecting as needed and resuming after the last message
    /// read.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.broker.reconnect_max);
        let mut nodes = Nodes::new(&self.broker);
        let mut last: Option<LastRead> = None;
        loop {
            let mut read_any = false;
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.session(&mut nodes, &mut last, &mut read_any) => r,
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
        last: &mut Option<LastRead>,
        read_any: &mut bool,
    ) -> Result<(), LinkError> {
        let (conn, node) = nodes.connect("realtime-gateway revocations").await?;
        let channel = conn.create_channel().await?;
        self.declare(&channel).await?;
        let marker = publish_marker(&channel, &self.config.stream).await?;
        let start = self.start(&channel, &marker, *last).await?;
        // Set here, after the probes: each of those needs one message only.
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start);
        let mut consumer = channel
            .basic_consume(
                self.config.stream.as_str().into(),
                "realtime-gateway-revocations".into(),
                BasicConsumeOptions::default(),
                args,
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
            if let Some(read) = LastRead::of(&delivery) {
                *last = Some(read);
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

    /// Where this session reads from: just after the last message read, when the stream
    /// still holds it there; else from "now minus the TTL" (the first session, or a
    /// stream re-created or truncated since, which is logged and counted).
    async fn start(
        &self,
        channel: &Channel,
        marker: &str,
        last: Option<LastRead>,
    ) -> Result<AMQPValue, LinkError> {
        let since = now_secs().saturating_sub(self.config.ttl.as_secs());
        let Some(last) = last else {
            return Ok(AMQPValue::Timestamp(since));
        };
        if self.still_holds(channel, marker, last).await? {
            return Ok(AMQPValue::LongLongInt(last.offset.saturating_add(1) as i64));
        }
        self.revocations.metrics().rereads.inc();
        tracing::warn!(
            stream = %self.config.stream,
            last_offset = last.offset,
            from_unix_secs = since,
            "revocation stream was re-created; re-reading from {since} (now minus the TTL)"
        );
        Ok(AMQPValue::Timestamp(since))
    }

    /// Whether the stream still holds the message last read, at its offset. Asked in two
    /// probes: first whether the stream reaches past that offset at all (a probe at an
    /// offset past the end would wait for a message that may never come), then what is
    /// there.
    async fn still_holds(
        &self,
        channel: &Channel,
        marker: &str,
        last: LastRead,
    ) -> Result<bool, LinkError> {
        let stream = self.config.stream.as_str();
        let tag = format!("revocations-{marker}");
        if !holds_after(channel, stream, last.offset, marker, &format!("{tag}-end")).await? {
            return Ok(false);
        }
        let at = AMQPValue::LongLongInt(last.offset as i64);
        let there = probe(channel, stream, at, &format!("{tag}-last")).await?;
        // Past its TTL and gone, the message reads as a different one: reading again
        // from "now minus the TTL" is then what resuming would have read anyway.
        Ok(LastRead::of(&there)
            .is_some_and(|t| t.offset == last.offset && t.fingerprint == last.fingerprint))
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

/// What a message is, whatever its position: two messages alike in routing key, body and
/// marker are one event published twice, read the same way.
fn fingerprint(delivery: &Delivery) -> u64 {
    let mut h = DefaultHasher::new();
    delivery.exchange.as_str().hash(&mut h);
    delivery.routing_key.as_str().hash(&mut h);
    delivery.data.hash(&mut h);
    marker_of(delivery).hash(&mut h);
    h.finish()
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
