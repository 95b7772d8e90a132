//! What the shipped proxy configurations do to requests and responses on their own,
//! checked against a recording upstream instead of the gateway (which would hide a
//! missing setting: it sends `X-Accel-Buffering: no` itself): the client's address in
//! `X-Forwarded-For`, an SSE stream passed on as it is written rather than buffered, and
//! `/metrics` not reachable from outside.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::harness::{Proxy, ProxyKind};
use crate::support::{WAIT, bounded};

/// An upstream that records each request head and answers every request with 200; `/sse`
/// gets a stream that writes one event, then a second only when `release` is notified.
struct Upstream {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (h, r) = (heads.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (heads, release) = (h.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let sse = head.starts_with("GET /sse ");
                    heads.lock().unwrap().push(head);
                    if sse {
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                                  Connection: close\r\n\r\ndata: first\n\n",
                            )
                            .await;
                        release.notified().await;
                        let _ = sock.write_all(b"data: second\n\n").await;
                    } else {
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                            )
                            .await;
                    }
                });
            }
        });
        Upstream {
            port,
            heads,
            release,
        }
    }

    fn heads_for(&self, path: &str) -> Vec<String> {
        let prefix = format!("GET {path} ");
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .filter(|h| h.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

async fn forwards_and_streams(kind: ProxyKind) {
    // Both upstream slots point at the same recorder, so every request is seen.
    let up = Upstream::start().await;
    let proxy = Proxy::start(kind, &[up.port, up.port]).await;
    let http = reqwest::Client::new();

    // The first SSE event arrives while the upstream still holds the second back.
    let resp = tokio::time::timeout(WAIT, http.get(format!("{}/sse", proxy.http_url())).send())
        .await
        .unwrap_or_else(|_| panic!("{kind:?} held back the SSE response head (buffering)"))
        .unwrap();
    assert_eq!(resp.status(), 200, "{kind:?}\n{}", proxy.logs());
    let mut body = resp.bytes_stream();
    let mut got = String::new();
    while !got.contains("data: first\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap_or_else(|_| panic!("{kind:?} held back an SSE event (buffering)"))
            .expect("stream open")
            .unwrap();
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    up.release.notify_one();

    let heads = up.heads_for("/sse");
    assert_eq!(heads.len(), 1, "{kind:?}: {heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-for: 127.0.0.1"),
        "{kind:?} must pass the client's address: {head}"
    );

    // Internal endpoints are not served through the proxy.
    for path in ["/metrics", "/readyz", "/healthz"] {
        let status = http
            .get(format!("{}{path}", proxy.http_url()))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{kind:?} exposes {path}");
    }
    assert!(up.heads_for("/metrics").is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_forwards_the_client_address_and_streams_sse_unbuffered() {
    bounded(forwards_and_streams(ProxyKind::Nginx)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_forwards_the_client_address_and_streams_sse_unbuffered() {
    bounded(forwards_and_streams(ProxyKind::Haproxy)).await;
}
