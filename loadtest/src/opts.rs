//! Command line: hand-parsed flags, validated before anything connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub const DEFAULT_SECRET: &str = "loadtest-secret-0123456789abcdef0123";

pub const HELP: &str = "\
loadgen: load generator for realtime-gateway (loopback only)

USAGE:
  loadgen idle      --ws N --sse M [--duration SECS] [flags]
  loadgen targeted  --ws N --sse M --rate R --duration SECS [flags]
  loadgen broadcast --ws N --sse M --rate R --duration SECS [flags]
  loadgen unrouted  --ws N --sse M --rate R --duration SECS [flags]
  loadgen slow      --ws N --sse M --rate R --jobs J --ticks T [--read-rate S] [flags]
  loadgen floor targeted|broadcast|unrouted|idle ...
                               the same run against the floor: a bare writer that this
                               loadgen starts itself (see FLOOR below)
  loadgen publish   --users U --rate R --duration SECS [--plan-out FILE] [--wait-connections N]
  loadgen summarize FILE...    the comparison table of labelled reports (compare.sh)
  loadgen livepath --source queue|stream ...
                               the live path on the broker alone: a live queue or the
                               stream, latency and CPU (see loadgen livepath --help)
  loadgen state memory|snapshot|summarize ...
                               what the gateway's live state costs: RSS per key, connect
                               and watch to snapshot (see loadgen state --help)
  loadgen free-port            print a free TCP port on 127.0.0.1 (for scripts)
  loadgen wait-ready --gateway URL [--wait-timeout SECS]
                               wait until the gateway's /readyz answers 200 (for scripts)

MODES:
  idle       connect, hold for --duration, report the gateway's RSS growth per connection
  targeted   publish R events/s for --duration, each to one user (round-robin over users);
             every connection of that user must receive it exactly once
  broadcast  publish R tenant-wide events/s (no user_id; round-robin over tenants); every
             connection of the tenant must receive it exactly once
  unrouted   publish R events/s for users that have no connection (nobody receives them),
             then one for user 0 that marks the end: reports the gateway's CPU per event
             ingested
  slow       slow readers of job progress: J jobs each get progress ticks 1..T, then
             a render.job.completed.v1 event (job j is for user j % U); every client
             reads at --read-rate (a tenth of R by default) and after the last event
             keeps reading at that pace until it has its jobs' completions (or
             --tail-timeout). Reports per client whether it stayed connected and ended on
             each job's last tick then completion, in order, and the gateway's
             conflated and slow-client counters; exit status 0 only when every
             client did
  publish    only publish targeted events (for the k6 script, which does the receiving);
             --plan-out writes the users, their tokens and expected counts as JSON first

CONNECTIONS:
  --ws N                     WebSocket clients (GET /ws?access_token=...)            [0]
  --sse M                    SSE clients (GET /sse, Authorization: Bearer ...)       [0]
  --users U                  distinct users; connection i belongs to user i % U
                             (the gateway allows 16 connections per user by default) [ws+sse]
  --tenants T                tenants; user u belongs to tenant u % T                 [1]
  --tenant NAME              tenant name (T > 1: NAME-0, NAME-1, ...)         [lt-tenant]
  --user-prefix P            users are P0, P1, ...                             [lt-user-]
  --source-ips K             bind client sockets to 127.0.0.1 .. 127.0.0.K (round-robin),
                             so each source address has its own ~28k ephemeral ports [4]
  --connect-rate C           new connections per second, at most                  [1000]
  --connect-concurrency P    handshakes in flight, at most                         [256]
  --connect-timeout SECS     per connection (TCP + HTTP/WS handshake)               [10]

EVENTS:
  --rate R                   events per second (may be below 1, e.g. 0.5)          [100]
  --duration SECS            publish window (idle: hold time)                       [10]
  --routing-key KEY          routing key and event_type          [render.job.progress.v1]
  --pad BYTES                extra bytes of filler in each event's data             [0]
  --settle SECS              pause between 'all connected' and the first event     [0.5]
  --tail-timeout SECS        wait at most this long after the last event for the
                             remaining deliveries                          [5; slow: 60]

SLOW MODE (--duration is J x (T + 1) / R, --users defaults to one per 16 connections):
  --jobs J                   render jobs                                           [20]
  --ticks T                  progress events per job before its completion        [100]
  --read-rate S              events per second each client reads, at most     [R / 10]
  --recv-buffer BYTES        the clients' SO_RCVBUF (0: the kernel's default), so what
                             the kernel buffers stays small next to the send queue [8192]

ENDPOINTS (loopback only: anything outside 127.0.0.0/8 is refused):
  --gateway URL[,URL...]     http://127.0.0.1:PORT               [http://127.0.0.1:8080]
                             several: one gateway fleet; connection i goes to the
                             (i mod n)-th, and each one's CPU is reported (`instances`)
  --amqp-url URL             [$GATEWAY_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/%2f]
  --exchange NAME            topic exchange      [$GATEWAY_AMQP_EXCHANGE or loadtest.events]
  --secret S                 HS256 secret        [$GATEWAY_JWT_SECRET or the loadtest one]
  --gateway-pid PID          gateway process for RSS/CPU readings (default: the process
                             named realtime-gateway listening on the gateway's port)
  --broker-pid PID           RabbitMQ's process for its CPU per event (default: the
                             beam.smp listening on the AMQP URL's port)

PUBLISH MODE:
  --plan-out FILE            write {run, users:[{user,tenant,token,expected}], ...} first
  --wait-connections N       before publishing, wait until the gateway's /metrics shows N
                             more open connections than when the plan was written
  --wait-timeout SECS        give up waiting after this long (also wait-ready)      [120]

FLOOR:
  `loadgen floor MODE ...` starts a second loadgen process as a bare writer on a free
  127.0.0.1 port (`floor-serve`, the same flags). It accepts the same WebSocket and SSE
  clients (handshake, token checked once), and when the run publishes it produces the
  same events itself, on the same schedule, and does one write() per delivery: the
  cost any gateway must pay to hand each client its own frame, measured by the same
  clients in the same run. No broker is involved. Its CPU is read from /proc like the
  gateway's; its own write-loop time per event is reported under publish.floor.

OUTPUT:
  A readable summary on stderr and one JSON line on stdout (also --json-out FILE);
  --label TEXT is copied into it. `loadgen summarize FILE...` reads such files written
  with --label SCENARIO/SYSTEM/RUN (loadtest/compare.sh does) and prints the comparison
  table: medians over the runs, ranges, and ratios to the floor of the same run.
  Exit status: 0 all delivered exactly once; 1 loss, duplicates, misrouted events,
  connect failures or dropped connections; 2 bad usage; 3 environment (gateway, broker,
  limits).

OPEN FILES:
  Every connection is one open file here and one in the gateway. This machine allows
  20,000 open files per process (ulimit -n); loadgen raises its soft limit to the hard
  limit and refuses a run needing more than the limit minus 64 (about 19,900
  connections). The gateway refuses beyond GATEWAY_MAX_CONNECTIONS (its soft limit minus
  128 by default): start it with `ulimit -n 20000` for 16,000 connections.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Targeted,
    Broadcast,
    Unrouted,
    Slow,
    Publish,
    FreePort,
    WaitReady,
}

/// The bare-writer floor: the loadgen that drives it, or the writer process itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    Drive,
    Serve,
}

impl Mode {
    /// Which events a mode publishes (none for idle and the helpers).
    pub fn kind(self) -> Option<crate::publish::Kind> {
        use crate::publish::Kind;
        match self {
            Mode::Targeted => Some(Kind::Targeted),
            Mode::Broadcast => Some(Kind::Broadcast),
            Mode::Unrouted => Some(Kind::Unrouted),
            Mode::Slow => Some(Kind::Slow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Targeted => "targeted",
            Mode::Broadcast => "broadcast",
            Mode::Unrouted => "unrouted",
            Mode::Slow => "slow",
            Mode::Publish => "publish",
            Mode::FreePort => "free-port",
            Mode::WaitReady => "wait-ready",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub mode: Mode,
    pub floor: Option<Floor>,
    pub ws: usize,
    pub sse: usize,
    pub users: usize,
    pub tenants: usize,
    pub tenant: String,
    pub user_prefix: String,
    pub source_ips: usize,
    pub connect_rate: f64,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub rate: f64,
    pub duration: Duration,
    pub routing_key: String,
    pub pad: usize,
    pub settle: Duration,
    pub tail_timeout: Duration,
    /// Slow mode: jobs, progress ticks per job, reads per second per client, SO_RCVBUF.
    pub jobs: u64,
    pub ticks: u64,
    pub read_rate: Option<f64>,
    pub recv_buffer: u32,
    /// Gateway address, resolved and checked to be loopback.
    pub gateway: SocketAddr,
    /// `host:port` as given, for the Host header.
    pub gateway_host: String,
    /// Every gateway of the fleet under test (address, Host header), the first being
    /// `gateway`: a fleet benchmark spreads the connections over several instances that
    /// each consume the same events.
    pub instances: Vec<(SocketAddr, String)>,
    pub amqp_url: String,
    pub exchange: String,
    pub secret: String,
    pub gateway_pid: Option<u32>,
    /// RabbitMQ's process, for its CPU per event (default: the `beam.smp` listening on the
    /// AMQP URL's port).
    pub broker_pid: Option<u32>,
    pub plan_out: Option<String>,
    pub wait_connections: Option<u64>,
    pub wait_timeout: Duration,
    pub json_out: Option<String>,
    /// Free text copied into the JSON (compare.sh: `scenario/system/run`).
    pub label: Option<String>,
}

impl Opts {
    pub fn connections(&self) -> usize {
        self.ws + self.sse
    }

    /// Events the publisher plans: one every 1/rate seconds within the window (slow mode:
    /// every job's ticks and completion).
    pub fn planned_events(&self) -> u64 {
        if self.mode == Mode::Slow {
            return self.jobs.saturating_mul(self.ticks.saturating_add(1));
        }
        (self.rate * self.duration.as_secs_f64() + 1e-9).floor() as u64
    }

    pub fn tenant_name(&self, t: usize) -> String {
        if self.tenants == 1 {
            self.tenant.clone()
        } else {
            format!("{}-{t}", self.tenant)
        }
    }

    pub fn user_name(&self, u: usize) -> String {
        format!("{}{u}", self.user_prefix)
    }
}

pub enum Parsed {
    Run(Box<Opts>),
    Help,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
}

fn secs(flag: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = num(flag, v)?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{flag}: `{v}` must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// `http://host:port[/]` → resolved loopback address and the `host:port` text.
fn parse_gateway(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--gateway: `{url}` must start with http://"))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') || hostport.is_empty() {
        return Err(format!("--gateway: `{url}` must be http://HOST:PORT"));
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--gateway: cannot resolve `{hostport}`: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("--gateway: `{hostport}` has no address"))?;
    if addrs.iter().any(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "--gateway: `{hostport}` is not a loopback address; load goes to 127.0.0.0/8 only"
        ));
    }
    Ok((addr, with_port))
}

/// The host of an `amqp://user:pass@host:port/vhost` URL must be loopback.
fn check_amqp(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| "--amqp-url: must start with amqp:// (loopback only)".to_owned())?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = hostport.strip_prefix('[') {
        h.split(']').next().unwrap_or("").to_owned()
    } else {
        hostport.split(':').next().unwrap_or("").to_owned()
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    let addrs: Vec<SocketAddr> = (host.as_str(), 5672)
        .to_socket_addrs()
        .map_err(|e| format!("--amqp-url: cannot resolve `{host}`: {e}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "--amqp-url: `{host}` is not a loopback address; load goes to 127.0.0.0/8 only"
        ));
    }
    Ok(())
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Defaults, with the endpoints the gateway's own environment names when set.
fn defaults() -> Opts {
    Opts {
        mode: Mode::Idle,
        floor: None,
        ws: 0,
        sse: 0,
        users: 0,
        tenants: 1,
        tenant: "lt-tenant".into(),
        user_prefix: "lt-user-".into(),
        source_ips: 4,
        connect_rate: 1000.0,
        connect_concurrency: 256,
        connect_timeout: Duration::from_secs(10),
        rate: 100.0,
        duration: Duration::from_secs(10),
        routing_key: "render.job.progress.v1".into(),
        pad: 0,
        settle: Duration::from_millis(500),
        tail_timeout: Duration::from_secs(5),
        jobs: 20,
        ticks: 100,
        read_rate: None,
        recv_buffer: 8192,
        gateway: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
        gateway_host: "127.0.0.1:8080".into(),
        instances: Vec::new(),
        amqp_url: env("GATEWAY_AMQP_URL")
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        exchange: env("GATEWAY_AMQP_EXCHANGE").unwrap_or_else(|| "loadtest.events".into()),
        secret: env("GATEWAY_JWT_SECRET").unwrap_or_else(|| DEFAULT_SECRET.into()),
        gateway_pid: None,
        broker_pid: None,
        plan_out: None,
        wait_connections: None,
        wait_timeout: Duration::from_secs(120),
        json_out: None,
        label: None,
    }
}

/// What the command line gave beyond the options themselves.
struct Given {
    mode: Option<Mode>,
    users: bool,
    tail_timeout: bool,
    gateway_url: String,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = args.into_iter();
    let mut o = defaults();
    let mut given = Given {
        mode: None,
        users: false,
        tail_timeout: false,
        gateway_url: "http://127.0.0.1:8080".to_owned(),
    };
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" || a == "help" {
            return Ok(Parsed::Help);
        }
        if !a.starts_with('-') {
            word(&mut o, &mut given, &a)?;
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or(format!("{flag} needs a value"))?,
        };
        set_flag(&mut o, &mut given, &flag, value)?;
    }
    o.mode = given
        .mode
        .ok_or("give a mode: idle, targeted, broadcast, unrouted, slow or publish (see --help)")?;
    if o.floor.is_some()
        && (o.mode == Mode::Slow || !matches!(o.mode, Mode::Idle) && o.mode.kind().is_none())
    {
        return Err("floor runs idle, targeted, broadcast or unrouted".into());
    }
    if o.mode == Mode::FreePort {
        return Ok(Parsed::Run(Box::new(o)));
    }
    let mut problems = Vec::new();
    for url in given.gateway_url.split(',') {
        match parse_gateway(url) {
            Ok(instance) => o.instances.push(instance),
            Err(e) => problems.push(e),
        }
    }
    if let Some((addr, host)) = o.instances.first() {
        o.gateway = *addr;
        o.gateway_host = host.clone();
    }
    if o.mode != Mode::WaitReady {
        if o.mode != Mode::Idle
            && o.floor.is_none()
            && let Err(e) = check_amqp(&o.amqp_url)
        {
            problems.push(e);
        }
        check_counts(&mut o, given.users, &mut problems);
        if o.mode == Mode::Slow {
            slow_defaults(&mut o, &given, &mut problems);
        }
        check_values(&o, &mut problems);
    }
    if problems.is_empty() {
        Ok(Parsed::Run(Box::new(o)))
    } else {
        Err(problems.join("\n"))
    }
}

/// A word without dashes: the mode, or the floor role.
fn word(o: &mut Opts, given: &mut Given, a: &str) -> Result<(), String> {
    let role = match a {
        "floor" => Some(Floor::Drive),
        "floor-serve" => Some(Floor::Serve),
        _ => None,
    };
    if let Some(role) = role {
        if o.floor.replace(role).is_some() {
            return Err("give `floor` once".into());
        }
        return Ok(());
    }
    let m = match a {
        "idle" => Mode::Idle,
        "targeted" => Mode::Targeted,
        "broadcast" => Mode::Broadcast,
        "unrouted" => Mode::Unrouted,
        "slow" => Mode::Slow,
        "publish" => Mode::Publish,
        "free-port" => Mode::FreePort,
        "wait-ready" => Mode::WaitReady,
        other => return Err(format!("unknown mode `{other}` (see --help)")),
    };
    if given.mode.replace(m).is_some() {
        return Err("give exactly one mode".into());
    }
    Ok(())
}

fn set_flag(o: &mut Opts, given: &mut Given, flag: &str, v: String) -> Result<(), String> {
    match flag {
        "--ws" => o.ws = num(flag, &v)?,
        "--sse" => o.sse = num(flag, &v)?,
        "--users" => {
            o.users = num(flag, &v)?;
            given.users = true;
        }
        "--tenants" => o.tenants = num(flag, &v)?,
        "--tenant" => o.tenant = v,
        "--user-prefix" => o.user_prefix = v,
        "--source-ips" => o.source_ips = num(flag, &v)?,
        "--connect-rate" => o.connect_rate = num(flag, &v)?,
        "--connect-concurrency" => o.connect_concurrency = num(flag, &v)?,
        "--connect-timeout" => o.connect_timeout = secs(flag, &v)?,
        "--rate" => o.rate = num(flag, &v)?,
        "--duration" => o.duration = secs(flag, &v)?,
        "--routing-key" => o.routing_key = v,
        "--pad" => o.pad = num(flag, &v)?,
        "--settle" => o.settle = secs(flag, &v)?,
        "--tail-timeout" => {
            o.tail_timeout = secs(flag, &v)?;
            given.tail_timeout = true;
        }
        "--jobs" => o.jobs = num(flag, &v)?,
        "--ticks" => o.ticks = num(flag, &v)?,
        "--read-rate" => o.read_rate = Some(num(flag, &v)?),
        "--recv-buffer" => o.recv_buffer = num(flag, &v)?,
        "--gateway" => given.gateway_url = v,
        "--amqp-url" => o.amqp_url = v,
        "--exchange" => o.exchange = v,
        "--secret" => o.secret = v,
        "--gateway-pid" => o.gateway_pid = Some(num(flag, &v)?),
        "--broker-pid" => o.broker_pid = Some(num(flag, &v)?),
        "--plan-out" => o.plan_out = Some(v),
        "--wait-connections" => o.wait_connections = Some(num(flag, &v)?),
        "--wait-timeout" => o.wait_timeout = secs(flag, &v)?,
        "--json-out" => o.json_out = Some(v),
        "--label" => o.label = Some(v),
        other => return Err(format!("unknown flag `{other}` (see --help)")),
    }
    Ok(())
}

/// Slow mode: what its figures follow from (users, window, read rate) and their bounds.
fn slow_defaults(o: &mut Opts, given: &Given, problems: &mut Vec<String>) {
    if !given.users {
        // The gateway allows 16 connections per user by default.
        o.users = o.connections().div_ceil(16).max(1);
    }
    if !given.tail_timeout {
        o.tail_timeout = Duration::from_secs(60);
    }
    let events = o.jobs.saturating_mul(o.ticks.saturating_add(1));
    if o.jobs == 0 || o.ticks == 0 || events > 10_000_000 {
        problems.push("--jobs and --ticks: at least 1, at most 10,000,000 events".into());
        return;
    }
    if (o.jobs as usize) < o.users {
        problems.push(format!(
            "--jobs must be at least the number of users ({}): job j is for user j % users",
            o.users
        ));
    }
    if o.rate.is_finite() && o.rate > 0.0 {
        let window = o.planned_events() as f64 / o.rate;
        if window > 86_400.0 {
            problems.push("--jobs x (--ticks + 1) / --rate must be at most 86400 s".into());
        } else {
            o.duration = Duration::from_secs_f64(window);
        }
    }
    match o.read_rate {
        None => o.read_rate = Some(o.rate / 10.0),
        Some(r) if !(r.is_finite() && r > 0.0) => {
            problems.push("--read-rate must be positive".into())
        }
        Some(_) => {}
    }
}

/// Connections and users, by mode (defaults `--users` to the connection count).
fn check_counts(o: &mut Opts, users_given: bool, problems: &mut Vec<String>) {
    let conns = o.connections();
    match o.mode {
        Mode::Publish => {
            if o.ws + o.sse > 0 {
                problems.push("publish mode opens no connections: drop --ws/--sse".into());
            }
            if !users_given || o.users == 0 {
                problems.push("publish mode needs --users U (at least 1)".into());
            }
        }
        _ => {
            if conns == 0 {
                problems.push("give --ws N and/or --sse M".into());
            }
            if !users_given {
                o.users = conns.max(1);
            }
            if o.users == 0 {
                problems.push("--users must be at least 1".into());
            }
        }
    }
}

/// Names, rates and limits.
fn check_values(o: &Opts, problems: &mut Vec<String>) {
    if o.tenants == 0 || o.tenants > o.users.max(1) {
        problems.push(format!(
            "--tenants must be between 1 and the number of users ({})",
            o.users
        ));
    }
    if !name_ok(&o.tenant) {
        problems.push("--tenant: 1-64 characters of [A-Za-z0-9-_.:]".into());
    }
    if !name_ok(&o.user_prefix) {
        problems.push("--user-prefix: 1-64 characters of [A-Za-z0-9-_.:]".into());
    }
    if !name_ok(&o.routing_key) {
        problems.push("--routing-key: 1-64 characters of [A-Za-z0-9-_.:]".into());
    }
    if o.source_ips == 0 || o.source_ips > 254 {
        problems.push("--source-ips must be between 1 and 254".into());
    }
    if !(o.connect_rate.is_finite() && o.connect_rate > 0.0) {
        problems.push("--connect-rate must be positive".into());
    }
    if o.connect_concurrency == 0 {
        problems.push("--connect-concurrency must be at least 1".into());
    }
    if !(o.rate.is_finite() && o.rate > 0.0 && o.rate <= 1_000_000.0) {
        problems.push("--rate must be above 0 and at most 1000000".into());
    }
    if o.pad > 60_000 {
        problems.push("--pad must be at most 60000 (the gateway drops events over 64 KiB)".into());
    }
    if o.secret.len() < 32 {
        problems.push("--secret must be at least 32 bytes (the gateway requires it)".into());
    }
    if (o.mode == Mode::Publish || o.mode.kind().is_some()) && o.planned_events() == 0 {
        problems.push("--rate x --duration plans no event at all".into());
    }
    if o.planned_events() > u32::MAX as u64 {
        problems.push("--rate x --duration plans too many events".into());
    }
    if o.mode != Mode::Publish && (o.plan_out.is_some() || o.wait_connections.is_some()) {
        problems.push("--plan-out and --wait-connections are for publish mode".into());
    }
}
