//! Shared helpers for the integration tests: a gateway started in-process on port 0 with
//! its own exchange, a publisher on the real broker, token minting, and WebSocket and SSE
//! clients that read events with a deadline so no test can hang.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use realtime_gateway::config::{Config, Parsed};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// Longest any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(15);
/// The routing key most tests publish with.
pub const PROGRESS: &str = "render.job.progress.v1";

/// HS256 secret of the test gateways.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The broker the tests use; `GATEWAY_TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("GATEWAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{:016x}", rand::random::<u64>())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts a gateway with the given extra flags.
pub struct GatewayBuilder {
    args: Vec<String>,
    /// Stands in for the environment (the process environment is never touched).
    env: std::collections::HashMap<String, String>,
    exchange: String,
    wait_ready: bool,
    hooks: realtime_gateway::Hooks,
}

impl GatewayBuilder {
    pub fn new(name: &str) -> Self {
        let exchange = unique(name);
        let args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--amqp-url".into(),
            amqp_url(),
            "--amqp-exchange".into(),
            exchange.clone(),
            "--amqp-queue".into(),
            format!("{exchange}.gateway"),
            // Test queues should not linger long after a test ends.
            "--amqp-queue-expires-secs".into(),
            "5".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            // Above the default drain (3 s) plus the close handshake's 2 s, so clients that
            // a test holds but no longer reads still close within the grace.
            "--shutdown-grace-secs".into(),
            "8".into(),
            "--log".into(),
            "warn,realtime_gateway=debug".into(),
            // Off unless a test turns it on with its own stream: a stream outlives the
            // test (streams cannot expire), so only the tests of it create and delete one.
            "--revocation-user-keys".into(),
            "off".into(),
            "--revocation-tenant-keys".into(),
            "off".into(),
            "--history-stream".into(),
            "off".into(),
        ];
        GatewayBuilder {
            args,
            env: Default::default(),
            exchange,
            wait_ready: true,
            hooks: realtime_gateway::Hooks::default(),
        }
    }

    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(format!("--{flag}"));
        self.args.push(value.to_owned());
        self
    }

    /// Use an existing exchange (a second instance on the same exchange).
    pub fn exchange(mut self, exchange: &str) -> Self {
        self.exchange = exchange.to_owned();
        let i = self
            .args
            .iter()
            .position(|a| a == "--amqp-exchange")
            .unwrap();
        self.args[i + 1] = exchange.to_owned();
        let q = self.args.iter().position(|a| a == "--amqp-queue").unwrap();
        self.args[q + 1] = unique("second");
        self
    }

    /// Loads a shipped configuration file (`config/*.toml`) as `GATEWAY_CONFIG`, with
    /// each route's `exchange = "NAME"` renamed to `<prefix>.NAME` when a prefix is given,
    /// so the test runs on exchanges of its own. Routes without an exchange use the
    /// builder's, since the builder's flags override the file's settings.
    pub fn config_file(self, path: &str, exchange_prefix: Option<&str>) -> Self {
        let mut text =
            std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        if let Some(prefix) = exchange_prefix {
            text = text.replace("exchange = \"", &format!("exchange = \"{prefix}."));
        }
        self.config_text(&text)
    }

    /// Uses `text` as the `GATEWAY_CONFIG` file.
    pub fn config_text(mut self, text: &str) -> Self {
        let copy = write_temp_config(text);
        self.env.insert("GATEWAY_CONFIG".to_owned(), copy);
        self
    }

    /// The queue name this gateway will use.
    pub fn queue(&self) -> String {
        let q = self.args.iter().position(|a| a == "--amqp-queue").unwrap();
        self.args[q + 1].clone()
    }

    /// Runs `hook` in the consumer after each event entered the history and before the
    /// hub fans it out (the resume seam).
    pub fn seam_hook(mut self, hook: realtime_gateway::SeamHook) -> Self {
        self.hooks.seam = Some(hook);
        self
    }

    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn config(&self) -> Config {
        // Flags only: the tests never read or change the process environment for config.
        let env = self.env.clone();
        match Config::parse(self.args.clone(), move |k| env.get(k).cloned())
            .expect("test config is valid")
        {
            Parsed::Run(c) => *c,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn start(self) -> Gateway {
        init_logs();
        let config = self.config();
        let listener = realtime_gateway::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let queue = self.queue();
        let handle = tokio::spawn(realtime_gateway::run_with(
            listener, config, stop, self.hooks,
        ));
        let gw = Gateway {
            addr,
            queue,
            exchange: self.exchange,
            stop: Some(stop_tx),
            handle: Some(handle),
            http: reqwest::Client::new(),
        };
        if self.wait_ready {
            gw.wait_ready().await;
        }
        gw
    }
}

fn init_logs() {
    // Only the first call installs; logs show up for failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn,realtime_gateway=info".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// Writes a configuration file of its own; returns its path.
pub fn write_temp_config(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("gateway-config")));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A gateway running inside the test process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub exchange: String,
    pub queue: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<
        tokio::task::JoinHandle<Result<realtime_gateway::Stopped, realtime_gateway::StartError>>,
    >,
    pub http: reqwest::Client,
}

impl Gateway {
    /// A gateway running in another process, for HTTP helpers only.
    pub fn external(addr: SocketAddr, exchange: &str) -> Gateway {
        Gateway {
            addr,
            exchange: exchange.to_owned(),
            queue: String::new(),
            stop: None,
            handle: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// HTTP status of a GET, or 0 when nothing answers (a process still starting).
    pub async fn status(&self, path: &str) -> u16 {
        match self.http.get(self.url(path)).send().await {
            Ok(resp) => resp.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `/readyz` says 200: the queue is declared, bound and consumed.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.status("/readyz").await != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready within {WAIT:?}; is RabbitMQ running at {}?",
                amqp_url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/metrics`. A request whose connection the gateway closed before answering (a test
    /// that fills the pending-connection cap) is tried again, for a few seconds at most.
    pub async fn metrics(&self) -> String {
        let mut tries = 0;
        loop {
            let sent = self.http.get(self.url("/metrics")).send().await;
            match sent {
                Ok(resp) => return resp.text().await.unwrap(),
                Err(e) if tries < 40 => {
                    tries += 1;
                    tracing::debug!(error = %e, "metrics request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("/metrics kept failing: {e}"),
            }
        }
    }

    /// Value of one metric line, e.g. `gateway_events_dropped_total{reason="not_json"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("{series} not in metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Waits until a metric reaches at least `want` (metrics lag the events they count
    /// only by the time the consumer takes to get to them).
    pub async fn wait_metric(&self, series: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v >= want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a metric falls to at most `want` (a gauge such as open connections).
    pub async fn wait_metric_at_most(&self, series: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v <= want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v}, expected at most {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signals shutdown and waits for `run` to return; fails the test when the grace
    /// period ran out with connections still open.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let stopped = tokio::time::timeout(WAIT, handle)
                .await
                .expect("gateway did not stop within the grace period")
                .unwrap()
                .unwrap();
            assert_eq!(
                stopped.cut_connections, 0,
                "the grace period ran out with connections still open"
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Publishes to the test's exchange on the real broker.
pub struct Publisher {
    conn: Connection,
    channel: lapin::Channel,
    pub exchange: String,
}

impl Publisher {
    pub async fn connect(exchange: &str) -> Publisher {
        Publisher::connect_to(&amqp_url(), exchange).await
    }

    /// A publisher on another broker (a private node).
    pub async fn connect_to(url: &str, exchange: &str) -> Publisher {
        let conn = tokio::time::timeout(
            WAIT,
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        .expect("broker connect timed out")
        .expect("broker connect");
        let channel = conn.create_channel().await.unwrap();
        let publisher = Publisher {
            conn,
            channel,
            exchange: exchange.to_owned(),
        };
        // Same declaration as the gateway's, so whichever comes first wins harmlessly.
        publisher.declare(exchange).await;
        publisher
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default().with_content_type("application/json".into());
        self.publish_to(&self.exchange.clone(), routing_key, body, props)
            .await;
    }

    /// Publishes to any exchange with the given properties.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Declares another topic exchange the way the platform would.
    pub async fn declare(&self, exchange: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Whether an exchange exists, asked with a passive declare on a throwaway channel
    /// (a failed passive declare closes its channel).
    pub async fn exchange_exists(&self, exchange: &str) -> bool {
        let probe = self.conn.create_channel().await.unwrap();
        probe
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
    }

    /// Deletes another exchange.
    pub async fn delete_exchange(&self, exchange: &str) {
        let _ = self
            .channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }

    pub async fn publish(&self, routing_key: &str, body: &Value) {
        self.publish_raw(routing_key, &serde_json::to_vec(body).unwrap())
            .await;
    }

    /// Binds `queue` to the test's exchange with `key`, as an earlier configuration of a
    /// gateway with a named queue would have left it.
    pub async fn bind_queue(&self, queue: &str, key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                self.exchange.as_str().into(),
                key.into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Declares a stream as the gateway does (the same arguments, or the gateway's own
    /// declaration would be refused), as an operator re-creating it would.
    pub async fn declare_stream(&self, stream: &str, max_age_secs: u64, max_bytes: i64) {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{max_age_secs}s").into()),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(max_bytes),
        );
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(stream.into(), durable, args)
            .await
            .unwrap();
    }

    /// Deletes a queue, as a broker restart or an expired `x-expires` would.
    pub async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    /// Deletes the test's exchange so runs leave nothing behind.
    pub async fn cleanup(self) {
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// A catalog envelope; `user` `None` leaves `user_id` out (tenant-wide).
pub fn envelope(id: &str, event_type: &str, tenant: Option<&str>, user: Option<&str>) -> Value {
    let mut v = json!({
        "event_id": id,
        "event_type": event_type,
        "event_time": "2026-05-27T10:15:00Z",
        "trace_id": format!("trace-{id}"),
        "correlation_id": format!("corr-{id}"),
        "producer": "render-orchestrator",
        "data": {"job_id": format!("job-{id}"), "progress": 42}
    });
    if let Some(t) = tenant {
        v["tenant_id"] = json!(t);
    }
    if let Some(u) = user {
        v["user_id"] = json!(u);
    }
    v
}

/// What a token is signed with.
pub enum Signer {
    Hs256(&'static str),
    Rs256 {
        pem: &'static str,
        kid: Option<&'static str>,
    },
    Es256 {
        pem: &'static str,
        kid: Option<&'static str>,
    },
}

pub fn sign(signer: &Signer, claims: &Value) -> String {
    let (mut header, key) = match signer {
        Signer::Hs256(secret) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        Signer::Rs256 { pem, kid } => {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = kid.map(str::to_owned);
            let bytes = std::fs::read(fixture(pem)).unwrap();
            (h, EncodingKey::from_rsa_pem(&bytes).unwrap())
        }
        Signer::Es256 { pem, kid } => {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.map(str::to_owned);
            let bytes = std::fs::read(fixture(pem)).unwrap();
            (h, EncodingKey::from_ec_pem(&bytes).unwrap())
        }
    };
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn claims(tenant: &str, user: &str) -> Value {
    json!({"sub": user, "tenant_id": tenant, "exp": now() + 3600, "iat": now()})
}

/// A valid HS256 token for the test gateways.
pub fn token(tenant: &str, user: &str) -> String {
    sign(&Signer::Hs256(SECRET), &claims(tenant, user))
}

/// How a client presents its token.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Bearer(String),
    Query(String),
    Cookie {
        token: String,
        origin: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

pub const BOTH: [Transport; 2] = [Transport::Ws, Transport::Sse];

/// A connected client of either transport, reading envelopes.
pub enum Client {
    Ws(WsClient),
    Sse(SseClient),
}

impl Client {
    /// `resync` with its snapshot, then event `id` exactly once: in the snapshot (the
    /// connection took the resync after `id` became its job's state) or live after it.
    pub async fn expect_resync_then(&mut self, id: &str) {
        let state = self.expect_resync().await;
        if !state.iter().any(|s| s == id) {
            assert_eq!(self.next_event().await["event_id"], id, "after {state:?}");
        }
    }

    /// The next message is `resync`, and the snapshot of the latest state that always
    /// follows it (the test gateways keep state), whose event ids it returns.
    pub async fn expect_resync(&mut self) -> Vec<String> {
        assert_eq!(self.next_any().await, json!({"type": "resync"}));
        let snapshot = self.next_any().await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        snapshot["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Connects; `Err` carries the HTTP status of a refusal.
    pub async fn connect(gw: &Gateway, t: Transport, auth: Auth) -> Result<Client, u16> {
        match t {
            Transport::Ws => WsClient::connect(gw, "/ws", auth).await.map(Client::Ws),
            Transport::Sse => SseClient::connect(gw, "/sse", auth).await.map(Client::Sse),
        }
    }

    pub async fn as_user(gw: &Gateway, t: Transport, tenant: &str, user: &str) -> Client {
        Client::connect(gw, t, Auth::Bearer(token(tenant, user)))
            .await
            .unwrap_or_else(|s| panic!("{t:?} connect refused with {s}"))
    }

    /// The next domain event, as the JSON envelope the client got. For SSE, also checks
    /// that `id:` is the `event_id`.
    pub async fn next_event(&mut self) -> Value {
        let v = self.next_any().await;
        assert!(v.get("event_id").is_some(), "expected an event, got {v}");
        v
    }

    /// The next event or gateway message, as JSON: events as published, WS control
    /// messages as sent, SSE named events (`resync`, `close`) as their data.
    pub async fn next_any(&mut self) -> Value {
        self.next_with_id().await.1
    }

    /// Like `next_any`, with the SSE `id:` of the event (`None` over WebSocket).
    pub async fn next_with_id(&mut self) -> (Option<String>, Value) {
        match self {
            Client::Ws(c) => (None, c.next_json().await),
            Client::Sse(c) => {
                let ev = c.next_event().await;
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                match &ev.event {
                    None => {
                        assert!(ev.id.is_some(), "SSE events carry an id");
                        if let Some(id) = v.get("event_id") {
                            assert_eq!(ev.id.as_deref(), id.as_str(), "SSE id: must be event_id");
                        }
                    }
                    Some(name) => assert_eq!(
                        v["type"].as_str(),
                        Some(name.as_str()),
                        "SSE event name and data type agree"
                    ),
                }
                (ev.id, v)
            }
        }
    }

    /// Event ids until (and including) `last`.
    pub async fn ids_until(&mut self, last: &str) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let v = self.next_event().await;
            let id = v["event_id"].as_str().unwrap().to_owned();
            ids.push(id.clone());
            if id == last {
                return ids;
            }
        }
    }
}

pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsClient {
    pub async fn connect(gw: &Gateway, path: &str, auth: Auth) -> Result<WsClient, u16> {
        let mut url = gw.ws_url(path);
        let mut req_headers = Vec::new();
        match &auth {
            Auth::None => {}
            Auth::Bearer(t) => req_headers.push(("authorization", format!("Bearer {t}"))),
            Auth::Query(t) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}access_token={t}");
            }
            Auth::Cookie { token, origin } => {
                req_headers.push(("cookie", format!("theme=dark; access_token={token}")));
                if let Some(o) = origin {
                    req_headers.push(("origin", o.clone()));
                }
            }
        }
        let mut req = url.into_client_request().unwrap();
        for (k, v) in req_headers {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
            Err(_) => panic!("websocket connect timed out"),
            Ok(Ok((stream, _))) => Ok(WsClient { stream }),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
            Ok(Err(e)) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Next message of any kind except pings/pongs.
    pub async fn next_message(&mut self) -> Option<tungstenite::Message> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no websocket message within the deadline");
            match msg {
                None => return None,
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_message().await {
            Some(tungstenite::Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(tungstenite::Message::text(text))
            .await
            .unwrap();
    }

    /// Waits for the server's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_message().await {
                Some(tungstenite::Message::Close(Some(f))) => {
                    return (u16::from(f.code), f.reason.to_string());
                }
                Some(tungstenite::Message::Close(None)) => return (1005, String::new()),
                Some(tungstenite::Message::Text(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// One SSE event as a client parses it.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

pub struct SseClient {
    pub headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    pub async fn connect(gw: &Gateway, path: &str, auth: Auth) -> Result<SseClient, u16> {
        Self::connect_with(gw, path, auth, &[]).await
    }

    pub async fn connect_with(
        gw: &Gateway,
        path: &str,
        auth: Auth,
        extra: &[(&str, &str)],
    ) -> Result<SseClient, u16> {
        let mut url = gw.url(path);
        let mut req = gw.http.get(&url);
        match &auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.bearer_auth(t),
            Auth::Query(t) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}access_token={t}");
                req = gw.http.get(&url);
            }
            Auth::Cookie { token, origin } => {
                req = req.header("cookie", format!("theme=dark; access_token={token}"));
                if let Some(o) = origin {
                    req = req.header("origin", o);
                }
            }
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE connect timed out")
            .unwrap();
        if resp.status() != 200 {
            return Err(resp.status().as_u16());
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(SseClient {
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        })
    }

    /// Next event block that carries data (comments, heartbeats and bare `retry:` blocks
    /// skipped);
    /// `None` when the stream ended.
    pub async fn try_next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = Some(value.to_owned()),
                        "retry" => ev.retry = value.parse().ok(),
                        "data" => {
                            assert!(!has_data, "data must be on one line: {block:?}");
                            has_data = true;
                            ev.data = value.to_owned();
                        }
                        other => panic!("unexpected SSE field {other:?} in {block:?}"),
                    }
                }
                // Heartbeats only prove the stream alive, as in a real client.
                if has_data && ev.event.as_deref() != Some("heartbeat") {
                    return Some(ev);
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE data within the deadline");
            match chunk {
                None => return None,
                Some(Ok(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                // The gateway ends streams by closing them after a last event; a broken
                // stream is a failure, not a clean end.
                Some(Err(e)) => panic!("SSE stream failed: {e}"),
            }
        }
    }

    pub async fn next_event(&mut self) -> SseEvent {
        self.try_next_event().await.expect("SSE stream ended")
    }

    /// The `id:` of the next heartbeat that carries one (a quiet stream's resume
    /// position); events before it are returned too, so nothing is lost unseen.
    pub async fn next_position(&mut self) -> (String, Vec<String>) {
        let mut events = Vec::new();
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
                };
                match (field("event:").as_deref(), field("id:")) {
                    (Some("heartbeat"), Some(id)) => return (id, events),
                    (None, Some(id)) => events.push(id),
                    _ => {}
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE data within the deadline")
                .expect("SSE stream ended")
                .expect("SSE stream failed");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Holds the consumer at the resume seam: each event whose id ends in `-at-seam` waits,
/// after it entered the history (and the state) and before the fan-out, until released.
pub struct SeamGate {
    pub held: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

impl SeamGate {
    pub fn new() -> std::sync::Arc<SeamGate> {
        std::sync::Arc::new(SeamGate {
            held: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }

    /// The consumer hook that stops at the gate.
    pub fn hook(self: &std::sync::Arc<Self>) -> realtime_gateway::SeamHook {
        let gate = self.clone();
        std::sync::Arc::new(move |e| {
            let gate = gate.clone();
            let at_seam = e.id.ends_with("-at-seam");
            Box::pin(async move {
                if at_seam {
                    // Registered before `held` is signalled, so the release cannot be
                    // missed.
                    let released = gate.release.notified();
                    gate.held.notify_one();
                    released.await;
                }
            })
        })
    }
}

/// Runs a test body with an overall deadline, so a bug shows as a failure, not a hang.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test exceeded its overall deadline");
}

/// A TCP proxy on loopback between the gateway and RabbitMQ that a test can cut (every
/// link dropped, new ones refused) and restore, to inject broker outages on purpose.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl ChaosProxy {
    pub async fn start() -> ChaosProxy {
        let upstream = amqp_url()
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5672")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = watch.subscribe();
                if !*state.borrow() {
                    continue; // dropped: refused while cut
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        ChaosProxy { addr, up }
    }

    /// The broker URL through this proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// A client speaking raw HTTP/WebSocket over a socket with a tiny receive buffer, that
/// reads only when told: the "laptop on hotel Wi-Fi that stopped reading".
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
}

impl RawClient {
    /// Opens `/ws` (WebSocket handshake) or `/sse` and reads only the response head.
    pub async fn open(gw: &Gateway, path: &str, token: &str) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(gw.addr).await.unwrap();
        let upgrade = if path == "/ws" {
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{upgrade}\r\n",
            gw.addr
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        // Read the head byte by byte so nothing after it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(WAIT, stream.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n == 1, "connection closed during the handshake");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101") || head.starts_with("HTTP/1.1 200"),
            "unexpected answer: {head}"
        );
        RawClient { stream }
    }

    /// Reads WebSocket frames (server frames are unmasked) until a close frame; returns its
    /// code, or `None` when the socket ends first.
    pub async fn read_close_code(&mut self) -> Option<u16> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut h = [0u8; 2];
            tokio::time::timeout(WAIT, self.stream.read_exact(&mut h))
                .await
                .ok()?
                .ok()?;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.stream.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.stream.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            if h[0] & 0x0f == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// Polls `/readyz` until it answers `want`.
pub async fn wait_ready_status(gw: &Gateway, want: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if gw.status("/readyz").await == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway binary as a child process on a free loopback port (optionally under an
/// open-file limit), configured by environment as an operator would.
pub fn gateway_process(
    exchange: &str,
    max_open_files: Option<u32>,
) -> (tokio::process::Command, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bin = env!("CARGO_BIN_EXE_realtime-gateway");
    let mut cmd = match max_open_files {
        None => tokio::process::Command::new(bin),
        Some(n) => {
            let mut c = tokio::process::Command::new("bash");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\""), bin]);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_AMQP_URL", amqp_url())
        .env("GATEWAY_AMQP_EXCHANGE", exchange)
        .env("GATEWAY_AMQP_QUEUE_EXPIRES_SECS", "5")
        .env("GATEWAY_JWT_SECRET", SECRET)
        .env("GATEWAY_REVOCATION_USER_KEYS", "off")
        .env("GATEWAY_REVOCATION_TENANT_KEYS", "off")
        .env("GATEWAY_HISTORY_STREAM", "off")
        .kill_on_drop(true);
    (cmd, port)
}

/// A port nothing uses right now, below the kernel's ephemeral range (32768 and up) so
/// that an outgoing connection cannot take it before the node binds it.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// A RabbitMQ node of the test's own, beside the shared one, on loopback, started and
/// stopped by `scripts/rabbitmq-node.sh`; stopped (and its files removed) on drop. A node
/// that cannot start fails the test with the script's reason: nothing is skipped.
pub struct PrivateNode {
    pub dir: std::path::PathBuf,
    name: String,
    /// Plain AMQP listener (publishers, and nodes without TLS).
    pub amqp_port: u16,
    dist_port: u16,
    /// TLS listener, with certificates from `certs/` (see [`PrivateNode::cert`]).
    pub tls_port: Option<u16>,
    running: bool,
}

fn node_script() -> String {
    format!("{}/scripts/rabbitmq-node.sh", env!("CARGO_MANIFEST_DIR"))
}

async fn run_script(args: &[&str], envs: &[(&str, &str)]) {
    let mut cmd = tokio::process::Command::new(node_script());
    cmd.args(args).envs(envs.iter().copied()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(100), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("rabbitmq-node.sh {args:?} took over 100 s"))
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmq-node.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateNode {
    /// Starts a node; with `tls`, a TLS listener with a fresh test PKI, EXTERNAL login on
    /// and a user `gateway-client` (the client certificate's CN).
    pub async fn start(tls: bool) -> PrivateNode {
        let tag = format!("{:08x}", rand::random::<u32>());
        let name = format!("gwtest-{tag}");
        let dir = std::env::temp_dir().join(format!("gateway-node-{tag}"));
        let dir_s = dir.to_str().unwrap().to_owned();
        let (amqp_port, dist_port) = (free_port(), free_port());
        let tls_port = tls.then(free_port);
        let (amqp, dist) = (amqp_port.to_string(), dist_port.to_string());
        let tls_s = tls_port.map(|p| p.to_string());
        let mut node = PrivateNode {
            dir,
            name,
            amqp_port,
            dist_port,
            tls_port,
            running: true,
        };
        if tls {
            run_script(&["certs", &dir_s], &[]).await;
        }
        let mut args = vec!["start", &dir_s, &node.name, &amqp, &dist];
        args.extend(tls_s.as_deref());
        run_script(&args, &[("EXTERNAL_USER", "gateway-client")]).await;
        node.running = true;
        node
    }

    /// A file of the test PKI: ca.pem, other-ca.pem, client.pem, client.key...
    pub fn cert(&self, file: &str) -> String {
        self.dir
            .join("certs")
            .join(file)
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// The plain AMQP URL, as guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@localhost:{}/%2f", self.amqp_port)
    }

    /// `host:port` of the plain listener, as the gateway names the node.
    pub fn addr(&self) -> String {
        format!("localhost:{}", self.amqp_port)
    }

    /// The TLS URL (host `localhost`, the name in the server certificate), with `query`.
    pub fn tls_url(&self, userinfo: &str, query: &str) -> String {
        format!(
            "amqps://{userinfo}localhost:{}/%2f{query}",
            self.tls_port.expect("a TLS node")
        )
    }

    /// Stops the node and starts it again with its data, as a broker restart does:
    /// durable queues and streams survive, the rest is gone.
    pub async fn restart(&mut self) {
        assert!(self.tls_port.is_none(), "restart is for plain nodes");
        let dir = self.dir.to_str().unwrap().to_owned();
        run_script(&["halt", &dir, &self.name], &[]).await;
        let (amqp, dist) = (self.amqp_port.to_string(), self.dist_port.to_string());
        run_script(&["start", &dir, &self.name, &amqp, &dist], &[]).await;
    }

    /// Stops the node (its clients see the connection closed) and removes its files.
    pub async fn stop(&mut self) {
        if self.running {
            self.running = false;
            run_script(&["stop", self.dir.to_str().unwrap(), &self.name], &[]).await;
        }
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if self.running {
            // Bounded by the script (its waits are).
            let _ = std::process::Command::new(node_script())
                .args(["stop", self.dir.to_str().unwrap(), &self.name])
                .output();
        }
    }
}

/// A log file in a fresh temporary directory, for a gateway process to write to.
pub struct LogFile {
    pub path: std::path::PathBuf,
}

impl LogFile {
    pub fn new() -> LogFile {
        let path =
            std::env::temp_dir().join(format!("gateway-log-{:016x}.log", rand::random::<u64>()));
        std::fs::File::create(&path).unwrap();
        LogFile { path }
    }

    /// Stdout or stderr of a child, appended to this file.
    pub fn stdio(&self) -> std::process::Stdio {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap()
            .into()
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits until the log holds every one of `needles` on one line; returns that line.
    pub async fn wait_line(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {needles:?} in the log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
