#!/usr/bin/env bash
# What one open transaction holds in hindsight's memory until its COMMIT (issue 27, target 4):
# BEGIN; UPDATE of N rows (`id int PRIMARY KEY, v text` of 100 characters); then hindsight's
# RSS is read before the COMMIT, and compared with the row-image bytes the server sent for
# the UPDATE (its before and after images, as `to_jsonb` text). Also the peak RSS (VmHWM)
# after COMMIT, which adds the published records in librdkafka's queue.
#   scripts/bench-txn-memory.sh [ROWS (default 300000)] [BIN...]   (several binaries: one after another)
source "$(dirname "$0")/common.sh"
rows="${1:-300000}"; shift || true
[ "$#" -gt 0 ] || set -- "$(bench_binary)"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
fresh_memory_broker >/dev/null
trap 'stop_proxy bench-mem; memory_broker stop >/dev/null' EXIT
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_mem" -c "CREATE DATABASE bench_mem"
psql -X -q -v ON_ERROR_STOP=1 "$direct dbname=bench_mem" \
  -c "CREATE TABLE big (id int PRIMARY KEY, v text)" \
  -c "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, $rows) g" >/dev/null
# Bytes of the images the UPDATE's rows come back with: before and after, as to_jsonb text.
image_bytes=$(psql -X -At "$direct dbname=bench_mem" -c \
  "SELECT sum(octet_length(to_jsonb(b)::text) + octet_length(to_jsonb(b)::text) + 1) FROM big b")
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
echo "| binary | rows | image bytes sent (MB) | RSS before BEGIN (MB) | RSS before COMMIT (MB) | held / sent | peak RSS after COMMIT (MB) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
port=$((PROXY_PORT + 393)); admin=$((ADMIN_PORT + 393))
for bin in "$@"; do
  start_proxy bench-mem "$bin" "$port" "$admin" "$PG15_PORT" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "mem$RANDOM"
  pid=$(cat "$DEV/bench-mem.pid")
  # Warm up (topics created, table cached) with a one-row transaction.
  psql -X -q "host=127.0.0.1 port=$port user=postgres dbname=bench_mem" -c "UPDATE big SET v = v WHERE id = 1" >/dev/null
  r0=$(kib "$pid" VmRSS)
  out=$(psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$port user=postgres dbname=bench_mem" <<SQL
BEGIN;
UPDATE big SET v = v || 'y';
\! awk '\$1 == "VmRSS:" { print "held", \$2 }' /proc/$pid/status
COMMIT;
SQL
) || die "the transaction failed through $bin: $out"
  r1=$(echo "$out" | awk '$1 == "held" { print $2 }')
  peak=$(kib "$pid" VmHWM)
  awk -v b="$bin" -v n="$rows" -v s="$image_bytes" -v r0="$r0" -v r1="$r1" -v p="$peak" 'BEGIN {
    printf "| %s | %d | %.1f | %.1f | %.1f | %.2f× | %.1f |\n", b, n, s / 1e6, r0 * 1024 / 1e6, r1 * 1024 / 1e6, (r1 - r0) * 1024 / s, p * 1024 / 1e6 }'
  stop_proxy bench-mem
done
