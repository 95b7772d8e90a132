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
            .env("GATEWAY_WRITE_TIMEOUT_SECS", "600")
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
            .arg("write-timeout-secs", "600")
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
            .arg("write-timeout-secs", "3")
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
            .arg("write-timeout-secs", "600")
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

/// Opens `n` sockets from `source` (any 127.x address) that never send a byte.
async fn silent_sockets(gw: &Gateway, source: [u8; 4], n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        out.push(socket.connect(gw.addr).await.unwrap());
    }
    out
}

/// Sends one raw HTTP request and returns the status code of the answer, or `None` when
/// the socket was closed without one.
async fn raw_status(gw: &Gateway, head: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_at_the_cap_yield_to_new_clients() {
    bounded(async {
        // The probe's numbers: 300 sockets that send nothing, more than the default cap,
        // with a head timeout far longer than the test.
        let gw = GatewayBuilder::new("pending-cap")
            .arg("handshake-timeout-secs", "300")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut admitted = Client::as_user(&gw, Transport::Ws, "acme", "u").await;
        let silent = silent_sockets(&gw, [127, 0, 0, 1], 300).await;

        // Every kind of request still gets its answer: probes, metrics and new clients
        // wait in the backlog for the oldest silent sockets to make room, and are served.
        let healthz = "GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
        assert_eq!(raw_status(&gw, healthz).await, Some(200));
        assert_eq!(gw.status("/readyz").await, 200);
        let mut sse = Client::as_user(&gw, Transport::Sse, "acme", "u").await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "acme", "u").await;
        publisher
            .publish(
                PROGRESS,
                &envelope("p-1", PROGRESS, Some("acme"), Some("u")),
            )
            .await;
        for client in [&mut admitted, &mut sse, &mut ws] {
            assert_eq!(client.next_event().await["event_id"], "p-1");
        }
        // Memory stays bounded: never more pending than the cap, the rest in the kernel.
        assert!(gw.metric("gateway_pending_connections").await <= 256.0);
        let yielded = "gateway_pending_connections_yielded_total{reason=\"oldest\"}";
        assert!(gw.metric(yielded).await >= 1.0);
        drop(silent);
        gw.wait_metric_at_most("gateway_pending_connections", 0.0)
            .await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_pending_limit() {
    bounded(async {
        let gw = GatewayBuilder::new("pending-address")
            .arg("handshake-timeout-secs", "300")
            .arg("max-pending-per-address", "8")
            .start()
            .await;
        // From another loopback address than the clients'.
        let silent = silent_sockets(&gw, [127, 0, 0, 2], 300).await;
        let by_address = "gateway_pending_connections_yielded_total{reason=\"address\"}";
        gw.wait_metric(by_address, 292.0).await;
        assert!(gw.metric("gateway_pending_connections").await <= 9.0);
        // Its newest sockets are the ones it keeps; everyone else never waited for it.
        assert_eq!(gw.metric("gateway_accept_paused_total").await, 0.0);
        let mut client = Client::as_user(&gw, Transport::Sse, "acme", "u").await;
        let publisher = Publisher::connect(&gw.exchange).await;
        publisher
            .publish(
                PROGRESS,
                &envelope("p-1", PROGRESS, Some("acme"), Some("u")),
            )
            .await;
        assert_eq!(client.next_event().await["event_id"], "p-1");
        drop(silent);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// A round trip between a browser and the gateway.
const STORM_RTT: Duration = Duration::from_millis(50);

/// One SSE client of a storm: resumes from `last`, then reads until `want` arrives.
/// Returns what went wrong, if anything.
async fn storm_client(
    addr: std::net::SocketAddr,
    token: String,
    last: &str,
    want: &str,
) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The head follows the connection by about a round trip on a real network, so in a
    // storm many accepted sockets are pending at once.
    tokio::time::sleep(STORM_RTT).await;
    let head = format!(
        "GET /sse HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nLast-Event-ID: {last}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.contains(want) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err(format!("closed after {:?}", got.lines().next())),
            Ok(Ok(n)) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => return Err(format!("read: {e} after {:?}", got.lines().next())),
            Err(_) => {
                return Err(format!(
                    "nothing within 60 s after {:?}",
                    got.lines().next()
                ));
            }
        }
    }
    if !got.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {:?}", got.lines().next()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_1500_resuming_clients_is_admitted_whole() {
    bounded(async {
        const CLIENTS: usize = 1500;
        // The default pending cap and head timeout: the storm is what an instance meets
        // when another one dies and its browsers resume here at once.
        let gw = GatewayBuilder::new("storm").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // The event is in the history once a client sees it live.
        let mut witness = Client::as_user(&gw, Transport::Sse, "storm", "witness").await;
        publisher
            .publish(PROGRESS, &envelope("before", PROGRESS, Some("storm"), None))
            .await;
        assert_eq!(witness.next_event().await["event_id"], "before");
        let tokens: Vec<String> = (0..CLIENTS)
            .map(|i| token("storm", &format!("u{i}")))
            .collect();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
        let mut clients = tokio::task::JoinSet::new();
        for token in tokens {
            let (start, addr) = (start.clone(), gw.addr);
            clients.spawn(async move {
                start.wait().await;
                storm_client(addr, token, "before", "id: after").await
            });
        }
        start.wait().await;
        // Published once every client is connected (each one counts as a connection once
        // its stream is registered), so each must get it live or from its resume.
        let connections = "gateway_connections{transport=\"sse\"}";
        let deadline = Instant::now() + Duration::from_secs(60);
        while gw.metric(connections).await < (CLIENTS + 1) as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publisher
            .publish(PROGRESS, &envelope("after", PROGRESS, Some("storm"), None))
            .await;
        let mut failures = Vec::new();
        while let Some(outcome) = clients.join_next().await {
            if let Err(why) = outcome.unwrap() {
                failures.push(why);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {CLIENTS} clients failed, first: {:?}",
            failures.len(),
            failures.first()
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_of_many_hashes_stalls_no_one() {
    bounded(async {
        let gw = GatewayBuilder::new("hash-runs").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // What the probe sent: a run of 100 `#` words before a word no event has. A
        // backtracking matcher spent seconds per 4-word event on it, on the consumer task.
        let hashes = ["%23"; 100].join(".");
        let path = format!("/sse?types={hashes}.z0");
        let mut hostile = SseClient::connect(&gw, &path, Auth::Bearer(token("evil", "e")))
            .await
            .unwrap();
        // The same through the WebSocket's in-band subscribe.
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("evil", "e")))
            .await
            .unwrap();
        let run = ["#"; 100].join(".");
        ws.send_text(&json!({"type": "subscribe", "types": [format!("{run}.z0")]}).to_string())
            .await;
        let reply = ws.next_json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let mut other = Client::as_user(&gw, Transport::Sse, "acme", "u").await;

        for i in 0..20 {
            let id = format!("evil-{i}");
            let body = envelope(&id, PROGRESS, Some("evil"), Some("e"));
            publisher.publish(PROGRESS, &body).await;
        }
        let matching = "render.job.z0";
        publisher
            .publish(
                matching,
                &envelope("evil-z", matching, Some("evil"), Some("e")),
            )
            .await;
        publisher
            .publish(
                PROGRESS,
                &envelope("ok-1", PROGRESS, Some("acme"), Some("u")),
            )
            .await;
        // Another tenant's event arrives within the usual deadline, and the selection
        // still means what it says: only the event whose last word is `z0`.
        assert_eq!(other.next_event().await["event_id"], "ok-1");
        let got = hostile.next_event().await;
        assert_eq!(got.id.as_deref(), Some("evil-z"), "{got:?}");
        assert_eq!(ws.next_json().await["event_id"], "evil-z");
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
            ("refused: bad selection", "forged-types"),
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
