//! Slow readers of job progress: J render jobs each get progress ticks 1..T and then a
//! completion, while every client reads at a fraction of the publish rate. With the
//! gateway's conflation a client stays connected and ends on every job's last tick and
//! completion; without it, its send queue fills and it is disconnected as slow. The
//! check of what each client received is `check`, a pure function.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::conn::ConnResult;
use crate::fleet;
use crate::gateway::{self, Metrics};
use crate::opts::Opts;
use crate::publish::{Kind, PublishReport};
use crate::scenario::{self, sleep_or_abort};
use crate::{EXIT_ENV, EXIT_FAIL, abort_on_signal, log, round3, run_id};

/// `event_type` and routing key of a job's completion (progress uses `--routing-key`).
pub const COMPLETED: &str = "render.job.completed.v1";

/// What event `seq` of a slow run is: every job's progress ticks 1..=T, interleaved
/// (tick 1 of jobs 0..J, then tick 2, ...), then every job's completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Progress { job: u64, tick: u64 },
    Completed { job: u64 },
}

impl Step {
    pub fn of(o: &Opts, seq: u64) -> Step {
        Step::at(o.jobs, o.ticks, seq)
    }

    fn at(jobs: u64, ticks: u64, seq: u64) -> Step {
        let jobs = jobs.max(1);
        if seq < jobs * ticks {
            Step::Progress {
                job: seq % jobs,
                tick: seq / jobs + 1,
            }
        } else {
            Step::Completed {
                job: (seq - jobs * ticks) % jobs,
            }
        }
    }

    pub fn job(self) -> u64 {
        match self {
            Step::Progress { job, .. } | Step::Completed { job } => job,
        }
    }
}

/// Jobs of user `u` (job j is for user j % users).
pub fn jobs_of_user(jobs: u64, users: u64, u: u64) -> u64 {
    let users = users.max(1);
    jobs / users + u64::from(u < jobs % users)
}

/// What one client's events say about its jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Jobs of the client's user.
    pub jobs: u64,
    /// Of those, jobs whose last two events received were the last tick, then the
    /// completion.
    pub final_state: u64,
    /// Progress events published for those jobs, and received.
    pub progress_published: u64,
    pub progress_received: u64,
    pub completions: u64,
    /// Events received out of their job's published order, or twice.
    pub out_of_order: u64,
    /// Events of this run for another user's jobs, or outside the plan.
    pub misrouted: u64,
}

impl Verdict {
    /// Every job ended on its final state, and every job's events were a subsequence of
    /// what was published for it.
    pub fn complete(&self) -> bool {
        self.final_state == self.jobs && self.out_of_order == 0 && self.misrouted == 0
    }
}

/// Checks the events one client of user `user` received (`seqs`, in arrival order) against
/// a plan of `jobs` jobs with `ticks` progress events each, over `users` users: per job, the
/// events must come in their published order (a subsequence of it) and end with the last
/// tick, then the completion.
pub fn check(jobs: u64, ticks: u64, users: u64, user: u64, seqs: &[u32]) -> Verdict {
    let users = users.max(1);
    let planned = jobs * (ticks + 1);
    let mine = jobs_of_user(jobs, users, user);
    let mut v = Verdict {
        jobs: mine,
        progress_published: mine * ticks,
        ..Verdict::default()
    };
    // Per job: the last two events received (seq), newest last.
    let mut tail: Vec<[Option<u64>; 2]> = vec![[None, None]; jobs as usize];
    for &s in seqs {
        let seq = u64::from(s);
        let step = Step::at(jobs, ticks, seq);
        if seq >= planned || step.job() % users != user {
            v.misrouted += 1;
            continue;
        }
        match step {
            Step::Progress { .. } => v.progress_received += 1,
            Step::Completed { .. } => v.completions += 1,
        }
        let t = &mut tail[step.job() as usize];
        if t[1].is_some_and(|last| seq <= last) {
            v.out_of_order += 1;
            continue;
        }
        *t = [t[1], Some(seq)];
    }
    let last_tick = |job: u64| ticks.saturating_sub(1) * jobs + job;
    let completion = |job: u64| jobs * ticks + job;
    v.final_state = (0..jobs)
        .filter(|j| j % users == user)
        .filter(|&j| tail[j as usize] == [Some(last_tick(j)), Some(completion(j))])
        .count() as u64;
    v
}

/// Waits until every connected client has its jobs' completions or ended, the tail
/// timeout, or an abort; seconds waited.
async fn wait_for_finish(
    o: &Opts,
    fleet: &fleet::Fleet,
    abort: &mut tokio::sync::watch::Receiver<bool>,
) -> f64 {
    let start = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let finished = fleet.shared.finished.load(Ordering::Relaxed);
        if finished >= fleet.connected as u64
            || start.elapsed() >= o.tail_timeout
            || *abort.borrow()
        {
            break;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            log(format!(
                "reading slowly: {finished} of {} clients have every completion or ended",
                fleet.connected
            ));
        }
        sleep_or_abort(Duration::from_millis(20), abort).await;
    }
    start.elapsed().as_secs_f64()
}

/// `slow`: connect, publish the jobs, let the clients read slowly, check, report.
pub async fn run(o: Opts) -> u8 {
    let setup = match scenario::prepare(&o, Some(Kind::Slow)).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(source) = setup.source else {
        return EXIT_ENV;
    };
    let mut abort = abort_on_signal();
    let run = run_id();
    let read_rate = o.read_rate.unwrap_or(o.rate / 10.0);
    log(format!(
        "run {run}: slow mode, {} WS + {} SSE to {} (users {}); {} jobs x {} ticks + completion \
         = {} events at {}/s; clients read {read_rate}/s each",
        o.ws,
        o.sse,
        o.gateway,
        o.users,
        o.jobs,
        o.ticks,
        o.planned_events(),
        o.rate
    ));
    let fleet = match fleet::connect_all(&o, &run, Some(Kind::Slow), &abort).await {
        Ok(f) => f,
        Err(e) => {
            log(e);
            return EXIT_ENV;
        }
    };
    sleep_or_abort(o.settle, &mut abort).await;
    let m1 = scenario::metrics(&o).await;
    let (rep, tail_secs) = if fleet.connected > 0 && !*abort.borrow() {
        let rep = source.run(&o, &run, Kind::Slow, abort.clone()).await;
        log(format!(
            "published {} of {} in {:.1} s; waiting for the slow readers (at most {:.0} s)",
            rep.published,
            rep.planned,
            rep.secs,
            o.tail_timeout.as_secs_f64()
        ));
        let tail = wait_for_finish(&o, &fleet, &mut abort).await;
        (rep, tail)
    } else {
        (PublishReport::default(), 0.0)
    };
    let m2 = scenario::metrics(&o).await;
    let connected = fleet.connected;
    let results = fleet::collect(fleet).await;
    source.close().await;
    let report = SlowReport::new(&o, &run, read_rate, &rep, tail_secs, &results, m1, m2);
    let ok = report.ok(connected) && !*abort.borrow();
    report.emit(&o, ok);
    if ok { 0 } else { EXIT_FAIL }
}

/// One client's outcome.
struct Client {
    index: usize,
    ws: bool,
    user: usize,
    /// Why it ended before the loadgen closed it; `None`: connected to the end.
    ended: Option<String>,
    verdict: Verdict,
}

struct SlowReport {
    run: String,
    read_rate: f64,
    publish: PublishReport,
    tail_secs: f64,
    clients: Vec<Client>,
    connect_failed: Vec<String>,
    conflated: Option<f64>,
    slow_disconnects: Option<f64>,
    slow_dropped: Option<f64>,
}

/// Growth of a counter (all its label sets, or the one given) between two scrapes.
fn grew(m1: &Option<Metrics>, m2: &Option<Metrics>, series: &str) -> Option<f64> {
    let (a, b) = (m1.as_ref()?, m2.as_ref()?);
    let get = |m: &Metrics| {
        if series.contains('{') {
            m.get(series).copied().unwrap_or(0.0)
        } else {
            gateway::sum(m, series)
        }
    };
    Some(get(b) - get(a))
}

impl SlowReport {
    #[allow(clippy::too_many_arguments)]
    fn new(
        o: &Opts,
        run: &str,
        read_rate: f64,
        publish: &PublishReport,
        tail_secs: f64,
        results: &[ConnResult],
        m1: Option<Metrics>,
        m2: Option<Metrics>,
    ) -> SlowReport {
        let mut clients = Vec::new();
        let mut connect_failed = Vec::new();
        for (index, r) in results.iter().enumerate() {
            match &r.connect {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    connect_failed.push(e.clone());
                    continue;
                }
                None => continue,
            }
            clients.push(Client {
                index,
                ws: r.ws,
                user: r.user,
                ended: r.ended.clone(),
                verdict: check(o.jobs, o.ticks, o.users as u64, r.user as u64, &r.seqs),
            });
        }
        SlowReport {
            run: run.to_owned(),
            read_rate,
            publish: publish.clone(),
            tail_secs,
            clients,
            connect_failed,
            conflated: grew(&m1, &m2, "gateway_events_conflated_total"),
            slow_disconnects: grew(
                &m1,
                &m2,
                r#"gateway_disconnects_total{reason="slow_client"}"#,
            ),
            slow_dropped: grew(
                &m1,
                &m2,
                r#"gateway_deliveries_dropped_total{reason="slow_client"}"#,
            ),
        }
    }

    fn stayed(&self) -> usize {
        self.clients.iter().filter(|c| c.ended.is_none()).count()
    }

    fn complete(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.ended.is_none() && c.verdict.complete())
            .count()
    }

    fn ok(&self, connected: usize) -> bool {
        self.publish.ok()
            && self.connect_failed.is_empty()
            && connected > 0
            && self.complete() == self.clients.len()
    }

    fn emit(&self, o: &Opts, ok: bool) {
        let n = self.clients.len();
        let received: u64 = self
            .clients
            .iter()
            .map(|c| c.verdict.progress_received)
            .sum();
        let published: u64 = self
            .clients
            .iter()
            .map(|c| c.verdict.progress_published)
            .sum();
        let opt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}"));
        let mut s = format!(
            "\n== loadgen slow (run {}) against {} ==\n\
             published    {}/{} events ({} jobs x {} ticks + completions) in {:.2} s at {}/s; \
             clients read {}/s; tail {:.1} s\n\
             clients      {n} connected ({} WS, {} SSE), {} connect failures; {} stayed \
             connected, {} ended on every job's final state in order\n\
             progress     received {received} of {published} published for the clients' jobs \
             ({:.1} %)\n\
             gateway      conflated {}, slow_client disconnects {}, slow_client deliveries \
             dropped {}\n",
            self.run,
            o.gateway,
            self.publish.published,
            self.publish.planned,
            o.jobs,
            o.ticks,
            self.publish.secs,
            o.rate,
            self.read_rate,
            self.tail_secs,
            o.ws.min(n),
            self.clients.iter().filter(|c| !c.ws).count(),
            self.connect_failed.len(),
            self.stayed(),
            self.complete(),
            100.0 * received as f64 / published.max(1) as f64,
            opt(self.conflated),
            opt(self.slow_disconnects),
            opt(self.slow_dropped),
        );
        for c in self.clients.iter().take(40) {
            let v = &c.verdict;
            s.push_str(&format!(
                "  client {:>3} {} user {}: {}; final state {}/{} jobs; progress {}/{}; \
                 completions {}; out of order {}, misrouted {}\n",
                c.index,
                if c.ws { "WS " } else { "SSE" },
                c.user,
                c.ended.as_deref().unwrap_or("connected to the end"),
                v.final_state,
                v.jobs,
                v.progress_received,
                v.progress_published,
                v.completions,
                v.out_of_order,
                v.misrouted,
            ));
        }
        if n > 40 {
            s.push_str(&format!(
                "  ... and {} more clients (see the JSON)\n",
                n - 40
            ));
        }
        s.push_str(&format!(
            "result       {}\n",
            if ok {
                "OK"
            } else {
                "NOT every client stayed and ended on every final state"
            }
        ));
        eprint!("{s}");
        let line = self.json(o, ok).to_string();
        println!("{line}");
        if let Some(path) = &o.json_out
            && let Err(e) = std::fs::write(path, format!("{line}\n"))
        {
            log(format!("cannot write {path}: {e}"));
        }
    }

    fn json(&self, o: &Opts, ok: bool) -> Value {
        let clients: Vec<Value> = self
            .clients
            .iter()
            .map(|c| {
                let v = &c.verdict;
                json!({
                    "index": c.index,
                    "transport": if c.ws { "ws" } else { "sse" },
                    "user": c.user,
                    "stayed_connected": c.ended.is_none(),
                    "ended": c.ended,
                    "jobs": v.jobs,
                    "jobs_final_state": v.final_state,
                    "complete": c.ended.is_none() && v.complete(),
                    "progress_published": v.progress_published,
                    "progress_received": v.progress_received,
                    "completions": v.completions,
                    "out_of_order": v.out_of_order,
                    "misrouted": v.misrouted,
                })
            })
            .collect();
        json!({
            "mode": "slow",
            "label": o.label,
            "run": self.run,
            "ok": ok,
            "jobs": o.jobs,
            "ticks": o.ticks,
            "rate": o.rate,
            "read_rate": self.read_rate,
            "recv_buffer": o.recv_buffer,
            "users": o.users,
            "publish": {
                "planned": self.publish.planned,
                "published": self.publish.published,
                "confirmed": self.publish.confirmed,
                "secs": round3(self.publish.secs),
                "max_lag_ms": round3(self.publish.max_lag_ms),
                "errors": self.publish.errors,
            },
            "tail_secs": round3(self.tail_secs),
            "connected": self.clients.len(),
            "connect_failures": self.connect_failed,
            "stayed_connected": self.stayed(),
            "complete": self.complete(),
            "progress_published": self.clients.iter().map(|c| c.verdict.progress_published).sum::<u64>(),
            "progress_received": self.clients.iter().map(|c| c.verdict.progress_received).sum::<u64>(),
            "gateway": {
                "events_conflated": self.conflated,
                "disconnects_slow_client": self.slow_disconnects,
                "deliveries_dropped_slow_client": self.slow_dropped,
            },
            "clients": clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seq of job `j`'s tick `t` (1-based) in a plan of `jobs` jobs with `ticks` ticks.
    fn tick(jobs: u64, j: u64, t: u64) -> u32 {
        ((t - 1) * jobs + j) as u32
    }

    fn done(jobs: u64, ticks: u64, j: u64) -> u32 {
        (jobs * ticks + j) as u32
    }

    #[test]
    fn steps_interleave_ticks_then_completions() {
        assert_eq!(Step::at(3, 2, 0), Step::Progress { job: 0, tick: 1 });
        assert_eq!(Step::at(3, 2, 4), Step::Progress { job: 1, tick: 2 });
        assert_eq!(Step::at(3, 2, 6), Step::Completed { job: 0 });
        assert_eq!(Step::at(3, 2, 8), Step::Completed { job: 2 });
        assert_eq!(jobs_of_user(5, 2, 0), 3);
        assert_eq!(jobs_of_user(5, 2, 1), 2);
    }

    #[test]
    fn every_event_in_order_is_complete() {
        let (jobs, ticks) = (3, 4);
        let seqs: Vec<u32> = (0..jobs * (ticks + 1)).map(|s| s as u32).collect();
        let v = check(jobs, ticks, 1, 0, &seqs);
        assert!(v.complete(), "{v:?}");
        assert_eq!((v.progress_received, v.progress_published), (12, 12));
        assert_eq!((v.completions, v.final_state), (3, 3));
    }

    #[test]
    fn conflated_progress_is_complete_when_each_job_ends_on_its_last_tick() {
        let (jobs, ticks) = (2, 5);
        let seqs = [
            tick(jobs, 0, 1),
            tick(jobs, 1, 1),
            tick(jobs, 1, 3),
            tick(jobs, 0, 5),
            tick(jobs, 1, 5),
            done(jobs, ticks, 0),
            done(jobs, ticks, 1),
        ];
        let v = check(jobs, ticks, 1, 0, &seqs);
        assert!(v.complete(), "{v:?}");
        assert_eq!((v.progress_received, v.progress_published), (5, 10));
    }

    #[test]
    fn a_job_without_its_last_tick_or_completion_is_not_final() {
        let (jobs, ticks) = (2, 3);
        // Job 1 misses its last tick; job 0 misses its completion.
        let seqs = [tick(jobs, 0, 3), tick(jobs, 1, 2), done(jobs, ticks, 1)];
        let v = check(jobs, ticks, 1, 0, &seqs);
        assert_eq!(v.final_state, 0);
        assert!(!v.complete());
        // A disconnected client that saw only early ticks.
        let v = check(jobs, ticks, 1, 0, &[tick(jobs, 0, 1), tick(jobs, 1, 1)]);
        assert_eq!(
            (v.final_state, v.completions, v.progress_received),
            (0, 0, 2)
        );
    }

    #[test]
    fn progress_after_the_completion_or_out_of_order_fails() {
        let (jobs, ticks) = (1, 3);
        // The last tick arrives again after the completion: a job's events out of order.
        let seqs = [tick(jobs, 0, 3), done(jobs, ticks, 0), tick(jobs, 0, 3)];
        let v = check(jobs, ticks, 1, 0, &seqs);
        assert_eq!(v.out_of_order, 1);
        assert!(!v.complete());
        // An older tick after a newer one of the same job.
        let seqs = [
            tick(jobs, 0, 2),
            tick(jobs, 0, 1),
            tick(jobs, 0, 3),
            done(jobs, ticks, 0),
        ];
        let v = check(jobs, ticks, 1, 0, &seqs);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.final_state, 1);
        assert!(!v.complete());
    }

    #[test]
    fn the_order_between_jobs_does_not_matter_to_a_job() {
        let (jobs, ticks) = (2, 2);
        // Job 1 finishes before job 0's last tick: each job's own order is kept.
        let seqs = [
            tick(jobs, 1, 2),
            done(jobs, ticks, 1),
            tick(jobs, 0, 2),
            done(jobs, ticks, 0),
        ];
        assert!(check(jobs, ticks, 1, 0, &seqs).complete());
    }

    #[test]
    fn other_users_jobs_are_misrouted() {
        let (jobs, ticks) = (4, 1);
        // User 1 of 2 has jobs 1 and 3.
        let seqs = [
            tick(jobs, 1, 1),
            tick(jobs, 3, 1),
            done(jobs, ticks, 1),
            done(jobs, ticks, 3),
        ];
        let v = check(jobs, ticks, 2, 1, &seqs);
        assert!(v.complete(), "{v:?}");
        assert_eq!((v.jobs, v.progress_published), (2, 2));
        let v = check(jobs, ticks, 2, 0, &seqs);
        assert_eq!(v.misrouted, 4);
        assert!(!v.complete());
        // Beyond the plan.
        assert_eq!(check(jobs, ticks, 1, 0, &[99]).misrouted, 1);
    }
}
