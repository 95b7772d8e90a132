//! Access ends when the platform says so: `identity.user.banned.v1` and
//! `identity.tenant.suspended.v1` close the connections they name on every instance,
//! refuse tokens issued before them, and are known to instances that start later.

use serde_json::{Value, json};

use super::support::*;

const BANNED: &str = "identity.user.banned.v1";
const SUSPENDED: &str = "identity.tenant.suspended.v1";

/// A gateway on `exchange` reading revocations from `stream`.
fn builder(name: &str, exchange: Option<&str>, stream: &str) -> GatewayBuilder {
    let b = GatewayBuilder::new(name)
        .arg("revocation-stream", stream)
        .arg("revocation-user-keys", BANNED)
        .arg("revocation-tenant-keys", SUSPENDED);
    match exchange {
        Some(e) => b.exchange(e),
        None => b,
    }
}

fn revocation(kind: &str, tenant: Option<&str>, user: Option<&str>) -> Value {
    let mut e = envelope(&unique("rev"), kind, tenant, user);
    // Five seconds ago: tokens issued before then are refused, later ones accepted.
    let at = chrono_like(now() - 5);
    e["event_time"] = json!(at);
    e
}

/// RFC 3339 for a Unix time, without a date library.
fn chrono_like(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A token for (tenant, user) issued `ago` seconds ago.
fn token_issued(tenant: &str, user: &str, ago: u64) -> String {
    let mut c = claims(tenant, user);
    c["iat"] = json!(now() - ago);
    sign(&Signer::Hs256(SECRET), &c)
}

async fn ws(gw: &Gateway, tenant: &str, user: &str) -> WsClient {
    WsClient::connect(gw, "/ws", Auth::Bearer(token_issued(tenant, user, 60)))
        .await
        .unwrap()
}

async fn sse(gw: &Gateway, tenant: &str, user: &str) -> SseClient {
    SseClient::connect(gw, "/sse", Auth::Bearer(token_issued(tenant, user, 60)))
        .await
        .unwrap()
}

/// The SSE stream ends with `close` `revoked`, and no `retry:` inviting a reconnect.
async fn expect_sse_revoked(s: &mut SseClient) {
    let last = s.next_event().await;
    assert_eq!(last.event.as_deref(), Some("close"));
    assert!(last.data.contains("\"revoked\""), "{}", last.data);
    assert_eq!(last.retry, None);
    assert!(s.try_next_event().await.is_none());
}

async fn refused_reason(gw: &Gateway, token: String) -> (u16, String) {
    let resp = gw
        .http
        .get(gw.url("/auth/check"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_user_is_cut_off_on_every_instance_and_others_are_untouched() {
    bounded(async {
        let stream = unique("revocations");
        let gw1 = builder("ban", None, &stream).start().await;
        let gw2 = builder("ban2", Some(&gw1.exchange), &stream).start().await;
        let publisher = Publisher::connect(&gw1.exchange).await;
        let (mut m_ws1, mut m_sse1) = (
            ws(&gw1, "t", "mallory").await,
            sse(&gw1, "t", "mallory").await,
        );
        let (mut m_ws2, mut m_sse2) = (
            ws(&gw2, "t", "mallory").await,
            sse(&gw2, "t", "mallory").await,
        );
        // Mallory in another tenant is the same person (the same `sub`).
        let mut m_other = ws(&gw2, "other-tenant", "mallory").await;
        let mut alice = Client::as_user(&gw1, Transport::Ws, "t", "alice").await;

        publisher
            .publish(BANNED, &revocation(BANNED, Some("t"), Some("mallory")))
            .await;
        for c in [&mut m_ws1, &mut m_ws2, &mut m_other] {
            assert_eq!(c.expect_close().await, (4003, "revoked".to_owned()));
        }
        expect_sse_revoked(&mut m_sse1).await;
        expect_sse_revoked(&mut m_sse2).await;

        // Alice keeps receiving; the ban itself was never delivered to anyone.
        publisher
            .publish(
                PROGRESS,
                &envelope("after-ban", PROGRESS, Some("t"), Some("alice")),
            )
            .await;
        assert_eq!(alice.next_event().await["event_id"], "after-ban");

        // The old token is refused, a token issued after the ban accepted.
        let old = token_issued("t", "mallory", 60);
        for gw in [&gw1, &gw2] {
            assert_eq!(
                refused_reason(gw, old.clone()).await,
                (401, "revoked".to_owned())
            );
            for t in BOTH {
                let again = Client::connect(gw, t, Auth::Bearer(old.clone())).await;
                assert_eq!(again.err(), Some(401), "{t:?}");
            }
            Client::connect(
                gw,
                Transport::Ws,
                Auth::Bearer(token_issued("t", "mallory", 0)),
            )
            .await
            .expect("a token issued after the ban connects");
            assert_eq!(
                gw.metric("gateway_revocations_total{kind=\"user\"}").await,
                1.0
            );
            assert!(
                gw.metric("gateway_disconnects_total{reason=\"revoked\"}")
                    .await
                    >= 2.0
            );
            assert!(
                gw.metric("gateway_auth_failures_total{reason=\"revoked\"}")
                    .await
                    >= 2.0
            );
        }
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw1.shutdown().await;
        gw2.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenant_loses_every_connection_and_only_it() {
    bounded(async {
        let stream = unique("revocations");
        let gw = builder("suspend", None, &stream).start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut a1 = ws(&gw, "acme", "u1").await;
        let mut a2 = sse(&gw, "acme", "u2").await;
        let mut other = Client::as_user(&gw, Transport::Sse, "globex", "u1").await;

        publisher
            .publish(SUSPENDED, &revocation(SUSPENDED, Some("acme"), None))
            .await;
        assert_eq!(a1.expect_close().await.0, 4003);
        expect_sse_revoked(&mut a2).await;
        publisher
            .publish(
                PROGRESS,
                &envelope("still", PROGRESS, Some("globex"), Some("u1")),
            )
            .await;
        assert_eq!(other.next_event().await["event_id"], "still");
        assert_eq!(
            refused_reason(&gw, token_issued("acme", "u3", 60)).await,
            (401, "revoked".to_owned())
        );
        assert_eq!(
            gw.metric("gateway_revocations_total{kind=\"tenant\"}")
                .await,
            1.0
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_after_a_ban_refuses_the_old_token_once_ready() {
    bounded(async {
        let stream = unique("revocations");
        let first = builder("late1", None, &stream).start().await;
        let publisher = Publisher::connect(&first.exchange).await;
        publisher
            .publish(BANNED, &revocation(BANNED, Some("t"), Some("mallory")))
            .await;
        first
            .wait_metric("gateway_revocations_total{kind=\"user\"}", 1.0)
            .await;

        // Started afterwards: its first ready moment already knows.
        let late = builder("late2", Some(&first.exchange), &stream)
            .start()
            .await;
        assert_eq!(
            refused_reason(&late, token_issued("t", "mallory", 60)).await,
            (401, "revoked".to_owned())
        );
        assert_eq!(
            refused_reason(&late, token_issued("t", "alice", 60))
                .await
                .0,
            204
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        first.shutdown().await;
        late.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_revocations_are_dropped_and_counted_never_read_as_everyone() {
    bounded(async {
        let stream = unique("revocations");
        let gw = builder("bad-rev", None, &stream).start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut alice = Client::as_user(&gw, Transport::Ws, "t", "alice").await;
        let mut no_user = revocation(BANNED, Some("t"), None);
        no_user["user_id"] = Value::Null;
        let mut number = revocation(BANNED, Some("t"), None);
        number["user_id"] = json!(42);
        let mut star = revocation(SUSPENDED, None, None);
        star["tenant_id"] = json!(["*"]);
        for (key, body) in [(BANNED, no_user), (BANNED, number), (SUSPENDED, star)] {
            publisher.publish(key, &body).await;
        }
        publisher.publish_raw(BANNED, b"not json").await;
        gw.wait_metric("gateway_revocations_total{kind=\"invalid\"}", 4.0)
            .await;
        publisher
            .publish(
                PROGRESS,
                &envelope("fine", PROGRESS, Some("t"), Some("alice")),
            )
            .await;
        assert_eq!(alice.next_event().await["event_id"], "fine");
        assert_eq!(gw.metric("gateway_revocations_active").await, 0.0);
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Deletes the revocation stream and declares it again as an operator would (same
/// arguments as the gateway's, with the default TTL; bound to the ban key), so it starts
/// over at offset 0.
async fn recreate_stream(publisher: &Publisher, stream: &str) {
    publisher.delete_queue(stream).await;
    publisher.declare_stream(stream, 86_400, 1 << 30).await;
    publisher.bind_queue(stream, BANNED).await;
}

/// Bans `n` users `<prefix>-<i>`, moving the stream's offsets on.
async fn ban_many(publisher: &Publisher, prefix: &str, n: usize) {
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        publisher
            .publish(BANNED, &revocation(BANNED, Some("t"), Some(&user)))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_after_the_stream_is_re_created_still_cuts_the_user_off() {
    bounded(async {
        let stream = unique("revocations");
        let gw = builder("recreated", None, &stream).start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        ban_many(&publisher, "earlier", 50).await;
        gw.wait_metric("gateway_revocations_total{kind=\"user\"}", 50.0)
            .await;
        let mut mallory = ws(&gw, "t", "mallory").await;

        // Deleting the stream cancels the feed's consumer; it comes back to a new stream
        // whose offsets start over, far behind the 50 it had read.
        recreate_stream(&publisher, &stream).await;
        publisher
            .publish(BANNED, &revocation(BANNED, Some("t"), Some("mallory")))
            .await;
        assert_eq!(mallory.expect_close().await, (4003, "revoked".to_owned()));
        assert_eq!(
            refused_reason(&gw, token_issued("t", "mallory", 60)).await,
            (401, "revoked".to_owned())
        );
        assert!(
            gw.metric("gateway_revocation_stream_rereads_total").await >= 1.0,
            "the re-created stream is counted"
        );
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_re_created_during_an_outage_is_read_again_from_the_ttl() {
    bounded(async {
        let stream = unique("revocations");
        let proxy = ChaosProxy::start().await;
        let gw = builder("recreated-away", None, &stream)
            .arg("amqp-url", &proxy.url())
            .arg("amqp-reconnect-max-secs", "1")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let carol_ban = revocation(BANNED, Some("t"), Some("carol"));
        publisher.publish(BANNED, &carol_ban).await;
        ban_many(&publisher, "earlier", 50).await;
        gw.wait_metric("gateway_revocations_total{kind=\"user\"}", 51.0)
            .await;
        let mut mallory = ws(&gw, "t", "mallory").await;
        // Carol came back with a token issued after her ban.
        let reinstated = Auth::Bearer(token_issued("t", "carol", 0));
        let mut carol = Client::connect(&gw, Transport::Ws, reinstated)
            .await
            .expect("a token issued after the ban connects");

        // While the gateway is away, the stream is re-created and refilled: Carol's ban
        // restored from a backup, Mallory banned, then more bans than the feed had read,
        // so the new stream reaches past the old offset.
        proxy.cut();
        recreate_stream(&publisher, &stream).await;
        publisher.publish(BANNED, &carol_ban).await;
        publisher
            .publish(BANNED, &revocation(BANNED, Some("t"), Some("mallory")))
            .await;
        ban_many(&publisher, "later", 60).await;
        proxy.restore();

        assert_eq!(mallory.expect_close().await, (4003, "revoked".to_owned()));
        assert_eq!(
            refused_reason(&gw, token_issued("t", "mallory", 60)).await,
            (401, "revoked".to_owned())
        );
        // Carol's ban, read again before Mallory's, did not close her newer connection.
        publisher
            .publish(
                PROGRESS,
                &envelope("still-here", PROGRESS, Some("t"), Some("carol")),
            )
            .await;
        assert_eq!(carol.next_event().await["event_id"], "still-here");
        gw.wait_metric("gateway_revocations_total{kind=\"user\"}", 51.0 + 62.0)
            .await;
        assert!(gw.metric("gateway_revocation_stream_rereads_total").await >= 1.0);
        publisher.delete_queue(&stream).await;
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}
