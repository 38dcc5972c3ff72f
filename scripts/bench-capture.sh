#!/usr/bin/env bash
# What capture costs: pgbench TPC-B-like (3 UPDATEs, 1 INSERT, 1 SELECT per transaction, scale 10),
# side by side in one run: directly; directly with a row-level PL/pgSQL audit trigger on all four
# tables (the common alternative); through hindsight relay-only; through hindsight capturing to
# the broker (fresh tansu with sqlite storage, and tansu in memory, the latter also with one produce
# request in flight); and capturing with 50 gate rules.
#   scripts/bench-capture.sh [SECONDS_PER_RUN (default 10)]
source "$(dirname "$0")/common.sh"
secs="${1:-10}"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
bash "$ROOT/scripts/pg.sh" start 18 >/dev/null
# Both brokers start empty, so runs compare (the dev broker on $KAFKA_PORT keeps every test's
# topics, and tansu on sqlite slows down as its database grows).
MEM_KAFKA_PORT=$((KAFKA_PORT + 1))
SQL_KAFKA_PORT=$((KAFKA_PORT + 2))
brokers() {
  HSDEV_KAFKA_STORAGE=memory HSDEV_KAFKA_PORT=$MEM_KAFKA_PORT bash "$ROOT/scripts/kafka.sh" "$1" >/dev/null
  HSDEV_KAFKA_STORAGE=sqlite HSDEV_KAFKA_PORT=$SQL_KAFKA_PORT bash "$ROOT/scripts/kafka.sh" "$1" >/dev/null
}
brokers stop
rm -rf "$DEV/kafka-memory-$MEM_KAFKA_PORT" "$DEV/kafka-sqlite-$SQL_KAFKA_PORT"
brokers start
trap 'brokers stop' EXIT
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
trigger_sql=$(audit_trigger_sql)
# One produce request in flight: concurrent transactions' records share requests.
inflight1="$DEV/bench-inflight1.toml"
printf '[kafka.librdkafka]\n"max.in.flight.requests.per.connection" = "1"\n' >"$inflight1"
echo "| server | query mode | clients | direct | audit trigger | relay-only | capture (sqlite broker) | capture (memory broker) | capture (memory broker, 1 in flight) | capture + 50 rules | trigger / direct | capture / direct | capture / trigger | capture-mem / direct | capture-mem / trigger | capture-mem-1 / direct | capture-mem-1 / trigger |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for ver in 15 18; do
  pgport=$PG15_PORT; [ "$ver" = 18 ] && pgport=$PG18_PORT
  direct="host=127.0.0.1 port=$pgport user=postgres"
  for db in bench_capture bench_trigger; do
    psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    pgbench -q -i -s 10 "$direct dbname=$db" >/dev/null 2>&1 || die "pgbench -i failed on PG $ver ($db)"
  done
  psql -X -q -v ON_ERROR_STOP=1 "$direct dbname=bench_trigger" -c "$trigger_sql" || die "audit trigger setup failed on PG $ver"
  relay=$((PROXY_PORT + 300)); cap=$((PROXY_PORT + 301)); gated=$((PROXY_PORT + 302)); capm=$((PROXY_PORT + 303)); capm1=$((PROXY_PORT + 304))
  start_proxy bench-relay "$bin" "$relay" $((ADMIN_PORT + 300)) "$pgport" --log-level warn
  start_proxy bench-capture "$bin" "$cap" $((ADMIN_PORT + 301)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$SQL_KAFKA_PORT" --topic-prefix "bench$ver$RANDOM"
  start_proxy bench-gates "$bin" "$gated" $((ADMIN_PORT + 302)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$SQL_KAFKA_PORT" --topic-prefix "benchg$ver$RANDOM" --rules "$rules"
  start_proxy bench-capture-mem "$bin" "$capm" $((ADMIN_PORT + 303)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM_KAFKA_PORT" --topic-prefix "benchm$ver$RANDOM"
  start_proxy bench-capture-mem1 "$bin" "$capm1" $((ADMIN_PORT + 304)) "$pgport" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM_KAFKA_PORT" --topic-prefix "benchm1$ver$RANDOM" -c "$inflight1"
  for mode in simple prepared; do
    for c in 1 8; do
      run() { pgbench -n -M "$mode" -c "$c" -j "$c" -T "$secs" "host=127.0.0.1 port=$1 user=postgres dbname=${2:-bench_capture}" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p' || true; }
      d=$(run "$pgport"); t=$(run "$pgport" bench_trigger); r=$(run "$relay")
      k=$(run "$cap"); m=$(run "$capm"); m1=$(run "$capm1"); g=$(run "$gated")
      [ -n "$d" ] && [ -n "$t" ] && [ -n "$r" ] && [ -n "$k" ] && [ -n "$m" ] && [ -n "$m1" ] && [ -n "$g" ] ||
        die "a pgbench run produced no result (PG $ver, $mode, $c clients)"
      awk -v v="$ver" -v mo="$mode" -v c="$c" -v d="$d" -v t="$t" -v r="$r" -v k="$k" -v m="$m" -v m1="$m1" -v g="$g" \
        'BEGIN { printf "| PG %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", v, mo, c, d, t, r, k, m, m1, g, t/d, k/d, k/t, m/d, m/t, m1/d, m1/t }'
    done
  done
  stop_proxy bench-relay; stop_proxy bench-capture; stop_proxy bench-gates; stop_proxy bench-capture-mem; stop_proxy bench-capture-mem1
done
