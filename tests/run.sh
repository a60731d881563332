#!/usr/bin/env bash
# The test runner behind `make test`: starts a real Redis and a real Apache
# Kafka broker, runs every unit test binary (cmocka, TAP output), the libFuzzer
# targets for a few seconds each (tests/fuzz/run.sh) and the integration tests
# (pytest, real binaries as processes), and ends with "N passed, N failed".
# Exit status is non-zero when anything failed.
#
#   BUILD=build-asan tests/run.sh [--unit-only] [pytest -k expression]
set -uo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
BUILD=${BUILD:-build-asan}
export BUILD
UNIT_ONLY=0
if [ "${1:-}" = "--unit-only" ]; then UNIT_ONLY=1; shift; fi
PYTEST_K=${1:-}

export RUN_DIR=$ROOT_DIR/$BUILD/test-run
LOGS=$ROOT_DIR/$BUILD/test-logs
rm -rf "$RUN_DIR" "$LOGS"
mkdir -p "$RUN_DIR" "$LOGS"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT_DIR/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0
failed=0
failures=()

cleanup() {
  scripts/kafka-local.sh stop > /dev/null 2>&1 || true
  scripts/redis-local.sh stop > /dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== starting Redis and Apache Kafka"
eval "$(scripts/redis-local.sh start | grep '^REDIS_URL=')" || { echo "cannot start redis"; exit 1; }
eval "$(scripts/kafka-local.sh start | grep '^KAFKA_BOOTSTRAP_SERVERS=')" || { echo "cannot start kafka"; exit 1; }
export REDIS_URL KAFKA_BOOTSTRAP_SERVERS
echo "   REDIS_URL=$REDIS_URL KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"

echo "== unit tests"
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  log=$LOGS/$name.log
  CMOCKA_MESSAGE_OUTPUT=TAP timeout 600 "$t" > "$log" 2>&1
  rc=$?
  ok=$(grep -cE '^ok [0-9]+' "$log")
  nok=$(grep -cE '^not ok [0-9]+' "$log")
  passed=$((passed + ok))
  failed=$((failed + nok))
  if [ $rc -ne 0 ] && [ "$nok" -eq 0 ]; then
    # crashed, leaked or timed out outside any single test case
    failed=$((failed + 1))
    failures+=("$name (exit $rc)")
  fi
  grep -E '^not ok' "$log" | sed "s/^/   $name: /"
  [ "$nok" -gt 0 ] && failures+=("$name: $nok case(s)")
  printf '   %-28s %3d passed %3d failed%s\n' "$name" "$ok" "$nok" "$([ $rc -ne 0 ] && echo "  (exit $rc, see $log)")"
done

if [ "$UNIT_ONLY" = 0 ]; then
  # libFuzzer targets (built by make fuzz), each briefly: TAP lines like the unit tests.
  echo "== fuzz"
  log=$LOGS/fuzz.log
  FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz} tests/fuzz/run.sh > "$log" 2>&1
  rc=$?
  ok=$(grep -cE '^ok [0-9]+' "$log")
  nok=$(grep -cE '^not ok [0-9]+' "$log")
  passed=$((passed + ok))
  failed=$((failed + nok))
  if [ $rc -ne 0 ] && [ "$nok" -eq 0 ]; then
    failed=$((failed + 1))
    failures+=("fuzz (exit $rc, see $log)")
  fi
  grep -E '^(ok|not ok|#)' "$log" | sed 's/^/   /'
  [ "$nok" -gt 0 ] && failures+=("fuzz: $nok target(s)")
fi

if [ "$UNIT_ONLY" = 0 ]; then
  echo "== integration and end-to-end tests"
  junit=$LOGS/integration.xml
  args=(-q -p no:cacheprovider --junitxml="$junit" tests/integration tests/e2e)
  [ -n "$PYTEST_K" ] && args+=(-k "$PYTEST_K")
  /usr/bin/python3 -m pytest "${args[@]}" 2>&1 | tee "$LOGS/integration.log" | tail -n 40
  if [ -f "$junit" ]; then
    read -r ip if_ < <(/usr/bin/python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - sk, f)
PY
)
    passed=$((passed + ip))
    failed=$((failed + if_))
    [ "$if_" -gt 0 ] && failures+=("integration: $if_ test(s)")
  else
    failed=$((failed + 1))
    failures+=("integration: pytest produced no report")
  fi
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "failures:"
  printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
