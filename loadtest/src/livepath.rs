//! `loadgen livepath`: the gateway's live path measured two ways, on the broker alone.
//!
//! Today each gateway instance consumes a classic queue of its own (the live path) and
//! the fleet also writes every event into a shared stream (the history). The question is
//! whether reading that stream live could replace the per-instance queues, so this mode
//! declares, on a fresh exchange, either a live queue or a history stream, declared with
//! the gateway's arguments, publishes the benchmark's envelopes into it at a fixed rate,
//! and consumes it with the gateway's client settings (lapin, prefetch, batched `multiple`
//! acks) in a child process of its own, so the consumer's CPU is read alone from `/proc`.
//! It reports publish→receipt latency, loss and duplicates, the consumer's and the
//! broker's CPU per event, the broker's memory and the stream's size on disk, then deletes
//! everything it declared.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::amqp::AmqpUrl;
use crate::bare::{ACK_BATCH, ACK_DELAY};
use crate::opts::{Opts, Parsed};
use crate::publish::{Kind, PublishReport, Publisher};
use crate::{round3, stats};

pub const HELP: &str = "\
loadgen livepath: the live path on the broker alone, as a live queue or as a stream

USAGE:
  loadgen livepath --source queue|stream|queue+stream [--rate R] [--duration SECS] [flags]
  loadgen livepath summarize FILE...   medians [ranges] of --json-out reports, as markdown

  Declares a fresh topic exchange (loadtest.livepath.<run>) and, bound to it like the
  gateway's queues (render.job.#, notification.#):
    queue         a classic queue declared like the gateway's live queue (x-expires 30 s,
                  x-max-length 100000, x-max-length-bytes 64 MiB, x-overflow drop-head),
                  consumed exclusively;
    stream        a stream declared like the gateway's history stream (x-queue-type
                  stream, x-max-age = --history-age, x-max-length-bytes 1 GiB), consumed
                  from x-stream-offset \"next\";
    queue+stream  both, the queue consumed and the stream only written: the broker's
                  side of the gateway as it runs today.
  A child process consumes with the gateway's settings (lapin, basic.qos --prefetch,
  acks batched with `multiple`: half the prefetch, at most 64, or after 20 ms), so its
  CPU is read alone. The publisher sends the benchmark's envelopes (publisher confirms).
  Everything declared is deleted at the end, also after an error or Ctrl-C.

FLAGS:
  --source S           queue, stream or queue+stream                        [required]
  --rate R             events per second                                       [5000]
  --duration SECS      publish window                                            [10]
  --events KIND        targeted (event k for user k % 1000) or unrouted (for absent
                       users): the envelopes of those benchmarks             [targeted]
  --client C           the consumer's AMQP client: lapin (the gateway's), amqprs
                       (tokio-native), or bare: the ingest floor, no library and
                       no thread but the one reading its socket; same prefetch
                       and acks; or stream: the stream read over the stream
                       protocol (port 5552, plugin rabbitmq_stream), on its
                       socket's thread like bare, min(--prefetch, 10) chunks of
                       credit; --source stream only                           [lapin]
  --readers N          consumers, each a process of its own: with a queue each
                       reads a queue of its own (one per gateway instance), with
                       the stream each reads the one stream; CPU per event is the
                       readers' mean, receipts and latency the worst reader's    [1]
  --prefetch N         basic.qos of the consumer (the gateway's default)        [512]
  --history-age SECS   the stream's x-max-age, and the age the disk use is
                       extrapolated to (GATEWAY_HISTORY_MAX_AGE_SECS)            [300]
  --tail SECS          after the last publish, wait this long for the rest       [10]
  --amqp-url URL       loopback only  [$GATEWAY_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/%2f]
  --broker-pid PID     the broker's process (default: the only beam.smp running;
                       with none or several, its figures are left out)
  --stream-root DIR    where the node keeps streams  [/var/lib/rabbitmq/mnesia/*/stream]
  --json-out FILE      also write the JSON report there
  --label TEXT         copied into the JSON report

OUTPUT:
  A summary on stderr and one JSON line on stdout. CPU per event is utime + stime from
  /proc (consumer: from its basic.consume-ok to its last receipt; broker: beam.smp from
  just before the first publish to the consumer's last receipt, publisher confirms
  included), divided by the events received (consumer) or published (broker). Exit
  status: 0 every event received once; 1 loss, duplicates or a short publish; 2 bad
  usage; 3 environment (broker, child process).
";

/// Binding keys of the gateway's default `GATEWAY_AMQP_BINDINGS`.
const BINDINGS: [&str; 2] = ["render.job.#", "notification.#"];
/// The gateway's live-queue defaults (`GATEWAY_AMQP_QUEUE_*`, src/broker/mod.rs).
const QUEUE_EXPIRES_MS: i64 = 30_000;
const QUEUE_MAX_LENGTH: i64 = 100_000;
const QUEUE_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// The gateway's `GATEWAY_HISTORY_STREAM_MAX_BYTES` default (src/broker/streams.rs).
const STREAM_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Chunks in flight for `--client stream` (the official clients' default is 10).
const STREAM_CREDIT: u16 = 10;
/// Most consumers of one run (`--readers`): one process each.
const MAX_READERS: usize = 16;
/// Users the targeted envelopes cycle through.
const USERS: &str = "1000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Queue,
    Stream,
    QueueAndStream,
}

impl Source {
    fn parse(s: &str) -> Result<Source, String> {
        match s {
            "queue" => Ok(Source::Queue),
            "stream" => Ok(Source::Stream),
            "queue+stream" => Ok(Source::QueueAndStream),
            _ => Err(format!(
                "--source: `{s}` is not queue, stream or queue+stream"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Source::Queue => "queue",
            Source::Stream => "stream",
            Source::QueueAndStream => "queue+stream",
        }
    }

    fn has_queue(self) -> bool {
        self != Source::Stream
    }

    fn has_stream(self) -> bool {
        self != Source::Queue
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The gateway's client.
    Lapin,
    /// A tokio-native client, for comparison.
    Amqprs,
    /// No client library: the ingest floor (`bare.rs`), frames read from the socket on
    /// the consuming thread itself.
    Bare,
    /// The stream protocol (port 5552, `stream_reader.rs`), on the consuming thread
    /// itself like `Bare`: the stream only.
    Stream,
}

impl Client {
    fn parse(s: &str) -> Result<Client, String> {
        match s {
            "lapin" => Ok(Client::Lapin),
            "amqprs" => Ok(Client::Amqprs),
            "bare" => Ok(Client::Bare),
            "stream" => Ok(Client::Stream),
            _ => Err(format!(
                "--client: `{s}` is not lapin, amqprs, bare or stream"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Client::Lapin => "lapin",
            Client::Amqprs => "amqprs",
            Client::Bare => "bare",
            Client::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Args {
    /// The child that consumes (`livepath consume ...`), not the driver.
    consume: bool,
    source: Option<Source>,
    client: Client,
    rate: f64,
    duration: f64,
    kind: Kind,
    prefetch: u16,
    history_age: u64,
    tail: Duration,
    amqp_url: Option<String>,
    broker_pid: Option<u32>,
    stream_root: Option<PathBuf>,
    json_out: Option<String>,
    label: Option<String>,
    /// Consumer only: what to consume and how many events to expect.
    queue: Option<String>,
    expect: u64,
    /// Consumers, each in a process of its own: with a queue, each reads a queue of its
    /// own (as each gateway instance does); with the stream, each reads the one stream.
    readers: usize,
}

fn defaults() -> Args {
    Args {
        consume: false,
        source: None,
        client: Client::Lapin,
        rate: 5000.0,
        duration: 10.0,
        kind: Kind::Targeted,
        prefetch: 512,
        history_age: 300,
        tail: Duration::from_secs(10),
        amqp_url: None,
        broker_pid: None,
        stream_root: None,
        json_out: None,
        label: None,
        queue: None,
        expect: 0,
        readers: 1,
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
}

/// `None` for --help.
pub fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = defaults();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(None),
            "consume" if !a.consume => {
                a.consume = true;
                continue;
            }
            _ => {}
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        if !flag.starts_with("--") {
            return Err(format!("unexpected `{arg}` (see loadgen livepath --help)"));
        }
        let v = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(format!("{flag} needs a value"))?,
        };
        match flag {
            "--source" => a.source = Some(Source::parse(&v)?),
            "--client" => a.client = Client::parse(&v)?,
            "--rate" => a.rate = num(flag, &v)?,
            "--duration" => a.duration = num(flag, &v)?,
            "--events" => {
                a.kind = match v.as_str() {
                    "targeted" => Kind::Targeted,
                    "unrouted" => Kind::Unrouted,
                    _ => return Err(format!("--events: `{v}` is not targeted or unrouted")),
                }
            }
            "--prefetch" => a.prefetch = num(flag, &v)?,
            "--history-age" => a.history_age = num(flag, &v)?,
            "--tail" => a.tail = Duration::from_secs_f64(num::<f64>(flag, &v)?.clamp(0.0, 600.0)),
            "--amqp-url" => a.amqp_url = Some(v),
            "--broker-pid" => a.broker_pid = Some(num(flag, &v)?),
            "--stream-root" => a.stream_root = Some(PathBuf::from(v)),
            "--json-out" => a.json_out = Some(v),
            "--label" => a.label = Some(v),
            "--queue" => a.queue = Some(v),
            "--expect" => a.expect = num(flag, &v)?,
            "--readers" => a.readers = num(flag, &v)?,
            _ => return Err(format!("unknown flag {flag} (see loadgen livepath --help)")),
        }
    }
    if a.source.is_none() {
        return Err("--source queue|stream|queue+stream is required".into());
    }
    if !(a.rate > 0.0 && a.rate <= 200_000.0) {
        return Err("--rate must be above 0 and at most 200000".into());
    }
    if !(a.duration > 0.0 && a.duration <= 600.0) {
        return Err("--duration must be above 0 and at most 600 s".into());
    }
    if a.prefetch == 0 {
        return Err("--prefetch must be at least 1 (streams need credit)".into());
    }
    if a.history_age == 0 {
        return Err("--history-age must be at least 1 s".into());
    }
    if !(1..=MAX_READERS).contains(&a.readers) {
        return Err(format!("--readers must be 1 to {MAX_READERS}"));
    }
    if a.client == Client::Stream && a.source != Some(Source::Stream) {
        return Err("--client stream reads the stream: it needs --source stream".into());
    }
    if a.consume && (a.queue.is_none() || a.expect == 0) {
        return Err("consume needs --queue and --expect".into());
    }
    Ok(Some(a))
}

/// The publisher's options, through the loadgen's own parser: the same envelopes,
/// schedule and loopback check as the other benchmarks.
fn publisher_opts(a: &Args, exchange: &str) -> Result<Opts, String> {
    let mut words: Vec<String> = [
        "publish",
        "--users",
        USERS,
        "--exchange",
        exchange,
        "--rate",
        &a.rate.to_string(),
        "--duration",
        &a.duration.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(url) = &a.amqp_url {
        words.extend(["--amqp-url".to_owned(), url.clone()]);
    }
    match crate::opts::parse(words)? {
        Parsed::Run(o) => Ok(*o),
        Parsed::Help => Err("unexpected help".into()),
    }
}

pub fn main(args: &[String]) -> u8 {
    if args.first().is_some_and(|a| a == "summarize") {
        return summarize_files(&args[1..]);
    }
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return 0;
        }
        Err(e) => {
            eprintln!("loadgen livepath: {e}");
            return crate::EXIT_USAGE;
        }
    };
    if a.consume && a.client == Client::Bare {
        // The ingest floor: no runtime, so no thread but this one touches the socket.
        return consume_bare(&a);
    }
    if a.consume && a.client == Client::Stream {
        return consume_stream(&a);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen livepath: cannot start the runtime: {e}");
            return crate::EXIT_ENV;
        }
    };
    let code = runtime.block_on(async move {
        if a.consume {
            consume(a).await
        } else {
            drive(a).await
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

fn log(msg: impl AsRef<str>) {
    eprintln!("loadgen livepath: {}", msg.as_ref());
}

/// What one run declares, all named after the run so runs never meet.
struct Names {
    exchange: String,
    /// One live queue per reader, as each gateway instance has its own.
    queues: Vec<String>,
    stream: String,
}

impl Names {
    fn new(run: &str, readers: usize) -> Names {
        let base = format!("loadtest.livepath.{run}");
        let queues = match readers {
            1 => vec![format!("{base}.queue")],
            n => (0..n).map(|i| format!("{base}.queue.{i}")).collect(),
        };
        Names {
            queues,
            stream: format!("{base}.stream"),
            exchange: base,
        }
    }

    /// The queue reader `i` consumes.
    fn consumed(&self, s: Source, i: usize) -> &str {
        if s == Source::Stream {
            &self.stream
        } else {
            &self.queues[i]
        }
    }
}

async fn connect(url: &str) -> Result<Connection, String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "RabbitMQ: connect timed out after 10 s".to_owned())?
    .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))
}

async fn drive(a: Args) -> u8 {
    let source = a.source.unwrap_or(Source::Queue);
    let run = crate::run_id();
    let names = Names::new(&run, a.readers);
    let po = match publisher_opts(&a, &names.exchange) {
        Ok(o) => o,
        Err(e) => {
            log(e);
            return crate::EXIT_USAGE;
        }
    };
    let admin = match connect(&po.amqp_url).await {
        Ok(c) => c,
        Err(e) => {
            log(e);
            return crate::EXIT_ENV;
        }
    };
    let channel = match admin.create_channel().await {
        Ok(c) => c,
        Err(e) => {
            log(format!("cannot open a channel: {e}"));
            return crate::EXIT_ENV;
        }
    };
    let abort = crate::abort_on_signal();
    let result = measure(&a, source, &po, &run, &names, &channel, abort).await;
    // Whatever happened, nothing of this run stays on the broker.
    cleanup(&channel, source, &names).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        admin.close(200, "livepath done".into()),
    )
    .await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            log(e);
            return crate::EXIT_ENV;
        }
    };
    eprint!("{}", report.text);
    let line = report.json.to_string();
    println!("{line}");
    if let Some(path) = &a.json_out
        && let Err(e) = std::fs::write(path, format!("{line}\n"))
    {
        log(format!("cannot write {path}: {e}"));
    }
    if report.ok { 0 } else { crate::EXIT_FAIL }
}

async fn cleanup(channel: &Channel, source: Source, names: &Names) {
    let mut queues = Vec::new();
    if source.has_queue() {
        queues.extend(&names.queues);
    }
    if source.has_stream() {
        queues.push(&names.stream);
    }
    for q in queues {
        if let Err(e) = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            log(format!("cannot delete {q}: {e}"));
        }
    }
    if let Err(e) = channel
        .exchange_delete(
            names.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
    {
        log(format!("cannot delete {}: {e}", names.exchange));
    }
}

/// The gateway's live queue arguments (src/broker/mod.rs `queue_arguments`, defaults).
fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_BYTES),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// The gateway's history stream arguments (src/broker/streams.rs `declare_stream`).
fn stream_arguments(max_age_secs: u64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{max_age_secs}s").into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(STREAM_MAX_BYTES as i64),
    );
    args
}

async fn declare(channel: &Channel, source: Source, names: &Names, age: u64) -> Result<(), String> {
    let err = |what: &str, e: lapin::Error| format!("cannot declare {what}: {e}");
    crate::publish::declare_exchange(channel, &names.exchange).await?;
    let mut queues = Vec::new();
    if source.has_queue() {
        for q in &names.queues {
            // Not durable, not exclusive: as the gateway declares it.
            channel
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions::default(),
                    queue_arguments(),
                )
                .await
                .map_err(|e| err(q, e))?;
            queues.push(q);
        }
    }
    if source.has_stream() {
        channel
            .queue_declare(
                names.stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                stream_arguments(age),
            )
            .await
            .map_err(|e| err(&names.stream, e))?;
        queues.push(&names.stream);
    }
    for q in queues {
        for key in BINDINGS {
            channel
                .queue_bind(
                    q.as_str().into(),
                    names.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("cannot bind {q}: {e}"))?;
        }
    }
    Ok(())
}

/// The consumer process; killed if it is still running when this is dropped.
struct ConsumerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ConsumerProc {
    fn spawn(
        a: &Args,
        source: Source,
        queue: &str,
        url: &str,
        expect: u64,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find loadgen: {e}"))?;
        let mut child = Command::new(exe)
            .args(["livepath", "consume", "--source", source.as_str()])
            .args([
                "--client",
                a.client.as_str(),
                "--queue",
                queue,
                "--amqp-url",
                url,
            ])
            .args(["--prefetch", &a.prefetch.to_string()])
            .args(["--expect", &expect.to_string()])
            .args(["--tail", &a.tail.as_secs_f64().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the consumer: {e}"))?;
        let stdout = child.stdout.take().ok_or("consumer without stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        // A plain thread: tokio's process support is not compiled in, and one blocking
        // reader is all this needs.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ConsumerProc {
            child,
            stdin,
            lines,
        })
    }

    async fn line(&mut self, within: Duration, what: &str) -> Result<String, String> {
        match tokio::time::timeout(within, self.lines.recv()).await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(format!("the consumer exited before {what}")),
            Err(_) => Err(format!(
                "no {what} from the consumer within {:.0} s",
                within.as_secs_f64()
            )),
        }
    }

    /// Waits up to `within` for the consumer to exit by itself.
    async fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for ConsumerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The broker's process: the only `beam.smp` running, unless given.
fn find_broker() -> Result<u32, String> {
    let found: Vec<u32> = crate::gateway::pids()?
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => Err("no beam.smp process: is RabbitMQ running here? (--broker-pid)".into()),
        _ => Err(format!(
            "several beam.smp processes ({found:?}): give --broker-pid"
        )),
    }
}

/// Directories where the node keeps its streams.
fn stream_roots(given: &Option<PathBuf>) -> Vec<PathBuf> {
    if let Some(dir) = given {
        return vec![dir.clone()];
    }
    let mnesia = Path::new("/var/lib/rabbitmq/mnesia");
    std::fs::read_dir(mnesia)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("stream"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// The stream's own segment directory.
fn find_stream_dir(roots: &[PathBuf], stream: &str) -> Option<PathBuf> {
    roots
        .iter()
        .filter_map(|r| std::fs::read_dir(r).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| is_stream_dir(n, stream))
        })
}

/// Whether a directory name is the stream's: the node names it
/// `<vhost>_<name>_<nanoseconds>` with every character that is not a letter or digit
/// turned into `_` (`__loadtest_livepath_<run>_stream_1795...` for `/` and
/// `loadtest.livepath.<run>.stream`).
fn is_stream_dir(dir: &str, stream: &str) -> bool {
    let safe: String = stream
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.strip_suffix(|c: char| c.is_ascii_digit())
        .and_then(|d| {
            d.trim_end_matches(|c: char| c.is_ascii_digit())
                .strip_suffix('_')
        })
        .is_some_and(|d| d.ends_with(&format!("_{safe}")))
}

/// (apparent bytes, allocated bytes) of every file under `dir`, like `du -sb` and `du -s`.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut alloc) = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (l, a) = du(&e.path());
            len += l;
            alloc += a;
        } else {
            len += m.len();
            alloc += m.blocks() * 512;
        }
    }
    (len, alloc)
}

/// Disk use of the stream at the history age, from what `events` took.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskEstimate {
    pub bytes_per_event: f64,
    /// rate × age × bytes per event.
    pub at_age: f64,
    /// The same, within x-max-length-bytes.
    pub capped: f64,
    pub arithmetic: String,
}

pub fn extrapolate(
    bytes: u64,
    events: u64,
    rate: f64,
    age_secs: u64,
    cap: u64,
) -> Option<DiskEstimate> {
    if events == 0 {
        return None;
    }
    let per = bytes as f64 / events as f64;
    let at_age = per * rate * age_secs as f64;
    let capped = at_age.min(cap as f64);
    let mb = |b: f64| b / 1e6;
    Some(DiskEstimate {
        bytes_per_event: per,
        at_age,
        capped,
        arithmetic: format!(
            "{bytes} B / {events} events = {per:.0} B/event; x {rate} events/s x {age_secs} s = {:.0} MB{}",
            mb(at_age),
            if at_age > cap as f64 {
                format!(", capped at {:.0} MB (x-max-length-bytes)", mb(cap as f64))
            } else {
                String::new()
            }
        ),
    })
}

struct Report {
    ok: bool,
    json: Value,
    text: String,
}

async fn measure(
    a: &Args,
    source: Source,
    po: &Opts,
    run: &str,
    names: &Names,
    channel: &Channel,
    abort: watch::Receiver<bool>,
) -> Result<Report, String> {
    let tck = crate::gateway::clk_tck();
    // The broker's figures are optional: the ingest floor's runs (compare.sh) only need
    // the consumer's, and a machine may run more than one node.
    let broker = match a.broker_pid {
        Some(p) => Some(p),
        None => find_broker()
            .inspect_err(|e| log(format!("{e}; the broker's CPU and RSS are not reported")))
            .ok(),
    };
    declare(channel, source, names, a.history_age).await?;
    let publisher = Publisher::connect(po).await?;
    let expect = po.planned_events();
    let mut consumers = Vec::new();
    for i in 0..a.readers {
        let mut consumer =
            ConsumerProc::spawn(a, source, names.consumed(source, i), &po.amqp_url, expect)?;
        let ready = consumer.line(Duration::from_secs(15), "ready").await;
        if ready.as_deref() != Ok("ready") {
            publisher.close().await;
            return Err(ready
                .err()
                .unwrap_or_else(|| "the consumer did not start".into()));
        }
        consumers.push(consumer);
    }
    let kind_name = if a.kind == Kind::Unrouted {
        "unrouted"
    } else {
        "targeted"
    };
    log(format!(
        "run {run}: {} via {} ({}, {} reader(s)), {expect} {kind_name} events at {}/s",
        source.as_str(),
        names.consumed(source, 0),
        a.client.as_str(),
        a.readers,
        a.rate
    ));
    let cpu0 = broker.and_then(|p| crate::gateway::cpu_secs(p, tck));
    let rss0 = broker.and_then(crate::gateway::rss_kib);
    let rep: PublishReport = publisher.run(po, run, a.kind, abort.clone()).await;
    publisher.close().await;
    // End of input: each consumer waits --tail for what is still missing, then reports.
    for c in &mut consumers {
        drop(c.stdin.take());
    }
    let mut results = Vec::new();
    for c in &mut consumers {
        results.push(c.line(a.tail + Duration::from_secs(20), "result").await);
    }
    let cpu1 = broker.and_then(|p| crate::gateway::cpu_secs(p, tck));
    let rss1 = broker.and_then(crate::gateway::rss_kib);
    let stream_dir = if source.has_stream() {
        find_stream_dir(&stream_roots(&a.stream_root), &names.stream)
    } else {
        None
    };
    let disk = stream_dir.as_deref().map(du);
    for c in &mut consumers {
        if !c.exited(Duration::from_secs(10)).await {
            log("a consumer did not exit within 10 s: killed");
        }
    }
    let mut each = Vec::new();
    for r in results {
        let v: Value = serde_json::from_str(&r?)
            .map_err(|e| format!("the consumer's report is not JSON: {e}"))?;
        each.push(v);
    }
    let got = combine(&each);
    Ok(report(
        a,
        source,
        run,
        &rep,
        &got,
        Broker {
            cpu: cpu0.zip(cpu1).map(|(b, e)| e - b),
            rss_kib: (rss0, rss1),
            stream_dir,
            disk,
        },
    ))
}

/// The readers' reports as one: the worst reader's receipts and latency (every reader
/// must get every event), the mean CPU, and each reader's report beside.
pub fn combine(each: &[Value]) -> Value {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let n = each.len().max(1) as f64;
    let sum = |k: &str| each.iter().map(|v| num(v, k)).sum::<f64>();
    let least = |k: &str| each.iter().map(|v| num(v, k)).fold(f64::MAX, f64::min);
    let worst_latency = each
        .iter()
        .max_by(|a, b| {
            let p99 = |v: &Value| v["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
            p99(a).total_cmp(&p99(b))
        })
        .map(|v| v["latency_ms"].clone())
        .unwrap_or(Value::Null);
    let error = each
        .iter()
        .find_map(|v| v.get("error").filter(|e| !e.is_null()).cloned());
    json!({
        "received": least("received"),
        "distinct": least("distinct"),
        "duplicates": sum("duplicates"),
        "foreign": sum("foreign"),
        "cpu_secs": sum("cpu_secs") / n,
        "cpu_secs_max": each.iter().map(|v| num(v, "cpu_secs")).fold(0.0, f64::max),
        "rss_kib": sum("rss_kib") / n,
        "threads": each.first().and_then(|v| v.get("threads")).cloned(),
        "latency_ms": worst_latency,
        "error": error,
        "readers": each,
    })
}

struct Broker {
    cpu: Option<f64>,
    rss_kib: (Option<u64>, Option<u64>),
    stream_dir: Option<PathBuf>,
    disk: Option<(u64, u64)>,
}

fn report(
    a: &Args,
    source: Source,
    run: &str,
    rep: &PublishReport,
    got: &Value,
    b: Broker,
) -> Report {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let distinct = num(got, "distinct") as u64;
    let duplicates = num(got, "duplicates") as u64;
    let lost = rep.published.saturating_sub(distinct);
    let consumer_cpu = num(got, "cpu_secs");
    let per_us = |secs: f64, n: u64| (n > 0).then(|| round3(secs * 1e6 / n as f64));
    let consumer_us = per_us(consumer_cpu, distinct);
    let broker_us = b.cpu.and_then(|c| per_us(c, rep.published));
    let estimate = b.disk.and_then(|(len, _)| {
        extrapolate(len, rep.published, a.rate, a.history_age, STREAM_MAX_BYTES)
    });
    let ok = rep.ok() && lost == 0 && duplicates == 0 && num(got, "foreign") == 0.0;
    let lat = got.get("latency_ms").cloned().unwrap_or(Value::Null);
    let publish_rate = if rep.secs > 0.0 {
        rep.published as f64 / rep.secs
    } else {
        0.0
    };
    let json = json!({
        "mode": "livepath",
        "label": a.label,
        "run": run,
        "ok": ok,
        "source": source.as_str(),
        "client": a.client.as_str(),
        "readers": a.readers,
        "events": if a.kind == Kind::Unrouted { "unrouted" } else { "targeted" },
        "rate": a.rate,
        "duration_s": a.duration,
        "prefetch": a.prefetch,
        "published": rep.published,
        "planned": rep.planned,
        "confirmed": rep.confirmed,
        "publish_secs": round3(rep.secs),
        "publish_rate": round3(publish_rate),
        "publish_errors": rep.errors,
        "received": num(got, "received") as u64,
        "distinct": distinct,
        "duplicates": duplicates,
        "lost": lost,
        "latency_ms": lat,
        "consumer": {
            "cpu_secs": round3(consumer_cpu),
            "cpu_us_per_event": consumer_us,
            "rss_kib": got.get("rss_kib"),
            "threads": got.get("threads"),
        },
        "broker": {
            "cpu_secs": b.cpu.map(round3),
            "cpu_us_per_event": broker_us,
            "rss_kib_before": b.rss_kib.0,
            "rss_kib_after": b.rss_kib.1,
        },
        "stream_disk": b.disk.map(|(len, alloc)| json!({
            "dir": b.stream_dir.as_ref().map(|d| d.display().to_string()),
            "bytes": len,
            "allocated_bytes": alloc,
            "history_age_s": a.history_age,
            "bytes_per_event": estimate.as_ref().map(|e| round3(e.bytes_per_event)),
            "at_age_bytes": estimate.as_ref().map(|e| e.at_age.round()),
            "capped_bytes": estimate.as_ref().map(|e| e.capped.round()),
            "arithmetic": estimate.as_ref().map(|e| e.arithmetic.clone()),
        })),
    });
    let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |x| format!("{x:.2}"));
    let l = |k: &str| lat.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut text = format!(
        "{} ({}, {} reader(s)), {} events at {}/s: published {}/{} in {:.2} s ({:.0}/s)\n  \
         received {distinct} once, {duplicates} duplicated, {lost} lost\n  \
         latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  \
         CPU per event: consumer {} us, broker {} us; broker RSS {} -> {} MiB\n",
        source.as_str(),
        a.client.as_str(),
        a.readers,
        json["events"].as_str().unwrap_or(""),
        a.rate,
        rep.published,
        rep.planned,
        rep.secs,
        publish_rate,
        l("p50"),
        l("p99"),
        l("max"),
        f(consumer_us),
        f(broker_us),
        b.rss_kib.0.map_or("?".into(), |k| (k / 1024).to_string()),
        b.rss_kib.1.map_or("?".into(), |k| (k / 1024).to_string()),
    );
    if let Some(e) = &estimate {
        text += &format!("  stream on disk: {}\n", e.arithmetic);
    } else if source.has_stream() {
        text += "  stream on disk: its directory was not found (--stream-root)\n";
    }
    for e in &rep.errors {
        text += &format!("  publish error: {e}\n");
    }
    Report { ok, json, text }
}

/// `livepath summarize FILE...`: the table of medians and ranges, on stdout.
fn summarize_files(files: &[String]) -> u8 {
    if files.is_empty() {
        eprintln!("loadgen livepath summarize: give the JSON reports");
        return crate::EXIT_USAGE;
    }
    let mut reports = Vec::new();
    for f in files {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => reports.push(v),
            Err(e) => {
                eprintln!("loadgen livepath summarize: {f}: {e}");
                return crate::EXIT_USAGE;
            }
        }
    }
    print!("{}", table(&reports));
    0
}

/// Median and range of some runs' figures, e.g. `12.3 [11.9–14.0]`; the range is left
/// out for a single run.
pub fn median_range(mut v: Vec<f64>, decimals: usize) -> String {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    if n == 1 {
        format!("{median:.decimals$}")
    } else {
        format!(
            "{median:.decimals$} [{:.decimals$}–{:.decimals$}]",
            v[0],
            v[n - 1]
        )
    }
}

/// (events, rate, source, client): what one row of the table compares.
type RowKey = (String, f64, String, String, u64);

/// The markdown table: one row per (events, rate, source, client), each figure the median [range] of that row's runs.
pub fn table(reports: &[Value]) -> String {
    let key = |r: &Value| {
        let s = |k: &str| r[k].as_str().unwrap_or("?").to_owned();
        (
            s("events"),
            r["rate"].as_f64().unwrap_or(0.0),
            s("source"),
            s("client"),
            r["readers"].as_u64().unwrap_or(1),
        )
    };
    let mut rows: Vec<(RowKey, Vec<&Value>)> = Vec::new();
    for r in reports.iter().filter(|r| r["mode"] == "livepath") {
        let k = key(r);
        match rows.iter_mut().find(|(rk, _)| *rk == k) {
            Some((_, runs)) => runs.push(r),
            None => rows.push((k, vec![r])),
        }
    }
    // The benchmark's order, whatever the files' order: by rate, then the live queue,
    // the stream, both.
    let rank = |s: &str| {
        ["queue", "stream", "queue+stream"]
            .iter()
            .position(|x| *x == s)
    };
    rows.sort_by(|(a, _), (b, _)| {
        a.1.total_cmp(&b.1)
            .then(rank(&a.2).cmp(&rank(&b.2)))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    let mut out = String::from(
        "| events/s | live path (client) | runs | p50 ms | p99 ms | max ms | consumer CPU µs/event | broker CPU µs/event | broker RSS MiB, before → after | stream on disk B/event | at the history age, MB | published/s | lost, duplicated |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((events, rate, source, client, readers), runs) in rows {
        // With several readers, each reads every event: the broker's cost is the fleet's.
        let source = match readers {
            1 => source,
            n => format!("{source} × {n}"),
        };
        let pick = |f: &dyn Fn(&Value) -> Option<f64>| {
            runs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>()
        };
        let at = |path: &[&str]| {
            pick(&|r: &Value| {
                path.iter()
                    .try_fold(r, |v, k| v.get(*k))
                    .and_then(Value::as_f64)
            })
        };
        // Medians only: the broker's RSS moves with its garbage collection by tens of
        // MiB either way, more than any one run adds.
        let mib = |k: &str| {
            median_range(
                at(&["broker", k]).into_iter().map(|x| x / 1024.0).collect(),
                0,
            )
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned()
        };
        let rss = format!("{} → {}", mib("rss_kib_before"), mib("rss_kib_after"));
        let disk = |k: &str, d: usize, scale: f64| {
            let v: Vec<f64> = at(&["stream_disk", k])
                .into_iter()
                .map(|x| x / scale)
                .collect();
            if v.is_empty() {
                "–".to_owned()
            } else {
                median_range(v, d)
            }
        };
        let sum = |k: &str| runs.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
        out += &format!(
            "| {rate} {events} | {source} ({client}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}, {} |\n",
            runs.len(),
            median_range(at(&["latency_ms", "p50"]), 2),
            median_range(at(&["latency_ms", "p99"]), 1),
            median_range(at(&["latency_ms", "max"]), 1),
            median_range(at(&["consumer", "cpu_us_per_event"]), 1),
            median_range(at(&["broker", "cpu_us_per_event"]), 1),
            rss,
            disk("bytes_per_event", 0, 1.0),
            disk("capped_bytes", 0, 1e6),
            median_range(at(&["publish_rate"]), 0),
            sum("lost"),
            sum("duplicates"),
        );
    }
    out
}

/// What the consumer received: first receipts by sequence number, their latencies.
pub struct Tally {
    seen: Vec<bool>,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Messages without this run's sequence numbers.
    pub foreign: u64,
    pub latency_us: Vec<u32>,
}

impl Tally {
    pub fn new(expect: u64) -> Tally {
        Tally {
            seen: vec![false; expect as usize],
            received: 0,
            distinct: 0,
            duplicates: 0,
            foreign: 0,
            latency_us: Vec::with_capacity(expect as usize),
        }
    }

    /// Records one message body received at `now_us`.
    pub fn record(&mut self, body: &[u8], now_us: u64) {
        self.received += 1;
        let seq = number_after(body, b"\"seq\":");
        let sent = number_after(body, b"\"sent_us\":");
        match (seq, sent) {
            (Some(seq), Some(sent)) if (seq as usize) < self.seen.len() => {
                if std::mem::replace(&mut self.seen[seq as usize], true) {
                    self.duplicates += 1;
                } else {
                    self.distinct += 1;
                    let us = now_us.saturating_sub(sent).min(u64::from(u32::MAX));
                    self.latency_us.push(us as u32);
                }
            }
            _ => self.foreign += 1,
        }
    }

    pub fn complete(&self) -> bool {
        self.distinct == self.seen.len() as u64
    }
}

/// The unsigned integer right after `key` in a JSON text. A byte search rather than a
/// JSON parse, so the consumer's CPU is the client library's, not a parser's (the
/// gateway's parse is the same work whichever source it reads).
pub fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Acknowledgements batched as the gateway does (src/broker/mod.rs `Acks`): `multiple`,
/// when half the prefetch (at most 64) is pending or 20 ms after the first one.
struct Acks<'c> {
    channel: &'c Acker,
    batch: usize,
    due: Option<u64>,
    unacked: usize,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<'c> Acks<'c> {
    fn new(channel: &'c Acker, prefetch: u16) -> Acks<'c> {
        Acks {
            channel,
            batch: (usize::from(prefetch) / 2).clamp(1, ACK_BATCH),
            due: None,
            unacked: 0,
            timer: Box::pin(tokio::time::sleep(ACK_DELAY)),
        }
    }

    async fn processed(&mut self, tag: u64) -> Result<(), String> {
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

    async fn due(&mut self) -> Result<(), String> {
        if self.due.is_none() {
            return std::future::pending().await;
        }
        (&mut self.timer).await;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.unacked = 0;
        match self.due.take() {
            Some(tag) => self.channel.ack_up_to(tag).await,
            None => Ok(()),
        }
    }
}

/// The process's own utime + stime, seconds.
fn own_cpu(tck: f64) -> f64 {
    crate::gateway::cpu_secs(std::process::id(), tck).unwrap_or(0.0)
}

/// Closes `tx` when stdin ends: the driver's signal that publishing is over.
fn stdin_closed() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    rx
}

/// The child: consumes `--queue` until it has `--expect` events, or `--tail` after stdin
/// closes; prints `ready` once consuming, then one JSON line.
async fn consume(a: Args) -> u8 {
    match consume_with(&a).await {
        Ok(()) => 0,
        Err(e) => {
            log(format!("consumer: {e}"));
            crate::EXIT_ENV
        }
    }
}

/// The consumer's side of one client library: its connection, what acknowledges, and
/// where deliveries arrive.
enum Conn {
    Lapin(Connection),
    Amqprs(amqprs::connection::Connection),
}

enum Acker {
    Lapin(Channel),
    Amqprs(amqprs::channel::Channel),
}

enum Deliveries {
    Lapin(lapin::Consumer),
    Amqprs(mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>),
}

impl Conn {
    async fn close(self) {
        let wait = Duration::from_secs(3);
        match self {
            Conn::Lapin(c) => {
                let _ =
                    tokio::time::timeout(wait, c.close(200, "livepath consumer done".into())).await;
            }
            Conn::Amqprs(c) => {
                let _ = tokio::time::timeout(wait, c.close()).await;
            }
        }
    }
}

impl Acker {
    /// Acknowledges every delivery up to `tag` (`multiple`).
    async fn ack_up_to(&self, tag: u64) -> Result<(), String> {
        match self {
            Acker::Lapin(c) => c
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| e.to_string()),
            Acker::Amqprs(c) => c
                .basic_ack(amqprs::channel::BasicAckArguments::new(tag, true))
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

impl Deliveries {
    /// The next delivery's tag and body; `None` when the consumer ended.
    async fn next(&mut self) -> Option<Result<(u64, Vec<u8>), String>> {
        match self {
            Deliveries::Lapin(c) => c.next().await.map(|d| {
                d.map(|d| (d.delivery_tag, d.data))
                    .map_err(|e| e.to_string())
            }),
            Deliveries::Amqprs(rx) => rx.recv().await.map(|m| match (m.deliver, m.content) {
                (Some(d), Some(body)) => Ok((d.delivery_tag(), body)),
                _ => Err("a delivery without its method or body".to_owned()),
            }),
        }
    }
}

/// Connects with lapin, as the gateway does: basic.qos, then basic.consume.
async fn open_lapin(
    a: &Args,
    source: Source,
    queue: &str,
) -> Result<(Conn, Acker, Deliveries), String> {
    let url = a.amqp_url.as_deref().unwrap_or_default();
    let conn = connect(url).await?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .basic_qos(a.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    let mut args = FieldTable::default();
    if source == Source::Stream {
        // Live only: what is published from now on.
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("next".into()),
        );
    }
    let consumer = channel
        .basic_consume(
            queue.into(),
            "livepath".into(),
            BasicConsumeOptions {
                // As the gateway consumes its own queue; streams take no exclusive
                // consumers.
                exclusive: source != Source::Stream,
                ..BasicConsumeOptions::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("basic.consume {queue}: {e}"))?;
    Ok((
        Conn::Lapin(conn),
        Acker::Lapin(channel),
        Deliveries::Lapin(consumer),
    ))
}

/// Connects with amqprs (tokio-native, no TLS compiled in), with the same qos, consume
/// arguments and acknowledgements.
async fn open_amqprs(
    a: &Args,
    source: Source,
    queue: &str,
) -> Result<(Conn, Acker, Deliveries), String> {
    use amqprs::channel::{BasicConsumeArguments, BasicQosArguments};
    use amqprs::connection::OpenConnectionArguments;
    let url = a.amqp_url.as_deref().unwrap_or_default();
    let u = AmqpUrl::parse(url)?;
    let args = OpenConnectionArguments::new(&u.host, u.port, &u.user, &u.password)
        .virtual_host(&u.vhost)
        .finish();
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        amqprs::connection::Connection::open(&args),
    )
    .await
    .map_err(|_| "RabbitMQ: connect timed out after 10 s".to_owned())?
    .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    let channel = conn
        .open_channel(None)
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    channel
        .basic_qos(BasicQosArguments::new(0, a.prefetch, false))
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    let mut table = amqprs::FieldTable::new();
    if source == Source::Stream {
        let key = "x-stream-offset"
            .try_into()
            .map_err(|_| "x-stream-offset: not a short string".to_owned())?;
        let next = "next"
            .try_into()
            .map_err(|_| "next: not a long string".to_owned())?;
        table.insert(key, amqprs::FieldValue::S(next));
    }
    let consume = BasicConsumeArguments::new(queue, "livepath")
        .manual_ack(true)
        .exclusive(source != Source::Stream)
        .arguments(table)
        .finish();
    let (_tag, rx) = channel
        .basic_consume_rx(consume)
        .await
        .map_err(|e| format!("basic.consume {queue}: {e}"))?;
    Ok((
        Conn::Amqprs(conn),
        Acker::Amqprs(channel),
        Deliveries::Amqprs(rx),
    ))
}

async fn consume_with(a: &Args) -> Result<(), String> {
    let source = a.source.unwrap_or(Source::Queue);
    let queue = a.queue.as_deref().unwrap_or_default();
    let (conn, acker, mut deliveries) = match a.client {
        Client::Lapin => open_lapin(a, source, queue).await?,
        Client::Amqprs => open_amqprs(a, source, queue).await?,
        Client::Bare | Client::Stream => {
            return Err("the bare and stream clients run without a runtime".into());
        }
    };
    let mut eof = stdin_closed();
    let mut eof_seen = false;
    let tck = crate::gateway::clk_tck();
    let mut tally = Tally::new(a.expect);
    let mut acks = Acks::new(&acker, a.prefetch);
    let far = Duration::from_secs(86_400);
    let deadline = tokio::time::sleep(far);
    tokio::pin!(deadline);
    println!("ready");
    let _ = std::io::stdout().flush();
    let cpu0 = own_cpu(tck);
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            r = acks.due() => if let Err(e) = r {
                failure = Some(format!("basic.ack: {e}"));
                break;
            },
            _ = &mut eof, if !eof_seen => {
                eof_seen = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + a.tail);
            }
            _ = &mut deadline => break,
            d = deliveries.next() => match d {
                Some(Ok((tag, body))) => {
                    tally.record(&body, crate::publish::now_us());
                    if let Err(e) = acks.processed(tag).await {
                        failure = Some(format!("basic.ack: {e}"));
                        break;
                    }
                    if tally.complete() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    failure = Some(format!("consumer: {e}"));
                    break;
                }
                None => {
                    failure = Some("the consumer ended".into());
                    break;
                }
            },
        }
    }
    let _ = acks.flush().await;
    let cpu = own_cpu(tck) - cpu0;
    print_result(&mut tally, cpu, failure.as_deref());
    conn.close().await;
    failure.map_or(Ok(()), Err)
}

/// The ingest floor's child: the bare consumer (`bare.rs`) on this thread, with the same
/// settings, tally and report as the library clients.
fn consume_bare(a: &Args) -> u8 {
    match consume_bare_with(a) {
        Ok(()) => 0,
        Err(e) => {
            log(format!("consumer: {e}"));
            crate::EXIT_ENV
        }
    }
}

fn consume_bare_with(a: &Args) -> Result<(), String> {
    let source = a.source.unwrap_or(Source::Queue);
    let queue = a.queue.as_deref().unwrap_or_default();
    let url = AmqpUrl::parse(a.amqp_url.as_deref().unwrap_or_default())?;
    let mut consumer = crate::bare::Consumer::connect(&crate::bare::Login {
        addr: url.socket_addr()?,
        user: &url.user,
        password: &url.password,
        vhost: &url.vhost,
    })?;
    consumer.subscribe(&crate::bare::Subscription {
        queue,
        prefetch: a.prefetch,
        exclusive: source != Source::Stream,
        stream_next: source == Source::Stream,
    })?;
    let result = on_this_thread(a, |done, end| {
        crate::bare::consume(&mut consumer, a.prefetch, done, end)
    });
    let _ = consumer.close();
    result
}

/// What a consumer does with each body: true once every event arrived.
type Done<'a> = &'a mut dyn FnMut(&[u8]) -> bool;
/// When a consumer stops, once known.
type End<'a> = &'a mut dyn FnMut() -> Option<Instant>;

/// A consumer that reads its socket on this thread (`bare`, `stream`): says it is ready,
/// hands `consume` what to do with each body and when to stop (`--tail` after the driver
/// closed stdin), and reports the tally with this process's CPU over the consume.
fn on_this_thread(
    a: &Args,
    consume: impl FnOnce(Done<'_>, End<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut eof = stdin_closed();
    let mut end = None;
    let tck = crate::gateway::clk_tck();
    let mut tally = Tally::new(a.expect);
    println!("ready");
    let _ = std::io::stdout().flush();
    let cpu0 = own_cpu(tck);
    let result = consume(
        &mut |body| {
            tally.record(body, crate::publish::now_us());
            tally.complete()
        },
        &mut || {
            if end.is_none() && eof.try_recv() != Err(oneshot::error::TryRecvError::Empty) {
                end = Some(Instant::now() + a.tail);
            }
            end
        },
    );
    let cpu = own_cpu(tck) - cpu0;
    print_result(&mut tally, cpu, result.as_ref().err().map(String::as_str));
    result
}

/// `--client stream`: the stream read over the stream protocol on this thread, with
/// `--prefetch` as the chunk credit, and the same tally and report as the others.
fn consume_stream(a: &Args) -> u8 {
    match consume_stream_with(a) {
        Ok(()) => 0,
        Err(e) => {
            log(format!("consumer: {e}"));
            crate::EXIT_ENV
        }
    }
}

fn consume_stream_with(a: &Args) -> Result<(), String> {
    let stream = a.queue.as_deref().unwrap_or_default();
    let url = AmqpUrl::parse(a.amqp_url.as_deref().unwrap_or_default())?;
    let mut addr = url.socket_addr()?;
    addr.set_port(crate::stream_reader::PORT);
    let mut reader = crate::stream_reader::Reader::connect(&crate::stream_reader::Login {
        addr,
        user: &url.user,
        password: &url.password,
        vhost: &url.vhost,
    })?;
    // Chunks, not messages: a few in flight keep the broker's reads ahead of this one.
    reader.subscribe(stream, a.prefetch.min(STREAM_CREDIT))?;
    on_this_thread(a, |done, end| reader.consume(done, end))
}

fn threads() -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|rd| rd.count() as u64)
}

fn print_result(tally: &mut Tally, cpu_secs: f64, failure: Option<&str>) {
    let lat = stats::summarize(&mut tally.latency_us);
    let line = json!({
        "received": tally.received,
        "distinct": tally.distinct,
        "duplicates": tally.duplicates,
        "foreign": tally.foreign,
        "cpu_secs": cpu_secs,
        "rss_kib": crate::gateway::rss_kib(std::process::id()),
        "threads": threads(),
        "latency_ms": lat.json_ms(),
        "error": failure,
    });
    println!("{line}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_sources_and_defaults() {
        let a = parse(&args("--source stream")).unwrap().unwrap();
        assert_eq!(a.source, Some(Source::Stream));
        assert_eq!(
            (a.rate, a.duration, a.prefetch, a.history_age),
            (5000.0, 10.0, 512, 300)
        );
        assert_eq!(a.kind, Kind::Targeted);
        let a = parse(&args(
            "--source=queue+stream --rate 20000 --events unrouted",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(a.source, Some(Source::QueueAndStream));
        assert!(a.source.unwrap().has_queue() && a.source.unwrap().has_stream());
        assert_eq!(a.kind, Kind::Unrouted);
        assert!(parse(&args("--rate 10")).is_err(), "a source is required");
        assert!(parse(&args("--source disk")).is_err());
        assert!(parse(&args("--source queue --prefetch 0")).is_err());
        assert!(parse(&args("--source queue --client rabbit")).is_err());
        let a = parse(&args("--source queue --client amqprs"))
            .unwrap()
            .unwrap();
        assert_eq!(a.client, Client::Amqprs);
        assert!(
            parse(&args("consume --source queue")).is_err(),
            "the consumer needs its queue"
        );
        assert!(parse(&args("--help")).unwrap().is_none());
    }

    #[test]
    fn readers_and_the_stream_protocol_client() {
        let a = parse(&args("--source stream --client stream --readers 4"))
            .unwrap()
            .unwrap();
        assert_eq!((a.client, a.readers), (Client::Stream, 4));
        assert_eq!(parse(&args("--source queue")).unwrap().unwrap().readers, 1);
        for bad in [
            "--source queue --client stream",
            "--source queue+stream --client stream",
            "--source queue --readers 0",
            "--source queue --readers 17",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
        let names = Names::new("r", 3);
        assert_eq!(
            names.consumed(Source::Queue, 2),
            "loadtest.livepath.r.queue.2"
        );
        assert_eq!(
            names.consumed(Source::Stream, 2),
            "loadtest.livepath.r.stream"
        );
        assert_eq!(Names::new("r", 1).queues, ["loadtest.livepath.r.queue"]);
    }

    #[test]
    fn readers_combine_into_the_worst_receipts_and_the_mean_cpu() {
        let reader = |distinct: u64, cpu: f64, p99: f64| {
            json!({"received": distinct, "distinct": distinct, "duplicates": 0, "foreign": 0,
                   "cpu_secs": cpu, "rss_kib": 100, "threads": 1,
                   "latency_ms": {"p50": 1.0, "p99": p99}, "error": null})
        };
        let got = combine(&[reader(100, 1.0, 5.0), reader(98, 3.0, 9.0)]);
        assert_eq!(got["distinct"], 98.0, "an event one reader missed is lost");
        assert_eq!(got["cpu_secs"], 2.0);
        assert_eq!(got["cpu_secs_max"], 3.0);
        assert_eq!(got["latency_ms"]["p99"], 9.0);
        assert!(got["error"].is_null());
        assert_eq!(got["readers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn publisher_options_keep_loopback_only() {
        let a = parse(&args(
            "--source queue --amqp-url amqp://guest:guest@10.0.0.1:5672/%2f",
        ))
        .unwrap()
        .unwrap();
        assert!(publisher_opts(&a, "x").is_err());
        let a = parse(&args("--source queue --rate 20000 --duration 2"))
            .unwrap()
            .unwrap();
        let o = publisher_opts(&a, "loadtest.livepath.t").unwrap();
        assert_eq!(o.planned_events(), 40_000);
        assert_eq!(o.exchange, "loadtest.livepath.t");
    }

    #[test]
    fn numbers_are_found_after_their_key() {
        let body = br#"{"event_id":"lt-r-7","data":{"run":"r","seq":7,"sent_us":1700000000123456,"job_id":"job-7"}}"#;
        assert_eq!(number_after(body, b"\"seq\":"), Some(7));
        assert_eq!(
            number_after(body, b"\"sent_us\":"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(number_after(body, b"\"nope\":"), None);
        assert_eq!(number_after(br#"{"seq":"x"}"#, b"\"seq\":"), None);
    }

    #[test]
    fn tally_counts_duplicates_loss_and_strangers() {
        let mut t = Tally::new(3);
        let ev = |seq: u64, sent: u64| format!(r#"{{"data":{{"seq":{seq},"sent_us":{sent}}}}}"#);
        t.record(ev(0, 1_000).as_bytes(), 1_500);
        t.record(ev(2, 1_000).as_bytes(), 3_000);
        t.record(ev(2, 1_000).as_bytes(), 9_000);
        t.record(ev(5, 1_000).as_bytes(), 9_000);
        t.record(b"{}", 9_000);
        assert_eq!(
            (t.received, t.distinct, t.duplicates, t.foreign),
            (5, 2, 1, 2)
        );
        assert_eq!(t.latency_us, vec![500, 2_000], "first receipts only");
        assert!(!t.complete());
        t.record(ev(1, 2_000).as_bytes(), 1_000);
        assert!(t.complete());
        assert_eq!(
            t.latency_us[2], 0,
            "a clock step back reads as zero, not a wrap"
        );
    }

    #[test]
    fn the_streams_directory_is_recognised() {
        let s = "loadtest.livepath.f794e76c16601c.stream";
        assert!(is_stream_dir(
            "__loadtest_livepath_f794e76c16601c_stream_1795466331659356786",
            s
        ));
        assert!(!is_stream_dir(
            "__loadtest_livepath_f794e76c16601c_stream2_1795466331659356786",
            s
        ));
        assert!(!is_stream_dir(
            "__loadtest_livepath_f794e76c16601c_stream",
            s
        ));
        assert!(!is_stream_dir(
            "__xloadtest_livepath_f794e76c16601c_stream_1",
            "loadtest.livepath.f794e76c16601c.stream.x"
        ));
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median_range(vec![3.0, 1.0, 2.0], 1), "2.0 [1.0–3.0]");
        assert_eq!(
            median_range(vec![4.0, 1.0, 2.0, 3.0], 1),
            "2.5 [1.0–4.0]",
            "even: the mean of the middle two"
        );
        assert_eq!(median_range(vec![0.5], 2), "0.50");
        assert_eq!(median_range(vec![], 2), "n/a");
    }

    #[test]
    fn the_table_groups_runs_by_rate_source_and_client() {
        let run = |source: &str, p50: f64, disk: Option<f64>| {
            json!({
                "mode": "livepath", "events": "targeted", "rate": 5000.0, "source": source,
                "client": "lapin", "lost": 0, "duplicates": 0, "publish_rate": 4999.0,
                "latency_ms": {"p50": p50, "p99": 2.0, "max": 5.0},
                "consumer": {"cpu_us_per_event": 16.0},
                "broker": {"cpu_us_per_event": 60.0, "rss_kib_before": 102_400, "rss_kib_after": 104_448},
                "stream_disk": disk.map(|b| json!({"bytes_per_event": b, "capped_bytes": b * 1.5e6})),
            })
        };
        let t = table(&[
            run("stream", 0.8, Some(580.0)),
            run("queue", 0.3, None),
            run("queue", 0.2, None),
            run("stream", 0.9, Some(600.0)),
            run("queue", 0.4, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].starts_with("| 5000 targeted | queue (lapin) | 3 | 0.30 [0.20–0.40] |"),
            "{t}"
        );
        assert!(
            lines[2].contains("| 2.0 [2.0–2.0] |") && lines[2].contains("| – | – |"),
            "{t}"
        );
        assert!(
            lines[3].contains("| stream (lapin) | 2 | 0.85 [0.80–0.90] |"),
            "{t}"
        );
        assert!(
            lines[3].contains("| 590 [580–600] | 885 [870–900] |"),
            "{t}"
        );
    }

    #[test]
    fn disk_is_extrapolated_to_the_history_age_and_capped() {
        let e = extrapolate(30_000_000, 50_000, 5000.0, 300, STREAM_MAX_BYTES).unwrap();
        assert_eq!(e.bytes_per_event, 600.0);
        assert_eq!(e.at_age, 900_000_000.0);
        assert_eq!(e.capped, 900_000_000.0);
        assert!(e.arithmetic.contains("= 600 B/event"), "{}", e.arithmetic);
        assert!(e.arithmetic.ends_with("= 900 MB"), "{}", e.arithmetic);
        let e = extrapolate(60_000_000, 100_000, 20_000.0, 300, STREAM_MAX_BYTES).unwrap();
        assert_eq!(e.at_age, 3_600_000_000.0);
        assert_eq!(e.capped, STREAM_MAX_BYTES as f64);
        assert!(
            e.arithmetic.contains("capped at 1074 MB"),
            "{}",
            e.arithmetic
        );
        assert!(extrapolate(1, 0, 1.0, 300, 1).is_none());
    }
}
