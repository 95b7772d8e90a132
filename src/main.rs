//! The `realtime-gateway` binary: parse configuration, set up logs, bind, run until a signal.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use realtime_gateway::config::{Config, Parsed};

/// `realtime-gateway config check FILE`: validates a configuration file as a start with
/// `GATEWAY_CONFIG=FILE` would (variables still override), prints the effective routes,
/// and exits 0, or lists every problem (routes that overlap and disagree included) and
/// exits 2. Nothing is started.
fn config_check(file: &str) -> ExitCode {
    match Config::check(file, |k| std::env::var(k).ok()) {
        Ok(config) => {
            let mut out = std::io::stdout().lock();
            for route in &config.routes.list {
                let _ = writeln!(out, "{route}");
            }
            let _ = writeln!(out, "{file}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = write!(std::io::stderr(), "{file}: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("config") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return match args.as_slice() {
            [check, file] if check == "check" => config_check(file),
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "usage: realtime-gateway config check FILE"
                );
                ExitCode::from(2)
            }
        };
    }
    let parsed = Config::parse(std::env::args().skip(1), |k| std::env::var(k).ok());
    let config = match parsed {
        Ok(Parsed::Run(config)) => *config,
        Ok(Parsed::Help(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            let _ = writeln!(
                std::io::stdout(),
                "realtime-gateway {}",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = write!(std::io::stderr(), "{e}");
            return ExitCode::from(2);
        }
    };
    realtime_gateway::telemetry::init_logging(&config);
    for route in &config.routes.list {
        tracing::info!(route = %route.name, "{route}");
    }
    for overlap in &config.routes.overlaps {
        tracing::warn!("{overlap}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let listener = match realtime_gateway::bind(config.listen) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        match realtime_gateway::run(listener, config, realtime_gateway::shutdown::signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                ExitCode::FAILURE
            }
        }
    });
    // Blocking helpers (file reads, DNS) must not hold up the exit past the grace period.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `realtime-gateway healthcheck [--listen ADDR]`: GET /healthz on the configured port of
/// this host, for container health checks in images that carry no curl. The address is
/// found as the gateway finds it (flag, then `GATEWAY_LISTEN`, then the default), so the
/// check follows the port the gateway was told to use. Exit 0 when it answers 200.
fn healthcheck(args: impl Iterator<Item = String>) -> ExitCode {
    use std::io::Read as _;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    let listen = match healthcheck_listen(args, std::env::var("GATEWAY_LISTEN").ok()) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(mut addr) = listen.parse::<SocketAddr>() else {
        let _ = writeln!(
            std::io::stderr(),
            "healthcheck: bad listen address `{listen}`"
        );
        return ExitCode::FAILURE;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = Duration::from_secs(3);
    let answer = TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    });
    match answer {
        Ok(head) if head.starts_with(b"HTTP/1.1 200") => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// The address `healthcheck` probes: `--listen ADDR` or `--listen=ADDR`, else a non-empty
/// `GATEWAY_LISTEN`, else the gateway's default.
fn healthcheck_listen(
    mut args: impl Iterator<Item = String>,
    env: Option<String>,
) -> Result<String, String> {
    let mut listen = None;
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--listen") {
            Some("") => listen = Some(args.next().ok_or("--listen needs a value")?),
            Some(v) if v.starts_with('=') => listen = Some(v[1..].to_owned()),
            _ => return Err(format!("unexpected argument `{arg}` (only --listen)")),
        }
    }
    listen
        .or(env.filter(|v| !v.is_empty()))
        .or_else(|| {
            let listen = realtime_gateway::config::SETTINGS
                .iter()
                .find(|s| s.name == "listen");
            listen?.default.map(str::to_owned)
        })
        .ok_or_else(|| "no listen address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::healthcheck_listen;

    fn listen(args: &[&str], env: Option<&str>) -> Result<String, String> {
        healthcheck_listen(args.iter().map(|a| a.to_string()), env.map(str::to_owned))
    }

    #[test]
    fn healthcheck_takes_the_flag_then_the_environment_then_the_default() {
        assert_eq!(listen(&[], None).unwrap(), "0.0.0.0:8080");
        assert_eq!(listen(&[], Some("")).unwrap(), "0.0.0.0:8080");
        assert_eq!(listen(&[], Some("127.0.0.1:9")).unwrap(), "127.0.0.1:9");
        let flag = listen(&["--listen", "127.0.0.1:7"], Some("127.0.0.1:9"));
        assert_eq!(flag.unwrap(), "127.0.0.1:7");
        assert_eq!(listen(&["--listen=[::1]:7"], None).unwrap(), "[::1]:7");
        assert!(listen(&["--listen"], None).is_err());
        assert!(listen(&["--port", "7"], None).is_err());
    }
}
