#!/usr/bin/env bash
# Side-by-side throughput benchmark: pgbench select-only (scale 10), -M simple and -M prepared,
# 1 and 8 clients, against PostgreSQL 15 directly, PgBouncer (session mode) and hindsight (release
# build), interleaved round-robin in one run so machine noise hits all three alike; the median of
# the rounds is reported. Then the resident memory of hindsight holding 1,000 idle sessions.
#   scripts/bench.sh [SECONDS_PER_RUN (default 10)] [ROUNDS (default 3)]
# Prints a Markdown table (paste into BENCHMARKS.md).
source "$(dirname "$0")/common.sh"
secs="${1:-10}"; rounds="${2:-3}"
port=$((PROXY_PORT + 200)); admin=$((ADMIN_PORT + 200))
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/pg.sh" start 15
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"

# 1,000 idle sessions need 1,000 upstream backends.
if [ "$(psql -X -tA "$direct dbname=postgres" -c 'SHOW max_connections')" -lt 1100 ]; then
  psql -X -q "$direct dbname=postgres" -c "ALTER SYSTEM SET max_connections = 1200"
  bash "$ROOT/scripts/pg.sh" stop 15; bash "$ROOT/scripts/pg.sh" start 15
fi
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
pgbench -q -i -s 10 "$direct dbname=bench" >/dev/null 2>&1 || die "pgbench -i failed"

log "building hindsight (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hindsight)
start_proxy bench-hindsight "$ROOT/target/release/hindsight" "$port" "$admin" "$PG15_PORT" --log-level warn
# PgBouncer in session mode, as the PostgreSQL OS user (it refuses to run as root).
pgb="$DEV/pgbouncer"; mkdir -p "$pgb"
cat >"$pgb/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG15_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
auth_type = trust
auth_file = $pgb/users.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 50
logfile = $pgb/pgbouncer.log
pidfile = $pgb/pgbouncer.pid
INI
echo '"postgres" ""' >"$pgb/users.txt"; chown -R "$PG_OS_USER" "$pgb"
[ -f "$pgb/pgbouncer.pid" ] && kill "$(cat "$pgb/pgbouncer.pid")" 2>/dev/null && sleep 0.5
as_pg pgbouncer -d -q "$pgb/pgbouncer.ini" || die "pgbouncer did not start (log: $pgb/pgbouncer.log)"
trap 'stop_proxy bench-hindsight; [ -f "$pgb/pgbouncer.pid" ] && kill "$(cat "$pgb/pgbouncer.pid")" 2>/dev/null' EXIT
sleep 0.5

declare -A target=([direct]=$PG15_PORT [pgbouncer]=$PGBOUNCER_PORT [hindsight]=$port)
declare -A tps
for r in $(seq 1 "$rounds"); do
  for mode in simple prepared; do
    for c in 1 8; do
      for t in direct pgbouncer hindsight; do
        v=$(pgbench -n -S -M "$mode" -c "$c" -j "$c" -T "$secs" "host=127.0.0.1 port=${target[$t]} user=postgres dbname=bench" 2>&1 \
            | sed -nE 's/^tps = ([0-9.]+).*/\1/p' || true)
        [ -n "$v" ] || die "pgbench against $t produced no result"
        tps[$mode,$c,$t]="${tps[$mode,$c,$t]:-} $v"
        log "round $r: $mode c=$c $t: $v tps"
      done
    done
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo
echo "| query mode | clients | direct TPS | PgBouncer TPS | hindsight TPS | hindsight / direct | hindsight / PgBouncer |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for mode in simple prepared; do
  for c in 1 8; do
    d=$(median <<<"${tps[$mode,$c,direct]}"); b=$(median <<<"${tps[$mode,$c,pgbouncer]}"); h=$(median <<<"${tps[$mode,$c,hindsight]}")
    awk -v m="$mode" -v c="$c" -v d="$d" -v b="$b" -v h="$h" \
      'BEGIN { printf "| %s | %d | %.0f | %.0f | %.0f | %.2f | %.2f |\n", m, c, d, b, h, h/d, h/b }'
  done
done

# Resident memory with 1,000 idle client sessions (each authenticated and has run one query).
pid=$(cat "$DEV/bench-hindsight.pid")
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
before=$(rss_kib "$pid")
venv="$CACHE/pyenv"; [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import asyncpg" 2>/dev/null || "$venv/bin/pip" install -q "asyncpg==0.32.0"
fifo="$DEV/bench-idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
"$venv/bin/python" - "$port" 1000 >"$fifo" <<'PY' &
import asyncio, sys
import asyncpg
async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    conns = []
    for _ in range(n // 50):
        batch = await asyncio.gather(*(asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="bench") for _ in range(50)))
        conns.extend(batch)
    for c in conns:
        await c.fetchval("SELECT 1")
    print(len(conns), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
holder=$!
read -r opened <"$fifo"
sleep 2
after=$(rss_kib "$pid")
kill "$holder" 2>/dev/null; rm -f "$fifo"
echo
awk -v n="$opened" -v a="$after" -v b="$before" 'BEGIN { printf "hindsight resident memory: %.1f MiB with %d idle sessions (%.1f MiB before they connected)\n", a/1024, n, b/1024 }'
