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

# nginx in front of two nodes for tests/scaleout.rs (Debian's nginx-light; the tests run
# their own instance on a loopback port with deploy/nginx.conf).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  step "installing nginx (Debian package nginx-light)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null
fi
export PATH="$PATH:/usr/sbin"

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

# PostgreSQL (tests/database.rs), Redis (tests/cluster.rs) and MariaDB (tests/fallback.rs) on their standard
# loopback ports, started when stopped and installed from Debian's packages when missing
# (a fresh install gets trust / empty-password root access from 127.0.0.1 only).
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "error: $what did not come up" >&2; exit 1
}
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    step "installing PostgreSQL (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  step "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null 2>&1; then
    step "installing Redis (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  step "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi
if ! mysqladmin ping -h 127.0.0.1 -P 3306 -u root --silent >/dev/null 2>&1; then
  if ! command -v mariadbd >/dev/null 2>&1 && ! command -v mysqld >/dev/null 2>&1; then
    step "installing MariaDB (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mariadb-server >/dev/null
  fi
  step "starting MariaDB"
  $SUDO /etc/init.d/mariadb start >/dev/null 2>&1 || ($SUDO mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &)
  wait_for MariaDB $SUDO mysqladmin ping --silent
  # Root from 127.0.0.1 with an empty password, as the tests connect.
  if ! mysqladmin ping -h 127.0.0.1 -P 3306 -u root --silent >/dev/null 2>&1; then
    $SUDO mysql -u root -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
  fi
  wait_for "MariaDB on 127.0.0.1:3306" mysqladmin ping -h 127.0.0.1 -P 3306 -u root --silent
fi

# The React example builds (its own packages, pinned by its own lockfile).
step "building examples/react"
if [ ! -d examples/react/node_modules/vite ] || [ examples/react/package-lock.json -nt examples/react/node_modules/.package-lock.json ]; then
  (cd examples/react && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd examples/react && npx vite build --logLevel warn)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

# The core crate's layering rule (ARCHITECTURE.md): no socket, HTTP, database, Redis or
# CLI crate among its dependencies, direct or not.
step "nilecast-core depends on no I/O crate"
if cargo tree --locked -p nilecast-core -e normal | grep -E "hyper|postgres|deadpool|redis|mysql|socket2|clap|tokio"; then
  echo "nilecast-core depends on the crates above; they belong in the server" >&2
  exit 1
fi

# One build serves every test binary; benches are compiled (not run) by clippy above.
# The Socket.IO connection storm opens 2,000 sockets on each side: up to the hard
# limit of open files.
ulimit -n "$(ulimit -Hn)"
step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log"

# The black-box protocol tests once more in each deployment shape (docs/protocol.md,
# "5.5 Deployment shapes"): every server they start gets a fresh database, a Redis key
# prefix, or both (tests/common, NILECAST_TEST_SHAPE). Same build, same binaries.
for shape in database redis database+redis; do
  step "protocol tests on the $shape bus"
  NILECAST_TEST_SHAPE="$shape" cargo test --locked --no-fail-fast \
    --test native_events --test namespaces --test filters --test replay --test tenancy \
    --test bad_input --test alerts --test http_api --test dashboard --test socketio \
    2>&1 | tee -a "$log"
done

# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
