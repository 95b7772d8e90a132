//! The shipped Prometheus rules on a real Prometheus: it scrapes two real gateways, one
//! healthy and one whose broker does not exist, and must record the healthy one's
//! connections and raise `GatewayBrokerDown` for the other one only. Every metric the
//! shipped rules and Grafana dashboard use must be among the series Prometheus scraped.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{GatewayProcess, Prometheus, free_port, repo, until};
use crate::support::{Publisher, bounded, token, unique};

const RULES: &str = "deploy/prometheus/realtime-gateway.rules.yml";
const DASHBOARD: &str = "deploy/grafana/realtime-gateway.json";
const DEADLINE: Duration = Duration::from_secs(40);

/// `gateway_*` metric names in a text (recording rules are named `level:metric:ops`, so
/// they never match).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gateway_") {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let followed_by_colon = rest[at + name.len()..].starts_with(':');
        if !preceded && !followed_by_colon {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

fn alert_instances(alerts: &Value, name: &str) -> Vec<(String, String)> {
    alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| {
            (
                a["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                a["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_gateways_and_evaluates_the_shipped_rules() {
    bounded(async {
        let exchange = unique("prometheus");
        let mut healthy = GatewayProcess::new("healthy", &exchange, &[]);
        healthy.start().await;
        // Nothing listens on this port: the instance runs, serves metrics and never gets
        // a broker link.
        let dead_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
        let mut orphan =
            GatewayProcess::new("orphan", &exchange, &[("GATEWAY_AMQP_URL", &dead_broker)]);
        orphan.spawn();
        until("the orphan instance serving", DEADLINE, || async {
            orphan.http().status("/healthz").await == 200
        })
        .await;

        // One client on the healthy instance, for the recording rule to count.
        let url = format!(
            "ws://127.0.0.1:{}/ws?access_token={}",
            healthy.port,
            token("tenant-prom", "user-prom")
        );
        let (_ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

        let prom = Prometheus::start(&[healthy.port, orphan.port], &[repo(RULES)]).await;
        let healthy_instance = format!("127.0.0.1:{}", healthy.port);
        let orphan_instance = format!("127.0.0.1:{}", orphan.port);

        // The recording rule sums the healthy instance's connections.
        until(
            "instance:gateway_connections:sum of 1",
            DEADLINE,
            || async {
                prom.query("instance:gateway_connections:sum")
                    .await
                    .iter()
                    .any(|s| {
                        s["metric"]["instance"] == healthy_instance.as_str() && s["value"][1] == "1"
                    })
            },
        )
        .await;

        // The broker-down alert is active (pending for its `for:`) for the orphan only.
        until(
            "GatewayBrokerDown for the orphan instance",
            DEADLINE,
            || async {
                let alerts = prom.api("alerts").await;
                alert_instances(&alerts, "GatewayBrokerDown")
                    .iter()
                    .any(|(i, s)| *i == orphan_instance && (s == "pending" || s == "firing"))
            },
        )
        .await;
        let alerts = prom.api("alerts").await;
        assert!(
            !alert_instances(&alerts, "GatewayBrokerDown")
                .iter()
                .any(|(i, _)| *i == healthy_instance),
            "the healthy instance must not be alerted: {alerts}"
        );
        let rules = prom.api("rules").await;
        let health: Vec<&Value> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .map(|r| &r["health"])
            .collect();
        assert!(
            health.iter().all(|h| *h == "ok"),
            "every rule evaluates without error: {rules}"
        );

        // Every metric the rules and the dashboard use is one the gateway exports.
        let scraped = prom.api("label/__name__/values").await;
        let scraped: BTreeSet<String> = scraped
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for file in [RULES, DASHBOARD] {
            let text = std::fs::read_to_string(repo(file)).unwrap();
            let used = metric_names(&text);
            assert!(!used.is_empty(), "{file} uses no gateway metric?");
            let missing: Vec<&String> = used.difference(&scraped).collect();
            assert!(
                missing.is_empty(),
                "{file} uses metrics the gateway does not export: {missing:?}\n{}",
                prom.logs()
            );
        }

        prom.stop().await;
        orphan.stop().await;
        healthy.stop().await;
        Publisher::connect(&exchange).await.cleanup().await;
    })
    .await;
}

#[test]
fn metric_names_skip_recording_rules() {
    let names = metric_names(
        "sum(rate(gateway_events_delivered_total[5m])) / instance:gateway_connections:sum \
         + x_gateway_not",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["gateway_events_delivered_total"]
    );
}
