#!/usr/bin/env bash
# Benchmarks behind `make bench`. Each benchmark is a function bench_<name>
# that starts what it needs under $RUN_DIR (build/bench-run), measures, stops
# everything and appends rows to the summary printed at the end. Targets are
# information only: the exit status is non-zero only when a benchmark could
# not run properly (a process failed to start, the load generator saw fewer
# than 99% of 202s, or a service did not exit 0 on SIGTERM).
#
#   scripts/bench.sh [name...]      names: ingest (default: all)
#
# Environment: BUILD (default build), BENCH_DURATION (15), BENCH_WARMUP (3),
# BENCH_CONNECTIONS (64), BENCH_BROKERS ("apache embedded").
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
export RUN_DIR=${RUN_DIR:-$ROOT_DIR/$BUILD/bench-run}
. "$ROOT_DIR/scripts/lib.sh"
cd "$ROOT_DIR"

BENCHMARKS=(ingest)
DURATION=${BENCH_DURATION:-15}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
BROKERS=${BENCH_BROKERS:-apache embedded}
LOG_DIR=$RUN_DIR/logs
CLK_TCK=$(getconf CLK_TCK)

SUMMARY=()  # rows for the final table, tab-separated
FAILED=()   # benchmark runs that did not work (not missed targets)
SVC_PID=""
MOCK_PID=""

# ---- shared helpers ---------------------------------------------------------

cleanup() {
  [ -n "$SVC_PID" ] && kill -TERM "$SVC_PID" 2>/dev/null && wait "$SVC_PID" 2>/dev/null || true
  [ -n "$MOCK_PID" ] && kill -TERM "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
  SVC_PID="" MOCK_PID=""
  scripts/kafka-local.sh stop > /dev/null 2>&1 || true
  scripts/redis-local.sh stop > /dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_broker apache|embedded: sets KAFKA_BOOTSTRAP_SERVERS.
start_broker() {
  case "$1" in
    apache)
      eval "$(scripts/kafka-local.sh start | grep '^KAFKA_BOOTSTRAP_SERVERS=')" ;;
    embedded)
      local envf=$RUN_DIR/mock-broker.env
      rm -f "$envf"
      "$BUILD/bin/mock-broker" --env-file "$envf" > "$LOG_DIR/mock-broker.log" 2>&1 < /dev/null &
      MOCK_PID=$!
      for _ in $(seq 100); do [ -s "$envf" ] && break; sleep 0.1; done
      [ -s "$envf" ] || die "embedded broker did not start, see $LOG_DIR/mock-broker.log"
      eval "$(grep '^KAFKA_BOOTSTRAP_SERVERS=' "$envf")" ;;
    *) die "unknown broker '$1'" ;;
  esac
  export KAFKA_BOOTSTRAP_SERVERS
}

stop_broker() {
  case "$1" in
    apache) scripts/kafka-local.sh stop > /dev/null ;;
    embedded)
      [ -n "$MOCK_PID" ] && { kill -TERM "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true; }
      MOCK_PID="" ;;
  esac
}

# cpu_ticks PID: utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat;
# the command name in field 2 may hold spaces, so count from its closing paren).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  set -- $s
  echo $(( ${12} + ${13} ))
}

# status_kb PID FIELD: a VmXXX value from /proc/PID/status, in kB.
status_kb() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# json_field JSON KEY: one top-level value of the load generator's summary line.
json_field() {
  /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"
}

# met ACTUAL OP LIMIT: "met" or "not met" (floating point compare).
met() {
  awk -v a="$1" -v op="$2" -v l="$3" 'BEGIN {
    ok = (op == ">=") ? (a + 0 >= l + 0) : (a + 0 <= l + 0)
    print ok ? "met" : "not met" }'
}

# register_source REDIS_URL SOURCE SECRET: seals the webhook secret as
# robot-registry would (proto/redis-keys.md), with Python's AES-GCM like
# tests/integration/ingest_helpers.py, so the benchmark does not trust our C.
register_source() {
  /usr/bin/python3 - "$@" <<'PY'
import base64, json, os, sys
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

url, source, secret = sys.argv[1:4]
key = base64.b64decode(os.environ["SECRETS_KEY"])

def seal(aad, plain):
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plain, aad.encode())
    return "v1:k1:" + base64.b64encode(nonce + ct).decode()

r = redis.Redis.from_url(url)
r.hset(f"source:{source}", mapping={
    "id": source,
    "base_url": "http://127.0.0.1:9",
    "signature_scheme": "standard-webhooks",
    "webhook_secrets": seal(f"source:{source}:webhook_secrets",
                            json.dumps([{"secret": secret}]).encode()),
    "api_token": seal(f"source:{source}:api_token", b"bench-token"),
    "version": 1,
})
r.sadd("sources", source)
PY
}

# ---- benchmark: webhook-ingest ----------------------------------------------

# bench_ingest_one BROKER: one measured run of webhook-ingest against BROKER.
bench_ingest_one() {
  local broker=$1 port secret out json rc t0 t1 c0 c1 cpu hwm rss svc_rc
  echo "== ingest / $broker"
  eval "$(scripts/redis-local.sh start | grep '^REDIS_URL=')"
  export REDIS_URL
  start_broker "$broker"
  SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
  export SECRETS_KEY
  secret="whsec_$(head -c 24 /dev/urandom | base64)"
  register_source "$REDIS_URL" bench "$secret"

  port=$(free_port)
  HTTP_PORT=$port HTTP_THREADS=2 LOG_LEVEL=warn \
    "$BUILD/bin/webhook-ingest" -c services/webhook-ingest/webhook-ingest.yaml \
    > "$LOG_DIR/webhook-ingest-$broker.log" 2>&1 < /dev/null &
  SVC_PID=$!
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if ! kill -0 "$SVC_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "   webhook-ingest did not become ready, see $LOG_DIR/webhook-ingest-$broker.log"
      FAILED+=("ingest/$broker: service not ready")
      SUMMARY+=("ingest	$broker	-	-	-	-	-	failed")
      cleanup
      return 0
    fi
    sleep 0.2
  done

  out=$LOG_DIR/ingest-load-$broker.out
  INGEST_LOAD_SECRET=$secret "$BUILD/bin/ingest-load" --port "$port" --source bench \
    --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" > "$out" 2>&1 &
  local load_pid=$!
  # CPU over the measured window: sample when warm-up ends and when the load stops.
  sleep "$WARMUP"
  c0=$(cpu_ticks "$SVC_PID")
  t0=$(date +%s.%N)
  rc=0
  wait "$load_pid" || rc=$?
  c1=$(cpu_ticks "$SVC_PID")
  t1=$(date +%s.%N)
  hwm=$(status_kb "$SVC_PID" VmHWM)
  rss=$(status_kb "$SVC_PID" VmRSS)
  cpu=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
    'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
  sed 's/^/   /' "$out"

  kill -TERM "$SVC_PID"
  svc_rc=0
  wait "$SVC_PID" || svc_rc=$?
  SVC_PID=""
  [ "$svc_rc" = 0 ] || FAILED+=("ingest/$broker: webhook-ingest exited $svc_rc on SIGTERM")
  echo "   webhook-ingest: cpu ${cpu}% of one core, VmHWM $((hwm / 1024)) MiB, VmRSS at end $((rss / 1024)) MiB, exit $svc_rc"
  stop_broker "$broker"
  scripts/redis-local.sh stop > /dev/null

  json=$(grep '^{' "$out" | tail -n 1 || true)
  if [ -z "$json" ]; then
    FAILED+=("ingest/$broker: ingest-load failed (exit $rc)")
    SUMMARY+=("ingest	$broker	-	-	-	$cpu	$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')	failed")
    return 0
  fi
  [ "$rc" = 0 ] || FAILED+=("ingest/$broker: ingest-load exit $rc (under 99% accepted)")
  local arps p50 p99 hwm_mib
  arps=$(json_field "$json" accepted_rps)
  p50=$(json_field "$json" p50_ms)
  p99=$(json_field "$json" p99_ms)
  hwm_mib=$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')
  SUMMARY+=("ingest	$broker	$(printf '%.0f' "$arps")	$p50	$p99	$cpu	$hwm_mib	rps $(met "$arps" '>=' 20000), p99 $(met "$p99" '<=' 25), rss $(met "$hwm_mib" '<=' 64)")
}

bench_ingest() {
  [ -x "$BUILD/bin/webhook-ingest" ] && [ -x "$BUILD/bin/ingest-load" ] ||
    die "$BUILD/bin/webhook-ingest or ingest-load is missing: run 'make'"
  local b
  for b in $BROKERS; do
    bench_ingest_one "$b"
  done
}

# ---- main -------------------------------------------------------------------

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${BENCHMARKS[@]}")
for n in "${names[@]}"; do
  declare -F "bench_$n" > /dev/null || die "unknown benchmark '$n' (known: ${BENCHMARKS[*]})"
done
rm -rf "$RUN_DIR"
mkdir -p "$LOG_DIR"
echo "benchmarks on $(nproc) CPUs; load generator, service and broker share them"
for n in "${names[@]}"; do
  "bench_$n"
done

echo
echo "targets (information only): accepted/s >= 20000, p99 <= 25 ms, peak RSS <= 64 MiB"
printf '%-8s %-9s %10s %8s %8s %6s %9s  %s\n' bench broker accepted/s p50_ms p99_ms cpu% rss_MiB targets
for row in "${SUMMARY[@]}"; do
  IFS=$'\t' read -r b br rps p50 p99 cpu rss tg <<< "$row"
  printf '%-8s %-9s %10s %8s %8s %6s %9s  %s\n' "$b" "$br" "$rps" "$p50" "$p99" "$cpu" "$rss" "$tg"
done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "benchmark runs that did not work:"
  printf '  %s\n' "${FAILED[@]}"
  exit 1
fi
