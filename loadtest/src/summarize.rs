//! `loadgen summarize FILE...`: the comparison table of the runs `compare.sh` wrote. For
//! each scenario and system: the median over the runs with its range, and the CPU cost
//! and the p99 as ratios to the floors' figures *of the same run*, so a busy machine
//! shifts both sides of each ratio alike. Two floors: the write floor (`floor`, one
//! `write()` per delivery) and the ingest floor (`ingest-floor`, a bare AMQP consumer:
//! `livepath --client bare`); each scenario's CPU is read against the work it has to do
//! (see [`floors_of`]).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::log;

/// The figures of one run of one system, from its JSON report.
#[derive(Clone, Debug, Default, PartialEq)]
struct Run {
    scenario: String,
    system: String,
    run: String,
    ok: bool,
    /// Server CPU per delivery, or per event for unrouted (nothing is delivered there).
    cpu_us: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    lost: u64,
    loadgen_us: Option<f64>,
    rss_per_conn: Option<f64>,
    /// The floor's own fan-out: first to last write of one event, p99 over events, ms.
    floor_loop_p99_ms: Option<f64>,
    /// Deliveries per event published, to read the ingest floor's cost per event as a
    /// cost per delivery.
    deliveries_per_event: Option<f64>,
}

/// The write floor's system name in compare.sh.
const WRITE_FLOOR: &str = "floor";
/// The ingest floor's.
const INGEST_FLOOR: &str = "ingest-floor";

/// The floors whose CPU a scenario's CPU is divided by: an unrouted event is only
/// ingested; a targeted event is ingested and written once; a broadcast is a few events
/// written to every socket, its ingest negligible beside that.
fn floors_of(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "unrouted" => &[INGEST_FLOOR],
        "targeted" => &[INGEST_FLOOR, WRITE_FLOOR],
        _ => &[WRITE_FLOOR],
    }
}

/// A floor's own row: a whole floor of its scenario, or a part of one.
fn is_floor(system: &str) -> bool {
    system == WRITE_FLOOR || system == INGEST_FLOOR
}

fn parse(v: &Value) -> Option<Run> {
    let label = v["label"].as_str()?;
    let mut parts = label.splitn(3, '/');
    let (scenario, system, run) = (parts.next()?, parts.next()?, parts.next()?);
    if v["mode"] == "livepath" {
        return Some(parse_livepath(v, scenario, system, run));
    }
    let gw = &v["gateway_process"];
    let cpu_us = if v["mode"] == "unrouted" {
        gw["cpu_us_per_event"].as_f64()
    } else {
        gw["cpu_us_per_delivery"].as_f64()
    };
    // Unrouted delivers one closing event: no latency or per-message figure to speak of.
    let unrouted = v["mode"] == "unrouted";
    let lat = if unrouted {
        &Value::Null
    } else {
        &v["delivery"]["latency_ms"]
    };
    let loadgen_us = v["loadgen_process"]["cpu_us_per_delivery"]
        .as_f64()
        .filter(|_| !unrouted);
    Some(Run {
        scenario: scenario.to_owned(),
        system: system.to_owned(),
        run: run.to_owned(),
        ok: v["ok"].as_bool().unwrap_or(false),
        cpu_us,
        p50_ms: lat["p50"].as_f64(),
        p99_ms: lat["p99"].as_f64(),
        lost: v["delivery"]["lost"].as_u64().unwrap_or(0),
        loadgen_us,
        rss_per_conn: gw["rss_per_connection_bytes"].as_f64(),
        floor_loop_p99_ms: v["publish"]["floor"]["write_loop_ms"]["p99"].as_f64(),
        deliveries_per_event: v["delivery"]["delivered"]
            .as_f64()
            .zip(v["publish"]["published"].as_f64())
            .filter(|(_, p)| *p > 0.0)
            .map(|(d, p)| d / p),
    })
}

/// A `livepath` report (the ingest floor): its consumer's CPU per event and latency.
fn parse_livepath(v: &Value, scenario: &str, system: &str, run: &str) -> Run {
    Run {
        scenario: scenario.to_owned(),
        system: system.to_owned(),
        run: run.to_owned(),
        ok: v["ok"].as_bool().unwrap_or(false),
        cpu_us: v["consumer"]["cpu_us_per_event"].as_f64(),
        p50_ms: v["latency_ms"]["p50"].as_f64(),
        p99_ms: v["latency_ms"]["p99"].as_f64(),
        lost: v["lost"].as_u64().unwrap_or(0),
        ..Run::default()
    }
}

/// Median (mean of the middle two for an even count) and range.
fn spread(mut xs: Vec<f64>) -> Option<(f64, f64, f64)> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Some((median, xs[0], xs[n - 1]))
}

fn show(s: Option<(f64, f64, f64)>, unit: &str) -> String {
    let f = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    match s {
        Some((m, lo, hi)) if lo == hi => format!("{}{unit}", f(m)),
        Some((m, lo, hi)) => format!("{}{unit} [{}–{}]", f(m), f(lo), f(hi)),
        None => "n/a".into(),
    }
}

/// The run of `system` in the same scenario and run as `r`.
fn same_run<'a>(runs: &'a [Run], r: &Run, system: &str) -> Option<&'a Run> {
    runs.iter()
        .find(|x| x.system == system && x.scenario == r.scenario && x.run == r.run)
}

/// The CPU floor of `r`, in its own unit (per event for unrouted, else per delivery):
/// the sum of its scenario's floors in the same run; `None` when one is missing.
fn cpu_floor(runs: &[Run], r: &Run) -> Option<f64> {
    floors_of(&r.scenario)
        .iter()
        .map(|floor| {
            let cost = same_run(runs, r, floor)?.cpu_us?;
            // The ingest floor's cost is per event; spread it over the deliveries.
            Some(if *floor == INGEST_FLOOR && r.scenario != "unrouted" {
                cost / r.deliveries_per_event.filter(|d| *d > 0.0).unwrap_or(1.0)
            } else {
                cost
            })
        })
        .sum()
}

/// Per-run ratios of the CPU to the same run's floors ([`floors_of`]).
fn cpu_ratios(runs: &[Run], of: &[&Run]) -> Vec<f64> {
    of.iter()
        .filter_map(|r| {
            let base = cpu_floor(runs, r)?;
            Some(r.cpu_us? / base).filter(|_| base > 0.0)
        })
        .collect()
}

/// Per-run ratios of the p99 to the same run's write floor: the latency clients see.
fn p99_ratios(runs: &[Run], of: &[&Run]) -> Vec<f64> {
    of.iter()
        .filter_map(|r| {
            let base = same_run(runs, r, WRITE_FLOOR)?.p99_ms?;
            Some(r.p99_ms? / base).filter(|_| base > 0.0)
        })
        .collect()
}

const SYSTEMS: [&str; 4] = [INGEST_FLOOR, WRITE_FLOOR, "gateway", "node"];

fn table(runs: &[Run]) -> String {
    // compare.sh's order first, then any other scenario in the order met.
    let mut scenarios: Vec<&str> = [
        "targeted",
        "broadcast100",
        "broadcast50",
        "unrouted",
        "idle",
    ]
    .into_iter()
    .filter(|s| runs.iter().any(|r| r.scenario == *s))
    .collect();
    for r in runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let mut out = String::from(
        "| scenario | system | runs ok | CPU µs per delivery (unrouted, ingest-floor: per event) | × floor (unrouted: ingest; targeted: ingest + write; broadcast: write) | p50 ms | p99 ms | p99 × write floor | lost | loadgen µs per message | KiB per connection |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut groups: BTreeMap<(usize, usize, &str), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let s = scenarios.iter().position(|x| *x == r.scenario).unwrap_or(0);
        let y = SYSTEMS
            .iter()
            .position(|x| *x == r.system)
            .unwrap_or(SYSTEMS.len());
        groups.entry((s, y, &r.system)).or_default().push(r);
    }
    for ((s, _, system), of) in &groups {
        let col = |f: fn(&Run) -> Option<f64>| spread(of.iter().filter_map(|r| f(r)).collect());
        // A floor's row: 1 when it is its scenario's whole floor, – when a part of it.
        let floor_cell = |whole: bool| if whole { "1" } else { "–" }.to_owned();
        let whole_floor = floors_of(scenarios[*s]) == [*system];
        out.push_str(&format!(
            "| {} | {system} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            scenarios[*s],
            of.iter().filter(|r| r.ok).count(),
            of.len(),
            show(col(|r| r.cpu_us), ""),
            if is_floor(system) {
                floor_cell(whole_floor)
            } else {
                show(spread(cpu_ratios(runs, of)), "x")
            },
            show(col(|r| r.p50_ms), ""),
            show(col(|r| r.p99_ms), ""),
            if is_floor(system) {
                floor_cell(*system == WRITE_FLOOR)
            } else {
                show(spread(p99_ratios(runs, of)), "x")
            },
            of.iter().map(|r| r.lost).sum::<u64>(),
            show(col(|r| r.loadgen_us), ""),
            show(col(|r| r.rss_per_conn.map(|b| b / 1024.0)), ""),
        ));
    }
    out
}

/// The floor's write loop per event, server side: how long its bare writes take to reach
/// the last recipient, without the clients' side of the latency.
fn floor_loops(runs: &[Run]) -> String {
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for r in runs.iter().filter(|r| r.system == WRITE_FLOOR) {
        if seen.contains(&r.scenario.as_str()) {
            continue;
        }
        seen.push(&r.scenario);
        let loops = runs
            .iter()
            .filter(|x| x.system == WRITE_FLOOR && x.scenario == r.scenario)
            .filter_map(|x| x.floor_loop_p99_ms)
            .collect();
        out.push_str(&format!(
            "\nfloor {}: write loop per event (first to last write), p99 {} ms",
            r.scenario,
            show(spread(loops), "")
        ));
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

pub fn main(files: &[String]) -> u8 {
    let mut runs = Vec::new();
    for f in files {
        let parsed = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t.trim()).ok())
            .and_then(|v| parse(&v));
        match parsed {
            Some(r) => runs.push(r),
            None => log(format!(
                "summarize: {f}: no labelled loadgen report; skipped"
            )),
        }
    }
    if runs.is_empty() {
        log("summarize: nothing to summarize");
        return crate::EXIT_USAGE;
    }
    print!("{}", table(&runs));
    print!("{}", floor_loops(&runs));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, system: &str, run: &str, cpu: f64, p99: f64) -> Run {
        Run {
            scenario: scenario.into(),
            system: system.into(),
            run: run.into(),
            ok: true,
            cpu_us: Some(cpu),
            p99_ms: Some(p99),
            ..Run::default()
        }
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(vec![]), None);
        assert_eq!(show(Some((2.0, 1.0, 3.0)), "x"), "2.00x [1.00–3.00]");
    }

    #[test]
    fn each_scenario_is_read_against_its_own_floors_of_the_same_run() {
        let mut runs = vec![
            run("targeted", "ingest-floor", "1", 4.0, 1.0),
            run("targeted", "floor", "1", 6.0, 1.0),
            run("targeted", "ingest-floor", "2", 8.0, 1.0),
            run("targeted", "floor", "2", 12.0, 2.0),
            run("targeted", "gateway", "1", 30.0, 5.0),
            run("targeted", "gateway", "2", 40.0, 4.0),
            run("unrouted", "ingest-floor", "1", 2.0, 0.5),
            run("unrouted", "gateway", "1", 5.0, 0.0),
            run("broadcast100", "floor", "1", 1.0, 10.0),
            run("broadcast100", "gateway", "1", 3.0, 30.0),
        ];
        // Targeted: ingest + write floor of the same run.
        let gw: Vec<&Run> = runs[4..6].iter().collect();
        assert_eq!(cpu_ratios(&runs, &gw), vec![3.0, 2.0]);
        // The latency a client sees: against the write floor alone.
        assert_eq!(p99_ratios(&runs, &gw), vec![5.0, 2.0]);
        // Unrouted: the ingest floor alone; broadcast: the write floor alone.
        let un: Vec<&Run> = runs[7..8].iter().collect();
        assert_eq!(cpu_ratios(&runs, &un), vec![2.5]);
        let bc: Vec<&Run> = runs[9..].iter().collect();
        assert_eq!(cpu_ratios(&runs, &bc), vec![3.0]);
        let t = table(&runs);
        assert!(t.contains("| targeted | gateway | 2/2 | 35.0 [30.0–40.0] | 2.50x [2.00–3.00] |"));
        assert!(
            t.contains("| targeted | ingest-floor | 2/2 | 6.00 [4.00–8.00] | – |"),
            "{t}"
        );
        assert!(
            t.contains("| unrouted | ingest-floor | 1/1 | 2.00 | 1 |"),
            "{t}"
        );
        assert!(
            t.contains("| unrouted | gateway | 1/1 | 5.00 | 2.50x |"),
            "{t}"
        );
        // A floor missing from a run: no ratio rather than a wrong one.
        runs.retain(|r| !(r.system == "ingest-floor" && r.run == "2"));
        assert_eq!(
            cpu_ratios(&runs, &runs[3..5].iter().collect::<Vec<_>>()),
            vec![3.0]
        );
    }

    #[test]
    fn the_ingest_floor_is_spread_over_the_deliveries_of_an_event() {
        let mut gw = run("targeted", "gateway", "1", 10.0, 1.0);
        gw.deliveries_per_event = Some(2.0);
        let runs = vec![
            run("targeted", "ingest-floor", "1", 4.0, 1.0),
            run("targeted", "floor", "1", 3.0, 1.0),
            gw,
        ];
        assert_eq!(cpu_floor(&runs, &runs[2]), Some(5.0), "4 / 2 + 3");
    }

    #[test]
    fn reads_the_ingest_floor_report() {
        let v: Value = serde_json::from_str(
            r#"{"label":"unrouted/ingest-floor/1","mode":"livepath","ok":true,"lost":0,
                "consumer":{"cpu_us_per_event":1.5},"latency_ms":{"p50":0.4,"p99":2.0}}"#,
        )
        .expect("json");
        let r = parse(&v).expect("a run");
        assert_eq!(
            (r.system.as_str(), r.cpu_us, r.p99_ms),
            ("ingest-floor", Some(1.5), Some(2.0))
        );
    }

    #[test]
    fn reads_the_loadgen_report() {
        let v: Value = serde_json::from_str(
            r#"{"label":"broadcast100/node/2","mode":"broadcast","ok":true,
                "gateway_process":{"cpu_us_per_delivery":9.5,"cpu_us_per_event":95000.0},
                "delivery":{"lost":0,"delivered":1000,"latency_ms":{"p50":20.0,"p99":150.0}},
                "publish":{"published":10},
                "loadgen_process":{"cpu_us_per_delivery":4.0}}"#,
        )
        .expect("json");
        let r = parse(&v).expect("a run");
        assert_eq!(
            (r.scenario.as_str(), r.system.as_str(), r.run.as_str()),
            ("broadcast100", "node", "2")
        );
        assert_eq!(
            (r.cpu_us, r.p99_ms, r.loadgen_us),
            (Some(9.5), Some(150.0), Some(4.0))
        );
        assert_eq!(r.deliveries_per_event, Some(100.0));
    }
}
