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

# put_section NAME FILE OUT: replaces OUT's section between <!-- NAME:begin --> and
# <!-- NAME:end --> (or appends it) with FILE, which holds those markers.
put_section() {
  python3 - "$1" "$2" "$3" <<'EOF'
import re, sys
name, section, out = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
try:
    text = open(out).read()
except FileNotFoundError:
    text = "# Load comparison\n"
block = re.compile(r"<!-- %s:begin -->.*?<!-- %s:end -->\n?" % (name, name), re.S)
text = block.sub("", text).rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
EOF
}
