#!/usr/bin/env bash
# Soak and load: SESSIONS concurrent sessions through a capturing hindsight, WRITERS of them
# writing (BEGIN; UPDATE; COMMIT, timed), the rest reading, for SECONDS. Reports RSS over time
# (must be flat after warm-up), p50/p99 COMMIT latency and errors (must be 0), and plots
# benches/soak.png (by hand) or $DEV/soak.png.
#   scripts/soak.sh [HINDSIGHT_BIN] [SECONDS] [SESSIONS] [WRITERS]
#   defaults: target/release/hindsight 600 1000 300; scripts/test.sh runs 60 s, 300 sessions.
# Its own PostgreSQL cluster (max_connections 1100) and its own in-memory broker.
source "$(dirname "$0")/common.sh"
bin="${1:-$ROOT/target/release/hindsight}"; secs="${2:-600}"; sessions="${3:-1000}"; writers="${4:-300}"
out="${HSSOAK_OUT:-$DEV/soak}"
pg_port=$((PG15_PORT + 50)); port=$((PROXY_PORT + 150)); admin=$((ADMIN_PORT + 150))
dir="$DEV/soak-pg"; data="$dir/data"
export LD_LIBRARY_PATH="${PG15_BIN%/bin}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
venv="$CACHE/pyenv"
"$venv/bin/python" -c "import asyncpg, matplotlib" 2>/dev/null \
  || "$venv/bin/pip" install -q "asyncpg==0.32.0" "matplotlib==3.10.8" || die "installing asyncpg and matplotlib failed"

cleanup() {
  stop_proxy soak
  [ -f "$data/postmaster.pid" ] && as_pg "$PG15_BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1
  memory_broker stop
  true
}
trap cleanup EXIT
cleanup
ensure_pg_os_user
rm -rf "$dir"; mkdir -p "$dir"; chown "$PG_OS_USER" "$dir"
as_pg "$PG15_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || die "initdb failed"
cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$dir'
max_connections = $((sessions + 100))
shared_buffers = 256MB
fsync = off
synchronous_commit = off
log_min_messages = warning
CONF
as_pg "$PG15_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null || { tail "$dir/server.log"; die "soak PostgreSQL did not start"; }
fresh_memory_broker
ulimit -n 65536 2>/dev/null || true
HINDSIGHT_LOG__LEVEL=warn start_proxy soak "$bin" "$port" "$admin" "$pg_port" --kafka-brokers "127.0.0.1:$MEM" --topic-prefix soak
pid=$(cat "$DEV/soak.pid")
log "soak: $secs s, $sessions sessions, $writers writing, hindsight pid $pid"
"$venv/bin/python" "$ROOT/scripts/soak.py" --port "$port" --pid "$pid" --seconds "$secs" \
  --sessions "$sessions" --writers "$writers" --out "$out"
