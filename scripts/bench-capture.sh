#!/usr/bin/env bash
# What capture costs: pgbench TPC-B-like (3 UPDATEs, 1 INSERT, 1 SELECT per transaction, scale 10)
# directly, through hindsight relay-only, and through hindsight with capture publishing every
# change to the broker (tansu, sqlite storage) before COMMIT. Side by side in one run.
#   scripts/bench-capture.sh [SECONDS_PER_RUN (default 10)]
source "$(dirname "$0")/common.sh"
secs="${1:-10}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
bash "$ROOT/scripts/kafka.sh" start >/dev/null
log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
bin="$ROOT/target/release/hindsight"
# 50 gate rules, none of which refuses pgbench: 40 statement rules (tables, columns,
# applications, tags, flags) and 10 CEL guards on pgbench_accounts rows, checked at COMMIT.
rules="$DEV/bench-rules.toml"
: >"$rules"
for i in $(seq 0 39); do
  printf '[[rule]]\nname = "r%d"\ntables = ["app%d.*", "public.t%d"]\ncolumns = ["c%d"]\noperations = ["update", "delete"]\napplications = ["svc%d"]\nrequire_flag = "f%d"\n\n' "$i" "$i" "$i" "$i" "$i" $((i % 5)) >>"$rules"
done
for i in $(seq 0 9); do
  printf '[[rule]]\nname = "g%d"\ntables = ["public.pgbench_accounts"]\nwhen = '"'"'after.abalance < -1000000000 - %d'"'"'\n\n' "$i" "$i" >>"$rules"
done
for i in $(seq 0 4); do printf '[flags.f%d]\npercentage = 10\n\n' "$i" >>"$rules"; done
"$ROOT/target/release/hindsight" rules check "$rules" >/dev/null || die "benchmark rules file invalid"
echo "| server | query mode | clients | direct TPS | relay-only TPS | capture TPS | capture + 50 rules TPS | capture / direct | rules / capture | events/s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for ver in 15 18; do
  pgport=$PG15_PORT; [ "$ver" = 18 ] && pgport=$PG18_PORT
  direct="host=127.0.0.1 port=$pgport user=postgres"
  psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_capture" -c "CREATE DATABASE bench_capture"
  pgbench -q -i -s 10 "$direct dbname=bench_capture" >/dev/null 2>&1 || die "pgbench -i failed on PG $ver"
  relay=$((PROXY_PORT + 300)); cap=$((PROXY_PORT + 301))
  start_proxy bench-relay "$bin" "$relay" $((ADMIN_PORT + 300)) "$pgport" --log-level warn
  start_proxy bench-capture "$bin" "$cap" $((ADMIN_PORT + 301)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "bench$ver$RANDOM"
  gated=$((PROXY_PORT + 302))
  start_proxy bench-gates "$bin" "$gated" $((ADMIN_PORT + 302)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "benchg$ver$RANDOM" --rules "$rules"
  modes="simple prepared"
  for mode in $modes; do
    for c in 1 8; do
      run() { pgbench -n -M "$mode" -c "$c" -j "$c" -T "$secs" "host=127.0.0.1 port=$1 user=postgres dbname=bench_capture" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p' || true; }
      d=$(run "$pgport"); r=$(run "$relay")
      before=$(curl -s "http://127.0.0.1:$((ADMIN_PORT + 301))/metrics" | awk '/^hindsight_audit_events_total/{print $2}')
      k=$(run "$cap")
      after=$(curl -s "http://127.0.0.1:$((ADMIN_PORT + 301))/metrics" | awk '/^hindsight_audit_events_total/{print $2}')
      g=$(run "$gated")
      [ -n "$d" ] && [ -n "$r" ] && [ -n "$k" ] && [ -n "$g" ] || die "a pgbench run produced no result (PG $ver, $mode, $c clients)"
      awk -v v="$ver" -v m="$mode" -v c="$c" -v d="$d" -v r="$r" -v k="$k" -v g="$g" -v e="$((after - before))" -v s="$secs" \
        'BEGIN { printf "| PG %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.0f |\n", v, m, c, d, r, k, g, k/d, g/k, e/s }'
    done
  done
  stop_proxy bench-relay; stop_proxy bench-capture; stop_proxy bench-gates
done
