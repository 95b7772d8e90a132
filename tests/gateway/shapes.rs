//! Other systems' event shapes, bridged by configuration alone: the shipped examples in
//! `config/` are loaded as the environment, each system's real envelope and routing keys
//! are published, and who receives what is checked.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use super::support::*;

/// Connects with a token for `sub` (and the tenant claim when given).
async fn client(gw: &Gateway, t: Transport, tenant: Option<&str>, user: &str) -> Client {
    let mut c = json!({"sub": user, "exp": now() + 3600});
    if let Some(tenant) = tenant {
        c["tenant_id"] = json!(tenant);
    }
    Client::connect(gw, t, Auth::Bearer(sign(&Signer::Hs256(SECRET), &c)))
        .await
        .unwrap_or_else(|s| panic!("refused with {s}"))
}

/// Reads events until the one whose id (at `id_field`) is `last`; returns their ids.
async fn ids_until(c: &mut Client, id_field: &str, last: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let (sse_id, v) = c.next_with_id().await;
        let id = v
            .pointer(id_field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {id_field} in {v}"))
            .to_owned();
        if let Some(sse_id) = sse_id {
            assert_eq!(sse_id, id, "SSE id: is the mapped event id");
        }
        ids.push(id.clone());
        if id == last {
            return ids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_event_standard_envelopes() {
    bounded(async {
        let gw = GatewayBuilder::new("platform").env_file("config/platform-event-standards.env").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let ev = |id: &str, ty: &str, tenant: Value, user: Option<Value>| {
            let mut payload = json!({"summary": "done"});
            if let Some(u) = user {
                payload["user_id"] = u;
            }
            json!({"id": id, "type": ty, "occurred_at": "2025-01-01T00:00:00Z", "source": "ai-summarizer",
                   "correlation_id": "c", "trace_id": "tr", "payload": payload,
                   "metadata": {"partition_key": "entity-123", "tenant_id": tenant}})
        };
        for t in BOTH {
            let mut a = client(&gw, t, Some("t1"), "u1").await;
            let mut b = client(&gw, t, Some("t1"), "u2").await;
            let mut c = client(&gw, t, Some("t2"), "u1").await;
            let k = "ai.summary.ready.v1";
            let p = |id: &str| format!("{t:?}-{id}");
            publisher.publish(k, &ev(&p("own"), k, json!("t1"), Some(json!("u1")))).await;
            publisher.publish(k, &ev(&p("wide"), k, json!("t1"), None)).await;
            publisher.publish(k, &ev(&p("t2"), k, json!("t2"), Some(json!("u1")))).await;
            publisher.publish(k, &ev(&p("numeric-user"), k, json!("t1"), Some(json!(7)))).await;
            publisher.publish(k, &ev(&p("no-tenant"), k, Value::Null, Some(json!("u1")))).await;
            // A top-level tenant_id is not where this system keeps it.
            let mut misplaced = ev(&p("misplaced"), k, Value::Null, Some(json!("u1")));
            misplaced["tenant_id"] = json!("t1");
            publisher.publish(k, &misplaced).await;
            publisher.publish("billing.invoice.created.v1", &ev(&p("unbound"), k, json!("t1"), Some(json!("u1")))).await;
            for (who, tenant, user) in [("a", "t1", "u1"), ("b", "t1", "u2"), ("c", "t2", "u1")] {
                publisher.publish("notification.created.v1", &ev(&p(who), "notification.created.v1", json!(tenant), Some(json!(user)))).await;
            }
            assert_eq!(ids_until(&mut a, "/id", &p("a")).await, [p("own"), p("wide"), p("a")]);
            assert_eq!(ids_until(&mut b, "/id", &p("b")).await, [p("wide"), p("b")]);
            assert_eq!(ids_until(&mut c, "/id", &p("c")).await, [p("t2"), p("c")]);
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_tenant_app_events_with_camel_case_fields() {
    bounded(async {
        let gw = GatewayBuilder::new("appevents").env_file("config/rabbitmq-integration-guide.env").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let ev = |id: &str, ty: &str, user: Option<&str>| {
            let mut payload = json!({"ticketId": "tk-1"});
            if let Some(u) = user {
                payload["userId"] = json!(u);
            }
            json!({"eventId": id, "version": "v1", "eventType": ty, "timestamp": "2024-01-01T00:00:00Z", "payload": payload})
        };
        for t in BOTH {
            // Tokens carry only sub: there are no tenants in this system.
            let mut u1 = client(&gw, t, None, "u1").await;
            let mut u2 = client(&gw, t, None, "u2").await;
            // A tenant claim, if present, changes nothing.
            let mut u1_claim = client(&gw, t, Some("whatever"), "u1").await;
            let p = |id: &str| format!("{t:?}-{id}");
            publisher.publish("ticket.created", &ev(&p("ticket"), "ticket.created", Some("u1"))).await;
            publisher.publish("payment.failed", &ev(&p("payment"), "payment.failed", Some("u2"))).await;
            // No user: would be everyone in a single-tenant app; switched off here.
            publisher.publish("ticket.status_changed", &ev(&p("nobody"), "ticket.status_changed", None)).await;
            publisher.publish("user.created", &ev(&p("unbound"), "user.created", Some("u1"))).await;
            let mut with_tenant = ev(&p("tenant-ignored"), "message.sent", Some("u1"));
            with_tenant["tenant_id"] = json!("other");
            publisher.publish("message.sent", &with_tenant).await;
            publisher.publish("notification.sent", &ev(&p("m1"), "notification.sent", Some("u1"))).await;
            publisher.publish("notification.sent", &ev(&p("m2"), "notification.sent", Some("u2"))).await;
            let want = [p("ticket"), p("tenant-ignored"), p("m1")];
            assert_eq!(ids_until(&mut u1, "/eventId", &p("m1")).await, want);
            assert_eq!(ids_until(&mut u1_claim, "/eventId", &p("m1")).await, want);
            assert_eq!(ids_until(&mut u2, "/eventId", &p("m2")).await, [p("payment"), p("m2")]);
        }
        assert_eq!(gw.metric("gateway_events_dropped_total{reason=\"no_user\"}").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_exchanges_checked_passively() {
    bounded(async {
        let prefix = unique("bus");
        let builder = GatewayBuilder::new("bus").env_file("config/event-bus-rabbitmq.env");
        // The shipped bindings, on this test's own exchanges.
        let bindings: Vec<String> = builder
            .env_value("GATEWAY_AMQP_BINDINGS")
            .unwrap()
            .split(',')
            .map(|b| format!("{prefix}.{b}"))
            .collect();
        let ex = |name: &str| format!("{prefix}.{name}");
        let publisher = Publisher::connect(&ex("orders")).await;

        // Passive: missing exchanges keep the gateway unready, it does not create them.
        let gw = builder.arg("amqp-bindings", &bindings.join(",")).no_wait_ready().start().await;
        // Give it time to try (and fail) a few times, then check the broker itself: the
        // exchanges it was pointed at still do not exist.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(gw.status("/readyz").await, 503);
        for name in ["payments", "notifications", "products"] {
            assert!(
                !publisher.exchange_exists(&ex(name)).await,
                "{name} was declared by a passive gateway"
            );
        }
        for name in ["payments", "notifications", "products"] {
            publisher.declare(&ex(name)).await;
        }
        gw.wait_ready().await;

        let ev = |id: &str, ty: &str, tenant: &str, user: Option<&str>| {
            let mut v = json!({"id": id, "type": ty, "source": "oms-service", "timestamp": "2024-01-15T10:30:00Z",
                               "tenant_id": tenant, "correlation_id": "req", "data": {"order_id": "o1"},
                               "metadata": {"version": "1.0"}});
            if let Some(u) = user {
                v["metadata"]["user_id"] = json!(u);
            }
            serde_json::to_vec(&v).unwrap()
        };
        let props = || BasicProperties::default().with_content_type("application/json".into());
        for t in BOTH {
            let mut a = client(&gw, t, Some("tenant_abc"), "user_123").await;
            let mut b = client(&gw, t, Some("tenant_abc"), "user_456").await;
            let mut c = client(&gw, t, Some("tenant_xyz"), "user_123").await;
            let p = |id: &str| format!("{t:?}-{id}");
            publisher.publish_to(&ex("orders"), "order.created", &ev(&p("order"), "order.created", "tenant_abc", Some("user_123")), props()).await;
            publisher.publish_to(&ex("payments"), "payment.failed", &ev(&p("payment"), "payment.failed", "tenant_abc", Some("user_456")), props()).await;
            publisher.publish_to(&ex("notifications"), "notification.telegram", &ev(&p("wide"), "notification.telegram", "tenant_abc", None), props()).await;
            publisher.publish_to(&ex("products"), "product.updated", &ev(&p("unbound"), "product.updated", "tenant_abc", Some("user_123")), props()).await;
            publisher.publish_to(&ex("orders"), "order.paid", &ev(&p("xyz"), "order.paid", "tenant_xyz", Some("user_123")), props()).await;
            for (who, tenant, user) in [("a", "tenant_abc", "user_123"), ("b", "tenant_abc", "user_456"), ("c", "tenant_xyz", "user_123")] {
                publisher.publish_to(&ex("orders"), "order.confirmed", &ev(&p(who), "order.confirmed", tenant, Some(user)), props()).await;
            }
            assert_eq!(ids_until(&mut a, "/id", &p("a")).await, [p("order"), p("wide"), p("a")]);
            assert_eq!(ids_until(&mut b, "/id", &p("b")).await, [p("payment"), p("wide"), p("b")]);
            assert_eq!(ids_until(&mut c, "/id", &p("c")).await, [p("xyz"), p("c")]);
        }
        for name in ["payments", "notifications", "products"] {
            publisher.delete_exchange(&ex(name)).await;
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fallbacks_for_id_type_and_tenant() {
    bounded(async {
        let gw = GatewayBuilder::new("headers")
            .arg("tenant-header", "x-tenant-id")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut sse = SseClient::connect(&gw, "/sse", Auth::Bearer(token("t1", "u1")))
            .await
            .unwrap();
        let mut headers = FieldTable::default();
        headers.insert("x-tenant-id".into(), AMQPValue::LongString("t1".into()));
        headers.insert(
            "x-event-type".into(),
            AMQPValue::LongString("render.job.progress.v1".into()),
        );
        let props = BasicProperties::default()
            .with_message_id("from-message-id".into())
            .with_headers(headers.clone());
        // Body with only a user: id, type and tenant come from the message.
        let body = serde_json::to_vec(&json!({"user_id": "u1", "data": {"progress": 5}})).unwrap();
        publisher
            .publish_to(&gw.exchange, PROGRESS, &body, props)
            .await;
        let ev = sse.next_event().await;
        assert_eq!(ev.id.as_deref(), Some("from-message-id"));
        assert_eq!(
            serde_json::from_str::<Value>(&ev.data).unwrap()["data"]["progress"],
            5
        );
        // A body tenant wins over the header; a wrong-typed body tenant never falls back.
        let other = serde_json::to_vec(
            &json!({"event_id": "e2", "event_type": "x", "tenant_id": "t2", "user_id": "u1"}),
        )
        .unwrap();
        publisher
            .publish_to(
                &gw.exchange,
                PROGRESS,
                &other,
                BasicProperties::default().with_headers(headers.clone()),
            )
            .await;
        let typed = serde_json::to_vec(
            &json!({"event_id": "e3", "event_type": "x", "tenant_id": 1, "user_id": "u1"}),
        )
        .unwrap();
        publisher
            .publish_to(
                &gw.exchange,
                PROGRESS,
                &typed,
                BasicProperties::default().with_headers(headers),
            )
            .await;
        publisher
            .publish(
                PROGRESS,
                &envelope("marker", PROGRESS, Some("t1"), Some("u1")),
            )
            .await;
        assert_eq!(sse.next_event().await.id.as_deref(), Some("marker"));
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}
