#!/usr/bin/env bash
# The closest this machine comes to "the broker elsewhere" (issue 27): PostgreSQL 15 (postmaster
# and every backend, which inherit its affinity) and pgbench pinned to CPU 0, hindsight and the
# in-memory broker to CPU 1; pgbench TPC-B-like, scale 10, 8 clients, prepared, against direct
# on the same one core. Prints commits/s and CPU ms per committed transaction of each process.
#   scripts/bench-capture-taskset.sh [SECONDS (default 10)] [ROUNDS (default 2)]
# Affinities are put back (all CPUs) on exit. HSBENCH_BIN as in the other benchmarks;
# HSBENCH_CONFIG=FILE starts the proxy with that config (e.g. kafka.topic_routing = "database").
source "$(dirname "$0")/common.sh"
secs="${1:-10}"; rounds="${2:-2}"
[ "$(nproc)" -ge 2 ] || die "needs two CPUs"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
fresh_memory_broker >/dev/null
bin=$(bench_binary)
postmaster=$(head -1 "$DEV/pg15/data/postmaster.pid")
broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")
all=$(awk 'BEGIN { printf "0-%d", '"$(nproc)"' - 1 }')
pin() { local cpu="$1"; shift; for p in "$@"; do taskset -a -p -c "$cpu" "$p" >/dev/null; done; }
unpin() { pin "$all" "$postmaster" $(pgrep -P "$postmaster") "$broker_pid" 2>/dev/null || true; }
trap 'unpin; stop_proxy bench-taskset; memory_broker stop >/dev/null' EXIT
pin 0 "$postmaster" $(pgrep -P "$postmaster")
pin 1 "$broker_pid"
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_taskset" -c "CREATE DATABASE bench_taskset"
taskset -c 0 pgbench -q -i -s 10 "$direct dbname=bench_taskset" >/dev/null 2>&1 || die "pgbench -i failed"
port=$((PROXY_PORT + 395)); admin=$((ADMIN_PORT + 395))
start_proxy bench-taskset "$bin" "$port" "$admin" "$PG15_PORT" --log-level warn --config "${HSBENCH_CONFIG:-/dev/null}" \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "ts$RANDOM"
proxy=$(cat "$DEV/bench-taskset.pid")
pin 1 "$proxy"
# Warm-up through the proxy (topics created, the broker answering): a first measured run that
# met a broker still starting had its clients refused with HS001 and produced no result.
taskset -c 0 pgbench -n -M prepared -c 8 -j 8 -T 3 "host=127.0.0.1 port=$port user=postgres dbname=bench_taskset" >/dev/null 2>&1 \
  || die "warm-up through hindsight failed (log: $DEV/bench-taskset.log)"
ticks_of() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat"; }
tree_ticks() { local t; t=$(ticks_of "$1"); for c in $(pgrep -P "$1"); do t=$((t + $(ticks_of "$c"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
echo "| round | path | commits/s | PostgreSQL ms/txn | hindsight ms/txn | broker ms/txn |"
echo "|---|---|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for path in direct capture; do
    target=$PG15_PORT; [ "$path" = capture ] && target=$port
    p0=$(tree_ticks "$postmaster"); h0=$(ticks_of "$proxy"); b0=$(ticks_of "$broker_pid")
    tps=$(taskset -c 0 pgbench -n -M prepared -c 8 -j 8 -T "$secs" "host=127.0.0.1 port=$target user=postgres dbname=bench_taskset" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    [ -n "$tps" ] || die "pgbench produced no result ($path)"
    h1=$(ticks_of "$proxy"); b1=$(ticks_of "$broker_pid"); sleep 1; p1=$(tree_ticks "$postmaster")
    awk -v r="$round" -v n="$path" -v t="$tps" -v s="$secs" -v hz="$hz" -v p=$((p1 - p0)) -v h=$((h1 - h0)) -v b=$((b1 - b0)) \
      'BEGIN { k = 1000 / hz / (t * s); hs = (n == "capture") ? sprintf("%.3f", h * k) : "–"; bs = (n == "capture") ? sprintf("%.3f", b * k) : "–"
               printf "| %d | %s | %.0f | %.3f | %s | %s |\n", r, n, t, p * k, hs, bs }'
  done
done
