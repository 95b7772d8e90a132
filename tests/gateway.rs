//! End-to-end tests against a real RabbitMQ: who receives which event, what malformed
//! messages do, and every way a token is refused, over WebSocket and SSE.
//!
//! Negative checks ("X never reaches C") do not wait for silence: after the events under
//! test, a marker event is published to every client, and each client must see exactly
//! the expected ids before its marker. Per-connection order is guaranteed, so anything
//! misrouted would show up before the marker.

mod support;

use serde_json::json;
use support::*;

const PROGRESS: &str = "render.job.progress.v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_over_both_transports() {
    bounded(async {
        for transport in BOTH {
            let gw = GatewayBuilder::new("routing").start().await;
            let publisher = Publisher::connect(&gw.exchange).await;

            let mut a = Client::as_user(&gw, transport, "tenant-1", "user-1").await;
            let mut b = Client::as_user(&gw, transport, "tenant-1", "user-2").await;
            // Same user id, other tenant: must never see tenant-1's events.
            let mut c = Client::as_user(&gw, transport, "tenant-2", "user-1").await;

            let p = |id: &str, t: Option<&str>, u: Option<&str>| envelope(id, PROGRESS, t, u);
            publisher
                .publish(PROGRESS, &p("e1", Some("tenant-1"), Some("user-1")))
                .await;
            // user_id null and absent: tenant-wide.
            let mut null_user = p("e2", Some("tenant-1"), None);
            null_user["user_id"] = json!(null);
            publisher.publish(PROGRESS, &null_user).await;
            publisher
                .publish(PROGRESS, &p("e3", Some("tenant-1"), None))
                .await;
            publisher
                .publish(PROGRESS, &p("e4", Some("tenant-2"), Some("user-1")))
                .await;
            // No usable tenant: nobody.
            publisher
                .publish(PROGRESS, &p("e5", None, Some("user-1")))
                .await;
            let mut empty_tenant = p("e6", Some(""), Some("user-1"));
            publisher.publish(PROGRESS, &empty_tenant).await;
            empty_tenant["tenant_id"] = json!(1);
            empty_tenant["event_id"] = json!("e7");
            publisher.publish(PROGRESS, &empty_tenant).await;
            // Keys outside the bindings: never reach the gateway's queue.
            publisher
                .publish(
                    "render.snapshot.ready.v1",
                    &envelope(
                        "e8",
                        "render.snapshot.ready.v1",
                        Some("tenant-1"),
                        Some("user-1"),
                    ),
                )
                .await;
            publisher
                .publish(
                    "identity.user.banned.v1",
                    &envelope("e9", "identity.user.banned.v1", Some("tenant-1"), None),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-a", Some("tenant-1"), Some("user-1")),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-b", Some("tenant-1"), Some("user-2")),
                )
                .await;
            publisher
                .publish(
                    "notification.created.v1",
                    &p("mark-c", Some("tenant-2"), Some("user-1")),
                )
                .await;

            assert_eq!(
                a.ids_until("mark-a").await,
                ["e1", "e2", "e3", "mark-a"],
                "{transport:?} a"
            );
            assert_eq!(
                b.ids_until("mark-b").await,
                ["e2", "e3", "mark-b"],
                "{transport:?} b"
            );
            assert_eq!(
                c.ids_until("mark-c").await,
                ["e4", "mark-c"],
                "{transport:?} c"
            );

            gw.wait_metric("gateway_events_dropped_total{reason=\"no_tenant\"}", 3.0)
                .await;
            assert_eq!(
                gw.metric("gateway_events_received_total").await,
                10.0,
                "unbound keys must not reach the queue"
            );
            publisher.cleanup().await;
            gw.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_render_job_and_notification_key_is_delivered_unchanged() {
    bounded(async {
        let gw = GatewayBuilder::new("catalog").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        let keys = [
            "render.job.queued.v1",
            "render.job.started.v1",
            "render.job.progress.v1",
            "render.job.completed.v1",
            "render.job.failed.v1",
            "render.job.cancelled.v1",
            "notification.created.v1",
            "notification.delivered.v1",
            "notification.failed.v1",
        ];
        let mut sent = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let body = envelope(&format!("k{i}"), key, Some("t"), Some("u"));
            publisher.publish(key, &body).await;
            sent.push(body);
        }
        for client in [&mut ws, &mut sse] {
            for body in &sent {
                // Fields unchanged: the whole published object comes back.
                assert_eq!(&client.next_event().await, body);
            }
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_counted_and_the_gateway_stays_up() {
    bounded(async {
        let gw = GatewayBuilder::new("malformed")
            .arg("max-event-bytes", "2048")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;

        let good = envelope("x", PROGRESS, Some("t"), Some("u"));
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let oversized = with("data", json!("x".repeat(4096)));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not_utf8", b"\xff\xfe\xfd".to_vec()),
            ("not_json", b"{not json".to_vec()),
            ("not_json", Vec::new()),
            ("not_object", b"[1,2,3]".to_vec()),
            ("not_object", b"\"render\"".to_vec()),
            ("oversized", oversized),
            ("invalid_field", with("event_id", json!(17))),
            ("invalid_field", with("user_id", json!(42))),
            ("invalid_field", with("user_id", json!(""))),
            ("invalid_field", with("event_id", json!("a\nid: forged"))),
            (
                "invalid_field",
                br#"{"event_type":"render.job.progress.v1","tenant_id":"t","user_id":"u"}"#
                    .to_vec(),
            ),
        ];
        for (_, body) in &cases {
            publisher.publish_raw(PROGRESS, body).await;
        }
        let marker = envelope("marker", PROGRESS, Some("t"), Some("u"));
        publisher.publish(PROGRESS, &marker).await;

        assert_eq!(ws.ids_until("marker").await, ["marker"]);
        assert_eq!(sse.ids_until("marker").await, ["marker"]);
        for reason in [
            "not_utf8",
            "not_json",
            "not_object",
            "oversized",
            "invalid_field",
        ] {
            let want = cases.iter().filter(|(r, _)| *r == reason).count() as f64;
            let got = gw
                .metric(&format!(
                    "gateway_events_dropped_total{{reason=\"{reason}\"}}"
                ))
                .await;
            assert_eq!(got, want, "{reason}");
        }
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 200);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

/// Every refusal, over both transports, with its metric reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_refusals_get_401_before_any_upgrade() {
    bounded(async {
        let gw = GatewayBuilder::new("auth").start().await;
        let good = claims("t", "u");
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 3600);
        let mut no_sub = good.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        let mut no_tenant = good.clone();
        no_tenant.as_object_mut().unwrap().remove("tenant_id");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let b64 = |v: &serde_json::Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good)
        );
        // Algorithm confusion: HS256 signed with the RSA public key as the secret.
        let public_pem: &'static str = Box::leak(
            std::fs::read_to_string(fixture("rsa_public.pem"))
                .unwrap()
                .into_boxed_str(),
        );
        let confused = sign(&Signer::Hs256(public_pem), &good);

        let cases: Vec<(&str, Auth, &str)> = vec![
            ("no token", Auth::None, "missing"),
            ("garbage", Auth::Bearer("abc.def".into()), "malformed"),
            (
                "wrong key",
                Auth::Bearer(sign(
                    &Signer::Hs256("some-other-secret-some-other-secret"),
                    &good,
                )),
                "signature",
            ),
            (
                "expired",
                Auth::Bearer(sign(&Signer::Hs256(SECRET), &expired)),
                "expired",
            ),
            ("alg none", Auth::Bearer(none), "algorithm"),
            (
                "RS256 without an RSA key",
                Auth::Bearer(sign(
                    &Signer::Rs256 {
                        pem: "rsa_private.pem",
                        kid: None,
                    },
                    &good,
                )),
                "algorithm",
            ),
            ("confusion", Auth::Bearer(confused), "signature"),
            (
                "no sub",
                Auth::Bearer(sign(&Signer::Hs256(SECRET), &no_sub)),
                "claims",
            ),
            (
                "no tenant",
                Auth::Bearer(sign(&Signer::Hs256(SECRET), &no_tenant)),
                "claims",
            ),
            (
                "no exp",
                Auth::Bearer(sign(&Signer::Hs256(SECRET), &no_exp)),
                "claims",
            ),
            ("bad query token", Auth::Query("x.y.z".into()), "malformed"),
            (
                "expired cookie",
                Auth::Cookie {
                    token: sign(&Signer::Hs256(SECRET), &expired),
                    origin: None,
                },
                "expired",
            ),
        ];
        for transport in BOTH {
            for (name, auth, reason) in &cases {
                let before = gw
                    .metric(&format!(
                        "gateway_auth_failures_total{{reason=\"{reason}\"}}"
                    ))
                    .await;
                let got = Client::connect(&gw, transport, auth.clone()).await.err();
                assert_eq!(got, Some(401), "{transport:?} {name}");
                let after = gw
                    .metric(&format!(
                        "gateway_auth_failures_total{{reason=\"{reason}\"}}"
                    ))
                    .await;
                assert_eq!(after, before + 1.0, "{transport:?} {name}: reason {reason}");
            }
        }
        assert_eq!(
            gw.metric("gateway_connections{transport=\"ws\"}").await,
            0.0
        );
        assert_eq!(
            gw.metric("gateway_connections{transport=\"sse\"}").await,
            0.0
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_body_names_the_reason_and_challenges() {
    bounded(async {
        let gw = GatewayBuilder::new("challenge").start().await;
        let resp = gw.http.get(gw.url("/sse")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"error": "unauthorized", "reason": "missing"}));
        // A plain GET on /ws with a good token is not an upgrade.
        let resp = gw
            .http
            .get(gw.url("/ws"))
            .bearer_auth(token("t", "u"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_enforced_when_configured() {
    bounded(async {
        let gw = GatewayBuilder::new("issaud")
            .arg("jwt-issuer", "https://id.flatrender.example")
            .arg("jwt-audience", "realtime-gateway")
            .start()
            .await;
        let with = |iss: &str, aud: &str| {
            let mut c = claims("t", "u");
            c["iss"] = json!(iss);
            c["aud"] = json!(aud);
            Auth::Bearer(sign(&Signer::Hs256(SECRET), &c))
        };
        for transport in BOTH {
            let bad_iss = Client::connect(
                &gw,
                transport,
                with("https://evil.example", "realtime-gateway"),
            )
            .await;
            assert_eq!(bad_iss.err(), Some(401), "{transport:?} issuer");
            let bad_aud = Client::connect(
                &gw,
                transport,
                with("https://id.flatrender.example", "billing"),
            )
            .await;
            assert_eq!(bad_aud.err(), Some(401), "{transport:?} audience");
            let no_claims = Client::connect(&gw, transport, Auth::Bearer(token("t", "u"))).await;
            assert_eq!(no_claims.err(), Some(401), "{transport:?} missing iss/aud");
            let ok = Client::connect(
                &gw,
                transport,
                with("https://id.flatrender.example", "realtime-gateway"),
            )
            .await;
            assert!(ok.is_ok(), "{transport:?} good token refused");
        }
        assert!(
            gw.metric("gateway_auth_failures_total{reason=\"issuer\"}")
                .await
                >= 2.0
        );
        assert!(
            gw.metric("gateway_auth_failures_total{reason=\"audience\"}")
                .await
                >= 2.0
        );
        gw.shutdown().await;
    })
    .await;
}

/// Connects with `auth`, publishes one event for (t, u) and checks it arrives.
async fn receives_event(
    gw: &Gateway,
    publisher: &Publisher,
    transport: Transport,
    auth: Auth,
    id: &str,
) {
    let mut client = Client::connect(gw, transport, auth)
        .await
        .unwrap_or_else(|s| panic!("{transport:?} refused with {s}"));
    publisher
        .publish(PROGRESS, &envelope(id, PROGRESS, Some("t"), Some("u")))
        .await;
    assert_eq!(client.next_event().await["event_id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_pem_keys() {
    bounded(async {
        for (pem, signer, other) in [
            (
                "rsa_public.pem",
                Signer::Rs256 {
                    pem: "rsa_private.pem",
                    kid: None,
                },
                Signer::Rs256 {
                    pem: "rsa_other_private.pem",
                    kid: None,
                },
            ),
            (
                "ec_public.pem",
                Signer::Es256 {
                    pem: "ec_private.pem",
                    kid: None,
                },
                Signer::Rs256 {
                    pem: "rsa_private.pem",
                    kid: None,
                },
            ),
        ] {
            let gw = GatewayBuilder::new("pem")
                .arg("jwt-public-key-file", &fixture(pem))
                .start()
                .await;
            let publisher = Publisher::connect(&gw.exchange).await;
            for transport in BOTH {
                receives_event(
                    &gw,
                    &publisher,
                    transport,
                    Auth::Bearer(sign(&signer, &claims("t", "u"))),
                    &format!("{pem}-{transport:?}"),
                )
                .await;
                let refused = Client::connect(
                    &gw,
                    transport,
                    Auth::Bearer(sign(&other, &claims("t", "u"))),
                )
                .await;
                assert_eq!(refused.err(), Some(401), "{pem} {transport:?}: other key");
                // HS256 is still served by the secret; the PEM key is never an HMAC key.
                let public: &'static str = Box::leak(
                    std::fs::read_to_string(fixture(pem))
                        .unwrap()
                        .into_boxed_str(),
                );
                let confused = Client::connect(
                    &gw,
                    transport,
                    Auth::Bearer(sign(&Signer::Hs256(public), &claims("t", "u"))),
                )
                .await;
                assert_eq!(confused.err(), Some(401), "{pem} {transport:?}: confusion");
            }
            publisher.cleanup().await;
            gw.shutdown().await;
        }
    })
    .await;
}

/// A JWKS endpoint on loopback serving the fixture, counting its hits.
async fn jwks_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let body = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/.well-known/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_by_kid_with_bounded_refetch() {
    bounded(async {
        let (url, hits) = jwks_server().await;
        let gw = GatewayBuilder::new("jwks")
            .arg("jwt-jwks-url", &url)
            .arg("jwt-jwks-min-refetch-secs", "3600")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        for transport in BOTH {
            let rs = Signer::Rs256 {
                pem: "rsa_private.pem",
                kid: Some("rsa-1"),
            };
            let es = Signer::Es256 {
                pem: "ec_private.pem",
                kid: Some("ec-1"),
            };
            receives_event(
                &gw,
                &publisher,
                transport,
                Auth::Bearer(sign(&rs, &claims("t", "u"))),
                &format!("rs-{transport:?}"),
            )
            .await;
            receives_event(
                &gw,
                &publisher,
                transport,
                Auth::Bearer(sign(&es, &claims("t", "u"))),
                &format!("es-{transport:?}"),
            )
            .await;

            let cases = [
                (
                    "unknown kid",
                    Signer::Rs256 {
                        pem: "rsa_private.pem",
                        kid: Some("rotated-away"),
                    },
                ),
                (
                    "wrong key for kid",
                    Signer::Rs256 {
                        pem: "rsa_other_private.pem",
                        kid: Some("rsa-1"),
                    },
                ),
                (
                    "alg of another kid",
                    Signer::Rs256 {
                        pem: "rsa_private.pem",
                        kid: Some("ec-1"),
                    },
                ),
                ("symmetric jwk ignored", Signer::Hs256("secret")),
            ];
            for (name, signer) in cases {
                let got = Client::connect(
                    &gw,
                    transport,
                    Auth::Bearer(sign(&signer, &claims("t", "u"))),
                )
                .await;
                assert_eq!(got.err(), Some(401), "{transport:?} {name}");
            }
        }
        // One fetch at start, at most one more for unknown kids within the refetch floor,
        // however many forged kids arrive.
        for i in 0..20 {
            let kid: &'static str = Box::leak(format!("forged-{i}").into_boxed_str());
            let _ = Client::connect(
                &gw,
                Transport::Sse,
                Auth::Bearer(sign(
                    &Signer::Rs256 {
                        pem: "rsa_private.pem",
                        kid: Some(kid),
                    },
                    &claims("t", "u"),
                )),
            )
            .await;
        }
        let fetches = hits.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=2).contains(&fetches), "JWKS fetched {fetches} times");
        assert!(
            gw.metric("gateway_auth_failures_total{reason=\"unknown_key\"}")
                .await
                >= 20.0
        );
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_query_and_cookie_and_cookie_origin_rule() {
    bounded(async {
        let gw = GatewayBuilder::new("sources")
            .arg("allowed-origins", "https://studio.flatrender.example")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let allowed = Some("https://studio.flatrender.example".to_owned());
        for transport in BOTH {
            receives_event(
                &gw,
                &publisher,
                transport,
                Auth::Query(token("t", "u")),
                &format!("q-{transport:?}"),
            )
            .await;
            receives_event(
                &gw,
                &publisher,
                transport,
                Auth::Cookie {
                    token: token("t", "u"),
                    origin: allowed.clone(),
                },
                &format!("c-{transport:?}"),
            )
            .await;
            receives_event(
                &gw,
                &publisher,
                transport,
                Auth::Cookie {
                    token: token("t", "u"),
                    origin: None,
                },
                &format!("n-{transport:?}"),
            )
            .await;
            let evil = Client::connect(
                &gw,
                transport,
                Auth::Cookie {
                    token: token("t", "u"),
                    origin: Some("https://evil.example".into()),
                },
            )
            .await;
            assert_eq!(
                evil.err(),
                Some(403),
                "{transport:?} cookie from another origin"
            );
        }
        assert_eq!(
            gw.metric("gateway_connections_refused_total{reason=\"origin\"}")
                .await,
            2.0
        );

        // CORS for a studio page reading /sse with credentials.
        let sse = SseClient::connect(
            &gw,
            "/sse",
            Auth::Cookie {
                token: token("t", "u"),
                origin: allowed.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            sse.headers["access-control-allow-origin"],
            "https://studio.flatrender.example"
        );
        assert_eq!(sse.headers["access-control-allow-credentials"], "true");
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
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
        // Same user id in another tenant is another user.
        let _c = Client::as_user(&gw, Transport::Sse, "t2", "u").await;
        let fourth = Client::connect(&gw, Transport::Sse, Auth::Bearer(token("t3", "v"))).await;
        assert_eq!(fourth.err(), Some(503));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    bounded(async {
        let gw = GatewayBuilder::new("health").start().await;
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 200);
        let _ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let _sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        assert_eq!(
            gw.metric("gateway_connections{transport=\"ws\"}").await,
            1.0
        );
        assert_eq!(
            gw.metric("gateway_connections{transport=\"sse\"}").await,
            1.0
        );
        assert_eq!(gw.metric("gateway_broker_connected").await, 1.0);
        let metrics = gw.metrics().await;
        for name in [
            "gateway_events_received_total",
            "gateway_events_delivered_total{transport=\"ws\"}",
            "gateway_events_dropped_total{reason=\"not_json\"}",
            "gateway_auth_failures_total{reason=\"expired\"}",
        ] {
            assert!(metrics.contains(name), "{name} missing");
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_at_start_serves_clients_but_is_not_ready() {
    bounded(async {
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let gw = GatewayBuilder::new("nobroker")
            .arg(
                "amqp-url",
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .no_wait_ready()
            .start()
            .await;
        assert_eq!(gw.status("/healthz").await, 200);
        assert_eq!(gw.status("/readyz").await, 503);
        assert_eq!(gw.metric("gateway_broker_connected").await, 0.0);
        let _ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let _sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
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
        let gw = GatewayBuilder::new("shutdown").start().await;
        let mut ws = WsClient::connect(&gw, "/ws", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        let mut sse = SseClient::connect(&gw, "/sse", Auth::Bearer(token("t", "u")))
            .await
            .unwrap();
        let stopping = tokio::spawn(gw.shutdown());
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
        // Send nothing: the gateway must hang up rather than hold the descriptor.
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
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
        // SSE: a comment line arrives on an otherwise idle stream.
        let resp = gw
            .http
            .get(gw.url("/sse"))
            .bearer_auth(token("t", "u"))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains(": keep-alive") {
            let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
                .await
                .expect("no keep-alive comment")
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
