//! Broker: the RabbitMQ link. Declares this instance's queue and bindings, consumes, hands
//! each message to its pipeline (`pipeline.rs`: parsing, dedupe, history, fan-out),
//! acknowledges, and reconnects with capped exponential backoff and jitter whenever the
//! link is lost.
//!
//! Clients never depend on the link: while it is down they stay connected and `/readyz`
//! says 503.

mod connect;
mod pipeline;
pub mod revocations;
mod streams;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, Binding, HistoryStream, KeyRule, Routes, StateRule};
use crate::envelope::DropReason;
use crate::history::History;
use crate::hub::Hub;
use crate::state::StateStore;
use crate::telemetry::{Collect, Counter, Exposition, Family, Gauge};
use connect::{Failure, Nodes};
use pipeline::Pipeline;
pub use pipeline::SeamHook;

/// First reconnect delay; doubled after each failed attempt up to the configured cap.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Further attempts to read the history stream after a break, and the pause between them.
const GAP_FILL_RETRIES: usize = 4;
const GAP_FILL_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Most messages acknowledged together.
const ACK_BATCH: usize = 64;
/// Longest a processed message waits for its acknowledgement.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Consumer tag, visible in the management UI.
const CONSUMER_TAG: &str = "realtime-gateway";

/// What the consumer counts: messages in, what became of them, and the link.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Messages received.
    pub received: Counter,
    /// Messages delivered to nobody, by reason.
    pub dropped: Family<DropReason>,
    /// Events whose id was seen recently (per tenant).
    pub duplicates: Counter,
    /// 1 while consuming.
    pub connected: Gauge,
    /// Links re-established after a failure.
    pub reconnects: Counter,
    /// `host:port` of the node consumed from, while connected.
    pub node: Mutex<Option<String>>,
    /// Events held for resuming clients.
    pub history_events: Gauge,
    /// Bytes held for resuming clients.
    pub history_bytes: Gauge,
    /// State keys held for snapshots.
    pub state_keys: Gauge,
    /// Bytes of the events held as state.
    pub state_bytes: Gauge,
    /// Events read into the history from the fleet's stream.
    pub backfilled: Counter,
    /// How long the last backfill took.
    pub backfill_ms: Gauge,
}

impl Collect for BrokerMetrics {
    fn collect(&self, o: &mut Exposition) {
        o.counter(
            "gateway_events_received_total",
            "Messages received from the broker.",
            &self.received,
        );
        o.family(
            "gateway_events_dropped_total",
            "counter",
            "Messages not delivered to anyone, by reason.",
            &self.dropped,
        );
        o.counter(
            "gateway_duplicates_dropped_total",
            "Events dropped because their event_id was seen recently.",
            &self.duplicates,
        );
        o.gauge(
            "gateway_history_events",
            "Events held for resuming clients.",
            &self.history_events,
        );
        o.gauge(
            "gateway_history_bytes",
            "Bytes of envelopes held for resuming clients.",
            &self.history_bytes,
        );
        o.gauge(
            "gateway_state_keys",
            "State keys (render jobs) whose latest event is held for snapshots.",
            &self.state_keys,
        );
        o.gauge(
            "gateway_state_bytes",
            "Bytes of the events held as the latest state of their key.",
            &self.state_bytes,
        );
        o.counter(
            "gateway_history_backfilled_total",
            "Events read into the history from the fleet's history stream.",
            &self.backfilled,
        );
        o.gauge(
            "gateway_history_backfill_milliseconds",
            "How long the last backfill from the history stream took.",
            &self.backfill_ms,
        );
        o.gauge(
            "gateway_broker_connected",
            "1 while the broker consumer is running.",
            &self.connected,
        );
        let node = self.node.lock().map(|n| n.clone()).unwrap_or_default();
        o.info(
            "gateway_broker_node_info",
            "The broker node consumed from (host:port); absent while disconnected.",
            node.as_deref().map(|n| ("node", n)),
        );
        o.counter(
            "gateway_broker_reconnects_total",
            "Broker links re-established after a failure.",
            &self.reconnects,
        );
    }
}

/// What the consumer needs besides the broker settings: the link's, and its pipeline's.
pub struct Consumer {
    /// Broker settings.
    pub config: AmqpConfig,
    /// Largest body accepted.
    pub max_event_bytes: usize,
    /// Which route each message takes, and so where its envelope fields are found.
    pub routes: Routes,
    /// Recent event ids remembered for duplicate suppression.
    pub dedupe_window: usize,
    /// Where events go.
    pub hub: Arc<Hub>,
    /// Recent events, for resuming clients.
    pub history: Arc<History>,
    /// Counters.
    pub metrics: Arc<BrokerMetrics>,
    /// True while consuming; `/readyz` reads it.
    pub ready: Arc<AtomicBool>,
    /// See [`SeamHook`]; `None` outside tests.
    pub seam_hook: Option<SeamHook>,
    /// Bindings of revocation events, which are never delivered to browsers (they reach
    /// the revocation feed through its own stream).
    pub revocation_keys: Vec<Binding>,
    /// Which event types supersede each other, keyed by which field.
    pub conflate: Vec<KeyRule>,
    /// Which events are the latest state of a key, keyed by which field.
    pub state_rules: Vec<StateRule>,
    /// The latest event of every state key, fed by every event kept (`None`: no state).
    pub state: Option<Arc<StateStore>>,
    /// The fleet's stream to backfill the history from; `None`: off.
    pub history_stream: Option<HistoryStream>,
}

/// Why a session with the broker ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// No connection to `node`.
    #[error("{why}")]
    Connect { node: String, why: Failure },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("consumer stream ended")]
    StreamEnded,
}

/// An open link, declared and consuming.
struct Link {
    conn: Connection,
    /// `host:port` of the node.
    node: String,
    channel: Channel,
    consumer: lapin::Consumer,
    /// The queue was gone when the link came back: events may have been lost.
    queue_lost: bool,
}

/// How a link starts. It decides the queue probe, the backfill, who must resync and
/// whether the link counts as a reconnect, so it is one value rather than a flag renamed
/// on its way: a link is a first one until one was established, however many attempts
/// failed before it (an instance that starts while the broker is down still backfills as
/// a fresh one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkStart {
    /// No link of this instance has consumed yet: the queue is new, the history empty.
    First,
    /// The same, after failed attempts: clients that connected meanwhile may have missed
    /// what was published before the queue existed.
    FirstAfterFailures,
    /// After a link that worked: the queue may have kept what came meanwhile, or be gone.
    AfterBreak,
}

/// How one life of the link ended.
enum LinkOutcome {
    /// Shutdown was asked for.
    Stopped,
    /// The link could not be set up.
    Failed(LinkError),
    /// The link worked, then broke.
    Broke(LinkError),
}

/// Capped exponential backoff between attempts to re-establish a link.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: INITIAL_BACKOFF,
            max,
        }
    }

    /// Waits before the next attempt (jittered), or returns false on shutdown. `worked`:
    /// the link was up for a while, so the delays start over from the shortest. `node`:
    /// the node of the connection, when one was opened. One log line per attempt, an
    /// error when an operator must act (refused login, refused certificate).
    pub(crate) async fn wait(
        &mut self,
        worked: bool,
        error: &LinkError,
        node: Option<&str>,
        what: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        if worked {
            self.next = INITIAL_BACKOFF;
        }
        let delay = backoff_jitter(self.next);
        let retry_in_ms = delay.as_millis() as u64;
        let node = match error {
            LinkError::Connect { node, .. } => Some(node.as_str()),
            _ => node,
        };
        let node = node.unwrap_or("");
        match error {
            LinkError::Connect { why, .. } if why.needs_operator() => tracing::error!(
                amqp.node = node,
                error = %error,
                retry_in_ms,
                "{what} link to {node} refused; clients stay connected, retrying"
            ),
            _ => tracing::warn!(
                amqp.node = node,
                error = %error,
                retry_in_ms,
                "{what} link to {node} down; clients stay connected, retrying"
            ),
        }
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Consumer {
    /// Runs until `shutdown` is cancelled, reconnecting as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let pipeline = Pipeline::new(&self);
        let link = LinkLoop {
            config: self.config,
            metrics: self.metrics,
            ready: self.ready,
            history_stream: self.history_stream,
            pipeline,
        };
        link.run(shutdown).await;
    }
}

/// The link loop: connect, consume, acknowledge, reconnect. What becomes of each message
/// is the pipeline's.
struct LinkLoop {
    /// Broker settings.
    config: AmqpConfig,
    /// The link's counters (the pipeline counts its own in the same set).
    metrics: Arc<BrokerMetrics>,
    /// True while consuming; `/readyz` reads it.
    ready: Arc<AtomicBool>,
    /// The fleet's stream to backfill the history from; `None`: off.
    history_stream: Option<HistoryStream>,
    /// Where every message goes.
    pipeline: Pipeline,
}

impl LinkLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reconnect_max);
        let mut nodes = Nodes::new(&self.config);
        // Masked: a node's Debug shows its URL with the password as `***`.
        tracing::info!(amqp.nodes = ?self.config.nodes, "connecting to the broker");
        let mut start = LinkStart::First;
        loop {
            let outcome = self.session(&mut nodes, &shutdown, start).await;
            self.set_ready(None);
            let (e, worked) = match outcome {
                LinkOutcome::Stopped => break,
                LinkOutcome::Failed(e) => (e, false),
                LinkOutcome::Broke(e) => (e, true),
            };
            start = match (start, worked) {
                (_, true) | (LinkStart::AfterBreak, _) => LinkStart::AfterBreak,
                _ => LinkStart::FirstAfterFailures,
            };
            if !backoff
                .wait(worked, &e, nodes.connected(), "broker", &shutdown)
                .await
            {
                break;
            }
        }
        tracing::info!("broker consumer stopped");
    }

    /// Ready and consuming from `node`, or not ready (`None`).
    fn set_ready(&self, node: Option<&str>) {
        let up = node.is_some();
        self.ready.store(up, Ordering::Release);
        self.metrics.connected.set(i64::from(up));
        *self.metrics.node.lock().unwrap_or_else(|e| e.into_inner()) = node.map(str::to_owned);
    }

    /// One life of the link: open it, then consume until it breaks or shutdown.
    async fn session(
        &mut self,
        nodes: &mut Nodes,
        shutdown: &CancellationToken,
        start: LinkStart,
    ) -> LinkOutcome {
        let link = tokio::select! {
            _ = shutdown.cancelled() => return LinkOutcome::Stopped,
            r = self.open(nodes, start) => match r {
                Ok(link) => link,
                Err(e) => return LinkOutcome::Failed(e),
            },
        };
        let covered = self.backfill(&link, start).await;
        self.announce(&link, start, covered);
        match self.consume(link, shutdown).await {
            Ok(()) => LinkOutcome::Stopped,
            Err(e) => LinkOutcome::Broke(e),
        }
    }

    /// Connects, declares exchanges, queue and bindings, and starts consuming.
    async fn open(&self, nodes: &mut Nodes, start: LinkStart) -> Result<Link, LinkError> {
        let cfg = &self.config;
        let (conn, node) = nodes
            .connect(&format!("realtime-gateway {}", cfg.queue))
            .await?;
        // After an outage, find out whether the queue kept our events: if it is gone (it
        // expired, or the broker restarted), events may have been lost and clients must
        // be told to refetch.
        let queue_lost = start == LinkStart::AfterBreak && !queue_exists(&conn, &cfg.queue).await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await?;
        declare_topology(&channel, cfg).await?;
        let consumer = channel
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
        Ok(Link {
            conn,
            node,
            channel,
            consumer,
            queue_lost,
        })
    }

    /// Ready, counted and logged; clients told to resync when the queue was lost and the
    /// history stream could not fill the gap.
    fn announce(&self, link: &Link, start: LinkStart, covered: bool) {
        let cfg = &self.config;
        self.pipeline.history_filled();
        self.set_ready(Some(&link.node));
        if start == LinkStart::AfterBreak {
            self.metrics.reconnects.inc();
        }
        let lost = match start {
            LinkStart::First => None,
            LinkStart::FirstAfterFailures => Some(
                "clients connected before the broker answered; events published before the queue existed never reached them, clients told to resync",
            ),
            LinkStart::AfterBreak if link.queue_lost && !covered => {
                self.pipeline.history_gap();
                Some("queue was gone after the outage; events may be lost, clients told to resync")
            }
            LinkStart::AfterBreak => None,
        };
        if let Some(why) = lost {
            let told = self.pipeline.resync_all();
            if told > 0 || start == LinkStart::AfterBreak {
                tracing::warn!(amqp.queue = %cfg.queue, clients = told, "{why}");
            }
        }
        tracing::info!(
            amqp.node = %link.node,
            amqp.queue = %cfg.queue,
            amqp.bindings = ?cfg.bindings.iter().map(|b| format!("{}:{}", b.exchange, b.key)).collect::<Vec<_>>(),
            "consuming"
        );
    }

    /// Fills the history from the fleet's stream: everything of the history's age on a
    /// fresh start (before ready, so resumes work at once), and after a break what came
    /// after the last event held, delivered to clients too. Returns whether a break (a
    /// lost queue) was covered; the live queue is already bound, so nothing published
    /// from here on can fall between stream and queue.
    async fn backfill(&mut self, link: &Link, start: LinkStart) -> bool {
        let Some(stream) = self.history_stream.clone() else {
            return false;
        };
        let started = std::time::Instant::now();
        let result = match start {
            LinkStart::First | LinkStart::FirstAfterFailures => {
                self.fill(link, &stream).await.map(|_| false)
            }
            LinkStart::AfterBreak if link.queue_lost => self.fill_gap_retrying(link, &stream).await,
            // The queue kept everything; nothing to fill.
            LinkStart::AfterBreak => return false,
        };
        self.metrics
            .backfill_ms
            .set(started.elapsed().as_millis() as i64);
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, stream = %stream.name, "history stream unavailable; resuming clients may resync");
            false
        })
    }

    /// A fresh start: the stream's recent events into the history (no client to deliver
    /// them to yet).
    async fn fill(&mut self, link: &Link, stream: &HistoryStream) -> Result<(), LinkError> {
        let from = streams::From::Newest {
            count: self.pipeline.history_capacity() as u64,
            age: stream.max_age,
        };
        let pipeline = &mut self.pipeline;
        let n = streams::read(&link.conn, stream, &self.config, from, |d| {
            pipeline.backfill(d);
        })
        .await?;
        tracing::info!(stream = %stream.name, read = n, "history backfilled");
        Ok(())
    }

    /// After a lost queue: what came after the last event held, into history and hub, in
    /// order. `true` when the stream showed that it covers the gap (it still had the last
    /// event held); otherwise nothing is delivered and clients resync.
    async fn fill_gap(&mut self, link: &Link, stream: &HistoryStream) -> Result<bool, LinkError> {
        let Some(mut gap) = self.pipeline.gap() else {
            return Ok(false);
        };
        let from = streams::From::Before(gap.since());
        let pipeline = &self.pipeline;
        streams::read(&link.conn, stream, &self.config, from, |d| {
            pipeline.read_gap(&mut gap, d);
        })
        .await?;
        if !gap.covered() {
            return Ok(false);
        }
        tracing::info!(stream = %stream.name, read = gap.missed(), "gap filled from the history stream");
        self.pipeline.fill_gap(gap).await;
        Ok(true)
    }

    /// [`LinkLoop::fill_gap`], tried a few times: right after a broker restart the stream
    /// can take a moment to accept readers, and giving up means a resync for everyone.
    async fn fill_gap_retrying(
        &mut self,
        link: &Link,
        stream: &HistoryStream,
    ) -> Result<bool, LinkError> {
        let mut result = self.fill_gap(link, stream).await;
        for _ in 0..GAP_FILL_RETRIES {
            let Err(e) = &result else { break };
            tracing::info!(error = %e, stream = %stream.name, "history stream not readable yet; retrying");
            tokio::time::sleep(GAP_FILL_RETRY_DELAY).await;
            result = self.fill_gap(link, stream).await;
        }
        result
    }

    /// Hands every delivery to the pipeline and acknowledges it, until the link breaks
    /// (`Err`) or shutdown (`Ok`).
    async fn consume(
        &mut self,
        mut link: Link,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut acks = Acks::new(&link.channel, self.config.prefetch);
        loop {
            let delivery = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // What was handed to clients is acknowledged; what was not goes back to
                    // the queue, which outlives us for x-expires.
                    let _ = acks.flush().await;
                    let _ = link.conn.close(200, "gateway shutting down".into()).await;
                    return Ok(());
                }
                r = acks.due() => {
                    r?;
                    continue;
                }
                d = link.consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(LinkError::StreamEnded),
            };
            let tag = delivery.delivery_tag;
            self.pipeline.live(delivery).await;
            // Every message is acknowledged, delivered or dropped: a malformed message
            // requeued would come straight back forever.
            acks.processed(tag).await?;
        }
    }
}

/// Acknowledgements, batched (`multiple`): one ack per message costs a frame and a
/// cross-thread wakeup each, which dominated the CPU per event. A batch is sent when it
/// is full or `ACK_DELAY` after its first message, whichever comes first.
struct Acks<'c> {
    channel: &'c Channel,
    batch: usize,
    /// Tag of the newest processed, unacknowledged message.
    due: Option<u64>,
    unacked: usize,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<'c> Acks<'c> {
    fn new(channel: &'c Channel, prefetch: u16) -> Acks<'c> {
        Acks {
            channel,
            batch: (usize::from(prefetch) / 2).clamp(1, ACK_BATCH),
            due: None,
            unacked: 0,
            timer: Box::pin(tokio::time::sleep(ACK_DELAY)),
        }
    }

    /// Records a processed message; acknowledges the batch when it is full.
    async fn processed(&mut self, tag: u64) -> Result<(), lapin::Error> {
        if self.due.is_none() {
            let at = tokio::time::Instant::now() + ACK_DELAY;
            self.timer.as_mut().reset(at);
        }
        self.due = Some(tag);
        self.unacked += 1;
        if self.unacked >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Resolves when a pending batch has waited `ACK_DELAY`, and acknowledges it; never
    /// resolves while nothing is pending.
    async fn due(&mut self) -> Result<(), lapin::Error> {
        if self.due.is_none() {
            return std::future::pending().await;
        }
        (&mut self.timer).await;
        self.flush().await
    }

    /// Acknowledges everything processed so far.
    async fn flush(&mut self) -> Result<(), lapin::Error> {
        self.unacked = 0;
        match self.due.take() {
            Some(tag) => {
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
            }
            None => Ok(()),
        }
    }
}

/// Declares the exchanges (or checks them, when passive), this instance's queue and its
/// bindings.
async fn declare_topology(channel: &Channel, cfg: &AmqpConfig) -> Result<(), lapin::Error> {
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
                    // Passive: the platform owns its exchanges (their type and arguments);
                    // only check that they exist.
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
            // Not exclusive: an exclusive queue dies with its connection, and with it every
            // event published while the link is down. x-expires removes it once this
            // instance is really gone.
            QueueDeclareOptions::default(),
            queue_arguments(cfg),
        )
        .await?;
    streams::bind(channel, &cfg.queue, &cfg.bindings).await
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

/// A reconnect delay between half of `d` and `d`, so a fleet that lost the broker together
/// does not come back in lockstep. (Not the drain's jitter, which spreads over a whole
/// window.)
fn backoff_jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = backoff_jitter(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
        }
    }
}
