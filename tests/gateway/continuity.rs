//! Continuity across restarts and broker breaks: the fleet's history stream backfills a
//! new instance's history and fills the gap after a lost queue, so clients resume instead
//! of resyncing; `resync` stays for what the stream cannot cover.

use super::support::*;

fn event(id: &str) -> serde_json::Value {
    envelope(id, PROGRESS, Some("t"), Some("u"))
}

async fn resume(gw: &Gateway, t: Transport, last: &str) -> Client {
    let auth = Auth::Bearer(token("t", "u"));
    match t {
        Transport::Ws => Client::Ws(
            WsClient::connect(gw, &format!("/ws?last_event_id={last}"), auth)
                .await
                .unwrap(),
        ),
        Transport::Sse => Client::Sse(
            SseClient::connect_with(gw, "/sse", auth, &[("last-event-id", last)])
                .await
                .unwrap(),
        ),
    }
}

/// A gateway with a new history stream, and five events `{prefix}1..5` it has delivered
/// (so they are in the stream).
async fn history_of_five(name: &str, prefix: &str) -> (String, Gateway, Publisher) {
    let stream = unique("history");
    let first = GatewayBuilder::new(name)
        .arg("history-stream", &stream)
        .start()
        .await;
    let publisher = Publisher::connect(&first.exchange).await;
    let mut seen = Client::as_user(&first, Transport::Ws, "t", "u").await;
    for i in 1..=5 {
        publisher
            .publish(PROGRESS, &event(&format!("{prefix}{i}")))
            .await;
    }
    assert_eq!(seen.ids_until(&format!("{prefix}5")).await.len(), 5);
    (stream, first, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_later_serves_a_resume_from_before_its_start() {
    bounded(async {
        let (stream, first, publisher) = history_of_five("backfill1", "b").await;

        let late = GatewayBuilder::new("backfill2")
            .exchange(&first.exchange)
            .arg("history-stream", &stream)
            .start()
            .await;
        assert!(late.metric("gateway_history_backfilled_total").await >= 5.0);
        for t in BOTH {
            let mut back = resume(&late, t, "b2").await;
            publisher
                .publish(PROGRESS, &event(&format!("live-{t:?}")))
                .await;
            let got = back.ids_until(&format!("live-{t:?}")).await;
            let mut want: Vec<String> = ["b3", "b4", "b5"].map(String::from).to_vec();
            if t == Transport::Sse {
                want.push("live-Ws".into());
            }
            want.push(format!("live-{t:?}"));
            assert_eq!(got, want, "{t:?}");
        }
        assert_eq!(
            late.metric("gateway_resumes_total{outcome=\"resync\"}")
                .await,
            0.0
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        first.shutdown().await;
        late.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_the_broker_is_down_backfills_once_it_answers() {
    bounded(async {
        let (stream, first, publisher) = history_of_five("late-backfill1", "l").await;

        // A pod that starts before the broker answers (a cluster restart, a network blip).
        let proxy = ChaosProxy::start().await;
        proxy.cut();
        let late = GatewayBuilder::new("late-backfill2")
            .exchange(&first.exchange)
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .arg("history-stream", &stream)
            .no_wait_ready()
            .start()
            .await;
        // Let a few attempts fail before the broker comes back.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(late.status("/readyz").await, 503);
        proxy.restore();
        wait_ready_status(&late, 200).await;
        assert!(late.metric("gateway_history_backfilled_total").await >= 5.0);
        let mut back = resume(&late, Transport::Sse, "l2").await;
        publisher.publish(PROGRESS, &event("l-live")).await;
        assert_eq!(back.ids_until("l-live").await, ["l3", "l4", "l5", "l-live"]);
        assert_eq!(
            late.metric("gateway_resumes_total{outcome=\"resync\"}")
                .await,
            0.0
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        first.shutdown().await;
        late.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_backfill_reads_only_what_the_history_can_hold() {
    bounded(async {
        let stream = unique("history");
        let first = GatewayBuilder::new("backfill-newest1")
            .arg("history-stream", &stream)
            .start()
            .await;
        let publisher = Publisher::connect(&first.exchange).await;
        for i in 1..=300 {
            publisher.publish(PROGRESS, &event(&format!("n{i}"))).await;
        }
        // The stream holds 300 events within the age; the new instance keeps 20, so it
        // reads (about) the newest 20, not all 300.
        let late = GatewayBuilder::new("backfill-newest2")
            .exchange(&first.exchange)
            .arg("history-stream", &stream)
            .arg("history-max-events", "20")
            .start()
            .await;
        let read = late.metric("gateway_history_backfilled_total").await;
        assert!((20.0..=40.0).contains(&read), "backfilled {read} events");
        let mut back = resume(&late, Transport::Ws, "n290").await;
        publisher.publish(PROGRESS, &event("n-live")).await;
        let got = back.ids_until("n-live").await;
        let mut want: Vec<String> = (291..=300).map(|i| format!("n{i}")).collect();
        want.push("n-live".into());
        assert_eq!(got, want);
        assert_eq!(
            late.metric("gateway_resumes_total{outcome=\"resync\"}")
                .await,
            0.0
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        first.shutdown().await;
        late.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_queue_is_filled_from_the_stream_without_resync() {
    bounded(async {
        let stream = unique("history");
        let proxy = ChaosProxy::start().await;
        let gw = GatewayBuilder::new("gapfill")
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .arg("history-stream", &stream)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        publisher.publish(PROGRESS, &event("before")).await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "before");
        }
        proxy.cut();
        wait_ready_status(&gw, 503).await;
        // A broker restart or an expired queue: the queue and what it held are gone, but
        // the stream kept them.
        publisher.publish(PROGRESS, &event("during-1")).await;
        publisher.publish(PROGRESS, &event("during-2")).await;
        publisher.delete_queue(&gw.queue).await;
        proxy.restore();
        wait_ready_status(&gw, 200).await;
        publisher.publish(PROGRESS, &event("after")).await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(
                c.ids_until("after").await,
                ["during-1", "during-2", "after"]
            );
        }
        assert_eq!(gw.metric("gateway_resyncs_sent_total").await, 0.0);
        // And a resume from before the break replays across it.
        let mut back = resume(&gw, Transport::Ws, "before").await;
        assert_eq!(
            back.ids_until("after").await,
            ["during-1", "during-2", "after"]
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_stream_cannot_cover_still_gets_resync() {
    bounded(async {
        let stream = unique("history");
        let proxy = ChaosProxy::start().await;
        let gw = GatewayBuilder::new("uncovered")
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .arg("history-stream", &stream)
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        publisher.publish(PROGRESS, &event("before")).await;
        assert_eq!(ws.next_event().await["event_id"], "before");
        proxy.cut();
        wait_ready_status(&gw, 503).await;
        // The stream lost its memory too (as when retention ran out): it no longer holds
        // the last event this instance has, so it cannot show that nothing is missing.
        publisher.delete_queue(&gw.queue).await;
        publisher.delete_queue(&stream).await;
        publisher.publish(PROGRESS, &event("lost")).await;
        proxy.restore();
        wait_ready_status(&gw, 200).await;
        publisher.publish(PROGRESS, &event("after")).await;
        ws.expect_resync_then("after").await;
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_bridged_by_the_stream_without_resync() {
    bounded(async {
        let mut node = PrivateNode::start(false).await;
        let stream = unique("history");
        let gw = GatewayBuilder::new("broker-restart")
            .arg("amqp-url", &node.url())
            .arg("amqp-reconnect-max-secs", "1")
            .arg("history-stream", &stream)
            .start()
            .await;
        let publisher = Publisher::connect_to(&node.url(), &gw.exchange).await;
        publisher.declare(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        publisher.publish(PROGRESS, &event("before")).await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "before");
        }
        drop(publisher);

        // The instance's queue is not durable: a restart takes it and whatever it held;
        // the durable stream keeps the last event this instance has, so nothing is missing.
        node.restart().await;
        wait_ready_status(&gw, 200).await;
        let publisher = Publisher::connect_to(&node.url(), &gw.exchange).await;
        publisher.publish(PROGRESS, &event("after")).await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "after", "no resync first");
        }
        assert_eq!(gw.metric("gateway_resyncs_sent_total").await, 0.0);
        assert!(gw.metric("gateway_broker_reconnects_total").await >= 1.0);
        gw.shutdown().await;
        node.stop().await;
    })
    .await;
}
