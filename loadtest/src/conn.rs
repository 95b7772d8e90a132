//! The clients: one task per WebSocket or SSE connection. Each connects from its own
//! loopback source address, reports its handshake, then records every event it receives
//! (sequence number and publish→receipt latency) until told to stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::publish::now_us;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

/// One connection to open.
pub struct ConnSpec {
    pub index: usize,
    pub transport: Transport,
    pub user: usize,
    pub token: Arc<str>,
    pub source: Option<Ipv4Addr>,
    /// Index into `Shared::gateways`: which instance of the fleet this connection uses.
    pub instance: usize,
    /// Events this connection will probably receive, to size its buffers.
    pub capacity_hint: usize,
    /// When it has all it waits for (slow mode: its jobs' completions).
    pub done: Option<Done>,
}

/// A connection has all it waits for once it received `count` events of this run with
/// `data.seq` ≥ `from_seq`.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub from_seq: u64,
    pub count: u64,
}

/// Shared by every connection task.
pub struct Shared {
    pub run: String,
    /// The gateways (address, Host header); a connection goes to `ConnSpec::instance`.
    pub gateways: Vec<(SocketAddr, String)>,
    pub connect_timeout: Duration,
    /// Events of this run received by all connections (duplicates included).
    pub delivered: AtomicU64,
    /// Events each connection reads per second, at most (slow readers); `None`: as fast
    /// as they come.
    pub pace: Option<f64>,
    /// SO_RCVBUF of the client sockets; `None`: the kernel's default.
    pub recv_buffer: Option<u32>,
    /// Connections that have all they wait for (see `Done`) or ended.
    pub finished: AtomicU64,
}

/// What one connection saw.
#[derive(Debug, Default)]
pub struct ConnResult {
    pub user: usize,
    pub ws: bool,
    /// Handshake time, or why it failed.
    pub connect: Option<Result<Duration, String>>,
    /// `data.seq` of every event of this run, in arrival order.
    pub seqs: Vec<u32>,
    /// Publish→receipt latency of each of them, µs.
    pub lat_us: Vec<u32>,
    pub resyncs: u64,
    /// Events of other runs (same tenant/user names).
    pub foreign: u64,
    /// Other messages (control messages, keep-alives are not counted).
    pub other: u64,
    /// Why the connection ended before the loadgen closed it.
    pub ended: Option<String>,
    /// What it waits for, how many of those events it has, and whether it is counted in
    /// `Shared::finished`.
    pub done: Option<Done>,
    pub done_seen: u64,
    pub finished: bool,
}

impl ConnResult {
    fn on_payload(&mut self, shared: &Shared, body: &[u8]) {
        match classify(body, shared.run.as_bytes()) {
            Payload::Ours { seq, sent_us } => {
                let lat = now_us().saturating_sub(sent_us);
                self.seqs.push(seq.min(u32::MAX as u64) as u32);
                self.lat_us.push(lat.min(u32::MAX as u64) as u32);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = self.done
                    && seq >= d.from_seq
                {
                    self.done_seen += 1;
                    if self.done_seen == d.count {
                        self.finish(shared);
                    }
                }
            }
            Payload::Foreign => self.foreign += 1,
            Payload::Resync => self.resyncs += 1,
            Payload::Close(reason) => {
                self.ended = Some(format!("gateway closed the stream: {reason}"));
            }
            Payload::Other => self.other += 1,
        }
    }
}

impl ConnResult {
    /// Counted once in `shared.finished`: it has all it waits for, or it ended.
    fn finish(&mut self, shared: &Shared) {
        if !self.finished {
            self.finished = true;
            shared.finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads at most `rate` events per second: event n is due 1/rate s after event n − 1,
/// catching up at most 100 ms of schedule after a quiet spell (a slow reader stays slow).
struct Pacer {
    interval: Duration,
    due: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Option<Pacer> {
        rate.map(|r| Pacer {
            interval: Duration::from_secs_f64(1.0 / r),
            due: tokio::time::Instant::now(),
        })
    }

    /// Waits until the next event may be read.
    async fn wait(pacer: &mut Option<Pacer>) {
        if let Some(p) = pacer {
            let floor = tokio::time::Instant::now() - Duration::from_millis(100);
            p.due = p.due.max(floor);
            tokio::time::sleep_until(p.due).await;
            p.due += p.interval;
        }
    }
}

enum Payload {
    Ours { seq: u64, sent_us: u64 },
    Foreign,
    Resync,
    Close(String),
    Other,
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().skip_while(|b| **b == b' ');
    let mut n: Option<u64> = None;
    for b in digits.take_while(|b| b.is_ascii_digit()) {
        n = n
            .unwrap_or(0)
            .checked_mul(10)?
            .checked_add(u64::from(b - b'0'));
    }
    n
}

/// Our events carry `"data":{"run":"<run>","seq":N,"sent_us":T,...}`; the gateway passes
/// the envelope through byte for byte, so a scan is enough (no JSON parse per delivery).
fn classify(body: &[u8], run: &[u8]) -> Payload {
    if let Some(at) = find(body, br#""run":""#) {
        let rest = &body[at + 7..];
        let end = rest.iter().position(|b| *b == b'"').unwrap_or(rest.len());
        if &rest[..end] != run {
            return Payload::Foreign;
        }
        return match (
            number_after(rest, br#""seq":"#),
            number_after(rest, br#""sent_us":"#),
        ) {
            (Some(seq), Some(sent_us)) => Payload::Ours { seq, sent_us },
            _ => Payload::Foreign,
        };
    }
    if find(body, br#""event_id""#).is_some() {
        return Payload::Foreign;
    }
    if find(body, br#""type":"resync""#).is_some() {
        return Payload::Resync;
    }
    if find(body, br#""type":"close""#).is_some() {
        let reason = find(body, br#""reason":""#)
            .map(|i| {
                let r = &body[i + 10..];
                let e = r.iter().position(|b| *b == b'"').unwrap_or(r.len());
                String::from_utf8_lossy(&r[..e]).into_owned()
            })
            .unwrap_or_default();
        return Payload::Close(reason);
    }
    Payload::Other
}

async fn tcp(spec: &ConnSpec, shared: &Shared) -> Result<TcpStream, String> {
    let gateway = shared.gateways[spec.instance].0;
    let socket = match gateway {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(bytes) = shared.recv_buffer {
        // Before connect, so the window the handshake announces already follows it.
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    if let (Some(src), SocketAddr::V4(_)) = (spec.source, gateway) {
        socket
            .bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = socket
        .connect(gateway)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `reason` from the gateway's `{"error":..,"reason":..}` refusal body.
pub fn refusal_reason(body: &[u8]) -> String {
    find(body, br#""reason":""#)
        .map(|i| {
            let r = &body[i + 10..];
            let e = r.iter().position(|b| *b == b'"').unwrap_or(r.len());
            String::from_utf8_lossy(&r[..e]).into_owned()
        })
        .unwrap_or_default()
}

pub fn ws_config() -> WebSocketConfig {
    // tungstenite's defaults are 128 KiB buffers per connection: far too much for 16k
    // clients on one machine. Events are small, and each read zeroes a whole chunk of
    // this size first: 2 KiB holds a few events and keeps that cheap.
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(spec: &ConnSpec, shared: &Shared) -> Result<Ws, String> {
    let stream = tcp(spec, shared).await?;
    let url = format!(
        "ws://{}/ws?access_token={}",
        shared.gateways[spec.instance].1, spec.token
    );
    match tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(format!(
            "HTTP {} {}",
            resp.status().as_u16(),
            resp.body()
                .as_deref()
                .map(refusal_reason)
                .unwrap_or_default()
        )
        .trim_end()
        .to_owned()),
        Err(e) => Err(format!("ws handshake: {e}")),
    }
}

/// An SSE response body being read: the socket, undecoded bytes, and decoded lines.
pub struct Sse {
    pub stream: TcpStream,
    chunked: bool,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked bytes not yet split into lines.
    text: Vec<u8>,
    /// The terminating chunk or EOF was seen.
    pub eof: bool,
}

impl Sse {
    /// Moves complete chunks from `raw` to `text`.
    fn dechunk(&mut self) -> Result<(), String> {
        if !self.chunked {
            self.text.append(&mut self.raw);
            return Ok(());
        }
        loop {
            let Some(pos) = find(&self.raw, b"\r\n") else {
                if self.raw.len() > 64 {
                    return Err("bad chunk header".into());
                }
                return Ok(());
            };
            let line = std::str::from_utf8(&self.raw[..pos]).map_err(|_| "bad chunk header")?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size `{line}`"))?;
            if size == 0 {
                self.eof = true;
                self.raw.clear();
                return Ok(());
            }
            if self.raw.len() < pos + 2 + size + 2 {
                return Ok(());
            }
            self.text
                .extend_from_slice(&self.raw[pos + 2..pos + 2 + size]);
            self.raw.drain(..pos + 2 + size + 2);
        }
    }

    /// Reads more; false at EOF.
    pub async fn fill(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 8192];
        let n = self
            .stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.raw.extend_from_slice(&buf[..n]);
        self.dechunk()?;
        Ok(!self.eof)
    }

    /// Next complete line (without its terminator), if one is buffered.
    pub fn line(&mut self) -> Option<Vec<u8>> {
        let pos = self.text.iter().position(|b| *b == b'\n')?;
        let mut line: Vec<u8> = self.text.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }
}

async fn sse_connect(spec: &ConnSpec, shared: &Shared) -> Result<Sse, String> {
    let stream = tcp(spec, shared).await?;
    sse_open(
        stream,
        &shared.gateways[spec.instance].1,
        "/sse",
        &spec.token,
    )
    .await
}

/// Asks for the SSE stream at `path` on a connected socket and reads until it flows
/// (its `: connected` comment).
pub async fn sse_open(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    token: &str,
) -> Result<Sse, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let body_start = loop {
        let mut buf = [0u8; 4096];
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = find(&head, b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("response headers too large".into());
        }
    };
    let head_text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let rest = head[body_start..].to_vec();
    if status != 200 {
        return Err(format!("HTTP {status} {}", refusal_reason(&rest))
            .trim_end()
            .to_owned());
    }
    let chunked = head_text
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut sse = Sse {
        stream,
        chunked,
        raw: rest,
        text: Vec::new(),
        eof: false,
    };
    sse.dechunk()?;
    // The stream opens with `retry: N` and `: connected`; wait for the comment so a
    // connection counts as connected only once its stream flows.
    loop {
        while let Some(line) = sse.line() {
            if line.starts_with(b": connected") {
                return Ok(sse);
            }
        }
        if sse.eof || !sse.fill().await? {
            return Err("stream ended before `: connected`".into());
        }
    }
}

/// Resolves once `rx` is true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs one connection: handshake (reported on `connected`, permit released), then
/// receive until `stop` turns true.
pub async fn run(
    spec: ConnSpec,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    connected: mpsc::UnboundedSender<(usize, bool)>,
    mut stop: watch::Receiver<bool>,
) -> ConnResult {
    let mut r = ConnResult {
        user: spec.user,
        ws: spec.transport == Transport::Ws,
        seqs: Vec::with_capacity(spec.capacity_hint),
        lat_us: Vec::with_capacity(spec.capacity_hint),
        done: spec.done,
        ..ConnResult::default()
    };
    let started = Instant::now();
    let timeout = shared.connect_timeout;
    match spec.transport {
        Transport::Ws => {
            let ws = tokio::time::timeout(timeout, ws_connect(&spec, &shared))
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
            drop(permit);
            let ok = ws.is_ok();
            r.connect = Some(ws.as_ref().map(|_| started.elapsed()).map_err(Clone::clone));
            let _ = connected.send((spec.index, ok));
            if let Ok(ws) = ws {
                drop(spec);
                ws_receive(ws, &shared, &mut r, &mut stop).await;
            }
        }
        Transport::Sse => {
            let sse = tokio::time::timeout(timeout, sse_connect(&spec, &shared))
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
            drop(permit);
            let ok = sse.is_ok();
            r.connect = Some(
                sse.as_ref()
                    .map(|_| started.elapsed())
                    .map_err(Clone::clone),
            );
            let _ = connected.send((spec.index, ok));
            if let Ok(sse) = sse {
                drop(spec);
                sse_receive(sse, &shared, &mut r, &mut stop).await;
            }
        }
    }
    if r.ended.is_some() {
        r.finish(&shared);
    }
    r
}

async fn ws_receive(
    mut ws: Ws,
    shared: &Shared,
    r: &mut ConnResult,
    stop: &mut watch::Receiver<bool>,
) {
    // One stop future for the whole stream, not one registration per message.
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut pacer = Pacer::new(shared.pace);
    loop {
        if pacer.is_some() {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = Pacer::wait(&mut pacer) => {}
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => r.on_payload(shared, t.as_bytes()),
                Some(Ok(Message::Close(frame))) => {
                    r.ended = Some(match frame {
                        Some(f) => format!("gateway closed: {} {}", u16::from(f.code), f.reason),
                        None => "gateway closed".into(),
                    });
                    // tungstenite queued the close reply; flush it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                    return;
                }
                Some(Ok(_)) => {} // ping/pong/binary: pongs are answered by tungstenite
                Some(Err(e)) => {
                    r.ended = Some(format!("ws error: {e}"));
                    return;
                }
                None => {
                    r.ended = Some("ws: connection ended".into());
                    return;
                }
            },
        }
    }
    // Our close: send it and read until the gateway answers, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "loadgen done".into(),
            }))
            .await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                r.on_payload(shared, t.as_bytes());
            }
        }
    })
    .await;
}

async fn sse_receive(
    mut sse: Sse,
    shared: &Shared,
    r: &mut ConnResult,
    stop: &mut watch::Receiver<bool>,
) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut pacer = Pacer::new(shared.pace);
    'stream: loop {
        while let Some(line) = sse.line() {
            if let Some(data) = line.strip_prefix(b"data:") {
                if pacer.is_some() {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break 'stream,
                        _ = Pacer::wait(&mut pacer) => {}
                    }
                }
                let data = data.strip_prefix(b" ").unwrap_or(data);
                r.on_payload(shared, data);
                if r.ended.is_some() {
                    return;
                }
            }
            // `id:`, `event:`, `retry:`, comments and blank lines need nothing here.
        }
        if sse.eof {
            r.ended = Some("sse: stream ended".into());
            return;
        }
        tokio::select! {
            biased;
            _ = &mut stop => break,
            res = sse.fill() => match res {
                Ok(true) => {}
                Ok(false) => {} // eof handled at the top of the loop after the last lines
                Err(e) => {
                    r.ended = Some(format!("sse {e}"));
                    return;
                }
            },
        }
    }
    let _ = sse.stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_payloads() {
        let ev = br#"{"event_id":"lt-r1-5","data":{"run":"r1","seq":5,"sent_us":1700000000000000,"job_id":"j"}}"#;
        assert!(matches!(
            classify(ev, b"r1"),
            Payload::Ours {
                seq: 5,
                sent_us: 1_700_000_000_000_000
            }
        ));
        assert!(matches!(classify(ev, b"r2"), Payload::Foreign));
        assert!(matches!(
            classify(br#"{"event_id":"x","data":{}}"#, b"r1"),
            Payload::Foreign
        ));
        assert!(matches!(
            classify(br#"{"type":"resync"}"#, b"r1"),
            Payload::Resync
        ));
        assert!(
            matches!(classify(br#"{"type":"close","reason":"shutdown"}"#, b"r1"), Payload::Close(r) if r == "shutdown")
        );
        assert!(matches!(
            classify(br#"{"type":"pong"}"#, b"r1"),
            Payload::Other
        ));
    }
}
