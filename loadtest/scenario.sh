#!/usr/bin/env bash
# Runs one scenario of loadtest/scenarios/ against a release beacond, with
# Kafka verification, through the harness's broker proxy:
#
#   loadtest/scenario.sh broker-outage [extra loadtest flags, e.g. --rate 300]
#
# Topology (ports overridable by env):
#   tansu listens on 127.0.0.1:$UPSTREAM_PORT and advertises 127.0.0.1:$PROXY_PORT,
#   loadtest runs the proxy 127.0.0.1:$PROXY_PORT -> 127.0.0.1:$UPSTREAM_PORT,
#   beacond's kafka.brokers is the proxy, so every broker connection (after
#   bootstrap too) goes through it, and a scenario's broker_down cuts them all.
# loadtest starts first (the proxy must exist) and waits for beacond with
# --wait-target. Pinning as in compare.sh: beacond on core 0, loadtest and
# the broker on core 1. BEACOND, LOADTEST: other binaries (with SKIP_BUILD=1).
# Output in $OUT (default loadtest/results/<name>-<time>/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
name=${1:?usage: loadtest/scenario.sh NAME [loadtest flags]}; shift
scenario=$root/loadtest/scenarios/$name.toml
[ -f "$scenario" ] || { echo "no scenario $scenario" >&2; exit 2; }
PROXY_PORT=${PROXY_PORT:-29092}
UPSTREAM_PORT=${UPSTREAM_PORT:-29093}
BEACON_PORT=${BEACON_PORT:-18490}
ADMIN_PORT=${ADMIN_PORT:-18491}
HEADER_TIMEOUT_MS=${HEADER_TIMEOUT_MS:-10000}
OUT=${OUT:-$root/loadtest/results/$name-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
log() { printf 'scenario: %s\n' "$*" >&2; }
if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); else SERVER_CPU=(); LOAD_CPU=(); fi

# shellcheck source=loadtest/lib.sh
. "$root/loadtest/lib.sh"

if [ "${SKIP_BUILD:-}" != 1 ]; then cargo build --release -p loadtest -p beacond; fi
LOADTEST=${LOADTEST:-$root/target/release/loadtest}
BEACOND=${BEACOND:-$root/target/release/beacond}

tansu=$(scripts/dev-broker bin)
"${LOAD_CPU[@]}" "$tansu" broker --listener-url "tcp://127.0.0.1:$UPSTREAM_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PROXY_PORT" --storage-engine memory://tansu/ \
  >"$OUT/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null && break; sleep 0.1; done
TOPIC=scenario-$name-$(date +%s)
"$tansu" topic create --broker "tcp://127.0.0.1:$UPSTREAM_PORT" --partitions 3 "$TOPIC" >/dev/null
log "broker on $UPSTREAM_PORT (advertised as the proxy, $PROXY_PORT), topic $TOPIC"

"${LOAD_CPU[@]}" "$LOADTEST" --target "http://127.0.0.1:$BEACON_PORT/beacon/event" \
  --scenario "$scenario" --broker-proxy "127.0.0.1:$PROXY_PORT=127.0.0.1:$UPSTREAM_PORT" \
  --kafka-brokers "127.0.0.1:$PROXY_PORT" --kafka-topic "$TOPIC" --wait-target 60s \
  --report-json "$OUT/report.json" --plot "$OUT/report.svg" "$@" >"$OUT/report.txt" &
lt=$!

cat >"$OUT/beacond.toml" <<CONF
[http]
listen = "127.0.0.1:$BEACON_PORT"
header_read_timeout_ms = $HEADER_TIMEOUT_MS
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[client_ip]
trusted_proxies = ["127.0.0.1/32", "::1/128"]
[output]
format = "varnishkafka"
hostname = "loadtest-host"
[kafka]
brokers = "127.0.0.1:$PROXY_PORT"
topic = "$TOPIC"
CONF
sleep 0.5
"${SERVER_CPU[@]}" "$BEACOND" --config "$OUT/beacond.toml" >"$OUT/beacond.log" 2>&1 &
pids+=($!)
status=0
wait "$lt" || status=$?
cat "$OUT/report.txt"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" >"$OUT/beacond-metrics.txt" || true
log "exit $status; report, plot, metrics and logs in $OUT"
exit "$status"
