//! The `realtime-gateway` binary: parse configuration, set up logs, bind, run until a signal.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use realtime_gateway::config::{Config, Parsed};

fn main() -> ExitCode {
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

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        match realtime_gateway::run(listener, config, realtime_gateway::shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                ExitCode::FAILURE
            }
        }
    })
}
