//! Findings of the outside security probe, each reproduced the way it was found: raw
//! sockets where a client library would hide the abuse, outcomes (disconnected, counted,
//! bounded) asserted with generous deadlines.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::support::*;

/// One masked client frame (clients must mask; the mask itself does not matter).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes `chunk` over and over until the socket fails, `limit` bytes went out, or `time`
/// passed; returns the bytes written. Never reads.
async fn flood(
    stream: &mut tokio::net::TcpStream,
    chunk: &[u8],
    limit: usize,
    time: Duration,
) -> usize {
    let end = Instant::now() + time;
    let mut sent = 0;
    while sent < limit && Instant::now() < end {
        match tokio::time::timeout_at(end, stream.write_all(chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    sent
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_stays_bounded_and_is_disconnected() {
    bounded(async {
        let exchange = unique("ping-flood");
        let (mut cmd, port) = gateway_process(&exchange, None);
        // No server pings and no write timeout within the test: only the write buffer's
        // limit stands between the flood and the gateway's memory.
        let mut child = cmd
            .env("GATEWAY_WS_PING_INTERVAL_SECS", "600")
            .env("GATEWAY_IDLE_TIMEOUT_SECS", "600")
            .env("GATEWAY_LOG", "warn")
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), &exchange);
        gw.wait_ready().await;
        let pid = child.id().unwrap();
        let before = rss(pid);

        // Pings with the largest control payload; every one asks for a 127-byte pong.
        let ping = client_frame(0x9, &[b'p'; 125]);
        let chunk: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 500)
            .collect();
        let mut raw = RawClient::open(&gw, "/ws", &token("acme", "flood")).await;
        // 128 MiB of pings would queue about as many pongs if nothing bounded them.
        let sent = flood(&mut raw.stream, &chunk, 128 << 20, Duration::from_secs(60)).await;
        assert!(
            sent >= 32 << 20,
            "only {} MiB of pings got through",
            sent >> 20
        );
        let grown = rss(pid).saturating_sub(before);
        assert!(
            grown < 48 << 20,
            "gateway grew by {} MiB after {} MiB of pings",
            grown >> 20,
            sent >> 20
        );
        assert_eq!(
            gw.metric("gateway_connections{transport=\"ws\"}").await,
            1.0
        );

        // The next write to it finds the buffer full: a slow client, disconnected.
        let publisher = Publisher::connect(&exchange).await;
        publisher
            .publish(
                PROGRESS,
                &envelope("after-flood", PROGRESS, Some("acme"), Some("flood")),
            )
            .await;
        gw.wait_metric("gateway_disconnects_total{reason=\"slow_client\"}", 1.0)
            .await;
        gw.wait_metric_at_most("gateway_connections{transport=\"ws\"}", 0.0)
            .await;
        child.kill().await.unwrap();
        publisher.cleanup().await;
    })
    .await;
}

/// Sends `{"type":"ping"}` as fast as the gateway reads, never reading a reply.
async fn spam_control_pings(gw: &Gateway, token: &str) -> tokio::task::JoinHandle<usize> {
    let mut raw = RawClient::open(gw, "/ws", token).await;
    let ping = client_frame(0x1, br#"{"type":"ping"}"#);
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 200)
        .collect();
    tokio::spawn(async move {
        flood(&mut raw.stream, &chunk, usize::MAX, Duration::from_secs(90)).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_sender_is_disconnected_at_its_token_expiry() {
    bounded(async {
        let gw = GatewayBuilder::new("spam-expiry")
            .arg("jwt-leeway-secs", "0")
            .arg("idle-timeout-secs", "600")
            .start()
            .await;
        let mut claims = claims("acme", "spammer");
        claims["exp"] = json!(now() + 6);
        let spam = spam_control_pings(&gw, &sign(&Signer::Hs256(SECRET), &claims)).await;
        gw.wait_metric("gateway_disconnects_total{reason=\"token_expired\"}", 1.0)
            .await;
        gw.wait_metric_at_most("gateway_connections{transport=\"ws\"}", 0.0)
            .await;
        // With the connection gone, the sender's writes fail and it stops by itself.
        tokio::time::timeout(WAIT, spam).await.unwrap().unwrap();
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_sender_is_disconnected_within_the_write_timeout() {
    bounded(async {
        let gw = GatewayBuilder::new("spam-idle")
            .arg("idle-timeout-secs", "3")
            .start()
            .await;
        let spam = spam_control_pings(&gw, &token("acme", "spammer")).await;
        gw.wait_metric("gateway_disconnects_total{reason=\"slow_client\"}", 1.0)
            .await;
        gw.wait_metric_at_most("gateway_connections{transport=\"ws\"}", 0.0)
            .await;
        tokio::time::timeout(WAIT, spam).await.unwrap().unwrap();
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_sender_does_not_hold_up_a_graceful_shutdown() {
    bounded(async {
        let gw = GatewayBuilder::new("spam-drain")
            .arg("idle-timeout-secs", "600")
            .start()
            .await;
        let spam = spam_control_pings(&gw, &token("acme", "spammer")).await;
        // Let the sender fill the socket buffers, so the connection is stuck in a write.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // `shutdown` fails the test if the grace period runs out.
        gw.shutdown().await;
        tokio::time::timeout(WAIT, spam).await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_in_two_tenants_reaches_both_and_resumes_per_tenant() {
    bounded(async {
        let gw = GatewayBuilder::new("id-collision").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut clients = Vec::new();
        for t in BOTH {
            clients.push((Client::as_user(&gw, t, "tenant-a", "u").await, "tenant-a"));
            clients.push((Client::as_user(&gw, t, "tenant-b", "u").await, "tenant-b"));
        }
        for (id, tenant) in [
            ("order-1001", "tenant-a"),
            ("order-1001", "tenant-b"),
            ("order-1002", "tenant-a"),
            ("order-1002", "tenant-b"),
        ] {
            publisher
                .publish(PROGRESS, &envelope(id, PROGRESS, Some(tenant), Some("u")))
                .await;
        }
        for (client, tenant) in &mut clients {
            for want in ["order-1001", "order-1002"] {
                let e = client.next_event().await;
                assert_eq!(
                    (e["event_id"].as_str(), e["tenant_id"].as_str()),
                    (Some(want), Some(*tenant))
                );
            }
        }
        assert_eq!(gw.metric("gateway_duplicates_dropped_total").await, 0.0);

        // Resuming from an id both tenants used finds the client's own tenant's event.
        for t in BOTH {
            for tenant in ["tenant-a", "tenant-b"] {
                let auth = Auth::Bearer(token(tenant, "u"));
                let path = if t == Transport::Ws {
                    "/ws?last_event_id=order-1001"
                } else {
                    "/sse?last_event_id=order-1001"
                };
                let mut c = match t {
                    Transport::Ws => Client::Ws(WsClient::connect(&gw, path, auth).await.unwrap()),
                    Transport::Sse => {
                        Client::Sse(SseClient::connect(&gw, path, auth).await.unwrap())
                    }
                };
                let e = c.next_any().await;
                assert_eq!(e["event_id"], "order-1002", "{t:?} {tenant}: {e}");
                assert_eq!(e["tenant_id"], tenant);
            }
        }
        assert_eq!(
            gw.metric("gateway_resumes_total{outcome=\"resync\"}").await,
            0.0
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// An HS256 token over raw JSON text, which a serializer would never produce.
fn raw_token(header: &str, payload: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let message = format!("{}.{}", b64(header), b64(payload));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_repeated_claims_or_a_crit_header_are_refused() {
    bounded(async {
        let gw = GatewayBuilder::new("dup-claims").start().await;
        let exp = now() + 600;
        let plain = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = format!(r#"{{"sub":"u","tenant_id":"A","exp":{exp}}}"#);
        let twice = format!(r#"{{"sub":"u","tenant_id":"A","tenant_id":"B","exp":{exp}}}"#);
        let crit = r#"{"alg":"HS256","typ":"JWT","crit":["x-tenant"],"x-tenant":"B"}"#;
        for t in BOTH {
            // The control: the same signing path is accepted when nothing is repeated.
            assert!(
                Client::connect(&gw, t, Auth::Bearer(raw_token(plain, &good)))
                    .await
                    .is_ok()
            );
            for token in [raw_token(plain, &twice), raw_token(crit, &good)] {
                let refused = Client::connect(&gw, t, Auth::Bearer(token)).await;
                assert_eq!(refused.err(), Some(401), "{t:?}");
            }
        }
        assert_eq!(
            gw.metric("gateway_auth_failures_total{reason=\"claims\"}")
                .await,
            2.0
        );
        assert_eq!(
            gw.metric("gateway_auth_failures_total{reason=\"malformed\"}")
                .await,
            2.0
        );
        gw.shutdown().await;
    })
    .await;
}

/// Connects, waits `delay`, starts a request head with `start` and trickles one more
/// header byte every 100 ms; returns how long after connecting the gateway answered or
/// closed, and what it answered.
async fn trickle(gw: &Gateway, delay: Duration, start: &str) -> (Duration, String) {
    let began = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(delay).await;
    s.write_all(start.as_bytes()).await.unwrap();
    s.write_all(b"X-Slow: ").await.unwrap();
    let mut answer = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
            }
        }
        assert!(
            began.elapsed() < WAIT,
            "the gateway never gave up on a trickled head"
        );
    }
    (
        began.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_head_gets_one_timeout_from_accept() {
    bounded(async {
        let gw = GatewayBuilder::new("head-timeout")
            .arg("handshake-timeout-secs", "3")
            .start()
            .await;
        // The first bytes come just before the timeout; one timeout ends it at about 3 s,
        // two in a row would take until about 5.7 s.
        let wait = Duration::from_millis(2700);
        let (took, answer) = trickle(&gw, wait, "GET /sse HTTP/1.1\r\nHost: x\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "raw SSE path answered {answer:?}"
        );
        assert!(
            took < Duration::from_millis(4800),
            "SSE head answered after {took:?}"
        );
        let (took, answer) = trickle(&gw, wait, "GET /ws HTTP/1.1\r\nHost: x\r\n").await;
        // hyper closes a head that times out without an answer (documented).
        assert_eq!(answer, "", "hyper path answered {answer:?}");
        assert!(
            took < Duration::from_millis(4800),
            "hyper head closed after {took:?}"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_beyond_the_pending_cap_are_closed_and_admitted_clients_unaffected() {
    bounded(async {
        let gw = GatewayBuilder::new("pending-cap")
            .arg("max-pending-connections", "4")
            .arg("handshake-timeout-secs", "60")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut admitted = Client::as_user(&gw, Transport::Ws, "acme", "u").await;

        // Two silent sockets, checked through /metrics while slots are still free for the
        // metrics requests themselves.
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
        }
        gw.wait_metric("gateway_pending_connections", 2.0).await;
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
        }
        // The cap is full now (nothing else can reach /metrics either): the next socket is
        // closed at once, long before the 60 s head timeout. A kept one would still be
        // open when this read gives up.
        let mut fourth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(WAIT, fourth.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

        // The admitted client still gets its events.
        publisher
            .publish(
                PROGRESS,
                &envelope("p-1", PROGRESS, Some("acme"), Some("u")),
            )
            .await;
        assert_eq!(admitted.next_event().await["event_id"], "p-1");

        // Once the silent ones leave, new clients are served again.
        drop(silent);
        gw.wait_metric_at_most("gateway_pending_connections", 0.0)
            .await;
        assert!(gw.metric("gateway_pending_connections_refused_total").await >= 1.0);
        Client::as_user(&gw, Transport::Sse, "acme", "u").await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// A forged log line: what a client would make appear after a newline in its input.
const FORGED: &str = "2099-01-01T00:00:00Z ERROR realtime_gateway::broker: forged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_input_with_newlines_cannot_forge_text_log_lines() {
    bounded(async {
        let log = LogFile::new();
        let exchange = unique("log-forging");
        let (mut cmd, port) = gateway_process(&exchange, None);
        let mut child = cmd
            .env("GATEWAY_LOG", "info,realtime_gateway=debug")
            .env("GATEWAY_LOG_FORMAT", "text")
            .stdout(log.stdio())
            .stderr(log.stdio())
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), &exchange);
        gw.wait_ready().await;

        // A `types=` pattern (refused), an in-band subscribe frame and a token's `sub`,
        // each carrying a newline and a line of its own.
        let query = format!("/sse?types=ok%0A{}-types", FORGED.replace(' ', "%20"));
        let refused = SseClient::connect(&gw, &query, Auth::Bearer(token("acme", "u"))).await;
        assert_eq!(refused.err(), Some(400));
        let user = format!("u\n{FORGED}-sub");
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("acme", &user)))
            .await
            .unwrap();
        let frame = json!({"type": "subscribe", "types": [format!("ok\n{FORGED}-frame")]});
        ws.send_text(&frame.to_string()).await;
        assert_eq!(ws.next_json().await["reason"], "invalid_types");
        drop(ws);

        // Each reached the log, escaped, on the line of the event that carried it.
        for (what, suffix) in [
            ("refused: bad types= selection", "forged-types"),
            ("bad selection", "forged-frame"),
            ("connection ended", "forged-sub"),
        ] {
            let line = log.wait_line(&[what, suffix]).await;
            assert!(line.contains(&format!("\\n{FORGED}")), "{line}");
        }
        child.kill().await.unwrap();
        let text = log.text();
        assert!(
            !text.lines().any(|l| l.starts_with("2099-")),
            "a client forged a log line:\n{text}"
        );
        Publisher::connect(&exchange).await.cleanup().await;
    })
    .await;
}
