//! Production brokers, against private RabbitMQ nodes the tests start on loopback: AMQP
//! over TLS (private CA, client-certificate login, a wrong CA refused), failover between
//! the nodes of a list, and secrets read from files without reaching the logs.

use std::time::Duration;

use super::support::*;

fn event(id: &str) -> serde_json::Value {
    envelope(id, PROGRESS, Some("t"), Some("u"))
}

/// The node the gateway consumes from, as `gateway_broker_node_info` names it.
async fn node_in_use(gw: &Gateway) -> Option<String> {
    let text = gw.metrics().await;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("gateway_broker_node_info{node=\"")?;
        let (node, value) = rest.split_once("\"} ")?;
        (value == "1").then(|| node.to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_certificate_login_a_wrong_ca_or_host_refused() {
    bounded(async {
        let mut node = PrivateNode::start(true).await;
        let tls_addr = format!("localhost:{}", node.tls_port.unwrap());

        // Password login over TLS, the server certificate checked against the CA file.
        let gw = GatewayBuilder::new("tls")
            .arg("amqp-url", &node.tls_url("guest:guest@", ""))
            .arg("amqp-tls-ca-file", &node.cert("ca.pem"))
            .start()
            .await;
        assert_eq!(node_in_use(&gw).await.as_deref(), Some(tls_addr.as_str()));
        let publisher = Publisher::connect_to(&node.url(), &gw.exchange).await;
        let mut client = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        publisher.publish(PROGRESS, &event("over-tls")).await;
        assert_eq!(client.next_event().await["event_id"], "over-tls");
        drop(client);
        gw.shutdown().await;

        // Client-certificate login (EXTERNAL): no password anywhere.
        let gw = GatewayBuilder::new("tls-external")
            .arg("amqp-url", &node.tls_url("", "?auth_mechanism=external"))
            .arg("amqp-tls-ca-file", &node.cert("ca.pem"))
            .arg("amqp-tls-cert-file", &node.cert("client.pem"))
            .arg("amqp-tls-key-file", &node.cert("client.key"))
            .start()
            .await;
        let publisher = Publisher::connect_to(&node.url(), &gw.exchange).await;
        let mut client = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        publisher.publish(PROGRESS, &event("by-certificate")).await;
        assert_eq!(client.next_event().await["event_id"], "by-certificate");
        drop(client);
        gw.shutdown().await;

        // A CA that did not sign the broker's certificate, and a host the certificate does
        // not name (it names `localhost` only): a clear error naming the node and the
        // cause, retried, never ready, never plain AMQP.
        let tls_port = node.tls_port.unwrap();
        let url = node.tls_url("guest:guest@", "");
        refused_over_tls(&url, &node.cert("other-ca.pem"), &tls_addr, "UnknownIssuer").await;
        let by_ip = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
        let ip_addr = format!("127.0.0.1:{tls_port}");
        refused_over_tls(&by_ip, &node.cert("ca.pem"), &ip_addr, "not valid for name").await;
        node.stop().await;
    })
    .await;
}

/// Runs the binary against `url` trusting `ca`, and checks that the TLS handshake is
/// refused for `cause`, logged as an error naming `node`, retried, and never ready.
async fn refused_over_tls(url: &str, ca: &str, node: &str, cause: &str) {
    let log = LogFile::new();
    let (mut cmd, port) = gateway_process(&unique("tls-refused"), None);
    let mut child = cmd
        .env("GATEWAY_AMQP_URL", url)
        .env("GATEWAY_AMQP_TLS_CA_FILE", ca)
        .env("GATEWAY_AMQP_RECONNECT_MAX_SECS", "1")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stdout(log.stdio())
        .stderr(log.stdio())
        .spawn()
        .unwrap();
    let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), "");
    log.wait_line(&["ERROR", "TLS handshake failed", cause, node])
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while log.text().matches("TLS handshake failed").count() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.status("/readyz").await, 503);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_in_use_moves_to_the_next_with_resync_and_clients_kept() {
    bounded(async {
        let (mut a, mut b) = tokio::join!(PrivateNode::start(false), PrivateNode::start(false));
        let gw = GatewayBuilder::new("failover")
            .arg("amqp-url", &format!("{},{}", a.url(), b.url()))
            .arg("amqp-reconnect-max-secs", "1")
            .start()
            .await;
        let in_use = node_in_use(&gw).await.expect("a node in use");
        let (first, second) = if in_use == a.addr() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(in_use, first.addr());
        let publisher = Publisher::connect_to(&first.url(), &gw.exchange).await;
        let mut ws = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        let mut sse = Client::as_user(&gw, Transport::Sse, "t", "u").await;
        publisher.publish(PROGRESS, &event("before")).await;
        for c in [&mut ws, &mut sse] {
            assert_eq!(c.next_event().await["event_id"], "before");
        }
        drop(publisher);

        first.stop().await;
        // Within seconds: the node is gone, the other one is in use and ready.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = gw.status("/readyz").await == 200;
            if ready && node_in_use(&gw).await.as_deref() == Some(second.addr().as_str()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not move to {} within {WAIT:?}",
                second.addr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The queue was lost with its node: the same connections are told to resync, then
        // get what is published to the other node.
        let publisher = Publisher::connect_to(&second.url(), &gw.exchange).await;
        publisher.publish(PROGRESS, &event("after")).await;
        for c in [&mut ws, &mut sse] {
            c.expect_resync_then("after").await;
        }
        assert!(gw.metric("gateway_broker_reconnects_total").await >= 1.0);
        drop((ws, sse));
        gw.shutdown().await;
        second.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_never_reach_the_logs_and_a_refused_login_says_why() {
    bounded(async {
        let dir =
            std::env::temp_dir().join(format!("gateway-secrets-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let secret_file = file("jwt-secret", &format!("{SECRET}\n"));
        let url_file = file("amqp-url", &format!("{}\n", amqp_url()));

        // Both secrets from files, at trace: the gateway works, and neither shows up.
        let log = LogFile::new();
        let exchange = unique("secret-files");
        let (mut cmd, port) = gateway_process(&exchange, None);
        let mut child = cmd
            .env_remove("GATEWAY_AMQP_URL")
            .env_remove("GATEWAY_JWT_SECRET")
            .env("GATEWAY_AMQP_URL_FILE", &url_file)
            .env("GATEWAY_JWT_SECRET_FILE", &secret_file)
            .env("GATEWAY_LOG", "trace")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdout(log.stdio())
            .stderr(log.stdio())
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), &exchange);
        gw.wait_ready().await;
        let publisher = Publisher::connect(&exchange).await;
        // Tokens signed with the secret from the file are accepted.
        let mut client = Client::as_user(&gw, Transport::Ws, "t", "u").await;
        publisher.publish(PROGRESS, &event("from-files")).await;
        assert_eq!(client.next_event().await["event_id"], "from-files");
        drop(client);
        publisher.cleanup().await;
        child.kill().await.unwrap();
        let text = log.text();
        assert!(text.contains("guest:***@"), "no masked URL in the log");
        assert!(!text.contains(SECRET), "the JWT secret is in the log");
        assert!(
            !text.contains("guest:guest@"),
            "the AMQP password is in the log"
        );

        // A refused login: one error line per attempt naming the node, the reason and a
        // hint, retried, never the password.
        let password = "Wr0ng-pa55word-zz";
        let bad_url = file(
            "bad-amqp-url",
            &amqp_url().replace("guest:guest@", &format!("guest:{password}@")),
        );
        let log = LogFile::new();
        let (mut cmd, port) = gateway_process(&unique("refused"), None);
        let mut child = cmd
            .env_remove("GATEWAY_AMQP_URL")
            .env("GATEWAY_AMQP_URL_FILE", &bad_url)
            .env("GATEWAY_AMQP_RECONNECT_MAX_SECS", "1")
            .env("GATEWAY_LOG", "trace")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdout(log.stdio())
            .stderr(log.stdio())
            .spawn()
            .unwrap();
        let gw = Gateway::external(format!("127.0.0.1:{port}").parse().unwrap(), "");
        let node = amqp_url()
            .split('@')
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_owned();
        log.wait_line(&[
            "ERROR",
            "ACCESS_REFUSED",
            "check the user and password",
            &node,
        ])
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while log.text().matches("ACCESS_REFUSED").count() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(gw.status("/readyz").await, 503);
        child.kill().await.unwrap();
        let text = log.text();
        assert!(!text.contains(password), "the password is in the log");
        let refusals = text.lines().filter(|l| l.contains("ACCESS_REFUSED"));
        assert!(
            refusals
                .clone()
                .all(|l| l.contains("refused; clients stay connected")),
            "ACCESS_REFUSED logged other than once per attempt:\n{}",
            refusals.collect::<Vec<_>>().join("\n")
        );

        // A secret and its file together: a startup error that quotes neither.
        let (mut cmd, _) = gateway_process(&unique("both"), None);
        let out = cmd
            .env("GATEWAY_JWT_SECRET_FILE", &secret_file)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("GATEWAY_JWT_SECRET_FILE") && err.contains("not both"),
            "{err}"
        );
        assert!(!err.contains(SECRET), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
