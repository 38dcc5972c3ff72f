#!/usr/bin/env bash
# Where the CPU goes when capture runs beside its broker on this machine: pgbench TPC-B-like
# (scale 10, 8 clients), prepared and simple, on PostgreSQL 15 and 18, side by side in one run:
# directly, directly with the reference audit trigger (`audit_trigger_sql` in common.sh), through
# hindsight relay-only, through capture to a fresh in-memory tansu, and through capture with
# kafka.topic_routing = "database" (capture-db: one change topic for the database). For each run: commits per
# second, pgbench's transaction latency p50 / p99 (per-transaction logs), and CPU milliseconds per
# transaction of the whole machine (/proc/stat: every process, pgbench and the kernel included),
# of the broker, of hindsight, of PostgreSQL (postmaster and every backend, read a second after
# pgbench ends, once its backends have exited and been reaped) and of its session backends alone
# (the postmaster's reaped children: pgbench's backends, and any autovacuum worker that ended).
# It shows the ceiling of capture here: a captured transaction costs at least what the direct
# one costs the whole machine plus what the broker spends on it, so even a hindsight that cost
# nothing could not exceed cores / (direct machine + broker) per transaction.
#   scripts/bench-capture-cpu.sh [SECONDS_PER_RUN (default 10)] [ROUNDS (default 2)]
# HSBENCH_CLIENTS=N runs N clients instead of 8 (1: no lock waits between sessions);
# HSBENCH_VERSIONS="15" and HSBENCH_MODES="prepared" narrow the run.
# HSBENCH_RATE=N offers every path the same load, N transactions a second in all (pgbench -R),
# instead of as many as it can take: PostgreSQL's CPU per transaction grows as its rate falls
# (its backends sleep and wake between statements), so "how much busier does capture make my
# server at my load" is the equal-rate comparison. N must be under every path's maximum; the
# latency columns then count from each transaction's scheduled start (pgbench -R).
# HSBENCH_BIN=path runs that binary instead of building target/release/hindsight (to compare
# two builds, e.g. before and after a change, with the same script).
source "$(dirname "$0")/common.sh"
secs="${1:-10}"; rounds="${2:-2}"; clients="${HSBENCH_CLIENTS:-8}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
fresh_memory_broker
trap 'for v in 15 18; do stop_proxy bench-cpu-$v; stop_proxy bench-db-$v; stop_proxy bench-relay-$v; done; memory_broker stop' EXIT
routed="$DEV/bench-cpu-routed.toml"
printf '[kafka]\ntopic_routing = "database"\n' > "$routed"
bin=$(bench_binary)

# utime + stime (+ reaped children's, for the postmaster: backends that exited), in clock ticks.
ticks_of() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
tree_ticks() {
  local total; total=$(ticks_of "$1")
  for child in $(pgrep -P "$1"); do total=$((total + $(ticks_of "$child"))); done
  echo "$total"
}
# The reaped children's time of a process (its exited children: for the postmaster, the session
# backends that ended — pgbench's — and any autovacuum worker that ended), in clock ticks.
reaped_ticks() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[14] + f[15] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Busy time of every CPU (all but idle and iowait), in clock ticks.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
hz=$(getconf CLK_TCK)
broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")

# Latency percentiles (ms) of pgbench's per-transaction logs with prefix $1: "p50 p99".
latency() {
  cat "$1".* 2>/dev/null | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "– –"; exit }
    i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
    printf "%.2f %.2f\n", v[i50] / 1000, v[i99] / 1000 }'
  rm -f "$1".*
}

echo "| server | mode | round | path | commits/s | latency p50 / p99 ms | machine ms/txn | broker ms/txn | hindsight ms/txn | PostgreSQL ms/txn | its sessions ms/txn | ceiling with the broker here (hindsight free) |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for ver in ${HSBENCH_VERSIONS:-15 18}; do
  port_var="PG${ver}_PORT"; port=${!port_var}
  direct="host=127.0.0.1 port=$port user=postgres"
  for db in bench_cpu bench_cpu_trigger; do
    psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    pgbench -q -i -s 10 "$direct dbname=$db" >/dev/null 2>&1 || die "pgbench -i failed on PostgreSQL $ver ($db)"
  done
  psql -X -q -v ON_ERROR_STOP=1 "$direct dbname=bench_cpu_trigger" -c "$(audit_trigger_sql)" >/dev/null \
    || die "audit trigger setup failed on PostgreSQL $ver"
  proxy_port=$((PROXY_PORT + 320 + ver)); admin_port=$((ADMIN_PORT + 320 + ver))
  relay_port=$((PROXY_PORT + 340 + ver)); relay_admin=$((ADMIN_PORT + 340 + ver))
  start_proxy "bench-cpu-$ver" "$bin" "$proxy_port" "$admin_port" "$port" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "cpu$ver$RANDOM"
  start_proxy "bench-relay-$ver" "$bin" "$relay_port" "$relay_admin" "$port" --log-level warn
  db_port=$((PROXY_PORT + 360 + ver)); db_admin=$((ADMIN_PORT + 360 + ver))
  start_proxy "bench-db-$ver" "$bin" "$db_port" "$db_admin" "$port" --log-level warn --config "$routed" \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "cpudb$ver$RANDOM"
  postmaster=$(head -1 "$DEV/pg$ver/data/postmaster.pid")
  for mode in ${HSBENCH_MODES:-prepared simple}; do
    for round in $(seq 1 "$rounds"); do
      direct_machine=0
      for path in direct trigger relay-only capture capture-db; do
        target=$port; db=bench_cpu; proc=""
        case "$path" in
          trigger) db=bench_cpu_trigger ;;
          relay-only) target=$relay_port; proc=$(cat "$DEV/bench-relay-$ver.pid") ;;
          capture) target=$proxy_port; proc=$(cat "$DEV/bench-cpu-$ver.pid") ;;
          capture-db) target=$db_port; proc=$(cat "$DEV/bench-db-$ver.pid") ;;
        esac
        lat="$DEV/bench-cpu-lat"
        m0=$(machine_ticks); b0=$(ticks_of "$broker_pid"); h0=0; [ -n "$proc" ] && h0=$(ticks_of "$proc")
        p0=$(tree_ticks "$postmaster"); r0=$(reaped_ticks "$postmaster")
        tps=$(pgbench -n -M "$mode" -c "$clients" -j "$clients" -T "$secs" ${HSBENCH_RATE:+-R "$HSBENCH_RATE"} --log --log-prefix="$lat" \
          "host=127.0.0.1 port=$target user=postgres dbname=$db" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
        [ -n "$tps" ] || die "pgbench produced no result ($path, $mode, PostgreSQL $ver)"
        m1=$(machine_ticks); b1=$(ticks_of "$broker_pid"); h1=0; [ -n "$proc" ] && h1=$(ticks_of "$proc")
        sleep 1  # pgbench's backends exit and are reaped: their time moves to the postmaster
        p1=$(tree_ticks "$postmaster"); r1=$(reaped_ticks "$postmaster")
        read -r p50 p99 < <(latency "$lat")
        read -r m b h p r < <(awk -v t="$tps" -v s="$secs" -v hz="$hz" -v m="$((m1 - m0))" -v b="$((b1 - b0))" \
          -v h="$((h1 - h0))" -v p="$((p1 - p0))" -v r="$((r1 - r0))" \
          'BEGIN { n = t * s; k = 1000 / hz / n; printf "%.2f %.2f %.2f %.2f %.2f\n", m * k, b * k, h * k, p * k, r * k }')
        [ "$path" = direct ] && direct_machine=$m && direct_tps=$tps
        case "$path" in relay-only|capture*) ;; *) h="–" ;; esac
        case "$path" in capture*) ;; *) b="–" ;; esac
        ceiling="—"
        case "$path" in capture*) ceiling=$(awk -v b="$b" -v d="$direct_machine" -v dt="$direct_tps" -v cores="$(nproc)" \
          'BEGIN { c = cores * 1000 / (b + d); printf "%.0f/s = %.2f× direct", c, c / dt }') ;; esac
        printf "| PG %s | %s | %s | %s | %.0f | %s / %s | %s | %s | %s | %s | %s | %s |\n" \
          "$ver" "$mode" "$round" "$path" "$tps" "$p50" "$p99" "$m" "$b" "$h" "$p" "$r" "$ceiling"
      done
    done
  done
  stop_proxy "bench-cpu-$ver"; stop_proxy "bench-db-$ver"; stop_proxy "bench-relay-$ver"
done
