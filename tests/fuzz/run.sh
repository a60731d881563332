#!/usr/bin/env bash
# Runs every libFuzzer target in tests/fuzz briefly: first over its committed
# seed corpus, then on random mutations until FUZZ_TIME seconds or FUZZ_RUNS
# inputs have passed. The corpus is copied to a temporary directory so new
# inputs never land in the repository. Prints TAP lines ("ok N - fuzz_<name>"),
# which tests/run.sh counts; crash inputs and logs go to $FUZZ_BUILD/logs.
#
#   FUZZ_BUILD=build-fuzz FUZZ_TIME=8 FUZZ_JOBS=2 tests/fuzz/run.sh [name ...]
set -uo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT_DIR"
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_TIME=${FUZZ_TIME:-8}        # seconds of random fuzzing per target
FUZZ_RUNS=${FUZZ_RUNS:-10000000} # cap on random inputs per target (time usually ends first)
FUZZ_JOBS=${FUZZ_JOBS:-2}        # targets run side by side
case $FUZZ_BUILD in
/*) LOGS=$FUZZ_BUILD/logs ;;
*) LOGS=$ROOT_DIR/$FUZZ_BUILD/logs ;;
esac

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for src in tests/fuzz/fuzz_*.c; do
    n=$(basename "$src" .c)
    names+=("${n#fuzz_}")
  done
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$LOGS"

# Runs one target; its exit status lands in $work/<name>.rc.
run_one() {
  local name=$1 bin=$FUZZ_BUILD/fuzz_$1 log=$LOGS/fuzz_$1.log
  mkdir -p "$work/$name"
  if [ ! -x "$bin" ]; then
    echo "$bin not built (run make fuzz)" > "$log"
    echo 127 > "$work/$name.rc"
    return
  fi
  [ -d "tests/fuzz/corpus/$name" ] && cp -R "tests/fuzz/corpus/$name/." "$work/$name/"
  rm -f "$LOGS/fuzz_$name"-crash-* "$LOGS/fuzz_$name"-leak-* "$LOGS/fuzz_$name"-timeout-* \
        "$LOGS/fuzz_$name"-oom-*
  # -timeout: one input taking 10 s is a hang; -max_len keeps inputs request-sized.
  timeout $((FUZZ_TIME * 4 + 60)) "$bin" -max_total_time="$FUZZ_TIME" -runs="$FUZZ_RUNS" \
    -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$LOGS/fuzz_$name-" "$work/$name" > "$log" 2>&1
  echo $? > "$work/$name.rc"
}

start=$(date +%s)
running=0
for name in "${names[@]}"; do
  if [ "$running" -ge "$FUZZ_JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_one "$name" &
  running=$((running + 1))
done
wait

echo "1..${#names[@]}"
i=0
failed=0
for name in "${names[@]}"; do
  i=$((i + 1))
  rc=$(cat "$work/$name.rc" 2> /dev/null || echo 1)
  log=$LOGS/fuzz_$name.log
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  seeds=$(find "tests/fuzz/corpus/$name" -type f 2> /dev/null | wc -l)
  if [ "$rc" -eq 0 ]; then
    echo "ok $i - fuzz_$name # ${runs:-?} inputs, $seeds seeds"
  else
    failed=$((failed + 1))
    echo "not ok $i - fuzz_$name # exit $rc, see $log"
    grep -E 'ERROR: |SUMMARY: |invariant failed|not built|Test unit written to' "$log" |
      head -n 8 | sed 's/^/#   /'
  fi
done
echo "# fuzz: ${#names[@]} targets in $(($(date +%s) - start)) s"
[ "$failed" -eq 0 ]
