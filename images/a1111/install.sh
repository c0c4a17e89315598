#!/usr/bin/env bash
# cloudsd: install AUTOMATIC1111 stable-diffusion-webui (the pins in upstream.env, constraints.txt and
# torch-cu*.txt beside this script) into $CLOUDSD_INSTALL_ROOT (default /opt/cloudsd): venv/ and app/.
#
#   install.sh [STEP...]      steps: venv torch clone packages launch (default: all, in that order)
#
# images/a1111/Dockerfile runs it one step per layer; cloudsd runs it on the first boot of a stock CUDA +
# PyTorch image with CLOUDSD_INSTALL_ROOT=/workspace/cloudsd/a1111. Resumable, with progress: see
# images/ui/install-steps.sh. Needs bash, git, python3 with venv, and CUDA (12.4 or 12.8) in the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../ui/install-steps.sh
. "$here/install-steps.sh" 2>/dev/null || . "$here/../ui/install-steps.sh" || exit 1
# CUDA: 12.4 or 12.8; by default the one an earlier run installed for (a machine started again), else 12.4.
: "${CUDA:=$(cat "$STATE/cuda" 2>/dev/null || echo 12.4)}"
STEPS="venv torch clone packages launch"
INPUTS="A1111_REPO A1111_COMMIT CLIP_PACKAGE OPENCLIP_PACKAGE STABLE_DIFFUSION_REPO STABLE_DIFFUSION_XL_REPO"

step_venv() {
    "$PYTHON" -m venv --clear "$VENV" \
    && "$VENV"/bin/pip install pip==24.2 setuptools==69.5.1 wheel==0.44.0
}

step_torch() {
    install_torch
}

step_clone() {
    clone_pinned "$A1111_REPO" "$A1111_COMMIT"
}

# pip 24.2 applies PIP_CONSTRAINT to build environments too, so CLIP's setup.py gets a setuptools that still
# has pkg_resources (69.5.1, as requirements_versions.txt pins); it runs without build isolation.
step_packages() {
    "$VENV"/bin/pip install --no-build-isolation "$CLIP_PACKAGE" "$OPENCLIP_PACKAGE"
}

# launch.py finds both and installs the rest. Its extension installers report failures as warnings and go
# on, so the step reads their output and fails on any.
step_launch() {
    cd "$APP" \
    && STABLE_DIFFUSION_REPO="$STABLE_DIFFUSION_REPO" STABLE_DIFFUSION_XL_REPO="$STABLE_DIFFUSION_XL_REPO" \
    OPENCLIP_PACKAGE="$OPENCLIP_PACKAGE" \
    "$VENV/bin/python" launch.py --exit --skip-torch-cuda-test --skip-python-version-check \
    --no-download-sd-model 2>&1 | tee /tmp/launch.log \
    && ! grep -E "Error running install\.py|Failed to install" /tmp/launch.log \
    && "$VENV"/bin/pip check \
    && check_torch \
    && rm -rf repositories/*/.git tmp/* /tmp/launch.log
}

run_steps "$@"
