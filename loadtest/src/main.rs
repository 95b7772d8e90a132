//! `loadgen`: realtime-gateway's load generator. Opens WebSocket and SSE clients on
//! loopback, publishes events to RabbitMQ at a fixed rate, and reports delivery (lost,
//! duplicated, misrouted), latency, and the gateway's CPU and memory. See `--help` and
//! loadtest/README.md.

#![forbid(unsafe_code)]

mod conn;
mod gateway;
mod opts;
mod publish;
mod stats;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use conn::{ConnResult, ConnSpec, Shared, Transport};
use opts::{Mode, Opts, Parsed};
use publish::{Kind, PublishReport, Publisher};

/// Open files the loadgen needs besides its connections (stdio, epoll, AMQP, scrapes).
const FD_RESERVE: u64 = 64;

const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ENV: u8 = 3;

fn main() -> ExitCode {
    let o = match opts::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => *o,
        Ok(Parsed::Help) => {
            print!("{}", opts::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "loadgen: {}\n(see loadgen --help)",
                e.replace('\n', "\nloadgen: ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if o.mode == Mode::FreePort {
        return match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => {
                println!("{}", a.port());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: no free port: {e}");
                ExitCode::from(EXIT_ENV)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ENV);
        }
    };
    let code = runtime.block_on(async move {
        match o.mode {
            Mode::Publish => publish_only(o).await,
            Mode::WaitReady => wait_ready(&o).await,
            _ => load(o).await,
        }
    });
    // Connection tasks still closing must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    ExitCode::from(code)
}

fn log(msg: impl AsRef<str>) {
    eprintln!("loadgen: {}", msg.as_ref());
}

/// A short, unique-enough run id: events of other runs are told apart by it.
fn run_id() -> String {
    let us = publish::now_us();
    format!("{:x}{:x}", us % 0xff_ffff_ffff, std::process::id() % 0xffff)
}

fn mint(o: &Opts, user: usize, exp: u64) -> Result<String, String> {
    let claims = json!({
        "sub": o.user_name(user),
        "tenant_id": o.tenant_name(user % o.tenants),
        "iat": exp - 3600,
        "exp": exp,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(o.secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint a token: {e}"))
}

/// Ctrl-C (or SIGTERM) turns `abort` true: phases end early and a partial report follows.
fn abort_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        log("interrupted: stopping early");
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

/// Raises the open-file soft limit to the hard limit and checks `needed` fits.
fn check_open_files(needed: u64) -> Result<u64, String> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let soft = rlimit::increase_nofile_limit(hard)
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if needed + FD_RESERVE > soft {
        return Err(format!(
            "{needed} connections need {} open files, but the limit is {soft} (hard {hard}): \
             lower --ws/--sse, or raise `ulimit -n` (this machine allows 20,000)",
            needed + FD_RESERVE
        ));
    }
    Ok(soft)
}

/// Each source address has the ephemeral port range to itself.
fn check_ports(o: &Opts) -> Result<(), String> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2 && v[1] >= v[0]).then(|| v[1] - v[0] + 1)
        })
        .unwrap_or(28_000);
    let per_ip = o.connections().div_ceil(o.source_ips) as u64;
    // Leave room for the other users of loopback on this machine.
    if per_ip + 1000 > range {
        return Err(format!(
            "{per_ip} connections per source address exceed the {range} ephemeral ports: \
             raise --source-ips (now {})",
            o.source_ips
        ));
    }
    Ok(())
}

/// Process readings and their pid, when the gateway process can be found.
struct Proc {
    pid: Option<u32>,
    tck: f64,
}

impl Proc {
    fn find(o: &Opts) -> Proc {
        let pid = match o.gateway_pid {
            Some(p) => Some(p),
            None => match gateway::find_pid(o.gateway.port()) {
                Ok(p) => Some(p),
                Err(e) => {
                    log(format!("{e}; gateway RSS and CPU are not reported"));
                    None
                }
            },
        };
        Proc {
            pid,
            tck: gateway::clk_tck(),
        }
    }

    fn sample(&self) -> Option<gateway::ProcSample> {
        self.pid.and_then(|p| gateway::sample(p, self.tck))
    }
}

fn self_rss_kib() -> Option<u64> {
    gateway::rss_kib(std::process::id())
}

/// Everything connected, and how it went.
struct Fleet {
    handles: Vec<JoinHandle<ConnResult>>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    /// Which connections completed their handshake.
    up: Vec<bool>,
    attempted: usize,
    connected: usize,
    secs: f64,
}

/// Opens the connections at a bounded rate and concurrency and waits for every handshake.
async fn connect_all(
    o: &Opts,
    run: &str,
    kind: Option<Kind>,
    abort: &watch::Receiver<bool>,
) -> Result<Fleet, String> {
    let total = o.connections();
    let exp = publish::now_us() / 1_000_000 + 3600;
    // One token per user that has a connection.
    let mut tokens: Vec<Arc<str>> = Vec::with_capacity(o.users.min(total));
    for u in 0..o.users.min(total) {
        tokens.push(Arc::from(mint(o, u, exp)?));
    }
    let shared = Arc::new(Shared {
        run: run.to_owned(),
        gateway: o.gateway,
        host: o.gateway_host.clone(),
        connect_timeout: o.connect_timeout,
        delivered: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let (ctx, mut crx) = mpsc::unbounded_channel::<(usize, bool)>();
    let mut up = vec![false; total];
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let mut handles = Vec::with_capacity(total);
    let planned = o.planned_events();
    let start = Instant::now();
    let tokio_start = tokio::time::Instant::now();
    let (mut connected, mut failed) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    let mut progress = |connected: usize, failed: usize, force: bool| {
        if force || last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            log(format!(
                "connecting: {connected}/{total} connected, {failed} failed ({:.1} s)",
                start.elapsed().as_secs_f64()
            ));
        }
    };
    for i in 0..total {
        if *abort.borrow() {
            break;
        }
        let at = tokio_start + Duration::from_secs_f64(i as f64 / o.connect_rate);
        tokio::time::sleep_until(at).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "semaphore closed".to_owned())?;
        while let Ok((idx, ok)) = crx.try_recv() {
            up[idx] = ok;
            if ok { connected += 1 } else { failed += 1 }
        }
        progress(connected, failed, false);
        let user = i % o.users;
        let transport = if i < o.ws {
            Transport::Ws
        } else {
            Transport::Sse
        };
        let capacity_hint = kind.map_or(0, |k| k.expected_for_user(o, user, planned)) as usize;
        let spec = ConnSpec {
            index: i,
            transport,
            user,
            token: tokens[user].clone(),
            source: Some(Ipv4Addr::new(127, 0, 0, 1 + (i % o.source_ips) as u8)),
            capacity_hint: capacity_hint.min(1 << 20),
        };
        handles.push(tokio::spawn(conn::run(
            spec,
            shared.clone(),
            permit,
            ctx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ctx);
    let attempted = handles.len();
    // Every task reports within its own connect timeout.
    let deadline = tokio::time::Instant::now() + o.connect_timeout + Duration::from_secs(5);
    while connected + failed < attempted {
        match tokio::time::timeout_at(deadline, crx.recv()).await {
            Ok(Some((idx, ok))) => {
                up[idx] = ok;
                if ok { connected += 1 } else { failed += 1 }
            }
            Ok(None) | Err(_) => break,
        }
        progress(connected, failed, false);
    }
    let secs = start.elapsed().as_secs_f64();
    progress(connected, failed, true);
    Ok(Fleet {
        handles,
        stop,
        shared,
        up,
        attempted,
        connected,
        secs,
    })
}

/// Stops every connection and collects what each saw.
async fn collect(fleet: Fleet) -> Vec<ConnResult> {
    let _ = fleet.stop.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(fleet.handles.len());
    for h in fleet.handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    out
}

async fn sleep_or_abort(d: Duration, abort: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = conn::stopped(abort) => {}
    }
}

/// Per-run delivery accounting over all connections.
#[derive(Default)]
struct Delivery {
    expected: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    misrouted: u64,
    foreign: u64,
    resyncs: u64,
    other: u64,
    conns_with_loss: u64,
    /// Latency samples (µs) by transport: [ws, sse].
    lat: [Vec<u32>; 2],
    /// Handshake times of the connections that connected, µs.
    handshakes: Vec<u32>,
    /// Connect failures by reason.
    failures: BTreeMap<String, u64>,
    /// Connections that ended before the loadgen closed them, by reason.
    ended: BTreeMap<String, u64>,
}

fn account(o: &Opts, kind: Option<Kind>, published: u64, results: &mut [ConnResult]) -> Delivery {
    let mut d = Delivery::default();
    for r in results.iter_mut() {
        match &r.connect {
            Some(Ok(t)) => d
                .handshakes
                .push(t.as_micros().min(u32::MAX as u128) as u32),
            Some(Err(e)) => {
                *d.failures.entry(e.clone()).or_default() += 1;
                continue;
            }
            None => continue,
        }
        if let Some(why) = &r.ended {
            *d.ended.entry(why.clone()).or_default() += 1;
        }
        d.foreign += r.foreign;
        d.resyncs += r.resyncs;
        d.other += r.other;
        d.delivered += r.seqs.len() as u64;
        if let Some(kind) = kind {
            let expected = kind.expected_for_user(o, r.user, published);
            d.expected += expected;
            r.seqs.sort_unstable();
            let mut unique_ok = 0u64;
            let mut prev = None;
            for &s in &r.seqs {
                if prev == Some(s) {
                    d.duplicated += 1;
                    continue;
                }
                prev = Some(s);
                if u64::from(s) < published && kind.is_for_user(o, r.user, u64::from(s)) {
                    unique_ok += 1;
                } else {
                    d.misrouted += 1;
                }
            }
            let lost = expected.saturating_sub(unique_ok);
            d.lost += lost;
            d.conns_with_loss += u64::from(lost > 0);
        }
        d.lat[usize::from(!r.ws)].append(&mut r.lat_us);
    }
    d
}

fn write_json(o: &Opts, v: &Value) {
    let line = v.to_string();
    println!("{line}");
    if let Some(path) = &o.json_out
        && let Err(e) = std::fs::write(path, format!("{line}\n"))
    {
        log(format!("cannot write {path}: {e}"));
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// idle, targeted and broadcast.
async fn load(o: Opts) -> u8 {
    let kind = match o.mode {
        Mode::Targeted => Some(Kind::Targeted),
        Mode::Broadcast => Some(Kind::Broadcast),
        _ => None,
    };
    let total = o.connections();
    let fd_limit = match check_open_files(total as u64).and_then(|l| check_ports(&o).map(|_| l)) {
        Ok(l) => l,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    if o.users < total && total.div_ceil(o.users) > 16 {
        log(format!(
            "warning: up to {} connections per user; the gateway allows 16 by default \
             (GATEWAY_MAX_CONNECTIONS_PER_USER)",
            total.div_ceil(o.users)
        ));
    }
    if let Err(e) = gateway::ready(o.gateway, &o.gateway_host).await {
        log(e);
        return EXIT_ENV;
    }
    let proc_ = Proc::find(&o);
    let gw_files = proc_.pid.and_then(gateway::max_open_files);
    if let Some(limit) = gw_files
        && total as u64 + 128 > limit
    {
        log(format!(
            "warning: the gateway's open-file limit is {limit}: by default it refuses \
             connections beyond {} (start it after `ulimit -n 20000`)",
            limit.saturating_sub(128)
        ));
    }
    let publisher = match kind {
        Some(_) => match Publisher::connect(&o).await {
            Ok(p) => Some(p),
            Err(e) => {
                log(e);
                return EXIT_ENV;
            }
        },
        None => None,
    };
    let mut abort = abort_on_signal();
    let run = run_id();
    log(format!(
        "run {run}: {} mode, {} WS + {} SSE to {} (users {}, tenants {}, from {} source addresses)",
        o.mode.as_str(),
        o.ws,
        o.sse,
        o.gateway,
        o.users,
        o.tenants,
        o.source_ips
    ));

    let m0 = gateway::metrics(o.gateway, &o.gateway_host).await.ok();
    let p0 = proc_.sample();
    let fleet = match connect_all(&o, &run, kind, &abort).await {
        Ok(f) => f,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    let connect_rate = fleet.connected as f64 / fleet.secs.max(1e-9);
    // Let the gateway finish the work of the last accepts before measuring.
    sleep_or_abort(Duration::from_secs(1).max(o.settle), &mut abort).await;
    let p1 = proc_.sample();
    let m1 = gateway::metrics(o.gateway, &o.gateway_host).await.ok();

    let mut pub_report: Option<PublishReport> = None;
    let mut window: Option<(gateway::ProcSample, gateway::ProcSample)> = None;
    let mut tail_secs = 0.0;
    if let (Some(kind), Some(publisher)) = (kind, publisher.as_ref()) {
        if fleet.connected > 0 && !*abort.borrow() {
            let c0 = proc_.sample();
            log(format!(
                "publishing {} {} events at {}/s for {:.1} s",
                o.planned_events(),
                o.mode.as_str(),
                o.rate,
                o.duration.as_secs_f64()
            ));
            let rep = publisher.run(&o, &run, kind, abort.clone()).await;
            // What the connected clients must now receive in total.
            let published = rep.published;
            let expected_total: u64 = (0..fleet.attempted)
                .filter(|i| fleet.up[*i])
                .map(|i| kind.expected_for_user(&o, i % o.users, published))
                .sum();
            let tail_start = Instant::now();
            let deadline = tokio::time::Instant::now() + o.tail_timeout;
            loop {
                let got = fleet.shared.delivered.load(Ordering::Relaxed);
                if got >= expected_total
                    || tokio::time::Instant::now() >= deadline
                    || *abort.borrow()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tail_secs = tail_start.elapsed().as_secs_f64();
            let c1 = proc_.sample();
            if let (Some(a), Some(b)) = (c0, c1) {
                window = Some((a, b));
            }
            // A moment for late duplicates to show up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            pub_report = Some(rep);
        }
    } else if kind.is_none() {
        log(format!(
            "{} connected; holding for {:.1} s",
            fleet.connected,
            o.duration.as_secs_f64()
        ));
        sleep_or_abort(o.duration, &mut abort).await;
    }
    let p2 = proc_.sample();
    let loadgen_rss = self_rss_kib();
    let connected = fleet.connected;
    let attempted = fleet.attempted;
    let connect_secs = fleet.secs;
    let published = pub_report.as_ref().map_or(0, |r| r.published);
    let mut results = collect(fleet).await;
    if let Some(p) = publisher {
        p.close().await;
    }
    let m2 = gateway::metrics(o.gateway, &o.gateway_host).await.ok();
    let mut d = account(&o, kind, published, &mut results);
    drop(results);
    let [mut lat_ws, mut lat_sse] = std::mem::take(&mut d.lat);
    let mut lat: Vec<u32> = lat_ws.iter().chain(lat_sse.iter()).copied().collect();
    let lat_s = stats::summarize(&mut lat);
    let lat_ws_s = stats::summarize(&mut lat_ws);
    let lat_sse_s = stats::summarize(&mut lat_sse);
    let hs = stats::summarize(&mut d.handshakes);
    let failures = std::mem::take(&mut d.failures);
    let ended = std::mem::take(&mut d.ended);
    let failed = attempted - connected + (total - attempted);

    // Gateway process numbers.
    let rss_growth = |a: Option<gateway::ProcSample>, b: Option<gateway::ProcSample>| {
        a.zip(b)
            .filter(|_| connected > 0)
            .map(|(a, b)| (b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / connected as f64)
    };
    let rss_per_conn = rss_growth(p0, p1);
    let cpu_window = window.map(|(a, b)| b.cpu_secs - a.cpu_secs);
    let cpu_us_per_delivery = cpu_window
        .filter(|_| d.delivered > 0)
        .map(|c| c * 1e6 / d.delivered as f64);
    let hold_cpu = if kind.is_none() {
        p1.zip(p2).map(|(a, b)| b.cpu_secs - a.cpu_secs)
    } else {
        None
    };
    let metric_deltas = match (&m0, &m2) {
        (Some(a), Some(b)) => gateway::deltas(a, b),
        _ => BTreeMap::new(),
    };
    let gw_conns = m1.as_ref().map(|m| {
        json!({
            "ws": gateway::sum(m, "gateway_connections{transport=\"ws\"}"),
            "sse": gateway::sum(m, "gateway_connections{transport=\"sse\"}"),
        })
    });

    let interrupted = *abort.borrow();
    let early = ended.values().sum::<u64>();
    let pub_ok = pub_report.as_ref().is_none_or(|r| r.ok());
    let ok = failed == 0
        && early == 0
        && d.lost == 0
        && d.duplicated == 0
        && d.misrouted == 0
        && pub_ok
        && !interrupted;

    // Readable summary.
    let mut s = String::new();
    s.push_str(&format!(
        "\n== loadgen {} (run {run}) against {} ==\n",
        o.mode.as_str(),
        o.gateway
    ));
    s.push_str(&format!(
        "connections  {connected}/{total} connected ({} WS, {} SSE) in {connect_secs:.2} s = {connect_rate:.0}/s; {failed} failed\n",
        o.ws, o.sse
    ));
    for (why, n) in &failures {
        s.push_str(&format!("             {n} x connect failed: {why}\n"));
    }
    s.push_str(&format!("handshake    {}\n", hs.text_ms()));
    if let Some(rep) = &pub_report {
        s.push_str(&format!(
            "published    {}/{} events in {:.2} s ({:.1}/s, target {}/s; worst lag {:.1} ms); confirmed {}, nacked {}, unroutable {}\n",
            rep.published,
            rep.planned,
            rep.secs,
            if rep.secs > 0.0 { rep.published as f64 / rep.secs } else { 0.0 },
            o.rate,
            rep.max_lag_ms,
            rep.confirmed,
            rep.nacked,
            rep.unroutable
        ));
        for e in &rep.errors {
            s.push_str(&format!("             publish error: {e}\n"));
        }
        s.push_str(&format!(
            "delivered    {} of {} expected (tail {:.2} s): lost {} (on {} connections), duplicated {}, misrouted {}, other runs' {}, resyncs {}\n",
            d.delivered, d.expected, tail_secs, d.lost, d.conns_with_loss, d.duplicated, d.misrouted, d.foreign, d.resyncs
        ));
        s.push_str(&format!("latency      {}\n", lat_s.text_ms()));
        if o.ws > 0 && o.sse > 0 {
            s.push_str(&format!("  WS         {}\n", lat_ws_s.text_ms()));
            s.push_str(&format!("  SSE        {}\n", lat_sse_s.text_ms()));
        }
    }
    for (why, n) in &ended {
        s.push_str(&format!(
            "             {n} x connection ended early: {why}\n"
        ));
    }
    if let (Some(a), Some(b)) = (p0, p1) {
        s.push_str(&format!(
            "gateway RSS  {} KiB before, {} KiB with {connected} connections: {:.0} bytes per connection",
            a.rss_kib,
            b.rss_kib,
            rss_per_conn.unwrap_or(0.0)
        ));
        if let Some(c) = p2 {
            s.push_str(&format!("; {} KiB at the end", c.rss_kib));
        }
        s.push('\n');
    }
    if let Some(c) = cpu_window {
        s.push_str(&format!(
            "gateway CPU  {c:.2} s during publish+tail = {:.2} µs per delivery ({} deliveries)\n",
            cpu_us_per_delivery.unwrap_or(0.0),
            d.delivered
        ));
    }
    if let Some(c) = hold_cpu {
        s.push_str(&format!(
            "gateway CPU  {c:.2} s while holding idle connections\n"
        ));
    }
    if !metric_deltas.is_empty() {
        s.push_str("gateway /metrics changes during the run:\n");
        for (k, v) in &metric_deltas {
            s.push_str(&format!("             {k} +{v}\n"));
        }
    }
    if let Some(r) = loadgen_rss {
        s.push_str(&format!("loadgen RSS  {r} KiB\n"));
    }
    if interrupted {
        s.push_str("interrupted  (partial results)\n");
    }
    s.push_str(if ok {
        "result       OK\n"
    } else {
        "result       FAILED\n"
    });
    eprint!("{s}");

    let json = json!({
        "mode": o.mode.as_str(),
        "run": run,
        "ok": ok,
        "interrupted": interrupted,
        "gateway": o.gateway.to_string(),
        "ws": o.ws,
        "sse": o.sse,
        "users": o.users,
        "tenants": o.tenants,
        "source_ips": o.source_ips,
        "loadgen_open_files_limit": fd_limit,
        "connect": {
            "attempted": total,
            "connected": connected,
            "failed": failed,
            "failures": failures,
            "secs": round3(connect_secs),
            "rate_per_s": connect_rate.round(),
            "handshake_ms": hs.json_ms(),
        },
        "ended_early": ended,
        "publish": pub_report.as_ref().map(|r| json!({
            "rate_target": o.rate,
            "duration_s": o.duration.as_secs_f64(),
            "planned": r.planned,
            "published": r.published,
            "confirmed": r.confirmed,
            "nacked": r.nacked,
            "unroutable": r.unroutable,
            "unconfirmed": r.unconfirmed,
            "secs": round3(r.secs),
            "max_lag_ms": round3(r.max_lag_ms),
            "errors": r.errors,
        })),
        "delivery": kind.map(|_| json!({
            "expected": d.expected,
            "delivered": d.delivered,
            "lost": d.lost,
            "connections_with_loss": d.conns_with_loss,
            "duplicated": d.duplicated,
            "misrouted": d.misrouted,
            "other_runs": d.foreign,
            "resyncs": d.resyncs,
            "tail_secs": round3(tail_secs),
            "latency_ms": lat_s.json_ms(),
            "latency_ms_ws": lat_ws_s.json_ms(),
            "latency_ms_sse": lat_sse_s.json_ms(),
        })),
        "gateway_process": {
            "pid": proc_.pid,
            "max_open_files": gw_files,
            "rss_before_kib": p0.map(|p| p.rss_kib),
            "rss_connected_kib": p1.map(|p| p.rss_kib),
            "rss_end_kib": p2.map(|p| p.rss_kib),
            "rss_per_connection_bytes": rss_per_conn.map(|v| v.round()),
            "cpu_secs_publish_window": cpu_window.map(round3),
            "cpu_us_per_delivery": cpu_us_per_delivery.map(round3),
            "cpu_secs_idle_hold": hold_cpu.map(round3),
        },
        "gateway_connections_reported": gw_conns,
        "gateway_metrics_delta": metric_deltas,
        "loadgen_rss_kib": loadgen_rss,
    });
    write_json(&o, &json);
    if ok { 0 } else { EXIT_FAIL }
}

/// `wait-ready`: polls `/readyz` until 200, within `--wait-timeout`.
async fn wait_ready(o: &Opts) -> u8 {
    let deadline = Instant::now() + o.wait_timeout;
    loop {
        match gateway::ready(o.gateway, &o.gateway_host).await {
            Ok(()) => return 0,
            Err(e) if Instant::now() >= deadline => {
                log(format!(
                    "gateway not ready after {:.0} s: {e}",
                    o.wait_timeout.as_secs_f64()
                ));
                return EXIT_ENV;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `publish`: the k6 companion. Writes the plan, waits for the clients, publishes.
async fn publish_only(o: Opts) -> u8 {
    let publisher = match Publisher::connect(&o).await {
        Ok(p) => p,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    let run = run_id();
    let planned = o.planned_events();
    let kind = Kind::Targeted;
    if let Some(path) = &o.plan_out {
        let exp = publish::now_us() / 1_000_000 + 3600;
        let mut users = Vec::with_capacity(o.users);
        for u in 0..o.users {
            let token = match mint(&o, u, exp) {
                Ok(t) => t,
                Err(e) => {
                    log(e);
                    return EXIT_ENV;
                }
            };
            users.push(json!({
                "user": o.user_name(u),
                "tenant": o.tenant_name(u % o.tenants),
                "token": token,
                "expected": kind.expected_for_user(&o, u, planned),
            }));
        }
        let plan = json!({
            "run": run,
            "events": planned,
            "rate": o.rate,
            "duration_s": o.duration.as_secs_f64(),
            "routing_key": o.routing_key,
            "exchange": o.exchange,
            "ws_url": format!("ws://{}/ws", o.gateway_host),
            "users": users,
        });
        let tmp = format!("{path}.tmp");
        if let Err(e) =
            std::fs::write(&tmp, plan.to_string()).and_then(|_| std::fs::rename(&tmp, path))
        {
            log(format!("cannot write the plan {path}: {e}"));
            return EXIT_ENV;
        }
        log(format!(
            "plan written to {path}: {} users, {planned} events",
            o.users
        ));
    }
    let mut abort = abort_on_signal();
    if let Some(n) = o.wait_connections {
        // Count from now: connections that were already open are not ours.
        let base = match gateway::metrics(o.gateway, &o.gateway_host).await {
            Ok(m) => gateway::sum(&m, "gateway_connections"),
            Err(e) => {
                log(format!("cannot read the gateway's /metrics: {e}"));
                return EXIT_ENV;
            }
        };
        let deadline = Instant::now() + o.wait_timeout;
        let mut last_log = Instant::now();
        loop {
            let now_open = gateway::metrics(o.gateway, &o.gateway_host)
                .await
                .map(|m| gateway::sum(&m, "gateway_connections"))
                .unwrap_or(base);
            if now_open - base >= n as f64 {
                log(format!("{n} new connections open; publishing"));
                break;
            }
            if Instant::now() >= deadline || *abort.borrow() {
                log(format!(
                    "gave up: only {} of {n} connections after {:.0} s",
                    now_open - base,
                    o.wait_timeout.as_secs_f64()
                ));
                publisher.close().await;
                return EXIT_ENV;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                log(format!(
                    "waiting: {} of {n} connections open",
                    now_open - base
                ));
            }
            sleep_or_abort(Duration::from_millis(200), &mut abort).await;
        }
        sleep_or_abort(o.settle, &mut abort).await;
    }
    log(format!(
        "run {run}: publishing {planned} targeted events at {}/s over {} users",
        o.rate, o.users
    ));
    let rep = publisher.run(&o, &run, kind, abort.clone()).await;
    publisher.close().await;
    eprintln!(
        "published {}/{} in {:.2} s; confirmed {}, nacked {}, unroutable {}, worst lag {:.1} ms{}",
        rep.published,
        rep.planned,
        rep.secs,
        rep.confirmed,
        rep.nacked,
        rep.unroutable,
        rep.max_lag_ms,
        rep.errors
            .iter()
            .map(|e| format!("\n  error: {e}"))
            .collect::<String>()
    );
    let ok = rep.ok() && !*abort.borrow();
    write_json(
        &o,
        &json!({
            "mode": "publish",
            "run": run,
            "ok": ok,
            "users": o.users,
            "planned": rep.planned,
            "published": rep.published,
            "confirmed": rep.confirmed,
            "nacked": rep.nacked,
            "unroutable": rep.unroutable,
            "unconfirmed": rep.unconfirmed,
            "secs": round3(rep.secs),
            "max_lag_ms": round3(rep.max_lag_ms),
            "errors": rep.errors,
        }),
    );
    if ok { 0 } else { EXIT_FAIL }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &str) -> Opts {
        match opts::parse(args.split_whitespace().map(String::from)) {
            Ok(Parsed::Run(o)) => *o,
            _ => panic!("bad test args"),
        }
    }

    fn conn(user: usize, seqs: &[u32]) -> ConnResult {
        ConnResult {
            user,
            ws: true,
            connect: Some(Ok(Duration::from_millis(1))),
            seqs: seqs.to_vec(),
            lat_us: vec![100; seqs.len()],
            ..ConnResult::default()
        }
    }

    #[test]
    fn accounts_loss_duplicates_and_misrouting() {
        // 4 users, 10 events: user 0 gets 0,4,8; user 1 gets 1,5,9; user 2: 2,6; user 3: 3,7.
        let o = opts("targeted --ws 4 --rate 10 --duration 1");
        let mut results = vec![
            conn(0, &[0, 4, 8]),    // complete
            conn(1, &[1, 5, 5, 9]), // one duplicate
            conn(2, &[2]),          // lost 6
            conn(3, &[3, 7, 2]),    // 2 is user 2's: misrouted
        ];
        let d = account(&o, Some(Kind::Targeted), 10, &mut results);
        assert_eq!(d.expected, 10);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicated, 1);
        assert_eq!(d.misrouted, 1);
        assert_eq!(d.conns_with_loss, 1);
        assert_eq!(d.delivered, 11);
    }

    #[test]
    fn broadcast_expectations_follow_tenants() {
        // 2 tenants; users 0,2 in tenant 0, users 1,3 in tenant 1; 5 events: tenant 0 gets
        // 0,2,4 and tenant 1 gets 1,3.
        let o = opts("broadcast --ws 4 --tenants 2 --rate 5 --duration 1");
        assert_eq!(Kind::Broadcast.expected_for_user(&o, 2, 5), 3);
        assert_eq!(Kind::Broadcast.expected_for_user(&o, 3, 5), 2);
        let mut results = vec![
            conn(0, &[0, 2, 4]),
            conn(1, &[1, 3]),
            conn(2, &[0, 2, 4]),
            conn(3, &[1]),
        ];
        let d = account(&o, Some(Kind::Broadcast), 5, &mut results);
        assert_eq!(
            (d.expected, d.lost, d.duplicated, d.misrouted),
            (10, 1, 0, 0)
        );
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(
            opts::parse(
                ["idle", "--ws", "1", "--gateway", "http://192.168.1.1:8080"].map(String::from)
            )
            .is_err()
        );
        assert!(
            opts::parse(
                [
                    "targeted",
                    "--ws",
                    "1",
                    "--amqp-url",
                    "amqp://guest:guest@10.1.2.3:5672/%2f"
                ]
                .map(String::from)
            )
            .is_err()
        );
        assert!(
            opts::parse(
                ["idle", "--ws", "1", "--gateway", "http://127.0.0.9:8080"].map(String::from)
            )
            .is_ok()
        );
    }
}
