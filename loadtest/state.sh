#!/usr/bin/env bash
# What the live state costs, end to end: builds the gateway and the loadgen (release), then
# for each run 1..RUNS starts a fresh gateway on a free 127.0.0.1 port for every step, with
# the state on (the default, `render.job.#=/data/job_id`) and off (GATEWAY_STATE=off),
# in turn, so each on/off pair is taken seconds apart:
#   cpu       for each CPU_SCENARIOS entry, the gateway's CPU per event over DURATION s
#             of render-job events, each a job of its own (so with the state on, every
#             event is a new key and, past the tenant's 20 000, evicts the oldest):
#             unrouted<R> = `loadgen unrouted` (UNROUTED_CONNS WebSockets, events for
#             absent users), targeted<R> = `loadgen targeted` (TARGETED_CONNS WebSockets,
#             each event for one of them); R events/s
#   memory    for each MEMORY_KEYS entry K, `loadgen state memory --keys K`: RSS growth
#             per key after K jobs' events (1 000 users of 10 tenants, within the default
#             limits up to 200 000 keys), no client connected
#   snapshot  state on only, GATEWAY_MAX_CONNECTIONS_PER_USER raised (every connection is
#             one user's): `loadgen state snapshot` (JOBS jobs of user 0 and of each of
#             NOISE_USERS others; CONNECTS connects per transport with and without
#             snapshot=1; WATCHES in-band watches)
# then `loadgen state summarize` writes table.md (medians [ranges]; CPU as the on ÷ off
# ratio of each run). The load average before and after each step goes to loadavg.txt.
# Every step holds LOCK (/tmp/realtime-gateway-bench.lock, shared with the other CPU
# benchmarks on this machine), waiting while someone else's run holds it.
# About 15 s per step: with the defaults 3 x (8 + 4 + 1) steps, ~10 min.
#
#   loadtest/state.sh
#   RUNS=1 DURATION=3 PARTS="cpu" CPU_SCENARIOS=unrouted20000 loadtest/state.sh
#   PARTS=snapshot CONNECTS=1000 loadtest/state.sh
#
# Knobs (defaults in brackets): RUNS [3]; PARTS ["cpu memory snapshot"]; DURATION [5];
# CPU_SCENARIOS ["unrouted5000 unrouted20000 targeted5000 targeted20000"];
# UNROUTED_CONNS [100]; TARGETED_CONNS [1000]; MEMORY_KEYS ["10000 100000"]; JOBS [100];
# NOISE_USERS [99]; CONNECTS [200]; WATCHES [200]; LOADGEN_ARGS (extra flags for the
# cpu runs); OUT [loadtest/target/state/<time>]; LOCK.
# Exits 0 when every step was ok, 1 when one lost events or failed, 3 when a gateway
# did not start.
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

RUNS="${RUNS:-3}"
PARTS="${PARTS:-cpu memory snapshot}"
DURATION="${DURATION:-5}"
CPU_SCENARIOS="${CPU_SCENARIOS:-unrouted5000 unrouted20000 targeted5000 targeted20000}"
UNROUTED_CONNS="${UNROUTED_CONNS:-100}"
TARGETED_CONNS="${TARGETED_CONNS:-1000}"
MEMORY_KEYS="${MEMORY_KEYS:-10000 100000}"
JOBS="${JOBS:-100}"
NOISE_USERS="${NOISE_USERS:-99}"
CONNECTS="${CONNECTS:-200}"
WATCHES="${WATCHES:-200}"
LOCK="${LOCK:-/tmp/realtime-gateway-bench.lock}"
OUT="${OUT:-$lt/target/state/$(date -u +%Y%m%dT%H%M%SZ)}"
read -r -a extra <<<"${LOADGEN_ARGS:-}"

export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export GATEWAY_AMQP_EXCHANGE="${GATEWAY_AMQP_EXCHANGE:-loadtest.state}"

say() { echo "state: $*" >&2; }

if [ -x "$root/scripts/ensure-rabbitmq.sh" ]; then
  timeout 600 "$root/scripts/ensure-rabbitmq.sh"
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

say "building (release)"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"
mkdir -p "$OUT"

gw_pid=""
stop_gateway() {
  [ -n "$gw_pid" ] || return 0
  kill -TERM "$gw_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$gw_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=""
}
trap stop_gateway EXIT
trap 'exit 130' INT TERM

port=""
start_gateway() { # state (on|off), log, extra VAR=value...
  local state="$1" log="$2"
  shift 2
  port="$("$loadgen" free-port)"
  (
    if [ "$state" = off ]; then export GATEWAY_STATE=off; fi
    for kv in "$@"; do export "${kv?}"; done
    # The queue outlives the gateway by 2 s only; the fleet's streams stay off, so the
    # state comes from the live path alone.
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_LOG=warn GATEWAY_AMQP_QUEUE_EXPIRES_SECS=2 \
      GATEWAY_HISTORY_STREAM=off GATEWAY_REVOCATION_USER_KEYS=off \
      GATEWAY_REVOCATION_TENANT_KEYS=off GATEWAY_SHUTDOWN_DRAIN_SECS=1 \
      GATEWAY_SHUTDOWN_GRACE_SECS=3 exec "$gateway_bin"
  ) >"$log" 2>&1 &
  gw_pid=$!
  if ! timeout 40 "$loadgen" wait-ready --gateway "http://127.0.0.1:$port" --wait-timeout 30; then
    say "the gateway did not become ready; its log:"
    tail -n 30 "$log" >&2
    exit 3
  fi
}

failed=0
step() { # name, state, label, gateway extras (as one word, space-separated), loadgen args...
  local name="$1" state="$2" label="$3" gw_extra="$4"
  shift 4
  local -a gw_env=()
  read -r -a gw_env <<<"$gw_extra"
  exec {lockfd}>"$LOCK"
  flock "$lockfd"
  echo "$name before: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
  start_gateway "$state" "$OUT/$name.gateway.log" "${gw_env[@]}"
  local status=0
  timeout --kill-after=10 300 "$loadgen" "$@" --gateway "http://127.0.0.1:$port" \
    --gateway-pid "$gw_pid" --label "$label" --json-out "$OUT/$name.json" \
    >/dev/null 2>"$OUT/$name.log" || status=$?
  stop_gateway
  echo "$name after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
  flock -u "$lockfd"
  exec {lockfd}>&-
  if [ "$status" -ne 0 ]; then
    failed=1
    say "$name: status $status (see $OUT/$name.log)"
  fi
  say "$name: $(grep -E '^(result|gateway CPU|  gateway RSS|  (WS|SSE|in band))' "$OUT/$name.log" | tr -s ' ' | paste -sd ';' -)"
}

for run in $(seq 1 "$RUNS"); do
  for part in $PARTS; do
    case "$part" in
      cpu)
        for scenario in $CPU_SCENARIOS; do
          rate="${scenario##*[a-z]}"
          case "$scenario" in
            unrouted*) args=(unrouted --ws "$UNROUTED_CONNS") ;;
            targeted*) args=(targeted --ws "$TARGETED_CONNS") ;;
            *) say "unknown scenario $scenario"; exit 2 ;;
          esac
          for state in off on; do
            step "cpu.$scenario.$state.$run" "$state" "cpu/$scenario/$state/$run" "" \
              "${args[@]}" --rate "$rate" --duration "$DURATION" "${extra[@]}"
          done
        done
        ;;
      memory)
        for keys in $MEMORY_KEYS; do
          for state in off on; do
            step "memory.$keys.$state.$run" "$state" "memory/$keys/$state/$run" "" \
              state memory --keys "$keys"
          done
        done
        ;;
      snapshot)
        step "snapshot.on.$run" on "snapshot/on/$run" "GATEWAY_MAX_CONNECTIONS_PER_USER=100000" \
          state snapshot --jobs "$JOBS" --noise-users "$NOISE_USERS" \
          --connects "$CONNECTS" --watches "$WATCHES"
        ;;
      *) say "unknown part $part"; exit 2 ;;
    esac
  done
done

shopt -s nullglob
reports=("$OUT"/*.json)
if [ ${#reports[@]} -eq 0 ]; then
  say "no report written"
  exit 3
fi
"$loadgen" state summarize "${reports[@]}" >"$OUT/table.md"
{
  echo
  echo "Load average (1 min) before and after the steps: $(awk '{print $3}' "$OUT/loadavg.txt" | sort -n | sed -n '1p;$p' | paste -sd '-' -) (lowest-highest; every reading in loadavg.txt)"
} >>"$OUT/table.md"
cat "$OUT/table.md"
say "reports, logs and table.md in $OUT"
exit "$failed"
