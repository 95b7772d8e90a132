//! The worst days: broker outages injected with a TCP proxy, duplicates, clients that stop
//! reading, tokens that expire mid-stream, and SIGTERM to a real gateway process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::support::*;

fn event(id: &str, tenant: &str, user: Option<&str>) -> serde_json::Value {
    envelope(id, PROGRESS, Some(tenant), user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_and_clients_stay_connected() {
    bounded(async {
        let proxy = ChaosProxy::start().await;
        let gw = GatewayBuilder::new("outage")
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .arg("amqp-queue-expires-secs", "60")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;

        publisher
            .publish(PROGRESS, &event("before", "t", Some("u")))
            .await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "before");
        }

        proxy.cut();
        wait_ready_status(&gw, 503).await;
        assert_eq!(gw.metric("gateway_broker_connected").await, 0.0);
        // Published straight to the broker while the gateway's link is down: they wait in
        // the gateway's queue, which outlives the link.
        let during: Vec<String> = (0..5).map(|i| format!("during-{i}")).collect();
        for id in &during {
            publisher
                .publish(PROGRESS, &event(id, "t", Some("u")))
                .await;
        }
        proxy.restore();
        wait_ready_status(&gw, 200).await;
        publisher
            .publish(PROGRESS, &event("after", "t", Some("u")))
            .await;

        // The same connections, no reconnect, no resync, nothing lost, in order.
        let mut want = during.clone();
        want.push("after".into());
        assert_eq!(ws.ids_until("after").await, want);
        assert_eq!(sse.ids_until("after").await, want);
        assert!(gw.metric("gateway_broker_reconnects_total").await >= 1.0);
        assert_eq!(gw.metric("gateway_resyncs_sent_total").await, 0.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_up() {
    bounded(async {
        let proxy = ChaosProxy::start().await;
        proxy.cut();
        let gw = GatewayBuilder::new("late-broker")
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .no_wait_ready()
            .start()
            .await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        assert_eq!(gw.status("/readyz").await, 503);
        proxy.restore();
        wait_ready_status(&gw, 200).await;
        let publisher = Publisher::connect(&gw.exchange).await;
        publisher
            .publish(PROGRESS, &event("first", "t", Some("u")))
            .await;
        // Anything published before the queue existed never reached this gateway, so the
        // clients that were already connected are told.
        for c in [&mut ws, &mut sse] {
            c.expect_resync_then("first").await;
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_queue_after_an_outage_sends_resync_then_live_events() {
    bounded(async {
        let proxy = ChaosProxy::start().await;
        let gw = GatewayBuilder::new("resync")
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        publisher
            .publish(PROGRESS, &event("before", "t", Some("u")))
            .await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "before");
        }

        proxy.cut();
        wait_ready_status(&gw, 503).await;
        // What a broker restart or an expired queue leaves behind: no queue, and the events
        // published meanwhile gone with it.
        publisher
            .publish(PROGRESS, &event("lost", "t", Some("u")))
            .await;
        publisher.delete_queue(&gw.queue).await;
        proxy.restore();
        wait_ready_status(&gw, 200).await;
        publisher
            .publish(PROGRESS, &event("live", "t", Some("u")))
            .await;

        for c in [&mut ws, &mut sse] {
            c.expect_resync_then("live").await;
        }
        assert_eq!(gw.metric("gateway_resyncs_sent_total").await, 2.0);
        // Events may be missing after `before`: resuming from it is a resync, not a replay
        // with a silent gap. From `live`, after the gap, resuming works.
        for path in ["/ws?last_event_id=before", "/sse?last_event_id=before"] {
            let auth = Auth::Bearer(token("t", "u"));
            let mut back = if path.starts_with("/ws") {
                Client::Ws(WsClient::connect(&gw, path, auth).await.unwrap())
            } else {
                Client::Sse(SseClient::connect(&gw, path, auth).await.unwrap())
            };
            back.expect_resync().await;
        }
        publisher
            .publish(PROGRESS, &event("after", "t", Some("u")))
            .await;
        let mut back = Client::Ws(
            WsClient::connect(&gw, "/ws?last_event_id=live", Auth::Bearer(token("t", "u")))
                .await
                .unwrap(),
        );
        assert_eq!(back.next_event().await["event_id"], "after");
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_event_ids_are_delivered_once() {
    bounded(async {
        let gw = GatewayBuilder::new("dupes").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        let e = event("once", "t", Some("u"));
        publisher.publish(PROGRESS, &e).await;
        publisher.publish(PROGRESS, &e).await;
        // Same id on a tenant-wide copy: still the same event.
        publisher.publish(PROGRESS, &event("once", "t", None)).await;
        publisher
            .publish(PROGRESS, &event("marker", "t", Some("u")))
            .await;
        assert_eq!(ws.ids_until("marker").await, ["once", "marker"]);
        assert_eq!(sse.ids_until("marker").await, ["once", "marker"]);
        assert_eq!(gw.metric("gateway_duplicates_dropped_total").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_reads_too_slowly_is_closed_with_4000() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    bounded(async {
        // Every event here is progress of one job, which conflation would merge: this
        // is about events that cannot be conflated.
        let gw = GatewayBuilder::new("slow-reader")
            .arg("conflate", "off")
            .arg("send-queue-len", "8")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // A small receive buffer, so the backlog builds up in the gateway, not the kernel.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(gw.addr).await.unwrap();
        let mut req = gw.ws_url("/ws").into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token("t", "slow")).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        gw.wait_metric("gateway_connections{transport=\"ws\"}", 1.0)
            .await;

        // 9.6 MB: more than the kernel's socket buffers (up to 4 MiB on loopback) and the
        // send queue hold, so the queue fills while the client is not reading.
        let pad = "x".repeat(16 * 1024);
        for i in 0..600 {
            let mut e = event(&format!("s-{i}"), "t", Some("slow"));
            e["data"]["pad"] = json!(pad);
            publisher.publish(PROGRESS, &e).await;
        }
        // It did not read while they were published, and was kicked; now it reads what
        // reached it, then the close (which must get through the backlog within the close
        // handshake's 2 s, so it reads at full speed now).
        let mut events = 0;
        let code = loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("no close frame");
            match msg {
                Some(Ok(Message::Text(_))) => events += 1,
                Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(code, 4000, "closed as a slow client after {events} events");
        assert!(events < 600);
        gw.wait_metric_at_most("gateway_connections{transport=\"ws\"}", 0.0)
            .await;
        assert!(
            gw.metric("gateway_disconnects_total{reason=\"slow_client\"}")
                .await
                >= 1.0
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_disconnected_and_nobody_else_waits() {
    bounded(async {
        // Every event here is progress of one job, which conflation would merge: this
        // is about events that cannot be conflated.
        let gw = GatewayBuilder::new("slow")
            .arg("conflate", "off")
            .arg("send-queue-len", "64")
            .arg("send-queue-bytes", "1048576")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let _stuck_ws = RawClient::open(&gw, "/ws", &token("t", "stuck")).await;
        let _stuck_sse = RawClient::open(&gw, "/sse", &token("t", "stuck")).await;
        let ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;

        // Tenant-wide events, 8 MiB in all: far more than socket buffers and the send
        // queues hold.
        let n = 1000;
        let pad = "x".repeat(8 * 1024);
        // The readers count what they got; the publisher waits for them between chunks, so
        // they are never the slow ones, however slow this test process is. The stuck
        // clients fall behind regardless.
        let got = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let read_all = |mut c: Client, count: Arc<AtomicUsize>| async move {
            let mut ids = Vec::new();
            for _ in 0..=n {
                ids.push(
                    c.next_event().await["event_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
                count.fetch_add(1, Ordering::SeqCst);
            }
            ids
        };
        let ws_reader = tokio::spawn(read_all(ws, got[0].clone()));
        let sse_reader = tokio::spawn(read_all(sse, got[1].clone()));
        for i in 0..n {
            let mut e = event(&format!("big-{i}"), "t", None);
            e["data"]["pad"] = json!(pad);
            publisher.publish(PROGRESS, &e).await;
            if (i + 1) % 32 == 0 {
                let deadline = tokio::time::Instant::now() + WAIT;
                while got.iter().any(|g| g.load(Ordering::SeqCst) < i + 1) {
                    assert!(tokio::time::Instant::now() < deadline, "readers stalled");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        publisher
            .publish(PROGRESS, &event("marker", "t", None))
            .await;

        let ws_ids = ws_reader.await.unwrap();
        let sse_ids = sse_reader.await.unwrap();
        let mut want: Vec<String> = (0..n).map(|i| format!("big-{i}")).collect();
        want.push("marker".into());
        assert_eq!(
            ws_ids, want,
            "the reading WebSocket got everything, in order"
        );
        assert_eq!(
            sse_ids, want,
            "the reading SSE client got everything, in order"
        );

        gw.wait_metric("gateway_disconnects_total{reason=\"slow_client\"}", 2.0)
            .await;
        assert!(
            gw.metric("gateway_deliveries_dropped_total{reason=\"slow_client\"}")
                .await
                >= 2.0
        );
        // Memory per connection stayed within the configured queue bounds.
        assert!(gw.metric("gateway_send_queue_high_water_events").await <= 64.0);
        assert!(gw.metric("gateway_send_queue_high_water_bytes").await <= 1_048_576.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_when_their_token_expires() {
    bounded(async {
        let gw = GatewayBuilder::new("expiry")
            .arg("jwt-leeway-secs", "0")
            .start()
            .await;
        let mut c = claims("t", "u");
        c["exp"] = json!(now() + 6);
        let short = sign(&Signer::Hs256(SECRET), &c);
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(short.clone()))
            .await
            .unwrap();
        let mut sse = SseClient::connect(&gw, "/sse", Auth::Bearer(short))
            .await
            .unwrap();
        assert_eq!(ws.expect_close().await, (4001, "token expired".to_owned()));
        let last = sse.next_event().await;
        assert_eq!(last.event.as_deref(), Some("close"));
        assert_eq!(last.data, r#"{"type":"close","reason":"token_expired"}"#);
        assert!(sse.try_next_event().await.is_none());
        gw.wait_metric("gateway_disconnects_total{reason=\"token_expired\"}", 2.0)
            .await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refresh_keeps_the_connection_past_the_old_exp() {
    bounded(async {
        let gw = GatewayBuilder::new("refresh")
            .arg("jwt-leeway-secs", "0")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut c = claims("t", "u");
        c["exp"] = json!(now() + 6);
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(sign(&Signer::Hs256(SECRET), &c)))
            .await
            .unwrap();

        ws.send_text(r#"{"type":"refresh","token":"garbage"}"#)
            .await;
        assert_eq!(
            ws.next_json().await,
            json!({"type": "error", "reason": "refresh_malformed"})
        );
        let fresh = token("t", "u");
        ws.send_text(&json!({"type": "refresh", "token": fresh}).to_string())
            .await;
        let reply = ws.next_json().await;
        assert_eq!(reply["type"], "refreshed");
        assert!(reply["exp"].as_u64().unwrap() > now() + 60);

        // Past the first token's exp, the connection still delivers.
        tokio::time::sleep(Duration::from_secs(3)).await;
        publisher
            .publish(PROGRESS, &event("still-here", "t", Some("u")))
            .await;
        assert_eq!(ws.next_json().await["event_id"], "still-here");

        // A valid token for somebody else is a policy violation.
        ws.send_text(&json!({"type": "refresh", "token": token("t", "someone-else")}).to_string())
            .await;
        assert_eq!(ws.expect_close().await.0, 1008);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websocket_is_closed_after_the_idle_timeout() {
    bounded(async {
        let gw = GatewayBuilder::new("idle")
            .arg("ws-ping-interval-secs", "1")
            .arg("idle-timeout-secs", "2")
            .start()
            .await;
        // Never reads, never answers pings.
        let mut raw = RawClient::open(&gw, "/ws", &token("t", "u")).await;
        gw.wait_metric("gateway_disconnects_total{reason=\"idle\"}", 1.0)
            .await;
        assert_eq!(raw.read_close_code().await, Some(4002));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_exits_zero_and_never_logs_tokens() {
    bounded(async {
        use std::process::Stdio;
        let exchange = unique("sigterm");
        let log = std::env::temp_dir().join(format!("{exchange}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let (mut cmd, port) = gateway_process(&exchange, None);
        let mut child = cmd
            .env("GATEWAY_SHUTDOWN_DRAIN_SECS", "1")
            .env("GATEWAY_SHUTDOWN_GRACE_SECS", "5")
            .env("GATEWAY_LOG", "trace")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), &exchange);
        gw.wait_ready().await;

        let good = token("t", "u");
        let bad = sign(
            &Signer::Hs256("not-the-secret-not-the-secret-xx"),
            &claims("t", "u"),
        );
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Query(good.clone()))
            .await
            .unwrap();
        let mut sse = SseClient::connect(&gw, "/sse", Auth::Query(good.clone()))
            .await
            .unwrap();
        assert_eq!(
            Client::connect(&gw, Transport::Ws, Auth::Query(bad.clone()))
                .await
                .err(),
            Some(401)
        );
        assert_eq!(
            Client::connect(&gw, Transport::Sse, Auth::Bearer(bad.clone()))
                .await
                .err(),
            Some(401)
        );
        ws.send_text(&json!({"type": "refresh", "token": good}).to_string())
            .await;
        assert_eq!(ws.next_json().await["type"], "refreshed");

        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(ws.expect_close().await.0, 1001);
        let last = sse.next_event().await;
        assert_eq!(last.event.as_deref(), Some("close"));
        assert!(last.retry.is_some());
        let exit = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("did not exit in time")
            .unwrap();
        assert!(exit.success(), "exit status {exit:?}");

        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(text.contains("SIGTERM received"), "log: {text}");
        // One access line per connection end, with its reason, at info.
        let ended: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("connection ended"))
            .collect();
        assert!(ended.len() >= 2, "access lines: {ended:?}");
        for line in &ended {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["level"], "INFO", "{line}");
            assert!(v["duration_ms"].is_u64() && v["events"].is_u64(), "{line}");
        }
        let field = |k: &str, want: &str| {
            ended
                .iter()
                .any(|l| l.contains(&format!("\"{k}\":\"{want}\"")))
        };
        assert!(
            field("transport", "ws") && field("transport", "sse"),
            "{ended:?}"
        );
        assert!(field("reason", "shutdown"), "{ended:?}");
        for secret in [&good, &bad, &SECRET.to_owned()] {
            // Any recognisable piece of a token would be a leak, not only the whole.
            let signature = secret.rsplit('.').next().unwrap();
            assert!(
                !text.contains(signature),
                "a token or secret appears in the logs"
            );
        }
        let publisher = Publisher::connect(&exchange).await;
        publisher.cleanup().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_reported_not_fatal() {
    bounded(async {
        let exchange = unique("emfile");
        // A tiny open-file limit, and a connection limit above it, so descriptors run out
        // before the limit answers 503.
        let (mut cmd, port) = gateway_process(&exchange, Some(96));
        let mut child = cmd
            .env("GATEWAY_MAX_CONNECTIONS", "1000")
            .env("GATEWAY_LOG", "error")
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), &exchange);
        gw.wait_ready().await;

        // Far more sockets than the gateway has descriptors; the kernel queues them.
        let mut held = Vec::new();
        for _ in 0..150 {
            held.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(child.try_wait().unwrap().is_none(), "the gateway died");
        drop(held);

        // Once the clients are gone it serves again and has counted the failures.
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.status("/healthz").await != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway did not recover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gw.metric("gateway_accept_errors_total").await >= 1.0);
        assert_eq!(gw.status("/readyz").await, 200);
        child.kill().await.unwrap();
        Publisher::connect(&exchange).await.cleanup().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_clients_do_not_outlive_their_token() {
    bounded(async {
        // Queues far larger than what is published, so the hub never kicks them: only the
        // token's expiry can end these connections, while their sockets are full.
        let gw = GatewayBuilder::new("stuck-expiry")
            .arg("jwt-leeway-secs", "0")
            .arg("send-queue-len", "100000")
            .arg("send-queue-bytes", "1073741824")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut c = claims("t", "stuck");
        c["exp"] = json!(now() + 3);
        let short = sign(&Signer::Hs256(SECRET), &c);
        let _ws = RawClient::open(&gw, "/ws", &short).await;
        let _sse = RawClient::open(&gw, "/sse", &short).await;
        let pad = "x".repeat(16 * 1024);
        for i in 0..600 {
            let mut e = event(&format!("fill-{i}"), "t", Some("stuck"));
            e["data"]["pad"] = json!(pad);
            publisher.publish(PROGRESS, &e).await;
        }
        gw.wait_metric("gateway_disconnects_total{reason=\"token_expired\"}", 2.0)
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.metric("gateway_connections{transport=\"ws\"}").await
            + gw.metric("gateway_connections{transport=\"sse\"}").await
            > 0.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck connections still registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            gw.metric("gateway_disconnects_total{reason=\"slow_client\"}")
                .await,
            0.0
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}
