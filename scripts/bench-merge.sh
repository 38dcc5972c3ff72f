#!/usr/bin/env bash
# What capturing a MERGE costs on PostgreSQL 15 (pre-read + counted MERGE + post-read, see
# src/capture/merge.rs) next to PostgreSQL 18 (RETURNING old/new): a bulk MERGE of ROWS source
# rows (default 10,000; half update existing rows, a quarter delete, a quarter insert) into a
# 100,000-row table, side by side, directly and through a capturing hindsight, on both servers.
# Each MERGE runs in a transaction that is rolled back (the statement's own cost, no publish)
# and then in one that commits (one change event per row published before COMMIT). Median of
# ROUNDS (default 3) interleaved rounds, milliseconds as psql's \timing reports them.
#   scripts/bench-merge.sh [ROWS] [ROUNDS]
source "$(dirname "$0")/common.sh"
rows="${1:-10000}"; rounds="${2:-3}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
fresh_memory_broker
log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
bin="$ROOT/target/release/hindsight"
trap 'stop_proxy bench-merge-15; stop_proxy bench-merge-18; memory_broker stop' EXIT
setup() { # port
  local c="host=127.0.0.1 port=$1 user=postgres"
  psql -X -q "$c dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_merge" -c "CREATE DATABASE bench_merge"
  psql -X -q "$c dbname=bench_merge" \
    -c "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)" \
    -c "INSERT INTO t SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 100000) g" \
    -c "CREATE TABLE s (id int PRIMARY KEY, v text, op int)" \
    -c "INSERT INTO s SELECT CASE WHEN g % 4 = 3 THEN 200000 + g ELSE g * 7 END, 'new' || g, g % 4 FROM generate_series(1, $rows) g" \
    -c "VACUUM ANALYZE t, s"
}
setup "$PG15_PORT"; setup "$PG18_PORT"
start_proxy bench-merge-15 "$bin" $((PROXY_PORT + 410)) $((ADMIN_PORT + 410)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "bm15$RANDOM"
start_proxy bench-merge-18 "$bin" $((PROXY_PORT + 411)) $((ADMIN_PORT + 411)) "$PG18_PORT" --log-level warn \
  --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "bm18$RANDOM"
merge="MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.op = 2 THEN DELETE WHEN MATCHED THEN UPDATE SET v = s.v, n = t.n + 1 WHEN NOT MATCHED THEN INSERT (id, v, n) VALUES (s.id, s.v, 0)"
# Milliseconds of the MERGE (rolled back) and of MERGE + COMMIT, through `port`; then the
# table is put back directly through `server`.
run() {
  local out
  out=$(psql -X -q "host=127.0.0.1 port=$1 user=postgres dbname=bench_merge" -v ON_ERROR_STOP=1 \
    -c '\timing on' -c "BEGIN" -c "$merge" -c "ROLLBACK" -c "BEGIN" -c "$merge" -c "COMMIT" 2>&1) \
    || die "MERGE through port $1 failed: $out"
  echo "$out" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | awk 'NR == 2 { m = $1 } NR == 5 { c = $1 } NR == 6 { printf "%s %s\n", m, c + $1 }'
  psql -X -q "host=127.0.0.1 port=$2 user=postgres dbname=bench_merge" -v ON_ERROR_STOP=1 \
    -c "DELETE FROM t WHERE id > 200000" -c "UPDATE t SET v = md5(id::text), n = id * 1.5 WHERE v LIKE 'new%'" \
    -c "INSERT INTO t SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING" \
    -c "VACUUM t" >/dev/null || die "putting the table back failed"
}
declare -A res
for r in $(seq 1 "$rounds"); do
  for v in d15:$PG15_PORT:$PG15_PORT c15:$((PROXY_PORT + 410)):$PG15_PORT d18:$PG18_PORT:$PG18_PORT c18:$((PROXY_PORT + 411)):$PG18_PORT; do
    IFS=: read -r name port server <<<"$v"
    res[$name]+="$(run "$port" "$server");"
  done
done
echo "| server | MERGE of $rows rows (rolled back), direct | through capture | ratio | MERGE + COMMIT, direct | through capture | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for pg in 15 18; do
  d1=$(echo "${res[d$pg]}" | median_field 1); c1=$(echo "${res[c$pg]}" | median_field 1)
  d2=$(echo "${res[d$pg]}" | median_field 2); c2=$(echo "${res[c$pg]}" | median_field 2)
  awk -v pg="$pg" -v d1="$d1" -v c1="$c1" -v d2="$d2" -v c2="$c2" \
    'BEGIN { printf "| PG %s | %.0f ms | %.0f ms | %.1f× | %.0f ms | %.0f ms | %.1f× |\n", pg, d1, c1, c1 / d1, d2, c2, c2 / d2 }'
done
