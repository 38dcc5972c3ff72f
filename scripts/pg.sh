#!/usr/bin/env bash
# Scratch PostgreSQL servers for development and tests, each as an unprivileged OS user on its own port.
#   scripts/pg.sh start 15|18   initdb if needed, start (idempotent), create the test roles
#   scripts/pg.sh stop  15|18
#   scripts/pg.sh url   15|18   print the superuser connection URL
# pg_hba: trust for postgres; one role per auth method (pass_user/md5_user/scram_user, password
# "password"), ssl_user only over TLS. The server has TLS on with the certificate from certs.sh.
source "$(dirname "$0")/common.sh"
cmd="${1:-}"; ver="${2:-15}"
case "$ver" in
  15) bin="$PG15_BIN"; port="$PG15_PORT" ;;
  18) bin="$PG18_BIN"; port="$PG18_PORT" ;;
  *) die "unknown PostgreSQL major '$ver' (use 15 or 18)" ;;
esac
data="$DEV/pg$ver/data"; sock="$DEV/pg$ver/sock"; logf="$DEV/pg$ver/server.log"
export LD_LIBRARY_PATH="${bin%/bin}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

running() { [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

psql_super() {
  # PG 18 from npm ships no psql: the Debian psql (15) client talks to it fine.
  PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$port user=postgres dbname=postgres" "$@"
}

init() {
  ensure_pg_os_user
  bash "$ROOT/scripts/certs.sh"
  mkdir -p "$DEV/pg$ver"
  chown "$PG_OS_USER" "$DEV/pg$ver"
  chmod o+x "$DEV" "$ROOT" 2>/dev/null || true
  log "initdb PostgreSQL $ver in $data"
  as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DEV/pg$ver/initdb.log" 2>&1 \
    || { cat "$DEV/pg$ver/initdb.log"; die "initdb failed for PostgreSQL $ver"; }
  install -o "$PG_OS_USER" -m 600 "$DEV/certs/server.key" "$data/server.key"
  install -o "$PG_OS_USER" -m 644 "$DEV/certs/server.crt" "$data/server.crt"
  install -o "$PG_OS_USER" -m 644 "$DEV/certs/ca.crt" "$data/ca.crt"
  cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
max_connections = 300
ssl = on
fsync = off
synchronous_commit = off
full_page_writes = off
max_prepared_transactions = 10
log_min_messages = warning
CONF
  mkdir -p "$sock"; chown "$PG_OS_USER" "$sock" "$data"/*.conf
}

write_hba() {
  cat >"$data/pg_hba.conf" <<HBA
local   all all                    trust
hostssl all ssl_user  127.0.0.1/32 trust
host    all ssl_user  127.0.0.1/32 reject
host    all pass_user 127.0.0.1/32 password
host    all md5_user  127.0.0.1/32 md5
host    all scram_user 127.0.0.1/32 scram-sha-256
host    all all       127.0.0.1/32 trust
host    all all       ::1/128      trust
host    replication all 127.0.0.1/32 trust
HBA
  chown "$PG_OS_USER" "$data/pg_hba.conf"
}

start() {
  [ -x "$bin/postgres" ] || die "PostgreSQL $ver binaries not found in $bin (run scripts/install-deps.sh / install-pg18.sh)"
  [ -f "$data/PG_VERSION" ] || init
  write_hba
  if running; then
    as_pg "$bin/pg_ctl" -D "$data" reload >/dev/null
    log "PostgreSQL $ver already running on port $port"
  else
    as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t 60 start >/dev/null \
      || { tail -20 "$logf"; die "PostgreSQL $ver did not start (log: $logf)"; }
    log "PostgreSQL $ver running on 127.0.0.1:$port"
  fi
  psql_super <<'SQL'
SET client_min_messages = warning;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pass_user') THEN
    SET password_encryption = 'scram-sha-256'; CREATE ROLE pass_user PASSWORD 'password' LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'md5_user') THEN
    SET password_encryption = 'md5'; CREATE ROLE md5_user PASSWORD 'password' LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scram_user') THEN
    SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user PASSWORD 'password' LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ssl_user') THEN
    CREATE ROLE ssl_user LOGIN; END IF;
END $$;
SQL
}

stop() {
  if running; then as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null; log "PostgreSQL $ver stopped"; fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  url) echo "postgres://postgres@127.0.0.1:$port/postgres" ;;
  *) die "usage: scripts/pg.sh start|stop|url 15|18" ;;
esac
