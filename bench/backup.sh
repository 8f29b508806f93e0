#!/usr/bin/env bash
# The backup/restore benchmark (bench/backup.ts): iotvault through its five services beside
# restic on the same IoT-gateway corpus. Installs restic from the distribution when it is
# missing, builds what the benchmark runs, then runs it with the given options.
#   npm run bench -- --size-mib 1024 --reps 3
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v restic >/dev/null; then
  echo "restic is missing; installing it (apt-get install -y restic)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y restic >/dev/null; else sudo -n apt-get install -y restic >/dev/null; fi
fi
npx tsc -b libs/sources libs/sample cli services/scheduler services/executor services/storage-gateway services/catalog services/restore bench
node scripts/bundle-cli.mjs
exec node bench/dist/backup.js "$@"
