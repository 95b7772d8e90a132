#!/usr/bin/env bash
# The one test command: starts what the tests need (RabbitMQ), checks formatting and
# lints, then runs every test (unit, integration against the real broker, examples build).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
