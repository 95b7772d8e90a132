//! Every way a token is accepted or refused, over both transports.

use serde_json::json;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::support::*;

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
            let refused = Client::connect(
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
            assert_eq!(refused.err(), Some(401), "forged kid {kid}");
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

        // The preflight a cross-origin client sending Last-Event-ID or Authorization needs.
        let pre = gw
            .http
            .request(reqwest::Method::OPTIONS, gw.url("/sse"))
            .header("origin", "https://studio.flatrender.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
            .await
            .unwrap();
        assert_eq!(pre.status(), 204);
        assert_eq!(
            pre.headers()["access-control-allow-origin"],
            "https://studio.flatrender.example"
        );
        assert!(
            pre.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("last-event-id")
        );
        let foreign = gw
            .http
            .request(reqwest::Method::OPTIONS, gw.url("/sse"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        // Another origin may read with a token but never with credentials (the cookie).
        assert_eq!(foreign.headers()["access-control-allow-origin"], "*");
        assert!(
            foreign
                .headers()
                .get("access-control-allow-credentials")
                .is_none()
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
async fn unreachable_jwks_refuses_with_keys_unavailable() {
    bounded(async {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
        drop(closed);
        let gw = GatewayBuilder::new("nojwks")
            .arg("jwt-jwks-url", &url)
            .start()
            .await;
        let rs = Signer::Rs256 {
            pem: "rsa_private.pem",
            kid: Some("rsa-1"),
        };
        let got = Client::connect(
            &gw,
            Transport::Sse,
            Auth::Bearer(sign(&rs, &claims("t", "u"))),
        )
        .await;
        assert_eq!(got.err(), Some(401));
        assert_eq!(
            gw.metric("gateway_auth_failures_total{reason=\"keys_unavailable\"}")
                .await,
            1.0
        );
        // HS256 still works from the secret: one key source being down does not lock out the others.
        assert!(
            Client::connect(&gw, Transport::Ws, Auth::Bearer(token("t", "u")))
                .await
                .is_ok()
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_token_in_the_subprotocol_keeps_it_out_of_the_url() {
    bounded(async {
        let gw = GatewayBuilder::new("ws-protocol").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let connect = |offer: String| {
            let mut req = gw.ws_url("/ws").into_client_request().unwrap();
            req.headers_mut()
                .insert("sec-websocket-protocol", offer.parse().unwrap());
            tokio_tungstenite::connect_async(req)
        };
        let (stream, resp) = connect(format!("realtime-gateway.v1, bearer.{}", token("t", "u")))
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "realtime-gateway.v1"
        );
        let mut ws = WsClient { stream };
        publisher
            .publish(
                PROGRESS,
                &envelope("proto-1", PROGRESS, Some("t"), Some("u")),
            )
            .await;
        assert_eq!(ws.next_json().await["event_id"], "proto-1");

        // A bad token there is refused like anywhere else, before the upgrade.
        match connect(format!(
            "realtime-gateway.v1, bearer.{}",
            token("t", "u") + "x"
        ))
        .await
        {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
        // `bearer.` without our protocol is some other application's protocol, not a token.
        match connect(format!("bearer.{}", token("t", "u"))).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_check_reports_what_a_connection_would_get() {
    bounded(async {
        let gw = GatewayBuilder::new("auth-check")
            .arg("max-connections-per-user", "1")
            .start()
            .await;
        let check = |token: Option<String>| {
            let mut req = gw
                .http
                .get(gw.url("/auth/check"))
                .header("origin", "https://studio.elsewhere.example");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        let ok = check(Some(token("t", "u"))).await.unwrap();
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()["access-control-allow-origin"], "*");

        let mut expired = claims("t", "u");
        expired["exp"] = serde_json::json!(now() - 3600);
        let refused = check(Some(sign(&Signer::Hs256(SECRET), &expired)))
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["reason"], "expired");
        assert_eq!(check(None).await.unwrap().status(), 401);

        // The user's one allowed connection is taken: 429 with Retry-After, and the probe
        // itself takes no slot.
        let _held = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        let busy = check(Some(token("t", "u"))).await.unwrap();
        assert_eq!(busy.status(), 429);
        assert!(busy.headers().contains_key("retry-after"));
        assert_eq!(
            check(Some(token("t", "other"))).await.unwrap().status(),
            204
        );

        let pre = gw
            .http
            .request(reqwest::Method::OPTIONS, gw.url("/auth/check"))
            .header("origin", "https://studio.elsewhere.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(pre.status(), 204);
        assert_eq!(pre.headers()["access-control-allow-origin"], "*");
        assert!(
            pre.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_with_a_token_is_readable_from_any_origin_without_credentials() {
    bounded(async {
        let gw = GatewayBuilder::new("sse-cors")
            .arg("allowed-origins", "https://studio.flatrender.example")
            .start()
            .await;
        let sse = SseClient::connect_with(
            &gw,
            "/sse",
            Auth::Query(token("t", "u")),
            &[("origin", "https://studio.elsewhere.example")],
        )
        .await
        .unwrap();
        assert_eq!(sse.headers["access-control-allow-origin"], "*");
        assert!(
            sse.headers
                .get("access-control-allow-credentials")
                .is_none()
        );
        gw.shutdown().await;
    })
    .await;
}
