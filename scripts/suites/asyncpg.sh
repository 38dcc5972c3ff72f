#!/usr/bin/env bash
# A driver from another language (Python asyncpg, from PyPI) through hindsight: the same workload
# directly and through the proxy must give identical results.
#   scripts/suites/asyncpg.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: asyncpg.sh HINDSIGHT_BIN}"
port=$((PROXY_PORT + 101)); admin=$((ADMIN_PORT + 101))
venv="$CACHE/pyenv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import asyncpg" 2>/dev/null || "$venv/bin/pip" install -q "asyncpg==0.32.0"
start_proxy suite-asyncpg "$bin" "$port" "$admin" "$PG15_PORT"
trap 'stop_proxy suite-asyncpg' EXIT
"$venv/bin/python" "$ROOT/scripts/suites/asyncpg_workload.py" \
  "postgresql://postgres@127.0.0.1:$PG15_PORT/postgres" "postgresql://postgres@127.0.0.1:$port/postgres"
