//! RabbitMQ streams the fleet shares: declaring and binding them, the markers an instance
//! publishes to know where "now" is in one, and the history backfill.
//!
//! The fleet's memory: a RabbitMQ stream, shared by every instance and bound like their
//! live queues, that keeps recent events for the history's age.
//!
//! An instance fills its resume history from it before reporting ready, so a client that
//! resumes on an instance that just started gets a replay instead of `resync`. When
//! continuity broke (the live queue was gone after a broker restart or a long outage), the
//! instance reads it again from just before the last event it holds and delivers what its
//! clients missed, in order; only when the stream cannot show that it covers the gap
//! (retention exceeded, stream unavailable) are clients told to resync. The live path stays
//! the per-instance queue, which is the lower-latency one; events that arrive both ways
//! are delivered once, by the per-tenant duplicate memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::LinkError;
use crate::config::{AmqpConfig, Binding, HistoryStream};

/// Header of the markers an instance publishes into the stream to know where "now" is.
pub(crate) const MARKER_HEADER: &str = "x-realtime-gateway-marker";
/// Credit of the stream consumer.
const PREFETCH: u16 = 512;
/// Longest a backfill may take before the instance goes on without it.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Read this much before the last event held, for clocks that disagree a little.
const SLACK: Duration = Duration::from_secs(10);

/// Where a backfill starts reading.
pub(crate) enum From {
    /// This long ago (a fresh start: the history's age).
    Ago(Duration),
    /// Shortly before this moment (after a break: the last event held).
    Before(SystemTime),
}

/// Declares a stream (idempotent as long as every instance asks for the same arguments).
pub(crate) async fn declare_stream(
    channel: &Channel,
    name: &str,
    max_age: Duration,
    max_bytes: u64,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{}s", max_age.as_secs().max(1)).into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(max_bytes.min(i64::MAX as u64) as i64),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(name.into(), durable, args).await?;
    Ok(())
}

/// Binds `queue` (a live queue or a stream) with `bindings`.
pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    bindings: &[Binding],
) -> Result<(), lapin::Error> {
    for b in bindings {
        channel
            .queue_bind(
                queue.into(),
                b.exchange.as_str().into(),
                b.key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Publishes a fresh marker straight into `stream` and returns it: a reader that reaches
/// it has seen everything published to the stream before now.
pub(crate) async fn publish_marker(
    channel: &Channel,
    stream: &str,
) -> Result<String, lapin::Error> {
    let marker = format!("{:016x}", rand::random::<u64>());
    let mut headers = FieldTable::default();
    headers.insert(
        MARKER_HEADER.into(),
        AMQPValue::LongString(marker.clone().into()),
    );
    channel
        .basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_headers(headers),
        )
        .await?;
    Ok(marker)
}

/// Reads the stream from `from` up to a marker published now, handing each message (never
/// the markers) to `each`. Bounded by [`BACKFILL_TIMEOUT`].
pub(crate) async fn read(
    conn: &Connection,
    stream: &HistoryStream,
    amqp: &AmqpConfig,
    from: From,
    mut each: impl FnMut(Delivery) + Send,
) -> Result<usize, LinkError> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    declare_stream(&channel, &stream.name, stream.max_age, stream.max_bytes).await?;
    bind(&channel, &stream.name, &amqp.bindings).await?;
    let marker = publish_marker(&channel, &stream.name).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::Timestamp(start_secs(from)),
    );
    let tag = format!("backfill-{marker}");
    let mut consumer = channel
        .basic_consume(
            stream.name.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let read_all = async {
        let mut n = 0;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let _ = delivery.ack(Default::default()).await;
            match marker_of(&delivery) {
                Some(m) if m == marker => return Ok(n),
                Some(_) => {}
                None => {
                    n += 1;
                    each(delivery);
                }
            }
        }
        Err(LinkError::StreamEnded)
    };
    let result = tokio::time::timeout(BACKFILL_TIMEOUT, read_all)
        .await
        .map_err(|_| LinkError::Timeout(BACKFILL_TIMEOUT))?;
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "backfill done".into()).await;
    result
}

fn start_secs(from: From) -> u64 {
    let at = match from {
        From::Ago(d) => SystemTime::now() - d,
        From::Before(t) => t - SLACK,
    };
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The marker a delivery carries, if it is one (of any instance).
pub(crate) fn marker_of(delivery: &Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(MARKER_HEADER))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}
