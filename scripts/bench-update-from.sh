#!/usr/bin/env bash
# What capturing an UPDATE … FROM costs on PostgreSQL 15, by how its before images are taken
# (src/capture/rewrite.rs): stored by a SET expression in the statement itself, or read first by
# the locking pre-read (`SELECT … FOR UPDATE`, what an UPDATE whose SET assigns only untyped
# literals still gets). The same binary, the same change, side by side: `SET v = 'x'` (pre-read)
# and `SET v = 'x'::text` (SET store), directly and through a capturing hindsight. ROWS (default
# 10,000) rows of a 100,000-row table are updated from a joined table, in a transaction that is
# rolled back (the statement's own cost) and in one that commits (with the publish). Median of
# ROUNDS (default 3) interleaved rounds, milliseconds as psql's \timing reports them.
#   scripts/bench-update-from.sh [ROWS] [ROUNDS]
source "$(dirname "$0")/common.sh"
rows="${1:-10000}"; rounds="${2:-3}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
fresh_memory_broker
log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
bin="$ROOT/target/release/hindsight"
trap 'stop_proxy bench-upd-15; memory_broker stop' EXIT
c="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$c dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_upd" -c "CREATE DATABASE bench_upd"
psql -X -q "$c dbname=bench_upd" \
  -c "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)" \
  -c "INSERT INTO t SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 100000) g" \
  -c "CREATE TABLE s (id int PRIMARY KEY)" \
  -c "INSERT INTO s SELECT g * 7 FROM generate_series(1, $rows) g" \
  -c "VACUUM ANALYZE t, s"
proxy=$((PROXY_PORT + 420))
start_proxy bench-upd-15 "$bin" "$proxy" $((ADMIN_PORT + 420)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "bu15$RANDOM"
# Milliseconds of the UPDATE (rolled back) and of UPDATE + COMMIT, through `port`.
run() { # port set-expression
  local sql="UPDATE t SET v = $2 FROM s WHERE t.id = s.id" out
  out=$(psql -X -q "host=127.0.0.1 port=$1 user=postgres dbname=bench_upd" -v ON_ERROR_STOP=1 \
    -c '\timing on' -c "BEGIN" -c "$sql" -c "ROLLBACK" -c "BEGIN" -c "$sql" -c "COMMIT" 2>&1) \
    || die "UPDATE through port $1 failed: $out"
  echo "$out" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | awk 'NR == 2 { m = $1 } NR == 5 { c = $1 } NR == 6 { printf "%s %s\n", m, c + $1 }'
  psql -X -q "$c dbname=bench_upd" -c "VACUUM t" >/dev/null
}
declare -A res
for r in $(seq 1 "$rounds"); do
  for v in "d:$PG15_PORT:'x'::text" "pre:$proxy:'x'" "set:$proxy:'x'::text"; do
    IFS=: read -r name port expr <<<"$v"
    res[$name]+="$(run "$port" "$expr");"
  done
done
echo "| UPDATE … FROM of $rows rows, PG 15 | direct | capture, pre-read | capture, SET store | pre-read / direct | SET store / direct | SET store / pre-read |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for f in 1 2; do
  label=$([ "$f" = 1 ] && echo "statement (rolled back)" || echo "statement + COMMIT")
  d=$(echo "${res[d]}" | median_field "$f"); p=$(echo "${res[pre]}" | median_field "$f"); s=$(echo "${res[set]}" | median_field "$f")
  awk -v l="$label" -v d="$d" -v p="$p" -v s="$s" \
    'BEGIN { printf "| %s | %.0f ms | %.0f ms | %.0f ms | %.2f× | %.2f× | %.2f |\n", l, d, p, s, p / d, s / d, s / p }'
done
