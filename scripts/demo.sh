#!/usr/bin/env bash
# The quick-start demo (`npm run demo`): installs what is missing, starts the five services
# (and NATS / PostgreSQL when none is reachable), generates a sample IoT gateway directory,
# backs it up into an encrypted local repository through scheduler -> executor ->
# storage-gateway -> catalog, restores it into another directory, verifies it, and prints the
# run id, snapshot id, sizes and the run's trace across the services.
# Safe to run again: existing repository and job are reused (the second backup is incremental).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh

export IOTVAULT_HOME="${IOTVAULT_HOME:-$HOME/.iotvault}"
mkdir -p "$IOTVAULT_HOME/secrets" && chmod 700 "$IOTVAULT_HOME" "$IOTVAULT_HOME/secrets"
if [ -z "${IOTVAULT_PASSWORD:-}" ] && [ -z "${IOTVAULT_PASSWORD_FILE:-}" ]; then
  # A random passphrase for the demo repository, kept in a file only the user can read.
  pass="$IOTVAULT_HOME/secrets/demo-repository.pass"
  if [ ! -s "$pass" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 > "$pass")
  fi
  export IOTVAULT_PASSWORD_FILE="$pass"
fi

iv() { node "$root/cli/bin/iotvault.js" "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);console.log(process.argv[1].split(".").reduce((o,k)=>o?.[k],v)??"")})' "$1"; }

work="$IOTVAULT_HOME/demo"
step "iotvault stack up"
iv stack up

step "generating a sample IoT gateway directory in $work/gateway"
rm -rf "$work/gateway"
iv sample "$work/gateway" --size-mib "${IOTVAULT_DEMO_SIZE_MIB:-32}"

step "iotvault repo init demo --url file://$work/repository"
if iv repo list --json | grep -q '"name": "demo"'; then
  echo "repository demo exists: reusing it"
else
  iv repo init demo --url "file://$work/repository"
fi

step "iotvault job create demo-gateway --source fs:$work/gateway --repo demo"
if iv job show demo-gateway --json >/dev/null 2>&1; then
  echo "job demo-gateway exists: reusing it"
else
  iv job create demo-gateway --source "fs:$work/gateway" --repo demo --exclude 'spool/**/*.tmp'
fi

step "iotvault backup demo-gateway --wait"
iv backup demo-gateway --wait
run=$(iv runs --job demo-gateway --limit 1 --json | json 0.runId)
snapshot=$(iv runs --job demo-gateway --limit 1 --json | json 0.snapshotId)

step "iotvault backup demo-gateway --wait   (again: the tree is unchanged, almost nothing is added)"
iv backup demo-gateway --wait
second=$(iv runs --job demo-gateway --limit 1 --json | json 0.runId)

target="$work/restore-$(date +%Y%m%dT%H%M%S)"
step "iotvault restore ${snapshot:0:12} --to $target"
iv restore "$snapshot" --to "$target"

step "comparing the restored tree with the source"
if diff -r --no-dereference "$work/gateway" "$target" >/dev/null; then
  echo "identical: every file, directory and symlink matches"
else
  echo "restored tree differs from the source" >&2
  exit 1
fi

step "iotvault verify ${snapshot:0:12} --read-data"
iv verify "$snapshot" --read-data

step "runs of the job"
iv runs --job demo-gateway --limit 5

step "iotvault trace $run"
iv trace "$run"

cat <<DONE

Done.
  first run      $run
  second run     $second (the unchanged tree: see ADDED in the runs table)
  snapshot       $snapshot
  restored to    $target
  IOTVAULT_HOME  $IOTVAULT_HOME   (logs in logs/, kept spans in traces/)
The services keep running: try \`node cli/bin/iotvault.js snapshots\`; stop them with
\`node cli/bin/iotvault.js stack down\`.
DONE
