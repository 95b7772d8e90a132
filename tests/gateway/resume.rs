//! Resume: a client that reconnects with the last event id it saw gets what it missed, in
//! order, then live events, on any instance; or an honest resync.

use serde_json::json;

use super::support::*;

fn event(id: &str, tenant: &str, user: Option<&str>) -> serde_json::Value {
    envelope(id, PROGRESS, Some(tenant), user)
}

/// Connects as (t, u) resuming after `last`: WS and SSE by query parameter, SSE also by
/// the `Last-Event-ID` header EventSource sends.
async fn resume(gw: &Gateway, how: &str, last: &str) -> Client {
    let auth = Auth::Bearer(token("t", "u"));
    let q = format!("last_event_id={}", urlencode(last));
    match how {
        "ws" => Client::Ws(
            WsClient::connect(gw, &format!("/ws?{q}"), auth)
                .await
                .unwrap(),
        ),
        "sse-query" => Client::Sse(
            SseClient::connect(gw, &format!("/sse?{q}"), auth)
                .await
                .unwrap(),
        ),
        "sse-header" => Client::Sse(
            // The header wins over a stale id left in the URL.
            SseClient::connect_with(
                gw,
                "/sse?last_event_id=stale",
                auth,
                &[("last-event-id", last)],
            )
            .await
            .unwrap(),
        ),
        other => panic!("{other}"),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const HOWS: [&str; 3] = ["ws", "sse-query", "sse-header"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_events_are_replayed_in_order_then_live() {
    bounded(async {
        let gw = GatewayBuilder::new("resume").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for how in HOWS {
            let seen = format!("{how}-seen");
            let mut first = Client::as_user(&gw, Transport::Sse, "t", "u").await;
            publisher
                .publish(PROGRESS, &event(&seen, "t", Some("u")))
                .await;
            assert_eq!(first.next_event().await["event_id"], seen.as_str());
            drop(first);

            // Missed while away: own, tenant-wide, and events that are not for this user.
            let missed = [
                (format!("{how}-m1"), "t", Some("u")),
                (format!("{how}-other-user"), "t", Some("v")),
                (format!("{how}-m2"), "t", None),
                (format!("{how}-other-tenant"), "t2", Some("u")),
                (format!("{how}-m3"), "t", Some("u")),
            ];
            for (id, tenant, user) in &missed {
                publisher.publish(PROGRESS, &event(id, tenant, *user)).await;
            }
            // Wait until the gateway has them (it consumes asynchronously).
            let marker = format!("{how}-sync");
            let mut sync = Client::as_user(&gw, Transport::Ws, "t", "sync").await;
            publisher
                .publish(PROGRESS, &event(&marker, "t", Some("sync")))
                .await;
            assert_eq!(sync.ids_until(&marker).await.last().unwrap(), &marker);

            let mut back = resume(&gw, how, &seen).await;
            let live = format!("{how}-live");
            publisher
                .publish(PROGRESS, &event(&live, "t", Some("u")))
                .await;
            let want = [
                format!("{how}-m1"),
                format!("{how}-m2"),
                format!("{how}-m3"),
                live.clone(),
            ];
            assert_eq!(back.ids_until(&live).await, want, "{how}");
        }
        assert_eq!(
            gw.metric("gateway_resumes_total{outcome=\"replayed\"}")
                .await,
            3.0
        );
        assert!(gw.metric("gateway_history_events").await >= 1.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_works_on_another_instance() {
    bounded(async {
        let a = GatewayBuilder::new("resume-a").start().await;
        let b = GatewayBuilder::new("resume-b")
            .exchange(&a.exchange)
            .start()
            .await;
        let publisher = Publisher::connect(&a.exchange).await;
        let mut on_a = Client::as_user(&a, Transport::Sse, "t", "u").await;
        publisher
            .publish(PROGRESS, &event("seen", "t", Some("u")))
            .await;
        assert_eq!(on_a.next_event().await["event_id"], "seen");
        drop(on_a);
        a.shutdown().await;

        publisher
            .publish(PROGRESS, &event("missed-1", "t", Some("u")))
            .await;
        publisher
            .publish(PROGRESS, &event("missed-2", "t", None))
            .await;
        let mut sync = Client::as_user(&b, Transport::Ws, "t", "sync").await;
        publisher
            .publish(PROGRESS, &event("sync", "t", Some("sync")))
            .await;
        assert_eq!(sync.ids_until("sync").await.last().unwrap(), "sync");

        for how in HOWS {
            let mut on_b = resume(&b, how, "seen").await;
            assert_eq!(on_b.next_event().await["event_id"], "missed-1", "{how}");
            assert_eq!(on_b.next_event().await["event_id"], "missed-2", "{how}");
        }
        publisher.cleanup().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    bounded(async {
        // A queue that holds every live event while the replay is written, so a busy
        // machine cannot turn the resumed client into a slow one.
        let gw = GatewayBuilder::new("seam")
            .arg("send-queue-len", "1024")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let n = 400;
        let all: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        for how in HOWS {
            let mut first = Client::as_user(&gw, Transport::Ws, "t", "u").await;
            let exchange = gw.exchange.clone();
            let ids = all.iter().map(|i| format!("{how}-{i}")).collect::<Vec<_>>();
            let to_publish = ids.clone();
            let pumping = tokio::spawn(async move {
                let p = Publisher::connect(&exchange).await;
                for (i, id) in to_publish.iter().enumerate() {
                    // Every third event tenant-wide, so both indexes cross the seam.
                    let user = if i % 3 == 0 { None } else { Some("u") };
                    p.publish(PROGRESS, &event(id, "t", user)).await;
                    if i % 20 == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                }
            });
            // Read some, drop the connection mid-stream, resume at once while the
            // publisher keeps going.
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(
                    first.next_event().await["event_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            drop(first);
            let mut back = resume(&gw, how, got.last().unwrap()).await;
            got.extend(back.ids_until(ids.last().unwrap()).await);
            pumping.await.unwrap();
            assert_eq!(got, ids, "{how}: every event exactly once, in order");
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Holds the consumer at the resume seam for one event id: after the history has it,
/// before the hub fans it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_at_the_seam_is_replayed_once_not_also_live() {
    bounded(async {
        let gate = SeamGate::new();
        let gw = GatewayBuilder::new("seam-hook")
            .seam_hook(gate.hook())
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for how in HOWS {
            let (before, at, after) = (
                format!("{how}-before"),
                format!("{how}-at-seam"),
                format!("{how}-after"),
            );
            // Once a live client has `before`, so does the history (it resumes from there).
            let mut live = Client::as_user(&gw, Transport::Ws, "t", "u").await;
            publisher
                .publish(PROGRESS, &event(&before, "t", Some("u")))
                .await;
            assert_eq!(live.next_event().await["event_id"], before.as_str());
            drop(live);
            publisher
                .publish(PROGRESS, &event(&at, "t", Some("u")))
                .await;
            gate.held.notified().await;
            // The event is in the history but not yet live: the replay has it, and its
            // live copy arrives after the registration.
            let mut back = resume(&gw, how, &before).await;
            gate.release.notify_one();
            publisher
                .publish(PROGRESS, &event(&after, "t", Some("u")))
                .await;
            assert_eq!(
                back.ids_until(&after).await,
                [at.clone(), after.clone()],
                "{how}"
            );
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_evicted_ids_get_resync_then_live_events() {
    bounded(async {
        let gw = GatewayBuilder::new("evict")
            .arg("history-max-events", "3")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut sync = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        for i in 0..5 {
            publisher
                .publish(PROGRESS, &event(&format!("h{i}"), "t", Some("u")))
                .await;
        }
        assert_eq!(sync.ids_until("h4").await.len(), 5);

        for how in HOWS {
            for last in ["never-published", "h0", "h1"] {
                let mut c = resume(&gw, how, last).await;
                c.expect_resync().await;
            }
            // h2 is still held (h2, h3, h4 are the last three).
            let mut c = resume(&gw, how, "h2").await;
            assert_eq!(c.next_event().await["event_id"], "h3", "{how}");
            assert_eq!(c.next_event().await["event_id"], "h4", "{how}");
        }
        let mut c = resume(&gw, "ws", "h0").await;
        c.expect_resync().await;
        publisher
            .publish(PROGRESS, &event("after-resync", "t", Some("u")))
            .await;
        assert_eq!(c.next_event().await["event_id"], "after-resync");
        assert_eq!(gw.metric("gateway_history_events").await, 3.0);
        assert!(gw.metric("gateway_resumes_total{outcome=\"resync\"}").await >= 9.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_evicts_by_bytes_and_age() {
    bounded(async {
        // Bytes: each padded event is ~1.3 KiB; 4 KiB holds about three of them.
        let gw = GatewayBuilder::new("bytes")
            .arg("history-max-bytes", "4096")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut sync = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        for i in 0..6 {
            let mut e = event(&format!("b{i}"), "t", Some("u"));
            e["data"]["pad"] = json!("x".repeat(1024));
            publisher.publish(PROGRESS, &e).await;
        }
        assert_eq!(sync.ids_until("b5").await.len(), 6);
        assert!(gw.metric("gateway_history_bytes").await <= 4096.0);
        let mut c = resume(&gw, "ws", "b0").await;
        c.expect_resync().await;
        let mut c = resume(&gw, "ws", "b4").await;
        assert_eq!(c.next_event().await["event_id"], "b5");
        publisher.cleanup().await;
        gw.shutdown().await;

        // Age: after max-age the id is forgotten, unless it is still the tenant's newest
        // event (nothing came since: a quiet page resumes).
        let gw = GatewayBuilder::new("age")
            .arg("history-max-age-secs", "1")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut sync = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        for id in ["old", "newest"] {
            publisher
                .publish(PROGRESS, &event(id, "t", Some("u")))
                .await;
        }
        assert_eq!(sync.ids_until("newest").await, ["old", "newest"]);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let mut c = resume(&gw, "sse-header", "old").await;
        c.expect_resync().await;
        let mut quiet = resume(&gw, "sse-header", "newest").await;
        publisher
            .publish(PROGRESS, &event("next", "t", Some("u")))
            .await;
        assert_eq!(quiet.next_event().await["event_id"], "next");
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_event_ids_resume_through_last_event_id() {
    bounded(async {
        let gw = GatewayBuilder::new("utf8ids").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut live = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        for id in ["évènement-1", "évènement-2"] {
            publisher
                .publish(PROGRESS, &event(id, "t", Some("u")))
                .await;
        }
        assert_eq!(live.ids_until("évènement-2").await.len(), 2);
        // EventSource sends the id back as UTF-8 bytes in the header.
        let mut sse = SseClient::connect_with(
            &gw,
            "/sse",
            Auth::Bearer(token("t", "u")),
            &[("last-event-id", "évènement-1")],
        )
        .await
        .unwrap();
        assert_eq!(sse.next_event().await.id.as_deref(), Some("évènement-2"));
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}
