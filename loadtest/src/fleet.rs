//! The fleet of clients: opened at a bounded rate and concurrency, watched while they
//! connect, and stopped at the end to collect what each one saw.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::conn::{self, ConnResult, ConnSpec, Done, Shared, Transport};
use crate::opts::{Mode, Opts};
use crate::publish::{self, Kind};
use crate::{log, mint};

/// Everything connected, and how it went.
pub struct Fleet {
    handles: Vec<JoinHandle<ConnResult>>,
    stop: watch::Sender<bool>,
    pub shared: Arc<Shared>,
    /// Which connections completed their handshake.
    up: Vec<bool>,
    pub attempted: usize,
    pub connected: usize,
    pub secs: f64,
}

impl Fleet {
    /// Deliveries the connected clients must receive once `published` events went out.
    pub fn expected_total(&self, o: &Opts, kind: Kind, published: u64) -> u64 {
        (0..self.attempted)
            .filter(|i| self.up[*i])
            .map(|i| kind.expected_for_user(o, i % o.users, published))
            .sum()
    }
}

/// Handshake outcomes as they arrive, with a progress line every 2 s.
struct Tally {
    rx: mpsc::UnboundedReceiver<(usize, bool)>,
    up: Vec<bool>,
    connected: usize,
    failed: usize,
    total: usize,
    start: Instant,
    last_progress: Instant,
}

impl Tally {
    fn record(&mut self, (idx, ok): (usize, bool)) {
        self.up[idx] = ok;
        if ok {
            self.connected += 1
        } else {
            self.failed += 1
        }
    }

    fn drain_ready(&mut self) {
        while let Ok(r) = self.rx.try_recv() {
            self.record(r);
        }
    }

    fn progress(&mut self, force: bool) {
        if force || self.last_progress.elapsed() >= Duration::from_secs(2) {
            self.last_progress = Instant::now();
            log(format!(
                "connecting: {}/{} connected, {} failed ({:.1} s)",
                self.connected,
                self.total,
                self.failed,
                self.start.elapsed().as_secs_f64()
            ));
        }
    }
}

/// One token per user that has a connection.
fn tokens(o: &Opts) -> Result<Vec<Arc<str>>, String> {
    let exp = publish::now_us() / 1_000_000 + 3600;
    (0..o.users.min(o.connections()))
        .map(|u| mint(o, u, exp).map(Arc::from))
        .collect()
}

fn spec(o: &Opts, i: usize, kind: Option<Kind>, token: Arc<str>) -> ConnSpec {
    let user = i % o.users;
    let capacity_hint = kind.map_or(0, |k| k.expected_for_user(o, user, o.planned_events()));
    ConnSpec {
        index: i,
        transport: if i < o.ws {
            Transport::Ws
        } else {
            Transport::Sse
        },
        user,
        token,
        source: Some(Ipv4Addr::new(127, 0, 0, 1 + (i % o.source_ips) as u8)),
        instance: i % o.instances.len().max(1),
        capacity_hint: (capacity_hint as usize).min(1 << 20),
        // Slow mode: the completions of its user's jobs come last.
        done: (kind == Some(Kind::Slow)).then(|| Done {
            from_seq: o.jobs * o.ticks,
            count: crate::slow::jobs_of_user(o.jobs, o.users as u64, user as u64),
        }),
    }
}

/// Opens the connections at a bounded rate and concurrency and waits for every handshake.
pub async fn connect_all(
    o: &Opts,
    run: &str,
    kind: Option<Kind>,
    abort: &watch::Receiver<bool>,
) -> Result<Fleet, String> {
    let total = o.connections();
    let tokens = tokens(o)?;
    let shared = Arc::new(Shared {
        run: run.to_owned(),
        // Options built by hand (not parsed) have no list: the one gateway then.
        gateways: if o.instances.is_empty() {
            vec![(o.gateway, o.gateway_host.clone())]
        } else {
            o.instances.clone()
        },
        connect_timeout: o.connect_timeout,
        delivered: Default::default(),
        pace: o.read_rate.filter(|_| o.mode == Mode::Slow),
        recv_buffer: Some(o.recv_buffer).filter(|b| o.mode == Mode::Slow && *b > 0),
        finished: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let (ctx, crx) = mpsc::unbounded_channel::<(usize, bool)>();
    let mut tally = Tally {
        rx: crx,
        up: vec![false; total],
        connected: 0,
        failed: 0,
        total,
        start: Instant::now(),
        last_progress: Instant::now(),
    };
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let mut handles = Vec::with_capacity(total);
    let tokio_start = tokio::time::Instant::now();
    for i in 0..total {
        if *abort.borrow() {
            break;
        }
        let at = tokio_start + Duration::from_secs_f64(i as f64 / o.connect_rate);
        tokio::time::sleep_until(at).await;
        let permit = acquire(&permits).await?;
        tally.drain_ready();
        tally.progress(false);
        let spec = spec(o, i, kind, tokens[i % o.users].clone());
        let task = conn::run(spec, shared.clone(), permit, ctx.clone(), stop_rx.clone());
        handles.push(tokio::spawn(task));
    }
    drop(ctx);
    let attempted = handles.len();
    await_handshakes(&mut tally, attempted, o.connect_timeout).await;
    tally.progress(true);
    Ok(Fleet {
        handles,
        stop,
        shared,
        up: tally.up,
        attempted,
        connected: tally.connected,
        secs: tally.start.elapsed().as_secs_f64(),
    })
}

async fn acquire(permits: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, String> {
    permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "semaphore closed".to_owned())
}

/// Every task reports within its own connect timeout; waits a little longer than that.
async fn await_handshakes(tally: &mut Tally, attempted: usize, connect_timeout: Duration) {
    let deadline = tokio::time::Instant::now() + connect_timeout + Duration::from_secs(5);
    while tally.connected + tally.failed < attempted {
        match tokio::time::timeout_at(deadline, tally.rx.recv()).await {
            Ok(Some(r)) => tally.record(r),
            Ok(None) | Err(_) => break,
        }
        tally.progress(false);
    }
}

/// Stops every connection and collects what each saw.
pub async fn collect(fleet: Fleet) -> Vec<ConnResult> {
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
