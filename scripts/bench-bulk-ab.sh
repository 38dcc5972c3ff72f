#!/usr/bin/env bash
# Two hindsight binaries side by side on bulk writes, where the size of the row images matters:
# on PostgreSQL 15 and 18, an UPDATE of ROWS (default 20,000) rows of a 100,000-row table with a
# 200-character text column, directly, through capture with binary A and with binary B, in a
# transaction rolled back (the statement's own cost) and in one that commits (with the publish
# to a fresh in-memory broker). Median of ROUNDS (default 3) interleaved rounds, milliseconds as
# psql's \timing reports them. For measuring one change to the capture SQL.
#   scripts/bench-bulk-ab.sh BIN_A BIN_B [ROWS] [ROUNDS]
source "$(dirname "$0")/common.sh"
a="${1:?usage: bench-bulk-ab.sh BIN_A BIN_B [ROWS] [ROUNDS]}"; b="${2:?usage: bench-bulk-ab.sh BIN_A BIN_B [ROWS] [ROUNDS]}"
rows="${3:-20000}"; rounds="${4:-3}"
[ -x "$a" ] && [ -x "$b" ] || die "bench-bulk-ab.sh: $a or $b is not an executable hindsight binary"
fresh_memory_broker
trap 'for v in 15 18; do stop_proxy bench-bulk-a$v; stop_proxy bench-bulk-b$v; done; memory_broker stop' EXIT
sql="UPDATE t SET n = n + 1 WHERE id % 5 = 0 AND id <= $((rows * 5))"
# Milliseconds of the UPDATE (rolled back) and of UPDATE + COMMIT, through `port`.
run() { # port
  local out
  out=$(psql -X -q "host=127.0.0.1 port=$1 user=postgres dbname=bench_bulk" -v ON_ERROR_STOP=1 \
    -c '\timing on' -c "BEGIN" -c "$sql" -c "ROLLBACK" -c "BEGIN" -c "$sql" -c "COMMIT" 2>&1) \
    || die "UPDATE through port $1 failed: $out"
  echo "$out" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | awk 'NR == 2 { m = $1 } NR == 5 { c = $1 } NR == 6 { printf "%s %s\n", m, c + $1 }'
}
echo "| server | $rows rows | direct | capture, A | capture, B | A / direct | B / direct | B / A |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for v in 15 18; do
  bash "$ROOT/scripts/pg.sh" start "$v" >/dev/null
  port_var="PG${v}_PORT"; pg="${!port_var}"
  c="host=127.0.0.1 port=$pg user=postgres"
  psql -X -q "$c dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_bulk" -c "CREATE DATABASE bench_bulk"
  psql -X -q "$c dbname=bench_bulk" \
    -c "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, seen timestamptz)" \
    -c "INSERT INTO t SELECT g, repeat(md5(g::text), 6) || 'é€', g * 1.5, now() FROM generate_series(1, 100000) g" \
    -c "VACUUM ANALYZE t"
  pa=$((PROXY_PORT + 330 + v)); pb=$((PROXY_PORT + 350 + v))
  start_proxy "bench-bulk-a$v" "$a" "$pa" $((ADMIN_PORT + 330 + v)) "$pg" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "bba$RANDOM"
  start_proxy "bench-bulk-b$v" "$b" "$pb" $((ADMIN_PORT + 350 + v)) "$pg" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "bbb$RANDOM"
  declare -A res=()
  for _ in $(seq 1 "$rounds"); do
    for x in "d:$pg" "a:$pa" "b:$pb"; do
      res[${x%%:*}]+="$(run "${x#*:}");"
      psql -X -q "$c dbname=bench_bulk" -c "VACUUM t" >/dev/null
    done
  done
  for f in 1 2; do
    label=$([ "$f" = 1 ] && echo "statement (rolled back)" || echo "statement + COMMIT")
    d=$(echo "${res[d]}" | median_field "$f"); x=$(echo "${res[a]}" | median_field "$f"); y=$(echo "${res[b]}" | median_field "$f")
    awk -v s="PG $v" -v l="$label" -v d="$d" -v a="$x" -v b="$y" \
      'BEGIN { printf "| %s | %s | %.0f ms | %.0f ms | %.0f ms | %.2f× | %.2f× | %.2f |\n", s, l, d, a, b, a / d, b / d, b / a }'
  done
  stop_proxy "bench-bulk-a$v"; stop_proxy "bench-bulk-b$v"
done
