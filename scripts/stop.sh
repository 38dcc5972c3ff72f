#!/usr/bin/env bash
# Stops everything the dev/test scripts started in this checkout.
source "$(dirname "$0")/common.sh"
for pidf in "$DEV/hindsight.pid" "$DEV/archive.pid" "$DEV/pgbouncer/pgbouncer.pid"; do
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then kill "$(cat "$pidf")"; fi
  rm -f "$pidf"
done
bash "$ROOT/scripts/kafka.sh" stop
[ -d "$DEV/pg15/data" ] && bash "$ROOT/scripts/pg.sh" stop 15
[ -d "$DEV/pg18/data" ] && bash "$ROOT/scripts/pg.sh" stop 18
log "stopped"
