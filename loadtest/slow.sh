#!/usr/bin/env bash
# Slow readers with and without conflation: builds the gateway and the loadgen, then twice
# starts a gateway on a free 127.0.0.1 port (first as configured by default, conflating
# render.job.progress.v1 by /data/job_id; then with GATEWAY_CONFLATE=off) and runs
# `loadgen slow` against it: JOBS render jobs each get TICKS progress events and then a
# completion, RATE events/s, while WS + SSE clients each read at a tenth of that.
# Prints both summaries; exits 0 when, with conflation, every client stayed connected and
# ended on every job's final state in order, and without it, none stayed connected (what
# the gateway promises); 1 otherwise; 3 when the broker or gateway is not there.
# About 25 s per run after the builds (the clients drain what the kernel buffered at their
# slow pace).
#
#   loadtest/slow.sh
#   WS=8 SSE=8 RATE=5000 JOBS=50 TICKS=400 loadtest/slow.sh
#
# Knobs: WS (4), SSE (4) clients; RATE (5000) events/s; JOBS (20); TICKS (1000);
# LOADGEN_ARGS (extra loadgen flags, e.g. `--read-rate 250`); OUT (a folder to keep the
# JSON reports and logs in; default: a temporary one, removed).
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_EXCHANGE="${GATEWAY_AMQP_EXCHANGE:-loadtest.slow}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
WS="${WS:-4}"
SSE="${SSE:-4}"
RATE="${RATE:-5000}"
JOBS="${JOBS:-20}"
TICKS="${TICKS:-1000}"
read -r -a extra <<<"${LOADGEN_ARGS:-}"

say() { echo "slow: $*" >&2; }

if [ -x "$root/scripts/ensure-rabbitmq.sh" ]; then
  timeout 600 "$root/scripts/ensure-rabbitmq.sh"
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

say "building (release)"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"

if [ -n "${OUT:-}" ]; then
  work="$OUT"
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/gateway-slow.XXXXXX")"
fi
gw_pid=""
cleanup() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  if [ -z "${OUT:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One gateway per run, its queue gone 2 s after it stops; the fleet's streams stay off.
run_once() { # name, conflate setting ("" = the default)
  local name="$1" conflate="$2"
  local port
  port="$("$loadgen" free-port)"
  say "$name: gateway on 127.0.0.1:$port, GATEWAY_CONFLATE=${conflate:-(default)}"
  (
    if [ -n "$conflate" ]; then export GATEWAY_CONFLATE="$conflate"; fi
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_LOG=warn GATEWAY_LOG_FORMAT=json \
      GATEWAY_SHUTDOWN_DRAIN_SECS=1 GATEWAY_SHUTDOWN_GRACE_SECS=3 GATEWAY_HISTORY_STREAM=off \
      GATEWAY_REVOCATION_USER_KEYS=off GATEWAY_REVOCATION_TENANT_KEYS=off \
      GATEWAY_AMQP_QUEUE_EXPIRES_SECS=2 exec "$gateway_bin"
  ) >"$work/$name.gateway.log" 2>&1 &
  gw_pid=$!
  if ! timeout 40 "$loadgen" wait-ready --gateway "http://127.0.0.1:$port" --wait-timeout 30; then
    say "the gateway did not become ready; its log:"
    tail -n 30 "$work/$name.gateway.log" >&2
    exit 3
  fi
  local status=0
  timeout --kill-after=5 300 "$loadgen" slow --ws "$WS" --sse "$SSE" --rate "$RATE" \
    --jobs "$JOBS" --ticks "$TICKS" --gateway "http://127.0.0.1:$port" --gateway-pid "$gw_pid" \
    --label "slow/$name" --json-out "$work/$name.json" "${extra[@]}" \
    >/dev/null 2>"$work/$name.log" || status=$?
  kill -TERM "$gw_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=""
  sed -n '/^== loadgen slow/,$p' "$work/$name.log" >&2
  if [ "$status" -gt 1 ] || [ ! -s "$work/$name.json" ]; then
    say "$name: the loadgen failed (status $status):"
    tail -n 20 "$work/$name.log" >&2
    exit 3
  fi
}

run_once conflated ""
run_once off off

failed=0
# `ok` is only at the top; there `stayed_connected` is a count, in the clients a boolean.
if ! grep -q '"ok":true' "$work/conflated.json"; then
  say "FAILED: with conflation, not every client stayed connected and ended on every final state"
  failed=1
fi
if ! grep -q '"stayed_connected":0[,}]' "$work/off.json"; then
  say "FAILED: without conflation, some client stayed connected (slower reads or a faster machine needed?)"
  failed=1
fi
if [ -n "${OUT:-}" ]; then say "reports in $work"; fi
if [ "$failed" -ne 0 ]; then exit 1; fi
say "as promised: with conflation every slow reader stayed and ended on every job's final state; without it, every one was disconnected"
