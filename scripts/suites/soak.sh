#!/usr/bin/env bash
# The soak's short version for scripts/test.sh: 60 s, 300 sessions, 100 writing through capture
# (scripts/soak.sh; by hand: 600 s, 1,000 sessions, 300 writing, release build).
#   scripts/suites/soak.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: soak.sh HINDSIGHT_BIN}"
logf="$DEV/suite-soak.log"
if bash "$ROOT/scripts/soak.sh" "$bin" 60 300 100 2>&1 | tee "$logf"; then
  echo "ok      $(grep -h '^soak summary' "$logf" | tail -1)"
else
  echo "FAILED  soak (log: $logf)"
  exit 1
fi
