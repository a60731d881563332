#!/usr/bin/env bash
# Benchmarks behind `make bench`. Each benchmark is a function bench_<name>
# that starts what it needs under $RUN_DIR (build/bench-run), measures, stops
# everything and appends rows to the summary printed at the end. Targets are
# information only: the exit status is non-zero only when a benchmark could
# not run properly (a process failed to start, the load generator saw fewer
# than 99% of 202s, or a service did not exit 0 on SIGTERM).
#
#   scripts/bench.sh [name...]      names: ingest config registry stream reboot (default: all)
#
# Environment: BUILD (default build), BENCH_DURATION (15), BENCH_WARMUP (3),
# BENCH_CONNECTIONS (64, wrk's connections for the registry),
# BENCH_INGEST_CONNECTIONS (192, concurrent webhook senders),
# BENCH_INGEST_THREADS (2, webhook-ingest's HTTP threads), BENCH_BROKERS
# ("apache embedded").
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
export RUN_DIR=${RUN_DIR:-$ROOT_DIR/$BUILD/bench-run}
. "$ROOT_DIR/scripts/lib.sh"
cd "$ROOT_DIR"

BENCHMARKS=(ingest config registry stream reboot)
DURATION=${BENCH_DURATION:-15}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
# A webhook is answered only once Kafka has it (acks=all, after up to linger.ms
# of batching), ~4 ms here before the cores are busy, so each sender's
# connection carries at most ~250 webhooks/s: 20,000/s takes well over 64
# concurrent senders whatever the service's speed (Little's law); 64 senders
# get ~15k/s on this box.
INGEST_CONNECTIONS=${BENCH_INGEST_CONNECTIONS:-192}
BROKERS=${BENCH_BROKERS:-apache embedded}
LOG_DIR=$RUN_DIR/logs
CLK_TCK=$(getconf CLK_TCK)

SUMMARY=()  # rows for the final table, tab-separated
FAILED=()   # benchmark runs that did not work (not missed targets)
SVC_PID=""
MOCK_PID=""

# ---- shared helpers ---------------------------------------------------------

# Starts the run's Redis (or finds it running) and empties it: the data of an
# earlier benchmark (sealed under another SECRETS_KEY) must not leak into the next.
fresh_redis() {
  eval "$(scripts/redis-local.sh start | grep '^REDIS_URL=')"
  redis-cli -u "$REDIS_URL" FLUSHALL > /dev/null || die "cannot empty the bench Redis at $REDIS_URL"
}

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
  echo "== ingest / $broker ($INGEST_CONNECTIONS concurrent senders)"
  fresh_redis
  export REDIS_URL
  start_broker "$broker"
  SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
  export SECRETS_KEY
  secret="whsec_$(head -c 24 /dev/urandom | base64)"
  register_source "$REDIS_URL" bench "$secret"

  port=$(free_port)
  HTTP_PORT=$port HTTP_THREADS=${BENCH_INGEST_THREADS:-2} LOG_LEVEL=warn \
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
  # Other work on the machine skews every figure: show the load next to them.
  local load0 load1
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  INGEST_LOAD_SECRET=$secret "$BUILD/bin/ingest-load" --port "$port" --source bench \
    --connections "$INGEST_CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" > "$out" 2>&1 &
  local load_pid=$!
  # CPU over the measured window: sample when warm-up ends and when the load stops.
  sleep "$WARMUP"
  c0=$(cpu_ticks "$SVC_PID")
  t0=$(date +%s.%N)
  rc=0
  wait "$load_pid" || rc=$?
  c1=$(cpu_ticks "$SVC_PID")
  t1=$(date +%s.%N)
  load1=$(cut -d' ' -f1-3 /proc/loadavg)
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
  echo "   machine load average (1/5/15 min): $load0 before, $load1 after the run ($(nproc) CPUs)"
  stop_broker "$broker"
  scripts/redis-local.sh stop > /dev/null

  json=$(grep '^{' "$out" | tail -n 1 || true)
  if [ -z "$json" ]; then
    FAILED+=("ingest/$broker: ingest-load failed (exit $rc)")
    SUMMARY+=("ingest	$broker	-	-	-	$cpu	$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')	failed")
    return 0
  fi
  [ "$rc" = 0 ] || FAILED+=("ingest/$broker: ingest-load exit $rc (under 99% accepted)")
  local arps p50 p99 hwm_mib lg_cpu svc_us
  arps=$(json_field "$json" accepted_rps)
  lg_cpu=$(json_field "$json" loadgen_cpu_pct)
  svc_us=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$(json_field "$json" requests)" \
    -v s="$(json_field "$json" duration_s)" -v t0="$t0" -v t1="$t1" \
    'BEGIN { r = n / s; printf "%.0f", (r > 0 ? (b - a) / hz / (t1 - t0) / r * 1e6 : 0) }')
  echo "   webhook-ingest cpu per request ${svc_us} us; ingest-load used ${lg_cpu}% of one core"

  p50=$(json_field "$json" p50_ms)
  p99=$(json_field "$json" p99_ms)
  hwm_mib=$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')
  SUMMARY+=("ingest	$broker	$(printf '%.0f' "$arps")	$p50	$p99	$cpu	$hwm_mib	rps $(met "$arps" '>=' 20000), p99 $(met "$p99" '<=' 25), rss $(met "$hwm_mib" '<=' 64); svc ${svc_us} us/req, loadgen ${lg_cpu}% cpu, load ${load1%% *}")
}

bench_ingest() {
  [ -x "$BUILD/bin/webhook-ingest" ] && [ -x "$BUILD/bin/ingest-load" ] ||
    die "$BUILD/bin/webhook-ingest or ingest-load is missing: run 'make'"
  local b
  for b in $BROKERS; do
    bench_ingest_one "$b"
  done
}

# ---- benchmark: config-center ---------------------------------------------

# wait_ready PORT PID NAME: 0 once /readyz answers 200, 1 if the process died or 60 s passed.
wait_ready() {
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; do
    if ! kill -0 "$2" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "   $3 did not become ready, see $LOG_DIR"
      return 1
    fi
    sleep 0.2
  done
}

# Release -> reload latency with 5 services following config.changes.v1, then
# 10,000 long-poll watchers on one config-center: fan-out time and RSS.
bench_config() {
  local watchers=${BENCH_WATCHERS:-10000} cc_port cc_pid pids=() logs=() port i rc=0 out json
  echo "== config / apache"
  [ -x "$BUILD/bin/config-center" ] && [ -x "$BUILD/bin/webhook-ingest" ] ||
    die "$BUILD/bin/config-center or webhook-ingest is missing: run 'make'"
  fresh_redis
  export REDIS_URL
  start_broker apache
  SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
  export SECRETS_KEY
  /usr/bin/python3 -c 'import redis,sys; r=redis.Redis.from_url(sys.argv[1]); [r.delete(k) for k in r.scan_iter("config:*")]' "$REDIS_URL"
  cc_port=$(free_port)
  # each watcher is a connection: the service and the load tool need the descriptors
  (ulimit -n "$(ulimit -Hn)" && exec env HTTP_PORT="$cc_port" LOG_LEVEL=warn CONFIG_CACHE_DIR="$RUN_DIR/cache" \
    "$BUILD/bin/config-center" -c services/config-center/config-center.yaml) \
    > "$LOG_DIR/config-center.log" 2>&1 < /dev/null &
  cc_pid=$!
  pids+=("$cc_pid")
  for i in 1 2 3 4 5; do
    port=$(free_port)
    HTTP_PORT=$port LOG_LEVEL=info CONFIG_CACHE_DIR="$RUN_DIR/cache-$i" \
      "$BUILD/bin/webhook-ingest" -c services/webhook-ingest/webhook-ingest.yaml \
      > "$LOG_DIR/config-subscriber-$i.log" 2>&1 < /dev/null &
    pids+=("$!")
    logs+=("$LOG_DIR/config-subscriber-$i.log")
    wait_ready "$port" "$!" "webhook-ingest #$i" || rc=1
  done
  wait_ready "$cc_port" "$cc_pid" config-center || rc=1
  local lat="" wat=""
  if [ $rc = 0 ]; then
    out=$LOG_DIR/config-latency.out
    /usr/bin/python3 tests/bench/config_bench.py latency "http://127.0.0.1:$cc_port" "${logs[@]}" \
      > "$out" 2>&1 || rc=1
    sed 's/^/   /' "$out"
    lat=$(grep '^{' "$out" | tail -n 1 || true)
    out=$LOG_DIR/config-watchers.out
    (ulimit -n "$(ulimit -Hn)" && exec /usr/bin/python3 tests/bench/config_bench.py watchers \
      "http://127.0.0.1:$cc_port" "$cc_pid" "$watchers") > "$out" 2>&1 || rc=1
    sed 's/^/   /' "$out"
    wat=$(grep '^{' "$out" | tail -n 1 || true)
  fi
  for i in "${pids[@]}"; do
    kill -TERM "$i" 2>/dev/null || true
  done
  for i in "${pids[@]}"; do
    wait "$i" || { FAILED+=("config: a service exited non-zero on SIGTERM"); }
  done
  stop_broker apache
  scripts/redis-local.sh stop > /dev/null
  [ $rc = 0 ] || FAILED+=("config: a measurement did not complete, see $LOG_DIR")
  if [ -n "$lat" ]; then
    local p50 p99
    p50=$(json_field "$lat" p50_ms)
    p99=$(json_field "$lat" p99_ms)
    SUMMARY+=("cfg-rel	apache	-	$p50	$p99	-	-	release->callback p99 $(met "$p99" '<=' 200) (5 services)")
  else
    SUMMARY+=("cfg-rel	apache	-	-	-	-	-	failed")
  fi
  if [ -n "$wat" ]; then
    local n fan rss
    n=$(json_field "$wat" notified)
    fan=$(json_field "$wat" fanout_ms)
    rss=$(json_field "$wat" rss_mib_peak)
    SUMMARY+=("cfg-watch	apache	$n	-	$fan	-	$rss	$watchers watchers: all notified <= 1000 ms $(met "$fan" '<=' 1000), rss $(met "$rss" '<=' 256)")
  else
    SUMMARY+=("cfg-watch	apache	-	-	-	-	-	failed")
  fi
}

# ---- benchmark: robot-registry ------------------------------------------------

# wrk_figures OUT: "rps p50_ms p99_ms" from `wrk --latency` output.
wrk_figures() {
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.2f %.2f\n", rps, p50, p99 }' "$1"
}

# 100k robots loaded through the registry's own sync from a fake vendor
# (tests/integration/fake_vendor.py), then wrk: GET /v1/robots/{random id} and
# list pages (limit 100) from random cursors, with and without a fleet filter.
bench_registry() {
  local robots=${BENCH_ROBOTS:-100000} broker vport port pid vpid rc=0 t0 t1 c0 c1 cpu hwm rps p50 p99
  broker=${BROKERS%% *}
  echo "== registry / $broker ($robots robots)"
  [ -x "$BUILD/bin/robot-registry" ] || die "$BUILD/bin/robot-registry is missing: run 'make'"
  command -v wrk > /dev/null || die "wrk is not installed (apt-get install wrk)"
  fresh_redis
  export REDIS_URL
  start_broker "$broker"
  SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
  export SECRETS_KEY
  local vfile=$RUN_DIR/fake-vendor.port
  rm -f "$vfile"
  /usr/bin/python3 - "$vfile" "$robots" > "$LOG_DIR/fake-vendor.log" 2>&1 <<'PY' &
import sys, time
sys.path.insert(0, "tests/integration")
from fake_vendor import FakeVendor
v = FakeVendor("bench-token")
v.set_robots(int(sys.argv[2]), prefix="bench", fleet="fleet-0")
for i, r in enumerate(v.robots):
    r["fleet"] = f"fleet-{i % 20}"
v.start()
open(sys.argv[1], "w").write(str(v.port))
while True:
    time.sleep(3600)
PY
  vpid=$!
  for _ in $(seq 100); do [ -s "$vfile" ] && break; sleep 0.1; done
  vport=$(cat "$vfile")
  port=$(free_port)
  HTTP_PORT=$port HTTP_THREADS=${BENCH_REGISTRY_THREADS:-4} LOG_LEVEL=warn \
    "$BUILD/bin/robot-registry" -c services/robot-registry/robot-registry.yaml \
    > "$LOG_DIR/robot-registry.log" 2>&1 < /dev/null &
  pid=$!
  SVC_PID=$pid
  if ! wait_ready "$port" "$pid" robot-registry; then
    FAILED+=("registry: service not ready")
    SUMMARY+=("reg-get	$broker	-	-	-	-	-	failed")
    kill "$vpid" 2>/dev/null || true
    cleanup
    return 0
  fi
  local base="http://127.0.0.1:$port" sync
  curl -fsS -o /dev/null -X PUT "$base/v1/sources/bench" -H 'Content-Type: application/json' \
    -d "{\"base_url\":\"http://127.0.0.1:$vport\",\"api_token\":\"bench-token\"}" || rc=1
  t0=$(date +%s.%N)
  sync=$(curl -sS -m 900 -X POST "$base/v1/sources/bench/sync") || rc=1
  t1=$(date +%s.%N)
  echo "   sync: $sync in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
  kill "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  [ "$(json_field "$sync" added)" = "$robots" ] || { rc=1; FAILED+=("registry: sync did not add $robots robots"); }

  local lua=$RUN_DIR/registry-wrk.lua mode out path
  for mode in get list list-fleet; do
    case "$mode" in
      get) path='string.format("/v1/robots/bench-%05d", math.random(0, N - 1))' ;;
      list) path='string.format("/v1/robots?limit=100&cursor=bench-%05d", math.random(0, N - 1))' ;;
      list-fleet) path='string.format("/v1/robots?limit=100&fleet=fleet-%d&cursor=bench-%05d", math.random(0, 19), math.random(0, N - 1))' ;;
    esac
    printf 'N = %d\nmath.randomseed(os.time())\nrequest = function() return wrk.format("GET", %s) end\n' \
      "$robots" "$path" > "$lua"
    out=$LOG_DIR/registry-$mode.out
    wrk -t2 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$lua" "$base" > /dev/null 2>&1 || true
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$lua" "$base" > "$out" 2>&1 || rc=1
    c1=$(cpu_ticks "$pid")
    t1=$(date +%s.%N)
    cpu=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
      'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
    hwm=$(awk -v k="$(status_kb "$pid" VmHWM)" 'BEGIN { printf "%.1f", k / 1024 }')
    sed 's/^/   /' "$out"
    grep -q "Non-2xx" "$out" && FAILED+=("registry/$mode: non-2xx answers, see $out")
    read -r rps p50 p99 < <(wrk_figures "$out")
    if [ "$mode" = get ]; then
      SUMMARY+=("reg-$mode	$broker	$rps	$p50	$p99	$cpu	$hwm	GET/s >= 20000 $(met "$rps" '>=' 20000), p99 <= 10 ms $(met "$p99" '<=' 10)")
    else
      SUMMARY+=("reg-$mode	$broker	$rps	$p50	$p99	$cpu	$hwm	pages of 100 at $robots robots")
    fi
  done
  SVC_PID=""
  kill -TERM "$pid"
  wait "$pid" || FAILED+=("registry: robot-registry exited non-zero on SIGTERM")
  stop_broker "$broker"
  scripts/redis-local.sh stop > /dev/null
  [ $rc = 0 ] || FAILED+=("registry: a step failed, see $LOG_DIR")
}

# ---- benchmark: stream-processor ----------------------------------------------

# Events/s through stream-processor with exactly-once on (transactions,
# changelog, state outputs, Redis mirror) over BENCH_SP_EVENTS heartbeat-heavy
# events for BENCH_ROBOTS robots, against the raw consume rate of the same topic
# with a plain librdkafka consumer (kcat) in the same run (tests/bench/sp_bench.py),
# after BENCH_SP_WARMUP_TXNS (60) transactions that warm the broker's write path;
# the processor runs BENCH_SP_RUNS (3) times, best of them against the best raw read.
# For diagnosis: BENCH_SP_LOG_LEVEL, BENCH_SP_KAFKA ("debug=eos;linger.ms=2") and
# BENCH_SP_STREAM ("changelog_heartbeat_s=300") change the processor's settings.
bench_stream() {
  local broker=apache out json rc=0
  echo "== stream / $broker (${BENCH_SP_EVENTS:-1000000} events, ${BENCH_ROBOTS:-100000} robots)"
  [ -x "$BUILD/bin/stream-processor" ] || die "$BUILD/bin/stream-processor is missing: run 'make'"
  command -v kcat > /dev/null || die "kcat is not installed (apt-get install kcat)"
  fresh_redis
  export REDIS_URL
  start_broker "$broker"
  out=$LOG_DIR/stream-bench.out
  SP_PORT=$(free_port) /usr/bin/python3 tests/bench/sp_bench.py "$BUILD" "$RUN_DIR" > "$out" 2>&1 || rc=$?
  sed 's/^/   /' "$out"
  stop_broker "$broker"
  scripts/redis-local.sh stop > /dev/null
  json=$(grep '^{' "$out" | tail -n 1 || true)
  if [ "$rc" != 0 ] || [ -z "$json" ] || [ -n "$(json_field "$json" error)" ]; then
    FAILED+=("stream/$broker: the benchmark did not complete (exit $rc), see $out")
    SUMMARY+=("stream	$broker	-	-	-	-	-	failed")
    return 0
  fi
  local eps raw ratio cores epc rss
  eps=$(json_field "$json" events_per_s)
  raw=$(json_field "$json" raw_per_s)
  ratio=$(json_field "$json" ratio)
  cores=$(json_field "$json" cpu_cores)
  epc=$(json_field "$json" events_per_cpu_s)
  rss=$(json_field "$json" rss_mib_peak)
  SUMMARY+=("stream	$broker	$eps	-	-	$(awk -v c="$cores" 'BEGIN{printf "%.0f", c*100}')	$rss	events/s $(met "$eps" '>=' 100000) (raw $raw/s, ratio $ratio $(met "$ratio" '>=' 0.25), $epc per cpu-s), rss $(met "$rss" '<=' 128)")
}

# ---- benchmark: reboot-command -----------------------------------------------

# Commands/s from robot.commands.v1 to the vendor's POST, and the p99 from the
# dispatch decision to the vendor's answer, over BENCH_REBOOT_COMMANDS automatic
# requests (one per robot) against the C robot simulator (build/bin/robot-sim) as
# a fast vendor (tests/bench/reboot_bench.py).
bench_reboot() {
  local broker=apache out json rc=0 cps p99 cpu rss
  echo "== reboot / $broker (${BENCH_REBOOT_COMMANDS:-20000} commands)"
  [ -x "$BUILD/bin/reboot-command" ] || die "$BUILD/bin/reboot-command is missing: run 'make'"
  [ -x "$BUILD/bin/robot-sim" ] || die "$BUILD/bin/robot-sim (the bench's vendor) is missing: run 'make'"
  fresh_redis
  export REDIS_URL
  start_broker "$broker"
  SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
  export SECRETS_KEY
  out=$LOG_DIR/reboot-bench.out
  RB_PORT=$(free_port) /usr/bin/python3 tests/bench/reboot_bench.py "$BUILD" "$RUN_DIR" > "$out" 2>&1 || rc=$?
  sed 's/^/   /' "$out"
  stop_broker "$broker"
  scripts/redis-local.sh stop > /dev/null
  json=$(tail -n 1 "$out")
  if [ $rc != 0 ] || [ "${json:0:1}" != "{" ]; then
    FAILED+=("reboot: benchmark failed (exit $rc), see $out")
    SUMMARY+=("reboot	$broker	-	-	-	-	-	failed")
    return 0
  fi
  cps=$(json_field "$json" cmds_per_s)
  p99=$(json_field "$json" p99_ms)
  cpu=$(json_field "$json" cpu_s)
  rss=$(json_field "$json" rss_mib_peak)
  SUMMARY+=("reboot	$broker	$cps	-	$p99	${cpu}s	$rss	commands/s >= 2000 $(met "$cps" '>=' 2000), decision->dispatch p99 <= 50 ms $(met "$p99" '<=' 50), duplicates $(json_field "$json" duplicates)")
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
echo "  reboot: accepted/s = commands/s from robot.commands.v1 to vendor dispatch, p99 = decision -> vendor answer (targets >= 2000/s, <= 50 ms); cpu = reboot-command cpu seconds"
echo "  stream: accepted/s = events/s through stream-processor (exactly-once), targets >= 100000/s on one core, >= 25% of the raw consume rate, rss <= 128 MiB"
echo "  cfg-rel: p50/p99 = release sent -> applied in each of 5 services; cfg-watch: accepted/s = watchers notified, p99 = fan-out ms, rss = config-center peak (VmHWM)"
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
