#!/usr/bin/env bash
# Past one process on one machine: NODES nilecast nodes in Redis cluster mode, PER_NODE
# subscribed connections on each (one load-generator process per node: the open-file
# limit here is 20,000 per process), then BROADCASTS changes published to the first
# node, SPACING seconds apart. Each change reaches the other nodes through the Redis
# stream and every connection on all of them. Writes the "Scale-out" section of
# loadtest/RESULTS.md (between its markers; compare.sh keeps it).
#
# Figures: time from publish to the last delivery (the largest latency over every
# connection: the processes share one clock) and p99; memory per connection, the
# nodes' RSS and the kernel's (slab and TCP buffer pages, both ends of each loopback
# connection: halve it for a server whose clients are elsewhere); what one change costs
# Redis and the nodes in CPU (over a quiet window of the same length, so the heartbeat's
# pings are not counted), Redis's CPU in both windows, and a stream entry's bytes in
# Redis. A publish the first node refuses (Redis did not answer in time under this
# load) is counted, not retried: the change may still have gone out.
#
# Nodes and load generators share both cores (unpinned). Loopback only; bounded.
#
#   loadtest/scale.sh               # 5 nodes x 19,500 = 97,500 connections (~4 minutes)
#   QUICK=1 loadtest/scale.sh       # 2 nodes x 500: checks the machinery
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
OUT=${OUT:-loadtest/RESULTS.md}
REDIS=${REDIS:-127.0.0.1:6379}
if [ "$QUICK" = 1 ]; then NODES=2; PER_NODE=500; BROADCASTS=2; SPACING=2; else
  NODES=${NODES:-5}; PER_NODE=${PER_NODE:-19500}; BROADCASTS=${BROADCASTS:-5}; SPACING=${SPACING:-4}; fi

ulimit -n "$(ulimit -Hn)"
redis-cli -u "redis://$REDIS" ping > /dev/null || { echo "Redis at $REDIS does not answer" >&2; exit 1; }
cargo build --release --locked -p nilecast -p nilecast-loadgen 2>&1 | tail -1
LOADGEN=target/release/nilecast-loadgen
LOGDIR=$(mktemp -d)
. loadtest/nodes.sh
LISTENERS=()
trap 'for p in "${LISTENERS[@]}"; do kill "$p" 2>/dev/null || true; done; stop_nodes' EXIT

meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }        # KiB
tcp_pages() { awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status"))); done; echo "$t"; }

PREFIX="nilecast-scale-$$-$RANDOM"
slab0=$(meminfo Slab); tcp0=$(tcp_pages)
echo "==> $NODES nodes in Redis cluster mode ($REDIS, prefix $PREFIX)"
for i in $(seq 0 $((NODES - 1))); do
  port=$((4300 + i))
  REDIS_URL="redis://$REDIS" REDIS_PREFIX="$PREFIX" NODE_ID="node-$port" MAX_CONNECTIONS_PER_IP=0 \
    UPGRADES_PER_IP_PER_S=0 SIMULATE_RATE=0 WEBSOCKET_PORT="$port" RUST_LOG=warn \
    target/release/nilecast > "$LOGDIR/node-$port.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 0 $((NODES - 1))); do
  port=$((4300 + i))
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" | grep -q '"connected":true' && break
    sleep 0.1
  done
done
rss0=$(rss_kib "${PIDS[@]}")

echo "==> $PER_NODE connections per node, one load-generator process each"
for i in $(seq 0 $((NODES - 1))); do
  port=$((4300 + i))
  "$LOADGEN" run listen --addr "127.0.0.1:$port" --server "node-$port" --server-pid "${PIDS[$i]}" \
    --threads 1 --connections "$PER_NODE" --expect "$BROADCASTS" \
    --duration $((BROADCASTS * SPACING + 60)) --ready-file "$LOGDIR/ready-$i" \
    > "$LOGDIR/listen-$i.json" 2> "$LOGDIR/listen-$i.log" &
  LISTENERS+=($!)
done
for _ in $(seq 1 3000); do
  ready=$(find "$LOGDIR" -name "ready-*" | wc -l)
  [ "$ready" -eq "$NODES" ] && break
  sleep 0.1
done
[ "$ready" -eq "$NODES" ] || { echo "only $ready of $NODES load generators got ready" >&2; tail -3 "$LOGDIR"/listen-*.log >&2; exit 1; }
held=$(cat "$LOGDIR"/ready-* | awk '{ s += $1 } END { print s }')
sleep 2
rss1=$(rss_kib "${PIDS[@]}"); slab1=$(meminfo Slab); tcp1=$(tcp_pages)
echo "    $held connections held"

REDIS_PID=$(redis-cli -u "redis://$REDIS" info server | awk -F: '/^process_id:/ { print $2 }' | tr -d '\r')
window=$((BROADCASTS * SPACING))
# A quiet window first: what the nodes and Redis spend without changes.
q_nodes=$(cpu_ticks "${PIDS[@]}"); q_redis=$(cpu_ticks "$REDIS_PID")
sleep "$window"
q_nodes=$(( $(cpu_ticks "${PIDS[@]}") - q_nodes )); q_redis=$(( $(cpu_ticks "$REDIS_PID") - q_redis ))

echo "==> $BROADCASTS broadcasts to all, $SPACING s apart"
b_nodes=$(cpu_ticks "${PIDS[@]}"); b_redis=$(cpu_ticks "$REDIS_PID")
refused=0
for _ in $(seq 1 "$BROADCASTS"); do
  sent=$(date +%s%6N)
  if ! curl -sf -X POST "http://127.0.0.1:4300/publish" -H 'content-type: application/json' \
    -d "{\"dataType\":\"inventory\",\"tenantId\":\"default\",\"data\":{\"productId\":\"lg-p-0\",\"warehouseId\":\"w-1\",\"quantity\":1000,\"sentAt\":$sent}}" > /dev/null; then
    refused=$((refused + 1)); echo "    a publish was refused (see the node's log)"
  fi
  sleep "$SPACING"
done
b_nodes=$(( $(cpu_ticks "${PIDS[@]}") - b_nodes )); b_redis=$(( $(cpu_ticks "$REDIS_PID") - b_redis ))
for p in "${LISTENERS[@]}"; do wait "$p" || true; done
LISTENERS=()
# Why connections ended, by node: heartbeat timeouts, slow-consumer closes, refusals.
for i in $(seq 0 $((NODES - 1))); do
  curl -sf "http://127.0.0.1:$((4300 + i))/metrics" > "$LOGDIR/metrics-$i.json" || true
done

stream_bytes=0; stream_len=0
for key in $(redis-cli -u "redis://$REDIS" --scan --pattern "$PREFIX:*"); do
  if [ "$(redis-cli -u "redis://$REDIS" type "$key")" = stream ]; then
    stream_len=$((stream_len + $(redis-cli -u "redis://$REDIS" xlen "$key")))
    stream_bytes=$((stream_bytes + $(redis-cli -u "redis://$REDIS" memory usage "$key" samples 0)))
  fi
done

SECTION=$(mktemp)
python3 - "$LOGDIR" "$NODES" "$PER_NODE" "$held" "$BROADCASTS" "$SPACING" \
  "$rss0" "$rss1" "$slab0" "$slab1" "$tcp0" "$tcp1" "$q_nodes" "$q_redis" "$b_nodes" "$b_redis" \
  "$stream_len" "$stream_bytes" "$(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')" \
  "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$QUICK" "$refused" > "$SECTION" <<'EOF'
import glob, json, sys
(logdir, nodes, per_node, held, broadcasts, spacing, rss0, rss1, slab0, slab1, tcp0, tcp1,
 q_nodes, q_redis, b_nodes, b_redis, stream_len, stream_bytes, commit, cores, when, quick, refused) = sys.argv[1:]
nodes, per_node, held, broadcasts = int(nodes), int(per_node), int(held), int(broadcasts)
runs = []
for f in sorted(glob.glob(f"{logdir}/listen-*.json")):
    text = open(f).read().strip()
    if text:
        runs.append(json.loads(text.splitlines()[-1]))
delivered = sum(r["delivered"] for r in runs)
missing = sum(r["missing"] for r in runs)
dups = sum(r["duplicates"] for r in runs)
last = max(r["latency"]["max_ms"] for r in runs)
p99 = max(r["latency"]["p99_ms"] for r in runs)
p50 = max(r["latency"]["p50_ms"] for r in runs)
tick = 0.01  # /proc/PID/stat times are in 1/100 s
per_change_nodes = (int(b_nodes) - int(q_nodes)) * tick / broadcasts
rss_per_conn = (int(rss1) - int(rss0)) * 1024 / held
kernel_per_conn = ((int(slab1) - int(slab0)) * 1024 + (int(tcp1) - int(tcp0)) * 4096) / held
entry = int(stream_bytes) / max(1, int(stream_len))
print("<!-- scale:begin -->")
print("## Scale-out: %d nodes, %s connections on one machine" % (nodes, f"{held:,}"))
print()
print("Produced by `loadtest/scale.sh`%s on %s, nilecast %s." % (" with QUICK=1 (small figures)" if quick == "1" else "", when, commit))
print(f"{nodes} nodes in Redis cluster mode on this {cores}-core machine, {per_node:,} subscribed connections on each")
print(f"(one load-generator process per node), {broadcasts} changes published to the first node {spacing} s apart;")
print("each reaches the other nodes through the Redis stream. Nodes, load generators and Redis share both cores.")
print()
print("| figure | value |")
print("|---|---|")
print(f"| connections held | {held:,} of {nodes * per_node:,} |")
print(f"| publishes refused | {refused} of {broadcasts} |")
print(f"| deliveries | {delivered:,} of {held * broadcasts:,} ({missing} missing, {dups} duplicates) |")
print(f"| time from publish to the last delivery (largest latency over all connections and changes) | {last:.0f} ms |")
print(f"| p99 / p50 latency (the largest of the {len(runs)} load-generator processes') | {p99:.0f} / {p50:.0f} ms |")
print(f"| nodes' RSS per connection | {rss_per_conn:,.0f} B |")
print(f"| kernel memory per connection (slab and TCP buffers, both ends of the loopback connection) | {kernel_per_conn:,.0f} B |")
print(f"| CPU per change, all nodes (beyond a quiet window of the same length) | {per_change_nodes * 1e3:.0f} ms ({per_change_nodes / held * 1e6:.2f} us per delivery) |")
print(f"| Redis CPU: the broadcast window / a quiet window of the same length | {int(b_redis) * tick:.2f} s / {int(q_redis) * tick:.2f} s |")
print(f"| Redis stream: entries, bytes per entry | {int(stream_len)}, {entry:,.0f} B |")
print()
ends = []
for f in sorted(glob.glob(f"{logdir}/metrics-*.json")):
    try:
        ws = json.load(open(f))["websocket"]
    except (ValueError, KeyError):
        continue
    ends.append({k: ws.get(k) for k in ("activeConnections", "totalConnections", "refusedConnections", "heartbeatTimeouts", "slowConsumerCloses")})
if ends:
    print("Connections by node at the end (`/metrics`): " + "; ".join(
        f"{e['activeConnections']} active of {e['totalConnections']} accepted, {e['refusedConnections']} refused, "
        f"{e['heartbeatTimeouts']} heartbeat timeouts, {e['slowConsumerCloses']} slow-consumer closes" for e in ends) + ".")
    print()
print("<details><summary>Raw JSON lines</summary>")
print()
print("```")
for r in runs:
    print(json.dumps(r))
print("```")
print()
print("</details>")
print("<!-- scale:end -->")
EOF
put_section scale "$SECTION" "$OUT"
cat "$SECTION"
rm -f "$SECTION"
echo "==> wrote the Scale-out section of $OUT"
