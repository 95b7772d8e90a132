#!/usr/bin/env bash
# The one test command: starts and installs what the tests need (RabbitMQ, Chromium, nginx,
# HAProxy, Prometheus, npm packages), checks formatting and lints, then runs every test:
# Rust unit and integration tests against the real broker (including the shipped
# load-balancer and Prometheus configurations run by the real tools), the checks of
# deploy/, the browser client's unit tests, a production build of the Next.js example, and
# the end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
scripts/ensure-chromium.sh
scripts/ensure-deploy-tools.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Includes tests/gateway/brokers.rs, which starts private RabbitMQ nodes (TLS, failover)
# with scripts/rabbitmq-node.sh from the rabbitmq-server installed above.
cargo test --all-targets --locked
# The browser tests run the real binary and the demo example as publisher.
cargo build --bins --examples --locked

# deploy/: rules (promtool), manifests (schemas, settings that exist), dashboard.
scripts/check-deploy.sh target/debug/realtime-gateway

# The client is built before its tests: one of them type-checks apps against dist/.
(cd clients/js && npm ci --no-audit --no-fund && npm run typecheck && npm run build && npm test)
# The peer range says React 18 or 19: run the hooks' tests on React 18 too, then put the
# locked tree back.
(cd clients/js && npm install --no-save --no-audit --no-fund react@18.3.1 react-dom@18.3.1 &&
  npx vitest run test/react.test.ts && npm ci --no-audit --no-fund)
rm -rf clients/demo/lib && cp -r clients/js/dist clients/demo/lib

# The Next.js example installs the client just built (a copy, via install-links in its
# .npmrc) and is built for production; the browser tests start it with `next start`.
(cd examples/nextjs-studio && npm ci --no-audit --no-fund && NEXT_TELEMETRY_DISABLED=1 npm run build)

(cd tests/browser && npm ci --no-audit --no-fund && npm test)

# The load generator's own checks and unit tests (its own crate and Cargo.lock).
(cd loadtest && cargo fmt -- --check && cargo clippy --all-targets --locked -- -D warnings && cargo test --locked)
# A tiny load run (release builds): fails on any lost, duplicated or misrouted event.
# Performance itself is measured by the benchmarks, never asserted here.
loadtest/smoke.sh
