//! Broker: the RabbitMQ link. Declares this instance's queue and bindings, consumes, hands
//! each message to the envelope parser and the hub, acknowledges, and reconnects with
//! capped exponential backoff and jitter whenever the link is lost.
//!
//! Clients never depend on the link: while it is down they stay connected and `/readyz`
//! says 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::config::AmqpConfig;
use crate::dedupe::RecentIds;
use crate::envelope::Event;
use crate::history::History;
use crate::hub::Hub;
use crate::mapping::{Mapping, Meta};
use crate::telemetry::Metrics;

/// First reconnect delay; doubled after each failed attempt up to the configured cap.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Time allowed for TCP connect plus the AMQP handshake, so a black-holed broker address
/// does not stall the reconnect loop.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most messages acknowledged together.
const ACK_BATCH: usize = 64;
/// Longest a processed message waits for its acknowledgement.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Consumer tag, visible in the management UI.
const CONSUMER_TAG: &str = "realtime-gateway";

/// What the consumer needs besides the broker settings.
pub struct Consumer {
    /// Broker settings.
    pub config: AmqpConfig,
    /// Largest body accepted.
    pub max_event_bytes: usize,
    /// Where envelope fields are found.
    pub mapping: Mapping,
    /// Recent event ids remembered for duplicate suppression.
    pub dedupe_window: usize,
    /// Where events go.
    pub hub: Arc<Hub>,
    /// Recent events, for resuming clients.
    pub history: Arc<History>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// True while consuming; `/readyz` reads it.
    pub ready: Arc<AtomicBool>,
}

/// Why a session with the broker ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("consumer stream ended")]
    StreamEnded,
}

impl Consumer {
    /// Runs until `shutdown` is cancelled, reconnecting as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = INITIAL_BACKOFF;
        let mut failed_before = false;
        // Kept across sessions: redeliveries after a reconnect are exactly what it catches.
        let mut recent = RecentIds::new(self.dedupe_window);
        loop {
            let mut consuming = false;
            let result = self
                .session(&shutdown, &mut consuming, failed_before, &mut recent)
                .await;
            self.set_ready(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    failed_before = true;
                    if consuming {
                        // It worked for a while: start over from a short delay.
                        backoff = INITIAL_BACKOFF;
                    }
                    let delay = jitter(backoff);
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "broker link down; clients stay connected, retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(self.config.reconnect_max);
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!("broker consumer stopped");
    }

    fn set_ready(&self, up: bool) {
        self.ready.store(up, Ordering::Release);
        self.metrics.broker_connected(up);
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        consuming: &mut bool,
        reconnecting: bool,
        recent: &mut RecentIds,
    ) -> Result<(), LinkError> {
        let cfg = &self.config;
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("realtime-gateway {}", cfg.queue)));
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&cfg.url, props)) => {
                r.map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??
            }
        };
        // After an outage, find out whether the queue kept our events: if it is gone (it
        // expired, or the broker restarted), events may have been lost and clients must
        // be told to refetch.
        let queue_lost = reconnecting && !queue_exists(&conn, &cfg.queue).await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await?;
        let mut exchanges: Vec<&str> = Vec::new();
        for b in &cfg.bindings {
            if !exchanges.contains(&b.exchange.as_str()) {
                exchanges.push(&b.exchange);
            }
        }
        for exchange in exchanges {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        // Passive: the platform owns its exchanges (their type and
                        // arguments); only check that they exist.
                        passive: !cfg.declare_exchanges,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_declare(
                cfg.queue.as_str().into(),
                // Not exclusive: an exclusive queue dies with its connection, and with it
                // every event published while the link is down. x-expires removes it
                // once this instance is really gone.
                QueueDeclareOptions::default(),
                queue_arguments(cfg),
            )
            .await?;
        for b in &cfg.bindings {
            channel
                .queue_bind(
                    cfg.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut consumer = channel
            .basic_consume(
                cfg.queue.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        *consuming = true;
        self.set_ready(true);
        if reconnecting {
            self.metrics.broker_reconnected();
        }
        if queue_lost {
            self.history.mark_gap();
            let told = self.hub.resync_all();
            tracing::warn!(
                amqp.queue = %cfg.queue,
                clients = told,
                "queue was gone after the outage; events may be lost, clients told to resync"
            );
        }
        tracing::info!(
            amqp.queue = %cfg.queue,
            amqp.bindings = ?cfg.bindings.iter().map(|b| format!("{}:{}", b.exchange, b.key)).collect::<Vec<_>>(),
            "consuming"
        );

        // Acknowledgements are batched (`multiple`): one ack per message costs a frame and
        // a cross-thread wakeup each, which dominated the CPU per event. A batch is sent
        // when it is full or ACK_DELAY after its first message, whichever comes first.
        let ack_batch = (usize::from(cfg.prefetch) / 2).clamp(1, ACK_BATCH);
        let mut ack_due: Option<u64> = None;
        let mut unacked = 0usize;
        let ack_timer = tokio::time::sleep(ACK_DELAY);
        tokio::pin!(ack_timer);
        loop {
            let delivery = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // What was handed to clients is acknowledged; what was not goes back to
                    // the queue, which outlives us for x-expires.
                    if let Some(tag) = ack_due {
                        let _ = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await;
                    }
                    let _ = conn.close(200, "gateway shutting down".into()).await;
                    return Ok(());
                }
                _ = &mut ack_timer, if ack_due.is_some() => {
                    if let Some(tag) = ack_due.take() {
                        channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
                    }
                    unacked = 0;
                    continue;
                }
                d = consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(LinkError::StreamEnded),
            };
            self.metrics.event_received();
            let headers = delivery.properties.headers().as_ref();
            let header = |name: &str| -> Option<String> {
                match headers?.inner().get(name)? {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                    _ => None,
                }
            };
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str());
            let meta = Meta {
                message_id,
                header: &header,
            };
            match Event::parse_with(delivery.data, self.max_event_bytes, &self.mapping, &meta) {
                Ok(event) if !recent.insert(&event.tenant, &event.id) => {
                    self.metrics.duplicate_dropped();
                    tracing::debug!(
                        event_id = %event.id,
                        trace_id = event.trace_id.as_deref().unwrap_or(""),
                        redelivered = delivery.redelivered,
                        "duplicate event dropped"
                    );
                }
                Ok(event) => {
                    // Into the history before the hub: a client registering meanwhile then
                    // finds it in its replay or gets it live (or both, and skips one).
                    let (event, (events, bytes)) = self.history.append(event);
                    self.metrics.history_size(events, bytes);
                    let recipients = self.hub.publish(&event);
                    tracing::debug!(
                        event_id = %event.id,
                        event_type = %event.event_type,
                        trace_id = event.trace_id.as_deref().unwrap_or(""),
                        recipients,
                        "event dispatched"
                    );
                }
                Err(reason) => {
                    self.metrics.event_dropped(reason);
                    tracing::warn!(
                        routing_key = %delivery.routing_key,
                        reason = reason.as_str(),
                        "dropping message: {reason}"
                    );
                }
            }
            // Every message is acknowledged, delivered or dropped: a malformed message
            // requeued would come straight back forever.
            if ack_due.is_none() {
                ack_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + ACK_DELAY);
            }
            ack_due = Some(delivery.delivery_tag);
            unacked += 1;
            if unacked >= ack_batch {
                if let Some(tag) = ack_due.take() {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await?;
                }
                unacked = 0;
            }
        }
    }
}

/// Whether `queue` exists, asked on a throwaway channel because a failed passive declare
/// closes the channel it was made on.
async fn queue_exists(conn: &Connection, queue: &str) -> Result<bool, LinkError> {
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = probe.close(200, "probe done".into()).await;
            Ok(true)
        }
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == NOT_FOUND => Ok(false),
            _ => Err(e.into()),
        },
    }
}

/// AMQP reply code of a passive declare for a queue that does not exist.
const NOT_FOUND: u16 = 404;

fn queue_arguments(cfg: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(cfg.queue_expires.as_millis().min(i64::MAX as u128) as i64),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(cfg.queue_max_length)),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(cfg.queue_max_bytes.min(i64::MAX as u64) as i64),
    );
    // Over the limits, old events go first: for live progress the newest matter most.
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// A delay between half of `d` and `d`, so a fleet that lost the broker together does not
/// come back in lockstep.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
        }
    }
}
