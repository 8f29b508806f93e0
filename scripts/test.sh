#!/usr/bin/env bash
# The whole test suite (`npm test`; CI runs exactly this through .ci/run).
# Installs what is missing, checks generated code, type-checks, lints, checks formatting,
# then runs every test file with node's test runner against real NATS, PostgreSQL and gRPC.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh --test
echo "==> proto: buf lint and generated-code drift" >&2
bash scripts/gen-proto.sh --check
echo "==> lint (eslint) and format (prettier)" >&2
node_modules/.bin/eslint . --max-warnings 0
node_modules/.bin/prettier --check . --log-level warn
echo "==> tests" >&2
mapfile -t files < <(find proto libs services cli examples test -path '*/node_modules' -prune -o \
  -path '*/dist/*' -name '*.test.js' -print 2>/dev/null | sort)
if [ ${#files[@]} -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
exec node --test --test-concurrency="${IOTVAULT_TEST_CONCURRENCY:-2}" --test-timeout=600000 "$@" "${files[@]}"
