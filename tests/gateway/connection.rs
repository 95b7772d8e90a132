//! Connection lifecycle: limits, control messages, liveness, close codes, shutdown.

use serde_json::json;

use super::support::*;

/// A refused `/sse` request answers `status` and tells the client when to retry.
async fn assert_retry_after(gw: &Gateway, token: &str, status: u16) {
    let resp = gw
        .http
        .get(gw.url("/sse"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["retry-after"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_429_and_503() {
    bounded(async {
        let gw = GatewayBuilder::new("limits")
            .arg("max-connections-per-user", "2")
            .arg("max-connections", "3")
            .start()
            .await;
        let _a = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let _b = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        let third = Client::connect(&gw, Transport::Ws, Auth::Bearer(token("t", "u"))).await;
        assert_eq!(third.err(), Some(429));
        assert_retry_after(&gw, &token("t", "u"), 429).await;
        // Same user id in another tenant is another user.
        let _c = Client::as_user(&gw, Transport::Sse, "t2", "u").await;
        let fourth = Client::connect(&gw, Transport::Sse, Auth::Bearer(token("t3", "v"))).await;
        assert_eq!(fourth.err(), Some(503));
        assert_retry_after(&gw, &token("t3", "v"), 503).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_control_messages_and_close_handshake() {
    bounded(async {
        let gw = GatewayBuilder::new("control").start().await;
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        ws.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(ws.next_json().await, json!({"type": "pong"}));
        ws.send_text("hello?").await;
        assert_eq!(
            ws.next_json().await,
            json!({"type": "error", "reason": "unknown_message"})
        );
        // The client closes; the gateway answers the close and the connection is gone.
        ws.stream.close(None).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.metric("gateway_connections{transport=\"ws\"}").await != 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection not released"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_client_message_is_closed_with_1009() {
    bounded(async {
        let gw = GatewayBuilder::new("toobig")
            .arg("ws-max-message-bytes", "1024")
            .start()
            .await;
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        ws.send_text(&"x".repeat(4096)).await;
        assert_eq!(ws.expect_close().await.0, 1009);
        gw.wait_metric("gateway_disconnects_total{reason=\"message_too_big\"}", 1.0)
            .await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001_and_ends_sse_streams() {
    bounded(async {
        let gw = GatewayBuilder::new("shutdown")
            .arg("shutdown-drain-secs", "4")
            .start()
            .await;
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        let mut sse = SseClient::connect(&gw, "/sse", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        let probe = Gateway::external(gw.addr, &gw.exchange);
        let stopping = tokio::spawn(gw.shutdown());
        // While clients drain, the instance still answers: not ready, and no new clients.
        let deadline = tokio::time::Instant::now() + WAIT;
        while probe.status("/readyz").await != 503 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never said 503"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let late = Client::connect(&probe, Transport::Sse, Auth::Bearer(token("t", "v"))).await;
        assert_eq!(
            late.err(),
            Some(503),
            "new clients are sent elsewhere while draining"
        );
        // Counted as what it is, not as a full instance. (The clients drain at random
        // within 4 s, so the listener is still up.)
        let refused = |r: &str| format!("gateway_connections_refused_total{{reason=\"{r}\"}}");
        assert_eq!(probe.metric(&refused("draining")).await, 1.0);
        assert_eq!(probe.metric(&refused("max_connections")).await, 0.0);
        assert_eq!(ws.expect_close().await.0, 1001);
        let last = sse.next_event().await;
        assert_eq!(last.event.as_deref(), Some("close"));
        assert!(last.retry.is_some(), "shutdown carries a retry: hint");
        assert!(
            sse.try_next_event().await.is_none(),
            "stream ends after close"
        );
        stopping.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_socket_is_dropped_after_the_handshake_timeout() {
    bounded(async {
        use tokio::io::AsyncReadExt;
        let gw = GatewayBuilder::new("handshake")
            .arg("handshake-timeout-secs", "1")
            .start()
            .await;
        let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // Send nothing: the gateway must hang up rather than hold the descriptor, after
        // the configured second, well before the 10 s default would.
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(std::time::Duration::from_secs(7), raw.read(&mut buf))
            .await
            .expect("gateway kept a silent socket open")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            n == 0 || text.starts_with("HTTP/1.1 408"),
            "unexpected answer {text:?}"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keepalives_and_pings() {
    bounded(async {
        let gw = GatewayBuilder::new("keepalive")
            .arg("sse-keepalive-secs", "1")
            .arg("ws-ping-interval-secs", "1")
            .start()
            .await;
        // SSE: a heartbeat event arrives on an otherwise idle stream.
        let resp = gw
            .http
            .get(gw.url("/sse"))
            .bearer_auth(token("t", "u"))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("event: heartbeat\ndata: {}\n\n") {
            let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
                .await
                .expect("no heartbeat")
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(
            seen.starts_with("retry: "),
            "stream starts with a retry hint: {seen:?}"
        );
        // WebSocket: the gateway pings.
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        let ping = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws.stream))
            .await
            .expect("no ping")
            .unwrap()
            .unwrap();
        assert!(ping.is_ping(), "expected a ping, got {ping:?}");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_naming_the_setting_and_help_lists_all() {
    bounded(async {
        let bin = env!("CARGO_BIN_EXE_realtime-gateway");
        let out = tokio::process::Command::new(bin)
            .env_clear()
            .env("GATEWAY_LISTEN", "127.0.0.1:not-a-port")
            .env(
                "GATEWAY_AMQP_URL",
                "amqps://gw:hunter2@broker.example/%2f,amqp://gw:hunter2@b2/%2f",
            )
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "GATEWAY_LISTEN",
            "mixes amqp:// and amqps://",
            "no token key configured",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        assert!(!err.contains("hunter2"), "a password in {err}");
        let help = tokio::process::Command::new(bin)
            .arg("--help")
            .output()
            .await
            .unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        for var in [
            "GATEWAY_LISTEN",
            "GATEWAY_MAX_CONNECTIONS_PER_USER",
            "GATEWAY_JWT_JWKS_URL",
        ] {
            assert!(text.contains(var), "{var} missing from --help");
        }
    })
    .await;
}

/// Sends raw bytes on a fresh connection and returns what the gateway answers until it
/// closes or `until` appears.
async fn raw_exchange(gw: &Gateway, request: &[u8], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(until) {
        match tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no answer")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_requests_are_served_both_fresh_and_on_kept_alive_connections() {
    bounded(async {
        let gw = GatewayBuilder::new("ssepaths").start().await;
        let t = token("t", "u");
        // A fresh connection (the lean path): headers, then the opening lines.
        let fresh = raw_exchange(&gw, format!("GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes(), ": connected").await;
        assert!(fresh.starts_with("HTTP/1.1 200 OK\r\n"), "{fresh}");
        assert!(fresh.to_ascii_lowercase().contains("content-type: text/event-stream"), "{fresh}");
        // A kept-alive connection whose second request is /sse (served by hyper).
        let reused = raw_exchange(
            &gw,
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes(),
            ": connected",
        )
        .await;
        assert_eq!(reused.matches("HTTP/1.1 200 OK").count(), 2, "{reused}");
        assert!(reused.contains("retry: "), "{reused}");
        // Refusals and malformed heads on the lean path get proper HTTP answers.
        let no_token = raw_exchange(&gw, b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n", "\u{0}").await;
        assert!(no_token.starts_with("HTTP/1.1 401"), "{no_token}");
        assert!(no_token.contains(r#""reason":"missing""#), "{no_token}");
        let other = raw_exchange(&gw, b"GET /sse-other HTTP/1.1\r\nHost: x\r\n\r\n", "\u{0}").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let garbage = raw_exchange(&gw, b"GET /sse \x01\x02 nonsense\r\n\r\n", "\u{0}").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let huge = format!("GET /sse HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
        let too_big = raw_exchange(&gw, huge.as_bytes(), "\u{0}").await;
        assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
        assert_eq!(gw.status("/healthz").await, 200);
        gw.shutdown().await;
    })
    .await;
}
