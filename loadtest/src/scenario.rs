//! One measured run (idle, targeted, broadcast, unrouted): check the environment, connect
//! the clients, publish (or hold), collect what every client saw, report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::account::account;
use crate::fleet::{self, Fleet};
use crate::gateway::{self, Metrics, ProcSample};
use crate::opts::{Floor, Opts};
use crate::publish::{Kind, PublishReport, Publisher};
use crate::report::{self, Connected, Report, Samples};
use crate::{EXIT_ENV, EXIT_FAIL, Proc, abort_on_signal, floor, limits, log, run_id};

/// Where the events come from.
pub enum Source {
    /// RabbitMQ: the gateway under test consumes them.
    Amqp(Arc<Publisher>),
    /// The floor process produces them itself (no broker).
    Floor,
}

impl Source {
    pub async fn run(
        &self,
        o: &Opts,
        run: &str,
        kind: Kind,
        abort: watch::Receiver<bool>,
    ) -> PublishReport {
        match self {
            Source::Amqp(p) => publish_on_own_thread(p.clone(), o, run, kind, abort).await,
            Source::Floor => floor::publish(o, run, abort).await,
        }
    }

    pub async fn close(self) {
        if let Source::Amqp(p) = self {
            p.close().await;
        }
    }
}

/// Thread name of the publisher, whose CPU is not the clients'.
const PUBLISH_THREAD: &str = "loadgen-publish";

/// Runs the publisher on a thread of its own, so the client threads' CPU is the cost of
/// receiving alone.
async fn publish_on_own_thread(
    p: Arc<Publisher>,
    o: &Opts,
    run: &str,
    kind: Kind,
    abort: watch::Receiver<bool>,
) -> PublishReport {
    let (tx, rx) = oneshot::channel();
    let (o, run) = (o.clone(), run.to_owned());
    let spawned = std::thread::Builder::new()
        .name(PUBLISH_THREAD.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let rep = match rt {
                Ok(rt) => rt.block_on(p.run(&o, &run, kind, abort)),
                Err(e) => failed_publish(format!("cannot start the publisher's runtime: {e}")),
            };
            let _ = tx.send(rep);
        });
    if let Err(e) = spawned {
        return failed_publish(format!("cannot start the publisher's thread: {e}"));
    }
    rx.await
        .unwrap_or_else(|_| failed_publish("the publisher's thread ended without a report".into()))
}

fn failed_publish(why: String) -> PublishReport {
    PublishReport {
        errors: vec![why],
        ..PublishReport::default()
    }
}

/// What a run needs before it connects anything.
pub struct Setup {
    pub proc_: Proc,
    /// Every instance of the gateway fleet, the first being `proc_`'s (one when a single
    /// gateway is under test).
    pub instances: Vec<Proc>,
    /// RabbitMQ's process: its CPU over the publish window is the broker's cost per event.
    pub broker: Proc,
    pub fd_limit: u64,
    pub gw_files: Option<u64>,
    pub source: Option<Source>,
}

/// The publish window: the events, the tail, and the CPU both processes spent.
#[derive(Default)]
pub struct Phase {
    pub report: Option<PublishReport>,
    /// Gateway samples at the first publish and when the last delivery arrived.
    pub window: Option<(ProcSample, ProcSample)>,
    /// The loadgen's own CPU over the same window, seconds: (client threads, publisher
    /// and the rest).
    pub loadgen_cpu: Option<(f64, f64)>,
    /// CPU seconds of each gateway instance over the same window (`None`: not found).
    pub instance_cpu: Vec<Option<f64>>,
    /// CPU seconds of the broker (`beam.smp`) over the same window.
    pub broker_cpu: Option<f64>,
    pub tail_secs: f64,
}

pub async fn metrics(o: &Opts) -> Option<Metrics> {
    gateway::metrics(o.gateway, &o.gateway_host).await.ok()
}

/// Limits, readiness, the gateway process and the event source; an exit code if one fails.
pub async fn prepare(o: &Opts, kind: Option<Kind>) -> Result<Setup, u8> {
    let total = o.connections();
    let fd_limit = limits::check_open_files(total as u64)
        .and_then(|l| limits::check_ports(o).map(|_| l))
        .map_err(|e| {
            log(e);
            EXIT_ENV
        })?;
    if o.users < total && total.div_ceil(o.users) > 16 {
        log(format!(
            "warning: up to {} connections per user; the gateway allows 16 by default \
             (GATEWAY_MAX_CONNECTIONS_PER_USER)",
            total.div_ceil(o.users)
        ));
    }
    for (addr, host) in &o.instances {
        if let Err(e) = gateway::ready(*addr, host).await {
            log(format!("{addr}: {e}"));
            return Err(EXIT_ENV);
        }
    }
    let proc_ = Proc::find(o);
    let mut instances = vec![proc_.clone()];
    for (addr, _) in o.instances.iter().skip(1) {
        instances.push(Proc::of(match gateway::find_pid(addr.port()) {
            Ok(p) => Some(p),
            Err(e) => {
                log(format!("{e}; this instance's CPU is not reported"));
                None
            }
        }));
    }
    let broker = Proc::of(match (o.broker_pid, &kind, o.floor) {
        (Some(p), _, _) => Some(p),
        // The floor has no broker; idle runs publish nothing.
        (None, None, _) | (None, _, Some(_)) => None,
        (None, Some(_), None) => crate::amqp::AmqpUrl::parse(&o.amqp_url)
            .and_then(|u| gateway::find_broker_pid(u.port))
            .map_err(|e| {
                log(format!(
                    "{e}; the broker's CPU is not reported (--broker-pid)"
                ))
            })
            .ok(),
    });
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
    let source = match (kind, o.floor) {
        (None, _) => None,
        (Some(_), Some(Floor::Drive)) => Some(Source::Floor),
        (Some(_), _) => match Publisher::connect(o).await {
            Ok(p) => Some(Source::Amqp(Arc::new(p))),
            Err(e) => {
                log(e);
                return Err(EXIT_ENV);
            }
        },
    };
    Ok(Setup {
        proc_,
        instances,
        broker,
        fd_limit,
        gw_files,
        source,
    })
}

/// idle, targeted, broadcast and unrouted.
pub async fn load(o: Opts) -> u8 {
    let kind = o.mode.kind();
    let setup = match prepare(&o, kind).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut abort = abort_on_signal();
    let run = run_id();
    log(format!(
        "run {run}: {}{} mode, {} WS + {} SSE to {} (users {}, tenants {}, from {} source addresses)",
        if o.floor.is_some() { "floor " } else { "" },
        o.mode.as_str(),
        o.ws,
        o.sse,
        o.gateway,
        o.users,
        o.tenants,
        o.source_ips
    ));
    let m0 = metrics(&o).await;
    let p0 = setup.proc_.sample();
    let fleet = match fleet::connect_all(&o, &run, kind, &abort).await {
        Ok(f) => f,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    // Let the gateway finish the work of the last accepts before measuring.
    sleep_or_abort(Duration::from_secs(1).max(o.settle), &mut abort).await;
    let p1 = setup.proc_.sample();
    let m1 = metrics(&o).await;
    let phase = match (kind, &setup.source) {
        (Some(kind), Some(source)) => {
            publish_phase(&o, &run, kind, source, &fleet, &setup, &abort).await
        }
        _ => {
            hold(&o, &fleet, &mut abort).await;
            Phase::default()
        }
    };
    let p2 = setup.proc_.sample();
    let loadgen_rss = crate::self_rss_kib();
    let connected = Connected::of(&o, &fleet);
    let mut results = fleet::collect(fleet).await;
    if let Some(s) = setup.source {
        s.close().await;
    }
    let m2 = metrics(&o).await;
    let published = phase.report.as_ref().map_or(0, |r| r.published);
    let delivery = account(&o, kind, published, &mut results);
    drop(results);
    let report = Report::new(report::Inputs {
        o: &o,
        run: &run,
        kind,
        fd_limit: setup.fd_limit,
        gw_pid: setup.proc_.pid,
        gw_files: setup.gw_files,
        connected,
        delivery,
        phase,
        samples: Samples {
            p0,
            p1,
            p2,
            m0,
            m1,
            m2,
        },
        loadgen_rss,
        interrupted: *abort.borrow(),
    });
    report.emit();
    if report.ok() { 0 } else { EXIT_FAIL }
}

pub async fn sleep_or_abort(d: Duration, abort: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = crate::conn::stopped(abort) => {}
    }
}

async fn hold(o: &Opts, fleet: &Fleet, abort: &mut watch::Receiver<bool>) {
    log(format!(
        "{} connected; holding for {:.1} s",
        fleet.connected,
        o.duration.as_secs_f64()
    ));
    sleep_or_abort(o.duration, abort).await;
}

/// Publishes, waits for the deliveries, and samples both processes' CPU around it.
async fn publish_phase(
    o: &Opts,
    run: &str,
    kind: Kind,
    source: &Source,
    fleet: &Fleet,
    setup: &Setup,
    abort: &watch::Receiver<bool>,
) -> Phase {
    if fleet.connected == 0 || *abort.borrow() {
        return Phase::default();
    }
    let fleet_cpu = || -> Vec<Option<f64>> { setup.instances.iter().map(Proc::cpu_secs).collect() };
    let b0 = setup.broker.cpu_secs();
    let i0 = fleet_cpu();
    let c0 = setup.proc_.sample();
    let s0 = crate::self_cpu_secs();
    log(format!(
        "publishing {} {} events at {}/s for {:.1} s",
        o.planned_events(),
        o.mode.as_str(),
        o.rate,
        o.duration.as_secs_f64()
    ));
    let rep = source.run(o, run, kind, abort.clone()).await;
    let expected_total = fleet.expected_total(o, kind, rep.published);
    let tail_secs = wait_for_deliveries(o, fleet, expected_total, abort).await;
    let c1 = setup.proc_.sample();
    let s1 = crate::self_cpu_secs();
    let i1 = fleet_cpu();
    let b1 = setup.broker.cpu_secs();
    // A moment for late duplicates to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Phase {
        report: Some(rep),
        window: c0.zip(c1),
        loadgen_cpu: s0.zip(s1).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
        instance_cpu: i0
            .into_iter()
            .zip(i1)
            .map(|(a, b)| a.zip(b).map(|(a, b)| b - a))
            .collect(),
        broker_cpu: b0.zip(b1).map(|(a, b)| b - a),
        tail_secs,
    }
}

/// Waits until `expected` deliveries arrived, the tail timeout, or an abort; seconds waited.
async fn wait_for_deliveries(
    o: &Opts,
    fleet: &Fleet,
    expected: u64,
    abort: &watch::Receiver<bool>,
) -> f64 {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + o.tail_timeout;
    loop {
        let got = fleet
            .shared
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed);
        if got >= expected || tokio::time::Instant::now() >= deadline || *abort.borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed().as_secs_f64()
}
