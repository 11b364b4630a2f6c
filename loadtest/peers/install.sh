#!/usr/bin/env bash
# Installs the benchmark peers' dependencies, each only when missing or out of date, and
# prints the versions in use. Safe to run any number of times.
#
#   socketio-node/  npm ci   (when node_modules is missing or package-lock.json changed)
#   bun/            npm ci   (brings the pinned Bun binary: node_modules/@oven/bun-linux-x64/bin/bun)
#   ws-node/        npm ci
#   socketioxide/   cargo build --release --locked (cargo itself skips an up-to-date build)
#
# Progress goes to stderr; stdout carries only the version lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' not found on PATH" >&2; exit 1; }
}
need node
need npm
need cargo

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "install.sh: Node 20 or newer is needed (found $(node -v))" >&2
  exit 1
fi

# npm ci in $1 unless node_modules already matches package-lock.json. The stamp holds the
# lockfile's hash and is written only after a successful install.
npm_install() {
  local dir="$1"
  local stamp="$dir/node_modules/.peer-install-stamp"
  local want
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "install.sh: $(basename "$dir"): node_modules up to date" >&2
    return
  fi
  echo "install.sh: $(basename "$dir"): npm ci" >&2
  # No package here needs an install script (bufferutil ships a linux-x64 prebuild that
  # node-gyp-build loads at run time; the Bun package ships its binary).
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  echo "$want" > "$stamp"
}

npm_install "$here/socketio-node"
npm_install "$here/bun"
npm_install "$here/ws-node"

echo "install.sh: socketioxide: cargo build --release" >&2
(cd "$here/socketioxide" && cargo build --release --locked >&2)

bun_bin="$here/bun/node_modules/@oven/bun-linux-x64/bin/bun"
sio_version="$(node -p "require('$here/socketio-node/node_modules/socket.io/package.json').version")"
sxd_version="$(awk '/^name = "socketioxide"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$here/socketioxide/Cargo.lock")"

echo "node $(node -v | sed 's/^v//')"
echo "socket.io $sio_version"
echo "bun $("$bun_bin" --version)"
echo "socketioxide $sxd_version"
echo "ws $(node -p "require('$here/ws-node/node_modules/ws/package.json').version")"
