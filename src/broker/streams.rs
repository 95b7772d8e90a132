//! RabbitMQ streams the fleet shares: declaring and binding them, the markers an instance
//! publishes to know where "now" is in one, probes that look at one position of one, and
//! the history backfill.
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
/// Longest a probe waits for the message it expects.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read this much before the last event held, for clocks that disagree a little.
const SLACK: Duration = Duration::from_secs(10);

/// Where a backfill starts reading.
pub(crate) enum From {
    /// The newest `count` events, none older than `age` (a fresh start: what the history
    /// can hold). Reading the whole age instead would take minutes at high rates (5 000
    /// events/s for 5 minutes is 1.5 million events) for a history that keeps 10 000.
    Newest { count: u64, age: Duration },
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
    declare_stream(&channel, &stream.name, stream.max_age, stream.max_bytes).await?;
    bind(&channel, &stream.name, &amqp.bindings).await?;
    let marker = publish_marker(&channel, &stream.name).await?;
    let start = match from {
        From::Before(t) => AMQPValue::Timestamp(secs_since_epoch(t - SLACK)),
        From::Newest { count, age } => {
            let spec = AMQPValue::Timestamp(secs_since_epoch(SystemTime::now() - age));
            // Both probes find at least the marker just published.
            let oldest = first_offset(&channel, &stream.name, spec, &marker, "oldest").await?;
            let last = AMQPValue::LongString("last".into());
            let newest = first_offset(&channel, &stream.name, last, &marker, "newest").await?;
            AMQPValue::LongLongInt(newest.saturating_sub(count).max(oldest) as i64)
        }
    };
    // Set here, after the probes: each of those needs one message only.
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), start);
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

fn secs_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The offset of the first message a consumer attached at `spec` receives: where the
/// stream's messages since a time begin, or (`last`) where its last chunk begins, a little
/// before its newest message.
async fn first_offset(
    channel: &Channel,
    stream: &str,
    spec: AMQPValue,
    marker: &str,
    what: &str,
) -> Result<u64, LinkError> {
    let first = probe(channel, stream, spec, &format!("backfill-{marker}-{what}")).await?;
    Ok(offset_of(&first).unwrap_or(0))
}

/// The first message a consumer attached at `spec` receives: a look at one position of
/// the stream without reading the rest. Only for a position some message will reach (a
/// marker published just before is at the end); bounded by [`PROBE_TIMEOUT`].
pub(crate) async fn probe(
    channel: &Channel,
    stream: &str,
    spec: AMQPValue,
    tag: &str,
) -> Result<Delivery, LinkError> {
    let mut consumer = probe_consumer(channel, stream, spec, tag).await?;
    let first = tokio::time::timeout(PROBE_TIMEOUT, consumer.next())
        .await
        .map_err(|_| LinkError::Timeout(PROBE_TIMEOUT));
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    match first? {
        Some(delivery) => Ok(delivery?),
        None => Err(LinkError::StreamEnded),
    }
}

/// Whether `stream` holds a message after `offset`. Offsets only grow in a stream, so
/// "no" means the stream was re-created (or truncated) since that offset was read. Read
/// from the stream's last chunk up to the first message after `offset` or to `marker`,
/// published on `channel` just before, which is at the stream's end. Bounded by
/// [`PROBE_TIMEOUT`]: when another message starts a new chunk between the marker and the
/// probe, a stream that does not reach past `offset` shows neither, and the caller's
/// retry (with a new marker) answers instead.
pub(crate) async fn holds_after(
    channel: &Channel,
    stream: &str,
    offset: u64,
    marker: &str,
    tag: &str,
) -> Result<bool, LinkError> {
    let last = AMQPValue::LongString("last".into());
    let mut consumer = probe_consumer(channel, stream, last, tag).await?;
    let scan = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            // The credit is one message: each is acknowledged to get the next.
            delivery.ack(Default::default()).await?;
            if offset_of(&delivery).is_some_and(|o| o > offset) {
                return Ok(true);
            }
            if marker_of(&delivery).is_some_and(|m| m == marker) {
                return Ok(false);
            }
        }
        Err(LinkError::StreamEnded)
    };
    let result = tokio::time::timeout(PROBE_TIMEOUT, scan)
        .await
        .map_err(|_| LinkError::Timeout(PROBE_TIMEOUT));
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    result?
}

/// A consumer with a credit of one message, attached at `spec`.
async fn probe_consumer(
    channel: &Channel,
    stream: &str,
    spec: AMQPValue,
    tag: &str,
) -> Result<lapin::Consumer, LinkError> {
    // A stream consumer needs a prefetch; one message at a time is all a probe reads.
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), spec);
    Ok(channel
        .basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?)
}

/// The stream offset RabbitMQ puts on each message it delivers from a stream.
pub(crate) fn offset_of(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// The marker a delivery carries, if it is one (of any instance).
pub(crate) fn marker_of(delivery: &Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(MARKER_HEADER))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}
