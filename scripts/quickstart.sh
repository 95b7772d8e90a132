#!/usr/bin/env bash
# Quick start: from a fresh clone to a running gateway with RabbitMQ, in one command.
# Then, in another terminal: cargo run --example demo
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh

# A development secret, shared with `cargo run --example demo`. Set your own for anything real.
export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-dev-secret-change-me-0123456789abcdef}"
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:8080}"

echo "quickstart: building and starting realtime-gateway on $GATEWAY_LISTEN (Ctrl-C stops it)" >&2
echo "quickstart: in another terminal run: cargo run --example demo" >&2
exec cargo run --release --locked -- "$@"
