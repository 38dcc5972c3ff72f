#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need (idempotent).
source "$(dirname "$0")/common.sh"
want=()
[ -x "$PG15_BIN/postgres" ] || want+=(postgresql-15 postgresql-client-15)
command -v pgbouncer >/dev/null || want+=(pgbouncer)
command -v openssl >/dev/null || want+=(openssl)
command -v runuser >/dev/null || want+=(util-linux)
dpkg -s libclang-dev >/dev/null 2>&1 || want+=(libclang-dev)
command -v cc >/dev/null || want+=(build-essential)
command -v xz >/dev/null || want+=(xz-utils)
# Building PostgreSQL 18's psql and pg_regress for its regression suite (configure wants both).
command -v bison >/dev/null || want+=(bison)
command -v flex >/dev/null || want+=(flex)
# The pgjdbc client test (tests/integration/jdbc.rs): a Java runtime and Debian's pgjdbc.
command -v java >/dev/null || want+=(default-jre-headless)
[ -f /usr/share/java/postgresql.jar ] || want+=(libpostgresql-jdbc-java)
# The Helm suite reads the rendered manifests.
python3 -c "import yaml" 2>/dev/null || want+=(python3-yaml)
if [ ${#want[@]} -gt 0 ]; then
  log "apt-get install ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  # Debian starts a cluster of its own on install; we run our own on private ports.
  systemctl disable --now postgresql pgbouncer >/dev/null 2>&1 || true
  pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
ensure_pg_os_user

# The outside reader of the history store (tests/history.rs, scripts/history_reader.py):
# PyPI's deltalake (delta-rs's Python binding) and pyarrow, in the project's own venv.
venv="$CACHE/pyenv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import deltalake, pyarrow" 2>/dev/null \
  || "$venv/bin/pip" install -q "deltalake==1.6.6" "pyarrow==26.0.1" \
  || die "installing deltalake and pyarrow from PyPI failed"
