#!/usr/bin/env bash
# The fleet as it is, measured on one machine: N gateway instances (N = 1, 2, 4, 8 by
# default), each with its own port and queue, all bound to the same exchange, so every
# instance's queue receives every event. One loadgen spreads PER_INSTANCE WebSockets over
# the instances (connection i to instance i mod N; one user per connection, users spread
# over TENANTS tenants) and publishes targeted events at each RATE for DURATION seconds.
# Per run it reports: the broker's CPU per event (RabbitMQ's beam.smp, utime + stime from
# /proc over the publish window), each instance's CPU per event (mean and max over the
# instances), delivery latency p50/p99, events lost and the load average at the end of the
# run. Then table.md: medians [ranges] over the runs, per rate and N.
#
#   loadtest/fleet.sh                          # N = 1 2 4 8, 2 000 and 5 000 events/s, 3 runs
#   RUNS=1 NS="1 8" RATES=5000 loadtest/fleet.sh
#
# Knobs (defaults in brackets):
#   RUNS [3]  NS ["1 2 4 8"]  RATES ["2000 5000"]  DURATION [10]  PER_INSTANCE [200]
#   TENANTS [20]
#   STREAM      "on": every instance also writes the fleet's history stream
#               (loadtest.fleet.history, as a production fleet does) ["off": live queues only]
#   TAIL        seconds to wait after the last event; what has not arrived counts as lost [10]
#   OUT         reports, gateway logs and table.md [loadtest/target/fleet/<time>]
#   LOADGEN_ARGS  extra loadgen flags;  LOCK  the benchmark lock file, shared with the other
#               CPU benchmarks on this machine [/tmp/realtime-gateway-bench.lock]
#   CARGO_TARGET_DIR  honoured for both builds
# Each (run, N, rate) takes about DURATION + 5 s: the default plan is ~24 runs, ~6 min.
# Exits 0 when every run delivered everything, 1 when one lost events or failed, 3 when a
# gateway did not start.
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

RUNS="${RUNS:-3}"
NS="${NS:-1 2 4 8}"
RATES="${RATES:-2000 5000}"
DURATION="${DURATION:-10}"
PER_INSTANCE="${PER_INSTANCE:-200}"
TENANTS="${TENANTS:-20}"
STREAM="${STREAM:-off}"
TAIL="${TAIL:-10}"
LOCK="${LOCK:-/tmp/realtime-gateway-bench.lock}"
OUT="${OUT:-$lt/target/fleet/$(date -u +%Y%m%dT%H%M%SZ)}"
read -r -a extra <<<"${LOADGEN_ARGS:-}"

export GATEWAY_JWT_SECRET="${GATEWAY_JWT_SECRET:-loadtest-secret-0123456789abcdef0123}"
export GATEWAY_AMQP_URL="${GATEWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
exchange="loadtest.fleet"

say() { echo "fleet: $*" >&2; }

mkdir -p "$OUT"
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
if [ -x "$root/scripts/ensure-rabbitmq.sh" ]; then
  timeout 600 "$root/scripts/ensure-rabbitmq.sh"
fi

say "building (release)"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/realtime-gateway"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"

case "$STREAM" in
  on) history="$exchange.history" ;;
  off) history=off ;;
  *) say "STREAM must be on or off"; exit 2 ;;
esac

pids=()
stop_fleet() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
trap stop_fleet EXIT
trap 'exit 130' INT TERM

start_fleet() { # n name -> sets urls (comma-separated)
  local n="$1" name="$2" i port
  urls=""
  for i in $(seq 1 "$n"); do
    port="$("$loadgen" free-port)"
    # Its own queue, expiring 2 s after it stops, so it does not collect the next runs.
    # Revocation keys off: no instance consumes anything but the live events.
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_AMQP_EXCHANGE="$exchange" \
      GATEWAY_AMQP_QUEUE="$exchange.$name.i$i" GATEWAY_AMQP_QUEUE_EXPIRES_SECS=2 \
      GATEWAY_HISTORY_STREAM="$history" GATEWAY_LOG=warn \
      GATEWAY_REVOCATION_USER_KEYS=off GATEWAY_REVOCATION_TENANT_KEYS=off \
      "$gateway_bin" >"$OUT/$name.i$i.log" 2>&1 9>&- &
    pids+=($!)
    urls="${urls:+$urls,}http://127.0.0.1:$port"
  done
  for url in ${urls//,/ }; do
    if ! "$loadgen" wait-ready --gateway "$url" --wait-timeout 30; then
      say "$url did not become ready; its log:"
      tail -n 20 "$OUT/$name".i*.log >&2
      exit 3
    fi
  done
}

failed=0
for run in $(seq 1 "$RUNS"); do
  for rate in $RATES; do
    for n in $NS; do
      name="n$n-r$rate-$run"
      conns=$((n * PER_INSTANCE))
      # Bounded: the run stops after DURATION + TAIL; only the lock wait is not.
      exec 9>"$LOCK"
      flock 9
      start_fleet "$n" "$name"
      status=0
      timeout --kill-after=10 $((DURATION + TAIL + 120)) "$loadgen" targeted \
        --gateway "$urls" --exchange "$exchange" --ws "$conns" --tenants "$TENANTS" \
        --rate "$rate" --duration "$DURATION" --tail-timeout "$TAIL" \
        --label "fleet/n$n/r$rate/$run" --json-out "$OUT/$name.json" "${extra[@]}" \
        >/dev/null 2>"$OUT/$name.log" 9>&- || status=$?
      cut -d' ' -f1 /proc/loadavg >"$OUT/$name.load"
      stop_fleet
      flock -u 9
      [ "$status" -eq 0 ] || failed=1
      say "$name ($(cut -d' ' -f1-3 /proc/loadavg) load): $(grep -E '^(instances|broker CPU|latency|result)' "$OUT/$name.log" | tr -s ' ' | paste -sd ';' -) (status $status)"
    done
  done
done

# Medians [min-max] over the runs, per rate and N.
python3 - "$OUT" >"$OUT/table.md" <<'EOF'
import json, pathlib, statistics, sys
runs = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("n*-r*-*.json")):
    r = json.loads(f.read_text())
    n, rate = len(r["instances"]), r["publish"]["rate_target"]
    inst = [i["cpu_us_per_event"] for i in r["instances"] if i["cpu_us_per_event"] is not None]
    lat = r["delivery"]["latency_ms"]
    runs.setdefault((rate, n), []).append({
        "broker": r["broker_process"]["cpu_us_per_event"],
        "mean": sum(inst) / len(inst) if inst else None,
        "max": max(inst) if inst else None,
        "p50": lat["p50"], "p99": lat["p99"],
        "lost": r["delivery"]["lost"],
        "load": float(f.with_suffix(".load").read_text()) if f.with_suffix(".load").exists() else None,
    })
def cell(rs, k, fmt="{:.1f}"):
    v = [x[k] for x in rs if x[k] is not None]
    if not v:
        return "–"
    m = fmt.format(statistics.median(v))
    return m if len(v) == 1 else f"{m} [{fmt.format(min(v))}–{fmt.format(max(v))}]"
print("| events/s | instances | runs | broker µs/event | broker µs/event per instance | instance µs/event (mean) | instance µs/event (max) | p50 ms | p99 ms | lost | load (1 min) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (rate, n), rs in sorted(runs.items()):
    for x in rs:
        x["per"] = x["broker"] / n if x["broker"] is not None else None
    lost = sum(x["lost"] for x in rs)
    print(f"| {rate:.0f} | {n} | {len(rs)} | {cell(rs, 'broker')} | {cell(rs, 'per')} | "
          f"{cell(rs, 'mean')} | {cell(rs, 'max')} | {cell(rs, 'p50', '{:.2f}')} | "
          f"{cell(rs, 'p99', '{:.2f}')} | {lost} | {cell(rs, 'load')} |")
EOF
cat "$OUT/table.md"
say "reports, logs and table.md in $OUT"
exit "$failed"
