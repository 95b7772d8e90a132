//! Who receives which event, what arrives, and what malformed messages do.

use serde_json::json;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_over_both_transports() {
    bounded(async {
        for transport in BOTH {
            let gw = GatewayBuilder::new("routing").start().await;
            let publisher = Publisher::connect(&gw.exchange).await;

            let mut a = Client::as_user(&gw, transport, "tenant-1", "user-1").await;
            let mut b = Client::as_user(&gw, transport, "tenant-1", "user-2").await;
            // Same user id, other tenant: must never see tenant-1's events.
            let mut c = Client::as_user(&gw, transport, "tenant-2", "user-1").await;

            let p = |id: &str, t: Option<&str>, u: Option<&str>| envelope(id, PROGRESS, t, u);
            publisher
                .publish(PROGRESS, &p("e1", Some("tenant-1"), Some("user-1")))
                .await;
            // user_id null and absent: tenant-wide.
            let mut null_user = p("e2", Some("tenant-1"), None);
            null_user["user_id"] = json!(null);
            publisher.publish(PROGRESS, &null_user).await;
            publisher
                .publish(PROGRESS, &p("e3", Some("tenant-1"), None))
                .await;
            publisher
                .publish(PROGRESS, &p("e4", Some("tenant-2"), Some("user-1")))
                .await;
            // No usable tenant: nobody.
            publisher
                .publish(PROGRESS, &p("e5", None, Some("user-1")))
                .await;
            let mut empty_tenant = p("e6", Some(""), Some("user-1"));
            publisher.publish(PROGRESS, &empty_tenant).await;
            empty_tenant["tenant_id"] = json!(1);
            empty_tenant["event_id"] = json!("e7");
            publisher.publish(PROGRESS, &empty_tenant).await;
            // Keys outside the bindings: never reach the gateway's queue.
            publisher
                .publish(
                    "render.snapshot.ready.v1",
                    &envelope(
                        "e8",
                        "render.snapshot.ready.v1",
                        Some("tenant-1"),
                        Some("user-1"),
                    ),
                )
                .await;
            publisher
                .publish(
                    "identity.user.banned.v1",
                    &envelope("e9", "identity.user.banned.v1", Some("tenant-1"), None),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-a", Some("tenant-1"), Some("user-1")),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-b", Some("tenant-1"), Some("user-2")),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-c", Some("tenant-2"), Some("user-1")),
                )
                .await;

            assert_eq!(
                a.ids_until("mark-a").await,
                ["e1", "e2", "e3", "mark-a"],
                "{transport:?} a"
            );
            assert_eq!(
                b.ids_until("mark-b").await,
                ["e2", "e3", "mark-b"],
                "{transport:?} b"
            );
            assert_eq!(
                c.ids_until("mark-c").await,
                ["e4", "mark-c"],
                "{transport:?} c"
            );

            gw.wait_metric("gateway_events_dropped_total{reason=\"no_tenant\"}", 3.0)
                .await;
            assert_eq!(
                gw.metric("gateway_events_received_total").await,
                10.0,
                "unbound keys must not reach the queue"
            );
            publisher.cleanup().await;
            gw.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_render_job_and_notification_key_is_delivered_unchanged() {
    bounded(async {
        let gw = GatewayBuilder::new("catalog").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        let keys = [
            "render.job.queued.v1",
            "render.job.started.v1",
            "render.job.progress.v1",
            "render.job.completed.v1",
            "render.job.failed.v1",
            "render.job.cancelled.v1",
            "notification.created.v1",
            "notification.delivered.v1",
            "notification.failed.v1",
        ];
        let mut sent = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let body = envelope(&format!("k{i}"), key, Some("t"), Some("u"));
            publisher.publish(key, &body).await;
            sent.push(body);
        }
        for client in [&mut ws, &mut sse] {
            for body in &sent {
                // Fields unchanged: the whole published object comes back.
                assert_eq!(&client.next_event().await, body);
            }
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_counted_and_the_gateway_stays_up() {
    bounded(async {
        let gw = GatewayBuilder::new("malformed")
            .arg("max-event-bytes", "2048")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;

        let good = envelope("x", PROGRESS, Some("t"), Some("u"));
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let oversized = with("data", json!("x".repeat(4096)));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not_utf8", b"\xff\xfe\xfd".to_vec()),
            ("not_json", b"{not json".to_vec()),
            ("not_json", Vec::new()),
            ("not_object", b"[1,2,3]".to_vec()),
            ("not_object", b"\"render\"".to_vec()),
            ("oversized", oversized),
            ("invalid_field", with("event_id", json!(17))),
            ("invalid_field", with("user_id", json!(42))),
            ("invalid_field", with("user_id", json!(""))),
            ("invalid_field", with("event_id", json!("a\nid: forged"))),
            (
                "invalid_field",
                br#"{"event_type":"render.job.progress.v1","tenant_id":"t","user_id":"u"}"#
                    .to_vec(),
            ),
        ];
        for (_, body) in &cases {
            publisher.publish_raw(PROGRESS, body).await;
        }
        let marker = envelope("marker", PROGRESS, Some("t"), Some("u"));
        publisher.publish(PROGRESS, &marker).await;

        assert_eq!(ws.ids_until("marker").await, ["marker"]);
        assert_eq!(sse.ids_until("marker").await, ["marker"]);
        for reason in [
            "not_utf8",
            "not_json",
            "not_object",
            "oversized",
            "invalid_field",
        ] {
            let want = cases.iter().filter(|(r, _)| *r == reason).count() as f64;
            let got = gw
                .metric(&format!(
                    "gateway_events_dropped_total{{reason=\"{reason}\"}}"
                ))
                .await;
            assert_eq!(got, want, "{reason}");
        }
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 200);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    bounded(async {
        let gw = GatewayBuilder::new("health").start().await;
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 200);
        let _ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let _sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        assert_eq!(
            gw.metric("gateway_connections{transport=\"ws\"}").await,
            1.0
        );
        assert_eq!(
            gw.metric("gateway_connections{transport=\"sse\"}").await,
            1.0
        );
        assert_eq!(gw.metric("gateway_broker_connected").await, 1.0);
        let metrics = gw.metrics().await;
        for name in [
            "gateway_events_received_total",
            "gateway_events_delivered_total{transport=\"ws\"}",
            "gateway_events_dropped_total{reason=\"not_json\"}",
            "gateway_auth_failures_total{reason=\"expired\"}",
        ] {
            assert!(metrics.contains(name), "{name} missing");
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_at_start_serves_clients_but_is_not_ready() {
    bounded(async {
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let gw = GatewayBuilder::new("nobroker")
            .arg(
                "amqp-url",
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .no_wait_ready()
            .start()
            .await;
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 503);
        assert_eq!(gw.metric("gateway_broker_connected").await, 0.0);
        let _ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let _sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        gw.shutdown().await;
    })
    .await;
}
