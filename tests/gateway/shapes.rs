//! Other systems' event shapes, bridged by configuration alone: the shipped routes files
//! in `config/` are loaded as `GATEWAY_CONFIG`, events are published the way each seed
//! document says its producers publish them (its examples, its publisher code, its
//! routing keys, its commands and dead letters), and who receives what is checked.

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

/// The value of one drop-reason series.
async fn dropped(gw: &Gateway, reason: &str) -> f64 {
    gw.metric(&format!(
        "gateway_events_dropped_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flatrender_catalog_routes() {
    bounded(async {
        let gw = GatewayBuilder::new("flatrender")
            .config_file("config/flatrender.toml", None)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for t in BOTH {
            let mut a = Client::as_user(&gw, t, "t1", "u1").await;
            let mut b = Client::as_user(&gw, t, "t1", "u2").await;
            let mut c = Client::as_user(&gw, t, "t2", "u1").await;
            let p = |id: &str| format!("{t:?}-{id}");
            let ev = |id: &str, ty: &str, tenant: &str, user: Option<&str>| {
                envelope(&p(id), ty, Some(tenant), user)
            };
            publisher
                .publish(PROGRESS, &ev("progress", PROGRESS, "t1", Some("u1")))
                .await;
            // A render job event without its owner is a producer bug: nobody gets it.
            let done = "render.job.completed.v1";
            publisher
                .publish(done, &ev("ownerless", done, "t1", None))
                .await;
            // A notification without a user is the tenant's announcement.
            let created = "notification.created.v1";
            publisher
                .publish(created, &ev("announcement", created, "t1", None))
                .await;
            publisher
                .publish(
                    "notification.delivered.v1",
                    &ev("delivered", "notification.delivered.v1", "t1", Some("u2")),
                )
                .await;
            // Not bound: service events and the extended set.
            for key in [
                "identity.user.registered.v1",
                "render.snapshot.ready.v1",
                "node.crashed.v1",
                "file.quota_warning.v1",
            ] {
                publisher
                    .publish(key, &ev(key, key, "t1", Some("u1")))
                    .await;
            }
            for (who, tenant, user) in [("a", "t1", "u1"), ("b", "t1", "u2"), ("c", "t2", "u1")] {
                publisher
                    .publish(created, &ev(who, created, tenant, Some(user)))
                    .await;
            }
            assert_eq!(
                a.ids_until(&p("a")).await,
                [p("progress"), p("announcement"), p("a")]
            );
            assert_eq!(
                b.ids_until(&p("b")).await,
                [p("announcement"), p("delivered"), p("b")]
            );
            assert_eq!(c.ids_until(&p("c")).await, [p("c")]);
        }
        assert_eq!(dropped(&gw, "no_user").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flatrender_studio_extended_set() {
    bounded(async {
        let gw = GatewayBuilder::new("studio")
            .config_file("config/flatrender-studio.toml", None)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for t in BOTH {
            let mut a = Client::as_user(&gw, t, "t1", "u1").await;
            let mut b = Client::as_user(&gw, t, "t1", "u2").await;
            let p = |id: &str| format!("{t:?}-{id}");
            let publish = |key: &'static str, id: String, user: Option<&'static str>| {
                let body = envelope(&id, key, Some("t1"), user);
                let publisher = &publisher;
                async move { publisher.publish(key, &body).await }
            };
            publish(PROGRESS, p("progress"), Some("u1")).await;
            publish("file.processed.v1", p("processed"), Some("u1")).await;
            publish("file.quota_warning.v1", p("quota-warning"), Some("u2")).await;
            // A quota event without a user: the tenant's or a user's? Nobody's, here.
            publish("file.quota_exceeded.v1", p("quota-unowned"), None).await;
            publish("file.quota_exceeded.v1", p("quota-exceeded"), Some("u1")).await;
            publish("render.snapshot.ready.v1", p("snapshot"), Some("u1")).await;
            publish("studio.project.saved.v1", p("saved"), Some("u2")).await;
            // The service's bookkeeping and requests stay out.
            for key in [
                "file.uploaded.v1",
                "file.cleanup.executed.v1",
                "render.snapshot.requested.v1",
                "studio.project.deleted.v1",
            ] {
                publish(key, p(key), Some("u1")).await;
            }
            // The design card's defaults are unchanged: announcements reach the tenant.
            publish("notification.created.v1", p("announcement"), None).await;
            publish("notification.created.v1", p("a"), Some("u1")).await;
            publish("notification.created.v1", p("b"), Some("u2")).await;
            assert_eq!(
                a.ids_until(&p("a")).await,
                [
                    p("progress"),
                    p("processed"),
                    p("quota-exceeded"),
                    p("snapshot"),
                    p("announcement"),
                    p("a")
                ]
            );
            assert_eq!(
                b.ids_until(&p("b")).await,
                [p("quota-warning"), p("saved"), p("announcement"), p("b")]
            );
        }
        assert_eq!(dropped(&gw, "no_user").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_event_standard_routes() {
    bounded(async {
        let gw = GatewayBuilder::new("platform")
            .config_file("config/platform-event-standards.toml", None)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // The standard's message schema, as its example shows it.
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
            // No user: the standard names none, so nobody rather than the whole tenant.
            publisher.publish(k, &ev(&p("userless"), k, json!("t1"), None)).await;
            publisher.publish(k, &ev(&p("t2"), k, json!("t2"), Some(json!("u1")))).await;
            publisher.publish(k, &ev(&p("numeric-user"), k, json!("t1"), Some(json!(7)))).await;
            publisher.publish(k, &ev(&p("no-tenant"), k, Value::Null, Some(json!("u1")))).await;
            // A top-level tenant_id is not where this standard keeps it.
            let mut misplaced = ev(&p("misplaced"), k, Value::Null, Some(json!("u1")));
            misplaced["tenant_id"] = json!("t1");
            publisher.publish(k, &misplaced).await;
            // Commands (`service.action.priority`), retries, dead letters, a new version.
            for key in ["notify.email.high", "ai.summary.ready.v1.retry", "dlq.ai.summary.ready.v1", "ai.summary.ready.v2", "workflow.instance.started.v1"] {
                publisher.publish(key, &ev(&p(key), k, json!("t1"), Some(json!("u1")))).await;
            }
            for (who, tenant, user) in [("a", "t1", "u1"), ("b", "t1", "u2"), ("c", "t2", "u1")] {
                let k = "ai.moderation.completed.v1";
                publisher.publish(k, &ev(&p(who), k, json!(tenant), Some(json!(user)))).await;
            }
            assert_eq!(ids_until(&mut a, "/id", &p("a")).await, [p("own"), p("a")]);
            assert_eq!(ids_until(&mut b, "/id", &p("b")).await, [p("b")]);
            assert_eq!(ids_until(&mut c, "/id", &p("c")).await, [p("t2"), p("c")]);
        }
        assert_eq!(dropped(&gw, "no_user").await, 2.0);
        assert_eq!(dropped(&gw, "no_tenant").await, 4.0);
        assert_eq!(dropped(&gw, "invalid_field").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_guide_routes_single_tenant() {
    bounded(async {
        let gw = GatewayBuilder::new("appevents")
            .config_file("config/rabbitmq-integration-guide.toml", None)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // The guide's example event structure.
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
            // No user: would be every user of the app; goes to nobody.
            publisher.publish("ticket.status_changed", &ev(&p("nobody"), "ticket.status_changed", None)).await;
            let mut with_tenant = ev(&p("tenant-ignored"), "booking.created", Some("u1"));
            with_tenant["tenant_id"] = json!("other");
            publisher.publish("booking.created", &with_tenant).await;
            // Identity data, moderation, messages of unknown direction, notification
            // outcomes: not for browsers in this reading of the guide.
            let mut user_created = ev(&p("user.created"), "user.created", Some("u1"));
            user_created["payload"]["email"] = json!("user@example.com");
            publisher.publish("user.created", &user_created).await;
            for key in ["message.sent", "content.flagged", "ai.moderation_result", "notification.sent", "notification.failed", "ticket.created.retry"] {
                publisher.publish(key, &ev(&p(key), key, Some("u1"))).await;
            }
            publisher.publish("refund.issued", &ev(&p("m1"), "refund.issued", Some("u1"))).await;
            publisher.publish("invoice.created", &ev(&p("m2"), "invoice.created", Some("u2"))).await;
            let want = [p("ticket"), p("tenant-ignored"), p("m1")];
            assert_eq!(ids_until(&mut u1, "/eventId", &p("m1")).await, want);
            assert_eq!(ids_until(&mut u1_claim, "/eventId", &p("m1")).await, want);
            assert_eq!(ids_until(&mut u2, "/eventId", &p("m2")).await, [p("payment"), p("m2")]);
        }
        assert_eq!(dropped(&gw, "no_user").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_bus_routes_on_passive_exchanges() {
    bounded(async {
        let prefix = unique("bus");
        let ex = |name: &str| format!("{prefix}.{name}");
        // The shipped routes, on this test's own exchanges.
        let builder = GatewayBuilder::new("bus").config_file("config/event-bus-rabbitmq.toml", Some(&prefix));
        let publisher = Publisher::connect(&ex("notifications")).await;

        // Passive: missing exchanges keep the gateway unready, it does not create them.
        let gw = builder.no_wait_ready().start().await;
        // Give it time to try (and fail) a few times, then check the broker itself: the
        // exchanges it was pointed at still do not exist.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(gw.status("/readyz").await, 503);
        for name in ["orders", "payments"] {
            assert!(!publisher.exchange_exists(&ex(name)).await, "{name} was declared by a passive gateway");
        }
        for name in ["orders", "payments"] {
            publisher.declare(&ex(name)).await;
        }
        gw.wait_ready().await;

        // The document's standard envelope: the user in metadata.user_id.
        let standard = |id: &str, ty: &str, tenant: &str, user: &str| {
            serde_json::to_vec(&json!({"id": id, "type": ty, "source": "oms-service", "timestamp": "2024-01-15T10:30:00Z",
                "tenant_id": tenant, "correlation_id": "req_xyz", "data": {"order_id": "order_xyz"},
                "metadata": {"version": "1.0", "user_id": user}})).unwrap()
        };
        // What its Go Publisher.Publish sends: Event{ID, Type, Source, Timestamp, TenantID,
        // Data} with CorrelationID and Metadata omitted (omitempty).
        let go_publisher = |id: &str, ty: &str, tenant: &str, data: Value| {
            serde_json::to_vec(&json!({"id": id, "type": ty, "source": "oms-service",
                "timestamp": "2024-01-15T10:30:00.123456Z", "tenant_id": tenant, "data": data})).unwrap()
        };
        let props = || BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
        for t in BOTH {
            let mut a = client(&gw, t, Some("tenant_abc"), "user_123").await;
            let mut b = client(&gw, t, Some("tenant_abc"), "user_456").await;
            let mut c = client(&gw, t, Some("tenant_xyz"), "user_123").await;
            let p = |id: &str| format!("{t:?}-{id}");
            let orders = ex("orders");
            let payments = ex("payments");
            publisher.publish_to(&orders, "order.confirmed", &standard(&p("confirmed"), "order.confirmed", "tenant_abc", "user_123"), props()).await;
            // The document's Order Created event as the Go publisher sends it: a full
            // order and no user. Not the whole tenant's business: nobody gets it.
            let order = json!({"order_id": "order_xyz", "order_number": "ORD-2024-001", "customer_id": "user_123",
                "items": [{"product_id": "prod_456", "sku": "SKU001", "quantity": 2, "price": 500.00}],
                "total": 1000.00, "currency": "UAH", "status": "pending"});
            publisher.publish_to(&orders, "order.created", &go_publisher(&p("created"), "order.created", "tenant_abc", order), props()).await;
            publisher.publish_to(&payments, "payment.failed", &standard(&p("failed"), "payment.failed", "tenant_abc", "user_456"), props()).await;
            publisher.publish_to(&payments, "payment.refund.completed", &standard(&p("refund"), "payment.refund.completed", "tenant_abc", "user_123"), props()).await;
            publisher.publish_to(&orders, "order.paid", &standard(&p("xyz"), "order.paid", "tenant_xyz", "user_123"), props()).await;
            // Commands to the delivery services, even when they name the user, and a dead
            // letter key: not bound.
            let push = standard(&p("push"), "notification.push", "tenant_abc", "user_123");
            publisher.publish_to(&ex("notifications"), "notification.push", &push, props()).await;
            publisher.publish_to(&orders, "order.processing.failed", &standard(&p("dead"), "order.processing", "tenant_abc", "user_123"), props()).await;
            for (who, tenant, user) in [("a", "tenant_abc", "user_123"), ("b", "tenant_abc", "user_456"), ("c", "tenant_xyz", "user_123")] {
                publisher.publish_to(&orders, "order.delivered", &standard(&p(who), "order.delivered", tenant, user), props()).await;
            }
            assert_eq!(ids_until(&mut a, "/id", &p("a")).await, [p("confirmed"), p("refund"), p("a")]);
            assert_eq!(ids_until(&mut b, "/id", &p("b")).await, [p("failed"), p("b")]);
            assert_eq!(ids_until(&mut c, "/id", &p("c")).await, [p("xyz"), p("c")]);
        }
        assert_eq!(dropped(&gw, "no_user").await, 2.0);
        for name in ["orders", "payments"] {
            publisher.delete_exchange(&ex(name)).await;
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Routes that overlap and read events differently: what both match goes to nobody.
const CONFLICTING: &str = r#"
[[route]]
name = "ticket-owner"
binding = "ticket.*"
user = "/data/owner"
exclude-types = ["ticket.internal_note.v1"]

[[route]]
name = "created-by"
binding = "*.created"
user = "/data/author"
tenant-wide = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_routes_deliver_to_nobody() {
    bounded(async {
        let gw = GatewayBuilder::new("conflict").config_text(CONFLICTING).start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut a = Client::as_user(&gw, Transport::Ws, "t1", "u1").await;
        let mut b = Client::as_user(&gw, Transport::Sse, "t1", "u2").await;
        let ev = |id: &str, ty: &str, data: Value| {
            json!({"event_id": id, "event_type": ty, "tenant_id": "t1", "data": data})
        };
        publisher.publish("ticket.closed", &ev("closed", "ticket.closed.v1", json!({"owner": "u1", "author": "u2"}))).await;
        publisher.publish("post.created", &ev("post", "post.created.v1", json!({"owner": "u1", "author": "u2"}))).await;
        // Both routes match: one would send it to u1, the other to u2 or the whole tenant.
        publisher.publish("ticket.created", &ev("both", "ticket.created.v1", json!({"owner": "u1", "author": "u2"}))).await;
        publisher.publish("ticket.created", &ev("both-userless", "ticket.created.v1", json!({}))).await;
        publisher.publish("ticket.noted", &ev("excluded", "ticket.internal_note.v1", json!({"owner": "u1"}))).await;
        // A binding no route accounts for (left by an earlier configuration).
        publisher.bind_queue(&gw.queue, "leftover.#").await;
        publisher.publish("leftover.key", &ev("leftover", "leftover.v1", json!({"owner": "u1", "author": "u2"}))).await;
        publisher.publish("ticket.closed", &ev("a", "ticket.closed.v1", json!({"owner": "u1"}))).await;
        publisher.publish("page.created", &ev("b", "page.created.v1", json!({"author": "u2"}))).await;
        assert_eq!(a.ids_until("a").await, ["closed", "a"]);
        assert_eq!(b.ids_until("b").await, ["post", "b"]);
        assert_eq!(dropped(&gw, "route_conflict").await, 2.0);
        assert_eq!(dropped(&gw, "excluded_type").await, 1.0);
        assert_eq!(dropped(&gw, "no_route").await, 1.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Runs `realtime-gateway config check FILE` with an empty environment.
async fn config_check(file: &str) -> (i32, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_realtime-gateway"))
        .args(["config", "check", file])
        .env_clear()
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("config check finished")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_passes_every_example_and_lists_all_problems() {
    bounded(async {
        for name in ["flatrender", "flatrender-studio", "platform-event-standards", "rabbitmq-integration-guide", "event-bus-rabbitmq"] {
            let file = format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let (code, out) = config_check(&file).await;
            assert_eq!(code, 0, "{name}: {out}");
            assert!(out.contains("route ") && out.contains(": ok"), "{name}: {out}");
        }
        let bad = write_temp_config(&format!("listen = 8080\nbogus = 1\n{CONFLICTING}\n[[route]]\nbinding = \"x.#\"\ntenant = \"tenant_id\"\n"));
        let (code, out) = config_check(&bad).await;
        assert_eq!(code, 2, "{out}");
        for want in ["GATEWAY_LISTEN", "unknown key `bogus`", "`tenant_id` is not a JSON pointer", "routes `ticket-owner` (ticket.*) and `created-by` (*.created)"] {
            assert!(out.contains(want), "{want} missing from {out}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_no_secret() {
    bounded(async {
        // A TOML error on the line of a secret: named by line and column, the line not
        // quoted.
        let jwt = "0123456789abcdef0123456789abcdef-jwt-in-file";
        let broken = write_temp_config(&format!(
            "listen = \"127.0.0.1:1\"\njwt-secret = \"{jwt}\" oops\n"
        ));
        let (code, out) = config_check(&broken).await;
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("not valid TOML at line 2, column"), "{out}");
        assert!(!out.contains(jwt), "{out}");

        // Passwords with `/ ? # @` are not percent-encoded, so the URLs do not parse; a
        // value that is no URL at all is named by its position only.
        let passwords = ["Pa55/w?rd#x@y", "s3cr3t-n0-sch3me", "Jwk5-Pa55"];
        let [amqp, bare, jwks] = passwords;
        let file = write_temp_config(&format!(
            "amqp-url = \"amqp://gw:{amqp}@mq.example/%2f, gw:{bare}@mq-2\"\n\
             jwt-jwks-url = \"ftp://idp:{jwks}@idp.example/jwks\"\n"
        ));
        let (code, out) = config_check(&file).await;
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("node 1 (`amqp://gw:***@mq.example/%2f`)"),
            "{out}"
        );
        assert!(out.contains("node 2: must start with amqp://"), "{out}");
        assert!(
            out.contains("`ftp://idp:***@idp.example/jwks` is not an http(s) URL"),
            "{out}"
        );
        for secret in passwords {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        // Parts of them neither.
        for piece in ["Pa55", "w?rd", "rd#x", "n0-sch3me", "Jwk5"] {
            assert!(!out.contains(piece), "{piece} in {out}");
        }
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
