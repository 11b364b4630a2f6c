#!/usr/bin/env bash
# The `broadcast` scenario on one node and across two nodes of a Redis cluster (the
# clients split over both, changes published to the first), in one run, and writes the
# "Cluster" section of loadtest/RESULTS.md (between its markers; compare.sh keeps it).
#
# Rows, each run ROUNDS times, interleaved so drift on a noisy machine hits all alike:
#   nilecast                  one node, no Redis (the baseline of the ratios)
#   nilecast-redis-1-node     one node in cluster mode: every change makes the Redis hop
#   nilecast-redis-2-nodes    two nodes in cluster mode, 1000 clients each
# Every nilecast process is pinned to SERVER_CORES (default core 0, so two nodes share
# the one core one node had: the figure shows what the cluster costs, not what a second
# machine adds); the load generator runs on core 1; Redis is the local one
# (127.0.0.1:6379, started by scripts/test.sh when missing). Loopback only; bounded.
#
#   loadtest/cluster.sh             # 2000 connections, 10 s per run, 2 rounds (~3 min)
#   QUICK=1 loadtest/cluster.sh     # 200 connections, 3 s: checks the machinery
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
OUT=${OUT:-loadtest/RESULTS.md}
SERVER_CORES=${SERVER_CORES:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
REDIS=${REDIS:-127.0.0.1:6379}
ROUNDS=${ROUNDS:-2}
# The rate of RESULTS.md's broadcast table (half of nilecast's max-fanout rate there).
RATE=${RATE:-799}
if [ "$QUICK" = 1 ]; then CONNS=200; DURATION=3; ROUNDS=1; else CONNS=2000; DURATION=10; fi

ulimit -n "$(ulimit -Hn)"
redis-cli -u "redis://$REDIS" ping > /dev/null || { echo "Redis at $REDIS does not answer" >&2; exit 1; }
cargo build --release --locked -p nilecast -p nilecast-loadgen 2>&1 | tail -1
LOADGEN=target/release/nilecast-loadgen
RESULTS=$(mktemp)
LOGDIR=$(mktemp -d)
. loadtest/nodes.sh
trap 'stop_nodes; rm -f "$RESULTS"' EXIT

# start_node PORT [REDIS_PREFIX]: one node pinned to the server cores, ready.
start_node() {
  local port=$1 prefix=${2:-} log="$LOGDIR/node-$1.log"
  local -a cluster=()
  [ -n "$prefix" ] && cluster=(REDIS_URL="redis://$REDIS" REDIS_PREFIX="$prefix" NODE_ID="node-$port")
  env "${cluster[@]}" MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 \
    WEBSOCKET_PORT="$port" RUST_LOG=warn taskset -c "$SERVER_CORES" target/release/nilecast > "$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    if [ -z "$prefix" ]; then
      grep -q listening "$log" 2>/dev/null && return 0
    elif curl -sf "http://127.0.0.1:$port/health" | grep -q '"connected":true'; then
      return 0
    fi
    sleep 0.1
  done
  echo "node on $port did not become ready" >&2; cat "$log" >&2; exit 1
}

# run LABEL NODES: NODES (1 or 2) fresh nodes, one broadcast run across them.
run() {
  local label=$1 nodes=$2 addrs pids
  case $label in
    nilecast) start_node 4200 ;;
    *)
      PREFIX="nilecast-bench-$$-$RANDOM"
      start_node 4200 "$PREFIX"
      [ "$nodes" = 2 ] && start_node 4201 "$PREFIX"
      ;;
  esac
  addrs=127.0.0.1:4200; [ "$nodes" = 2 ] && addrs=127.0.0.1:4200,127.0.0.1:4201
  pids=$(IFS=,; echo "${PIDS[*]}")
  echo "==> $label: broadcast across $addrs"
  if taskset -c "$LOADGEN_CORE" "$LOADGEN" run broadcast --addr "$addrs" --server "$label" \
      --server-pid "$pids" --threads 1 --connections "$CONNS" --rate "$RATE" --duration "$DURATION" \
      >> "$RESULTS" 2> "$LOGDIR/loadgen-$label.log"; then
    tail -1 "$RESULTS" | cut -c1-200
  else
    echo "   (run failed)"; tail -5 "$LOGDIR/loadgen-$label.log"
  fi
  stop_nodes
}

for _ in $(seq 1 "$ROUNDS"); do
  run nilecast 1
  run nilecast-redis-1-node 1
  run nilecast-redis-2-nodes 2
done

SECTION=$(mktemp)
{
  echo "<!-- cluster:begin -->"
  echo "## Cluster"
  echo
  echo "Produced by \`loadtest/cluster.sh\`$([ "$QUICK" = 1 ] && echo ' with QUICK=1 (small figures)') on $(date -u +%Y-%m-%dT%H:%MZ), nilecast $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')."
  echo "The \`broadcast\` scenario, $CONNS connections on one product at $RATE changes/s for $DURATION s, on one"
  echo "node without Redis (\`nilecast\`, the ratios' baseline), one node in Redis cluster mode, and two"
  echo "nodes in Redis cluster mode with the connections split over both (changes published to the"
  echo "first; each reaches the other through the Redis stream). Rounds interleaved, $ROUNDS of each."
  echo "Every node is pinned to core(s) $SERVER_CORES, so two nodes share what one node had: the figures"
  echo "show what the cluster path costs on one machine, not what a second machine adds. Server CPU is"
  echo "summed over the nodes. The load generator (one thread) is on core $LOADGEN_CORE; Redis is unpinned."
  echo
  "$LOADGEN" report "$RESULTS" | sed 's/^### /#### /'
  echo "<details><summary>Raw JSON lines</summary>"
  echo
  echo '```'
  cat "$RESULTS"
  echo '```'
  echo
  echo "</details>"
  echo "<!-- cluster:end -->"
} > "$SECTION"
put_section cluster "$SECTION" "$OUT"
rm -f "$SECTION"
echo "==> wrote the Cluster section of $OUT"
