//! Real processes for the deployment tests: gateway instances started from the built binary
//! with their own `GATEWAY_*` environment (and restarted on the same port), Debian's nginx
//! and HAProxy running the shipped configurations, and a Prometheus with the shipped rules.
//! Every one listens on 127.0.0.1 only, keeps its pid, logs and temp files in a private
//! directory, and is killed when the test drops it. Every wait has a deadline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::{Gateway, SECRET, WAIT, amqp_url};

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "realtime-gateway-{prefix}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An installed tool, or a failure that says how to install it.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run scripts/ensure-deploy-tools.sh (the test command does)")
}

/// Replaces each `from` with `to`, failing unless each occurs exactly once, so a shipped
/// configuration that changes shape fails the test instead of being half-templated.
pub fn substitute(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert_eq!(
            out.matches(from).count(),
            1,
            "`{from}` should occur exactly once in the shipped configuration"
        );
        out = out.replace(from, to);
    }
    out
}

/// Sends SIGTERM, as an orchestrator or init system would.
fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Polls until `ok` or the deadline; the failure names what was awaited.
pub async fn until<F, Fut>(what: &str, deadline: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !ok().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One gateway instance: the real binary as a child process on a fixed loopback port, so
/// it can be stopped and started again where the load balancer expects it.
pub struct GatewayProcess {
    pub port: u16,
    pub name: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    dir: TempDir,
}

impl GatewayProcess {
    /// The environment every test instance gets: its own exchange, a queue named after its
    /// port (a restarted instance finds the queue that kept its events, as a pod of a
    /// StatefulSet would), a quick drain, and `extra` on top.
    pub fn new(name: &str, exchange: &str, extra: &[(&str, &str)]) -> GatewayProcess {
        let port = free_port();
        let mut env: Vec<(String, String)> = [
            ("GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
            ("GATEWAY_AMQP_URL", amqp_url()),
            ("GATEWAY_AMQP_EXCHANGE", exchange.to_owned()),
            ("GATEWAY_AMQP_QUEUE", format!("{exchange}.{port}")),
            ("GATEWAY_AMQP_QUEUE_EXPIRES_SECS", "15".into()),
            ("GATEWAY_JWT_SECRET", SECRET.into()),
            ("GATEWAY_SHUTDOWN_DRAIN_SECS", "2".into()),
            ("GATEWAY_SHUTDOWN_GRACE_SECS", "6".into()),
            ("GATEWAY_SSE_RETRY_MS", "300".into()),
            ("GATEWAY_LOG", "info".into()),
            // Streams outlive tests; only the tests that need one turn it on, with their
            // own name, and delete it.
            ("GATEWAY_REVOCATION_USER_KEYS", "off".into()),
            ("GATEWAY_REVOCATION_TENANT_KEYS", "off".into()),
            ("GATEWAY_HISTORY_STREAM", "off".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        GatewayProcess {
            port,
            name: name.to_owned(),
            env,
            child: None,
            dir: TempDir::new(&format!("gateway-{name}")),
        }
    }

    /// Starts the process (its log appends to `gateway.log` in its directory).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_realtime-gateway"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the gateway binary");
        self.child = Some(child);
    }

    /// Starts the process and waits until `/readyz` says 200.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path("gateway.log")
    }

    /// HTTP helpers (metrics, status) for this instance.
    pub fn http(&self) -> Gateway {
        Gateway::external(format!("127.0.0.1:{}", self.port).parse().unwrap(), "")
    }

    pub async fn wait_ready(&self) {
        let gw = self.http();
        let end = tokio::time::Instant::now() + WAIT;
        while gw.status("/readyz").await != 200 {
            assert!(
                tokio::time::Instant::now() < end,
                "gateway {} not ready within {WAIT:?}; is RabbitMQ running at {}?\n{}",
                self.name,
                amqp_url(),
                tail(&self.log())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit (within the grace period and some) and checks it
    /// was clean.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("not running");
        sigterm(&child);
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit after SIGTERM", self.name))
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status:?}\n{}",
            self.name,
            tail(&self.log())
        );
    }

    /// Open `transport` connections accepted so far (`ws` or `sse`).
    pub async fn accepted(&self, transport: &str) -> f64 {
        self.http()
            .metric(&format!(
                "gateway_connections_accepted_total{{transport=\"{transport}\"}}"
            ))
            .await
    }
}

/// Which load balancer.
#[derive(Clone, Copy, Debug)]
pub enum ProxyKind {
    Nginx,
    Haproxy,
}

/// A load balancer on loopback running the shipped configuration in front of `upstreams`.
pub struct Proxy {
    pub kind: ProxyKind,
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl Proxy {
    pub async fn start(kind: ProxyKind, upstreams: &[u16]) -> Proxy {
        assert_eq!(
            upstreams.len(),
            2,
            "the shipped configurations list two instances"
        );
        let port = free_port();
        let dir = TempDir::new(match kind {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        });
        let up = |i: usize| format!("127.0.0.1:{}", upstreams[i]);
        let log = std::fs::File::create(dir.path("proxy.log")).unwrap();
        let mut cmd = match kind {
            ProxyKind::Nginx => {
                let shipped =
                    std::fs::read_to_string(repo("deploy/nginx/realtime-gateway.conf")).unwrap();
                let site = substitute(
                    &shipped,
                    &[
                        ("gateway-1.internal:8080", up(0)),
                        ("gateway-2.internal:8080", up(1)),
                        ("listen 80;", format!("listen 127.0.0.1:{port};")),
                    ],
                );
                std::fs::write(dir.path("realtime-gateway.conf"), site).unwrap();
                std::fs::write(dir.path("nginx.conf"), nginx_main_conf(&dir.0)).unwrap();
                let mut c = Command::new(tool("nginx"));
                c.arg("-p")
                    .arg(&dir.0)
                    .arg("-c")
                    .arg(dir.path("nginx.conf"))
                    .arg("-e")
                    .arg(dir.path("error.log"));
                c
            }
            ProxyKind::Haproxy => {
                let shipped = std::fs::read_to_string(repo("deploy/haproxy/haproxy.cfg")).unwrap();
                let cfg = substitute(
                    &shipped,
                    &[
                        ("gateway-1.internal:8080", up(0)),
                        ("gateway-2.internal:8080", up(1)),
                        ("bind :80", format!("bind 127.0.0.1:{port}")),
                        // Each connection costs HAProxy two descriptors; stay within
                        // the test machine's open-file limit.
                        ("maxconn 100000", "maxconn 1000".to_owned()),
                    ],
                );
                std::fs::write(dir.path("haproxy.cfg"), cfg).unwrap();
                let mut c = Command::new(tool("haproxy"));
                // -db: foreground, no daemon, no pid file of the system's.
                c.arg("-db").arg("-f").arg(dir.path("haproxy.cfg"));
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the load balancer");
        let proxy = Proxy {
            kind,
            port,
            child,
            dir,
        };
        let addr = format!("127.0.0.1:{port}");
        let end = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < end,
                "{kind:?} did not listen on {addr}\n{}",
                proxy.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The proxy's own logs (error log and stdout), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = tail(&self.dir.path("proxy.log"));
        out.push_str(&tail(&self.dir.path("error.log")));
        out.push_str(&tail(&self.dir.path("access.log")));
        out
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// nginx's main file for a test: one process in the foreground as the invoking user, pid,
/// logs and temp files in the private directory, and the shipped site included. The access
/// log names the instances each request was tried on and what each answered, and how long
/// the request took (a stream is logged when it ends), so a failure shows how nginx
/// balanced and retried; it logs the path, never the query with its token.
fn nginx_main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   log_format upstreams '$msec $request_time $request_method $uri $status \
         upstream=$upstream_addr upstream_status=$upstream_status';\n\
         \x20   access_log {d}/access.log upstreams;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/realtime-gateway.conf;\n\
         }}\n"
    )
}

/// A Prometheus on loopback scraping `targets` every second and evaluating `rule_files`
/// every second, with its data in a private directory.
pub struct Prometheus {
    pub port: u16,
    child: Child,
    dir: TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    pub async fn start(targets: &[u16], rule_files: &[PathBuf]) -> Prometheus {
        let port = free_port();
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - '{}'", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\n\
             scrape_configs:\n  - job_name: realtime-gateway\n    static_configs:\n      - targets: [{}]\n",
            rules.join("\n"),
            targets.join(", ")
        );
        std::fs::write(dir.path("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus {
            port,
            child,
            dir,
            http: reqwest::Client::new(),
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = prom.http.get(&ready).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "prometheus not ready\n{}",
                tail(&prom.dir.path("prometheus.log"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prom
    }

    /// `data` of a GET on the HTTP API, e.g. `alerts` or `query?query=up`.
    pub async fn api(&self, path_and_query: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path_and_query}", self.port);
        let body: Value = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{url}: {body}");
        body["data"].clone()
    }

    /// An instant query's result vector.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let data = self.api(&format!("query?query={q}")).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        tail(&self.dir.path("prometheus.log"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}
