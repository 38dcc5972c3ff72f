# Shared settings for the dev/test scripts. Source it; do not run it.
#
# Layout:
#   $DEV   (<repo>/.dev, git-ignored)  everything this checkout starts: data dirs, logs, pids, certs
#   $CACHE (~/.cache/hindsight)        installed third-party binaries (tansu, PostgreSQL 18), reused
#                                      across checkouts so a fresh clone does not rebuild tansu (~12 min)
# Every value can be overridden from the environment.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="${HSDEV_DEV_DIR:-$ROOT/.dev}"
CACHE="${HSDEV_CACHE:-$HOME/.cache/hindsight}"

# The unprivileged OS user that runs PostgreSQL (servers refuse to run as root).
PG_OS_USER="${HSDEV_PG_OS_USER:-hindsight-pg}"

PG15_BIN="${HSDEV_PG15_BIN:-/usr/lib/postgresql/15/bin}"
PG18_VERSION="${HSDEV_PG18_VERSION:-18.4.0-beta.17}"
PG18_HOME="$CACHE/pg18-$PG18_VERSION"
PG18_BIN="$PG18_HOME/native/bin"

PG15_PORT="${HSDEV_PG15_PORT:-54315}"
PG18_PORT="${HSDEV_PG18_PORT:-54318}"
PGBOUNCER_PORT="${HSDEV_PGBOUNCER_PORT:-6439}"
KAFKA_PORT="${HSDEV_KAFKA_PORT:-19092}"
PROXY_PORT="${HSDEV_PROXY_PORT:-6432}"
ADMIN_PORT="${HSDEV_ADMIN_PORT:-9187}"

TANSU_VERSION="${HSDEV_TANSU_VERSION:-0.6.0}"
TANSU_ROOT="$CACHE/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

log() { printf '\033[1m[hindsight-dev]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[hindsight-dev] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Run a command as the unprivileged PostgreSQL OS user.
as_pg() { runuser -u "$PG_OS_USER" -- "$@"; }

ensure_pg_os_user() {
  if ! id "$PG_OS_USER" >/dev/null 2>&1; then
    log "creating OS user $PG_OS_USER"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
}

mkdir -p "$DEV" "$CACHE"

# Start a hindsight binary in the background in front of UPSTREAM_PORT; wait until /readyz answers.
#   start_proxy NAME BIN LISTEN_PORT ADMIN_PORT UPSTREAM_PORT [extra hindsight args...]
# pid and log go to $DEV/NAME.pid / $DEV/NAME.log. Replaces a previous instance of the same NAME.
start_proxy() {
  local name="$1" bin="$2" port="$3" admin="$4" upstream="$5"; shift 5
  local pidf="$DEV/$name.pid" logf="$DEV/$name.log"
  stop_proxy "$name"
  # Relay-only unless the caller asks for capture (the suites measure relay fidelity).
  case " $* " in *" --kafka-brokers "*) ;; *) set -- "$@" --no-capture ;; esac
  nohup "$bin" proxy --listen "127.0.0.1:$port" --upstream "127.0.0.1:$upstream" \
    --admin-listen "127.0.0.1:$admin" "$@" >"$logf" 2>&1 & echo $! >"$pidf"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$pidf")" 2>/dev/null || { tail -20 "$logf"; die "hindsight ($name) exited during start (log: $logf)"; }
    sleep 0.1
  done
  die "hindsight ($name) not ready on 127.0.0.1:$port within 10 s (log: $logf)"
}

stop_proxy() {
  local pidf="$DEV/$1.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    kill "$(cat "$pidf")"
    for _ in $(seq 1 50); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidf"
}

# The hindsight binary a benchmark runs: HSBENCH_BIN if set (to compare two builds with the same
# script), else a fresh release build. Prints its path.
bench_binary() {
  if [ -n "${HSBENCH_BIN:-}" ]; then
    [ -x "$HSBENCH_BIN" ] || die "HSBENCH_BIN=$HSBENCH_BIN is not an executable hindsight binary"
    echo "$HSBENCH_BIN"
  else
    (cd "$ROOT" && cargo build --release --quiet --bin hindsight) || die "the release build failed"
    echo "$ROOT/target/release/hindsight"
  fi
}

# The reference audit trigger the capture benchmarks compare with: every row change of the
# pgbench tables as to_jsonb(OLD/NEW) into an audit table, with who and which transaction (what
# hindsight records, minus the statement text). Prints the SQL.
audit_trigger_sql() {
  cat <<'SQL'
CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
  txid bigint NOT NULL DEFAULT txid_current(), usr text NOT NULL DEFAULT current_user,
  app text DEFAULT current_setting('application_name'), tbl text NOT NULL, op text NOT NULL,
  old jsonb, new jsonb);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit_log (tbl, op, old, new) VALUES (TG_TABLE_NAME, TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $$;
SQL
  for t in accounts tellers branches history; do
    echo "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON pgbench_$t FOR EACH ROW EXECUTE FUNCTION audit_row();"
  done
}

# A benchmark's own in-memory broker on port MEM (KAFKA_PORT + 1), started empty — tansu slows
# down as it fills: `fresh_memory_broker`, then `memory_broker stop`.
MEM=$((KAFKA_PORT + 1))
memory_broker() { HSDEV_KAFKA_STORAGE=memory HSDEV_KAFKA_PORT=$MEM bash "$ROOT/scripts/kafka.sh" "$1" >/dev/null; }
fresh_memory_broker() { memory_broker stop; rm -rf "$DEV/kafka-memory-$MEM"; memory_broker start; }

# The median of field N of `;`-separated rounds of space-separated numbers (stdin), for the
# side-by-side benchmarks: `echo "$rounds" | median_field 2`.
median_field() { tr ';' '\n' | grep . | awk -v f="$1" '{ print $f }' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
