#!/usr/bin/env bash
# PostgreSQL's own regression suite (pg_regress installcheck, parallel schedule) run directly
# against PostgreSQL 15, through hindsight relay-only, and through hindsight capturing every
# write to the broker. Relay-only: every result file identical to the direct run's (and every
# test passes). Capturing: every result file identical except the tests listed, with the reason,
# in pg-regress-capture-known.txt — a new difference fails, and so does a listed test that now
# matches (the list must stay true). Sources come from Debian's deb-src for the server version.
#   scripts/suites/pg-regress.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: pg-regress.sh HINDSIGHT_BIN}"
port=$((PROXY_PORT + 102)); admin=$((ADMIN_PORT + 102))
ver=$(dpkg-query -W -f='${Version}' postgresql-15) || die "postgresql-15 is not installed"
work="$CACHE/pg-regress-$ver"

fetch_sources() {
  [ -f "$work/ready" ] && return
  log "fetching PostgreSQL $ver sources for pg_regress (once, cached in $work)"
  rm -rf "$work"; mkdir -p "$work/apt/lists/partial" "$work/src"
  local mirror sec
  mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  mirror="${mirror:-http://deb.debian.org/debian}"; sec="${mirror%/debian}/debian-security"
  cat >"$work/apt/sources.list" <<SRC
deb-src $mirror bookworm main
deb-src $mirror bookworm-updates main
deb-src $sec bookworm-security main
SRC
  local aptopts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$work/apt/lists")
  apt-get "${aptopts[@]}" -qq update 2>&1 | grep -v "unsandboxed" >&2 || true
  (cd "$work/src" && apt-get "${aptopts[@]}" -qq source --download-only "postgresql-15=$ver" 2>&1 | grep -v unsandboxed >&2 || true)
  (cd "$work/src" && tar xf postgresql-15_*.orig.tar.* && { apt-get download -qq "postgresql-server-dev-15=$ver" 2>&1 | grep -v unsandboxed >&2 || true; } && dpkg -x postgresql-server-dev-15_*.deb dev)
  local pgsrc; pgsrc=$(ls -d "$work"/src/postgresql-15.*/ | head -1)
  ln -sfn "$pgsrc/src/test/regress" "$work/regress"
  # regress.so is the suite's C helper library; build it against the server's own headers.
  mkdir -p "$work/dlpath"
  local inc="$work/src/dev/usr/include/postgresql/15/server"
  gcc -fPIC -shared -O2 -I"$inc" -o "$work/dlpath/regress.so" "$work/regress/regress.c" \
    || die "building regress.so failed"
  ln -sf /usr/lib/postgresql/15/lib/autoinc.so "$work/dlpath/autoinc.so"
  ln -sf /usr/lib/postgresql/15/lib/refint.so "$work/dlpath/refint.so"
  touch "$work/ready"
}

# Run the parallel schedule against PORT; print one "name status" line per test to $out/summary.
run_regress() {
  local label="$1" p="$2"
  local out="$DEV/pg-regress-$label"
  rm -rf "$out"; mkdir -p "$out"; chown -R "$PG_OS_USER" "$out"; chmod o+rx "$work" "$work"/src "$work"/src/* 2>/dev/null || true
  # Both runs use the database "regression" (expected outputs name it); pg_regress recreates it.
  as_pg /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
    --inputdir="$work/regress" --outputdir="$out" --bindir=/usr/lib/postgresql/15/bin \
    --dlpath="$work/dlpath" --host=127.0.0.1 --port="$p" --user=postgres \
    --schedule="$work/regress/parallel_schedule" >"$out/stdout.log" 2>&1 || true
  sed -nE 's/^(test )? *([A-Za-z0-9_.]+) +\.\.\. +(ok|FAILED|failed \(ignored\)).*/\2 \3/p' "$out/stdout.log" | sort >"$out/summary"
}

fetch_sources
[ -x /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress ] || die "pg_regress not found (package postgresql-15 ships it in lib/pgxs)"
cport=$((PROXY_PORT + 103)); cadmin=$((ADMIN_PORT + 103))
bash "$ROOT/scripts/kafka.sh" start >/dev/null
start_proxy suite-regress "$bin" "$port" "$admin" "$PG15_PORT"
start_proxy suite-regress-capture "$bin" "$cport" "$cadmin" "$PG15_PORT" \
  --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "regress$RANDOM"
trap 'stop_proxy suite-regress; stop_proxy suite-regress-capture' EXIT
run_regress direct "$PG15_PORT"
run_regress proxied "$port"
run_regress captured "$cport"
d="$DEV/pg-regress-direct/summary"; total=$(wc -l <"$d"); passed_direct=$(grep -c ' ok$' "$d" || true)
status=0
# Tests whose output files differ from the direct run's (compared with the direct run, not only
# with the expected files).
differing() {
  { diff -r -q "$DEV/pg-regress-direct/results" "$DEV/pg-regress-$1/results" 2>&1 || true; } |
    sed -nE 's#^Files .*/results/([^ ]+)\.out and .*#\1#p; s#^Only in .*: ([^ ]+)\.out$#\1#p' | sort -u
}
p="$DEV/pg-regress-proxied/summary"; passed=$(grep -c ' ok$' "$p" || true)
if [ "$total" -gt 200 ] && grep -q "All $total tests passed" "$DEV/pg-regress-proxied/stdout.log" && diff -u "$d" "$p" \
   && [ -z "$(differing proxied)" ]; then
  echo "ok      pg_regress parallel schedule (relay-only): $passed/$total pass through hindsight, $passed_direct/$total directly, same output files"
else
  echo "FAILED  pg_regress (relay-only): $passed/$total pass through hindsight, $passed_direct/$total directly"
  echo "        see $DEV/pg-regress-proxied/{stdout.log,regression.diffs}"
  tail -30 "$DEV/pg-regress-proxied/stdout.log"
  status=1
fi
known="$ROOT/scripts/suites/pg-regress-capture-known.txt"
sed -nE 's/^([a-z0-9_]+) .*/\1/p' "$known" | sort -u >"$DEV/pg-regress-captured/known"
differing captured >"$DEV/pg-regress-captured/differing"
new=$(comm -13 "$DEV/pg-regress-captured/known" "$DEV/pg-regress-captured/differing")
fixed=$(comm -23 "$DEV/pg-regress-captured/known" "$DEV/pg-regress-captured/differing")
same=$((total - $(wc -l <"$DEV/pg-regress-captured/differing")))
if [ "$total" -gt 200 ] && [ -z "$new" ] && [ -z "$fixed" ]; then
  echo "ok      pg_regress parallel schedule (capturing): $same/$total output files identical to the direct run; the $(wc -l <"$DEV/pg-regress-captured/known") that differ are the known gaps in $(basename "$known")"
else
  echo "FAILED  pg_regress (capturing): $same/$total output files identical to the direct run"
  if [ -n "$new" ]; then echo "        new differences (see $DEV/pg-regress-captured/regression.diffs): $(echo $new)"; fi
  if [ -n "$fixed" ]; then echo "        listed as different but now identical (remove from $(basename "$known")): $(echo $fixed)"; fi
  status=1
fi
if [ -n "$(curl -s "http://127.0.0.1:$cadmin/metrics" | awk '/^hindsight_audit_events_total/{print $2}')" ]; then
  echo "        capture run published $(curl -s "http://127.0.0.1:$cadmin/metrics" | awk '/^hindsight_audit_events_total/{print $2}') events"
fi
exit $status
