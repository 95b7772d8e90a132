#!/usr/bin/env bash
# Side-by-side benchmark: for each scenario, the floors, this gateway and the Node peer, in
# turn, RUNS times; then the table of medians with ranges, and the CPU cost and p99 of each
# run as ratios to the floors of the same run (`loadgen summarize`). Two floors: the write
# floor (`floor`: the loadgen's bare writer, one write() per delivery, no broker) and the
# ingest floor (`ingest-floor`: `loadgen livepath --client bare`, a bare AMQP consumer
# with the gateway's prefetch and batched acks, of the same events at the same rate; for
# targeted and unrouted only). Unrouted CPU is read against the ingest floor, targeted
# against ingest + write, broadcast against the write floor. Every figure of one row comes
# from runs taken minutes apart on the same machine, so what other processes do to the
# cores moves the floors as well.
#
#   loadtest/compare.sh                                  # every scenario, 3 runs
#   RUNS=1 CONNS=1000 loadtest/compare.sh targeted       # a quick look
#   SYSTEMS="floor gateway" loadtest/compare.sh broadcast100
#
# Scenarios (default: all but idle, in this order):
#   targeted      CONNS WebSockets, TARGETED_RATE events/s, each for one user
#   broadcast100  CONNS WebSockets of one tenant, 10 tenant-wide events/s
#   broadcast50   the same at 5 events/s
#   unrouted      UNROUTED_CONNS WebSockets; UNROUTED_RATE events/s for users with no
#                 connection (CPU per event ingested; the write floor has nothing to do
#                 here, the ingest floor everything)
#   idle          IDLE_CONNS connections, half WebSocket and half SSE (memory per connection)
#
# Environment (defaults in brackets):
#   RUNS [3]  CONNS [10000]  DURATION [10]  TARGETED_RATE [5000]  UNROUTED_RATE [20000]
#   UNROUTED_CONNS [1000]  IDLE_CONNS [16000]
#   SYSTEMS ["ingest-floor floor gateway node"]
#   TAIL        seconds each run waits after its last event for late deliveries; what has
#               not arrived by then counts as lost [30]
#   NODE_PEER   the Node peer's folder, copied to OUT and installed with `npm ci`
#               [<repository>/../shared/peers/node-gateway]
#   OUT         where the JSON reports, logs and table go [loadtest/target/compare/<time>]
#   LOADGEN_ARGS  extra loadgen flags for every run (e.g. "--connect-rate 2000")
#   CARGO_TARGET_DIR  honoured for both builds
# Exits 0 when every run finished (the table shows losses and failures), 3 when a system
# could not be started.
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

RUNS="${RUNS:-3}"
CONNS="${CONNS:-10000}"
DURATION="${DURATION:-10}"
TARGETED_RATE="${TARGETED_RATE:-5000}"
UNROUTED_RATE="${UNROUTED_RATE:-20000}"
UNROUTED_CONNS="${UNROUTED_CONNS:-1000}"
IDLE_CONNS="${IDLE_CONNS:-16000}"
TAIL="${TAIL:-30}"
SYSTEMS="${SYSTEMS:-ingest-floor floor gateway node}"
NODE_PEER="${NODE_PEER:-$root/../shared/peers/node-gateway}"
OUT="${OUT:-$lt/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}"
read -r -a extra <<<"${LOADGEN_ARGS:-}"
scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(targeted broadcast100 broadcast50 unrouted)

export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

say() { echo "compare: $*" >&2; }

args_of() { # scenario -> loadgen mode and flags
  case "$1" in
    targeted) echo "targeted --ws $CONNS --rate $TARGETED_RATE --duration $DURATION" ;;
    broadcast100) echo "broadcast --ws $CONNS --rate 10 --duration $DURATION" ;;
    broadcast50) echo "broadcast --ws $CONNS --rate 5 --duration $DURATION" ;;
    unrouted) echo "unrouted --ws $UNROUTED_CONNS --rate $UNROUTED_RATE --duration $DURATION" ;;
    idle) echo "idle --ws $((IDLE_CONNS / 2)) --sse $((IDLE_CONNS - IDLE_CONNS / 2)) --duration 5" ;;
    *) say "unknown scenario '$1'"; exit 2 ;;
  esac
}
for s in "${scenarios[@]}"; do args_of "$s" >/dev/null; done

rate_of() { # scenario -> events/s of the ingest floor's run
  case "$1" in
    targeted) echo "$TARGETED_RATE" ;;
    unrouted) echo "$UNROUTED_RATE" ;;
  esac
}

mkdir -p "$OUT"
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
"$root/scripts/ensure-rabbitmq.sh"

say "building (release)"
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"

if [[ " $SYSTEMS " == *" node "* ]]; then
  if [ ! -f "$NODE_PEER/server.js" ] || ! command -v node >/dev/null; then
    say "no Node peer at $NODE_PEER (or no node): leaving it out"
    SYSTEMS="${SYSTEMS//node/}"
  else
    # A copy, installed here: the peer is not part of this repository.
    mkdir -p "$OUT/node-peer"
    cp "$NODE_PEER"/package.json "$NODE_PEER"/package-lock.json "$NODE_PEER"/server.js "$OUT/node-peer/"
    (cd "$OUT/node-peer" && npm ci --no-audit --no-fund --silent)
  fi
fi

sys_pid=""
stop_system() {
  [ -n "$sys_pid" ] || return 0
  kill -TERM "$sys_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$sys_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$sys_pid" 2>/dev/null || true
  wait "$sys_pid" 2>/dev/null || true
  sys_pid=""
}
trap stop_system EXIT
trap 'exit 130' INT TERM

start_system() { # system port exchange log
  local system="$1" port="$2" exchange="$3" log="$4"
  export GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_AMQP_EXCHANGE="$exchange"
  case "$system" in
    # The queue outlives the gateway by 2 s only, so it does not collect the next runs.
    # Streams off: the peer has none, and the figures compare the live path.
    gateway) GATEWAY_LOG=warn GATEWAY_AMQP_QUEUE_EXPIRES_SECS=2 GATEWAY_HISTORY_STREAM=off \
      GATEWAY_REVOCATION_USER_KEYS=off GATEWAY_REVOCATION_TENANT_KEYS=off \
      "$gateway_bin" >"$log" 2>&1 & ;;
    node) (cd "$OUT/node-peer" && exec node server.js) >"$log" 2>&1 & ;;
  esac
  sys_pid=$!
  if ! "$loadgen" wait-ready --gateway "http://127.0.0.1:$port" --wait-timeout 30; then
    say "$system did not become ready; its log:"
    tail -n 20 "$log" >&2
    exit 3
  fi
}

run_one() { # scenario system run
  local scenario="$1" system="$2" run="$3" name="$1.$2.$3"
  local -a args
  read -r -a args <<<"$(args_of "$scenario")"
  args+=(--tail-timeout "$TAIL" --label "$scenario/$system/$run" --json-out "$OUT/$name.json" "${extra[@]}")
  local status=0
  if [ "$system" = ingest-floor ]; then
    # The same events at the same rate, consumed from a live queue by the bare consumer.
    timeout --kill-after=10 900 "$loadgen" livepath --source queue --client bare \
      --events "$scenario" --rate "$(rate_of "$scenario")" --duration "$DURATION" \
      --tail "$TAIL" --amqp-url "$GATEWAY_AMQP_URL" --label "$scenario/$system/$run" \
      --json-out "$OUT/$name.json" >/dev/null 2>"$OUT/$name.log" || status=$?
    say "$name: $(grep -E '^ +(received|latency|CPU)' "$OUT/$name.log" | tr -s ' ' | paste -sd ';' -) (status $status)"
    return 0
  elif [ "$system" = floor ]; then
    timeout --kill-after=10 900 "$loadgen" floor "${args[@]}" >/dev/null 2>"$OUT/$name.log" || status=$?
  else
    local port exchange="loadtest.compare.$system"
    port="$("$loadgen" free-port)"
    start_system "$system" "$port" "$exchange" "$OUT/$name.server.log"
    timeout --kill-after=10 900 "$loadgen" "${args[@]}" --gateway "http://127.0.0.1:$port" \
      --gateway-pid "$sys_pid" --exchange "$exchange" >/dev/null 2>"$OUT/$name.log" || status=$?
    stop_system
  fi
  say "$name: $(grep -E '^(result|gateway CPU)' "$OUT/$name.log" | tr -s ' ' | paste -sd ';' -) (status $status)"
}

for run in $(seq 1 "$RUNS"); do
  for scenario in "${scenarios[@]}"; do
    for system in $SYSTEMS; do
      # The floor writes to clients; it has no ingest or memory figure of its own to offer.
      if [ "$system" = floor ] && [[ "$scenario" == unrouted || "$scenario" == idle ]]; then
        continue
      fi
      # The ingest floor only where ingest is part of the cost read.
      if [ "$system" = ingest-floor ] && [[ "$scenario" != targeted && "$scenario" != unrouted ]]; then
        continue
      fi
      run_one "$scenario" "$system" "$run"
    done
  done
done

"$loadgen" summarize "$OUT"/*.json | tee "$OUT/table.md"
say "reports, logs and table.md in $OUT"
