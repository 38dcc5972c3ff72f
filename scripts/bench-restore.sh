#!/usr/bin/env bash
# What a restore costs: N changes (default 100,000) made through a capturing proxy on PG 15 in
# 10 transactions (and 1 % as many on a second table by another application), then `hindsight
# restore` of all of them — dry run (read the topics + plan + check every row), then plan +
# apply — and a dry run selecting only the other application's 1 % — timed, with peak memory
# (RSS) of each run. With a second
# binary (e.g. a build of an older commit), both restore their own copy of the same workload, one
# after the other in the same run, for a before/after table.
#   scripts/bench-restore.sh [CHANGES (default 100000)] [OTHER_BIN]
source "$(dirname "$0")/common.sh"
n="${1:-100000}"
other="${2:-}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/kafka.sh" start >/dev/null
log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
bin="$ROOT/target/release/hindsight"
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_restore" -c "CREATE DATABASE bench_restore"
psql -X -q "$direct dbname=bench_restore" -c "CREATE TABLE bench (id int PRIMARY KEY, v text, n numeric, t timestamptz)" \
  -c "CREATE TABLE bench_small (LIKE bench INCLUDING ALL)"
small=$((n / 100))
seed="INSERT INTO bench SELECT g, md5(g::text), g * 1.5, '2026-01-01 00:00:00+00' FROM generate_series(1, $n) g"
checksum() { psql -X -tA "$direct dbname=bench_restore" -c "SELECT md5(string_agg(b::text, ',' ORDER BY id)) FROM bench b"; }
port=$((PROXY_PORT + 400))
trap 'stop_proxy bench-restore' EXIT

# workload PREFIX: a fresh table, then N changes through the capturing proxy on topics PREFIX.*
workload() {
  psql -X -q "$direct dbname=bench_restore" -c "TRUNCATE bench, bench_small" -c "$seed" \
    -c "INSERT INTO bench_small SELECT * FROM bench WHERE id <= $small"
  checksum >"$DEV/bench-restore.before"
  start_proxy bench-restore "$bin" "$port" $((ADMIN_PORT + 400)) "$PG15_PORT" --log-level warn \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "$1"
  local start; start=$(date +%s.%N)
  for k in 0 1 2 3 4 5 6 7 8 9; do
    psql -X -q "host=127.0.0.1 port=$port user=postgres dbname=bench_restore application_name=bulk-job" \
      -c "UPDATE bench SET v = NULL, n = n + 1 WHERE id % 10 = $k" || die "workload failed"
  done
  psql -X -q "host=127.0.0.1 port=$port user=postgres dbname=bench_restore application_name=small-job" \
    -c "UPDATE bench_small SET v = NULL" || die "workload failed"
  stop_proxy bench-restore
  log "workload: $n changes in 10 transactions through the capturing proxy in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
}

# measure BIN PREFIX LABEL SELECTED ARGS…: one restore, its wall time and peak RSS.
measure() {
  local b="$1" prefix="$2" label="$3" selected="$4"; shift 4
  /usr/bin/time -f "%e %M" -o "$DEV/bench-restore.time" "$b" restore --kafka-brokers "127.0.0.1:$KAFKA_PORT" \
    --topic-prefix "$prefix" --target "$direct dbname=bench_restore" "$@" \
    >"$DEV/bench-restore-$label.out" 2>"$DEV/bench-restore-$label.err" || die "restore $label failed: $(tail -3 "$DEV/bench-restore-$label.err")"
  read -r secs kb <"$DEV/bench-restore.time"
  echo "| $b | $label | $((n + small)) | $selected | $secs s | $((kb / 1024)) MiB | $((kb * 1024 / (n + small))) B | $((kb * 1024 / selected)) B |"
}

echo "| binary | run | changes read | selected | wall time | peak RSS | peak RSS / change read | / change selected |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for b in $other "$bin"; do
  prefix="benchrestore$RANDOM"
  log "topic prefix: $prefix"
  workload "$prefix" >&2
  measure "$b" "$prefix" "dry run, 1 % selected" "$small" --application small-job
  measure "$b" "$prefix" "dry run (read + plan + check)" "$n" --application bulk-job
  measure "$b" "$prefix" "plan + apply" "$n" --application bulk-job --apply
  [ "$(cat "$DEV/bench-restore.before")" = "$(checksum)" ] || die "$b: the restored table differs from the table before the workload"
done
echo
echo "each restored table identical to the table before its workload (md5 of every row)"
