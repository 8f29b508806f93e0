#!/usr/bin/env bash
# The PostgreSQL benchmark (bench/pg.ts): iotvault physical backup and restore beside
# pgBackRest, logical beside pg_dump, and the WAL archive lag. Installs pgBackRest from Debian
# when it is missing, builds what the benchmark runs, then runs it with the given options.
#   bash bench/pg.sh --scale 50 --reps 2
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v pgbackrest >/dev/null; then
  echo "pgbackrest is missing; installing it (apt-get install -y pgbackrest)" >&2
  apt-get install -y pgbackrest >/dev/null
fi
npx tsc -b libs/sources cli services/scheduler services/executor services/storage-gateway services/catalog services/restore bench
node scripts/bundle-cli.mjs
exec node bench/dist/pg.js "$@"
