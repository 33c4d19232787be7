#!/usr/bin/env bash
# Side-by-side comparison: beacond (with every beacon verified in Kafka)
# against nginx answering `return 204`, and against Varnish answering beacons
# with a synthetic 204 where varnishd is installed (the system beacond replaces).
#
#   loadtest/compare.sh                 # 20 s per measurement
#   DURATION=60s loadtest/compare.sh    # longer
#   BEACOND=path/to/beacond LOADTEST=path/to/loadtest SKIP_BUILD=1 loadtest/compare.sh
#   MODE=events loadtest/compare.sh     # POST /v1/events instead of beacons
#
# MODE=events: hasty single-event posts (`POST /v1/events?hasty=true`, one
# realistic event of a real schema per request, text/plain as sendBeacon
# sends it; beacond validates every one) against nginx answering the same
# POST with `return 204`; every event verified on its stream's topic. beacond
# gets `[events]` over config/dev-streams.yaml and the schemas in
# tests/fixtures/event-schemas/; the stream topics and the error topic are
# created on the broker. No Varnish baseline in this mode. EVENT_FLAGS adds
# loadtest flags (e.g. EVENT_FLAGS="--batch 1-10" for arrays, or
# "--invalid-fraction 0.01").
#
# What it does, in order:
#   1. installs nginx-light if nginx is missing; builds release binaries
#      (SKIP_BUILD=1 to skip);
#   2. starts a dev broker (tansu, port $BROKER_PORT) and a fresh topic;
#   3. starts nginx (`return 204`), Varnish if installed, and beacond
#      (varnishkafka format) on loopback ports;
#   4. max throughput: `loadtest --rate max` against beacond with nginx, then
#      with Varnish if present, in alternating rounds, Kafka verification on;
#   5. latency at 50% of beacond's best max of step 4: `loadtest --rate <half>`
#      against beacond with each baseline, Kafka verification on;
#   6. (Kafka is read after each load: --kafka-read-after);
#   7. prints a summary and writes everything to $OUT (default
#      loadtest/results/compare-<time>/): per-step JSON reports and SVG plots,
#      summary.md.
#
# CPU pinning (2 cores): the servers under test (beacond, nginx, varnishd)
# run on core 0 (`taskset -c 0`); the load generator and the broker on core 1
# (`taskset -c 1`), so the generator never competes with the server it
# measures. With fewer than 2 cores nothing is pinned (and the figures say
# less). Every process started here is stopped on exit, by its pid.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MODE=${MODE:-beacons}
case "$MODE" in beacons|events) ;; *) echo "compare: MODE must be beacons or events" >&2; exit 2 ;; esac
DURATION=${DURATION:-20s}
ROUND=${ROUND:-5s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
BEACON_PORT=${BEACON_PORT:-18480}
ADMIN_PORT=${ADMIN_PORT:-18481}
NGINX_PORT=${NGINX_PORT:-18482}
VARNISH_PORT=${VARNISH_PORT:-18483}
BROKER_PORT=${BROKER_PORT:-19094}
if [ "$MODE" = events ]; then
  OUT=${OUT:-$root/loadtest/results/compare-events-$(date +%Y%m%d-%H%M%S)}
  TARGET_PATH=/v1/events
  # shellcheck disable=SC2206
  LT_MODE=(--protocol events --hasty --batch 1 ${EVENT_FLAGS:-})
else
  OUT=${OUT:-$root/loadtest/results/compare-$(date +%Y%m%d-%H%M%S)}
  TARGET_PATH=/beacon/event
  LT_MODE=()
fi
mkdir -p "$OUT"
log() { printf 'compare: %s\n' "$*" >&2; }

if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); pin_pid() { taskset -pc "$1" "$2" >/dev/null; }
else
  log "fewer than 2 CPUs: running unpinned"
  SERVER_CPU=(); LOAD_CPU=(); pin_pid() { :; }
fi

pids=()
started_broker=""
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ -n "$started_broker" ]; then BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker stop; fi
}
trap cleanup EXIT

wait_http() { # port path
  for _ in $(seq 1 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2" || true)
    case "$code" in 2*) return 0 ;; esac
    sleep 0.2
  done
  log "nothing answers on 127.0.0.1:$1$2"; return 1
}

# 1. tools and binaries
if ! command -v nginx >/dev/null; then
  log "installing nginx-light"
  apt-get install -y nginx-light >/dev/null || { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; }
fi
if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "building release binaries"
  cargo build --release -p loadtest -p beacond
fi
LOADTEST=${LOADTEST:-$root/target/release/loadtest}
BEACOND=${BEACOND:-$root/target/release/beacond}

# 2. broker and topic
if BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker status; then
  log "using the broker already on port $BROKER_PORT"
else
  started_broker=1
fi
BROKERS=$(BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker start)
BROKER_PID=$(cat "$root/.tools/tansu-$BROKER_PORT.pid")
pin_pid 1 "$BROKER_PID" || true
TOPIC=compare-$(date +%s)
BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker create-topic "$TOPIC" 3 >/dev/null
log "broker $BROKERS, topic $TOPIC"
KAFKA_TOPIC_FLAGS=(--kafka-topic "$TOPIC")
if [ "$MODE" = events ]; then
  # The events' topics are their streams' names (shared by runs: the reader
  # starts at their end offsets and knows its run's ids).
  for t in eventlogging_NavigationTiming eventlogging_SearchSatisfaction test.event \
    product_metrics.web_base beacond.error.validation; do
    BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker create-topic "$t" 3 >/dev/null 2>&1 || true
  done
  KAFKA_TOPIC_FLAGS=()
fi

# 3. servers
mkdir -p "$OUT/nginx/logs"
cat >"$OUT/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
  fastcgi_temp_path $OUT/nginx/fastcgi;
  uwsgi_temp_path $OUT/nginx/uwsgi;
  scgi_temp_path $OUT/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { return 204; }
    # The events intake's answer without the work: the body is read and dropped.
    location = /v1/events { return 204; }
  }
}
CONF
"${SERVER_CPU[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/logs/error.log" &
NGINX_PID=$!
pids+=($!)
wait_http "$NGINX_PORT" /beacon/event
log "nginx on 127.0.0.1:$NGINX_PORT"

VARNISH=""
if [ "$MODE" = events ]; then
  log "events mode: no Varnish baseline"
elif command -v varnishd >/dev/null; then
  mkdir -p "$OUT/varnish"
  cat >"$OUT/varnish/beacon.vcl" <<'VCL'
vcl 4.1;
backend default none;
sub vcl_recv {
  if (req.url ~ "^/beacon/[^/?]+") { return (synth(204)); }
  return (synth(404));
}
sub vcl_synth {
  set resp.http.Content-Length = "0";
  return (deliver);
}
VCL
  "${SERVER_CPU[@]}" varnishd -F -j none -n "$OUT/varnish/work" -a "127.0.0.1:$VARNISH_PORT" \
    -f "$OUT/varnish/beacon.vcl" -s malloc,64m -p thread_pools=1 -p timeout_idle=75 >"$OUT/varnish/varnishd.log" 2>&1 &
  VARNISH_PID=$!
  pids+=($!)
  if wait_http "$VARNISH_PORT" /beacon/event; then
    VARNISH=1; log "varnish on 127.0.0.1:$VARNISH_PORT"
  else
    log "varnishd did not start; see $OUT/varnish/varnishd.log"
  fi
else
  log "varnishd not installed: skipping the Varnish baseline"
fi

cat >"$OUT/beacond.toml" <<CONF
[http]
listen = "127.0.0.1:$BEACON_PORT"
routes = ["/beacon/event", "/event.gif"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[client_ip]
trusted_proxies = ["127.0.0.1/32", "::1/128"]
header = "x-forwarded-for"
[output]
format = "varnishkafka"
hostname = "loadtest-host"
[kafka]
brokers = "$BROKERS"
topic = "$TOPIC"
CONF
if [ "$MODE" = events ]; then
  cat >>"$OUT/beacond.toml" <<CONF
[events]
stream_config = "$root/config/dev-streams.yaml"
schema_repositories = ["$root/tests/fixtures/event-schemas/primary/jsonschema", "$root/tests/fixtures/event-schemas/secondary/jsonschema"]
CONF
fi
"${SERVER_CPU[@]}" "$BEACOND" --config "$OUT/beacond.toml" >"$OUT/beacond.log" 2>&1 &
BEACOND_PID=$!
pids+=($!)
if ! wait_http "$ADMIN_PORT" /readyz; then
  log "beacond is not ready; its log:"; tail -20 "$OUT/beacond.log" >&2; exit 1
fi
log "beacond on 127.0.0.1:$BEACON_PORT"

# 4-6. measurements
# CPU seconds used by a process and its children (threads included).
cpu_s() {
  python3 - "$@" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK"); total = 0
def kids(pid):
    try: return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError: return []
todo = [int(p) for p in sys.argv[1:]]
while todo:
    pid = todo.pop(); todo += kids(pid)
    try: f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError: continue
    total += int(f[11]) + int(f[12])
print(total / tck)
PY
}
# Busy and total jiffies of CPU $1, from /proc/stat.
core_ticks() { awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6 }' /proc/stat; }
run() { # name baseline-port rate baseline-pid [loadtest flags]
  log "step $1: rate $3 vs baseline port $2 for $DURATION"
  local name=$1 port=$2 rate=$3 bpid=$4 b0 s0 c0
  shift 4
  b0=$(cpu_s "$BEACOND_PID"); s0=$(cpu_s "$bpid"); k0=$(cpu_s "$BROKER_PID"); c0=$(core_ticks 1)
  "${LOAD_CPU[@]}" "$LOADTEST" --target "http://127.0.0.1:$BEACON_PORT$TARGET_PATH" \
    --baseline "http://127.0.0.1:$port$TARGET_PATH" --rate "$rate" --duration "$DURATION" --round "$ROUND" \
    --warmup "$WARMUP" --connections "$CONNECTIONS" --kafka-brokers "$BROKERS" "${KAFKA_TOPIC_FLAGS[@]}" "${LT_MODE[@]}" \
    --kafka-drain-timeout 120s --report-json "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.txt"
  # Each server was loaded for DURATION + WARMUP of the run (alternating rounds).
  python3 - "$OUT/$name.cpu.json" "$b0" "$(cpu_s "$BEACOND_PID")" "$s0" "$(cpu_s "$bpid")" "$c0" "$(core_ticks 1)" \
    "$DURATION" "$WARMUP" "$k0" "$(cpu_s "$BROKER_PID")" "$OUT/$name.json" <<'PY'
import json, sys
out, b0, b1, s0, s1, c0, c1, dur, warm, k0, k1, report = sys.argv[1:]
(cb0, ct0), (cb1, ct1) = c0.split(), c1.split()
def secs(v):
    for unit, f in (("ms", 0.001), ("m", 60), ("s", 1)):
        if v.endswith(unit): return float(v[: -len(unit)]) * f
    return float(v)
loaded = secs(dur) + secs(warm)
r = json.load(open(report))
cpu = {"beacond_cpu": (float(b1) - float(b0)) / loaded, "baseline_cpu": (float(s1) - float(s0)) / loaded,
       "loadtest_cpu": r["generator_cpu"], "broker_cpu_s": float(k1) - float(k0),
       "load_core_busy": (int(cb1) - int(cb0)) / max(1, int(ct1) - int(ct0))}
json.dump(cpu, open(out, "w"))
print("compare: CPU, in cores, while each was loaded: beacond %.2f, baseline %.2f, loadtest %.2f; "
      "broker %.1f CPU-s over the step; core 1 busy %.0f%% over the step (incl. warm-up and Kafka drain)"
      % (cpu["beacond_cpu"], cpu["baseline_cpu"], cpu["loadtest_cpu"], cpu["broker_cpu_s"], cpu["load_core_busy"] * 100),
      file=sys.stderr)
PY
}
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'r': d}))" "$@"; }

# The Kafka reader waits for the end of the load (--kafka-read-after): reading
# and checking every beacon live would take CPU from the generator on core 1.
# Delivery is verified all the same, from the end offsets taken at the start.
run max-nginx "$NGINX_PORT" max "$NGINX_PID" --kafka-read-after
baselines=(nginx)
if [ -n "$VARNISH" ]; then
  run max-varnish "$VARNISH_PORT" max "$VARNISH_PID" --kafka-read-after
  baselines+=(varnish)
fi
# Half of beacond's best max over the max steps (noise only ever lowers a max).
max_reports=()
for b in "${baselines[@]}"; do max_reports+=("$OUT/max-$b.json"); done
HALF=$(python3 -c "import json,sys; print(max(1, int(max(json.load(open(f))['ok_rate'] for f in sys.argv[1:]) / 2)))" \
  "${max_reports[@]}")
run half-nginx "$NGINX_PORT" "$HALF" "$NGINX_PID" --kafka-read-after
if [ -n "$VARNISH" ]; then
  run half-varnish "$VARNISH_PORT" "$HALF" "$VARNISH_PID" --kafka-read-after
fi

# 7. summary
python3 - "$OUT" "$HALF" "$MODE" "${baselines[@]}" <<'PY' | tee "$OUT/summary.md"
import json, sys
out, half, mode, baselines = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
if mode == "events":
    print("Mode: events: hasty single-event POST /v1/events?hasty=true (one realistic event of a real schema per request, validated by beacond) vs nginx `return 204` for the same POST.\n")
print("| baseline | beacond max 2xx/s | baseline max 2xx/s | max ratio | CPU at max, cores: beacond / baseline / loadtest | rate (50% of beacond max) | beacond p50 / p99 ms | baseline p50 / p99 ms | Kafka delivered / lost / duplicated |")
print("|---|---|---|---|---|---|---|---|---|")
for b in baselines:
    m = json.load(open(f"{out}/max-{b}.json")); h = json.load(open(f"{out}/half-{b}.json"))
    c = json.load(open(f"{out}/max-{b}.cpu.json"))
    k = [m["kafka"], h["kafka"]]
    print(f"| {b} | {m['ok_rate']:.0f} | {m['baseline']['ok_rate']:.0f} | {m['baseline']['ratio']:.2f} "
          f"| {c['beacond_cpu']:.2f} / {c['baseline_cpu']:.2f} / {c['loadtest_cpu']:.2f} | {half}/s "
          f"| {h['latency_ms']['p50']:.3f} / {h['latency_ms']['p99']:.3f} "
          f"| {h['baseline']['latency_ms']['p50']:.3f} / {h['baseline']['latency_ms']['p99']:.3f} "
          f"| {sum(x['delivered'] for x in k)} / {sum(x['lost'] for x in k)} / {sum(x['duplicated'] for x in k)} |")
print("\nA server using well under 1.0 core at max was held back by core 1 (loadtest and the broker")
print("share it), not by itself: its max is then a lower bound.")
print(f"\nReports and plots: {out}")
PY
