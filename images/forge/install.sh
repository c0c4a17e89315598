#!/usr/bin/env bash
# cloudsd: install Stable Diffusion WebUI Forge (the pins in upstream.env, constraints.txt, torch-cu*.txt and
# extension-requirements.txt beside this script) into $CLOUDSD_INSTALL_ROOT (default /opt/cloudsd).
#
#   install.sh [STEP...]      steps: venv torch clone packages launch (default: all, in that order)
#
# images/forge/Dockerfile runs it one step per layer; cloudsd runs it on the first boot of a stock CUDA +
# PyTorch image with CLOUDSD_INSTALL_ROOT=/workspace/cloudsd/forge. Resumable, with progress: see
# images/ui/install-steps.sh. Needs bash, git, python3 with venv, and CUDA (12.4 or 12.8) in the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../ui/install-steps.sh
. "$here/install-steps.sh" 2>/dev/null || . "$here/../ui/install-steps.sh" || exit 1
# CUDA: 12.4 or 12.8; by default the one an earlier run installed for (a machine started again), else 12.4.
: "${CUDA:=$(cat "$STATE/cuda" 2>/dev/null || echo 12.4)}"
STEPS="venv torch clone packages launch"
INPUTS="FORGE_REPO FORGE_COMMIT CLIP_PACKAGE OPENCLIP_PACKAGE"

step_venv() {
    "$PYTHON" -m venv --clear "$VENV" \
    && "$VENV"/bin/pip install pip==24.2 setuptools==69.5.1 wheel==0.45.1
}

step_torch() {
    install_torch
}

step_clone() {
    clone_pinned "$FORGE_REPO" "$FORGE_COMMIT"
}

# pip 24.2 applies PIP_CONSTRAINT to build environments too, so CLIP's setup.py gets a setuptools that still
# has pkg_resources (69.5.1, as requirements_versions.txt pins); it runs without build isolation.
# extension-requirements.txt: what the built-in extensions' install.py would otherwise install unpinned
# (forge_legacy_preprocessors, sd_forge_controlnet: fvcore, mediapipe, onnxruntime, svglib and three
# wheels from release URLs), pinned; installed first, those installers find them and do nothing.
step_packages() {
    "$VENV"/bin/pip install --no-build-isolation "$CLIP_PACKAGE" "$OPENCLIP_PACKAGE" \
    && "$VENV"/bin/pip install -r "$PINS/extension-requirements.txt"
}

# The extension installers report failures as warnings and go on, so the step reads launch.py's output and
# fails on any, then checks that every one of those packages is there (by module: hand_refiner is
# handrefinerportable's; found, not imported, as mediapipe's cv2 needs libGL, which only the final stage has).
step_launch() {
    cd "$APP" \
    && OPENCLIP_PACKAGE="$OPENCLIP_PACKAGE" \
    "$VENV/bin/python" launch.py --exit --skip-torch-cuda-test --skip-python-version-check \
    --no-download-sd-model 2>&1 | tee /tmp/launch.log \
    && ! grep -E "Error running install\.py|Failed to install" /tmp/launch.log \
    && "$VENV"/bin/pip check \
    && check_torch \
    && "$VENV/bin/python" -c 'import importlib.util as u, sys; gone = [m for m in sys.argv[1:] if not u.find_spec(m)]; sys.exit(f"missing: {gone}" if gone else 0)' \
    fvcore mediapipe onnxruntime svglib hand_refiner depth_anything depth_anything_v2 \
    && rm -rf repositories/*/.git tmp/* /tmp/launch.log
}

run_steps "$@"
