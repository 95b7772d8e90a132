#!/usr/bin/env bash
# The one test command: starts and installs what the tests need (RabbitMQ, Chromium, npm
# packages), checks formatting and lints, then runs every test: Rust unit and integration
# tests against the real broker, the browser client's unit tests, and the end-to-end tests
# in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
scripts/ensure-chromium.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Includes tests/gateway/brokers.rs, which starts private RabbitMQ nodes (TLS, failover)
# with scripts/rabbitmq-node.sh from the rabbitmq-server installed above.
cargo test --all-targets --locked
# The browser tests run the real binary and the demo example as publisher.
cargo build --bins --examples --locked

if [ -f clients/js/package.json ]; then
  (cd clients/js && npm ci --no-audit --no-fund && npm run typecheck && npm test && npm run build)
  rm -rf clients/demo/lib && mkdir -p clients/demo && cp -r clients/js/dist clients/demo/lib
fi

(cd tests/browser && npm ci --no-audit --no-fund && npm test)

# A tiny load run (release builds): fails on any lost, duplicated or misrouted event.
# Performance itself is measured by the benchmarks, never asserted here.
loadtest/smoke.sh
