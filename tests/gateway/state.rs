//! Live state: the latest event per render job, served as a snapshot on connect, in band
//! and after a resync, for the keys a page selects, with no gap or duplicate against the
//! live events that follow; the same from a fresh instance fed by the history stream.

use serde_json::{Value, json};

use super::support::*;

const QUEUED: &str = "render.job.queued.v1";
const COMPLETED: &str = "render.job.completed.v1";
const NOTE: &str = "notification.created.v1";

/// A render job event of `job` for user `u` of tenant `t`.
fn job(id: &str, event_type: &str, job: &str, progress: u32) -> Value {
    let mut e = envelope(id, event_type, Some("t"), Some("u"));
    e["data"] = json!({"job_id": job, "progress": progress});
    e
}

/// Publishes events and waits until a live client of `t`/`u` has the last one, so the
/// gateway holds them all.
async fn publish_all(gw: &Gateway, publisher: &Publisher, events: &[Value]) {
    let mut witness = Client::as_user(gw, Transport::Ws, "t", "u").await;
    for e in events {
        publisher
            .publish(e["event_type"].as_str().unwrap(), e)
            .await;
    }
    let last = events.last().unwrap()["event_id"].as_str().unwrap();
    witness.ids_until(last).await;
}

/// Connects with `query` and returns the client and the events of its first message,
/// which must be a snapshot.
async fn with_snapshot(gw: &Gateway, t: Transport, query: &str) -> (Client, Vec<String>) {
    let auth = Auth::Bearer(token("t", "u"));
    let mut client = match t {
        Transport::Ws => Client::Ws(
            WsClient::connect(gw, &format!("/ws?{query}"), auth)
                .await
                .unwrap(),
        ),
        Transport::Sse => Client::Sse(
            SseClient::connect(gw, &format!("/sse?{query}"), auth)
                .await
                .unwrap(),
        ),
    };
    let snapshot = next_snapshot(&mut client).await;
    (client, snapshot)
}

/// The event ids of the next message, which must be a snapshot (over SSE, an
/// `event: snapshot` without an `id:`).
async fn next_snapshot(client: &mut Client) -> Vec<String> {
    let message: Value = match client {
        Client::Ws(ws) => ws.next_json().await,
        Client::Sse(sse) => {
            let e = sse.next_event().await;
            assert_eq!(e.event.as_deref(), Some("snapshot"), "{e:?}");
            assert_eq!(e.id, None, "a snapshot leaves the resume position alone");
            serde_json::from_str(&e.data).unwrap()
        }
    };
    assert_eq!(message["type"], "snapshot", "{message}");
    assert_eq!(message["truncated"], false);
    message["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_page_opened_mid_render_gets_the_current_state_then_only_its_job() {
    bounded(async {
        let gw = GatewayBuilder::new("state-open").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for t in BOTH {
            // Jobs of each pass's own, for a pass reads the state the one before left.
            let (a, b) = (format!("job-a-{t:?}"), format!("job-b-{t:?}"));
            let id = |name: &str| format!("{name}-{t:?}");
            publish_all(
                &gw,
                &publisher,
                &[
                    job(&id("a-queued"), QUEUED, &a, 0),
                    job(&id("b-queued"), QUEUED, &b, 0),
                    job(&id("a-40"), PROGRESS, &a, 40),
                    job(&id("b-done"), COMPLETED, &b, 100),
                ],
            )
            .await;
            // The whole studio: every job's latest state, oldest update first (the other
            // pass's jobs included).
            let (_, all) = with_snapshot(&gw, t, "snapshot=1").await;
            let mine: Vec<&String> = all
                .iter()
                .filter(|e| e.ends_with(&format!("{t:?}")))
                .collect();
            assert_eq!(mine, [&id("a-40"), &id("b-done")], "{t:?}");
            // A job page: its job only, then its job's changes and the bell's
            // notifications, never another job's progress.
            let (mut page, one) = with_snapshot(&gw, t, &format!("snapshot=1&keys={a}")).await;
            assert_eq!(one, [id("a-40")], "{t:?}");
            let (note, a60) = (id("note"), id("a-60"));
            for e in [
                job(&id("b-again"), PROGRESS, &b, 10),
                envelope(&note, NOTE, Some("t"), Some("u")),
                job(&a60, PROGRESS, &a, 60),
            ] {
                publisher
                    .publish(e["event_type"].as_str().unwrap(), &e)
                    .await;
            }
            assert_eq!(page.ids_until(&a60).await, [note, a60.clone()], "{t:?}");
        }
        assert!(gw.metric("gateway_state_keys").await >= 2.0);
        assert!(gw.metric("gateway_snapshots_sent_total").await >= 4.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_is_followed_by_the_snapshot_and_bad_keys_are_refused() {
    bounded(async {
        let gw = GatewayBuilder::new("state-resync").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        publish_all(
            &gw,
            &publisher,
            &[
                job("r-queued", QUEUED, "job-r", 0),
                job("r-done", COMPLETED, "job-r", 100),
            ],
        )
        .await;
        let auth = || Auth::Bearer(token("t", "u"));
        // A position the history cannot serve: resync, then at once the state, without a
        // REST call and without asking for it.
        let mut ws = Client::Ws(
            WsClient::connect(&gw, "/ws?last_event_id=unknown", auth())
                .await
                .unwrap(),
        );
        assert_eq!(ws.expect_resync().await, ["r-done"]);
        let mut sse = Client::Sse(
            SseClient::connect_with(&gw, "/sse", auth(), &[("last-event-id", "unknown")])
                .await
                .unwrap(),
        );
        assert_eq!(sse.expect_resync().await, ["r-done"]);
        // Keys are checked like types: a clear 400 before any upgrade.
        for t in BOTH {
            let path = match t {
                Transport::Ws => "/ws?keys=a%20b",
                Transport::Sse => "/sse?keys=a%0Ab",
            };
            let refused = match t {
                Transport::Ws => WsClient::connect(&gw, path, auth()).await.err(),
                Transport::Sse => SseClient::connect(&gw, path, auth()).await.err(),
            };
            assert_eq!(refused, Some(400), "{t:?}");
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_in_band_sends_the_jobs_state_then_its_changes() {
    bounded(async {
        let gw = GatewayBuilder::new("state-watch").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        publish_all(
            &gw,
            &publisher,
            &[
                job("w-1", QUEUED, "job-w", 0),
                job("x-1", PROGRESS, "job-x", 5),
            ],
        )
        .await;
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        ws.send_text(r#"{"type":"watch","keys":["job-w"],"snapshot":true}"#)
            .await;
        assert_eq!(
            ws.next_json().await,
            json!({"type": "subscribed", "types": ["#"], "keys": ["job-w"]})
        );
        let mut client = Client::Ws(ws);
        assert_eq!(next_snapshot(&mut client).await, ["w-1"]);
        publisher
            .publish(PROGRESS, &job("x-2", PROGRESS, "job-x", 9))
            .await;
        publisher
            .publish(PROGRESS, &job("w-2", PROGRESS, "job-w", 30))
            .await;
        assert_eq!(client.next_event().await["event_id"], "w-2");
        let Client::Ws(mut ws) = client else {
            unreachable!()
        };
        ws.send_text(r#"{"type":"watch","keys":["bad key"]}"#).await;
        assert_eq!(
            ws.next_json().await,
            json!({"type": "error", "reason": "invalid_keys"})
        );
        ws.send_text(r#"{"type":"unwatch","keys":["job-w"]}"#).await;
        assert_eq!(
            ws.next_json().await,
            json!({"type": "subscribed", "types": ["#"], "keys": []})
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_at_the_seam_is_not_followed_by_its_live_copy() {
    bounded(async {
        let gate = SeamGate::new();
        let gw = GatewayBuilder::new("state-seam")
            .seam_hook(gate.hook())
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for t in BOTH {
            let (at, after) = (format!("{t:?}-at-seam"), format!("{t:?}-after"));
            publisher
                .publish(PROGRESS, &job(&at, PROGRESS, "job-s", 50))
                .await;
            // The event is the job's state, not yet fanned out: the snapshot has it...
            gate.held.notified().await;
            let (mut page, snapshot) = with_snapshot(&gw, t, "snapshot=1&keys=job-s").await;
            assert_eq!(snapshot, [at], "{t:?}");
            gate.release.notify_one();
            publisher
                .publish(PROGRESS, &job(&after, PROGRESS, "job-s", 60))
                .await;
            // ...and its live copy is not sent again.
            assert_eq!(page.ids_until(&after).await, [after], "{t:?}");
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_serves_the_same_snapshot_from_the_history_stream() {
    bounded(async {
        let stream = unique("history");
        let old = GatewayBuilder::new("state-old")
            .arg("history-stream", &stream)
            .start()
            .await;
        let publisher = Publisher::connect(&old.exchange).await;
        publish_all(
            &old,
            &publisher,
            &[
                job("f-queued", QUEUED, "job-f", 0),
                job("g-queued", QUEUED, "job-g", 0),
                job("f-70", PROGRESS, "job-f", 70),
                job("g-done", COMPLETED, "job-g", 100),
            ],
        )
        .await;
        // A rolling restart's new instance: its state comes from the stream's backfill.
        let fresh = GatewayBuilder::new("state-fresh")
            .exchange(&old.exchange)
            .arg("history-stream", &stream)
            .start()
            .await;
        for gw in [&old, &fresh] {
            for t in BOTH {
                let (_, snapshot) = with_snapshot(gw, t, "snapshot=1").await;
                assert_eq!(snapshot, ["f-70", "g-done"], "{t:?}");
            }
        }
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        old.shutdown().await;
        fresh.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_page_learns_a_position_and_resumes_from_it_after_the_history_forgot_it() {
    bounded(async {
        let gw = GatewayBuilder::new("positions")
            .arg("sse-keepalive-secs", "1")
            .arg("ws-ping-interval-secs", "1")
            .arg("history-max-age-secs", "2")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let auth = || Auth::Bearer(token("t", "u"));
        // Bell pages: they select notifications, and only render jobs happen.
        let mut sse = SseClient::connect(&gw, "/sse?types=notification.%23", auth())
            .await
            .unwrap();
        let mut ws = WsClient::connect(&gw, "/ws?types=notification.%23", auth())
            .await
            .unwrap();
        publish_all(&gw, &publisher, &[job("quiet-1", PROGRESS, "job-q", 10)]).await;
        let (position, seen) = sse.next_position().await;
        assert!(seen.is_empty(), "{seen:?}");
        assert!(position.starts_with("p:"), "{position}");
        let ws_position = loop {
            let m = ws.next_json().await;
            if m["type"] == "position" {
                break m["position"].as_str().unwrap().to_owned();
            }
        };
        assert_eq!(ws_position, position, "both name the tenant's newest event");

        // Within the history's age: a notification published while the page was away is
        // replayed from the position, on either transport.
        drop((sse, ws));
        let note = envelope("note-1", NOTE, Some("t"), Some("u"));
        publisher.publish(NOTE, &note).await;
        let mut back = SseClient::connect_with(
            &gw,
            "/sse?types=notification.%23",
            auth(),
            &[("last-event-id", &position)],
        )
        .await
        .unwrap();
        assert_eq!(back.next_event().await.id.as_deref(), Some("note-1"));
        drop(back);

        // Quiet for longer than the history's age: the page holds `note-1`, the tenant's
        // newest event, which the history forgot; nothing came since, so it resumes (no
        // resync) and gets what comes next.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let mut late = WsClient::connect(
            &gw,
            "/ws?types=notification.%23&last_event_id=note-1",
            auth(),
        )
        .await
        .unwrap();
        publisher
            .publish(NOTE, &envelope("note-2", NOTE, Some("t"), Some("u")))
            .await;
        let next = late.next_json().await;
        assert_eq!(next["event_id"], "note-2", "{next}");
        assert_eq!(
            gw.metric("gateway_resumes_total{outcome=\"resync\"}").await,
            0.0
        );
        // A position of another tenant is no position here.
        let foreign = SseClient::connect_with(
            &gw,
            "/sse",
            Auth::Bearer(token("other", "u")),
            &[("last-event-id", &position)],
        )
        .await
        .unwrap();
        let mut foreign = Client::Sse(foreign);
        foreign.expect_resync().await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_keeps_the_state_its_own_rules_name() {
    bounded(async {
        // Render jobs keep no state here; exports keep theirs by `/data/export_id`, a key
        // the default rule does not know.
        let routes = r#"
[[route]]
name = "jobs"
binding = "render.job.#"
state = []

[[route]]
name = "exports"
binding = "export.#"
state = ["export.*.v1=/data/export_id"]
"#;
        let gw = GatewayBuilder::new("state-route")
            .config_text(routes)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let export = |id: &str, export_id: &str| {
            let mut e = envelope(id, "export.done.v1", Some("t"), Some("u"));
            e["data"] = json!({"export_id": export_id});
            e
        };
        publish_all(
            &gw,
            &publisher,
            &[
                job("r-queued", QUEUED, "job-r", 0),
                export("x1-first", "x1"),
                export("x2", "x2"),
                export("x1-again", "x1"),
                job("r-done", COMPLETED, "job-r", 100),
            ],
        )
        .await;
        for t in BOTH {
            let (_, all) = with_snapshot(&gw, t, "snapshot=1").await;
            assert_eq!(
                all,
                ["x2", "x1-again"],
                "{t:?}: the exports only, latest each"
            );
            let (_, one) = with_snapshot(&gw, t, "snapshot=1&keys=x1").await;
            assert_eq!(one, ["x1-again"], "{t:?}");
        }
        assert_eq!(gw.metric("gateway_state_keys").await, 2.0);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_resume_that_asks_for_a_snapshot_gets_it_after_its_replay() {
    bounded(async {
        let gw = GatewayBuilder::new("state-resume").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for t in BOTH {
            let id = |name: &str| format!("{name}-{t:?}");
            let (m, o) = (id("job-m"), id("job-o"));
            // The page held the bell's last notification when its tab slept; meanwhile
            // the job it now shows moved on, and so did another job.
            publish_all(
                &gw,
                &publisher,
                &[
                    job(&id("m-queued"), QUEUED, &m, 0),
                    envelope(&id("n1"), NOTE, Some("t"), Some("u")),
                    job(&id("m-40"), PROGRESS, &m, 40),
                    job(&id("o-10"), PROGRESS, &o, 10),
                ],
            )
            .await;
            let query = format!("snapshot=1&keys={m}");
            let auth = Auth::Bearer(token("t", "u"));
            let mut page = match t {
                Transport::Ws => Client::Ws(
                    WsClient::connect(
                        &gw,
                        &format!("/ws?{query}&last_event_id={}", id("n1")),
                        auth,
                    )
                    .await
                    .unwrap(),
                ),
                Transport::Sse => Client::Sse(
                    SseClient::connect_with(
                        &gw,
                        &format!("/sse?{query}"),
                        auth,
                        &[("last-event-id", &id("n1"))],
                    )
                    .await
                    .unwrap(),
                ),
            };
            // The replay first (its job only), then the state of what it selects.
            let replayed = page.next_any().await;
            assert_eq!(replayed["event_id"].as_str(), Some(&*id("m-40")), "{t:?}");
            assert_eq!(next_snapshot(&mut page).await, [id("m-40")], "{t:?}");
            // Then live, without a duplicate.
            let (live, other) = (id("m-60"), id("o-20"));
            for e in [job(&other, PROGRESS, &o, 20), job(&live, PROGRESS, &m, 60)] {
                publisher
                    .publish(e["event_type"].as_str().unwrap(), &e)
                    .await;
            }
            assert_eq!(page.ids_until(&live).await, [live.as_str()], "{t:?}");
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}
