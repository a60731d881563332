#!/usr/bin/env bash
# Starts or stops a single-node Apache Kafka broker (KRaft mode) on loopback.
# The broker jars come from Maven Central through scripts/kafka/pom.xml and are
# cached in $CACHE_DIR/kafka-<version>, so only the first start downloads.
#
#   scripts/kafka-local.sh start   # prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>
#   scripts/kafka-local.sh stop
#   scripts/kafka-local.sh fetch   # only fill the jar cache
#
# Environment: KAFKA_PORT (default: a free port), KAFKA_DIR (default $RUN_DIR/kafka),
# KAFKA_HEAP (default 512m), KAFKA_JVM_OPTS (default -XX:TieredStopAtLevel=1: the
# quick-starting client JIT, for tests and benchmarks alike: with the full JIT the
# broker spent ~0.3 more cores compiling during a stream benchmark run, which made
# it slower, not faster; empty selects it). The broker is configured so that
# transactions work with one node (replication factors and min ISR of 1).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT_DIR/scripts/kafka/pom.xml")
JARS=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_DIR=${KAFKA_DIR:-$RUN_DIR/kafka}
PIDFILE=$KAFKA_DIR/kafka.pid

fetch() {
  [ -f "$JARS/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn not found: run 'make deps'"
  mkdir -p "$JARS"
  echo "fetching Apache Kafka $KAFKA_VERSION jars into $JARS" >&2
  mvn -q -B -f "$ROOT_DIR/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS" >&2 || die "maven could not fetch the kafka jars"
  touch "$JARS/.complete"
}

java_run() {
  # shellcheck disable=SC2086 # KAFKA_JVM_OPTS is a list of options
  ${JAVA_EXEC:-} java -Xmx"${KAFKA_HEAP:-512m}" -Xms128m -XX:+UseG1GC ${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1} \
    -Djava.awt.headless=true -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" \
    -cp "$JARS/*" "$@"
}

start() {
  fetch
  mkdir -p "$KAFKA_DIR"
  if pid_alive "$PIDFILE"; then
    echo "KAFKA_BOOTSTRAP_SERVERS=$(cat "$KAFKA_DIR/bootstrap")"
    return 0
  fi
  # KAFKA_KEEP_DATA=1 restarts a stopped broker with its data and ports (fault tests).
  if [ "${KAFKA_KEEP_DATA:-0}" = 1 ] && [ -f "$KAFKA_DIR/data/meta.properties" ]; then
    launch "$(sed 's/.*://' "$KAFKA_DIR/bootstrap")"
    return 0
  fi
  local port=${KAFKA_PORT:-$(free_port)} cport
  cport=$(free_port)
  # the system may hand out the same free port twice in a row: the two listeners need two
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  rm -rf "$KAFKA_DIR/data"
  cat > "$KAFKA_DIR/log4j.properties" <<P
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$KAFKA_DIR/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.state.change.logger=WARN
P
  cat > "$KAFKA_DIR/server.properties" <<P
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=12
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=12
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.retention.hours=24
P
  java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid)" \
    -c "$KAFKA_DIR/server.properties" > "$KAFKA_DIR/format.log" 2>&1 ||
    die "storage format failed, see $KAFKA_DIR/format.log"
  launch "$port"
}

# launch PORT: runs the broker configured in $KAFKA_DIR and waits until it serves.
launch() {
  local port=$1
  : > "$KAFKA_DIR/server.log"
  JAVA_EXEC=exec java_run kafka.Kafka "$KAFKA_DIR/server.properties" < /dev/null > "$KAFKA_DIR/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  echo "127.0.0.1:$port" > "$KAFKA_DIR/bootstrap"
  wait_port 127.0.0.1 "$port" 60 || { stop_pidfile "$PIDFILE"; die "broker did not listen on $port, see $KAFKA_DIR/server.log"; }
  # Listening is not ready: wait until the broker serves metadata.
  local i
  for ((i = 0; i < 300; i++)); do
    if grep -q "Kafka Server started" "$KAFKA_DIR/server.log" 2>/dev/null; then break; fi
    pid_alive "$PIDFILE" || die "broker exited, see $KAFKA_DIR/server.log"
    sleep 0.1
  done
  env_set KAFKA_BOOTSTRAP_SERVERS "127.0.0.1:$port"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

stop() {
  stop_pidfile "$PIDFILE" 30
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  fetch) fetch ;;
  *) die "usage: $0 start|stop|fetch" ;;
esac
