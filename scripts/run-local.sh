#!/usr/bin/env bash
# The main job on this computer's own Docker engine (no cloud account): set up, then `cloudsd up`.
#   scripts/run-local.sh [cloudsd up args…]      e.g. scripts/run-local.sh mybox --detach
#
# On a GPU box (an engine with the NVIDIA runtime), or wherever cloudsd's A1111 image is already present,
# this runs the real AUTOMATIC1111 image (pulling or building it first if needed). On a computer without a
# GPU runtime, where A1111 would have to be built from GitHub and would render on the CPU for minutes per
# picture, it runs the test image's stand-in UI instead, so the whole flow (up, tunnel, ssh, down) works
# offline; set CLOUDSD_IMAGE or pass --image to choose yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

choose_image() {
    [[ -n "${CLOUDSD_IMAGE:-}" ]] && return
    for arg in "$@"; do [[ "$arg" == --image || "$arg" == --image=* ]] && return; done
    local real
    real=$(.venv/bin/python -c 'from cloudsd.ui import profile; print(profile("a1111").image())')
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
       || docker image inspect "$real" >/dev/null 2>&1; then
        return
    fi
    echo "No GPU runtime on this Docker engine and no $real here: starting the test image's stand-in UI." >&2
    echo "(For the real AUTOMATIC1111 on the CPU: CLOUDSD_IMAGE=$real scripts/run-local.sh)" >&2
    export CLOUDSD_IMAGE=cloudsd-testbed:latest
}
choose_image "$@"
exec .venv/bin/cloudsd up --provider local "$@"
