#!/usr/bin/env bash
# Footprints on vs off, side by side in one run: pgbench TPC-B-like (scale 10, 8 clients) on
# PostgreSQL 15 through two capturing proxies of the same binary against one fresh in-memory
# broker — one with footprints (learn mode, every write looked up), one without — alternating,
# ROUNDS rounds per query mode; commits per second and CPU milliseconds per transaction of each
# hindsight process, the broker, and PostgreSQL (postmaster and its backends).
#   scripts/bench-footprints.sh [SECONDS_PER_RUN (default 10)] [ROUNDS (default 3)]
source "$(dirname "$0")/common.sh"
secs="${1:-10}"; rounds="${2:-3}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
fresh_memory_broker
trap 'stop_proxy bench-fp-off; stop_proxy bench-fp-on; memory_broker stop' EXIT
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
bin="$ROOT/target/release/hindsight"
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_fp" -c "CREATE DATABASE bench_fp"
pgbench -q -i -s 10 "$direct dbname=bench_fp" >/dev/null 2>&1 || die "pgbench -i failed"
off=$((PROXY_PORT + 330)); on=$((PROXY_PORT + 331))
start_proxy bench-fp-off "$bin" "$off" $((ADMIN_PORT + 330)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "fpoff$RANDOM"
HINDSIGHT_FOOTPRINTS__ENABLED=true start_proxy bench-fp-on "$bin" "$on" $((ADMIN_PORT + 331)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "fpon$RANDOM"

ticks_of() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
tree_ticks() {
  local total; total=$(ticks_of "$1")
  for child in $(pgrep -P "$1"); do total=$((total + $(ticks_of "$child"))); done
  echo "$total"
}
hz=$(getconf CLK_TCK)
broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")
postmaster=$(head -1 "$DEV/pg15/data/postmaster.pid")
echo "| round | mode | footprints | commits/s | hindsight ms/txn | broker ms/txn | PostgreSQL ms/txn |"
echo "|---|---|---|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for mode in simple prepared; do
    for which in off on; do
      port=$off; [ "$which" = on ] && port=$on
      pid=$(cat "$DEV/bench-fp-$which.pid")
      b0=$(ticks_of "$broker_pid"); h0=$(ticks_of "$pid"); p0=$(tree_ticks "$postmaster")
      tps=$(pgbench -n -M "$mode" -c 8 -j 8 -T "$secs" "host=127.0.0.1 port=$port user=postgres dbname=bench_fp" 2>&1 \
        | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
      [ -n "$tps" ] || die "pgbench produced no result ($mode, footprints $which)"
      b1=$(ticks_of "$broker_pid"); h1=$(ticks_of "$pid")
      sleep 1
      p1=$(tree_ticks "$postmaster")
      awk -v r="$round" -v m="$mode" -v w="$which" -v t="$tps" -v s="$secs" -v hz="$hz" \
        -v b="$((b1 - b0))" -v h="$((h1 - h0))" -v p="$((p1 - p0))" \
        'BEGIN { k = 1000 / hz / (t * s); printf "| %d | %s | %s | %.0f | %.3f | %.3f | %.3f |\n", r, m, w, t, h * k, b * k, p * k }'
    done
  done
done
paths=$(curl -s "http://127.0.0.1:$((ADMIN_PORT + 331))/footprints" | python3 -c 'import sys, json; print(len(json.load(sys.stdin)))')
echo
echo "footprints on: $paths write paths learned (pgbench's statements)"
