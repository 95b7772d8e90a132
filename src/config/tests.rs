//! Parsing and validation as a whole: defaults, precedence, problems, help and the
//! configuration page.

use super::*;

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(args.iter().copied(), move |k| env.get(k).cloned())
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    match parse(args, env).expect("valid config") {
        Parsed::Run(c) => *c,
        other => panic!("expected a config, got {other:?}"),
    }
}

const SECRET: (&str, &str) = ("GATEWAY_JWT_SECRET", "0123456789abcdef0123456789abcdef");

#[test]
fn defaults_match_the_contract() {
    let c = config(&[], &[SECRET]);
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    let [node] = &c.amqp.nodes[..] else {
        panic!("one node by default");
    };
    assert_eq!(node.addr, "127.0.0.1:5672");
    assert_eq!(node.uri.query.heartbeat, Some(15));
    assert!(!node.tls() && c.amqp.tls.ca_file.is_none() && c.amqp.tls.client.is_none());
    assert_eq!(c.amqp.exchange, "flatrender.events");
    let keys: Vec<_> = c
        .amqp
        .bindings
        .iter()
        .map(|b| (b.exchange.as_str(), b.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("flatrender.events", "render.job.#"),
            ("flatrender.events", "notification.#")
        ]
    );
    assert!(c.amqp.declare_exchanges);
    assert_eq!(c.mapping.tenant.to_string(), "/tenant_id");
    assert!(c.mapping.single_tenant.is_none() && c.mapping.tenant_header.is_none());
    assert!(c.amqp.queue.starts_with("realtime-gateway."));
    assert_eq!(c.jwt.tenant_claim, "tenant_id");
    assert_eq!(c.jwt.cookie, "access_token");
    assert_eq!(c.jwt.leeway, Duration::from_secs(30));
    assert_eq!(c.max_connections_per_user, 16);
    assert!(c.max_connections >= 1);
    assert_eq!(c.max_event_bytes, 64 * 1024);
    assert_eq!(c.send_queue_len, 256);
    assert_eq!(c.ws_max_message_bytes, 16 * 1024);
    assert_eq!(c.ws_read_buffer_bytes, 512);
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.write_timeout, Duration::from_secs(60));
}

#[test]
fn the_write_timeout_is_its_own_setting() {
    let c = config(
        &["--write-timeout-secs", "5"],
        &[SECRET, ("GATEWAY_IDLE_TIMEOUT_SECS", "90")],
    );
    assert_eq!(c.write_timeout, Duration::from_secs(5));
    assert_eq!(c.idle_timeout, Duration::from_secs(90));
    let c = config(&[], &[SECRET, ("GATEWAY_WRITE_TIMEOUT_SECS", "7")]);
    assert_eq!(c.write_timeout, Duration::from_secs(7));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    for bad in ["0", "86401", "soon"] {
        let err = parse(&["--write-timeout-secs", bad], &[SECRET]).unwrap_err();
        assert!(
            err.to_string().contains("GATEWAY_WRITE_TIMEOUT_SECS"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn flags_win_over_environment() {
    let c = config(
        &["--listen", "127.0.0.1:9000", "--amqp-exchange=x.flag"],
        &[
            SECRET,
            ("GATEWAY_LISTEN", "127.0.0.1:1"),
            ("GATEWAY_AMQP_EXCHANGE", "x.env"),
            ("GATEWAY_AMQP_BINDINGS", " a.# , b.*.c ,"),
        ],
    );
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(c.amqp.exchange, "x.flag");
    let keys: Vec<_> = c
        .amqp
        .bindings
        .iter()
        .map(|b| (b.exchange.as_str(), b.key.as_str()))
        .collect();
    assert_eq!(keys, [("x.flag", "a.#"), ("x.flag", "b.*.c")]);
}

#[test]
fn every_problem_is_reported_by_name() {
    let err = parse(
        &["--bogus", "1"],
        &[
            ("GATEWAY_LISTEN", "nowhere"),
            ("GATEWAY_MAX_CONNECTIONS_PER_USER", "0"),
            ("GATEWAY_JWT_LEEWAY_SECS", "-3"),
            ("GATEWAY_LOG_FORMAT", "xml"),
            ("GATEWAY_AMQP_URL", "http://x"),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "--bogus",
        "GATEWAY_LISTEN",
        "GATEWAY_MAX_CONNECTIONS_PER_USER",
        "GATEWAY_JWT_LEEWAY_SECS",
        "GATEWAY_LOG_FORMAT",
        "GATEWAY_AMQP_URL",
        "no token key configured",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn bindings_across_exchanges_and_mapping() {
    let c = config(
        &[],
        &[
            SECRET,
            (
                "GATEWAY_AMQP_BINDINGS",
                "orders:order.*, payments:payment.#,plain.#",
            ),
            ("GATEWAY_AMQP_EXCHANGE_DECLARE", "passive"),
            ("GATEWAY_USER_POINTER", "/metadata/user_id"),
            ("GATEWAY_SINGLE_TENANT", "app"),
            ("GATEWAY_TENANT_WIDE_EVENTS", "false"),
        ],
    );
    let keys: Vec<_> = c
        .amqp
        .bindings
        .iter()
        .map(|b| (b.exchange.as_str(), b.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("orders", "order.*"),
            ("payments", "payment.#"),
            ("flatrender.events", "plain.#")
        ]
    );
    assert!(!c.amqp.declare_exchanges);
    assert_eq!(c.mapping.users[0].to_string(), "/metadata/user_id");
    assert_eq!(c.mapping.single_tenant.as_deref(), Some("app"));
    assert!(!c.mapping.tenant_wide_events);
    let err = parse(
        &[],
        &[
            SECRET,
            ("GATEWAY_AMQP_BINDINGS", ":x,a:"),
            ("GATEWAY_TENANT_POINTER", "tenant"),
            ("GATEWAY_TENANT_WIDE_EVENTS", "maybe"),
        ],
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "`:x`",
        "`a:`",
        "GATEWAY_TENANT_POINTER",
        "GATEWAY_TENANT_WIDE_EVENTS",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
}

#[test]
fn short_secret_and_bad_origin_are_refused() {
    let err = parse(
        &[],
        &[
            ("GATEWAY_JWT_SECRET", "short"),
            (
                "GATEWAY_ALLOWED_ORIGINS",
                "https://ok.example,studio.example",
            ),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("GATEWAY_JWT_SECRET"));
    assert!(err.contains("studio.example"));
    assert!(!err.contains("https://ok.example`"));
}

#[test]
fn empty_variable_counts_as_unset() {
    let err = parse(&[], &[("GATEWAY_JWT_SECRET", "")]).unwrap_err();
    assert!(err.to_string().contains("no token key configured"));
}

#[test]
fn the_configuration_page_documents_every_setting() {
    let page = include_str!("../../docs/configuration.md");
    for s in SETTINGS {
        assert!(
            page.contains(&format!("| `{}` |", s.env)),
            "{} missing from docs/configuration.md",
            s.env
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let Parsed::Help(text) = parse(&["--help"], &[]).unwrap() else {
        panic!("expected help");
    };
    for needle in ["healthcheck [--listen ADDR]", "at least one of", "32 bytes"] {
        assert!(text.contains(needle), "{needle} missing from help");
    }
    for s in SETTINGS {
        assert!(text.contains(s.env), "{} missing from help", s.env);
        assert!(text.contains(&format!("--{}", s.name)));
        if let Some(d) = s.default {
            assert!(text.contains(d));
        }
    }
}

/// Writes `text` to a file of its own and returns its path.
fn config_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "gateway-config-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn file_settings_sit_below_variables_and_flags() {
    let path = config_file(
        "settings.toml",
        "amqp-exchange = \"x.file\"\namqp-prefetch = 7\namqp-bindings = [\"a.#\", \"b.*\"]\nlisten = \"127.0.0.1:1\"\n",
    );
    let c = config(
        &["--listen", "127.0.0.1:2"],
        &[
            SECRET,
            ("GATEWAY_CONFIG", &path),
            ("GATEWAY_AMQP_PREFETCH", "9"),
        ],
    );
    assert_eq!(c.amqp.exchange, "x.file");
    assert_eq!(c.amqp.prefetch, 9);
    assert_eq!(c.listen.to_string(), "127.0.0.1:2");
    // Without routes, the settings are the default route: one per binding.
    let routes: Vec<_> = c
        .routes
        .list
        .iter()
        .map(|r| r.binding.key.as_str())
        .collect();
    assert_eq!(routes, ["a.#", "b.*"]);
    assert!(c.routes.list.iter().all(|r| r.mapping == c.mapping));
    assert!(
        c.routes.list[0].mapping.tenant_wide_events,
        "the default stays"
    );
}

#[test]
fn file_routes_replace_the_default_route() {
    let path = config_file(
        "routes.toml",
        r#"
amqp-exchange = "app.events"
event-id-pointer = "/eventId"

[[route]]
name = "tickets"
binding = "ticket.*"
user = ["/payload/assigneeId", "/payload/userId"]
exclude-types = ["ticket.internal_note"]

[[route]]
name = "payments"
exchange = "payments"
binding = "payment.*"
tenant = "/metadata/tenant"
tenant-wide = true
"#,
    );
    let c = config(&[], &[SECRET, ("GATEWAY_CONFIG", &path)]);
    let bindings: Vec<_> = c
        .amqp
        .bindings
        .iter()
        .map(|b| (b.exchange.as_str(), b.key.as_str()))
        .collect();
    assert_eq!(
        bindings,
        [("app.events", "ticket.*"), ("payments", "payment.*")]
    );
    let [tickets, payments] = &c.routes.list[..] else {
        panic!("{:?}", c.routes.list)
    };
    assert_eq!(
        tickets.mapping.event_id.to_string(),
        "/eventId",
        "file settings are the route defaults"
    );
    assert_eq!(tickets.mapping.users.len(), 2);
    assert!(
        !tickets.mapping.tenant_wide_events,
        "a route is not tenant-wide unless it says so"
    );
    assert!(tickets.excludes("ticket.internal_note") && !tickets.excludes("ticket.created"));
    assert_eq!(payments.mapping.tenant.to_string(), "/metadata/tenant");
    assert!(payments.mapping.tenant_wide_events);
    assert!(c.routes.overlaps.is_empty());
    assert!(
        tickets
            .to_string()
            .contains("route tickets: exchange app.events key ticket.*")
    );
}

#[test]
fn file_problems_are_reported_together() {
    let path = config_file(
        "bad.toml",
        r#"
amqp-exchnage = "typo"
max-connections = 5

[[route]]
name = "a"
binding = "order.*"
user = "payload.user"
tenant-wdie = true

[[route]]
name = "b"
binding = "order.#"
user = "/data/customer_id"

[[route]]
name = "c"
binding = "refund.*"
user = []
exclude-types = "refund.internal"
tenant-wide = "yes"
"#,
    );
    let env = [
        SECRET,
        ("GATEWAY_CONFIG", path.as_str()),
        ("GATEWAY_AMQP_BINDINGS", "x.#"),
    ];
    let err = parse(&[], &env).unwrap_err().to_string();
    for want in [
        "unknown key `amqp-exchnage`",
        "unknown key `tenant-wdie`",
        "`payload.user` is not a JSON pointer",
        "GATEWAY_AMQP_BINDINGS",
    ] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
    assert!(
        !err.contains("route_conflict"),
        "startup only warns about overlaps: {err}"
    );
    // The check also fails on routes that overlap and disagree, and needs no token key.
    let err = Config::check(&path, |_| None).unwrap_err().to_string();
    for want in [
        "unknown key `amqp-exchnage`",
        "routes `a` (order.*) and `b` (order.#)",
    ] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
    assert!(!err.contains("no token key"), "{err}");
    let err = Config::check("/nonexistent/gateway.toml", |_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

/// A file in a fresh temporary directory, removed with it.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!(
            "gateway-config-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn secrets_come_from_files_with_the_newline_trimmed() {
    let secret = TempFile::new("jwt", "0123456789abcdef0123456789abcdef-from-file\n");
    let url = TempFile::new(
        "url",
        "amqps://gw:pa55@mq-1:5671/%2f,amqps://gw:pa55@mq-2/%2f\r\n",
    );
    let c = config(
        &[],
        &[
            ("GATEWAY_JWT_SECRET_FILE", secret.path()),
            ("GATEWAY_AMQP_URL_FILE", url.path()),
        ],
    );
    assert_eq!(
        c.jwt.secret.as_deref(),
        Some("0123456789abcdef0123456789abcdef-from-file")
    );
    let addrs: Vec<_> = c.amqp.nodes.iter().map(|n| n.addr.as_str()).collect();
    assert_eq!(addrs, ["mq-1:5671", "mq-2:5671"]);
    assert_eq!(c.amqp.nodes[1].uri.authority.userinfo.password, "pa55");
}

#[test]
fn a_secret_and_its_file_together_or_an_unreadable_file_are_refused() {
    let secret = TempFile::new("jwt", "0123456789abcdef0123456789abcdef");
    let err = parse(
        &[],
        &[
            SECRET,
            ("GATEWAY_JWT_SECRET_FILE", secret.path()),
            ("GATEWAY_AMQP_URL", "amqp://u:topsecret@mq/%2f"),
            ("GATEWAY_AMQP_URL_FILE", "/nonexistent/amqp-url"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("GATEWAY_JWT_SECRET_FILE") && err.contains("not both"),
        "{err}"
    );
    assert!(err.contains("GATEWAY_AMQP_URL_FILE"), "{err}");
    assert!(
        !err.contains("topsecret") && !err.contains(SECRET.1),
        "{err}"
    );
    let err = parse(
        &[],
        &[SECRET, ("GATEWAY_AMQP_URL_FILE", "/nonexistent/amqp-url")],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read /nonexistent/amqp-url"), "{err}");
}

#[test]
fn toml_errors_name_the_place_not_the_line() {
    let secret = "0123456789abcdef0123456789abcdef-in-the-file";
    for (text, place) in [
        (
            format!("listen = \"x\"\njwt-secret = \"{secret}\" oops\n"),
            "at line 2, column 61: ",
        ),
        (
            format!("amqp-url = \"amqp://u:{secret}@mq\n"),
            "at line 1, column ",
        ),
        (
            format!("jwt-secret = '{secret}'\njwt-secret = '{secret}'\n"),
            "at line 2, column 1: ",
        ),
    ] {
        let path = config_file("broken.toml", &text);
        let err = Config::check(&path, |_| None).unwrap_err().to_string();
        assert!(
            err.contains("not valid TOML ") && err.contains(place),
            "{err}"
        );
        assert!(!err.contains("in-the-file"), "{err}");
    }
}

#[test]
fn misspelt_flags_and_debug_output_show_no_secret() {
    let secret = "0123456789abcdef0123456789abcdef-flag";
    let err = parse(&["--jwt-secrte", secret], &[SECRET])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown flag `--jwt-secrte`"), "{err}");
    assert!(err.contains("unexpected argument 2"), "{err}");
    assert!(!err.contains(secret), "{err}");

    let err = parse(
        &[],
        &[
            SECRET,
            ("GATEWAY_JWT_JWKS_URL", "ftp://idp:jwks-pa55@idp/jwks"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`ftp://idp:***@idp/jwks` is not an http(s) URL"),
        "{err}"
    );
    let err = parse(&[], &[SECRET, ("GATEWAY_JWT_JWKS_URL", "idp:jwks-pa55")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("GATEWAY_JWT_JWKS_URL (--jwt-jwks-url): is not"),
        "{err}"
    );
    assert!(!err.contains("jwks-pa55"), "{err}");

    let c = config(
        &[],
        &[
            SECRET,
            ("GATEWAY_AMQP_URL", "amqp://gw:amqp-pa55@mq/%2f"),
            ("GATEWAY_JWT_JWKS_URL", "https://idp:jwks-pa55@idp/jwks"),
        ],
    );
    let shown = format!("{c:?}");
    for hidden in [SECRET.1, "amqp-pa55", "jwks-pa55"] {
        assert!(!shown.contains(hidden), "{hidden} in {shown}");
    }
    assert!(shown.contains("https://idp:***@idp/jwks"), "{shown}");
}

#[test]
fn node_lists_and_tls_settings_are_checked_without_quoting_passwords() {
    let err = parse(
        &[],
        &[
            SECRET,
            (
                "GATEWAY_AMQP_URL",
                "amqps://u:topsecret@mq-1/%2f, amqp://u:topsecret@mq-2/%2f, amqp://u:topsecret@mq-3:port/",
            ),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mixes amqp:// and amqps://"), "{err}");
    assert!(err.contains("node 3 (`amqp://u:***@mq-3:port/`)"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");

    let pem = TempFile::new("ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let err = parse(
        &[],
        &[
            SECRET,
            ("GATEWAY_AMQP_URL", "amqp://mq/%2f?auth_mechanism=external"),
            ("GATEWAY_AMQP_TLS_CA_FILE", pem.path()),
            ("GATEWAY_AMQP_TLS_KEY_FILE", pem.path()),
        ],
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "GATEWAY_AMQP_TLS_CA_FILE (--amqp-tls-ca-file): is set, but no node is amqps://",
        "GATEWAY_AMQP_TLS_CERT_FILE (--amqp-tls-cert-file): needs GATEWAY_AMQP_TLS_KEY_FILE",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }

    let c = config(
        &[],
        &[
            SECRET,
            (
                "GATEWAY_AMQP_URL",
                "amqps://mq/%2f?auth_mechanism=external&heartbeat=5",
            ),
            ("GATEWAY_AMQP_TLS_CA_FILE", pem.path()),
            ("GATEWAY_AMQP_TLS_CERT_FILE", pem.path()),
            ("GATEWAY_AMQP_TLS_KEY_FILE", pem.path()),
        ],
    );
    assert!(c.amqp.nodes[0].tls());
    assert_eq!(c.amqp.nodes[0].uri.query.heartbeat, Some(5));
    assert!(c.amqp.tls.client.is_some() && c.amqp.tls.ca_file.is_some());
    let err = parse(
        &[],
        &[
            SECRET,
            ("GATEWAY_AMQP_URL", "amqps://mq/%2f?auth_mechanism=external"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("auth_mechanism=external needs a client certificate"),
        "{err}"
    );
}

#[test]
fn worker_threads_leave_a_cpu_to_the_broker_client() {
    use super::validate::auto_worker_threads;
    assert_eq!(auto_worker_threads(1), 1);
    assert_eq!(auto_worker_threads(2), 1);
    assert_eq!(auto_worker_threads(8), 7);
    let secret = SECRET;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        config(&[], &[secret]).worker_threads,
        auto_worker_threads(cpus)
    );
    assert_eq!(
        config(&["--worker-threads", "3"], &[secret]).worker_threads,
        3
    );
    let Err(e) = parse(&[], &[secret, ("GATEWAY_WORKER_THREADS", "0")]) else {
        panic!("0 worker threads accepted");
    };
    assert!(e.to_string().contains("GATEWAY_WORKER_THREADS"), "{e}");
}

#[test]
fn state_rules_by_type_pattern_and_their_limits() {
    let c = config(&[], &[SECRET]);
    let [rule] = &c.state.rules[..] else {
        panic!("one state rule by default");
    };
    assert_eq!(rule.types.as_str(), "render.job.#");
    for t in [
        "queued",
        "started",
        "progress",
        "completed",
        "failed",
        "cancelled",
    ] {
        assert!(rule.types.matches(&format!("render.job.{t}.v1")), "{t}");
    }
    assert!(!rule.types.matches("notification.created.v1"));
    assert_eq!(rule.key.to_string(), "/data/job_id");
    assert_eq!(c.state.limits.max_age, Duration::from_secs(3600));
    assert_eq!(c.state.limits.max_keys_per_user, 1000);
    let off = config(&[], &[SECRET, ("GATEWAY_STATE", "off")]);
    assert!(off.state.rules.is_empty());
    let two = config(
        &[
            "--state",
            "render.job.#=/data/job_id, export.*.v1=/data/export_id",
        ],
        &[SECRET],
    );
    assert_eq!(two.state.rules.len(), 2);
    for bad in ["render.job.#", "a b=/x", "render.job.#=data"] {
        let err = parse(&["--state", bad], &[SECRET]).unwrap_err().to_string();
        assert!(err.contains("GATEWAY_STATE"), "{bad}: {err}");
    }
}

#[test]
fn a_route_can_name_its_own_state_rules() {
    let path = config_file(
        "route-state.toml",
        r#"
[[route]]
name = "jobs"
binding = "render.job.#"

[[route]]
name = "exports"
binding = "export.#"
state = ["export.*.v1=/payload/exportId", "export.failed=/payload/id"]

[[route]]
name = "audit"
binding = "audit.#"
state = []
"#,
    );
    let c = config(&[], &[SECRET, ("GATEWAY_CONFIG", &path)]);
    let [jobs, exports, audit] = &c.routes.list[..] else {
        panic!("{:?}", c.routes.list)
    };
    assert_eq!(jobs.state, None, "GATEWAY_STATE's rules");
    let rules = exports.state.as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].key.to_string(), "/payload/exportId");
    assert_eq!(audit.state, Some(Vec::new()));
    assert!(
        exports
            .to_string()
            .contains("state export.*.v1=/payload/exportId,")
    );
    assert!(audit.to_string().ends_with("| state: none"));
    assert!(c.keeps_state());

    // Every route without state: none is kept, whatever GATEWAY_STATE says.
    let path = config_file(
        "route-no-state.toml",
        "[[route]]\nbinding = \"render.job.#\"\nstate = []\n",
    );
    assert!(!config(&[], &[SECRET, ("GATEWAY_CONFIG", &path)]).keeps_state());
    // A route's own rules keep state with GATEWAY_STATE off.
    let path = config_file(
        "route-only-state.toml",
        "[[route]]\nbinding = \"x.#\"\nstate = [\"x.#=/id\"]\n",
    );
    let c = config(
        &[],
        &[SECRET, ("GATEWAY_CONFIG", &path), ("GATEWAY_STATE", "off")],
    );
    assert!(c.keeps_state());

    let path = config_file(
        "route-bad-state.toml",
        "[[route]]\nname = \"r\"\nbinding = \"x.#\"\nstate = [\"x.#\", 3]\n\n[[route]]\nname = \"s\"\nbinding = \"y.#\"\nstate = \"y.#=/id\"\n",
    );
    let err = parse(&[], &[SECRET, ("GATEWAY_CONFIG", &path)])
        .unwrap_err()
        .to_string();
    for want in [
        "route `r`: `state`: `x.#` is not `event.type.pattern=/json/pointer`",
        "route `r`: `state`: every rule must be a string, not integer",
        "route `s`: `state` must be a list",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn routes_that_differ_only_in_state_rules_agree() {
    let path = config_file(
        "route-state-overlap.toml",
        "[[route]]\nname = \"a\"\nbinding = \"render.#\"\n\n[[route]]\nname = \"b\"\nbinding = \"render.job.*\"\nstate = []\n",
    );
    let c = config(&[], &[SECRET, ("GATEWAY_CONFIG", &path)]);
    assert!(c.routes.overlaps.is_empty(), "{:?}", c.routes.overlaps);
    let Selected::Route(first, _) = c
        .routes
        .select("flatrender.events", "render.job.started.v1")
    else {
        panic!("delivered");
    };
    assert_eq!(
        first, 0,
        "the first route in the file gives the state rules"
    );
}

#[test]
fn shard_is_k_of_s_or_unset() {
    assert_eq!(config(&[], &[SECRET]).shard, None);
    let c = config(&[], &[SECRET, ("GATEWAY_SHARD", "1/2")]);
    assert_eq!(c.shard, Some(super::Shard { index: 1, count: 2 }));
    for bad in ["2/2", "1", "0/0"] {
        let err = parse(&["--shard", bad], &[SECRET]).unwrap_err().to_string();
        assert!(err.contains("GATEWAY_SHARD"), "{err}");
    }
}
