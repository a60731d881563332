# Shared helpers for the scripts in this directory (sourced, not run).
# Every path the scripts write lives under $RUN_DIR (default: <repo>/.run).

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${RUN_DIR:-$ROOT_DIR/.run}
CACHE_DIR=${ROBOTFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/robot-fleet}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# free_port: print a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# wait_port HOST PORT SECONDS: wait until something accepts on HOST:PORT.
wait_port() {
  local host=$1 port=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pidfile FILE SECONDS: TERM the process, KILL it after SECONDS.
stop_pidfile() {
  local f=$1 secs=${2:-10} pid i
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  # The process may exit between the check and the signal: that is success.
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

# env_set KEY VALUE: record KEY=VALUE in $RUN_DIR/env (replacing an old value).
env_set() {
  mkdir -p "$RUN_DIR"
  local f=$RUN_DIR/env
  touch "$f"
  grep -v "^$1=" "$f" > "$f.tmp" || true
  echo "$1=$2" >> "$f.tmp"
  mv "$f.tmp" "$f"
}
