#!/usr/bin/env bash
# The history side of README command 1: builds hindsight-history (release; the query engine
# makes this the long part of a cold build) and starts the archiver in the background, archiving
# the dev broker's `hindsight.*` topics into $DEV/history. Idempotent; scripts/dev-up.sh runs it
# after the proxy is up, so nobody waits for it to use the proxy.
#   scripts/history-up.sh            build, then (re)start the archiver
source "$(dirname "$0")/common.sh"
store="$DEV/history"
pidf="$DEV/archive.pid"; logf="$DEV/archive.log"
log "building hindsight-history (release; cold: about 30 minutes on 2 cores, see README)"
(cd "$ROOT" && cargo build --release --quiet -p hindsight-history) \
  || die "building hindsight-history failed (the proxy keeps running)"
bin="$ROOT/target/release/hindsight-history"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "restarting the archiver with the fresh build"; kill "$(cat "$pidf")"; sleep 1
fi
nohup "$bin" archive --store "$store" --kafka-brokers "127.0.0.1:$KAFKA_PORT" \
  --resolve-database "host=127.0.0.1 port=$PG15_PORT user=postgres dbname=demo" \
  >"$logf" 2>&1 & echo $! >"$pidf"
for _ in $(seq 1 50); do
  grep -q "archive: started" "$logf" 2>/dev/null && break
  kill -0 "$(cat "$pidf")" 2>/dev/null || { cat "$logf"; die "the archiver exited during start (log: $logf)"; }
  sleep 0.2
done
grep -q "archive: started" "$logf" || die "the archiver did not start within 10 s (log: $logf)"
cat <<TXT

The archiver is running: the audit topics go into $store (Delta Lake).

  Ask:       $ROOT/target/release/hindsight history --store $store summary --application psql
             $ROOT/target/release/hindsight history --store $store who-changed --table public.brieff --key '{"bfkey": 1}'
  Log:       $logf
TXT
