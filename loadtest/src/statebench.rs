//! `loadgen state ...`: what the gateway's live state costs, end to end (`state.sh` runs
//! it). Two measurements of their own; the CPU per event with the state on and off is the
//! unrouted and targeted modes against two gateways, read by `state summarize`.
//!
//! - `memory`: publishes K render-job events, each a job of its own, over users and
//!   tenants, with no client connected, and reads the gateway's RSS before and after
//!   (once its `/metrics` shows every event received): growth per key.
//! - `snapshot`: fills the state with one user's J jobs and other users' jobs, then
//!   connects that user over WebSocket and SSE, one connection at a time, with and without
//!   `snapshot=1` (interleaved, so both see the same machine), and times TCP connect →
//!   snapshot received (and → ready without one); then on one WebSocket, in-band `watch`
//!   of one job → its snapshot, and `ping` → `pong` as that exchange's floor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::conn::{self, find};
use crate::gateway::{self, ProcSample};
use crate::livepath::median_range;
use crate::opts::{self, Opts, Parsed};
use crate::publish::{self, Kind, Publisher};
use crate::stats::{self, Summary};
use crate::{EXIT_ENV, EXIT_FAIL, EXIT_USAGE, Proc, abort_on_signal, log, round3, run_id};

pub const HELP: &str = "\
loadgen state: what the gateway's live state costs (loopback only; loadtest/state.sh)

USAGE:
  loadgen state memory   [--keys K] [--users U] [--tenants T] [--rate R] [flags]
  loadgen state snapshot [--jobs J] [--noise-users N] [--connects C] [--watches W]
                         [--rate R] [flags]
  loadgen state summarize FILE...

memory     publishes K render.job.progress.v1 events (--keys, 100000), each a job of its
           own (data.job_id job-<k>), event k for user k % U (1000) of tenant
           (k % U) % T (10), at R events/s (20000), with no client connected; once the
           gateway's /metrics shows all received, waits 1 s and reads its RSS: growth
           per key. Keep K / U within GATEWAY_STATE_MAX_KEYS_PER_USER (1000) and
           K / T within GATEWAY_STATE_MAX_KEYS_PER_TENANT (20000), or raise them.
snapshot   publishes J jobs (--jobs, 100) of user 0 and as many of each of N other
           users (--noise-users, 99) of the same tenant, then, C times (--connects, 200),
           connects user 0 over WebSocket and SSE, each with and without snapshot=1,
           one connection at a time: TCP connect -> snapshot received (checked: J
           events), and -> ready (101 / `: connected`) without a snapshot. Then on one
           WebSocket, W times (--watches, 200): ping -> pong, and
           {\"type\":\"watch\",\"keys\":[one job],\"snapshot\":true} -> its snapshot
           (then unwatch). Every connection is user 0's: raise
           GATEWAY_MAX_CONNECTIONS_PER_USER for the run (state.sh does).
summarize  the table of state.sh's reports: CPU per event with the state on and off
           (ratio per run), memory per key, snapshot times; medians [ranges] over runs.

Other flags as for the other modes: --gateway, --gateway-pid, --amqp-url, --exchange,
--secret, --pad, --tenant, --user-prefix, --label, --json-out. One JSON line on stdout
(and in --json-out), a summary on stderr. Exit status 0 when everything was received and
every snapshot held what it should; 1 otherwise; 2 bad usage; 3 environment.
";

/// Which measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Memory,
    Snapshot,
}

/// A parsed `state memory|snapshot` command.
#[derive(Debug)]
struct Args {
    what: What,
    /// memory: distinct jobs, one event each.
    keys: u64,
    /// snapshot: jobs of the measured user (and of each other user).
    jobs: u64,
    /// snapshot: users of the same tenant whose jobs the snapshot must leave out.
    noise_users: usize,
    /// snapshot: connections per transport and kind (with and without a snapshot).
    connects: usize,
    /// snapshot: in-band watches (and pings).
    watches: usize,
    /// The publisher's and the endpoints' settings, as `loadgen publish` takes them.
    o: Opts,
}

/// Most events one run publishes: the keys stay within what a run should hold.
const MAX_EVENTS: u64 = 10_000_000;

pub fn main(args: &[String]) -> u8 {
    match args.first().map(String::as_str) {
        Some("summarize") => return summarize_files(&args[1..]),
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            return 0;
        }
        _ => {}
    }
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "loadgen state: {}\n(see loadgen state --help)",
                e.replace('\n', "\nloadgen state: ")
            );
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen state: cannot start the runtime: {e}");
            return EXIT_ENV;
        }
    };
    let code = runtime.block_on(async move {
        match a.what {
            What::Memory => memory(a).await,
            What::Snapshot => snapshot(a).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
}

/// `memory|snapshot [flags]`: its own flags here, the rest as `loadgen publish` takes them.
fn parse(args: &[String]) -> Result<Args, String> {
    let what = match args.first().map(String::as_str) {
        Some("memory") => What::Memory,
        Some("snapshot") => What::Snapshot,
        other => {
            return Err(format!(
                "give memory, snapshot or summarize, not `{}`",
                other.unwrap_or("")
            ));
        }
    };
    let mut keys = 100_000u64;
    let mut jobs = 100u64;
    let mut noise_users = 99usize;
    let mut connects = 200usize;
    let mut watches = 200usize;
    let mut users: Option<usize> = None;
    let mut tenants: Option<usize> = None;
    let mut rate = 20_000f64;
    let mut rest: Vec<String> = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (a.as_str(), None),
        };
        let mine = [
            "--keys",
            "--jobs",
            "--noise-users",
            "--connects",
            "--watches",
            "--users",
            "--tenants",
            "--rate",
        ];
        if ["--duration", "--ws", "--sse"].contains(&flag) {
            return Err(format!(
                "{flag}: not for state runs (the count of events sets the publishing)"
            ));
        }
        if !mine.contains(&flag) {
            rest.push(a.clone());
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(format!("{flag} needs a value"))?,
        };
        match flag {
            "--keys" => keys = num(flag, &v)?,
            "--jobs" => jobs = num(flag, &v)?,
            "--noise-users" => noise_users = num(flag, &v)?,
            "--connects" => connects = num(flag, &v)?,
            "--watches" => watches = num(flag, &v)?,
            "--users" => users = Some(num(flag, &v)?),
            "--tenants" => tenants = Some(num(flag, &v)?),
            _ => rate = num(flag, &v)?,
        }
    }
    let (users, tenants, events) = match what {
        What::Memory => {
            let users = users.unwrap_or(1000);
            (users, tenants.unwrap_or(10.min(users.max(1))), keys)
        }
        What::Snapshot => {
            if users.is_some() || tenants.is_some() {
                return Err("snapshot: the users are 1 + --noise-users, of one tenant".into());
            }
            let users = noise_users + 1;
            (users, 1, jobs.saturating_mul(users as u64))
        }
    };
    if events == 0 || events > MAX_EVENTS {
        return Err(format!(
            "the run publishes {events} events: give between 1 and {MAX_EVENTS}"
        ));
    }
    if what == What::Snapshot && (jobs == 0 || connects == 0) {
        return Err("--jobs and --connects must be at least 1".into());
    }
    if !(rate.is_finite() && rate > 0.0) {
        return Err("--rate must be positive".into());
    }
    // Half an event of slack, so rate x duration floors to exactly `events`.
    let duration = (events as f64 + 0.5) / rate;
    let mut argv: Vec<String> = ["publish", "--users", &users.to_string()]
        .into_iter()
        .map(String::from)
        .collect();
    argv.extend(
        [
            "--tenants".to_owned(),
            tenants.to_string(),
            "--rate".to_owned(),
            rate.to_string(),
            "--duration".to_owned(),
            duration.to_string(),
        ]
        .into_iter()
        .chain(rest),
    );
    let o = match opts::parse(argv)? {
        Parsed::Run(o) => *o,
        Parsed::Help => return Err("see loadgen state --help".into()),
    };
    if o.planned_events() != events {
        return Err(format!(
            "--rate {rate} plans {} events, not {events}",
            o.planned_events()
        ));
    }
    Ok(Args {
        what,
        keys,
        jobs,
        noise_users,
        connects,
        watches,
        o,
    })
}

/// Events the gateway has received from the broker so far.
async fn received(o: &Opts) -> Result<f64, String> {
    gateway::metrics(o.gateway, &o.gateway_host)
        .await
        .map(|m| gateway::sum(&m, "gateway_events_received_total"))
}

/// Readiness, the gateway process and a publisher; an exit code if one fails.
async fn prepare(o: &Opts) -> Result<(Proc, Publisher), u8> {
    if let Err(e) = gateway::ready(o.gateway, &o.gateway_host).await {
        log(e);
        return Err(EXIT_ENV);
    }
    let proc_ = Proc::find(o);
    match Publisher::connect(o).await {
        Ok(p) => Ok((proc_, p)),
        Err(e) => {
            log(e);
            Err(EXIT_ENV)
        }
    }
}

/// What publishing the run's events did.
struct Filled {
    published: u64,
    /// Every published event counted received by the gateway.
    received_all: bool,
    /// Seconds from the first publish until the gateway had them all.
    secs: f64,
    /// Publisher errors, nacks, unroutable events.
    errors: Vec<String>,
}

/// Publishes the planned targeted events (event k: job-k, for user k % users) and waits
/// until the gateway counts them all received, at most 30 s after the last.
async fn fill(o: &Opts, run: &str, publisher: &Publisher, abort: &watch::Receiver<bool>) -> Filled {
    let base = received(o).await.unwrap_or(0.0);
    let started = Instant::now();
    let rep = publisher.run(o, run, Kind::Targeted, abort.clone()).await;
    let mut errors = rep.errors.clone();
    if !rep.ok() {
        errors.push(format!(
            "published {} of {}: confirmed {}, nacked {}, unroutable {}, unconfirmed {}",
            rep.published, rep.planned, rep.confirmed, rep.nacked, rep.unroutable, rep.unconfirmed
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received_all = false;
    while Instant::now() < deadline && !*abort.borrow() {
        if received(o)
            .await
            .is_ok_and(|n| n - base >= rep.published as f64)
        {
            received_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !received_all {
        errors.push("the gateway did not count every event received within 30 s".into());
    }
    Filled {
        published: rep.published,
        received_all,
        secs: started.elapsed().as_secs_f64(),
        errors,
    }
}

/// Mean envelope length of the run's events, from every 100th.
fn mean_event_bytes(o: &Opts, run: &str, events: u64) -> f64 {
    let pad = "x".repeat(o.pad);
    let step = (events / 100).max(1);
    let lens: Vec<usize> = (0..events)
        .step_by(step as usize)
        .map(|k| publish::envelope(o, run, Kind::Targeted, k, &pad).len())
        .collect();
    lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64
}

/// Writes the JSON line to stdout and `--json-out`.
fn emit(o: &Opts, line: &Value) {
    let text = line.to_string();
    println!("{text}");
    if let Some(path) = &o.json_out
        && let Err(e) = std::fs::write(path, format!("{text}\n"))
    {
        log(format!("cannot write {path}: {e}"));
    }
}

/// The gauges of `/metrics` that say what the gateway holds.
async fn holdings(o: &Opts) -> Value {
    let Ok(m) = gateway::metrics(o.gateway, &o.gateway_host).await else {
        return Value::Null;
    };
    let g = |name| gateway::sum(&m, name);
    json!({
        "state_keys": g("gateway_state_keys"),
        "state_bytes": g("gateway_state_bytes"),
        "history_events": g("gateway_history_events"),
        "history_bytes": g("gateway_history_bytes"),
    })
}

/// `state memory`: RSS growth per key.
async fn memory(a: Args) -> u8 {
    let o = &a.o;
    let (proc_, publisher) = match prepare(o).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let abort = abort_on_signal();
    let run = run_id();
    log(format!(
        "run {run}: {} events, a job each, over {} users of {} tenants, at {}/s",
        a.keys, o.users, o.tenants, o.rate
    ));
    let before: Option<ProcSample> = proc_.sample();
    let filled = fill(o, &run, &publisher, &abort).await;
    publisher.close().await;
    // The last events' work (history, state) follows their count by microseconds; a
    // second lets the allocator settle too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proc_.sample();
    let held = holdings(o).await;
    let event_bytes = mean_event_bytes(o, &run, a.keys);
    let growth = before
        .zip(after)
        .map(|(b, a)| (a.rss_kib as f64 - b.rss_kib as f64) * 1024.0);
    let per_key = growth.map(|g| g / filled.published.max(1) as f64);
    let ok = filled.errors.is_empty() && !*abort.borrow() && per_key.is_some();
    eprintln!(
        "== loadgen state memory ({} keys)\n  received {} of {} events in {:.1} s\n  \
         gateway RSS {} -> {} KiB: {} bytes per key (events of {:.0} bytes)\n  \
         holds {held}{}",
        a.keys,
        if filled.received_all {
            "all"
        } else {
            "NOT all"
        },
        filled.published,
        filled.secs,
        before.map_or("?".into(), |s| s.rss_kib.to_string()),
        after.map_or("?".into(), |s| s.rss_kib.to_string()),
        per_key.map_or("?".into(), |b| format!("{b:.0}")),
        event_bytes,
        filled
            .errors
            .iter()
            .map(|e| format!("\n  error: {e}"))
            .collect::<String>()
    );
    emit(
        o,
        &json!({
            "mode": "state-memory",
            "label": o.label,
            "run": run,
            "ok": ok,
            "keys": a.keys,
            "users": o.users,
            "tenants": o.tenants,
            "rate": o.rate,
            "published": filled.published,
            "received_all": filled.received_all,
            "fill_secs": round3(filled.secs),
            "event_bytes": round3(event_bytes),
            "rss_before_kib": before.map(|s| s.rss_kib),
            "rss_after_kib": after.map(|s| s.rss_kib),
            "rss_growth_per_key_bytes": per_key.map(round3),
            "gateway": held,
            "errors": filled.errors,
        }),
    );
    if ok { 0 } else { EXIT_FAIL }
}

/// The events of a snapshot message: one `event_id` each (the envelopes pass through
/// byte for byte, and a snapshot's own fields have no such name).
fn snapshot_events(body: &[u8]) -> usize {
    let needle = br#""event_id":"#;
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = find(&body[at..], needle) {
        n += 1;
        at += i + needle.len();
    }
    n
}

fn is_type(body: &[u8], ty: &str) -> bool {
    find(body, format!(r#""type":"{ty}""#).as_bytes()).is_some()
}

/// One timed connection: until ready (101 / `: connected`) and until its snapshot.
struct Timed {
    ready: Duration,
    /// When the snapshot was received, its events and bytes.
    snapshot: Option<(Duration, usize, usize)>,
}

/// Where and as whom the snapshot runs connect.
struct Target {
    addr: SocketAddr,
    host: String,
    token: String,
}

/// Bounds each timed connection, handshake to close.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn tcp(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn ws_open(t: &Target, query: &str) -> Result<conn::Ws, String> {
    let stream = tcp(t.addr).await?;
    let url = format!("ws://{}/ws?access_token={}{query}", t.host, t.token);
    match tokio_tungstenite::client_async_with_config(url, stream, Some(conn::ws_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(format!(
            "HTTP {} {}",
            resp.status().as_u16(),
            resp.body()
                .as_deref()
                .map(conn::refusal_reason)
                .unwrap_or_default()
        )),
        Err(e) => Err(format!("ws handshake: {e}")),
    }
}

/// The next text message of `ws` that is of type `ty`, skipping others.
async fn ws_until(ws: &mut conn::Ws, ty: &str) -> Result<tungstenite::Utf8Bytes, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if is_type(t.as_bytes(), ty) => return Ok(t),
            Some(Ok(Message::Close(f))) => return Err(format!("closed by the gateway: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("ws: {e}")),
            None => return Err("ws: connection ended".into()),
        }
    }
}

/// Our close, bounded: the gateway forgets the connection before the next one comes.
async fn ws_close(mut ws: conn::Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn ws_once(t: &Target, snapshot: bool) -> Result<Timed, String> {
    let t0 = Instant::now();
    let mut ws = ws_open(t, if snapshot { "&snapshot=1" } else { "" }).await?;
    let ready = t0.elapsed();
    let snap = if snapshot {
        let msg = ws_until(&mut ws, "snapshot").await?;
        Some((t0.elapsed(), snapshot_events(msg.as_bytes()), msg.len()))
    } else {
        None
    };
    ws_close(ws).await;
    Ok(Timed {
        ready,
        snapshot: snap,
    })
}

async fn sse_once(t: &Target, snapshot: bool) -> Result<Timed, String> {
    let t0 = Instant::now();
    let stream = tcp(t.addr).await?;
    let path = if snapshot { "/sse?snapshot=1" } else { "/sse" };
    let mut sse = conn::sse_open(stream, &t.host, path, &t.token).await?;
    let ready = t0.elapsed();
    let mut snap = None;
    if snapshot {
        let mut named = false;
        'read: loop {
            while let Some(line) = sse.line() {
                if line == b"event: snapshot" {
                    named = true;
                } else if named && let Some(data) = line.strip_prefix(b"data:") {
                    snap = Some((t0.elapsed(), snapshot_events(data), data.len()));
                    break 'read;
                }
            }
            if sse.eof || !sse.fill().await? {
                return Err("sse: stream ended before the snapshot".into());
            }
        }
    }
    use tokio::io::AsyncWriteExt;
    let _ = sse.stream.shutdown().await;
    Ok(Timed {
        ready,
        snapshot: snap,
    })
}

/// Samples of one series (µs) and what went wrong with it.
#[derive(Default)]
struct Series {
    us: Vec<u32>,
    /// Failures by reason (connect errors, snapshots of the wrong size).
    failures: std::collections::BTreeMap<String, u64>,
    /// Snapshot sizes seen, bytes (the last one).
    bytes: usize,
}

impl Series {
    fn push(&mut self, d: Duration) {
        self.us.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn fail(&mut self, why: impl Into<String>) {
        *self.failures.entry(why.into()).or_default() += 1;
    }

    /// A snapshot that must hold `expect` events.
    fn snapshot(&mut self, snap: Option<(Duration, usize, usize)>, expect: usize) {
        match snap {
            Some((d, n, bytes)) if n == expect => {
                self.push(d);
                self.bytes = bytes;
            }
            Some((_, n, _)) => self.fail(format!("snapshot of {n} events, not {expect}")),
            None => self.fail("no snapshot"),
        }
    }

    fn summary(&mut self) -> Summary {
        stats::summarize(&mut self.us)
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn json(&mut self) -> Value {
        let s = self.summary();
        json!({ "ms": s.json_ms(), "failures": self.failures, "bytes": self.bytes })
    }
}

/// The series of a snapshot run.
#[derive(Default)]
struct SnapshotSeries {
    ws_ready: Series,
    ws_snapshot: Series,
    sse_ready: Series,
    sse_snapshot: Series,
    ping: Series,
    watch: Series,
}

async fn timed<F: std::future::Future<Output = Result<Timed, String>>>(
    f: F,
) -> Result<Timed, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// The connects: with and without a snapshot, WebSocket and SSE, interleaved.
async fn connects(a: &Args, t: &Target, s: &mut SnapshotSeries, abort: &watch::Receiver<bool>) {
    let jobs = a.jobs as usize;
    for _ in 0..a.connects {
        if *abort.borrow() {
            return;
        }
        match timed(ws_once(t, true)).await {
            Ok(r) => s.ws_snapshot.snapshot(r.snapshot, jobs),
            Err(e) => s.ws_snapshot.fail(e),
        }
        match timed(ws_once(t, false)).await {
            Ok(r) => s.ws_ready.push(r.ready),
            Err(e) => s.ws_ready.fail(e),
        }
        match timed(sse_once(t, true)).await {
            Ok(r) => s.sse_snapshot.snapshot(r.snapshot, jobs),
            Err(e) => s.sse_snapshot.fail(e),
        }
        match timed(sse_once(t, false)).await {
            Ok(r) => s.sse_ready.push(r.ready),
            Err(e) => s.sse_ready.fail(e),
        }
    }
}

/// In band on one WebSocket: ping → pong, then watch one job → its snapshot, unwatch.
async fn watches(
    a: &Args,
    t: &Target,
    s: &mut SnapshotSeries,
    abort: &watch::Receiver<bool>,
) -> Result<(), String> {
    let mut ws = ws_open(t, "").await?;
    let users = a.noise_users as u64 + 1;
    for i in 0..a.watches {
        if *abort.borrow() {
            break;
        }
        let t0 = Instant::now();
        ws.send(Message::text(r#"{"type":"ping"}"#))
            .await
            .map_err(|e| format!("ws send: {e}"))?;
        ws_until(&mut ws, "pong").await?;
        s.ping.push(t0.elapsed());
        // User 0's jobs are events 0, U, 2U, ...: job-<k>.
        let job = format!("job-{}", (i as u64 % a.jobs) * users);
        let t0 = Instant::now();
        ws.send(Message::text(format!(
            r#"{{"type":"watch","keys":["{job}"],"snapshot":true}}"#
        )))
        .await
        .map_err(|e| format!("ws send: {e}"))?;
        let msg = ws_until(&mut ws, "snapshot").await?;
        s.watch.snapshot(
            Some((t0.elapsed(), snapshot_events(msg.as_bytes()), msg.len())),
            1,
        );
        ws.send(Message::text(format!(
            r#"{{"type":"unwatch","keys":["{job}"]}}"#
        )))
        .await
        .map_err(|e| format!("ws send: {e}"))?;
        ws_until(&mut ws, "subscribed").await?;
    }
    ws_close(ws).await;
    Ok(())
}

/// `state snapshot`: connect → snapshot, and watch → snapshot, for a user with J jobs.
async fn snapshot(a: Args) -> u8 {
    let o = &a.o;
    let (_proc, publisher) = match prepare(o).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let abort = abort_on_signal();
    let run = run_id();
    log(format!(
        "run {run}: {} jobs of user 0 and of each of {} other users, then {} connects \
         per transport and kind, {} watches",
        a.jobs, a.noise_users, a.connects, a.watches
    ));
    let filled = fill(o, &run, &publisher, &abort).await;
    publisher.close().await;
    let exp = publish::now_us() / 1_000_000 + 3600;
    let token = match crate::mint(o, 0, exp) {
        Ok(t) => t,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    let t = Target {
        addr: o.gateway,
        host: o.gateway_host.clone(),
        token,
    };
    let mut s = SnapshotSeries::default();
    let mut errors = filled.errors.clone();
    if filled.received_all {
        // The state is updated right after the count; give the last events a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        connects(&a, &t, &mut s, &abort).await;
        if a.watches > 0
            && let Err(e) = watches(&a, &t, &mut s, &abort).await
        {
            errors.push(format!("watch: {e}"));
        }
    }
    let failed: u64 = [
        &s.ws_ready,
        &s.ws_snapshot,
        &s.sse_ready,
        &s.sse_snapshot,
        &s.watch,
    ]
    .iter()
    .map(|x| x.failed())
    .sum();
    let ok = errors.is_empty() && failed == 0 && !*abort.borrow();
    let line = |name: &str, x: &mut Series| {
        let sum = x.summary();
        format!(
            "\n  {name:<34} {}{}",
            sum.text_ms(),
            if x.failures.is_empty() {
                String::new()
            } else {
                format!("  FAILED {:?}", x.failures)
            }
        )
    };
    let text = [
        line("WS connect -> 101 (no snapshot)", &mut s.ws_ready),
        line("WS connect -> snapshot", &mut s.ws_snapshot),
        line("SSE connect -> `: connected`", &mut s.sse_ready),
        line("SSE connect -> snapshot", &mut s.sse_snapshot),
        line("in band: ping -> pong", &mut s.ping),
        line("in band: watch one job -> snapshot", &mut s.watch),
    ]
    .concat();
    eprintln!(
        "== loadgen state snapshot (user 0: {} jobs; {} other users)\n  received {} of {} \
         events in {:.1} s; snapshot of {} bytes (WS){text}{}",
        a.jobs,
        a.noise_users,
        if filled.received_all {
            "all"
        } else {
            "NOT all"
        },
        filled.published,
        filled.secs,
        s.ws_snapshot.bytes,
        errors
            .iter()
            .map(|e| format!("\n  error: {e}"))
            .collect::<String>()
    );
    emit(
        o,
        &json!({
            "mode": "state-snapshot",
            "label": o.label,
            "run": run,
            "ok": ok,
            "jobs": a.jobs,
            "noise_users": a.noise_users,
            "connects": a.connects,
            "watches": a.watches,
            "published": filled.published,
            "received_all": filled.received_all,
            "ws_ready": s.ws_ready.json(),
            "ws_snapshot": s.ws_snapshot.json(),
            "sse_ready": s.sse_ready.json(),
            "sse_snapshot": s.sse_snapshot.json(),
            "ping": s.ping.json(),
            "watch": s.watch.json(),
            "errors": errors,
        }),
    );
    if ok { 0 } else { EXIT_FAIL }
}

/// `state summarize FILE...`: the table, on stdout.
fn summarize_files(files: &[String]) -> u8 {
    if files.is_empty() {
        eprintln!("loadgen state summarize: give the JSON reports");
        return EXIT_USAGE;
    }
    let mut reports = Vec::new();
    for f in files {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => reports.push(v),
            Err(e) => {
                eprintln!("loadgen state summarize: {f}: {e}");
                return EXIT_USAGE;
            }
        }
    }
    print!("{}", table(&reports));
    0
}

/// The label's parts: `cpu/SCENARIO/on|off/RUN`, `memory/KEYS/on|off/RUN`,
/// `snapshot/on/RUN`.
fn label(v: &Value) -> Option<Vec<&str>> {
    Some(v["label"].as_str()?.split('/').collect())
}

/// The gateway's CPU per event of a load run (unrouted and targeted alike: targeted
/// events have one recipient each).
fn cpu_per_event(v: &Value) -> Option<f64> {
    v["gateway_process"]["cpu_us_per_event"].as_f64()
}

/// One run's figure with the state on, and with it off.
type OnOff = (Option<f64>, Option<f64>);

/// Per (group, run): the state-on and state-off figure.
type Pairs = std::collections::BTreeMap<String, std::collections::BTreeMap<String, OnOff>>;

fn pair(pairs: &mut Pairs, group: &str, run: &str, on: bool, x: Option<f64>) {
    let e = pairs
        .entry(group.to_owned())
        .or_default()
        .entry(run.to_owned())
        .or_default();
    if on {
        e.0 = x;
    } else {
        e.1 = x;
    }
}

/// Groups in their natural order: by the number in them, then by name.
fn ordered(pairs: &Pairs) -> Vec<&String> {
    let mut g: Vec<&String> = pairs.keys().collect();
    let digits = |s: &str| -> u64 {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    g.sort_by_key(|s| (s.trim_end_matches(char::is_numeric).to_owned(), digits(s)));
    g
}

/// The markdown tables of state.sh's reports.
pub fn table(reports: &[Value]) -> String {
    let mut cpu = Pairs::new();
    let mut mem = Pairs::new();
    let mut event_bytes: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut failed: Vec<String> = Vec::new();
    let mut snaps: Vec<&Value> = Vec::new();
    for v in reports {
        let Some(parts) = label(v) else { continue };
        if v["ok"] != true {
            failed.push(v["label"].as_str().unwrap_or("?").to_owned());
        }
        match parts.as_slice() {
            ["cpu", scenario, state, run] => {
                pair(&mut cpu, scenario, run, *state == "on", cpu_per_event(v));
            }
            ["memory", keys, state, run] => {
                let per_key = v["rss_growth_per_key_bytes"].as_f64();
                pair(&mut mem, keys, run, *state == "on", per_key);
                if let Some(b) = v["event_bytes"].as_f64() {
                    event_bytes.entry((*keys).to_owned()).or_default().push(b);
                }
            }
            ["snapshot", ..] => snaps.push(v),
            _ => {}
        }
    }
    let mut out = String::new();
    if !cpu.is_empty() {
        out.push_str(
            "| gateway CPU per event | state off | state on | on ÷ off (per run) |\n|---|---|---|---|\n",
        );
        for g in ordered(&cpu) {
            let runs = &cpu[g];
            let col =
                |f: fn(&OnOff) -> Option<f64>| runs.values().filter_map(f).collect::<Vec<f64>>();
            let ratios = col(|p| {
                p.0.zip(p.1)
                    .filter(|(_, off)| *off > 0.0)
                    .map(|(a, b)| a / b)
            });
            out.push_str(&format!(
                "| {g} | {} µs | {} µs | {}x |\n",
                median_range(col(|p| p.1), 2),
                median_range(col(|p| p.0), 2),
                median_range(ratios, 3)
            ));
        }
        out.push('\n');
    }
    if !mem.is_empty() {
        out.push_str(
            "| keys | event bytes | RSS growth per key, state off | state on | the state's own (on − off, per run) |\n|---|---|---|---|---|\n",
        );
        for g in ordered(&mem) {
            let runs = &mem[g];
            let col =
                |f: fn(&OnOff) -> Option<f64>| runs.values().filter_map(f).collect::<Vec<f64>>();
            out.push_str(&format!(
                "| {g} | {} | {} B | {} B | {} B |\n",
                // The same envelopes in every run, up to the run id's length.
                event_bytes
                    .get(g)
                    .and_then(|b| b.first())
                    .map_or("?".into(), |b| format!("{b:.0}")),
                median_range(col(|p| p.1), 0),
                median_range(col(|p| p.0), 0),
                median_range(col(|p| p.0.zip(p.1).map(|(a, b)| a - b)), 0)
            ));
        }
        out.push('\n');
    }
    if !snaps.is_empty() {
        out.push_str(&format!(
            "| snapshot of a user's {} jobs ({} runs) | p50 | p99 | failures |\n|---|---|---|---|\n",
            snaps[0]["jobs"],
            snaps.len()
        ));
        let rows = [
            ("WS: TCP connect → 101, no snapshot", "ws_ready"),
            ("WS: TCP connect → snapshot received", "ws_snapshot"),
            ("SSE: TCP connect → `: connected`, no snapshot", "sse_ready"),
            ("SSE: TCP connect → snapshot received", "sse_snapshot"),
            ("in band: ping → pong", "ping"),
            ("in band: watch one job → its snapshot", "watch"),
        ];
        for (name, key) in rows {
            let col = |p: &str| -> Vec<f64> {
                snaps
                    .iter()
                    .filter_map(|v| v[key]["ms"][p].as_f64())
                    .collect()
            };
            let failures: u64 = snaps
                .iter()
                .filter_map(|v| v[key]["failures"].as_object())
                .flat_map(|m| m.values().filter_map(Value::as_u64))
                .sum();
            out.push_str(&format!(
                "| {name} | {} ms | {} ms | {failures} |\n",
                median_range(col("p50"), 3),
                median_range(col("p99"), 3)
            ));
        }
        out.push('\n');
    }
    if !failed.is_empty() {
        out.push_str(&format!("Runs not ok: {}\n", failed.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn memory_plans_exactly_its_keys() {
        let a = args("memory --keys 100000 --rate 20000").expect("parses");
        assert_eq!(a.what, What::Memory);
        assert_eq!(a.o.planned_events(), 100_000);
        assert_eq!((a.o.users, a.o.tenants), (1000, 10));
        // Awkward rates still plan the exact count.
        for rate in ["3", "7000", "19999.7"] {
            let a = args(&format!("memory --keys 10007 --rate {rate}")).expect("parses");
            assert_eq!(a.o.planned_events(), 10_007, "rate {rate}");
        }
        assert!(args("memory --keys 0").is_err());
        assert!(args("memory --duration 5").is_err());
        assert!(args("memory --keys 10 --gateway http://10.0.0.1:8080").is_err());
    }

    #[test]
    fn snapshot_publishes_every_users_jobs() {
        let a = args("snapshot --jobs 100 --noise-users 99 --connects 5").expect("parses");
        assert_eq!(a.what, What::Snapshot);
        assert_eq!(a.o.users, 100);
        assert_eq!(a.o.planned_events(), 10_000);
        // User 0's jobs are events 0, U, 2U, ...: J of them.
        let ours = (0..a.o.planned_events())
            .filter(|k| Kind::Targeted.is_for_user(&a.o, 0, *k))
            .count();
        assert_eq!(ours, 100);
        assert!(args("snapshot --users 5").is_err());
        assert!(args("snapshot --connects 0").is_err());
        assert!(args("nothing").is_err());
    }

    #[test]
    fn counts_a_snapshots_events() {
        let body = br#"{"type":"snapshot","events":[{"event_id":"a","data":{}},{"event_id":"b","data":{"x":"event_id"}}],"truncated":false}"#;
        assert_eq!(snapshot_events(body), 2);
        assert_eq!(snapshot_events(br#"{"type":"snapshot","events":[]}"#), 0);
        assert!(is_type(body, "snapshot"));
        assert!(!is_type(
            br##"{"type":"subscribed","types":["#"]}"##,
            "snapshot"
        ));
    }

    #[test]
    fn series_counts_wrong_snapshots_as_failures() {
        let mut s = Series::default();
        s.snapshot(Some((Duration::from_micros(1500), 3, 900)), 3);
        s.snapshot(Some((Duration::from_micros(900), 2, 600)), 3);
        s.snapshot(None, 3);
        assert_eq!(s.us, [1500]);
        assert_eq!(s.failed(), 2);
        assert_eq!(s.bytes, 900);
    }

    fn cpu(scenario: &str, state: &str, run: u32, us: f64) -> Value {
        json!({"label": format!("cpu/{scenario}/{state}/{run}"), "ok": true,
               "gateway_process": {"cpu_us_per_event": us}})
    }

    #[test]
    fn table_pairs_on_and_off_of_the_same_run() {
        let mut reports = vec![
            cpu("unrouted20000", "off", 1, 20.0),
            cpu("unrouted20000", "on", 1, 22.0),
            cpu("unrouted20000", "off", 2, 10.0),
            cpu("unrouted20000", "on", 2, 12.0),
            cpu("unrouted5000", "off", 1, 30.0),
            cpu("unrouted5000", "on", 1, 30.0),
        ];
        reports.push(json!({"label": "memory/10000/off/1", "ok": true,
            "rss_growth_per_key_bytes": 100.0, "event_bytes": 380.0}));
        reports.push(json!({"label": "memory/10000/on/1", "ok": false,
            "rss_growth_per_key_bytes": 350.0, "event_bytes": 380.0}));
        reports.push(json!({"label": "snapshot/on/1", "ok": true, "jobs": 100,
            "ws_snapshot": {"ms": {"p50": 1.5, "p99": 4.0}, "failures": {"x": 2}}}));
        let t = table(&reports);
        // Ratios per run (1.1 and 1.2), then their median; 5000 before 20000.
        assert!(
            t.contains("| unrouted20000 | 15.00 [10.00–20.00] µs | 17.00 [12.00–22.00] µs | 1.150 [1.100–1.200]x |"),
            "{t}"
        );
        assert!(t.find("unrouted5000").unwrap() < t.find("unrouted20000").unwrap());
        assert!(t.contains("| 10000 | 380 | 100 B | 350 B | 250 B |"), "{t}");
        assert!(
            t.contains("| WS: TCP connect → snapshot received | 1.500 ms | 4.000 ms | 2 |"),
            "{t}"
        );
        assert!(t.contains("Runs not ok: memory/10000/on/1"), "{t}");
    }
}
