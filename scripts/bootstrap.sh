#!/usr/bin/env bash
# Make this computer ready to run cloudsd on its own Docker engine and to run the tests:
# Docker engine and debootstrap (Debian/Ubuntu), a virtualenv with cloudsd, the base and test images.
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v ssh >/dev/null 2>&1 || need_pkgs+=(openssh-client)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    sudo_if_needed apt-get update -q
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    log "starting the Docker engine"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        sudo_if_needed systemctl start docker
    else
        sudo_if_needed sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { echo "the Docker engine did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c 'import cloudsd, pytest, jsonschema' >/dev/null 2>&1 \
   || [[ pyproject.toml -nt .venv/.installed ]]; then
    log "installing cloudsd and its test tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.installed
fi
# Bytecode for cloudsd's modules, which the editable install runs from this checkout: where the shell sets
# PYTHONDONTWRITEBYTECODE=1 (these machines do), every run would compile each module it imports again (+17 ms
# of a ~60 ms `cloudsd status`). compileall skips what is current; a file edited later is compiled in memory
# until a run without that variable, or the next bootstrap, writes its bytecode.
.venv/bin/python -m compileall -q cloudsd >/dev/null

log "building the base image (debootstrap) and the test image"
sudo_if_needed images/base/build.sh "${CLOUDSD_BASE_IMAGE:-cloudsd-base:bookworm}"
.venv/bin/python -c 'from tests.support.images import ensure_testbed_image; print(ensure_testbed_image())'
