//! The floor: a bare writer that performs the same deliveries as a gateway, with no broker
//! and no work per event beyond building it once and one `write()` per recipient. Every
//! gateway figure is read next to it, measured in the same run by the same clients.
//!
//! `loadgen floor MODE ...` ([`drive`]) starts `loadgen floor-serve MODE ...` ([`serve`])
//! on a free loopback port, runs the scenario against it as against a gateway, and asks
//! it to publish with `GET /floor/publish?run=R` instead of going through RabbitMQ. The
//! serving process accepts WebSocket and SSE clients as the gateway does (handshake,
//! token checked once); one writer thread then produces the events on the publisher's
//! schedule (event k due at (k+1)/rate s, at most one wake-up per millisecond) and writes each
//! recipient's frame with one `write()` on its non-blocking socket (`try_write`, from the
//! writer thread; the runtime's reactor only tells it when a full socket drains). Bytes a
//! full socket does not take wait in that connection's backlog, counted, instead of
//! blocking the writer: a gateway must not block on one client either. One descriptor per
//! client, as in the gateway: 10,000 clients fit the open-file limit of 20,000 once.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::opts::Opts;
use crate::publish::{self, Kind, PublishReport, Target};
use crate::{EXIT_ENV, gateway, limits, log, stats};

/// Longest request head the floor reads.
const HEAD_MAX: usize = 16 * 1024;

/// The serving process; killed when dropped, so no path leaves it behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The loadgen's own arguments with the `floor` word turned into `floor-serve`.
fn serve_args(args: &[String], port: u16) -> Vec<String> {
    let mut out = args.to_vec();
    let word = (0..out.len()).find(|&i| {
        out[i] == "floor" && (i == 0 || !out[i - 1].starts_with("--") || out[i - 1].contains('='))
    });
    if let Some(i) = word {
        out[i] = "floor-serve".into();
    }
    out.push("--gateway".into());
    out.push(format!("http://127.0.0.1:{port}"));
    out
}

/// `loadgen floor MODE ...`: starts the bare writer, runs the scenario against it, stops it.
pub async fn drive(mut o: Opts, args: &[String]) -> u8 {
    let started = crate::free_port().and_then(|port| {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(serve_args(args, port))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok((port, Child(child)))
    });
    let (port, child) = match started {
        Ok(x) => x,
        Err(e) => {
            log(format!("cannot start the floor process: {e}"));
            return EXIT_ENV;
        }
    };
    o.gateway = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    o.gateway_host = format!("127.0.0.1:{port}");
    o.instances = vec![(o.gateway, o.gateway_host.clone())];
    o.gateway_pid = Some(child.0.id());
    if crate::wait_ready(&o, Duration::from_secs(10)).await != 0 {
        return EXIT_ENV;
    }
    let code = crate::scenario::load(o).await;
    drop(child);
    code
}

/// Asks the floor process to publish the run's events; answers when it has written them,
/// or at once on Ctrl-C (the floor process is stopped with the run).
pub async fn publish(o: &Opts, run: &str, mut abort: watch::Receiver<bool>) -> PublishReport {
    let mut rep = PublishReport {
        planned: o.planned_events(),
        ..PublishReport::default()
    };
    let path = format!("/floor/publish?run={run}");
    let within = o.duration + Duration::from_secs(60);
    let answer = tokio::select! {
        a = gateway::http_get_within(o.gateway, &o.gateway_host, &path, within) => a,
        _ = crate::conn::stopped(&mut abort) => {
            rep.aborted = true;
            return rep;
        }
    };
    let v = match answer {
        Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
            Ok(v) => v,
            Err(e) => {
                rep.errors.push(format!("floor: bad answer: {e}"));
                return rep;
            }
        },
        Ok((status, body)) => {
            rep.errors.push(format!("floor answered {status}: {body}"));
            return rep;
        }
        Err(e) => {
            rep.errors.push(format!("floor: {e}"));
            return rep;
        }
    };
    rep.published = v["published"].as_u64().unwrap_or(0);
    rep.confirmed = rep.published;
    rep.secs = v["secs"].as_f64().unwrap_or(0.0);
    rep.max_lag_ms = v["max_lag_ms"].as_f64().unwrap_or(0.0);
    if let Some(e) = v["error"].as_str() {
        rep.errors.push(format!("floor: {e}"));
    }
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        rep.errors
            .push(format!("floor: {} writes failed", v["failed"]));
    }
    rep.floor = Some(v);
    rep
}

/// One client socket, as the writer sees it.
struct Conn {
    user: usize,
    sse: bool,
    /// Shared with the task that watches for the client's close.
    stream: Arc<TcpStream>,
    /// Bytes a full socket did not take yet; sent before anything newer.
    backlog: Vec<u8>,
    dead: bool,
}

/// A publish request handed to the writer thread.
struct Job {
    run: String,
    reply: oneshot::Sender<Value>,
}

struct Server {
    o: Opts,
    /// Connections registered by the accept side, taken by the writer while it publishes.
    conns: Mutex<Vec<Conn>>,
    jobs: std_mpsc::Sender<Job>,
}

impl Server {
    fn conns(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user index of a valid token of this run's users.
    fn user_of(&self, token: &str) -> Option<usize> {
        let key = DecodingKey::from_secret(self.o.secret.as_bytes());
        let claims = jsonwebtoken::decode::<Value>(token, &key, &Validation::new(Algorithm::HS256))
            .ok()?
            .claims;
        let user: usize = claims["sub"]
            .as_str()?
            .strip_prefix(&self.o.user_prefix)?
            .parse()
            .ok()?;
        (user < self.o.users).then_some(user)
    }
}

/// `loadgen floor-serve MODE ...`: serves until SIGTERM or Ctrl-C.
pub fn serve(o: Opts) -> u8 {
    if let Err(e) = limits::check_open_files(o.connections() as u64) {
        log(format!("floor: {e}"));
        return EXIT_ENV;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(format!("floor: cannot start the runtime: {e}"));
            return EXIT_ENV;
        }
    };
    let (jobs, jobs_rx) = std_mpsc::channel();
    let server = Arc::new(Server {
        o,
        conns: Mutex::new(Vec::new()),
        jobs,
    });
    let writer = server.clone();
    let spawned = std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || writer_loop(&writer, jobs_rx));
    if let Err(e) = spawned {
        log(format!("floor: cannot start the writer: {e}"));
        return EXIT_ENV;
    }
    runtime.block_on(accept_loop(server))
}

async fn accept_loop(server: Arc<Server>) -> u8 {
    let listener = match TcpListener::bind(server.o.gateway).await {
        Ok(l) => l,
        Err(e) => {
            log(format!("floor: cannot listen on {}: {e}", server.o.gateway));
            return EXIT_ENV;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log(format!("floor: cannot watch SIGTERM: {e}"));
            return EXIT_ENV;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => {
                    tokio::spawn(handle(s, server.clone()));
                }
                // Out of file descriptors, most likely: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = tokio::signal::ctrl_c() => return 0,
            _ = term.recv() => return 0,
        }
    }
}

/// A request head: the path, the query string, and headers with lower-case names.
struct Request {
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let target = lines.next()?.split_whitespace().nth(1)?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(Request {
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        })
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > HEAD_MAX {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn handle(mut s: TcpStream, server: Arc<Server>) {
    let _ = s.set_nodelay(true);
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut s)).await;
    let Some(req) = head.ok().flatten().as_deref().and_then(Request::parse) else {
        return;
    };
    match req.path.as_str() {
        "/readyz" | "/healthz" => respond(s, "200 OK", "ready").await,
        "/ws" | "/sse" => accept_client(s, &req, &server).await,
        "/floor/publish" => publish_job(s, &req, &server).await,
        _ => respond(s, "404 Not Found", "").await,
    }
}

async fn respond(mut s: TcpStream, status: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The handshake of a WebSocket or SSE client, then its registration with the writer.
async fn accept_client(mut s: TcpStream, req: &Request, server: &Server) {
    let sse = req.path == "/sse";
    let token = if sse {
        req.header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
    } else {
        req.query("access_token")
    };
    let Some(user) = token.and_then(|t| server.user_of(t)) else {
        return respond(s, "401 Unauthorized", r#"{"error":"unauthorized"}"#).await;
    };
    let answer = if sse {
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: connected\n\n".to_owned()
    } else {
        let Some(key) = req.header("sec-websocket-key") else {
            return respond(s, "400 Bad Request", "").await;
        };
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    };
    if s.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let stream = Arc::new(s);
    server.conns().push(Conn {
        user,
        sse,
        stream: stream.clone(),
        backlog: Vec::new(),
        dead: false,
    });
    watch_close(&stream, sse).await;
}

/// Waits for the client to leave. A WebSocket client only ever sends its close frame:
/// answer it, as a gateway would, so the client is not kept waiting (the floor has
/// finished writing by then).
async fn watch_close(s: &TcpStream, sse: bool) {
    let mut buf = [0u8; 256];
    loop {
        if s.readable().await.is_err() {
            return;
        }
        match s.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) if !sse => {
                let _ = s.try_write(&[0x88, 0x02, 0x03, 0xe8]);
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn publish_job(s: TcpStream, req: &Request, server: &Server) {
    let Some(run) = req.query("run") else {
        return respond(s, "400 Bad Request", r#"{"error":"no run"}"#).await;
    };
    if server.o.mode.kind().is_none() {
        return respond(
            s,
            "400 Bad Request",
            r#"{"error":"idle publishes nothing"}"#,
        )
        .await;
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        run: run.to_owned(),
        reply,
    };
    let report = match server.jobs.send(job) {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| json!({"error": "the writer stopped"})),
        Err(_) => json!({"error": "the writer stopped"}),
    };
    respond(s, "200 OK", &report.to_string()).await;
}

fn writer_loop(server: &Server, jobs: std_mpsc::Receiver<Job>) {
    let Some(kind) = server.o.mode.kind() else {
        return;
    };
    while let Ok(job) = jobs.recv() {
        let mut conns = std::mem::take(&mut *server.conns());
        let report = publish_all(&server.o, kind, &job.run, &mut conns);
        server.conns().append(&mut conns);
        let _ = job.reply.send(report);
    }
}

/// Connection indices by user and by tenant: the two lookups routing needs.
struct Index {
    by_user: Vec<Vec<usize>>,
    by_tenant: Vec<Vec<usize>>,
}

impl Index {
    fn new(o: &Opts, conns: &[Conn]) -> Index {
        let mut ix = Index {
            by_user: vec![Vec::new(); o.users],
            by_tenant: vec![Vec::new(); o.tenants],
        };
        for (i, c) in conns.iter().enumerate() {
            ix.by_user[c.user].push(i);
            ix.by_tenant[c.user % o.tenants].push(i);
        }
        ix
    }

    fn recipients(&self, tenant: usize, target: Target) -> &[usize] {
        match target {
            Target::User(u) => self.by_user.get(u).map_or(&[], Vec::as_slice),
            Target::Tenant => self.by_tenant.get(tenant).map_or(&[], Vec::as_slice),
            Target::Absent(_) => &[],
        }
    }
}

/// What the writes did.
#[derive(Default)]
struct Writes {
    /// `write()` calls that took bytes.
    writes: u64,
    /// Deliveries that found the socket full (`EAGAIN`) and went to the backlog.
    would_block: u64,
    /// Writes that took only part of the frame.
    partial: u64,
    /// Deliveries queued behind an earlier backlog.
    queued: u64,
    /// Deliveries to a socket that failed (closed by the client).
    failed: u64,
}

/// The WebSocket text frame (server frames are not masked) and the SSE event of `body`.
fn frames(run: &str, seq: u64, body: &str, ws: &mut Vec<u8>, sse: &mut Vec<u8>) {
    let n = body.len();
    ws.clear();
    ws.push(0x81);
    if n < 126 {
        ws.push(n as u8);
    } else if n <= 0xffff {
        ws.push(126);
        ws.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        ws.push(127);
        ws.extend_from_slice(&(n as u64).to_be_bytes());
    }
    ws.extend_from_slice(body.as_bytes());
    sse.clear();
    let _ = write!(sse, "id: lt-{run}-{seq}\ndata: {body}\n\n");
}

/// One delivery: one `write()`, or the backlog when the socket is full. True when the
/// connection just got a backlog.
fn deliver(c: &mut Conn, frame: &[u8], w: &mut Writes) -> bool {
    if c.dead {
        w.failed += 1;
        return false;
    }
    if !c.backlog.is_empty() {
        c.backlog.extend_from_slice(frame);
        w.queued += 1;
        return false;
    }
    match c.stream.try_write(frame) {
        Ok(n) if n == frame.len() => w.writes += 1,
        Ok(n) => {
            w.writes += 1;
            w.partial += 1;
            c.backlog.extend_from_slice(&frame[n..]);
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            w.would_block += 1;
            c.backlog.extend_from_slice(frame);
        }
        Err(_) => {
            c.dead = true;
            w.failed += 1;
        }
    }
    !c.backlog.is_empty()
}

/// Retries the backlogged connections; keeps those still pending in `pending`.
fn flush_backlogs(conns: &mut [Conn], pending: &mut Vec<usize>) {
    pending.retain(|&i| {
        let c = &mut conns[i];
        match c.stream.try_write(&c.backlog) {
            Ok(n) => {
                c.backlog.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                c.dead = true;
                c.backlog.clear();
            }
        }
        !c.backlog.is_empty()
    });
}

/// The schedule of one run: every due event built once and written to each recipient.
fn publish_all(o: &Opts, kind: Kind, run: &str, conns: &mut [Conn]) -> Value {
    let index = Index::new(o, conns);
    let planned = o.planned_events();
    let pad = "x".repeat(o.pad);
    let (mut w, mut pending) = (Writes::default(), Vec::new());
    let (mut ws, mut sse) = (Vec::new(), Vec::new());
    // Per event with recipients: from before its first write to after its last, µs.
    let mut loop_us: Vec<u32> = Vec::with_capacity(planned.min(1 << 20) as usize);
    let (start, mut last) = (Instant::now(), Instant::now());
    let give_up = o.duration + Duration::from_secs(30);
    let (mut sent, mut max_lag_ms, mut error) = (0u64, 0f64, None);
    loop {
        let elapsed = start.elapsed();
        let due = ((o.rate * elapsed.as_secs_f64()).floor() as u64).min(planned);
        if due > sent {
            let first_due = (sent + 1) as f64 / o.rate;
            max_lag_ms = max_lag_ms.max((elapsed.as_secs_f64() - first_due).max(0.0) * 1000.0);
        }
        while sent < due {
            let (tenant, target) = kind.target(o, sent);
            let to = index.recipients(tenant, target);
            let body = publish::envelope(o, run, kind, sent, &pad);
            frames(run, sent, &body, &mut ws, &mut sse);
            let t0 = Instant::now();
            for &i in to {
                let c = &mut conns[i];
                let frame = if c.sse { &sse } else { &ws };
                if deliver(c, frame, &mut w) {
                    pending.push(i);
                }
            }
            if !to.is_empty() {
                loop_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            sent += 1;
            last = Instant::now();
        }
        flush_backlogs(conns, &mut pending);
        if sent >= planned && pending.is_empty() {
            break;
        }
        if elapsed > give_up {
            error = Some(format!(
                "gave up after {:.1} s: {sent} of {planned} events, {} connections backlogged",
                elapsed.as_secs_f64(),
                pending.len()
            ));
            break;
        }
        // Sleep until the next event is due, at least 1 ms (as the AMQP publisher ticks):
        // the pacing a bare writer cannot avoid, and no more wake-ups than that.
        let next_due = Duration::from_secs_f64((sent + 1) as f64 / o.rate);
        let wait = next_due.saturating_sub(start.elapsed());
        std::thread::sleep(if pending.is_empty() {
            wait.max(Duration::from_millis(1))
        } else {
            Duration::from_millis(1)
        });
    }
    json!({
        "published": sent,
        "secs": crate::round3(last.duration_since(start).as_secs_f64()),
        "max_lag_ms": crate::round3(max_lag_ms),
        "writes": w.writes,
        "would_block": w.would_block,
        "partial": w.partial,
        "queued": w.queued,
        "failed": w.failed,
        "write_loop_ms": stats::summarize(&mut loop_us).json_ms(),
        "error": error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_body_once() {
        let (mut ws, mut sse) = (Vec::new(), Vec::new());
        frames("r1", 7, "{}", &mut ws, &mut sse);
        assert_eq!(ws, b"\x81\x02{}");
        assert_eq!(sse, b"id: lt-r1-7\ndata: {}\n\n");
        let long = "x".repeat(300);
        frames("r1", 7, &long, &mut ws, &mut sse);
        assert_eq!(&ws[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(ws.len(), 4 + 300);
    }

    #[test]
    fn requests_parse_path_query_and_headers() {
        let r = Request::parse(
            "GET /ws?access_token=a.b.c&x=1 HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k==\r\n\r\n",
        )
        .expect("a request");
        assert_eq!(r.path, "/ws");
        assert_eq!(r.query("access_token"), Some("a.b.c"));
        assert_eq!(r.query("y"), None);
        assert_eq!(r.header("sec-websocket-key"), Some("k=="));
    }

    /// A connected pair on loopback: (the floor's side, the client's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(client, l.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&got) {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn writes_each_event_once_to_its_recipients() {
        // 5 events over 2 users: 0, 2, 4 for user 0 (WebSocket), 1, 3 for user 1 (SSE).
        let o = match crate::opts::parse(
            "floor-serve targeted --ws 1 --sse 1 --rate 100 --duration 0.05"
                .split_whitespace()
                .map(String::from),
        ) {
            Ok(crate::opts::Parsed::Run(o)) => *o,
            _ => panic!("bad test args"),
        };
        let ((ws_server, mut ws_client), (sse_server, mut sse_client)) =
            tokio::join!(pair(), pair());
        let mut conns = vec![
            Conn {
                user: 0,
                sse: false,
                stream: Arc::new(ws_server),
                backlog: Vec::new(),
                dead: false,
            },
            Conn {
                user: 1,
                sse: true,
                stream: Arc::new(sse_server),
                backlog: Vec::new(),
                dead: false,
            },
        ];
        let report =
            tokio::task::spawn_blocking(move || publish_all(&o, Kind::Targeted, "r9", &mut conns))
                .await
                .expect("writer");
        assert_eq!(report["published"], 5);
        assert_eq!(report["writes"], 5);
        assert_eq!(report["failed"], 0);

        let count =
            |b: &[u8], needle: &[u8]| b.windows(needle.len()).filter(|w| *w == needle).count();
        let ws = read_until(&mut ws_client, |b| count(b, b"\"sent_us\"") == 3).await;
        assert_eq!(ws[0], 0x81, "a text frame, not masked");
        for (seq, other) in [(0, 1), (2, 3), (4, 1)] {
            assert_eq!(count(&ws, format!("\"seq\":{seq},").as_bytes()), 1);
            assert_eq!(count(&ws, format!("\"seq\":{other},").as_bytes()), 0);
        }
        let sse = read_until(&mut sse_client, |b| count(b, b"\n\n") == 2).await;
        let text = String::from_utf8_lossy(&sse);
        assert!(text.starts_with("id: lt-r9-1\ndata: {"), "{text}");
        assert!(text.contains("id: lt-r9-3\ndata: {"), "{text}");
        assert_eq!(count(&sse, b"\"user_id\":\"lt-user-1\""), 2);
    }

    #[test]
    fn the_floor_word_becomes_floor_serve() {
        let args: Vec<String> = ["--tenant", "floor", "floor", "targeted", "--ws", "5"]
            .map(String::from)
            .to_vec();
        let out = serve_args(&args, 4000);
        assert_eq!(
            out,
            [
                "--tenant",
                "floor",
                "floor-serve",
                "targeted",
                "--ws",
                "5",
                "--gateway",
                "http://127.0.0.1:4000"
            ]
        );
    }
}
