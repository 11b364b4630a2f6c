# Sourced by the load scripts: the server processes they started (PIDS) and the Redis
# key prefix of a cluster run (PREFIX, on REDIS), stopped and cleaned by stop_nodes.
PIDS=()
PREFIX=""

# stop_nodes: SIGTERM every node, SIGKILL after 10 s, then delete the run's Redis keys.
stop_nodes() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PIDS=()
  if [ -n "$PREFIX" ]; then
    redis-cli -u "redis://$REDIS" --scan --pattern "$PREFIX:*" | xargs -r redis-cli -u "redis://$REDIS" del > /dev/null
    PREFIX=""
  fi
}
