//! `loadgen wire`: bytes per event on the wire for the studio's events, and what
//! `permessage-deflate` costs, measured in process (no gateway, no broker, no socket).
//!
//! The compression is the gateway's own (src/envelope.rs): flate2 with its pure-Rust
//! miniz_oxide backend, raw deflate, a sync flush, the 4-byte tail removed (RFC 7692
//! 7.2.1), each message alone (no context takeover), once per event. For comparison it
//! also runs the design the gateway did not take: one compressor per connection that keeps
//! its context from message to message, paid for every delivery.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

pub const HELP: &str = "\
loadgen wire: bytes per event of the studio's events (render.job.progress.v1,
notification.created.v1, catalog envelopes with UUIDs) as WebSocket frames, plain and
with permessage-deflate, and as SSE frames; CPU per compression and memory per
connection of each way to compress. In process: no gateway, no broker, no socket.

USAGE: loadgen wire [--events N] [--runs N]

  --events N   events of each type, one user's stream                       [2000]
  --runs N     timed passes over them; the median is printed                   [5]

OUTPUT: one table on stdout, with the load average at the start. CPU is this thread's\ntime on the CPU (/proc/thread-self/schedstat), so other work on the machine counts less.
";

/// The tail a sync flush ends with, removed on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Compressors (and inflaters) made to measure memory per connection.
const MEMORY_SAMPLE: usize = 1000;

pub fn main(args: &[String]) -> u8 {
    let mut events = 2000usize;
    let mut runs = 5usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok());
        match (a.as_str(), value) {
            ("--events", Some(n)) if n > 0 => events = n,
            ("--runs", Some(n)) if n > 0 => runs = n,
            _ => {
                eprintln!("loadgen wire: bad argument `{a}`\n\n{HELP}");
                return 2;
            }
        }
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loadgen wire: {events} events of each type, median of {runs} passes; load average {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| event | JSON | WS plain | WS deflate, shared (level 6 / 1) | WS deflate, context per connection | SSE | CPU per compression, shared (level 6 / 1) | CPU per delivery, context per connection |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kind in [Kind::Progress, Kind::Notification] {
        let stream = studio_stream(kind, events);
        row(kind, &stream, runs);
    }
    memory();
    0
}

#[derive(Clone, Copy)]
enum Kind {
    Progress,
    Notification,
}

impl Kind {
    fn event_type(self) -> &'static str {
        match self {
            Kind::Progress => "render.job.progress.v1",
            Kind::Notification => "notification.created.v1",
        }
    }
}

/// A small generator of UUIDs: the envelope's ids are random, which is what keeps them
/// from compressing.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// One user's stream of `n` events of `kind`, as the catalog's producers publish them:
/// the envelope with its UUIDs, the same tenant and user throughout, a render's progress
/// ticks for a few jobs at a time, notifications each about a job.
fn studio_stream(kind: Kind, n: usize) -> Vec<String> {
    let mut ids = Ids(0x9e37_79b9_7f4a_7c15);
    let (tenant, user) = (ids.uuid(), ids.uuid());
    let jobs: Vec<String> = (0..4).map(|_| ids.uuid()).collect();
    (0..n)
        .map(|i| {
            let job = &jobs[i % jobs.len()];
            let data = match kind {
                Kind::Progress => {
                    let progress = (i / jobs.len()) % 101;
                    format!(
                        r#"{{"job_id":"{job}","progress":{progress},"frame":{},"total_frames":400}}"#,
                        progress * 4
                    )
                }
                Kind::Notification => format!(
                    r#"{{"notification_id":"{}","kind":"render_completed","title":"Your render is ready","job_id":"{job}"}}"#,
                    ids.uuid()
                ),
            };
            format!(
                r#"{{"event_id":"{}","event_type":"{}","event_time":"2026-05-27T10:15:{:02}Z","tenant_id":"{tenant}","user_id":"{user}","trace_id":"{}","correlation_id":"{}","producer":"{}","data":{data}}}"#,
                ids.uuid(),
                kind.event_type(),
                i % 60,
                ids.uuid(),
                ids.uuid(),
                match kind {
                    Kind::Progress => "render-orchestrator",
                    Kind::Notification => "notifier",
                },
            )
        })
        .collect()
}

/// A server frame's header for a payload of `len` bytes (no mask).
fn ws_header(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// The SSE frame the gateway writes: `id:` and one `data:` line.
fn sse_len(json: &str) -> usize {
    let id_start = json.find(r#""event_id":""#).expect("an event_id") + 12;
    let id_len = json[id_start..].find('"').expect("its end");
    "id: ".len() + id_len + "\ndata: ".len() + json.len() + "\n\n".len()
}

/// `payload` compressed as one message by `c` (reset first when `alone`).
fn compress(c: &mut Compress, payload: &[u8], alone: bool, out: &mut Vec<u8>) -> usize {
    if alone {
        c.reset();
    }
    out.clear();
    out.reserve(payload.len() + 64);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        c.compress_vec(&payload[done..], out, FlushCompress::Sync)
            .expect("deflate");
        if (c.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&TAIL), "a sync flush ends with its tail");
    out.len() - TAIL.len()
}

/// Mean bytes per event and the median µs per event over `runs` passes.
fn measure(stream: &[String], runs: usize, level: u32, alone: bool) -> (f64, f64) {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut passes = Vec::with_capacity(runs);
    for run in 0..runs {
        // A fresh compressor per pass: one connection's life, or one thread's.
        let mut c = Compress::new(Compression::new(level), false);
        let start = cpu_ns();
        let mut total = 0usize;
        for json in stream {
            let n = compress(&mut c, json.as_bytes(), alone, &mut out);
            // A message that compresses to no less is sent plain.
            let n = if alone { n.min(json.len()) } else { n };
            total += ws_header(n) + n;
        }
        passes.push((cpu_ns() - start) as f64 / 1e3 / stream.len() as f64);
        if run == 0 {
            bytes = total;
        }
    }
    passes.sort_by(f64::total_cmp);
    (bytes as f64 / stream.len() as f64, passes[runs / 2])
}

fn row(kind: Kind, stream: &[String], runs: usize) {
    let n = stream.len() as f64;
    let json = stream.iter().map(String::len).sum::<usize>() as f64 / n;
    let plain = stream
        .iter()
        .map(|j| ws_header(j.len()) + j.len())
        .sum::<usize>() as f64
        / n;
    let sse = stream.iter().map(|j| sse_len(j)).sum::<usize>() as f64 / n;
    let (shared6, cpu6) = measure(stream, runs, 6, true);
    let (shared1, cpu1) = measure(stream, runs, 1, true);
    let (context, context_cpu) = measure(stream, runs, 6, false);
    println!(
        "| {} | {json:.0} B | {plain:.0} B | {shared6:.0} B ({:.2}x) / {shared1:.0} B | {context:.0} B ({:.2}x) | {sse:.0} B | {cpu6:.2} / {cpu1:.2} µs per event | {context_cpu:.2} µs |",
        kind.event_type(),
        plain / shared6,
        plain / context,
    );
}

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`): on a machine shared
/// with other work, time off the CPU is not counted, as wall time would.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat")
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Memory per connection of each part a connection could keep: a compressor with its
/// context (the design not taken), an inflater (what a client's compressed message costs
/// while it is read, then freed), each used once so its tables are touched.
fn memory() {
    let sample = studio_stream(Kind::Progress, 1).remove(0);
    let mut out = Vec::new();
    let before = rss();
    let compressors: Vec<Compress> = (0..MEMORY_SAMPLE)
        .map(|_| {
            let mut c = Compress::new(Compression::new(6), false);
            compress(&mut c, sample.as_bytes(), false, &mut out);
            c
        })
        .collect();
    let per_compressor = rss().saturating_sub(before) / MEMORY_SAMPLE;
    let mut compressed = out.clone();
    compressed.extend_from_slice(&TAIL);
    let before = rss();
    let inflaters: Vec<Decompress> = (0..MEMORY_SAMPLE)
        .map(|_| {
            let mut d = Decompress::new(false);
            let mut plain = Vec::with_capacity(sample.len() + 64);
            d.decompress_vec(&compressed, &mut plain, FlushDecompress::Sync)
                .expect("inflate");
            assert_eq!(plain, sample.as_bytes());
            d
        })
        .collect();
    let per_inflater = rss().saturating_sub(before) / MEMORY_SAMPLE;
    println!(
        "\nmemory per connection (resident, {MEMORY_SAMPLE} made and used once): a compressor with its context {:.1} KiB; an inflater {:.1} KiB",
        per_compressor as f64 / 1024.0,
        per_inflater as f64 / 1024.0
    );
    drop((compressors, inflaters));
}
