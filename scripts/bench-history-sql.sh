#!/usr/bin/env bash
# The history's SQL endpoint against the CLI, side by side over the synthetic store of
# scripts/bench-history.sh (10 million events; made by that script first if missing): who
# changed one row, one application's changes in one hour, the blast radius of that hour —
# each 3 times through `hindsight history` and through psql to `history serve`, medians —
# and the hash chain over the same store (chain every commit, then verify).
#   scripts/bench-history-sql.sh
source "$(dirname "$0")/common.sh"
store="$DEV/bench-history/store-synth"
[ -d "$store/events" ] || bash "$ROOT/scripts/bench-history.sh" >/dev/null
(cd "$ROOT" && cargo build --release --quiet -p hindsight-history --bin hindsight-history --example chain)
hist="$ROOT/target/release/hindsight-history"
port=$((PROXY_PORT + 340))
export HINDSIGHT_HISTORY_SERVER__USERS__BENCH=bench PGPASSWORD=bench
"$hist" history serve --store "$store" --listen "127.0.0.1:$port" >"$DEV/bench-history-sql.log" 2>&1 &
server=$!; trap 'kill $server 2>/dev/null' EXIT
conn="host=127.0.0.1 port=$port user=bench dbname=history"
for _ in $(seq 1 100); do psql -X -q -A -t "$conn" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
span=$(psql -X -A -t -F ' ' "$conn" -c "SELECT min(ts_ms), max(ts_ms) FROM events")
read -r lo hi <<<"$span"
mid=$(( (lo + hi) / 2 ))
iso() { date -u -d "@$(( $1 / 1000 ))" +%Y-%m-%dT%H:%M:%SZ; }
since=$(iso "$mid"); until=$(iso $((mid + 3600000)))
median3() { sort -n | sed -n 2p; }
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || die "failed: $*"; e=$(date +%s.%N); echo "$e - $s" | bc; }
row() {
  local name="$1" sql="$2"; shift 2
  local cli sql_t
  cli=$(for _ in 1 2 3; do timed "$hist" history --store "$store" --json "$@"; done | median3)
  sql_t=$(for _ in 1 2 3; do timed psql -X -q -A -t "$conn" -c "$sql"; done | median3)
  printf '| %s | %.2f s | %.2f s |\n' "$name" "$cli" "$sql_t"
}
echo "| question (10,000,000 events) | CLI (\`hindsight history\`) | endpoint (psql) |"
echo "|---|---:|---:|"
row "who changed one row" "SELECT * FROM who_changed('public.pgbench_accounts', '{\"aid\": 12345}')" \
  who-changed --table public.pgbench_accounts --key '{"aid": 12345}'
row "one application's changes in one hour" "SELECT * FROM changes_by_application('app-3', '$since', '$until')" \
  changes --application app-3 --since "$since" --until "$until"
row "blast radius of that hour" "SELECT * FROM blast_radius('app-3', '$since', '$until')" \
  summary --application app-3 --since "$since" --until "$until"
echo
events=$(psql -X -A -t "$conn" -c "SELECT count(*) FROM events")
echo "hash chain over $events events ($(du -sh "$store" | cut -f1)):"
"$ROOT/target/release/examples/chain" "$store"
