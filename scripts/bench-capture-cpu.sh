#!/usr/bin/env bash
# Where the CPU goes when capture runs beside its broker on this machine: pgbench TPC-B-like
# (scale 10, 8 clients, prepared), directly and through capture to a fresh in-memory tansu, on
# PostgreSQL 15 and 18; for each run, commits per second and CPU milliseconds per transaction:
# of the whole machine (/proc/stat: every process, pgbench and the kernel included), of the
# broker, of hindsight, and of PostgreSQL (postmaster and every backend, read a second after
# pgbench ends, once its backends have exited and been reaped).
# It shows the ceiling of capture here: a captured transaction costs at least what the direct
# one costs the whole machine plus what the broker spends on it, so even a hindsight that cost
# nothing could not exceed cores / (direct machine + broker) per transaction.
#   scripts/bench-capture-cpu.sh [SECONDS_PER_RUN (default 10)] [ROUNDS (default 2)]
# HSBENCH_BIN=path runs that binary instead of building target/release/hindsight (to compare
# two builds, e.g. before and after a change, with the same script).
source "$(dirname "$0")/common.sh"
secs="${1:-10}"; rounds="${2:-2}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
fresh_memory_broker
trap 'stop_proxy bench-cpu-15; stop_proxy bench-cpu-18; memory_broker stop' EXIT
bin=$(bench_binary)

# utime + stime (+ reaped children's, for the postmaster: backends that exited), in clock ticks.
ticks_of() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
tree_ticks() {
  local total; total=$(ticks_of "$1")
  for child in $(pgrep -P "$1"); do total=$((total + $(ticks_of "$child"))); done
  echo "$total"
}
# Busy time of every CPU (all but idle and iowait), in clock ticks.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
hz=$(getconf CLK_TCK)
broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")

echo "| server | round | path | commits/s | machine ms/txn | broker ms/txn | hindsight ms/txn | PostgreSQL ms/txn | ceiling with the broker here (hindsight free) |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
for ver in 15 18; do
  port_var="PG${ver}_PORT"; port=${!port_var}
  direct="host=127.0.0.1 port=$port user=postgres"
  psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_cpu" -c "CREATE DATABASE bench_cpu"
  pgbench -q -i -s 10 "$direct dbname=bench_cpu" >/dev/null 2>&1 || die "pgbench -i failed on PostgreSQL $ver"
  proxy_port=$((PROXY_PORT + 320 + ver)); admin_port=$((ADMIN_PORT + 320 + ver))
  start_proxy "bench-cpu-$ver" "$bin" "$proxy_port" "$admin_port" "$port" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "cpu$ver$RANDOM"
  postmaster=$(head -1 "$DEV/pg$ver/data/postmaster.pid")
  proxy_pid=$(cat "$DEV/bench-cpu-$ver.pid")
  direct_machine=0
  for round in $(seq 1 "$rounds"); do
    for path in direct capture; do
      target=$port; [ "$path" = capture ] && target=$proxy_port
      m0=$(machine_ticks); b0=$(ticks_of "$broker_pid"); h0=$(ticks_of "$proxy_pid"); p0=$(tree_ticks "$postmaster")
      tps=$(pgbench -n -M prepared -c 8 -j 8 -T "$secs" "host=127.0.0.1 port=$target user=postgres dbname=bench_cpu" 2>&1 \
        | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
      [ -n "$tps" ] || die "pgbench produced no result ($path, PostgreSQL $ver)"
      m1=$(machine_ticks); b1=$(ticks_of "$broker_pid"); h1=$(ticks_of "$proxy_pid")
      sleep 1  # pgbench's backends exit and are reaped: their time moves to the postmaster
      p1=$(tree_ticks "$postmaster")
      read -r m b h p < <(awk -v t="$tps" -v s="$secs" -v hz="$hz" -v m="$((m1 - m0))" -v b="$((b1 - b0))" -v h="$((h1 - h0))" -v p="$((p1 - p0))" \
        'BEGIN { n = t * s; k = 1000 / hz / n; printf "%.2f %.2f %.2f %.2f\n", m * k, b * k, h * k, p * k }')
      [ "$path" = direct ] && direct_machine=$m && direct_tps=$tps
      ceiling="—"
      [ "$path" = capture ] && ceiling=$(awk -v b="$b" -v d="$direct_machine" -v dt="$direct_tps" -v cores="$(nproc)" \
        'BEGIN { c = cores * 1000 / (b + d); printf "%.0f/s = %.2f× direct", c, c / dt }')
      printf "| PG %s | %s | %s | %.0f | %s | %s | %s | %s | %s |\n" "$ver" "$round" "$path" "$tps" "$m" "$b" "$h" "$p" "$ceiling"
    done
  done
  stop_proxy "bench-cpu-$ver"
done
