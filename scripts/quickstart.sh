#!/usr/bin/env bash
# Quick start: from a fresh clone to a running gateway with RabbitMQ and the demo page, in
# one command. Then, in another terminal:
#   cargo run --example demo             # WS + SSE clients, a published render, printed
#   cargo run --example demo -- url      # open this address for the demo page
#   cargo run --example demo -- publish  # publish a render for the page to show
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh

# The demo page uses the browser client; build it when npm is there (the gateway runs
# without it).
if command -v npm >/dev/null 2>&1; then
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
  rm -rf clients/demo/lib && cp -r clients/js/dist clients/demo/lib
  export GATEWAY_DEMO_DIR="${GATEWAY_DEMO_DIR:-$PWD/clients/demo}"
else
  echo "quickstart: npm not found; the demo page is off (the gateway itself does not need it)" >&2
fi

# A development secret, shared with `cargo run --example demo`. Set your own for anything real.
export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-dev-secret-change-me-0123456789abcdef}"
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:8080}"

echo "quickstart: building and starting realtime-gateway on $GATEWAY_LISTEN (Ctrl-C stops it)" >&2
gateway_flag=""
if [ "$GATEWAY_LISTEN" != "127.0.0.1:8080" ]; then
  # The demo looks for the gateway at 127.0.0.1:8080 unless told otherwise.
  gateway_flag=" --gateway http://$GATEWAY_LISTEN"
fi
echo "quickstart: the first build takes several minutes; later starts take seconds" >&2
echo "quickstart: then, in another terminal: cargo run --example demo -- [url | publish]$gateway_flag" >&2
exec cargo run --release --locked -- "$@"
