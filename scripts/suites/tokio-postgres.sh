#!/usr/bin/env bash
# tokio-postgres's own test suite (shipped in its published crate), run directly against
# PostgreSQL 15 and through hindsight; the sets of passing tests must be identical.
# The suite hard-codes port 5433; a copy of it is pointed at each target. Its one Unix-socket test
# (runtime::unix_socket) cannot go through a TCP proxy and is skipped in both runs.
#   scripts/suites/tokio-postgres.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: tokio-postgres.sh HINDSIGHT_BIN}"
port=$((PROXY_PORT + 103)); admin=$((ADMIN_PORT + 103))
ver=$(awk '/^name = "tokio-postgres"/{getline; gsub(/[" ]/,""); sub(/version=/,""); print; exit}' "$ROOT/Cargo.lock")
[ -n "$ver" ] || die "tokio-postgres not found in Cargo.lock"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"tokio-postgres-$ver" 2>/dev/null | head -1)
[ -n "$src" ] || (cd "$ROOT" && cargo fetch -q)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"tokio-postgres-$ver" | head -1)
export CARGO_TARGET_DIR="$CACHE/tokio-postgres-suite-target"

run_suite() {
  local label="$1" p="$2" copy="$DEV/tokio-postgres-suite-$1"
  rm -rf "$copy"; cp -r "$src" "$copy"; chmod -R u+w "$copy"
  sed -i "s/5433/$p/g" "$copy/tests/test/main.rs" "$copy/tests/test/runtime.rs"
  # The copy lives under this repository, whose Cargo.toml is a workspace: it is a workspace
  # of its own.
  printf '\n[workspace]\n' >>"$copy/Cargo.toml"
  # The suite's fixtures (tables, types) are created per test; one thread keeps LISTEN/NOTIFY and
  # advisory-lock tests from racing each other, as upstream's CI does on a fresh server.
  (cd "$copy" && cargo test --all-features --test test -- --skip unix_socket --test-threads=4 2>&1) >"$DEV/tokio-postgres-suite-$label.log" || true
  sed -nE 's/^test (.+) \.\.\. (ok|FAILED|ignored)$/\1 \2/p' "$DEV/tokio-postgres-suite-$label.log" | sort
}

# The suite's type tests need these contrib extensions in the "postgres" database.
psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG15_PORT user=postgres dbname=postgres" \
  -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS hstore" \
  -c "CREATE EXTENSION IF NOT EXISTS citext" -c "CREATE EXTENSION IF NOT EXISTS ltree"
start_proxy suite-tokio-postgres "$bin" "$port" "$admin" "$PG15_PORT"
trap 'stop_proxy suite-tokio-postgres' EXIT
log "building and running tokio-postgres $ver's test suite (directly, then through hindsight)"
run_suite direct "$PG15_PORT" >"$DEV/tokio-postgres-suite-direct.summary"
run_suite proxied "$port" >"$DEV/tokio-postgres-suite-proxied.summary"
d="$DEV/tokio-postgres-suite-direct.summary"; p="$DEV/tokio-postgres-suite-proxied.summary"
total=$(wc -l <"$d"); ok_d=$(grep -c ' ok$' "$d" || true); ok_p=$(grep -c ' ok$' "$p" || true)
if [ "$total" -gt 100 ] && diff -u "$d" "$p"; then
  echo "ok      tokio-postgres $ver test suite: $ok_p/$total pass through hindsight, $ok_d/$total directly (unix_socket skipped)"
else
  echo "FAILED  tokio-postgres $ver test suite: $ok_p/$total pass through hindsight, $ok_d/$total directly"
  grep -A30 "^failures:" "$DEV/tokio-postgres-suite-proxied.log" | head -60
  exit 1
fi
