#!/usr/bin/env bash
# Starts or stops Debian's redis-server on a free loopback port, with AOF on and
# its data under $REDIS_DIR (default $RUN_DIR/redis).
#
#   scripts/redis-local.sh start   # prints REDIS_URL=redis://127.0.0.1:<port>/0
#   scripts/redis-local.sh stop
#
# Environment: REDIS_PORT (default: a free port), REDIS_DIR.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

REDIS_DIR=${REDIS_DIR:-$RUN_DIR/redis}
PIDFILE=$REDIS_DIR/redis.pid

start() {
  command -v redis-server >/dev/null || die "redis-server not found: run 'make deps'"
  mkdir -p "$REDIS_DIR"
  if pid_alive "$PIDFILE"; then
    echo "REDIS_URL=$(cat "$REDIS_DIR/url")"
    return 0
  fi
  local port=${REDIS_PORT:-$(free_port)}
  # --daemonize no + our own backgrounding keeps the pid file ours.
  redis-server --port "$port" --bind 127.0.0.1 --dir "$REDIS_DIR" \
    --appendonly yes --appendfsync everysec --save "" \
    --logfile "$REDIS_DIR/redis.log" --daemonize no < /dev/null > /dev/null 2>&1 &
  echo $! > "$PIDFILE"
  wait_port 127.0.0.1 "$port" 20 || { stop_pidfile "$PIDFILE"; die "redis did not listen on $port, see $REDIS_DIR/redis.log"; }
  # Listening is not ready: with an AOF to replay Redis answers LOADING for a while.
  local i
  for ((i = 0; i < 600; i++)); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  local url="redis://127.0.0.1:$port/0"
  echo "$url" > "$REDIS_DIR/url"
  env_set REDIS_URL "$url"
  echo "REDIS_URL=$url"
}

stop() {
  stop_pidfile "$PIDFILE" 10
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
