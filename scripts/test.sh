#!/usr/bin/env bash
# Runs every nilecast test from a clean checkout: installs what the tests need when it
# is missing (idempotent), then formatting, lints, unit, integration and browser tests.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A real browser for the /test page (Debian's Chromium; the tests drive it with
# playwright-core and never download a browser of their own).
if ! command -v chromium >/dev/null 2>&1; then
  step "installing chromium (Debian package)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# Node packages the tests drive, pinned by package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "error: Node.js 18+ and npm are required for the browser test" >&2
  exit 1
fi
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "installing Node test packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The Autobahn|Testsuite fuzzing client (kosoku, from PyPI, pinned) in a virtualenv of
# its own under target/, for tests/autobahn.rs.
KOSOKU_VERSION=0.1.0
if [ ! -x target/kosoku/bin/kosoku ] || ! target/kosoku/bin/pip show kosoku 2>/dev/null | grep -q "^Version: $KOSOKU_VERSION$"; then
  step "installing kosoku $KOSOKU_VERSION (Autobahn test cases) into target/kosoku"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p target
  python3 -m venv target/kosoku
  target/kosoku/bin/pip install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

# One build serves every test binary; benches are compiled (not run) by clippy above.
step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log"

# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
