#!/usr/bin/env bash
# Runs the whole platform locally: Redis, a Kafka broker and the five services
# on their default ports (8081 ingest, 8082 registry, 8083 reboot-command,
# 8084 config-center, 8085 stream-processor), plus the robot simulator on 8090
# with a demo fleet registered through robot-registry (source demo-sim). Ctrl-C or SIGTERM stops everything
# it started. Addresses go to .run/env for other tools and tests.
#
#   scripts/run-local.sh [--kafka embedded|apache]
#
# embedded (default): librdkafka's mock cluster, memory only, no exactly-once
#                     guarantees — for trying things out.
# apache:             a real Apache Kafka broker in KRaft mode (scripts/kafka-local.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=${BUILD:-build}
KAFKA_MODE=embedded
while [ $# -gt 0 ]; do
  case "$1" in
    --kafka) KAFKA_MODE=$2; shift 2 ;;
    *) die "usage: $0 [--kafka embedded|apache]" ;;
  esac
done
case "$KAFKA_MODE" in embedded|apache) ;; *) die "--kafka must be embedded or apache" ;; esac

SERVICES=(webhook-ingest robot-registry reboot-command config-center stream-processor)
declare -A PORT=([webhook-ingest]=8081 [robot-registry]=8082 [reboot-command]=8083
                 [config-center]=8084 [stream-processor]=8085)
SIM_PORT=8090
SIM_TOKEN=demo-sim-token
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
mkdir -p "$LOG_DIR" "$PID_DIR"
rm -f "$RUN_DIR/env"

for s in "${SERVICES[@]}"; do
  [ -x "$BUILD/bin/$s" ] || die "$BUILD/bin/$s is missing: run 'make'"
  if (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$s]}") 2>/dev/null; then
    die "port ${PORT[$s]} (for $s) is already in use"
  fi
done
[ -x "$BUILD/bin/robot-sim" ] || die "$BUILD/bin/robot-sim is missing: run 'make'"
if (exec 3<>"/dev/tcp/127.0.0.1/$SIM_PORT") 2>/dev/null; then
  die "port $SIM_PORT (for robot-sim) is already in use"
fi

stopping=0
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  set +e # stop everything we can, whatever fails on the way
  echo "stopping..."
  stop_pidfile "$PID_DIR/robot-sim.pid" 10
  for s in "${SERVICES[@]}"; do
    [ -f "$PID_DIR/$s.pid" ] && kill -TERM "$(cat "$PID_DIR/$s.pid")" 2>/dev/null || true
  done
  for s in "${SERVICES[@]}"; do stop_pidfile "$PID_DIR/$s.pid" 30; done
  stop_pidfile "$PID_DIR/mock-broker.pid" 10
  [ "$KAFKA_MODE" = apache ] && "$ROOT_DIR/scripts/kafka-local.sh" stop || true
  "$ROOT_DIR/scripts/redis-local.sh" stop || true
  echo "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

eval "$("$ROOT_DIR/scripts/redis-local.sh" start | grep '^REDIS_URL=')"
if [ "$KAFKA_MODE" = apache ]; then
  eval "$("$ROOT_DIR/scripts/kafka-local.sh" start | grep '^KAFKA_BOOTSTRAP_SERVERS=')"
else
  rm -f "$RUN_DIR/mock-broker.env"
  "$BUILD/bin/mock-broker" --env-file "$RUN_DIR/mock-broker.env" \
    > "$LOG_DIR/mock-broker.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/mock-broker.pid"
  for _ in $(seq 100); do [ -s "$RUN_DIR/mock-broker.env" ] && break; sleep 0.1; done
  [ -s "$RUN_DIR/mock-broker.env" ] || die "embedded broker did not start, see $LOG_DIR/mock-broker.log"
  eval "$(cat "$RUN_DIR/mock-broker.env")"
  env_set KAFKA_BOOTSTRAP_SERVERS "$KAFKA_BOOTSTRAP_SERVERS"
fi
# One key for every service that seals or opens secrets, kept across runs.
if [ -z "${SECRETS_KEY:-}" ]; then
  [ -s "$RUN_DIR/secrets.key" ] || (umask 077; head -c 32 /dev/urandom | base64 > "$RUN_DIR/secrets.key")
  SECRETS_KEY=$(cat "$RUN_DIR/secrets.key")
fi
export REDIS_URL KAFKA_BOOTSTRAP_SERVERS SECRETS_KEY
# The config client's cache of released namespaces (a start while Redis is down).
export CONFIG_CACHE_DIR=${CONFIG_CACHE_DIR:-$RUN_DIR/config-cache}
# The URL robot-registry gives the vendor (the simulator) to post webhooks to.
export REGISTRY_PUBLIC_INGEST_URL='http://127.0.0.1:8081/v1/webhooks/{source}'

for s in "${SERVICES[@]}"; do
  HTTP_PORT=${PORT[$s]} "$BUILD/bin/$s" -c "$ROOT_DIR/services/$s/$s.yaml" \
    >> "$LOG_DIR/$s.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$s.pid"
  var=$(echo "$s" | tr 'a-z-' 'A-Z_')_URL
  env_set "$var" "http://127.0.0.1:${PORT[$s]}"
done

echo "waiting for the services to be ready..."
deadline=$((SECONDS + 90))
for s in "${SERVICES[@]}"; do
  until curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$s]}/readyz" 2>/dev/null; do
    pid_alive "$PID_DIR/$s.pid" || die "$s exited, see $LOG_DIR/$s.log"
    [ $SECONDS -lt $deadline ] || die "$s is not ready after 90 s, see $LOG_DIR/$s.log"
    sleep 0.2
  done
done

# The demo fleet: 20 robots in two fleets; robot 7 goes silent at t=10 s (until
# rebooted), fleet-b has a small fault storm at t=40 s. A reboot silences a
# robot for 10 s, then it sends command.ack, robot.booted and command.result.
SIM_URL=http://127.0.0.1:$SIM_PORT
"$BUILD/bin/robot-sim" --port "$SIM_PORT" --token "$SIM_TOKEN" --robots 20 --fleets 2 \
  --heartbeat-ms 5000 --reboot-ms 10000 --fault-prob 0 --silent 7@10 --storm b@40:20/10 \
  >> "$LOG_DIR/robot-sim.log" 2>&1 < /dev/null &
echo $! > "$PID_DIR/robot-sim.pid"
env_set SIM_URL "$SIM_URL"
until curl -fsS -o /dev/null "$SIM_URL/healthz" 2>/dev/null; do
  pid_alive "$PID_DIR/robot-sim.pid" || die "robot-sim exited, see $LOG_DIR/robot-sim.log"
  sleep 0.2
done
# Register it as vendor source demo-sim afresh (an earlier run's registration
# pointed at an earlier simulator), point its webhooks at webhook-ingest, pull
# its robots and let them be rebooted automatically.
REG=http://127.0.0.1:${PORT[robot-registry]}
regcall() { curl -fsS -o /dev/null -X "$1" -H 'Content-Type: application/json' ${3:+-d "$3"} "$REG$2"; }
regcall DELETE /v1/sources/demo-sim 2>/dev/null || true
regcall PUT /v1/sources/demo-sim "{\"base_url\":\"$SIM_URL\",\"api_token\":\"$SIM_TOKEN\"}" ||
  die "cannot create source demo-sim, see $LOG_DIR/robot-registry.log"
regcall POST /v1/sources/demo-sim/webhook-registration ||
  die "webhook registration at robot-sim failed, see $LOG_DIR/robot-registry.log"
regcall POST /v1/sources/demo-sim/sync || die "robot sync failed, see $LOG_DIR/robot-registry.log"
for i in $(seq -f '%05g' 1 20); do
  regcall PATCH "/v1/robots/robot-$i" '{"policy":{"auto_reboot":true,"modes":["soft","hard"]}}' ||
    die "cannot set the policy of robot-$i, see $LOG_DIR/robot-registry.log"
done

echo
echo "Robot Fleet Control Platform is running (Kafka: $KAFKA_MODE)"
[ "$KAFKA_MODE" = embedded ] &&
  echo "  note: the embedded broker keeps nothing and gives no exactly-once guarantees"
printf '  %-18s %s\n' redis "$REDIS_URL" kafka "$KAFKA_BOOTSTRAP_SERVERS"
for s in "${SERVICES[@]}"; do
  printf '  %-18s http://127.0.0.1:%s  (log: %s)\n' "$s" "${PORT[$s]}" "$LOG_DIR/$s.log"
done
printf '  %-18s %s  (log: %s)\n' robot-sim "$SIM_URL" "$LOG_DIR/robot-sim.log"
echo "    demo fleet: 20 robots (source demo-sim); robot-00007 goes silent at t=10 s,"
echo "    fleet-b fault storm at t=40 s; stats: curl $SIM_URL/sim/stats"
echo "  addresses written to $RUN_DIR/env; Ctrl-C stops everything"

while true; do
  for s in "${SERVICES[@]}"; do
    pid_alive "$PID_DIR/$s.pid" || die "$s exited unexpectedly, see $LOG_DIR/$s.log"
  done
  pid_alive "$PID_DIR/robot-sim.pid" || die "robot-sim exited unexpectedly, see $LOG_DIR/robot-sim.log"
  sleep 1
done
