#!/usr/bin/env bash
# The one test command: starts and installs what the tests need (RabbitMQ, Chromium, nginx,
# HAProxy, Prometheus, npm packages), checks formatting and lints, then runs every test:
# Rust unit and integration tests against the real broker (including the shipped
# load-balancer and Prometheus configurations run by the real tools), the checks of
# deploy/, the browser client's unit tests, and the end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
scripts/ensure-chromium.sh
scripts/ensure-deploy-tools.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# The browser tests run the real binary and the demo example as publisher.
cargo build --bins --examples --locked

# deploy/: rules (promtool), manifests (schemas, settings that exist), dashboard.
scripts/check-deploy.sh target/debug/realtime-gateway

if [ -f clients/js/package.json ]; then
  (cd clients/js && npm ci --no-audit --no-fund && npm run typecheck && npm test && npm run build)
  rm -rf clients/demo/lib && mkdir -p clients/demo && cp -r clients/js/dist clients/demo/lib
fi

(cd tests/browser && npm ci --no-audit --no-fund && npm test)

# A tiny load run (release builds): fails on any lost, duplicated or misrouted event.
# Performance itself is measured by the benchmarks, never asserted here.
loadtest/smoke.sh
