#!/usr/bin/env bash
# The chaos suite: concurrent clients write through capture (both protocols, explicit
# transactions, autocommit, savepoints, rollbacks, dropped connections) while faults are
# injected at random; afterwards the topics and the database are checked (tests/chaos.rs).
#   scripts/suites/chaos.sh HINDSIGHT_BIN [SECONDS] [ROUTING]  (scripts/test.sh: 45 s, and 30 s
#   with ROUTING = database; by hand: 600). ROUTING is the proxy's kafka.topic_routing.
# Its own servers, so faults touch nothing else: a PostgreSQL 15 cluster with
# synchronous_commit = on (the dev servers run without it, and a crash would then lose
# commits the server had acknowledged, which no proxy can prevent), and an in-memory tansu
# that advertises a fault relay's port (so cutting the relay cuts hindsight from the broker).
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: chaos.sh HINDSIGHT_BIN [SECONDS]}"
secs="${2:-45}"
export HSCHAOS_ROUTING="${3:-table}"
# HSCHAOS_OFFSET moves ports and directory, so a long run by hand can go beside scripts/test.sh.
# HSCHAOS_TEST_BIN runs a prebuilt suite (target/debug/deps/chaos-*) instead of building it,
# so repeated runs by hand can go on while the tree changes.
off="${HSCHAOS_OFFSET:-40}"
pg_port=$((PG15_PORT + off)); broker_port=$((KAFKA_PORT + off)); relay_port=$((KAFKA_PORT + off + 1))
dir="$DEV/chaos"; [ "$off" = 40 ] || dir="$DEV/chaos-$off"
# Each routing keeps its own logs: scripts/test.sh runs both, and the second must not overwrite
# the first's proxy log when the first failed.
[ "$HSCHAOS_ROUTING" = table ] || dir="$dir-$HSCHAOS_ROUTING"
data="$dir/pg"; logf="$dir/pg.log"
export LD_LIBRARY_PATH="${PG15_BIN%/bin}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cleanup() {
  # Left over from a run that was killed, the files may name processes long gone: never fatal.
  if [ -f "$dir/tansu.pid" ]; then
    kill -CONT "$(cat "$dir/tansu.pid")" 2>/dev/null && kill "$(cat "$dir/tansu.pid")" 2>/dev/null || true
  fi
  if [ -f "$data/postmaster.pid" ]; then
    as_pg "$PG15_BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
cleanup
ensure_pg_os_user
rm -rf "$dir"; mkdir -p "$dir"; chown "$PG_OS_USER" "$dir"
as_pg "$PG15_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log"; die "initdb failed"; }
cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$dir'
max_connections = 100
fsync = on
synchronous_commit = on
log_min_messages = warning
CONF
as_pg "$PG15_BIN/pg_ctl" -D "$data" -l "$logf" -w -t 60 start >/dev/null || { tail -20 "$logf"; die "chaos PostgreSQL did not start"; }

bash "$ROOT/scripts/install-tansu.sh"
(cd "$dir" && exec nohup "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$broker_port" \
   --advertised-listener-url "tcp://127.0.0.1:$relay_port" --storage-engine "memory://chaos/" >"$dir/tansu.log" 2>&1) &
echo $! >"$dir/tansu.pid"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null && break; sleep 0.1; done

export HSCHAOS_SECS="$secs" HSCHAOS_BIN="$bin" HSCHAOS_PG_PORT="$pg_port" HSCHAOS_PG_DATA="$data" \
  HSCHAOS_PG_CTL="$PG15_BIN/pg_ctl" HSCHAOS_PG_LOG="$logf" HSCHAOS_PG_USER="$PG_OS_USER" \
  HSCHAOS_BROKER_PORT="$broker_port" HSCHAOS_RELAY_PORT="$relay_port" \
  HSCHAOS_BROKER_PID="$(cat "$dir/tansu.pid")" HSCHAOS_DIR="$dir"
cd "$ROOT"
run_suite() {
  if [ -n "${HSCHAOS_TEST_BIN:-}" ]; then "$HSCHAOS_TEST_BIN" --ignored --nocapture
  else cargo test --quiet --workspace --test chaos -- --ignored --nocapture; fi
}
if run_suite 2>&1 | tee "$dir/run.log"; then
  echo "ok      chaos ($HSCHAOS_ROUTING topics): $(grep -h '^chaos summary' "$dir/run.log" | tail -1)"
else
  echo "FAILED  chaos (log: $dir/run.log; proxy logs in $dir)"
  exit 1
fi
