#!/usr/bin/env bash
# Two hindsight binaries side by side: pgbench TPC-B-like (scale 10, 8 clients) on PostgreSQL 15
# directly, through capture with binary A, through capture with binary B, alternating, two
# rounds per query mode, against a fresh in-memory broker. For measuring one change.
#   scripts/bench-capture-ab.sh BIN_A BIN_B [SECONDS_PER_RUN (default 10)]
# e.g. git worktree add /tmp/a <rev> && (cd /tmp/a && cargo build --release) then
#   scripts/bench-capture-ab.sh /tmp/a/target/release/hindsight target/release/hindsight
source "$(dirname "$0")/common.sh"
a="${1:?usage: bench-capture-ab.sh BIN_A BIN_B [SECONDS]}"; b="${2:?usage: bench-capture-ab.sh BIN_A BIN_B [SECONDS]}"
secs="${3:-10}"
[ -x "$a" ] && [ -x "$b" ] || die "bench-capture-ab.sh: $a or $b is not an executable hindsight binary"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
fresh_memory_broker
trap 'stop_proxy bench-ab-a; stop_proxy bench-ab-b; memory_broker stop' EXIT
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_ab" -c "CREATE DATABASE bench_ab"
pgbench -q -i -s 10 "$direct dbname=bench_ab" >/dev/null 2>&1 || die "pgbench -i failed"
pa=$((PROXY_PORT + 310)); pb=$((PROXY_PORT + 311))
start_proxy bench-ab-a "$a" "$pa" $((ADMIN_PORT + 310)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "aba$RANDOM"
start_proxy bench-ab-b "$b" "$pb" $((ADMIN_PORT + 311)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "abb$RANDOM"
run() { pgbench -n -M "$2" -c 8 -j 8 -T "$secs" "host=127.0.0.1 port=$1 user=postgres dbname=bench_ab" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p'; }
echo "| round | mode | direct | capture, A | capture, B | A / direct | B / direct | B / A |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for round in 1 2; do
  for mode in simple prepared; do
    d=$(run "$PG15_PORT" "$mode"); x=$(run "$pa" "$mode"); y=$(run "$pb" "$mode")
    [ -n "$d" ] && [ -n "$x" ] && [ -n "$y" ] || die "a pgbench run produced no result ($mode, round $round)"
    awk -v r="$round" -v m="$mode" -v d="$d" -v a="$x" -v b="$y" \
      'BEGIN { printf "| %d | %s | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f |\n", r, m, d, a, b, a/d, b/d, b/a }'
  done
done
