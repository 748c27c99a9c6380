#!/usr/bin/env bash
# The whole test suite as CI runs it: set up (with test tools), lint, type-check, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
