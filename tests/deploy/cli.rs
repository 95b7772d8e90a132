//! What an operator's tooling sees of the binary: `healthcheck` probes the address given by
//! `--listen` or `GATEWAY_LISTEN` (container health checks follow a moved port), and logs
//! written to a file carry no terminal colour codes.

use std::process::Stdio;

use crate::harness::{GatewayProcess, free_port};
use crate::support::{Publisher, bounded, unique};

async fn healthcheck(args: &[&str], env: Option<&str>) -> bool {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_realtime-gateway"));
    cmd.arg("healthcheck")
        .args(args)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(listen) = env {
        cmd.env("GATEWAY_LISTEN", listen);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), cmd.status())
        .await
        .expect("healthcheck exits within its own timeout")
        .unwrap();
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_the_listen_flag_and_variable_and_logs_have_no_colour() {
    bounded(async {
        let exchange = unique("cli");
        let mut gw = GatewayProcess::new("cli", &exchange, &[]);
        gw.start().await;
        let here = format!("127.0.0.1:{}", gw.port);
        let nowhere = format!("127.0.0.1:{}", free_port());

        assert!(healthcheck(&["--listen", &here], None).await);
        assert!(healthcheck(&[&format!("--listen={here}")], Some(&nowhere)).await);
        assert!(healthcheck(&[], Some(&here)).await);
        assert!(!healthcheck(&[], Some(&nowhere)).await);
        assert!(!healthcheck(&["--listen", &nowhere], Some(&here)).await);
        assert!(!healthcheck(&["--port", "1"], Some(&here)).await);

        gw.stop().await;
        let log = std::fs::read_to_string(gw.log()).unwrap();
        assert!(log.contains("INFO"), "the gateway logged at info: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file: {log:?}"
        );
        Publisher::connect(&exchange).await.cleanup().await;
    })
    .await;
}
