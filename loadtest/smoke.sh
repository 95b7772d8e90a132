#!/usr/bin/env bash
# Load-test smoke run: builds the gateway and the loadgen, starts the gateway on a free
# 127.0.0.1 port against the local RabbitMQ, and runs tiny scenarios:
#   targeted   50 WS + 50 SSE, 200 events/s for 2 s (400 deliveries)
#   broadcast  50 WS + 50 SSE of one tenant, 5 tenant-wide events/s for 2 s (1,000 deliveries)
#   unrouted   20 WS, 200 events in 1 s: 199 for users with no connection, the last for user 0
#   idle       50 WS + 50 SSE held for 1 s (RSS per connection)
#   slow       2 WS + 2 SSE reading 200 events/s while 10 render jobs get 100 progress
#              events each (16 KB) and a completion, at 1,000/s: with the gateway's default
#              conflation every client stays connected and ends on every job's final state
#   floor      a 1 s broadcast against the loadgen's bare writer (no gateway, no broker)
# then stops the gateway with SIGTERM.
# Exits 1 if any event is lost, duplicated or misrouted, any connection fails or drops, the
# publisher fails, the gateway logs an ERROR line or panics, or it does not exit with
# status 0 within 10 s of SIGTERM; 3 if the environment is not there (broker, gateway).
# Every step is bounded by `timeout`; after the builds the run takes about 20 s.
#
#   loadtest/smoke.sh
#   CARGO_TARGET_DIR=/tmp/lt-target loadtest/smoke.sh    # builds go there
#   SMOKE_SKIP_RABBITMQ=1 loadtest/smoke.sh              # do not try to start RabbitMQ
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_EXCHANGE="${GATEWAY_AMQP_EXCHANGE:-loadtest.smoke}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

say() { echo "smoke: $*" >&2; }

if [ -z "${SMOKE_SKIP_RABBITMQ:-}" ] && [ -x "$root/scripts/ensure-rabbitmq.sh" ]; then
  timeout 600 "$root/scripts/ensure-rabbitmq.sh"
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

say "building (release)"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"

work="$(mktemp -d "${TMPDIR:-/tmp}/gateway-smoke.XXXXXX")"
gw_pid=""
cleanup() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP_WORK:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$("$loadgen" free-port)"
gateway="http://127.0.0.1:$port"
say "starting the gateway on 127.0.0.1:$port, exchange $GATEWAY_AMQP_EXCHANGE"
# JSON logs: an ERROR line is `"level":"ERROR"` whatever the terminal or colours.
# The fleet's streams (history, revocations) outlive a run on the broker; the smoke run
# checks delivery and leaves none behind.
GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_LOG="${GATEWAY_LOG:-warn}" GATEWAY_LOG_FORMAT=json \
  GATEWAY_SHUTDOWN_DRAIN_SECS=1 GATEWAY_SHUTDOWN_GRACE_SECS=3 GATEWAY_HISTORY_STREAM=off \
  GATEWAY_REVOCATION_USER_KEYS=off GATEWAY_REVOCATION_TENANT_KEYS=off \
  "$gateway_bin" >"$work/gateway.log" 2>&1 &
gw_pid=$!
if ! timeout 40 "$loadgen" wait-ready --gateway "$gateway" --wait-timeout 30; then
  say "the gateway did not become ready; its log:"
  tail -n 30 "$work/gateway.log" >&2
  exit 3
fi

common=(--gateway "$gateway" --gateway-pid "$gw_pid" --connect-timeout 5)
failed=0
scenario() { # name, loadgen arguments...
  local name="$1"
  shift
  local status=0
  timeout --kill-after=5 60 "$loadgen" "$@" "${common[@]}" \
    --json-out "$work/$name.json" >/dev/null 2>"$work/$name.log" || status=$?
  if [ "$status" -eq 0 ]; then
    say "$name: OK"
    grep -E '^(connections|published|delivered|latency|gateway|clients|progress) ' "$work/$name.log" | sed 's/^/  /' >&2 || true
  else
    say "$name: FAILED (status $status)"
    sed 's/^/  /' "$work/$name.log" >&2
    failed=1
  fi
}

scenario targeted targeted --ws 50 --sse 50 --rate 200 --duration 2 --tail-timeout 5
scenario broadcast broadcast --ws 50 --sse 50 --rate 5 --duration 2 --tail-timeout 5
scenario unrouted unrouted --ws 20 --rate 200 --duration 1 --tail-timeout 5
scenario idle idle --ws 50 --sse 50 --duration 1
# The large events keep what the kernel buffers for each slow reader to a few hundred, so
# it has read through them within about a second of the last publish. Its tail ends as soon
# as every client has its completions: the long timeout costs nothing when all is well.
scenario slow slow --ws 2 --sse 2 --rate 1000 --jobs 10 --ticks 100 --read-rate 200 \
  --pad 16000 --tail-timeout 30

# The floor needs neither the gateway nor the broker: the loadgen starts its own writer.
floor_status=0
timeout --kill-after=5 60 "$loadgen" floor broadcast --ws 50 --sse 50 --rate 5 --duration 1 \
  --connect-timeout 5 --tail-timeout 5 --json-out "$work/floor.json" \
  >/dev/null 2>"$work/floor.log" || floor_status=$?
if [ "$floor_status" -eq 0 ]; then
  say "floor: OK"
else
  say "floor: FAILED (status $floor_status)"
  sed 's/^/  /' "$work/floor.log" >&2
  failed=1
fi

# A graceful stop within the configured grace (3 s), bounded here too.
kill -TERM "$gw_pid" 2>/dev/null || true
gw_status=""
for _ in $(seq 1 100); do
  if ! kill -0 "$gw_pid" 2>/dev/null; then
    gw_status=0
    wait "$gw_pid" 2>/dev/null || gw_status=$?
    break
  fi
  sleep 0.1
done
if [ -z "$gw_status" ]; then
  say "FAILED: the gateway (pid $gw_pid) did not stop within 10 s of SIGTERM"
  failed=1
else
  gw_pid=""
  if [ "$gw_status" -ne 0 ]; then
    say "FAILED: the gateway exited with status $gw_status after SIGTERM"
    failed=1
  fi
fi
if grep -qE '"level":"ERROR"|panicked at' "$work/gateway.log"; then
  say "FAILED: the gateway logged errors or panicked:"
  grep -E '"level":"ERROR"|panicked at' "$work/gateway.log" | head -n 10 | sed 's/^/  /' >&2
  failed=1
fi

if [ "$failed" -ne 0 ]; then
  say "FAILED"
  exit 1
fi
say "passed"
