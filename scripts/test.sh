#!/usr/bin/env bash
# Run every check cloudsd has: lint, types, Dockerfile and workflow lint, the image pins resolved by pip
# against the package index (scripts/resolve_pins.py, about 2 minutes), and the test suite on a real Docker
# engine.
#   scripts/test.sh [pytest args…]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check cloudsd tests benchmarks
.venv/bin/mypy cloudsd
find images -name Dockerfile -print0 | xargs -0 .venv/bin/hadolint --config images/.hadolint.yaml
.venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
.venv/bin/zizmor --offline --quiet .github/workflows/
# The pin resolution (~70 CPU-s, mostly pip) runs beside the tests at low priority: the tests mostly wait.
pins_log=$(mktemp)
nice -n 19 .venv/bin/python scripts/resolve_pins.py >"$pins_log" 2>&1 &
pins=$!
trap 'kill "$pins" 2>/dev/null || true' EXIT
# Most Docker tests wait (on boots, budgets, idle timers) rather than compute, so they run side by side in
# pytest-xdist workers, handed out one at a time, the longest first (tests/durations.json; --store-durations
# updates it). 6 workers on 2 cores: 4 were slower, 8 and more ran the timers close to their margins under
# load. CLOUDSD_TEST_WORKERS=0 runs everything in one process, one test at a time.
rc=0
.venv/bin/pytest -q -ra -n "${CLOUDSD_TEST_WORKERS:-6}" --dist load --maxschedchunk 1 --durations=10 "$@" || rc=$?
pins_rc=0
wait "$pins" || pins_rc=$?
cat "$pins_log"
rm -f "$pins_log"
[ "$pins_rc" = 0 ] || { echo "resolve_pins failed (exit $pins_rc): the image pins above do not resolve" >&2; exit "$pins_rc"; }
exit "$rc"
