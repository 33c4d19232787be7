# Shared by compare.sh, conn-memory.sh and scenario.sh (sourced after they
# define `log`). Every process whose pid is added to `pids` is stopped on
# exit (TERM, then KILL after 10 s); a dev broker that `dev_broker` started
# is stopped too, one already running is left alone.
pids=()
started_broker=""
stop_started() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ -n "$started_broker" ]; then BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker stop; fi
}
trap stop_started EXIT

# Waits up to 30 s for a 2xx on 127.0.0.1:PORT PATH.
wait_http() { # port path
  for _ in $(seq 1 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2" || true)
    case "$code" in 2*) return 0 ;; esac
    sleep 0.2
  done
  log "nothing answers on 127.0.0.1:$1$2"; return 1
}

# Installs nginx-light (Debian) when nginx is missing.
need_nginx() {
  if ! command -v nginx >/dev/null; then
    log "installing nginx-light"
    apt-get install -y nginx-light >/dev/null || { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; }
  fi
}

# A dev broker (tansu) on $BROKER_PORT, started unless one is there: sets
# BROKERS.
dev_broker() {
  if BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker status; then
    log "using the broker already on port $BROKER_PORT"
  else
    started_broker=1
  fi
  BROKERS=$(BEACOND_BROKER_PORT=$BROKER_PORT scripts/dev-broker start)
}
