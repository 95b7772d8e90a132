//! `loadgen`: realtime-gateway's load generator. Opens WebSocket and SSE clients on
//! loopback, publishes events to RabbitMQ at a fixed rate, and reports delivery (lost,
//! duplicated, misrouted), latency, and the gateway's CPU and memory. See `--help` and
//! loadtest/README.md.

#![forbid(unsafe_code)]

mod account;
mod amqp;
mod bare;
mod conn;
mod fleet;
mod floor;
mod gateway;
mod limits;
mod livepath;
mod opts;
mod publish;
mod report;
mod scenario;
mod slow;
mod statebench;
mod stats;
mod stream_reader;
mod summarize;
mod wire;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio::sync::watch;

use opts::{Floor, Mode, Opts, Parsed};
use publish::{Kind, Publisher};
use scenario::sleep_or_abort;

const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ENV: u8 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "summarize") {
        return ExitCode::from(summarize::main(&args[1..]));
    }
    if args.first().is_some_and(|a| a == "livepath") {
        return ExitCode::from(livepath::main(&args[1..]));
    }
    if args.first().is_some_and(|a| a == "state") {
        return ExitCode::from(statebench::main(&args[1..]));
    }
    if args.first().is_some_and(|a| a == "wire") {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            print!("{}", wire::HELP);
            return ExitCode::SUCCESS;
        }
        return ExitCode::from(wire::main(&args[1..]));
    }
    let o = match opts::parse(args.iter().cloned()) {
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
        return match free_port() {
            Ok(p) => {
                println!("{p}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: no free port: {e}");
                ExitCode::from(EXIT_ENV)
            }
        };
    }
    if o.floor == Some(Floor::Serve) {
        // The bare writer runs its own threads: nothing of the client runtime.
        return ExitCode::from(floor::serve(o));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREADS)
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
        match (o.mode, o.floor) {
            (Mode::Publish, _) => publish_only(o).await,
            (Mode::WaitReady, _) => wait_ready(&o, o.wait_timeout).await,
            (_, Some(Floor::Drive)) => floor::drive(o, &args).await,
            (Mode::Slow, _) => slow::run(o).await,
            _ => scenario::load(o).await,
        }
    });
    // Connection tasks still closing must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    ExitCode::from(code)
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
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

/// Process readings and their pid, when the gateway process can be found.
#[derive(Clone)]
pub struct Proc {
    pub pid: Option<u32>,
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

    fn of(pid: Option<u32>) -> Proc {
        Proc {
            pid,
            tck: gateway::clk_tck(),
        }
    }

    fn cpu_secs(&self) -> Option<f64> {
        self.pid.and_then(|p| gateway::cpu_secs(p, self.tck))
    }

    fn sample(&self) -> Option<gateway::ProcSample> {
        self.pid.and_then(|p| gateway::sample(p, self.tck))
    }
}

fn self_rss_kib() -> Option<u64> {
    gateway::rss_kib(std::process::id())
}

/// Names the client runtime's threads, so their CPU can be told from the publisher's.
const CLIENT_THREADS: &str = "loadgen-client";

/// The loadgen's own CPU time, seconds: (client threads, all other threads).
fn self_cpu_secs() -> Option<(f64, f64)> {
    gateway::own_threads_cpu(CLIENT_THREADS, gateway::clk_tck())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `wait-ready`: polls `/readyz` until 200, within `within`.
async fn wait_ready(o: &Opts, within: Duration) -> u8 {
    let deadline = Instant::now() + within;
    loop {
        match gateway::ready(o.gateway, &o.gateway_host).await {
            Ok(()) => return 0,
            Err(e) if Instant::now() >= deadline => {
                log(format!(
                    "gateway not ready after {:.0} s: {e}",
                    within.as_secs_f64()
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
    if let Some(path) = &o.plan_out
        && let Err(e) = write_plan(&o, &run, path)
    {
        log(e);
        return EXIT_ENV;
    }
    let mut abort = abort_on_signal();
    if let Some(n) = o.wait_connections {
        if let Err(e) = wait_for_connections(&o, n, &mut abort).await {
            log(e);
            publisher.close().await;
            return EXIT_ENV;
        }
        sleep_or_abort(o.settle, &mut abort).await;
    }
    log(format!(
        "run {run}: publishing {} targeted events at {}/s over {} users",
        o.planned_events(),
        o.rate,
        o.users
    ));
    let rep = publisher.run(&o, &run, Kind::Targeted, abort.clone()).await;
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
    let line = json!({
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
    })
    .to_string();
    println!("{line}");
    if let Some(path) = &o.json_out
        && let Err(e) = std::fs::write(path, format!("{line}\n"))
    {
        log(format!("cannot write {path}: {e}"));
    }
    if ok { 0 } else { EXIT_FAIL }
}

/// The k6 plan: each user's name, tenant, token and expected event count.
fn write_plan(o: &Opts, run: &str, path: &str) -> Result<(), String> {
    let planned = o.planned_events();
    let exp = publish::now_us() / 1_000_000 + 3600;
    let mut users = Vec::with_capacity(o.users);
    for u in 0..o.users {
        users.push(json!({
            "user": o.user_name(u),
            "tenant": o.tenant_name(u % o.tenants),
            "token": mint(o, u, exp)?,
            "expected": Kind::Targeted.expected_for_user(o, u, planned),
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
    std::fs::write(&tmp, plan.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write the plan {path}: {e}"))?;
    log(format!(
        "plan written to {path}: {} users, {planned} events",
        o.users
    ));
    Ok(())
}

/// Waits until the gateway's `/metrics` shows `n` more open connections than now.
async fn wait_for_connections(
    o: &Opts,
    n: u64,
    abort: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let open = || async {
        gateway::metrics(o.gateway, &o.gateway_host)
            .await
            .map(|m| gateway::sum(&m, "gateway_connections"))
    };
    // Count from now: connections that were already open are not ours.
    let base = open()
        .await
        .map_err(|e| format!("cannot read the gateway's /metrics: {e}"))?;
    let deadline = Instant::now() + o.wait_timeout;
    let mut last_log = Instant::now();
    loop {
        let now_open = open().await.unwrap_or(base);
        if now_open - base >= n as f64 {
            log(format!("{n} new connections open; publishing"));
            return Ok(());
        }
        if Instant::now() >= deadline || *abort.borrow() {
            return Err(format!(
                "gave up: only {} of {n} connections after {:.0} s",
                now_open - base,
                o.wait_timeout.as_secs_f64()
            ));
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            log(format!(
                "waiting: {} of {n} connections open",
                now_open - base
            ));
        }
        sleep_or_abort(Duration::from_millis(200), abort).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn slow_mode_derives_its_window_users_and_read_rate() {
        let parse = |args: &str| opts::parse(args.split_whitespace().map(String::from));
        match parse("slow --ws 10 --sse 10 --rate 5000 --jobs 20 --ticks 1000") {
            Ok(Parsed::Run(o)) => {
                assert_eq!(o.planned_events(), 20 * 1001);
                assert_eq!(o.users, 2, "16 connections per user at most");
                assert_eq!(o.read_rate, Some(500.0), "a tenth of the publish rate");
                assert!((o.duration.as_secs_f64() - 4.004).abs() < 1e-9);
                assert_eq!(o.tail_timeout, Duration::from_secs(60));
            }
            _ => panic!("slow must parse"),
        }
        assert!(parse("slow --ws 4 --users 4 --jobs 3").is_err());
        assert!(parse("slow --ws 4 --read-rate 0").is_err());
        assert!(parse("slow --ws 4 --ticks 18446744073709551615").is_err());
        assert!(parse("slow --ws 4 --rate 0.001").is_err());
    }

    #[test]
    fn floor_words_select_the_role() {
        let parse = |args: &str| opts::parse(args.split_whitespace().map(String::from));
        match parse("floor broadcast --ws 2 --rate 1 --duration 1") {
            Ok(Parsed::Run(o)) => {
                assert_eq!((o.floor, o.mode), (Some(Floor::Drive), Mode::Broadcast))
            }
            _ => panic!("floor broadcast must parse"),
        }
        match parse("floor-serve unrouted --ws 2 --rate 5 --duration 1") {
            Ok(Parsed::Run(o)) => {
                assert_eq!((o.floor, o.mode), (Some(Floor::Serve), Mode::Unrouted))
            }
            _ => panic!("floor-serve unrouted must parse"),
        }
        assert!(parse("floor publish --users 2").is_err());
        assert!(parse("floor slow --ws 2").is_err());
        assert!(parse("floor floor targeted --ws 1").is_err());
    }
}
