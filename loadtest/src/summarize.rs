//! `loadgen summarize FILE...`: the comparison table of the runs `compare.sh` wrote. For
//! each scenario and system: the median over the runs with its range, and the CPU cost
//! and the p99 as ratios to the floor's figures *of the same run*, so a busy machine
//! shifts both sides of each ratio alike.

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
}

fn parse(v: &Value) -> Option<Run> {
    let label = v["label"].as_str()?;
    let mut parts = label.splitn(3, '/');
    let (scenario, system, run) = (parts.next()?, parts.next()?, parts.next()?);
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
    })
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

/// Per-run ratios of `field` to the same run's floor (of this scenario, else of
/// `targeted`, the per-delivery cost unrouted events are read against).
fn ratios(runs: &[Run], of: &[&Run], field: fn(&Run) -> Option<f64>) -> Vec<f64> {
    let floor_of = |scenario: &str, run: &str| {
        runs.iter()
            .find(|r| r.system == "floor" && r.scenario == scenario && r.run == run)
            .and_then(field)
    };
    of.iter()
        .filter_map(|r| {
            let base = floor_of(&r.scenario, &r.run).or_else(|| floor_of("targeted", &r.run))?;
            Some(field(r)? / base).filter(|_| base > 0.0)
        })
        .collect()
}

const SYSTEMS: [&str; 3] = ["floor", "gateway", "node"];

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
        "| scenario | system | runs ok | CPU µs per delivery (unrouted: per event) | × floor | p50 ms | p99 ms | p99 × floor | lost | loadgen µs per message | KiB per connection |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
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
        let own_floor = *system == "floor";
        out.push_str(&format!(
            "| {} | {system} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            scenarios[*s],
            of.iter().filter(|r| r.ok).count(),
            of.len(),
            show(col(|r| r.cpu_us), ""),
            if own_floor {
                "1".into()
            } else {
                show(spread(ratios(runs, of, |r| r.cpu_us)), "x")
            },
            show(col(|r| r.p50_ms), ""),
            show(col(|r| r.p99_ms), ""),
            if own_floor {
                "1".into()
            } else {
                show(spread(ratios(runs, of, |r| r.p99_ms)), "x")
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
    for r in runs.iter().filter(|r| r.system == "floor") {
        if seen.contains(&r.scenario.as_str()) {
            continue;
        }
        seen.push(&r.scenario);
        let loops = runs
            .iter()
            .filter(|x| x.system == "floor" && x.scenario == r.scenario)
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
    fn ratios_pair_each_run_with_its_own_floor() {
        let runs = vec![
            run("targeted", "floor", "1", 10.0, 1.0),
            run("targeted", "floor", "2", 20.0, 2.0),
            run("targeted", "gateway", "1", 30.0, 5.0),
            run("targeted", "gateway", "2", 40.0, 4.0),
            run("unrouted", "gateway", "1", 5.0, 0.0),
        ];
        let gw: Vec<&Run> = runs[2..4].iter().collect();
        assert_eq!(ratios(&runs, &gw, |r| r.cpu_us), vec![3.0, 2.0]);
        assert_eq!(ratios(&runs, &gw, |r| r.p99_ms), vec![5.0, 2.0]);
        // Unrouted has no floor of its own: read against the targeted delivery.
        let un: Vec<&Run> = runs[4..].iter().collect();
        assert_eq!(ratios(&runs, &un, |r| r.cpu_us), vec![0.5]);
        let t = table(&runs);
        assert!(t.contains("| targeted | gateway | 2/2 | 35.0 [30.0–40.0] | 2.50x [2.00–3.00] |"));
    }

    #[test]
    fn reads_the_loadgen_report() {
        let v: Value = serde_json::from_str(
            r#"{"label":"broadcast100/node/2","mode":"broadcast","ok":true,
                "gateway_process":{"cpu_us_per_delivery":9.5,"cpu_us_per_event":95000.0},
                "delivery":{"lost":0,"latency_ms":{"p50":20.0,"p99":150.0}},
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
    }
}
