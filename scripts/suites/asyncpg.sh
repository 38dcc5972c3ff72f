#!/usr/bin/env bash
# A driver from another language (Python asyncpg, from PyPI) through hindsight: the same workload
# directly, through a relaying and through a capturing proxy must give identical results, and the
# capturing one must publish every committed row change.
#   scripts/suites/asyncpg.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: asyncpg.sh HINDSIGHT_BIN}"
port=$((PROXY_PORT + 101)); admin=$((ADMIN_PORT + 101))
venv="$CACHE/pyenv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import asyncpg" 2>/dev/null || "$venv/bin/pip" install -q "asyncpg==0.32.0"
start_proxy suite-asyncpg "$bin" "$port" "$admin" "$PG15_PORT"
# And a capturing one: the driver must not see a difference there either (binary COPY, pipelined
# executemany, savepoints), and every committed row change must be on the broker.
cport=$((PROXY_PORT + 106)); cadmin=$((ADMIN_PORT + 106)); prefix="suiteapg$RANDOM$RANDOM"
start_proxy suite-asyncpg-capture "$bin" "$cport" "$cadmin" "$PG15_PORT" \
  --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "$prefix"
trap 'stop_proxy suite-asyncpg; stop_proxy suite-asyncpg-capture' EXIT
rc=0
"$venv/bin/python" "$ROOT/scripts/suites/asyncpg_workload.py" \
  "postgresql://postgres@127.0.0.1:$PG15_PORT/postgres" "postgresql://postgres@127.0.0.1:$port/postgres" \
  "postgresql://postgres@127.0.0.1:$cport/postgres" || rc=1
# The captured schema's committed row changes: 500 rows by executemany, 2,000 by binary COPY,
# 10 updated in a transaction (its savepoint's update and the rolled-back DELETE leave nothing).
counts=$("$bin" tail --kafka-brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "$prefix" --from-beginning \
  --idle-timeout 5s --json 2>/dev/null | "$venv/bin/python" -c '
import collections, json, sys
c = collections.Counter()
for line in sys.stdin:
    e = json.loads(line)
    if e.get("source", {}).get("schema") == "suite_asyncpg_captured" and e.get("op") in ("c", "u", "d"):
        c[e["source"]["table"] + ":" + e["op"]] += 1
print(" ".join(f"{k}={v}" for k, v in sorted(c.items())))')
want="item:c=500 item:u=10 log:c=2000"
if [ "$counts" = "$want" ]; then echo "ok      asyncpg through capture: change events $counts"
else echo "FAILED  asyncpg through capture: change events '$counts', want '$want'"; rc=1; fi
exit $rc
