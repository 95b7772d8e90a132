//! The end of a run: the figures derived from what was measured, a readable summary on
//! stderr, and one JSON object on stdout (and in `--json-out`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::account::Delivery;
use crate::fleet::Fleet;
use crate::gateway::{self, Metrics, ProcSample};
use crate::opts::Opts;
use crate::publish::Kind;
use crate::scenario::Phase;
use crate::stats::{self, Summary};
use crate::{log, round3};

/// How the connecting went.
pub struct Connected {
    pub total: usize,
    pub connected: usize,
    pub secs: f64,
}

impl Connected {
    pub fn of(o: &Opts, fleet: &Fleet) -> Connected {
        Connected {
            total: o.connections(),
            connected: fleet.connected,
            secs: fleet.secs,
        }
    }

    fn failed(&self) -> usize {
        self.total - self.connected
    }

    fn rate(&self) -> f64 {
        self.connected as f64 / self.secs.max(1e-9)
    }
}

/// Process samples (before connecting, connected, end) and `/metrics` scrapes (same).
pub struct Samples {
    pub p0: Option<ProcSample>,
    pub p1: Option<ProcSample>,
    pub p2: Option<ProcSample>,
    pub m0: Option<Metrics>,
    pub m1: Option<Metrics>,
    pub m2: Option<Metrics>,
}

/// Everything a run measured.
pub struct Inputs<'a> {
    pub o: &'a Opts,
    pub run: &'a str,
    pub kind: Option<Kind>,
    pub fd_limit: u64,
    pub gw_pid: Option<u32>,
    pub gw_files: Option<u64>,
    pub connected: Connected,
    pub delivery: Delivery,
    pub phase: Phase,
    pub samples: Samples,
    pub loadgen_rss: Option<u64>,
    pub interrupted: bool,
}

/// Latency and handshake percentiles.
struct Lat {
    all: Summary,
    ws: Summary,
    sse: Summary,
    handshake: Summary,
}

/// Figures derived from the inputs.
struct Figures {
    rss_per_conn: Option<f64>,
    cpu_window: Option<f64>,
    cpu_us_per_delivery: Option<f64>,
    cpu_us_per_event: Option<f64>,
    loadgen_us_per_delivery: Option<f64>,
    loadgen_publisher_us_per_event: Option<f64>,
    hold_cpu: Option<f64>,
    metric_deltas: BTreeMap<String, f64>,
}

pub struct Report<'a> {
    i: Inputs<'a>,
    lat: Lat,
    f: Figures,
}

fn per(total: Option<f64>, n: u64) -> Option<f64> {
    total.filter(|_| n > 0).map(|c| c * 1e6 / n as f64)
}

impl<'a> Report<'a> {
    pub fn new(mut i: Inputs<'a>) -> Report<'a> {
        let [mut ws, mut sse] = std::mem::take(&mut i.delivery.lat);
        let mut all: Vec<u32> = ws.iter().chain(sse.iter()).copied().collect();
        let lat = Lat {
            all: stats::summarize(&mut all),
            ws: stats::summarize(&mut ws),
            sse: stats::summarize(&mut sse),
            handshake: stats::summarize(&mut i.delivery.handshakes),
        };
        let s = &i.samples;
        let connected = i.connected.connected;
        let rss_per_conn =
            s.p0.zip(s.p1)
                .filter(|_| connected > 0)
                .map(|(a, b)| (b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / connected as f64);
        let cpu_window = i.phase.window.map(|(a, b)| b.cpu_secs - a.cpu_secs);
        let published = i.phase.report.as_ref().map_or(0, |r| r.published);
        let f = Figures {
            rss_per_conn,
            cpu_window,
            cpu_us_per_delivery: per(cpu_window, i.delivery.delivered),
            cpu_us_per_event: per(cpu_window, published),
            loadgen_us_per_delivery: per(i.phase.loadgen_cpu.map(|c| c.0), i.delivery.delivered),
            loadgen_publisher_us_per_event: per(i.phase.loadgen_cpu.map(|c| c.1), published),
            hold_cpu: if i.kind.is_none() {
                s.p1.zip(s.p2).map(|(a, b)| b.cpu_secs - a.cpu_secs)
            } else {
                None
            },
            metric_deltas: match (&s.m0, &s.m2) {
                (Some(a), Some(b)) => gateway::deltas(a, b),
                _ => BTreeMap::new(),
            },
        };
        Report { i, lat, f }
    }

    /// Everything delivered exactly once, every connection up to the end, no error.
    pub fn ok(&self) -> bool {
        let d = &self.i.delivery;
        self.i.connected.failed() == 0
            && d.ended.values().sum::<u64>() == 0
            && d.lost == 0
            && d.duplicated == 0
            && d.misrouted == 0
            && self.i.phase.report.as_ref().is_none_or(|r| r.ok())
            && !self.i.interrupted
    }

    /// Prints the summary and the JSON line (and writes `--json-out`).
    pub fn emit(&self) {
        let mut s = self.summary_connections();
        s.push_str(&self.summary_delivery());
        s.push_str(&self.summary_processes());
        eprint!("{s}");
        let line = self.json().to_string();
        println!("{line}");
        if let Some(path) = &self.i.o.json_out
            && let Err(e) = std::fs::write(path, format!("{line}\n"))
        {
            log(format!("cannot write {path}: {e}"));
        }
    }

    fn summary_connections(&self) -> String {
        let (o, c) = (self.i.o, &self.i.connected);
        let mut s = format!(
            "\n== loadgen {}{} (run {}) against {} ==\n",
            if o.floor.is_some() { "floor " } else { "" },
            o.mode.as_str(),
            self.i.run,
            o.gateway
        );
        s.push_str(&format!(
            "connections  {}/{} connected ({} WS, {} SSE) in {:.2} s = {:.0}/s; {} failed\n",
            c.connected,
            c.total,
            o.ws,
            o.sse,
            c.secs,
            c.rate(),
            c.failed()
        ));
        for (why, n) in &self.i.delivery.failures {
            s.push_str(&format!("             {n} x connect failed: {why}\n"));
        }
        s.push_str(&format!("handshake    {}\n", self.lat.handshake.text_ms()));
        s
    }

    fn summary_delivery(&self) -> String {
        let (o, d) = (self.i.o, &self.i.delivery);
        let mut s = String::new();
        if let Some(rep) = &self.i.phase.report {
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
            if let Some(f) = &rep.floor {
                s.push_str(&format!("floor        {f}\n"));
            }
            s.push_str(&format!(
                "delivered    {} of {} expected (tail {:.2} s): lost {} (on {} connections), duplicated {}, misrouted {}, other runs' {}, resyncs {}\n",
                d.delivered, d.expected, self.i.phase.tail_secs, d.lost, d.conns_with_loss, d.duplicated, d.misrouted, d.foreign, d.resyncs
            ));
            s.push_str(&format!("latency      {}\n", self.lat.all.text_ms()));
            if o.ws > 0 && o.sse > 0 {
                s.push_str(&format!("  WS         {}\n", self.lat.ws.text_ms()));
                s.push_str(&format!("  SSE        {}\n", self.lat.sse.text_ms()));
            }
        }
        for (why, n) in &d.ended {
            s.push_str(&format!(
                "             {n} x connection ended early: {why}\n"
            ));
        }
        s
    }

    fn summary_processes(&self) -> String {
        let (smp, f) = (&self.i.samples, &self.f);
        let mut s = String::new();
        if let (Some(a), Some(b)) = (smp.p0, smp.p1) {
            s.push_str(&format!(
                "gateway RSS  {} KiB before, {} KiB with {} connections: {:.0} bytes per connection",
                a.rss_kib,
                b.rss_kib,
                self.i.connected.connected,
                f.rss_per_conn.unwrap_or(0.0)
            ));
            if let Some(c) = smp.p2 {
                s.push_str(&format!("; {} KiB at the end", c.rss_kib));
            }
            s.push('\n');
        }
        if let Some(c) = f.cpu_window {
            s.push_str(&format!(
                "gateway CPU  {c:.2} s during publish+tail = {:.2} µs per delivery ({} deliveries), {:.2} µs per event\n",
                f.cpu_us_per_delivery.unwrap_or(0.0),
                self.i.delivery.delivered,
                f.cpu_us_per_event.unwrap_or(0.0),
            ));
        }
        if let Some(c) = f.hold_cpu {
            s.push_str(&format!(
                "gateway CPU  {c:.2} s while holding idle connections\n"
            ));
        }
        if !f.metric_deltas.is_empty() {
            s.push_str("gateway /metrics changes during the run:\n");
            for (k, v) in &f.metric_deltas {
                s.push_str(&format!("             {k} +{v}\n"));
            }
        }
        if self.i.phase.instance_cpu.len() > 1 {
            let per_event: Vec<String> = self
                .instance_us_per_event()
                .iter()
                .map(|c| c.map_or("?".into(), |c| format!("{c:.2}")))
                .collect();
            s.push_str(&format!(
                "instances    {} gateways, CPU µs per event each: {}\n",
                per_event.len(),
                per_event.join(", ")
            ));
        }
        if let Some(c) = self.i.phase.broker_cpu {
            s.push_str(&format!(
                "broker CPU   {c:.2} s during publish+tail = {:.2} µs per event\n",
                per(Some(c), self.published()).unwrap_or(0.0)
            ));
        }
        if let Some((clients, rest)) = self.i.phase.loadgen_cpu {
            s.push_str(&format!(
                "loadgen CPU  clients {clients:.2} s during publish+tail = {:.2} µs per delivery received; publisher {rest:.2} s = {:.2} µs per event\n",
                f.loadgen_us_per_delivery.unwrap_or(0.0),
                f.loadgen_publisher_us_per_event.unwrap_or(0.0)
            ));
        }
        if let Some(r) = self.i.loadgen_rss {
            s.push_str(&format!("loadgen RSS  {r} KiB\n"));
        }
        if self.i.interrupted {
            s.push_str("interrupted  (partial results)\n");
        }
        s.push_str(if self.ok() {
            "result       OK\n"
        } else {
            "result       FAILED\n"
        });
        s
    }

    fn json(&self) -> Value {
        let (i, o, c) = (&self.i, self.i.o, &self.i.connected);
        json!({
            "mode": o.mode.as_str(),
            "label": o.label,
            "floor": o.floor.is_some(),
            "run": i.run,
            "ok": self.ok(),
            "interrupted": i.interrupted,
            "gateway": o.gateway.to_string(),
            "ws": o.ws,
            "sse": o.sse,
            "users": o.users,
            "tenants": o.tenants,
            "source_ips": o.source_ips,
            "loadgen_open_files_limit": i.fd_limit,
            "connect": {
                "attempted": c.total,
                "connected": c.connected,
                "failed": c.failed(),
                "failures": i.delivery.failures,
                "secs": round3(c.secs),
                "rate_per_s": c.rate().round(),
                "handshake_ms": self.lat.handshake.json_ms(),
            },
            "ended_early": i.delivery.ended,
            "publish": i.phase.report.as_ref().map(|r| json!({
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
                "floor": r.floor,
            })),
            "delivery": i.kind.map(|_| self.json_delivery()),
            "gateway_process": self.json_gateway(),
            "gateway_connections_reported": i.samples.m1.as_ref().map(|m| json!({
                "ws": gateway::sum(m, "gateway_connections{transport=\"ws\"}"),
                "sse": gateway::sum(m, "gateway_connections{transport=\"sse\"}"),
            })),
            "gateway_metrics_delta": self.f.metric_deltas,
            "instances": self.json_instances(),
            "broker_process": {
                "cpu_secs_publish_window": i.phase.broker_cpu.map(round3),
                "cpu_us_per_event": per(i.phase.broker_cpu, self.published()).map(round3),
            },
            "loadgen_rss_kib": i.loadgen_rss,
            "loadgen_process": {
                "client_cpu_secs_publish_window": i.phase.loadgen_cpu.map(|c| round3(c.0)),
                "cpu_us_per_delivery": self.f.loadgen_us_per_delivery.map(round3),
                "publisher_cpu_secs_publish_window": i.phase.loadgen_cpu.map(|c| round3(c.1)),
                "publisher_cpu_us_per_event": self.f.loadgen_publisher_us_per_event.map(round3),
            },
        })
    }

    fn json_delivery(&self) -> Value {
        let d = &self.i.delivery;
        json!({
            "expected": d.expected,
            "delivered": d.delivered,
            "lost": d.lost,
            "connections_with_loss": d.conns_with_loss,
            "duplicated": d.duplicated,
            "misrouted": d.misrouted,
            "other_runs": d.foreign,
            "resyncs": d.resyncs,
            "tail_secs": round3(self.i.phase.tail_secs),
            "latency_ms": self.lat.all.json_ms(),
            "latency_ms_ws": self.lat.ws.json_ms(),
            "latency_ms_sse": self.lat.sse.json_ms(),
        })
    }

    fn published(&self) -> u64 {
        self.i.phase.report.as_ref().map_or(0, |r| r.published)
    }

    /// Each gateway instance's CPU per event published, in `--gateway` order.
    fn instance_us_per_event(&self) -> Vec<Option<f64>> {
        let n = self.published();
        self.i
            .phase
            .instance_cpu
            .iter()
            .map(|c| per(*c, n))
            .collect()
    }

    fn json_instances(&self) -> Value {
        let o = self.i.o;
        let per_event = self.instance_us_per_event();
        Value::Array(
            self.i
                .phase
                .instance_cpu
                .iter()
                .zip(per_event)
                .enumerate()
                .map(|(n, (cpu, per_event))| {
                    json!({
                        "gateway": o.instances.get(n).map(|g| g.0.to_string()),
                        "cpu_secs_publish_window": cpu.map(round3),
                        "cpu_us_per_event": per_event.map(round3),
                    })
                })
                .collect(),
        )
    }

    fn json_gateway(&self) -> Value {
        let (s, f) = (&self.i.samples, &self.f);
        json!({
            "pid": self.i.gw_pid,
            "max_open_files": self.i.gw_files,
            "rss_before_kib": s.p0.map(|p| p.rss_kib),
            "rss_connected_kib": s.p1.map(|p| p.rss_kib),
            "rss_end_kib": s.p2.map(|p| p.rss_kib),
            "rss_per_connection_bytes": f.rss_per_conn.map(|v| v.round()),
            "cpu_secs_publish_window": f.cpu_window.map(round3),
            "cpu_us_per_delivery": f.cpu_us_per_delivery.map(round3),
            "cpu_us_per_event": f.cpu_us_per_event.map(round3),
            "cpu_secs_idle_hold": f.hold_cpu.map(round3),
        })
    }
}
