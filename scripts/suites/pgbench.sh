#!/usr/bin/env bash
# pgbench through hindsight: every query mode and a \startpipeline script must run with zero failed
# transactions, and the data pgbench leaves behind must be the same as after a direct run.
#   scripts/suites/pgbench.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: pgbench.sh HINDSIGHT_BIN}"
port=$((PROXY_PORT + 100)); admin=$((ADMIN_PORT + 100))
db=suite_pgbench
export PGOPTIONS="-c client_min_messages=warning"
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
proxied="host=127.0.0.1 port=$port user=postgres"

psql -X -q "$direct dbname=postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
pgbench -q -i -s 1 "$direct dbname=$db" >/dev/null 2>&1 || die "pgbench -i failed"
start_proxy suite-pgbench "$bin" "$port" "$admin" "$PG15_PORT"
trap 'stop_proxy suite-pgbench' EXIT

pipeline="$DEV/suite-pgbench-pipeline.sql"
cat >"$pipeline" <<'SQL'
\set aid random(1, 100000)
\set delta random(-5000, 5000)
\startpipeline
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
\endpipeline
SQL

failed=0
run() {
  local label="$1"; shift
  local out
  if out=$(pgbench -n "$@" 2>&1) && grep -q "number of failed transactions: 0" <<<"$out"; then
    printf 'ok      pgbench %s: %s\n' "$label" "$(grep -o 'tps = [0-9.]*' <<<"$out" | head -1)"
  else
    printf 'FAILED  pgbench %s\n%s\n' "$label" "$out"; failed=$((failed + 1))
  fi
}
for mode in simple extended prepared; do
  run "-M $mode tpcb-like" -M "$mode" -c 4 -j 2 -t 300 "$proxied dbname=$db"
  run "-M $mode select-only" -M "$mode" -S -c 4 -j 2 -t 1000 "$proxied dbname=$db"
done
run "-M extended \\startpipeline" -M extended -c 4 -j 2 -t 300 -f "$pipeline" "$proxied dbname=$db"
run "-M prepared \\startpipeline" -M prepared -c 4 -j 2 -t 300 -f "$pipeline" "$proxied dbname=$db"

# The same through a capturing proxy (every change published before COMMIT), all three
# protocols: PostgreSQL 15 (UPDATE capture uses the locking pre-read; extended and prepared
# through a companion prepared statement) and PostgreSQL 18 (RETURNING old/new).
cport=$((PROXY_PORT + 104)); cadmin=$((ADMIN_PORT + 104))
start_proxy suite-pgbench-capture "$bin" "$cport" "$cadmin" "$PG15_PORT" --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "suite$RANDOM"
trap 'stop_proxy suite-pgbench; stop_proxy suite-pgbench-capture' EXIT
for mode in simple extended prepared; do
  run "capture PG15 -M $mode tpcb-like" -M "$mode" -c 4 -j 2 -t 100 "host=127.0.0.1 port=$cport user=postgres dbname=$db"
done
events=$(curl -s "http://127.0.0.1:$cadmin/metrics" | awk '/^hindsight_audit_events_total/{print $2}')
if [ "${events:-0}" -ge 4800 ]; then echo "ok      capture PG15: $events change events published for 1200 transactions"
else echo "FAILED  capture PG15: only ${events:-0} change events for 1200 transactions (want >= 4800)"; failed=$((failed + 1)); fi

# Every pgbench transaction adds one history row and moves the same delta in all three balance
# tables, so the sums must agree if nothing was lost or duplicated on the way.
check=$(psql -X -tA "$direct dbname=$db" -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)")
if [ "$check" = t ]; then echo "ok      pgbench data consistency (sum of balances = sum of history deltas)"
else echo "FAILED  pgbench data consistency: balances and history disagree"; failed=$((failed + 1)); fi
psql -X -q "$direct dbname=postgres" -c "DROP DATABASE IF EXISTS $db"

direct18="host=127.0.0.1 port=$PG18_PORT user=postgres"
psql -X -q "$direct18 dbname=postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
pgbench -q -i -s 1 "$direct18 dbname=$db" >/dev/null 2>&1 || die "pgbench -i failed on PG 18"
start_proxy suite-pgbench-capture "$bin" "$cport" "$cadmin" "$PG18_PORT" --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "suite$RANDOM"
for mode in simple extended prepared; do
  run "capture PG18 -M $mode tpcb-like" -M "$mode" -c 4 -j 2 -t 100 "host=127.0.0.1 port=$cport user=postgres dbname=$db"
done
check=$(psql -X -tA "$direct18 dbname=$db" -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)")
if [ "$check" = t ]; then echo "ok      capture PG18 data consistency"
else echo "FAILED  capture PG18 data consistency"; failed=$((failed + 1)); fi
psql -X -q "$direct18 dbname=postgres" -c "DROP DATABASE IF EXISTS $db"
exit $((failed > 0))
