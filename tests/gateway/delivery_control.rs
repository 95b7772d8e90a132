//! Progress that never falls behind (conflation) and only what the page shows (interest),
//! against the real broker.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use super::support::*;

const COMPLETED: &str = "render.job.completed.v1";
const NOTIFICATION: &str = "notification.created.v1";

fn progress(job: usize, pct: usize, tenant: &str, user: &str) -> Value {
    let mut e = envelope(
        &format!("p-{job}-{pct}"),
        PROGRESS,
        Some(tenant),
        Some(user),
    );
    // Padded, so 5,000 of them are far more than the socket buffers hold.
    e["data"] = json!({"job_id": format!("job-{job}"), "progress": pct, "log": "x".repeat(2048)});
    e
}

fn completed(job: usize, tenant: &str, user: &str) -> Value {
    let mut e = envelope(&format!("done-{job}"), COMPLETED, Some(tenant), Some(user));
    e["data"] = json!({"job_id": format!("job-{job}")});
    e
}

/// A WebSocket client with a small receive buffer that is simply not read for a while.
async fn lazy_ws(
    gw: &Gateway,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let mut req = gw.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("t", user)).parse().unwrap(),
    );
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_each_jobs_latest_progress_and_completion() {
    bounded(async {
        let (jobs, ticks) = (20, 250);
        let gw = GatewayBuilder::new("conflate")
            .arg("send-queue-len", "64")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut lazy = lazy_ws(&gw, "u").await;
        let mut reader = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        gw.wait_metric("gateway_connections{transport=\"ws\"}", 1.0)
            .await;

        // 5,000 progress events for 20 jobs, then each job's completion. The reader is
        // waited for after every tick, so it is never behind and gets every event; the
        // lazy client reads nothing until the end.
        let total = jobs * ticks + jobs;
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = got.clone();
        let read_all = tokio::spawn(async move {
            let mut ids = Vec::with_capacity(total);
            while ids.len() < total {
                let e = reader.next_event().await;
                ids.push(e["event_id"].as_str().unwrap().to_owned());
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            ids
        });
        for pct in 1..=ticks {
            for job in 0..jobs {
                publisher
                    .publish(PROGRESS, &progress(job, pct, "t", "u"))
                    .await;
            }
            let deadline = tokio::time::Instant::now() + WAIT;
            while got.load(std::sync::atomic::Ordering::SeqCst) < pct * jobs {
                assert!(tokio::time::Instant::now() < deadline, "reader stalled");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        for job in 0..jobs {
            publisher
                .publish(COMPLETED, &completed(job, "t", "u"))
                .await;
        }
        let all = read_all.await.unwrap();
        assert_eq!(all.len(), total, "a client that reads gets every event");

        // Now the lazy client reads: it was not disconnected, and per job it sees rising
        // progress ending at the last tick, then the completion.
        let mut last_pct = vec![0usize; jobs];
        let mut done = vec![false; jobs];
        while done.iter().any(|d| !d) {
            let msg = tokio::time::timeout(WAIT, lazy.next())
                .await
                .expect("events stopped")
                .expect("stream ended")
                .unwrap();
            let Message::Text(text) = msg else {
                assert!(!matches!(msg, Message::Close(_)), "disconnected: {msg:?}");
                continue;
            };
            let e: Value = serde_json::from_str(&text).unwrap();
            let job: usize = e["data"]["job_id"].as_str().unwrap()[4..].parse().unwrap();
            if e["event_type"] == COMPLETED {
                assert_eq!(
                    last_pct[job], ticks,
                    "job {job} completed before its last progress"
                );
                done[job] = true;
            } else {
                let pct = e["data"]["progress"].as_u64().unwrap() as usize;
                assert!(
                    pct > last_pct[job],
                    "job {job}: {pct} after {}",
                    last_pct[job]
                );
                assert!(!done[job]);
                last_pct[job] = pct;
            }
        }
        assert!(gw.metric("gateway_events_conflated_total").await > 0.0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_cannot_be_conflated_still_make_a_slow_client() {
    bounded(async {
        let gw = GatewayBuilder::new("no-conflate")
            .arg("send-queue-len", "16")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let _lazy = lazy_ws(&gw, "u").await;
        gw.wait_metric("gateway_connections{transport=\"ws\"}", 1.0)
            .await;
        // 9.6 MB: more than the kernel's socket buffers (up to 4 MiB on loopback) hold.
        let pad = "x".repeat(16 * 1024);
        for i in 0..600 {
            let mut e = envelope(&format!("n-{i}"), NOTIFICATION, Some("t"), Some("u"));
            e["data"]["pad"] = json!(pad);
            publisher.publish("notification.created.v1", &e).await;
        }
        gw.wait_metric("gateway_disconnects_total{reason=\"slow_client\"}", 1.0)
            .await;
        assert_eq!(gw.metric("gateway_events_conflated_total").await, 0.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

async fn ws_at(gw: &Gateway, path: &str, user: &str) -> WsClient {
    WsClient::connect(gw, path, Auth::Bearer(token("t", user)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_select_live_events_and_replays_without_widening_the_token() {
    bounded(async {
        let gw = GatewayBuilder::new("interest").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut bell = ws_at(&gw, "/ws?types=notification.%23", "u").await;
        let mut sse = SseClient::connect(
            &gw,
            "/sse?types=render.job.*.v1",
            Auth::Bearer(token("t", "u")),
        )
        .await
        .unwrap();
        // Selecting everything never reaches another user's events.
        let mut other = ws_at(&gw, "/ws?types=%23", "v").await;

        let note = |id: &str, user: &str| envelope(id, NOTIFICATION, Some("t"), Some(user));
        publisher
            .publish(PROGRESS, &progress(1, 10, "t", "u"))
            .await;
        publisher.publish(NOTIFICATION, &note("n1", "u")).await;
        publisher.publish(NOTIFICATION, &note("for-v", "v")).await;
        assert_eq!(bell.next_json().await["event_id"], "n1");
        assert_eq!(sse.next_event().await.id.as_deref(), Some("p-1-10"));
        assert_eq!(other.next_json().await["event_id"], "for-v");

        // In-band: add progress, then drop notifications.
        bell.send_text(r#"{"type":"subscribe","types":["render.job.#"]}"#)
            .await;
        assert_eq!(
            bell.next_json().await,
            json!({"type":"subscribed","types":["notification.#","render.job.#"]})
        );
        publisher
            .publish(PROGRESS, &progress(1, 20, "t", "u"))
            .await;
        assert_eq!(bell.next_json().await["event_id"], "p-1-20");
        bell.send_text(r#"{"type":"unsubscribe","types":["notification.#"]}"#)
            .await;
        assert_eq!(
            bell.next_json().await,
            json!({"type":"subscribed","types":["render.job.#"]})
        );
        publisher.publish(NOTIFICATION, &note("n2", "u")).await;
        publisher
            .publish(PROGRESS, &progress(1, 30, "t", "u"))
            .await;
        assert_eq!(
            bell.next_json().await["event_id"],
            "p-1-30",
            "n2 not selected"
        );
        bell.send_text(r#"{"type":"subscribe","types":["bad pattern"]}"#)
            .await;
        assert_eq!(bell.next_json().await["reason"], "invalid_types");

        // Replays are selected the same way: resuming after n1 with only notifications.
        let mut back = ws_at(
            &gw,
            "/ws?last_event_id=n1&types=notification.created.v1",
            "u",
        )
        .await;
        publisher.publish(NOTIFICATION, &note("n3", "u")).await;
        assert_eq!(back.next_json().await["event_id"], "n2");
        assert_eq!(back.next_json().await["event_id"], "n3");

        // Bad selections are refused before the upgrade.
        for bad in ["a..b", "x%20y", "%2A%2A"] {
            let refused = WsClient::connect(
                &gw,
                &format!("/ws?types={bad}"),
                Auth::Bearer(token("t", "u")),
            )
            .await;
            assert_eq!(refused.err(), Some(400), "{bad}");
        }
        assert!(gw.metric("gateway_events_filtered_total").await >= 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_are_conflated() {
    bounded(async {
        let gw = GatewayBuilder::new("replay-conflate").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut live = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        publisher
            .publish(
                NOTIFICATION,
                &envelope("seen", NOTIFICATION, Some("t"), Some("u")),
            )
            .await;
        assert_eq!(live.next_event().await["event_id"], "seen");
        for pct in 1..=50 {
            for job in 0..3 {
                publisher
                    .publish(PROGRESS, &progress(job, pct, "t", "u"))
                    .await;
            }
        }
        publisher.publish(COMPLETED, &completed(0, "t", "u")).await;
        // Wait until the history has it all (the live client may itself have had some
        // progress conflated, which is fine).
        while live.next_event().await["event_id"] != "done-0" {}
        let mut back = ws_at(&gw, "/ws?last_event_id=seen", "u").await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(
                back.next_json().await["event_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(got, expected_replay());
        assert!(gw.metric("gateway_events_conflated_total").await >= 147.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Each job's last progress in its original place among the others' (job 0, 1, 2 at tick
/// 50 were published in that order), then the completion.
fn expected_replay() -> Vec<String> {
    ["p-0-50", "p-1-50", "p-2-50", "done-0"]
        .map(String::from)
        .to_vec()
}
