#!/usr/bin/env bash
# Fuzz every target for N seconds (cargo fuzz, libFuzzer, nightly): scripts/fuzz.sh [N]
# (default 30; scripts/test.sh runs a short smoke pass). Corpora live in fuzz/corpus/<target>
# (kept in the repository, grown by each run); crashes land in fuzz/artifacts/<target> and
# fail the run. Prints, per target, one "ok"/"FAILED" line with its executions.
source "$(dirname "$0")/common.sh"
secs="${1:-30}"
cd "$ROOT/fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null 2>&1 \
  || die "installing cargo-fuzz failed"
rustup toolchain list | grep -q nightly || die "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
log "building the fuzz targets (nightly, address sanitizer)"
cargo +nightly fuzz build -O >"$DEV/fuzz-build.log" 2>&1 || { tail -30 "$DEV/fuzz-build.log"; die "building the fuzz targets failed"; }
# ASan's fake stack frames (detect_stack_use_after_return, on by default) put locals off the
# thread's stack, so libpg_query 18's stack depth check (it measures the stack left below each
# call) measures nonsense and refuses a two-level CASE as "stack depth limit exceeded", which
# the parser never does outside the sanitizer. Off, the parser behaves as in the proxy.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_stack_use_after_return=0"
rc=0
for t in frames rewrite shape sqlcommenter rules restore_records; do
  mkdir -p "corpus/$t" "artifacts/$t"
  logf="$DEV/fuzz-$t.log"
  if cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=8192 \
       -print_final_stats=1 >"$logf" 2>&1; then
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$logf" | tail -1)
    echo "ok      fuzz $t: ${runs:-?} executions in ${secs} s, no crash"
  else
    echo "FAILED  fuzz $t (log: $logf; crash input in fuzz/artifacts/$t)"
    grep -E "panicked|ERROR: |SUMMARY" "$logf" | head -5
    rc=1
  fi
done
exit "$rc"
