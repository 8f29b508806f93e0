#!/usr/bin/env bash
# Installs what iotvault needs on a Debian/Ubuntu machine with Node.js 20+, then builds it.
# Idempotent: every step is skipped when already done. Sourced by demo.sh and test.sh, or run
# on its own (`npm run bootstrap`).
#   - Debian packages, only when missing: nats-server, PostgreSQL server binaries, and the
#     compiler tool chain for native addons (zstd-napi, ssh2).
#   - npm ci when node_modules is missing or the lock file changed.
#   - tsc -b (type-check and build every package), then the CLI bundle (scripts/bundle-cli.mjs).
# With --test (used by test.sh) it also installs what the integration tests start as real
# servers: openssh-server (SFTP target), Ceph's radosgw (S3 target) and Virtuoso (a SPARQL
# Graph Store Protocol endpoint).
set -euo pipefail
with_test_deps=false
[ "${1:-}" = "--test" ] && with_test_deps=true
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root; run as root or install sudo" >&2; exit 1
  fi
}

check_node() {
  if ! command -v node >/dev/null; then
    echo "error: Node.js 20.19 or newer is required (https://nodejs.org or your distribution)" >&2; exit 1
  fi
  local v; v=$(node -p 'process.versions.node')
  if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
    echo "error: Node.js $v is too old; iotvault needs 20.19 or newer" >&2; exit 1
  fi
}

pg_bin_present() {
  command -v initdb >/dev/null && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

apt_install() {
  local missing=()
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
  if ! pg_bin_present || ! command -v pg_dump >/dev/null; then
    # iotvault runs its own PostgreSQL cluster when none is reachable: install the binaries
    # without Debian's default cluster, so that nothing else is started or reconfigured.
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
      sudo_if_needed mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" | sudo_if_needed tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    missing+=(postgresql postgresql-client)
  fi
  command -v make >/dev/null || missing+=(make)
  command -v g++ >/dev/null || missing+=(g++)
  command -v python3 >/dev/null || missing+=(python3)
  command -v runuser >/dev/null || missing+=(util-linux)
  if $with_test_deps; then
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v radosgw >/dev/null || missing+=(radosgw ceph-mon ceph-osd)
    command -v virtuoso-t >/dev/null || missing+=(virtuoso-opensource)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

npm_install() {
  local want have=""
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  [ -f node_modules/.iotvault-lock ] && have=$(cat node_modules/.iotvault-lock)
  if [ "$want" != "$have" ]; then
    say "installing npm dependencies (npm ci)"
    # Native addons build against the local Node.js headers when they are installed.
    if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_version.h ] &&
      [ "$(dirname "$(dirname "$(command -v node)")")" = "/usr" ]; then
      export npm_config_nodedir=/usr
    fi
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > node_modules/.iotvault-lock
  fi
}

build() {
  say "building (tsc -b, then the CLI bundle)"
  node_modules/.bin/tsc -b
  node scripts/bundle-cli.mjs
}

check_node
apt_install
npm_install
build
