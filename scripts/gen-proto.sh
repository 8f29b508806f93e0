#!/usr/bin/env bash
# Generates proto/src/gen from proto/iotvault/v1/*.proto with buf + ts-proto.
#   scripts/gen-proto.sh          regenerate in place
#   scripts/gen-proto.sh --check  lint the protos and fail when the committed output is stale
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/proto"
export PATH="$root/node_modules/.bin:$PATH"
buf lint
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  buf generate --output "$tmp"
  node "$root/scripts/proto-index.mjs" "$tmp/src/gen"
  if ! diff -r "$tmp/src/gen" src/gen >/dev/null; then
    diff -r "$tmp/src/gen" src/gen | head -n 40 >&2 || true
    echo "proto/src/gen is stale: run 'npm run proto:gen' and commit the result" >&2
    exit 1
  fi
  echo "proto: lint clean, generated code up to date"
else
  rm -rf src/gen
  buf generate
  node "$root/scripts/proto-index.mjs" src/gen
  echo "proto: generated src/gen"
fi
