#!/usr/bin/env bash
# README command 1: a complete local setup on a fresh machine. Installs what is missing, starts
# PostgreSQL 15 with the demo schema, the Kafka-compatible broker, and hindsight in front of
# PostgreSQL, then prints how to connect; then builds and starts the history archiver in the
# background (scripts/history-up.sh). Idempotent: run it again and it reuses what is running.
source "$(dirname "$0")/common.sh"
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/pg.sh" start 15
bash "$ROOT/scripts/kafka.sh" start

psql -X -q "host=127.0.0.1 port=$PG15_PORT user=postgres dbname=postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='demo'" | grep -q 1 \
  || psql -X -q "host=127.0.0.1 port=$PG15_PORT user=postgres dbname=postgres" -c "CREATE DATABASE demo"
psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG15_PORT user=postgres dbname=demo" -f "$ROOT/schema/demo.sql"

log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet)
bin="$ROOT/target/release/hindsight"
pidf="$DEV/hindsight.pid"; logf="$DEV/hindsight.log"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "restarting hindsight with the fresh build"; kill "$(cat "$pidf")"; sleep 1
fi
# Footprints on, learning (switch an application with `hindsight footprint mode APP alert`).
HINDSIGHT_FOOTPRINTS__ENABLED=true HINDSIGHT_IN_DOUBT__DATABASE="host=127.0.0.1 port=$PG15_PORT user=postgres dbname=postgres" nohup "$bin" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$PG15_PORT" \
  --kafka-brokers "127.0.0.1:$KAFKA_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" >"$logf" 2>&1 & echo $! >"$pidf"
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$pidf")" 2>/dev/null || { cat "$logf"; die "hindsight exited during start (log: $logf)"; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || die "hindsight is not ready (log: $logf)"

cat <<TXT

hindsight is running in front of PostgreSQL 15.

  Connect:   psql "postgres://postgres@127.0.0.1:$PROXY_PORT/demo"
  Directly:  psql "postgres://postgres@127.0.0.1:$PG15_PORT/demo"   (bypasses hindsight)
  Metrics:   curl http://127.0.0.1:$ADMIN_PORT/metrics
  Broker:    127.0.0.1:$KAFKA_PORT (tansu, Kafka protocol); audit topics hindsight.<schema>.<table>
  Footprints (learning): $bin footprint list --kafka-brokers 127.0.0.1:$KAFKA_PORT
  Follow:    $bin tail --kafka-brokers 127.0.0.1:$KAFKA_PORT --alerts
  Log:       $logf
  Stop all:  scripts/stop.sh

The history archiver is being built and started now (scripts/history-up.sh; its log:
$DEV/history-up.log). The proxy above works meanwhile.
TXT
# The history side last: its cold build is the long part, and the proxy is already usable.
nohup bash "$ROOT/scripts/history-up.sh" >"$DEV/history-up.log" 2>&1 &
