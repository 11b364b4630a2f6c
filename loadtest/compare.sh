#!/usr/bin/env bash
# Runs the same load scenarios against nilecast and every peer server, one after the
# other in one run, and writes loadtest/RESULTS.md. Each server gets a fresh process per
# scenario, pinned to core 0; the load generator runs on core 1. Loopback only; every
# run is bounded in connections and time and stops by itself.
#
#   loadtest/compare.sh             # the full comparison (about 15-20 minutes)
#   QUICK=1 loadtest/compare.sh     # small figures, a few minutes: checks the machinery
#   SERVERS="nilecast bun" loadtest/compare.sh   # a subset
#   SERVERS=nilecast NILECAST_BIN=/tmp/nilecast-old OUT=/tmp/old.md loadtest/compare.sh
#                                   # another nilecast build (before/after a change)
#   SCENARIOS="max-fanout sharded" loadtest/compare.sh   # a subset of the scenarios
#   BROADCAST_RATES="400 1000" loadtest/compare.sh       # broadcast at these rates
#                                   # (default: half of nilecast's max-fanout rate)
#   SERVERS="nilecast nilecast-deflate ws-node ws-node-deflate" SCENARIOS="broadcast sharded" \
#     BROADCAST_RATES=200 OUT=loadtest/DEFLATE.md loadtest/compare.sh
#                                   # permessage-deflate on and off (the -deflate servers
#                                   # negotiate it with every load-generator connection)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
SERVERS=${SERVERS:-"nilecast nilecast-socketio socketio-node socketioxide bun"}
SCENARIOS=${SCENARIOS:-"max-fanout broadcast sharded idle reconnect-storm connections"}
OUT=${OUT:-loadtest/RESULTS.md}
RESULTS=$(mktemp)
LOGDIR=$(mktemp -d)
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
NILECAST_BIN=${NILECAST_BIN:-target/release/nilecast}

if [ "$QUICK" = 1 ]; then
  FANOUT_CONNS=200; SHARDED_CONNS=500; SHARDED_KEYS=50; SHARDED_RATE=500; IDLE_CONNS=2000
  STORM_CONNS=200; HELD_CONNS=2000; DURATION=3; STEP=2; MAX_RATE=400
else
  FANOUT_CONNS=2000; SHARDED_CONNS=5000; SHARDED_KEYS=500; SHARDED_RATE=5000; IDLE_CONNS=19500
  STORM_CONNS=2000; HELD_CONNS=19500; DURATION=10; STEP=5; MAX_RATE=20000
fi

# Up to the hard limit (20,000 here): each side holds one socket per connection.
ulimit -n "$(ulimit -Hn)"

echo "==> installing peers and building (release)"
if [ -z "$(echo "$SERVERS" | tr ' ' '\n' | grep -v '^nilecast')" ]; then
  : > "$LOGDIR/versions.txt"   # no peer to install
else
  bash loadtest/peers/install.sh > "$LOGDIR/versions.txt"
fi
cargo build --release --locked -p nilecast -p nilecast-loadgen 2>&1 | tail -1
LOADGEN=target/release/nilecast-loadgen

PID=""
stop_server() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  PID=""
}
trap 'stop_server; rm -f "$RESULTS"' EXIT

# start_server NAME: starts it pinned to the server core and waits for its ready line.
start_server() {
  local name=$1 log="$LOGDIR/$1.log"
  case $name in
    nilecast)
      MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 WEBSOCKET_PORT=4100 RUST_LOG=warn taskset -c "$SERVER_CORE" "$NILECAST_BIN" > "$log" 2>&1 &
      PORT=4100; PROTOCOL=native ;;
    nilecast-deflate)
      PERMESSAGE_DEFLATE=true MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 WEBSOCKET_PORT=4106 RUST_LOG=warn taskset -c "$SERVER_CORE" "$NILECAST_BIN" > "$log" 2>&1 &
      PORT=4106; PROTOCOL=native ;;
    nilecast-socketio)
      # The same server, driven over Socket.IO (the websocket transport).
      MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 WEBSOCKET_PORT=4104 RUST_LOG=warn taskset -c "$SERVER_CORE" "$NILECAST_BIN" > "$log" 2>&1 &
      PORT=4104; PROTOCOL=socketio ;;
    socketio-node)
      PORT=4101 taskset -c "$SERVER_CORE" node loadtest/peers/socketio-node/server.js > "$log" 2>&1 &
      PORT=4101; PROTOCOL=socketio ;;
    bun)
      PORT=4102 taskset -c "$SERVER_CORE" loadtest/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun loadtest/peers/bun/server.js > "$log" 2>&1 &
      PORT=4102; PROTOCOL=native ;;
    ws-node|ws-node-deflate)
      PERMESSAGE_DEFLATE=$([ "$name" = ws-node-deflate ] && echo true || echo false) PORT=4105 taskset -c "$SERVER_CORE" node loadtest/peers/ws-node/server.js > "$log" 2>&1 &
      PORT=4105; PROTOCOL=native ;;
    bun-deflate)
      PERMESSAGE_DEFLATE=true PORT=4107 taskset -c "$SERVER_CORE" loadtest/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun loadtest/peers/bun/server.js > "$log" 2>&1 &
      PORT=4107; PROTOCOL=native ;;
    socketioxide)
      PORT=4103 taskset -c "$SERVER_CORE" loadtest/peers/socketioxide/target/release/peer-socketioxide > "$log" 2>&1 &
      PORT=4103; PROTOCOL=socketio ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  PID=$!
  for _ in $(seq 1 300); do
    grep -q "listening" "$log" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { echo "$name exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not become ready" >&2; cat "$log" >&2; exit 1
}

# scenario NAME SCENARIO ARGS...: one fresh server process, one load-generator run.
scenario() {
  local name=$1 what=$2; shift 2
  case " $SCENARIOS " in *" $what "*) ;; *) return 0 ;; esac
  start_server "$name"
  echo "==> $name: $what $*"
  local deflate=()
  case $name in *-deflate) deflate=(--deflate) ;; esac
  if taskset -c "$LOADGEN_CORE" "$LOADGEN" run "$what" --addr "127.0.0.1:$PORT" --protocol "$PROTOCOL" \
      --server "$name" --server-pid "$PID" --threads 1 "${deflate[@]}" "$@" >> "$RESULTS" 2> "$LOGDIR/loadgen-$name-$what.log"; then
    tail -1 "$RESULTS" | cut -c1-220
  else
    echo "   (run failed; see below)"; tail -5 "$LOGDIR/loadgen-$name-$what.log"
  fi
  stop_server
}

BROADCAST_RATE=""
for name in $SERVERS; do
  scenario "$name" max-fanout --connections "$FANOUT_CONNS" --start-rate 50 --step-factor 1.2 --step-seconds "$STEP" --max-rate "$MAX_RATE"
  if [ "$name" = nilecast ] && [ -s "$RESULTS" ]; then
    # Latency is measured at half of nilecast's best max-fanout rate, for every server.
    BROADCAST_RATE=$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(max(1, round(json.load(sys.stdin)["rate"] / 2)))')
  fi
  for rate in ${BROADCAST_RATES:-${BROADCAST_RATE:-100}}; do
    scenario "$name" broadcast --connections "$FANOUT_CONNS" --rate "$rate" --duration "$DURATION"
  done
  scenario "$name" sharded --connections "$SHARDED_CONNS" --keys "$SHARDED_KEYS" --rate "$SHARDED_RATE" --duration "$DURATION"
  scenario "$name" idle --connections "$IDLE_CONNS" --keys 500
  scenario "$name" reconnect-storm --connections "$STORM_CONNS" --rate 100 --duration "$DURATION"
  scenario "$name" connections --connections "$HELD_CONNS"
done

# describe SCENARIO TEXT: the scenario's line, when it ran.
describe() {
  case " $SCENARIOS " in *" $1 "*) echo "$2" ;; esac
}

# loadtest/cluster.sh's section survives a new comparison.
CLUSTER_SECTION=$(sed -n '/<!-- cluster:begin -->/,/<!-- cluster:end -->/p' "$OUT" 2>/dev/null || true)
# and loadtest/scale.sh's.
SCALE_SECTION=$(sed -n '/<!-- scale:begin -->/,/<!-- scale:end -->/p' "$OUT" 2>/dev/null || true)
{
  echo "# Load comparison"
  echo
  echo "Produced by \`loadtest/compare.sh\`$([ "$QUICK" = 1 ] && echo ' with QUICK=1 (small figures; not the full comparison)') on $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Each server ran alone, a fresh process per scenario, pinned to core $SERVER_CORE; the load generator"
  echo "(\`$LOADGEN\`, one thread) was pinned to core $LOADGEN_CORE. Ratios in brackets are the server's figure"
  echo "divided by nilecast's native figure on the same scenario."
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)."
  if [ "$NILECAST_BIN" = target/release/nilecast ]; then
    echo "nilecast: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')."
  else
    echo "nilecast: the build at $NILECAST_BIN."
  fi
  echo
  echo "Versions:"
  echo
  sed 's/^/- /' "$LOGDIR/versions.txt"
  echo
  echo "Scenarios:"
  echo
  describe max-fanout "- max-fanout: $FANOUT_CONNS connections on one product; the change rate rises by 1.2x (from 50/s) every ${STEP} s until p99 passes 250 ms or anything is missing (a step over 250 ms is run once more before it counts). Figures are from the last good step; the load generator's core share is the deciding step's."
  if [ -n "${BROADCAST_RATES:-}" ]; then
    describe broadcast "- broadcast: $FANOUT_CONNS connections on one product at each of $BROADCAST_RATES changes/s, ${DURATION} s."
  else
    describe broadcast "- broadcast: $FANOUT_CONNS connections on one product at ${BROADCAST_RATE:-100} changes/s (half of nilecast's max-fanout rate), ${DURATION} s."
  fi
  describe sharded "- sharded: $SHARDED_CONNS connections over $SHARDED_KEYS products, $SHARDED_RATE changes/s on random products, ${DURATION} s."
  describe idle "- idle: $IDLE_CONNS subscribed connections, no traffic: server RSS growth per connection."
  describe reconnect-storm "- reconnect-storm: $STORM_CONNS connections; while 100 changes/s flow, all drop at once and reconnect with sinceSeq. Peers without replay show what a client loses."
  describe connections "- connections: up to $HELD_CONNS subscribed connections (the fd limit is 20,000 per process), then one change to all."
  echo
  echo "A load generator core share of 90% or more where a result was decided is marked \"load-bound?\": the figure may be the load generator's limit, not the server's."
  echo
  "$LOADGEN" report "$RESULTS"
  echo "<details><summary>Raw JSON lines</summary>"
  echo
  echo '```'
  cat "$RESULTS"
  echo '```'
  echo
  echo "</details>"
} > "$OUT"
if [ -n "$CLUSTER_SECTION" ]; then printf '\n%s\n' "$CLUSTER_SECTION" >> "$OUT"; fi
if [ -n "$SCALE_SECTION" ]; then printf '\n%s\n' "$SCALE_SECTION" >> "$OUT"; fi
echo "==> wrote $OUT"
