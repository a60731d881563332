#!/usr/bin/env bash
# The soak behind `make soak` (not part of `make test`): the five services of the
# release build under a steady simulated load for SOAK_SECONDS (default 1800),
# sampling every service's RSS; asserts RSS stays flat after the warm-up (growth
# at most SOAK_RSS_BOUND_MB, default 8) and that no event is lost
# (tests/soak/test_soak.py). The test starts its own private Redis and Apache
# Kafka broker; the shared pair this script starts only backs the fixtures.
#
#   scripts/soak.sh                       # 30 minutes
#   SOAK_SECONDS=120 scripts/soak.sh      # a quick check
#
# Environment: SOAK_SECONDS, SOAK_ROBOTS (500), SOAK_SAMPLE_S (10),
# SOAK_WARMUP_S (a fifth of the run, at least 60), SOAK_RSS_BOUND_MB (8),
# SOAK_SILENCE_EVERY_S (30), BUILD (build).
set -uo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
export BUILD=${BUILD:-build}
export SOAK_SECONDS=${SOAK_SECONDS:-1800}
export RUN_DIR=$ROOT_DIR/$BUILD/soak-run
LOGS=$ROOT_DIR/$BUILD/soak-logs
rm -rf "$RUN_DIR" "$LOGS"
mkdir -p "$RUN_DIR" "$LOGS"

cleanup() {
  scripts/kafka-local.sh stop > /dev/null 2>&1 || true
  scripts/redis-local.sh stop > /dev/null 2>&1 || true
}
trap cleanup EXIT

for b in webhook-ingest robot-registry reboot-command config-center stream-processor robot-sim; do
  [ -x "$BUILD/bin/$b" ] || { echo "soak: $BUILD/bin/$b missing: run make first" >&2; exit 1; }
done
eval "$(scripts/redis-local.sh start | grep '^REDIS_URL=')" || { echo "cannot start redis"; exit 1; }
eval "$(scripts/kafka-local.sh start | grep '^KAFKA_BOOTSTRAP_SERVERS=')" || { echo "cannot start kafka"; exit 1; }
export REDIS_URL KAFKA_BOOTSTRAP_SERVERS
export SECRETS_KEY=${SECRETS_KEY:-$(head -c32 /dev/urandom | base64)}
echo "== soak: ${SOAK_SECONDS}s on $BUILD, logs in $LOGS"
/usr/bin/python3 -m pytest -q -s -p no:cacheprovider --basetemp="$LOGS/tmp" \
  --junitxml="$LOGS/soak.xml" tests/soak 2>&1 | tee "$LOGS/soak.log"
exit "${PIPESTATUS[0]}"
