#!/usr/bin/env bash
# cloudsd: install ComfyUI (the pins in upstream.env, constraints.txt and torch-cu*.txt beside this script)
# into $CLOUDSD_INSTALL_ROOT (default /opt/cloudsd): venv/ and app/.
#
#   install.sh [STEP...]      steps: venv torch clone requirements (default: all, in that order)
#
# images/comfyui/Dockerfile runs it one step per layer; cloudsd runs it on the first boot of a stock CUDA +
# PyTorch image with CLOUDSD_INSTALL_ROOT=/workspace/cloudsd/comfyui. Resumable, with progress: see
# images/ui/install-steps.sh. Needs bash, git, python3 with venv, and CUDA (12.4 or 12.8) in the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../ui/install-steps.sh
. "$here/install-steps.sh" 2>/dev/null || . "$here/../ui/install-steps.sh" || exit 1
# CUDA: 12.4 or 12.8; by default the one an earlier run installed for (a machine started again), else 12.4.
: "${CUDA:=$(cat "$STATE/cuda" 2>/dev/null || echo 12.4)}"
STEPS="venv torch clone requirements"
INPUTS="COMFYUI_REPO COMFYUI_COMMIT"

step_venv() {
    "$PYTHON" -m venv --clear "$VENV" \
    && "$VENV"/bin/pip install pip==24.2 setuptools==80.9.0 wheel==0.45.1
}

step_torch() {
    install_torch
}

step_clone() {
    clone_pinned "$COMFYUI_REPO" "$COMFYUI_COMMIT"
}

step_requirements() {
    cd "$APP" \
    && "$VENV"/bin/pip install -r requirements.txt \
    && "$VENV"/bin/pip check \
    && "$VENV/bin/python" -c 'import aiohttp, av, comfyui_frontend_package, kornia, spandrel, transformers'
}

run_steps "$@"
