//! The shipped nginx and HAProxy configurations in front of two gateway instances during a
//! rolling restart: WebSocket and SSE clients connected through the proxy receive a steady
//! stream of events while each instance in turn is sent SIGTERM, waited for, and started
//! again on the same port. Every client must end with every event, in order, once (or an
//! explicit `resync` before a gap), none may stay disconnected, and the proxy may never
//! answer a client that no instance can take it while one is ready.
//!
//! Each proxy runs the restart at two paces: moving on once a probe connection reached the
//! restarted instance, and moving on a fixed time after `/readyz`, as an orchestrator does
//! (no probe traffic, which matters to nginx: see [`Pace::AfterReady`]).
//!
//! The pieces are meant for other rolling-restart scenarios: [`Fleet`] (instances with
//! extra environment, a proxy, [`Fleet::rolling_restart`]), [`start_clients`],
//! [`start_publisher`] and `clients::check_stream`.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clients::{Client, Kind, check_stream};
use crate::harness::{GatewayProcess, Proxy, ProxyKind, until};
use crate::support::{Publisher, bounded, token, unique};

const TENANT: &str = "tenant-lb";
/// Four of each transport: the eight clients of the drill an operator reported nginx
/// failing.
const CLIENTS_PER_TRANSPORT: usize = 4;
/// Gap between published events: a steady trickle, so every phase of the restart has
/// events in flight.
const PUBLISH_EVERY: Duration = Duration::from_millis(40);
/// The orchestrator's pace: 5 s after an instance is ready, the next one is stopped.
const ORCHESTRATOR: Pace = Pace::AfterReady(Duration::from_secs(5));
/// Deadline for one step that depends on reconnects through the proxy.
const STEP: Duration = Duration::from_secs(30);

/// When a rolling restart moves on from an instance that is ready again.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Once a probe WebSocket through the proxy landed on the restarted instance.
    Routed,
    /// A fixed time after `/readyz` said 200, as an orchestrator waits (Kubernetes'
    /// `minReadySeconds`, a deploy script's sleep), with no traffic of the test's own. The
    /// probes of [`Pace::Routed`] open and close at once, and a request to an nginx
    /// upstream that completes clears its failure count, which the clients' long-lived
    /// streams never do: this pace leaves the proxy with only what real clients send.
    AfterReady(Duration),
}

/// Two instances behind a proxy, with clients and a publisher attached: the fixture a
/// rolling-restart scenario runs in.
pub struct Fleet {
    pub instances: Vec<GatewayProcess>,
    pub proxy: Proxy,
    pub exchange: String,
}

impl Fleet {
    /// Starts two gateway instances (with `extra` environment) and `kind` in front of them.
    pub async fn start(kind: ProxyKind, extra: &[(&str, &str)]) -> Fleet {
        let exchange = unique(&format!("lb-{kind:?}").to_lowercase());
        // Declare the exchange before either instance binds to it.
        Publisher::connect(&exchange).await;
        let mut instances = vec![
            GatewayProcess::new("a", &exchange, extra),
            GatewayProcess::new("b", &exchange, extra),
        ];
        for gw in &mut instances {
            gw.start().await;
        }
        let ports: Vec<u16> = instances.iter().map(|g| g.port).collect();
        let proxy = Proxy::start(kind, &ports).await;
        Fleet {
            instances,
            proxy,
            exchange,
        }
    }

    /// Restarts each instance in turn, as a rolling deploy does: SIGTERM, wait for a clean
    /// exit, start it again on the same port, wait for `/readyz`, then move on to the next
    /// one at `pace`.
    pub async fn rolling_restart(&mut self, pace: Pace) {
        for i in 0..self.instances.len() {
            let gw = &mut self.instances[i];
            gw.stop().await;
            gw.start().await;
            match pace {
                Pace::Routed => self.wait_routed(i).await,
                Pace::AfterReady(settle) => tokio::time::sleep(settle).await,
            }
        }
    }

    /// Opens probe WebSockets through the proxy until one lands on instance `i`.
    async fn wait_routed(&self, i: usize) {
        let gw = &self.instances[i];
        let url = format!(
            "{}/ws?access_token={}",
            self.proxy.ws_url(),
            token(TENANT, "probe")
        );
        let what = format!(
            "{:?} to route to restarted instance {}",
            self.proxy.kind, gw.name
        );
        until(&what, STEP, || async {
            let before = gw.accepted("ws").await;
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                let _ = ws.close(None).await;
            }
            gw.accepted("ws").await > before
        })
        .await;
    }

    /// Diagnostics for a failure: each instance's and the proxy's log tails.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for gw in &self.instances {
            out.push_str(&format!(
                "--- gateway {}\n{}\n",
                gw.name,
                crate::harness::tail(&gw.log())
            ));
        }
        out.push_str(&format!(
            "--- {:?}\n{}\n",
            self.proxy.kind,
            self.proxy.logs()
        ));
        out
    }

    pub async fn stop(mut self) {
        for gw in &mut self.instances {
            gw.stop().await;
        }
        self.proxy.stop().await;
        Publisher::connect(&self.exchange).await.cleanup().await;
    }
}

/// Publishes tenant-wide events at a steady pace until told to stop; returns their ids in
/// publishing order.
pub fn start_publisher(exchange: &str, stop: watch::Receiver<bool>) -> JoinHandle<Vec<String>> {
    let exchange = exchange.to_owned();
    let run = format!("{:08x}", rand::random::<u32>());
    tokio::spawn(async move {
        let publisher = Publisher::connect(&exchange).await;
        let mut ids = Vec::new();
        while !*stop.borrow() {
            let id = format!("lb-{run}-{:05}", ids.len());
            let body = json!({
                "event_id": id,
                "event_type": "render.job.progress.v1",
                "event_time": "2026-05-27T10:15:00Z",
                "tenant_id": TENANT,
                // A job per event: progress of one job would be conflated in replays,
                // and this test counts every event.
                "data": {"job_id": format!("job-{id}"), "progress": ids.len() % 100}
            });
            publisher.publish("render.job.progress.v1", &body).await;
            ids.push(id);
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        ids
    })
}

/// Clients of both transports, each as its own user of the tenant (so every one gets the
/// tenant-wide events), connected through the proxy.
pub async fn start_clients(fleet: &Fleet, stop: &watch::Receiver<bool>) -> Vec<Client> {
    let mut clients = Vec::new();
    for kind in [Kind::Ws, Kind::Sse] {
        for n in 0..CLIENTS_PER_TRANSPORT {
            let user = format!("{kind:?}-{n}").to_lowercase();
            clients.push(Client::start(
                kind,
                &user,
                &fleet.proxy.http_url(),
                token(TENANT, &user),
                stop.clone(),
            ));
        }
    }
    until("every client connected", STEP, || async {
        clients.iter().all(|c| c.connects() >= 1)
    })
    .await;
    clients
}

/// The whole scenario for one proxy at one pace.
async fn rolling_restart_through(kind: ProxyKind, pace: Pace) {
    // The fleet's history stream: a client that reconnects to an instance that has just
    // started resumes from the stream-backfilled history instead of resyncing.
    let stream = unique("lb-history");
    let mut fleet = Fleet::start(kind, &[("GATEWAY_HISTORY_STREAM", &stream)]).await;
    let (stop_clients, clients_stop) = watch::channel(false);
    let clients = start_clients(&fleet, &clients_stop).await;
    let (stop_publishing, publishing_stop) = watch::channel(false);
    let publisher = start_publisher(&fleet.exchange, publishing_stop);

    until("events flowing to every client", STEP, || async {
        clients.iter().all(|c| c.events() >= 5)
    })
    .await;
    fleet.rolling_restart(pace).await;
    // Events keep flowing after the last restart, through the restarted instances.
    let seen: Vec<usize> = clients.iter().map(Client::events).collect();
    until("events flowing after the restart", STEP, || async {
        clients.iter().zip(&seen).all(|(c, s)| c.events() >= s + 5)
    })
    .await;
    stop_publishing.send(true).unwrap();
    let published = publisher.await.unwrap();
    let last = published.last().cloned();
    let caught_up = tokio::time::timeout(STEP, async {
        while !clients.iter().all(|c| c.last_event() == last) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    stop_clients.send(true).unwrap();

    let mut problems = Vec::new();
    let mut resyncs = 0;
    for c in &clients {
        let items = c.items();
        resyncs += items
            .iter()
            .filter(|i| **i == crate::clients::Item::Resync)
            .count();
        if let Err(e) = check_stream(&c.name, &items, &published) {
            problems.push(e);
        }
        // Both instances were restarted, so every client was moved at least once.
        if c.connects() < 2 {
            problems.push(format!("{}: never reconnected", c.name));
        }
        // One instance was ready at every moment, so the proxy had somewhere to send every
        // attempt: a 502 or 503 means it turned a client away instead (nginx's `no live
        // upstreams`), which leaves the client without events for as long as it lasts.
        let shut_out: Vec<u16> = c
            .refusal_statuses()
            .into_iter()
            .filter(|s| matches!(s, 502 | 503))
            .collect();
        if !shut_out.is_empty() {
            problems.push(format!(
                "{}: turned away by the proxy {} times ({shut_out:?}) with an instance ready",
                c.name,
                shut_out.len()
            ));
        }
    }
    let connects: Vec<u32> = clients.iter().map(Client::connects).collect();
    eprintln!(
        "{kind:?} {pace:?}: {} events published, connects per client {connects:?}, \
         {resyncs} resyncs",
        published.len()
    );
    assert!(
        caught_up && problems.is_empty(),
        "{kind:?} {pace:?}: {} events published; caught up: {caught_up}; resyncs: {resyncs}\n{}\n{}",
        published.len(),
        problems.join("\n"),
        fleet.logs()
    );
    // Every instance backfilled its history from the fleet's stream before it was ready,
    // so every resume is a replay: nobody resyncs.
    assert_eq!(
        resyncs,
        0,
        "{kind:?} {pace:?}: {resyncs} resyncs\n{}",
        fleet.logs()
    );
    for c in clients {
        c.join().await;
    }
    Publisher::connect(&fleet.exchange)
        .await
        .delete_queue(&stream)
        .await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rolling_restart_loses_no_event() {
    bounded(rolling_restart_through(ProxyKind::Nginx, Pace::Routed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_rolling_restart_loses_no_event() {
    bounded(rolling_restart_through(ProxyKind::Haproxy, Pace::Routed)).await;
}

/// The drill an operator ran: stop A, start A, wait until it is ready and 5 s more, stop
/// B, start B (and 5 s more). The first instance's failures must not outlive its restart
/// in the proxy, or draining the second leaves the proxy with no instance it will use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rolling_restart_at_orchestrator_pace_shuts_no_client_out() {
    bounded(rolling_restart_through(ProxyKind::Nginx, ORCHESTRATOR)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_rolling_restart_at_orchestrator_pace_shuts_no_client_out() {
    bounded(rolling_restart_through(ProxyKind::Haproxy, ORCHESTRATOR)).await;
}
