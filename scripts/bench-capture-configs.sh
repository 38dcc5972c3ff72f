#!/usr/bin/env bash
# Capture's cost under several binaries or configurations, one after another in one run:
# pgbench TPC-B-like, prepared, scale 10, on PostgreSQL 15, each variant against a fresh
# in-memory tansu. For each: commits/s, CPU ms per committed transaction of hindsight, of
# the broker and of PostgreSQL (postmaster and every backend, read a second after pgbench ends,
# once its backends have exited and been reaped; /proc), and the time a COMMIT waits beyond the
# brokers' acknowledgement
# (p50 / p99 bucket bounds of capture_commit_after_ack_seconds).
#   scripts/bench-capture-configs.sh SECONDS CLIENTS NAME=BIN:CONFIG...
# e.g. scripts/bench-capture-configs.sh 10 8 base=/tmp/hs-old:/dev/null in1=/tmp/hs-new:inflight1.toml
# (CONFIG is a hindsight config file; /dev/null for the defaults). HSBENCH_MODE=simple runs
# pgbench's simple protocol (values in the text) instead of prepared statements.
source "$(dirname "$0")/common.sh"
mode="${HSBENCH_MODE:-prepared}"
secs="${1:?usage: bench-capture-configs.sh SECONDS CLIENTS NAME=BIN:CONFIG...}"; clients="${2:?clients}"; shift 2
[ "$#" -gt 0 ] || die "name at least one variant: NAME=BIN:CONFIG"
bash "$ROOT/scripts/pg.sh" start 15 >/dev/null
trap 'stop_proxy bench-configs; memory_broker stop >/dev/null' EXIT
direct="host=127.0.0.1 port=$PG15_PORT user=postgres"
psql -X -q "$direct dbname=postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_configs" -c "CREATE DATABASE bench_configs"
pgbench -q -i -s 10 "$direct dbname=bench_configs" >/dev/null 2>&1 || die "pgbench -i failed"
ticks_of() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
# utime + stime with the reaped children's, of a process and its live children, in clock ticks.
tree_ticks() {
  local total; total=$(awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat")
  for child in $(pgrep -P "$1"); do
    total=$((total + $(awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$child/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
postmaster=$(head -1 "$DEV/pg15/data/postmaster.pid")
hz=$(getconf CLK_TCK)
port=$((PROXY_PORT + 391)); admin=$((ADMIN_PORT + 391))
url="host=127.0.0.1 port=$port user=postgres dbname=bench_configs"
# p50 and p99 (upper bucket bounds, ms) of the after-ack histogram between two scrapes.
after_ack() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def buckets(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r'\S*commit_after_ack_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
bounds = sorted(b, key=lambda k: float("inf") if k == "+Inf" else float(k))
total = b.get("+Inf", 0) - a.get("+Inf", 0)
def q(x):
    for k in bounds:
        if b[k] - a.get(k, 0) >= x * total:
            return "≤ %.3f" % (float(k) * 1000) if k != "+Inf" else "> 100"
print("%s / %s" % (q(0.5), q(0.99)) if total else "– / –")
PY
}
echo "| variant ($mode) | clients | commits/s | hindsight ms/txn | broker ms/txn | PostgreSQL ms/txn | COMMIT after ack p50 / p99 ms |"
echo "|---|---:|---:|---:|---:|---:|---|"
for v in "$@"; do
  name=${v%%=*}; spec=${v#*=}; bin=${spec%%:*}; cfg=${spec#*:}
  [ -x "$bin" ] || die "variant $name: $bin is not an executable"
  fresh_memory_broker >/dev/null
  broker_pid=$(cat "$DEV/kafka-memory-$MEM/tansu.pid")
  start_proxy bench-configs "$bin" "$port" "$admin" "$PG15_PORT" --config "$cfg" --log-level warn \
    --kafka-brokers "127.0.0.1:$MEM" --topic-prefix "cfg$RANDOM"
  pid=$(cat "$DEV/bench-configs.pid")
  pgbench -n -M "$mode" -c "$clients" -j "$clients" -T 3 "$url" >/dev/null 2>&1  # warm-up
  sleep 1  # the warm-up's backends exit and are reaped
  h0=$(ticks_of "$pid"); b0=$(ticks_of "$broker_pid"); p0=$(tree_ticks "$postmaster"); s0=$(curl -s "http://127.0.0.1:$admin/metrics")
  tps=$(pgbench -n -M "$mode" -c "$clients" -j "$clients" -T "$secs" "$url" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
  [ -n "$tps" ] || die "pgbench produced no result ($name)"
  h1=$(ticks_of "$pid"); b1=$(ticks_of "$broker_pid"); s1=$(curl -s "http://127.0.0.1:$admin/metrics")
  sleep 1  # pgbench's backends exit and are reaped: their time moves to the postmaster
  p1=$(tree_ticks "$postmaster")
  awk -v n="$name" -v c="$clients" -v t="$tps" -v s="$secs" -v hz="$hz" -v h=$((h1 - h0)) -v b=$((b1 - b0)) -v p=$((p1 - p0)) -v l="$(after_ack "$s0" "$s1")" \
    'BEGIN { k = 1000 / hz / (t * s); printf "| %s | %d | %.0f | %.3f | %.3f | %.3f | %s |\n", n, c, t, h * k, b * k, p * k, l }'
  stop_proxy bench-configs
done
