#!/usr/bin/env bash
# The cost of a cascading DELETE through capture vs direct: one parent row per transaction
# (autocommit, pgbench, 1 client, simple and prepared), its N child rows removed by ON DELETE
# CASCADE (N = 0, 10, 100), on PostgreSQL 15 and 18, to a fresh in-memory tansu. A table with
# no referencing key ("no FK") is the capture baseline: the difference is the two cascade reads.
#   scripts/bench-cascade.sh [TRANSACTIONS_PER_RUN (default 400)]
# HSBENCH_BIN=path runs that binary instead of building target/release/hindsight.
source "$(dirname "$0")/common.sh"
txns="${1:-400}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
fresh_memory_broker
trap 'stop_proxy bench-cascade-15; stop_proxy bench-cascade-18; memory_broker stop' EXIT
bin=$(bench_binary)
script="$DEV/bench-cascade.pgbench"
cat >"$script" <<'SQL'
SELECT nextval('parent_seq') AS id \gset
DELETE FROM parent WHERE id = :id;
SQL

# A fresh parent (and child) table: $txns + 10 parents with $2 children each ($2 = nofk: no
# referencing table at all).
seed() {
  local conn="$1" children="$2"
  local child="CREATE TABLE child (id bigserial PRIMARY KEY, pid int REFERENCES parent ON DELETE CASCADE, v text);
    INSERT INTO child (pid, v) SELECT p, 'child of ' || p FROM generate_series(1, $((txns + 10))) p, generate_series(1, $children) c;
    CREATE INDEX ON child (pid);"
  [ "$children" = nofk ] && child=""
  psql -X -q "$conn" -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "seeding failed ($conn)"
SET client_min_messages = warning;
DROP TABLE IF EXISTS child, parent; DROP SEQUENCE IF EXISTS parent_seq;
CREATE TABLE parent (id int PRIMARY KEY, v text);
INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, $((txns + 10))) g;
CREATE SEQUENCE parent_seq;
$child
VACUUM ANALYZE;
SQL
}

echo "| server | protocol | children per parent | direct ms/txn | capture ms/txn | capture / direct |"
echo "|---|---|---:|---:|---:|---:|"
for ver in 15 18; do
  port_var="PG${ver}_PORT"; port=${!port_var}
  direct="host=127.0.0.1 port=$port user=postgres"
  psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_cascade" -c "CREATE DATABASE bench_cascade" >/dev/null
  proxy_port=$((PROXY_PORT + 340 + ver)); admin_port=$((ADMIN_PORT + 340 + ver))
  start_proxy "bench-cascade-$ver" "$bin" "$proxy_port" "$admin_port" "$port" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "cascade$ver$RANDOM"
  for mode in simple prepared; do
    for children in nofk 0 10 100; do
      declare -A ms=()
      for path in direct capture; do
        target=$port; [ "$path" = capture ] && target=$proxy_port
        seed "$direct dbname=bench_cascade" "$children"
        lat=$(pgbench -n -M "$mode" -c 1 -t "$txns" -f "$script" "host=127.0.0.1 port=$target user=postgres dbname=bench_cascade" 2>&1 \
          | sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p')
        [ -n "$lat" ] || die "pgbench produced no result ($path, $mode, $children, PostgreSQL $ver)"
        ms[$path]=$lat
      done
      label=$children; [ "$children" = nofk ] && label="no FK"
      ratio=$(awk -v c="${ms[capture]}" -v d="${ms[direct]}" 'BEGIN { printf "%.2f", c / d }')
      printf "| PG %s | %s | %s | %s | %s | %s× |\n" "$ver" "$mode" "$label" "${ms[direct]}" "${ms[capture]}" "$ratio"
    done
  done
  stop_proxy "bench-cascade-$ver"
done
