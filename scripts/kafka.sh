#!/usr/bin/env bash
# The Kafka-compatible broker (tansu) on loopback, data in $DEV/kafka (sqlite: survives restarts).
#   scripts/kafka.sh start | stop | addr
# HSDEV_KAFKA_STORAGE=memory (with another HSDEV_KAFKA_PORT) runs a second, in-memory broker
# (the benchmarks compare both); sqlite with another HSDEV_KAFKA_PORT, a second sqlite broker
# with its own data in $DEV/kafka-sqlite-PORT (the benchmarks start it empty: the dev broker
# holds every test's topics and slows down as they grow).
source "$(dirname "$0")/common.sh"
storage="${HSDEV_KAFKA_STORAGE:-sqlite}"
case "$storage" in
  sqlite) dir="$DEV/kafka"; [ "$KAFKA_PORT" = 19092 ] || dir="$DEV/kafka-sqlite-$KAFKA_PORT"
    engine="sqlite://tansu.db" ;;
  memory) dir="$DEV/kafka-memory-$KAFKA_PORT"; engine="memory://tansu/" ;;
  *) die "HSDEV_KAFKA_STORAGE must be sqlite or memory, not '$storage'" ;;
esac
pidf="$dir/tansu.pid"; logf="$dir/tansu.log"
addr="127.0.0.1:$KAFKA_PORT"

running() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }

start() {
  bash "$ROOT/scripts/install-tansu.sh"
  mkdir -p "$dir"
  if running; then log "broker already running on $addr"; return; fi
  # The sqlite path is relative to the working directory.
  # exec: the recorded pid is tansu's own, not a subshell's (killing that left tansu running).
  (cd "$dir" && exec nohup "$TANSU_BIN" broker --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
     --storage-engine "$engine" >"$logf" 2>&1) &
  echo $! >"$pidf"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then log "broker (tansu, $storage) running on $addr"; return; fi
    running || { tail -20 "$logf"; die "tansu exited during start (log: $logf)"; }
    sleep 0.1
  done
  die "tansu did not open $addr within 10 s (log: $logf)"
}

stop() {
  running || return 0
  local pid; pid=$(cat "$pidf")
  kill "$pid"
  # tansu may take its time over SIGTERM (or ignore it): the port must be free when we return.
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidf"; log "broker stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  addr) echo "$addr" ;;
  *) die "usage: scripts/kafka.sh start|stop|addr" ;;
esac
