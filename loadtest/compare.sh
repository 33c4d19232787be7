#!/usr/bin/env bash
# Side-by-side comparison, in one run with alternating rounds, every
# beacon and event verified in Kafka:
#   - beacond's legacy path (`GET /beacon/event`, varnishkafka lines, spool
#     `overflow`) against nginx answering `return 204`, and against Varnish
#     answering beacons with a synthetic 204 where varnishd is installed (the
#     system beacond replaces);
#   - beacond's events intake, hasty single-event posts (`POST
#     /v1/events?hasty=true`, one realistic event of a real schema per
#     request, text/plain as sendBeacon sends it; beacond validates every
#     one), against nginx answering the same POST with `return 204`;
#   - beacond with `spool.mode = "always"` (write-ahead) against the same
#     beacond with `overflow` (two processes, one spool directory each);
#   - latency at half of beacond's max (open loop), legacy and events, each
#     with nginx at the same rate.
#
#   loadtest/compare.sh                 # everything (MODE=all), 20 s per step
#   MODE=beacons loadtest/compare.sh    # the legacy steps only (and Varnish)
#   MODE=events loadtest/compare.sh     # the events steps only
#   MODE=spool loadtest/compare.sh      # always vs overflow only
#   DURATION=60s loadtest/compare.sh    # longer
#   BEACOND=path/to/beacond LOADTEST=path/to/loadtest SKIP_BUILD=1 loadtest/compare.sh
#
# EVENT_FLAGS adds loadtest flags to the events steps (e.g. EVENT_FLAGS="--batch
# 1-10" for arrays, or "--invalid-fraction 0.01"). The events beacond gets
# `[events]` over config/dev-streams.yaml and the schemas in
# tests/fixtures/event-schemas/; the stream topics and the error topic are
# created on the broker.
#
# always vs overflow: loadtest verifies the target's deliveries only, so the
# step runs twice for half of DURATION each, once with `always` as the
# target and once with `overflow`; each server's rate is the mean of its two
# halves, and both are verified in Kafka.
#
# What it does, in order:
#   1. installs nginx-light if nginx is missing; builds release binaries
#      (SKIP_BUILD=1 to skip);
#   2. starts a dev broker (tansu, port $BROKER_PORT) and fresh topics;
#   3. starts nginx (`return 204`), Varnish if installed, and the beacond
#      processes the mode needs, on loopback ports;
#   4. the max-throughput steps (`loadtest --rate max`, Kafka read after the
#      load with --kafka-read-after), then the latency steps at 50% of
#      beacond's max of its path;
#   5. prints a summary and writes everything to $OUT (default
#      loadtest/results/compare-<mode>-<time>/): per-step JSON reports, SVG
#      plots and CPU use, summary.md.
#
# CPU pinning (2 cores): the servers under test (beacond, nginx, varnishd)
# run on core 0 (`taskset -c 0`); the load generator and the broker on core 1
# (`taskset -c 1`), so the generator never competes with the server it
# measures. With fewer than 2 cores nothing is pinned (and the figures say
# less). Every process started here is stopped on exit, by its pid.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MODE=${MODE:-all}
case "$MODE" in all|beacons|events|spool) ;; *) echo "compare: MODE must be all, beacons, events or spool" >&2; exit 2 ;; esac
want() { [ "$MODE" = all ] || [ "$MODE" = "$1" ]; }
DURATION=${DURATION:-20s}
ROUND=${ROUND:-5s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
BEACON_PORT=${BEACON_PORT:-18480}
ADMIN_PORT=${ADMIN_PORT:-18481}
NGINX_PORT=${NGINX_PORT:-18482}
VARNISH_PORT=${VARNISH_PORT:-18483}
EVENTS_PORT=${EVENTS_PORT:-18484}
EVENTS_ADMIN_PORT=${EVENTS_ADMIN_PORT:-18485}
ALWAYS_PORT=${ALWAYS_PORT:-18486}
ALWAYS_ADMIN_PORT=${ALWAYS_ADMIN_PORT:-18487}
BROKER_PORT=${BROKER_PORT:-19094}
OUT=${OUT:-$root/loadtest/results/compare-$MODE-$(date +%Y%m%d-%H%M%S)}
# shellcheck disable=SC2206
EVENTS_LT=(--protocol events --hasty --batch 1 ${EVENT_FLAGS:-})
mkdir -p "$OUT"
log() { printf 'compare: %s\n' "$*" >&2; }

if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); pin_pid() { taskset -pc "$1" "$2" >/dev/null; }
else
  log "fewer than 2 CPUs: running unpinned"
  SERVER_CPU=(); LOAD_CPU=(); pin_pid() { :; }
fi

# shellcheck source=loadtest/lib.sh
. "$root/loadtest/lib.sh"

# 1. tools and binaries
need_nginx
if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "building release binaries"
  cargo build --release -p loadtest -p beacond
fi
LOADTEST=${LOADTEST:-$root/target/release/loadtest}
BEACOND=${BEACOND:-$root/target/release/beacond}

# 2. broker and topics
dev_broker
BROKER_PID=$(cat "$root/.tools/tansu-$BROKER_PORT.pid")
pin_pid 1 "$BROKER_PID" || true
TOPIC=compare-$(date +%s)
ALWAYS_TOPIC=$TOPIC-always
for t in "$TOPIC" "$ALWAYS_TOPIC"; do
  BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker create-topic "$t" 3 >/dev/null
done
log "broker $BROKERS, topics $TOPIC (overflow) and $ALWAYS_TOPIC (always)"
if want events; then
  # The events' topics are their streams' names (shared by runs: the reader
  # starts at their end offsets and knows its run's ids).
  for t in eventlogging_NavigationTiming eventlogging_SearchSatisfaction test.event \
    product_metrics.web_base beacond.error.validation; do
    BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker create-topic "$t" 3 >/dev/null 2>&1 || true
  done
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
if ! want beacons; then
  :
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

# One beacond: name, port, admin port, then the TOML added to the common part.
start_beacond() {
  local name=$1 port=$2 admin=$3 extra=$4 pid
  mkdir -p "$OUT/$name"
  cat >"$OUT/$name/beacond.toml" <<CONF
[http]
listen = "127.0.0.1:$port"
routes = ["/beacon/event", "/event.gif"]
[admin]
listen = "127.0.0.1:$admin"
[client_ip]
trusted_proxies = ["127.0.0.1/32", "::1/128"]
header = "x-forwarded-for"
[output]
format = "varnishkafka"
hostname = "loadtest-host"
$extra
CONF
  "${SERVER_CPU[@]}" "$BEACOND" --config "$OUT/$name/beacond.toml" >"$OUT/$name/beacond.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  if ! wait_http "$admin" /readyz; then
    log "beacond ($name) is not ready; its log:"; tail -20 "$OUT/$name/beacond.log" >&2; exit 1
  fi
  log "beacond ($name) on 127.0.0.1:$port, pid $pid"
  BEACOND_PID=$pid
}
spool() { # dir mode
  printf '[spool]\nenabled = true\ndir = "%s"\nmode = "%s"\n' "$1" "$2"
}
kafka() { # topic
  printf '[kafka]\nbrokers = "%s"\ntopic = "%s"\n' "$BROKERS" "$1"
}
if want beacons || want spool; then
  start_beacond overflow "$BEACON_PORT" "$ADMIN_PORT" "$(kafka "$TOPIC")
$(spool "$OUT/overflow/spool" overflow)"
  OVERFLOW_PID=$BEACOND_PID
fi
if want spool; then
  start_beacond always "$ALWAYS_PORT" "$ALWAYS_ADMIN_PORT" "$(kafka "$ALWAYS_TOPIC")
$(spool "$OUT/always/spool" always)"
  ALWAYS_PID=$BEACOND_PID
fi
if want events; then
  start_beacond events "$EVENTS_PORT" "$EVENTS_ADMIN_PORT" "$(kafka "$TOPIC-events-unused")
$(spool "$OUT/events/spool" overflow)
[events]
stream_config = \"$root/config/dev-streams.yaml\"
schema_repositories = [\"$root/tests/fixtures/event-schemas/primary/jsonschema\", \"$root/tests/fixtures/event-schemas/secondary/jsonschema\"]"
  EVENTS_PID=$BEACOND_PID
fi

# 4. measurements
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
# One step: name, target URL, baseline URL, rate, target pid, baseline pid,
# duration, then loadtest flags (the Kafka ones included).
run() {
  local name=$1 target=$2 baseline=$3 rate=$4 tpid=$5 bpid=$6 duration=$7 b0 s0 k0 c0
  shift 7
  log "step $name: rate $rate, $target vs $baseline for $duration"
  b0=$(cpu_s "$tpid"); s0=$(cpu_s "$bpid"); k0=$(cpu_s "$BROKER_PID"); c0=$(core_ticks 1)
  # The Kafka reader waits for the end of the load (--kafka-read-after):
  # reading and checking every beacon live would take CPU from the generator
  # on core 1. Delivery is verified all the same, from the end offsets taken
  # at the start.
  "${LOAD_CPU[@]}" "$LOADTEST" --target "$target" --baseline "$baseline" --rate "$rate" \
    --duration "$duration" --round "$ROUND" --warmup "$WARMUP" --connections "$CONNECTIONS" \
    --kafka-brokers "$BROKERS" --kafka-read-after --kafka-drain-timeout 120s \
    --report-json "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.txt"
  # Each server was loaded for duration + warm-up (alternating rounds).
  python3 - "$OUT/$name.cpu.json" "$b0" "$(cpu_s "$tpid")" "$s0" "$(cpu_s "$bpid")" "$c0" "$(core_ticks 1)" \
    "$duration" "$WARMUP" "$k0" "$(cpu_s "$BROKER_PID")" "$OUT/$name.json" "$tpid" <<'PY'
import json, sys
out, b0, b1, s0, s1, c0, c1, dur, warm, k0, k1, report, tpid = sys.argv[1:]
def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
(cb0, ct0), (cb1, ct1) = c0.split(), c1.split()
def secs(v):
    for unit, f in (("ms", 0.001), ("m", 60), ("s", 1)):
        if v.endswith(unit): return float(v[: -len(unit)]) * f
    return float(v)
loaded = secs(dur) + secs(warm)
r = json.load(open(report))
cpu = {"target_cpu": (float(b1) - float(b0)) / loaded, "baseline_cpu": (float(s1) - float(s0)) / loaded,
       "loadtest_cpu": r["generator_cpu"], "broker_cpu_s": float(k1) - float(k0),
       "load_core_busy": (int(cb1) - int(cb0)) / max(1, int(ct1) - int(ct0)),
       "target_peak_rss_mib": peak_rss_mib(tpid)}
json.dump(cpu, open(out, "w"))
print("compare: CPU, in cores, while each was loaded: target %.2f, baseline %.2f, loadtest %.2f; "
      "broker %.1f CPU-s over the step; core 1 busy %.0f%% over the step (incl. warm-up and Kafka drain)"
      % (cpu["target_cpu"], cpu["baseline_cpu"], cpu["loadtest_cpu"], cpu["broker_cpu_s"], cpu["load_core_busy"] * 100),
      file=sys.stderr)
PY
}
half_of() { python3 -c "import json,sys; print(max(1, int(max(json.load(open(f))['ok_rate'] for f in sys.argv[1:]) / 2)))" "$@"; }
half_duration() {
  python3 -c "
import sys; v = sys.argv[1]
for unit, f in (('ms', 0.001), ('m', 60), ('s', 1)):
    if v.endswith(unit): print(f'{float(v[:-len(unit)]) * f / 2:g}s'); break
else: print(f'{float(v) / 2:g}s')" "$1"
}

BEACONS=http://127.0.0.1:$BEACON_PORT/beacon/event
ALWAYS=http://127.0.0.1:$ALWAYS_PORT/beacon/event
EVENTS=http://127.0.0.1:$EVENTS_PORT/v1/events
NGINX_BEACONS=http://127.0.0.1:$NGINX_PORT/beacon/event
NGINX_EVENTS=http://127.0.0.1:$NGINX_PORT/v1/events
VARNISH_BEACONS=http://127.0.0.1:$VARNISH_PORT/beacon/event
steps=()
if want beacons; then
  run max-nginx "$BEACONS" "$NGINX_BEACONS" max "$OVERFLOW_PID" "$NGINX_PID" "$DURATION" --kafka-topic "$TOPIC"
  steps+=(max-nginx)
  if [ -n "$VARNISH" ]; then
    run max-varnish "$BEACONS" "$VARNISH_BEACONS" max "$OVERFLOW_PID" "$VARNISH_PID" "$DURATION" --kafka-topic "$TOPIC"
    steps+=(max-varnish)
  fi
fi
if want events; then
  run max-events "$EVENTS" "$NGINX_EVENTS" max "$EVENTS_PID" "$NGINX_PID" "$DURATION" "${EVENTS_LT[@]}"
  steps+=(max-events)
fi
if want spool; then
  HALF_DURATION=$(half_duration "$DURATION")
  run max-always "$ALWAYS" "$BEACONS" max "$ALWAYS_PID" "$OVERFLOW_PID" "$HALF_DURATION" --kafka-topic "$ALWAYS_TOPIC"
  run max-overflow "$BEACONS" "$ALWAYS" max "$OVERFLOW_PID" "$ALWAYS_PID" "$HALF_DURATION" --kafka-topic "$TOPIC"
  steps+=(max-always max-overflow)
fi
# Latency at half of beacond's best max of its path (noise only ever lowers a max).
if want beacons; then
  max_reports=("$OUT/max-nginx.json")
  if [ -n "$VARNISH" ]; then max_reports+=("$OUT/max-varnish.json"); fi
  HALF=$(half_of "${max_reports[@]}")
  run half-nginx "$BEACONS" "$NGINX_BEACONS" "$HALF" "$OVERFLOW_PID" "$NGINX_PID" "$DURATION" --kafka-topic "$TOPIC"
  steps+=(half-nginx)
  if [ -n "$VARNISH" ]; then
    run half-varnish "$BEACONS" "$VARNISH_BEACONS" "$HALF" "$OVERFLOW_PID" "$VARNISH_PID" "$DURATION" --kafka-topic "$TOPIC"
    steps+=(half-varnish)
  fi
fi
if want events; then
  run half-events "$EVENTS" "$NGINX_EVENTS" "$(half_of "$OUT/max-events.json")" "$EVENTS_PID" "$NGINX_PID" \
    "$DURATION" "${EVENTS_LT[@]}"
  steps+=(half-events)
fi

# 5. summary
python3 "$root/loadtest/compare_summary.py" "$OUT" "${steps[@]}" | tee "$OUT/summary.md"
