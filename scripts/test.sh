#!/usr/bin/env bash
# README command 2: the whole test suite, from a fresh machine. Installs and starts what the tests
# need (PostgreSQL 15 and 18, the broker), then runs, in order:
#   1. cargo fmt --check and cargo clippy --workspace --all-targets -- -D warnings
#   2. cargo test --workspace (unit, property and integration tests against the real servers,
#      the history crate's too: the archive and its questions)
#   3. the client suites through hindsight (scripts/suites/): pgbench, Python asyncpg,
#      PostgreSQL's pg_regress (on 15 and on 18), tokio-postgres's own test suite; then the
#      reliability suites soak (60 s, 300 sessions), fuzz (20 s a target) and chaos (45 s of
#      faults, then 30 s with kafka.topic_routing = "database"; the 10-minute run is by hand:
#      scripts/suites/chaos.sh BIN 600)
# and ends with one line "N passed, M failed". Exit status 0 only if nothing failed.
#   scripts/test.sh           everything (what .ci/run calls)
#   scripts/test.sh --quick   steps 1-2 only
source "$(dirname "$0")/common.sh"
quick=0; [ "${1:-}" = "--quick" ] && quick=1
set +e
passed=0; failed=0; failures=()
report="$DEV/test-report.txt"; : >"$report"

# step LABEL COMMAND... : run one step, count it, keep its output in $DEV/test-logs/.
mkdir -p "$DEV/test-logs"
step() {
  local label="$1"; shift
  local logf="$DEV/test-logs/${label//[^A-Za-z0-9_-]/_}.log"
  log "== $label"
  "$@" 2>&1 | tee "$logf"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then echo "ok      $label" >>"$report"; else
    echo "FAILED  $label (exit $rc, log: $logf)" >>"$report"; failures+=("$label"); fi
  return "$rc"
}

# Set-up failures are fatal: nothing after them would mean anything.
bash "$ROOT/scripts/install-deps.sh" || die "installing Debian packages failed"
bash "$ROOT/scripts/install-pg18.sh" || die "installing PostgreSQL 18 failed"
bash "$ROOT/scripts/pg.sh" start 15 || die "PostgreSQL 15 did not start"
bash "$ROOT/scripts/pg.sh" start 18 || die "PostgreSQL 18 did not start"
bash "$ROOT/scripts/kafka.sh" start || die "the broker did not start"
# Each integration test creates its own database (t_<label>_<hex>) and leaves it for inspection.
# Drop those earlier runs left, or a machine that runs the suite often fills its disk (4,000 of
# them, 34 GB, filled a development machine's).
for port in "$PG15_PORT" "$PG18_PORT"; do
  psql -X -At "host=127.0.0.1 port=$port user=postgres dbname=postgres" \
    -c "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE);', datname) FROM pg_database WHERE datname ~ '^t_[a-z0-9_]+$'" \
    | psql -X -q "host=127.0.0.1 port=$port user=postgres dbname=postgres" >/dev/null \
    || die "dropping the test databases of earlier runs on port $port failed"
done

cd "$ROOT"
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
# The in-doubt tests start a memory-storage tansu of their own (the chaos suite's kind).
export HSTEST_TANSU="$TANSU_BIN"
# One invocation for both crates: their features are unified once, so no dependency is built
# twice (separately, the history crate's object_store would rebuild rustls, rdkafka and the
# proxy's own library with other features).
step "cargo test" cargo test --workspace --all-targets --no-fail-fast
# Count individual Rust tests from libtest's summary lines.
while read -r p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(
  sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$DEV/test-logs/cargo_test.log")

if [ "$quick" -eq 0 ]; then
  # The binary `cargo test` built (same features: nothing is compiled again).
  step "cargo build (hindsight binary for the suites)" cargo test --workspace --all-targets --no-run --quiet
  bin="$ROOT/target/debug/hindsight"
  for suite in helm pgbench asyncpg pg-regress "pg-regress 18" tokio-postgres soak fuzz "chaos 45" "chaos 30 database"; do
    # shellcheck disable=SC2086 # "NAME ARGS": the suite script, then its arguments after the binary
    set -- $suite
    name="${suite// /-}"
    step "suite $name" bash "$ROOT/scripts/suites/$1.sh" "$bin" "${@:2}"
    # Each suite prints one "ok ..." / "FAILED ..." line per check it makes.
    passed=$((passed + $(grep -c '^ok ' "$DEV/test-logs/suite_$name.log"))); failed=$((failed + $(grep -c '^FAILED ' "$DEV/test-logs/suite_$name.log")))
  done
fi

# A step that failed without a counted test failure (fmt, clippy, a crashed suite) still counts.
for f in "${failures[@]}"; do
  case "$f" in "cargo test"|suite*) ;; *) failed=$((failed + 1)) ;; esac
done
[ "${#failures[@]}" -gt 0 ] && [ "$failed" -eq 0 ] && failed=${#failures[@]}
echo; cat "$report"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "${#failures[@]}" -eq 0 ]
