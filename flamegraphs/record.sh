#!/usr/bin/env bash
# Records a CPU flamegraph of the nilecast server under one load scenario, with perf
# (DWARF unwinding: release builds keep line tables but no frame pointers) and inferno.
# The server is pinned to core 0 and the load generator to core 1, as in compare.sh.
#
#   flamegraphs/record.sh broadcast    # 2,000 connections on one product, 300 changes/s
#   flamegraphs/record.sh sharded      # 5,000 connections over 500 products, 5,000 changes/s
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: flamegraphs/record.sh broadcast|sharded}

command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked --quiet
cargo build --release --locked -p nilecast -p nilecast-loadgen 2>&1 | tail -1
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
MAX_CONNECTIONS_PER_IP=0 UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 WEBSOCKET_PORT=4100 RUST_LOG=warn taskset -c 0 target/release/nilecast > "$work/server.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q listening "$work/server.log"; do sleep 0.1; done

case $scenario in
  broadcast) args=(broadcast --connections 2000 --rate 300 --duration 14) ;;
  sharded) args=(sharded --connections 5000 --keys 500 --rate 5000 --duration 14) ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
taskset -c 1 target/release/nilecast-loadgen run "${args[@]}" --addr 127.0.0.1:4100 --server-pid "$pid" --threads 1 > "$work/run.json" &
loadgen=$!
# Skip the connection phase; sample the steady state.
sleep 5
perf record -F 299 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep 6 2> /dev/null
wait "$loadgen"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf > "$work/folded"
inferno-flamegraph --title "nilecast under $scenario ($(cut -c1-160 "$work/run.json" | tr -d '{}"'))" < "$work/folded" > "flamegraphs/$scenario.svg"
# The heaviest frames, for the notes: by self time, and (for the project's, hyper's and
# serde's frames) by total time including what they call.
{
  echo "Self time (the frame itself):"
  awk '{ n = $NF; $NF = ""; k = split($0, f, ";"); self[f[k]] += n; total += n }
       END { for (x in self) printf "%5.1f%% %s\n", 100 * self[x] / total, x }' "$work/folded" | sort -rn | head -25
  echo
  echo "Total time (the frame and what it calls), nilecast, hyper and serde frames:"
  awk '{ n = $NF; $NF = ""; k = split($0, f, ";"); total += n; delete seen
         for (i = 1; i <= k; i++) if (f[i] ~ /nilecast|hyper|serde/ && !(f[i] in seen)) { seen[f[i]] = 1; incl[f[i]] += n } }
       END { for (x in incl) printf "%5.1f%% %s\n", 100 * incl[x] / total, x }' "$work/folded" | sort -rn | head -30
} > "flamegraphs/$scenario.top.txt"
cp "$work/run.json" "flamegraphs/$scenario.run.json"
echo "wrote flamegraphs/$scenario.svg (top frames in flamegraphs/$scenario.top.txt)"
