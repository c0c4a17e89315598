#!/usr/bin/env bash
# Run every check cloudsd has: lint, types, Dockerfile lint, and the test suite on a real Docker engine.
#   scripts/test.sh [pytest args…]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check cloudsd tests benchmarks
.venv/bin/mypy cloudsd
find images -name Dockerfile -print0 | xargs -0 .venv/bin/hadolint --config images/.hadolint.yaml
.venv/bin/pytest -q -ra "$@"
