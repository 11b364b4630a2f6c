#!/usr/bin/env bash
# Database commit-to-client latency. For each change-detection mode: a fresh database,
# `nilecast migrate`, a server on it (pinned to core 0, no simulator), and the load
# generator's `db-latency` scenario (core 1): writer connections commit rows stamped
# with their send time, 1,000 subscribers receive them through the change feed.
# PostgreSQL runs unpinned beside them. Loopback only; every run is bounded and stops
# by itself. Writes loadtest/DB_RESULTS.md.
#
#   loadtest/db-latency.sh                       # notify and poll, 1,000 and 10,000 changes/s
#   MODES=notify RATES=1000 DURATION=5 loadtest/db-latency.sh   # a quick look
#
# Mode `notify-cluster`: notify, with two nodes in Redis cluster mode (both pinned to
# core 0; the local Redis): the leader tails the database into the stream, both nodes
# publish from it, and the subscribers are split over the two nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=${DB:-nilecast_bench}
MODES=${MODES:-"notify poll notify-cluster"}
REDIS=${REDIS:-127.0.0.1:6379}
RATES=${RATES:-"1000 10000"}
CONNS=${CONNS:-1000}
KEYS=${KEYS:-100}
DURATION=${DURATION:-20}
WRITERS=${WRITERS:-16}
# Rows per transaction: `auto` is one per 1,000 changes/s of target rate (1 at 1,000/s,
# 10 at 10,000/s): single-row commits top out near 2,000/s on this 2-core machine,
# where PostgreSQL shares the cores with everything else.
ROWS_PER_COMMIT=${ROWS_PER_COMMIT:-auto}
OUT=${OUT:-loadtest/DB_RESULTS.md}
RESULTS=$(mktemp)
LOG=$(mktemp)
PORT=4150

ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -p nilecast -p nilecast-loadgen 2>&1 | tail -1
NILECAST=target/release/nilecast
LOADGEN=target/release/nilecast-loadgen

. loadtest/nodes.sh
trap 'stop_nodes; rm -f "$RESULTS" "$LOG"*' EXIT

# start_node PORT DETECTION [REDIS_PREFIX]: a node on the database, pinned to core 0,
# with its feed (or, in cluster mode, its stream reader) connected.
start_node() {
  local port=$1 detection=$2 prefix=${3:-} log="$LOG.$1"
  local -a cluster=()
  [ -n "$prefix" ] && cluster=(REDIS_URL="redis://$REDIS" REDIS_PREFIX="$prefix" NODE_ID="node-$port")
  env "${cluster[@]}" NILEDB_CONNECTION_STRING="$PG/$DB" CHANGE_DETECTION=$detection SIMULATE_RATE=0 \
    MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 QUEUE_MAX_FRAMES=65536 \
    WEBSOCKET_PORT=$port RUST_LOG=warn taskset -c 0 $NILECAST > "$log" 2>&1 &
  PIDS+=($!)
  local ready='"listenerConnected":true'
  [ -n "$prefix" ] && ready='"connected":true'
  for _ in $(seq 1 200); do
    curl -s "http://127.0.0.1:$port/health" | grep -q "$ready" && return 0; sleep 0.1
  done
  echo "node on $port did not become ready" >&2; cat "$log" >&2; exit 1
}

for mode in $MODES; do
  case $mode in
    notify | notify-cluster) write=trigger; detection=notify ;;
    poll) write=log; detection=poll ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  echo "==> $mode: fresh database $DB"
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  NILEDB_CONNECTION_STRING="$PG/$DB" CHANGE_DETECTION=$detection $NILECAST migrate
  for rate in $RATES; do
    addrs=127.0.0.1:$PORT
    if [ "$mode" = notify-cluster ]; then
      PREFIX="nilecast-dbbench-$$-$RANDOM"
      start_node $PORT $detection "$PREFIX"
      start_node $((PORT + 1)) $detection "$PREFIX"
      addrs=127.0.0.1:$PORT,127.0.0.1:$((PORT + 1))
    else
      start_node $PORT $detection
    fi
    pids=$(IFS=,; echo "${PIDS[*]}")
    rows=$ROWS_PER_COMMIT
    if [ "$rows" = auto ]; then rows=$(( rate / 1000 > 1 ? rate / 1000 : 1 )); fi
    echo "==> $mode: $rate changes/s ($rows per commit), $CONNS subscribers over $KEYS products, ${DURATION}s"
    taskset -c 1 $LOADGEN run db-latency --addr "$addrs" --server-pid "$pids" --threads 1 \
      --database-url "$PG/$DB" --write $write --writers "$WRITERS" --rows-per-commit "$rows" \
      --connections "$CONNS" --keys "$KEYS" --rate "$rate" --duration "$DURATION" \
      | sed "s/\"scenario\":\"db-latency\"/\"scenario\":\"db-latency\",\"mode\":\"$mode\"/" | tee -a "$RESULTS"
    stop_nodes
  done
done

python3 - "$RESULTS" "$OUT" "$CONNS" "$KEYS" "$DURATION" "$WRITERS" <<'PY'
import json, sys, subprocess, datetime, platform
results, out, conns, keys, duration, writers = sys.argv[1:]
runs = [json.loads(l) for l in open(results) if l.startswith("{")]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
pg = subprocess.run(["psql", "-tA", "-c", "show server_version", "postgres://postgres@127.0.0.1:5432/postgres"], capture_output=True, text=True).stdout.strip()
lines = [
    "# Database commit-to-client latency", "",
    f"Produced by `loadtest/db-latency.sh` on {datetime.datetime.utcnow():%Y-%m-%dT%H:%MZ}, "
    f"nilecast {commit}{' (with uncommitted changes)' if dirty else ''}, PostgreSQL {pg}, "
    f"{platform.machine()}, 2 cores.", "",
    f"{conns} subscribers spread over {keys} products (each change goes to the {int(conns)//int(keys)} subscribers of its product); "
    f"{writers} writer connections commit at the target rate for {duration} s, one row per transaction per "
    "1,000 changes/s of target rate (single-row commits top out near 2,000/s here). "
    "Latency runs from the moment the writer sends the committing statement to the moment a subscriber has the "
    "frame (it includes the statement, the commit, the trigger or the application's own change-log insert, the "
    "feed's read and the fan-out). Server pinned to core 0, load generator to core 1, PostgreSQL unpinned; "
    "the server's CPU is its own process only. `notify-cluster`: notify with two nodes in Redis cluster mode, "
    "both pinned to core 0 (the leader tails the database into the Redis stream, both publish from it; "
    "subscribers split over the two; server CPU summed over both; Redis unpinned).", "",
    "| mode | target changes/s | rows per commit | committed changes/s | deliveries | missing | duplicates | p50 ms | p99 ms | p999 ms | max ms | server CPU s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in runs:
    lat = r["latency"]; x = r["extra"]
    lines.append(f"| {r['mode']} | {r['rate']:.0f} | {x['rows_per_commit']} | {x['committed_per_s']:.0f} | {r['delivered']} | {r['missing']} | {r['duplicates']} | "
                 f"{lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | {lat['p999_ms']:.1f} | {lat['max_ms']:.1f} | {r['server_cpu_s']:.2f} |")
lines += ["", "Raw JSON lines:", "", "```"] + [json.dumps(r) for r in runs] + ["```", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines[:12 + len(runs)]))
PY
