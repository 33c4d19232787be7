#!/usr/bin/env bash
# Memory per idle connection: beacond and nginx (`return 204`) in the same
# run, each holding N (default 10,000) open connections, in two states:
#   - connected, nothing sent yet;
#   - idle keep-alive, after one request each (a realistic 606-byte beacon
#     for beacond, delivered to a dev broker; the same GET for nginx) and its
#     answer read.
# Prints RSS before and after, and KB per connection = (after - before) / N,
# for each server and state; writes summary.md to $OUT.
#
#   loadtest/conn-memory.sh                  # 10,000 connections
#   CONNS=2000 loadtest/conn-memory.sh
#   BEACOND=path/to/beacond SKIP_BUILD=1 loadtest/conn-memory.sh
#
# beacond runs with its defaults but for `http.max_connections` (N + 1000) and
# `http.header_read_timeout_ms` (120 s: it is also the idle keep-alive
# timeout, and must outlast the measurement). nginx runs one worker with
# `worker_connections` 2N + 1000 and keepalive_timeout 120 s; its RSS is the
# sum of its master and worker. RSS is VmRSS from /proc (resident pages, the
# kernel's socket buffers not included for either). The client, in Python,
# holds the connections from core 1; the servers run on core 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

CONNS=${CONNS:-10000}
BEACON_PORT=${BEACON_PORT:-18490}
ADMIN_PORT=${ADMIN_PORT:-18491}
NGINX_PORT=${NGINX_PORT:-18492}
BROKER_PORT=${BROKER_PORT:-19094}
OUT=${OUT:-$root/loadtest/results/conn-memory-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/nginx/logs"
log() { printf 'conn-memory: %s\n' "$*" >&2; }

# The client holds 2N sockets at most (one server at a time, N each); the
# servers about as many.
ulimit -n $((CONNS * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((CONNS + 200)) ]; then
  log "open-file limit $(ulimit -n) is too low for $CONNS connections"; exit 2
fi
if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1)
else
  SERVER_CPU=(); CLIENT_CPU=()
fi

# shellcheck source=loadtest/lib.sh
. "$root/loadtest/lib.sh"

need_nginx
if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "building the release beacond"
  cargo build --release -p beacond
fi
BEACOND=${BEACOND:-$root/target/release/beacond}

dev_broker
TOPIC=conn-memory-$(date +%s)
BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker create-topic "$TOPIC" 3 >/dev/null

cat >"$OUT/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((CONNS * 2 + 2000));
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections $((CONNS * 2 + 1000)); }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
  fastcgi_temp_path $OUT/nginx/fastcgi;
  uwsgi_temp_path $OUT/nginx/uwsgi;
  scgi_temp_path $OUT/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 204; }
  }
}
CONF
"${SERVER_CPU[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/logs/error.log" &
NGINX_PID=$!
pids+=("$NGINX_PID")
wait_http "$NGINX_PORT" /

cat >"$OUT/beacond.toml" <<CONF
[http]
listen = "127.0.0.1:$BEACON_PORT"
max_connections = $((CONNS + 1000))
header_read_timeout_ms = 120000
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[output]
hostname = "conn-memory-host"
[kafka]
brokers = "$BROKERS"
topic = "$TOPIC"
[spool]
dir = "$OUT/spool"
CONF
"${SERVER_CPU[@]}" "$BEACOND" --config "$OUT/beacond.toml" >"$OUT/beacond.log" 2>&1 &
BEACOND_PID=$!
pids+=("$BEACOND_PID")
if ! wait_http "$ADMIN_PORT" /readyz; then
  log "beacond is not ready; its log:"; tail -20 "$OUT/beacond.log" >&2; exit 1
fi
log "nginx pid $NGINX_PID on $NGINX_PORT, beacond pid $BEACOND_PID on $BEACON_PORT, $CONNS connections each"

"${CLIENT_CPU[@]}" python3 "$root/loadtest/conn_memory.py" "$CONNS" \
  "beacond=127.0.0.1:$BEACON_PORT=$BEACOND_PID" "nginx=127.0.0.1:$NGINX_PORT=$NGINX_PID" \
  | tee "$OUT/summary.md"
