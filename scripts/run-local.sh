#!/usr/bin/env bash
# The main job on this computer's own Docker engine (no cloud account): set up, then `cloudsd up`.
#   scripts/run-local.sh [cloudsd up args…]      e.g. scripts/run-local.sh mybox --detach
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/cloudsd up --provider local "$@"
