#!/bin/bash
# One run of measure.mjs against a fresh release gateway with GATEWAY_WS_DEFLATE on or
# off: prints one JSON line. Loopback only; the gateway and its exchange are removed after.
# usage: loadtest/deflate/run.sh on|off [CONNECTIONS=2000] [EVENTS=100]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=${1:?on or off}
n=${2:-2000}
e=${3:-100}
[ -d "$here/node_modules" ] || (cd "$here" && npm install --no-audit --no-fund --silent)
port=$("$root/loadtest/target/release/loadgen" free-port)
exchange=test.deflate.$RANDOM
GATEWAY_LISTEN=127.0.0.1:$port GATEWAY_AMQP_EXCHANGE=$exchange GATEWAY_AMQP_QUEUE=$exchange.q \
  GATEWAY_AMQP_QUEUE_EXPIRES_SECS=10 GATEWAY_JWT_SECRET=measure-secret-0123456789abcdef0123 \
  GATEWAY_WS_DEFLATE=$([ "$mode" = on ] && echo true || echo false) GATEWAY_LOG=warn \
  GATEWAY_HISTORY_STREAM=off GATEWAY_CONFLATE=off \
  "$root/target/release/realtime-gateway" >/tmp/deflate-measure-gateway.log 2>&1 &
gw=$!
trap 'kill $gw 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" | grep -q 200 && break
  sleep 0.2
done
timeout 120 node "$here/measure.mjs" "$port" "$exchange" "$gw" "$mode" "$n" "$e"
kill $gw; wait $gw 2>/dev/null || true
node -e "const amqp = require('$here/node_modules/amqplib'); (async () => {
  const c = await amqp.connect('amqp://guest:guest@127.0.0.1:5672'); const ch = await c.createChannel();
  await ch.deleteExchange('$exchange'); await ch.close(); await c.close(); })()"
