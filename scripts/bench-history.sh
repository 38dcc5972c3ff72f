#!/usr/bin/env bash
# The history archive's benchmark (BENCHMARKS.md "History"), on a fresh in-memory broker:
#   1. bytes per event: pgbench TPC-B (prepared, 4 clients, PGBENCH_SECONDS) through a capturing
#      proxy, archived with `archive --once`; store bytes / events;
#   2. ingest: BULK_ROWS row updates through the capturing proxy (10 transactions), then
#      `archive --once` timed: events/s, archiver CPU and peak memory, broker CPU;
#   3. questions over SYNTH_EVENTS synthetic pgbench-like events (history/examples/synth.rs, a
#      1,000,000-row snapshot of pgbench_accounts + TPC-B transactions over 24 hours from 10
#      applications): who-changed one row, one application's changes in one hour, table-as-of
#      of the 1,000,000-row table; wall time and peak memory of each (/usr/bin/time).
#   scripts/bench-history.sh [SYNTH_EVENTS (default 10000000)]
source "$(dirname "$0")/common.sh"
synth_events="${1:-10000000}"
bulk_rows="${BULK_ROWS:-200000}"
pgbench_seconds="${PGBENCH_SECONDS:-20}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
log "building hindsight and hindsight-history (release)"
(cd "$ROOT" && cargo build --release --quiet -p hindsight --bin hindsight && cargo build --release --quiet -p hindsight-history --bins --examples)
bin="$ROOT/target/release/hindsight"; hist="$ROOT/target/release/hindsight-history"
synth="$ROOT/target/release/examples/synth"
out="$DEV/bench-history"; rm -rf "$out"; mkdir -p "$out"
fresh_memory_broker
trap 'stop_proxy bench-history; memory_broker stop' EXIT
broker="127.0.0.1:$MEM"
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
port=$((PROXY_PORT + 500))
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" \
  -c "DROP DATABASE IF EXISTS bench_history" -c "CREATE DATABASE bench_history"
start_proxy bench-history "$bin" "$port" $((ADMIN_PORT + 500)) "$PG15_PORT" --log-level warn \
  --kafka-brokers "$broker" --topic-prefix bh
through="host=127.0.0.1 port=$port user=postgres dbname=bench_history"
broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }   # user+sys seconds (USER_HZ 100)

# archive_once NAME PREFIX STORE: archive --once, timed; prints "wall cpu maxrss_kb events"
archive_once() {
  local b0; b0=$(cpu_of "$broker_pid")
  /usr/bin/time -f "%e %U %S %M" -o "$out/$1.time" "$hist" archive --once --store "$3" \
    --kafka-brokers "$broker" --topic-prefix "$2" >"$out/$1-archive.log" 2>"$out/$1.err" \
    || { cat "$out/$1.err"; die "archive --once failed ($1)"; }
  local b1; b1=$(cpu_of "$broker_pid")
  local events; events=$(sed -nE 's/^archived ([0-9]+) event.*/\1/p' "$out/$1-archive.log")
  read -r wall user sys rss <"$out/$1.time"
  echo "$wall $(echo "$user + $sys" | bc) $rss $events $(echo "$b1 - $b0" | bc)"
}

log "1. pgbench TPC-B through capture for ${pgbench_seconds}s"
pgbench -i -q -s 1 "$direct dbname=bench_history" >/dev/null 2>&1
pgbench -n -M prepared -c 4 -j 2 -T "$pgbench_seconds" "$through" >"$out/pgbench.log" 2>&1 || die "pgbench failed"
sleep 1
read -r w1 c1 r1 e1 b1 < <(archive_once pgbench bh "$out/store-pgbench")
bytes=$(du -sb "$out/store-pgbench/events" | cut -f1); tbytes=$(du -sb "$out/store-pgbench/transactions" | cut -f1)

log "2. ingest: $bulk_rows row updates through capture"
psql -X -q "$direct dbname=bench_history" -c "CREATE TABLE bulk (id int PRIMARY KEY, v text, n numeric)" \
  -c "INSERT INTO bulk SELECT g, md5(g::text), g FROM generate_series(1, $bulk_rows) g"
for k in 0 1 2 3 4 5 6 7 8 9; do
  psql -X -q "$through application_name=bulk" -c "UPDATE bulk SET n = n + 1 WHERE id % 10 = $k" >/dev/null || die "bulk update failed"
done
read -r w2 c2 r2 e2 b2 < <(archive_once bulk bh "$out/store-bulk")

log "3. $synth_events synthetic events"
/usr/bin/time -f "%e %M" -o "$out/synth.time" "$synth" "$out/store-synth" "$synth_events" 1000000 24 >"$out/synth.log" 2>"$out/synth.err" \
  || { tail "$out/synth.err"; die "synth failed"; }
read -r sw sr <"$out/synth.time"
sbytes=$(du -sb "$out/store-synth" | cut -f1)
now=$(date -u +%s)
# The middle hour of the 24: one application's changes in it.
since=$(date -u -d "@$((now - 13 * 3600))" +%Y-%m-%dT%H:%M:%SZ); until=$(date -u -d "@$((now - 12 * 3600))" +%Y-%m-%dT%H:%M:%SZ)
at=$(date -u -d "@$((now + 60))" +%Y-%m-%dT%H:%M:%SZ)
# ask NAME ARGS…: wall, peak RSS (kB), rows of one question over the synthetic store
ask() {
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$hist" history --store "$out/store-synth" "$@" >"$out/$name.out" 2>"$out/$name.err" \
    || { tail "$out/$name.err"; die "history $name failed"; }
  read -r w r <"$out/$name.time"
  echo "$w $r $(wc -l <"$out/$name.out")"
}
read -r qw1 qr1 qn1 < <(ask who --json who-changed --table public.pgbench_accounts --key '{"aid": 12345}')
read -r qw2 qr2 qn2 < <(ask window --json changes --application app-3 --since "$since" --until "$until")
read -r qw3 qr3 qn3 < <(ask asof table-as-of --table public.pgbench_accounts --at "$at")

cat <<TXT

| measure | result |
|---|---|
| pgbench TPC-B through capture (${pgbench_seconds} s): events archived | $e1 in ${w1} s |
| bytes per event, events table (real pgbench events) | $((bytes / e1)) B ($((  (bytes + tbytes) / e1 )) B with transactions) |
| ingest, $e2 events ($bulk_rows row updates) | $(echo "scale=0; $e2 / $w2" | bc) events/s (wall ${w2} s; archiver CPU ${c2} s, peak ${r2} kB; broker CPU ${b2} s) |
| synthetic store: $synth_events events | written in ${sw} s, $((sbytes / synth_events)) B per event, peak ${sr} kB |
| who-changed one row (over $synth_events) | ${qw1} s, peak ${qr1} kB, $qn1 rows |
| one application's changes in one hour | ${qw2} s, peak ${qr2} kB, $qn2 rows |
| table-as-of, 1,000,000-row table | ${qw3} s, peak ${qr3} kB, $qn3 rows |
TXT
