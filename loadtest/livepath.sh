#!/usr/bin/env bash
# The live path by measurement: builds the loadgen (release) and runs `loadgen livepath`
# for each run 1..RUNS, each scenario and each source in turn (so the sources compare runs
# taken a minute apart): the gateway's live queue, its history stream read live, and the
# two together (queue consumed, stream only written: the broker's side of today's
# gateway). Scenarios: the benchmark's targeted rate (5 000 events/s) and its unrouted
# rate (20 000 events/s). Writes each run's JSON report and log, then table.md (medians
# [ranges], `loadgen livepath summarize`), into OUT, and prints the table.
# No gateway is involved: a bare lapin consumer with the gateway's settings.
# Every run holds /tmp/realtime-gateway-bench.lock (shared with the other CPU benchmarks
# on this machine), waiting for it when someone else's run holds it.
# About 20 s per run: 3 runs x 2 scenarios x 3 sources = 18 runs, ~6 min.
#
#   loadtest/livepath.sh
#   RUNS=1 DURATION=5 SOURCES="queue stream" loadtest/livepath.sh
#
# Knobs: RUNS (3); DURATION (10) s of events per run; SOURCES ("queue stream
# queue+stream"); SCENARIOS ("targeted5000 unrouted20000"); CLIENTS ("lapin"; the
# consumer's client: lapin, amqprs, bare, or stream for the stream protocol, which reads
# the stream only and needs the rabbitmq_stream plugin, enabled here when asked for);
# READERS ("1"; consumers per run: with a queue one queue each, as N instances, with the
# stream N readers of it); OUT (loadtest/target/livepath/<time>); LOADGEN_ARGS (extra
# flags, e.g. `--prefetch 256`); LOCK (the benchmark lock file).
set -euo pipefail

lt="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$lt")"

RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
SOURCES="${SOURCES:-queue stream queue+stream}"
SCENARIOS="${SCENARIOS:-targeted5000 unrouted20000}"
CLIENTS="${CLIENTS:-lapin}"
READERS="${READERS:-1}"
LOCK="${LOCK:-/tmp/realtime-gateway-bench.lock}"
OUT="${OUT:-$lt/target/livepath/$(date +%Y%m%d-%H%M%S)}"
read -r -a extra <<<"${LOADGEN_ARGS:-}"

say() { echo "livepath: $*" >&2; }

if [ -x "$root/scripts/ensure-rabbitmq.sh" ]; then
  timeout 600 "$root/scripts/ensure-rabbitmq.sh"
fi

case " $CLIENTS " in
  *" stream "*)
    # The stream protocol's port; enabling an enabled plugin is a no-op.
    rabbitmq-plugins enable rabbitmq_stream >/dev/null 2>&1 \
      || say "could not enable rabbitmq_stream (the stream client's runs will fail)"
    ;;
esac

say "building the loadgen (release)"
timeout 1800 cargo build --release --locked --quiet --manifest-path "$lt/Cargo.toml"
loadgen="${CARGO_TARGET_DIR:-$lt/target}/release/loadgen"
mkdir -p "$OUT"

failed=0
for run in $(seq 1 "$RUNS"); do
  for scenario in $SCENARIOS; do
    case "$scenario" in
      targeted5000) args=(--events targeted --rate 5000) ;;
      unrouted20000) args=(--events unrouted --rate 20000) ;;
      *) say "unknown scenario $scenario"; exit 2 ;;
    esac
    for readers in $READERS; do
    for client in $CLIENTS; do
      for source in $SOURCES; do
        # The stream protocol reads the stream only.
        [ "$client" != stream ] || [ "$source" = stream ] || continue
        name="$scenario-${source/+/-}-$client-r$readers-$run"
        say "run $run/$RUNS: $scenario, $source ($client, $readers reader(s))"
        # Bounded: the run itself stops after DURATION + its tail; the lock wait is not.
        if ! flock "$LOCK" timeout $((DURATION + 120)) "$loadgen" livepath \
          --source "$source" --client "$client" --readers "$readers" \
          --duration "$DURATION" "${args[@]}" \
          --label "$scenario/$source/$client/$readers/$run" --json-out "$OUT/$name.json" \
          "${extra[@]}" >/dev/null 2>"$OUT/$name.log"; then
          failed=1
          say "run $name failed or lost events (see $OUT/$name.log)"
        fi
        tail -n 6 "$OUT/$name.log" >&2
      done
    done
    done
  done
done

shopt -s nullglob
reports=("$OUT"/*.json)
if [ ${#reports[@]} -eq 0 ]; then
  say "no report written"
  exit 3
fi
"$loadgen" livepath summarize "${reports[@]}" >"$OUT/table.md"
cat "$OUT/table.md"
say "reports, logs and table.md in $OUT"
exit "$failed"
