//! What the loadgen reads about the gateway: its process (`/proc`: RSS, CPU time, open-file
//! limit) and its HTTP endpoints (`/readyz`, `/metrics`), over plain HTTP/1.1 on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A sample of the gateway process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 if unknown).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn cpu_secs(pid: u32, tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_ticks(&stat)? as f64 / tck)
}

/// utime + stime of one `/proc/.../stat` text, in ticks.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: count fields
    // after the last ')'. Field 3 is the state; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds of this process's threads whose name starts with `prefix`, and of the
/// others.
pub fn own_threads_cpu(prefix: &str, tck: f64) -> Option<(f64, f64)> {
    let (mut named, mut rest) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let comm = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map_or("", |(a, b)| &stat[a + 1..b]);
        let ticks = stat_ticks(&stat).unwrap_or(0);
        if comm.starts_with(prefix) {
            named += ticks;
        } else {
            rest += ticks;
        }
    }
    Some((named as f64 / tck, rest as f64 / tck))
}

pub fn sample(pid: u32, tck: f64) -> Option<ProcSample> {
    Some(ProcSample {
        rss_kib: rss_kib(pid)?,
        cpu_secs: cpu_secs(pid, tck)?,
    })
}

/// Soft "Max open files" of a process.
pub fn max_open_files(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Socket inodes listening on `port` (IPv4 and IPv6 tables).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st is field 3 (0A = LISTEN),
            // inode is field 9.
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((_, p)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port)
                && let Ok(inode) = f[9].parse()
            {
                out.push(inode);
            }
        }
    }
    out
}

fn owns_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| {
            l.to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

/// Every process id under /proc.
pub fn pids() -> Result<Vec<u32>, String> {
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("cannot read /proc: {e}"))?;
    Ok(dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect())
}

/// The gateway's pid: the process whose executable is named `realtime-gateway`; when there
/// are several (a fleet benchmark), the one listening on `port`.
pub fn find_pid(port: u16) -> Result<u32, String> {
    find_named("realtime-gateway", port).map_err(|e| format!("{e}; pass --gateway-pid"))
}

/// RabbitMQ's pid: the Erlang VM (`beam.smp`); when there are several (the tests' private
/// nodes), the one listening on `port`, the AMQP port the run publishes to.
pub fn find_broker_pid(port: u16) -> Result<u32, String> {
    find_named("beam.smp", port)
}

fn find_named(name: &str, port: u16) -> Result<u32, String> {
    let mut found = Vec::new();
    for pid in pids()? {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
        let named = exe.is_ok_and(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.trim_end_matches(" (deleted)") == name)
        });
        if named {
            found.push(pid);
        }
    }
    if found.len() > 1 {
        let inodes = listening_inodes(port);
        found.retain(|pid| owns_socket(*pid, &inodes));
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => Err(format!("no {name} process listening on port {port} found")),
        _ => Err(format!("several {name} processes ({found:?})")),
    }
}

/// A bounded GET over HTTP/1.1 with `Connection: close`: (status, body).
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    http_get_within(addr, host, path, Duration::from_secs(5)).await
}

/// `http_get` for answers that take a while (the floor answers when it has published).
pub async fn http_get_within(
    addr: SocketAddr,
    host: &str,
    path: &str,
    within: Duration,
) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // Bounded: /metrics is a few KiB.
        let mut limited = s.take(16 << 20);
        limited
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad HTTP answer from {addr}{path}"))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked {
            dechunk(body.as_bytes())
        } else {
            body.to_owned()
        };
        Ok((status, body))
    };
    tokio::time::timeout(within, fut)
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
}

fn dechunk(mut b: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size_line = std::str::from_utf8(&b[..pos]).unwrap_or("0");
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || b.len() < pos + 2 + size {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[(pos + 4 + size).min(b.len())..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prometheus text → series (`name{labels}`) → value.
pub type Metrics = BTreeMap<String, f64>;

pub async fn metrics(addr: SocketAddr, host: &str) -> Result<Metrics, String> {
    let (status, body) = http_get(addr, host, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let mut m = Metrics::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            m.insert(series.to_owned(), v);
        }
    }
    Ok(m)
}

/// Sum of every series of metric `name` (all label sets).
pub fn sum(m: &Metrics, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.as_str() == name
                || k.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Counter series that grew between two scrapes (histograms left out).
pub fn deltas(before: &Metrics, after: &Metrics) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or("");
            name.ends_with("_total")
        })
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

pub async fn ready(addr: SocketAddr, host: &str) -> Result<(), String> {
    match http_get(addr, host, "/readyz").await {
        Ok((200, _)) => Ok(()),
        Ok((s, _)) => Err(format!(
            "gateway /readyz answered {s} (not consuming from the broker?)"
        )),
        Err(e) => Err(format!("gateway not reachable: {e}")),
    }
}
