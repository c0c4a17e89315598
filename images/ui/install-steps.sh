# shellcheck shell=bash
# cloudsd: the step runner of every flavor's install script (images/<flavor>/install.sh sources it).
#
# The same script installs a UI twice over: at image build time (the flavor's Dockerfile runs it one step
# per layer, into /opt/cloudsd) and on the first boot of a stock CUDA + PyTorch image (cloudsd copies the
# flavor's folder to the machine and runs it into /workspace/cloudsd/<flavor>, the persistent volume).
#
# A flavor script sets STEPS (their order), INPUTS (the variables its steps read: upstream URL and commit,
# package names) and one function step_<name> per step, then calls `run_steps [STEP...]` (no STEP: all).
# Steps alike in every flavor are helpers here (install_torch, clone_pinned) that those functions call.
#
# Resumable: a step that ends well writes its marker $STATE/<step>.done holding a fingerprint of what it
# read (its own text, the INPUTS it names, the pin files if it runs pip). A later run skips a step whose
# marker matches and runs every step after the first one that does not, so an interrupted install goes on
# where it stopped, a finished one is a no-op, and changed pins redo what they change. One install at a
# time: $STATE/lock (flock).
#
# Progress, for cloudsd to read over SSH: one line per event appended to $STATE/progress,
#   <epoch seconds> <n>/<total> <step> start|done|skip|failed
# and each step's output in $STATE/<step>.log (its last line is the detail cloudsd shows), also on stderr.
#
# Inputs from the environment (all optional):
#   CLOUDSD_INSTALL_ROOT  where the venv/ and app/ go (default /opt/cloudsd)
#   CLOUDSD_PYTHON        the interpreter the venv is made from (default python3)
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX and the other PIP_* variables: pip reads them itself, so
#   the package index is an input too (the tests install stand-in wheels with PIP_NO_INDEX=1 and
#   PIP_FIND_LINKS=<folder>); with PIP_NO_INDEX pip also ignores the torch files' --extra-index-url.
#   The flavor's upstream URL and commit: see its upstream.env (the defaults are the real ones).

ROOT=${CLOUDSD_INSTALL_ROOT:-/opt/cloudsd}
STATE=$ROOT/install-state
VENV=$ROOT/venv
APP=$ROOT/app
PYTHON=${CLOUDSD_PYTHON:-python3}
# PINS: the folder holding this flavor's install.sh, constraints.txt, torch-cu*.txt and upstream.env.
PINS=${PINS:-$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)}
export PIP_CONSTRAINT=${PIP_CONSTRAINT:-$PINS/constraints.txt}
export PIP_NO_CACHE_DIR=${PIP_NO_CACHE_DIR:-1} PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export GIT_TERMINAL_PROMPT=0
# shellcheck source=/dev/null
[ ! -r "$PINS/upstream.env" ] || . "$PINS/upstream.env"

# check_torch: the venv's torch is the build for CUDA (e.g. 12.4).
check_torch() {
    "$VENV/bin/python" -c 'import sys, torch; assert torch.version.cuda == sys.argv[1], torch.version.cuda' "$CUDA"
}

# The steps every flavor shares, which a flavor's step_<name> calls with its own pins (so its fingerprint holds
# them; a helper's text counts in the fingerprint of each step that calls it: SHARED_STEPS).
SHARED_STEPS="install_torch clone_pinned check_torch" # callers before what they call

# install_torch: PyTorch first (about 3 GB), before the upstream is fetched, so that bumping the upstream
# commit reuses the torch layer (see the Dockerfiles).
install_torch() {
    "$VENV"/bin/pip install -r "$PINS/torch-cu${CUDA//./}.txt" \
    && check_torch
}

# clone_pinned REPO COMMIT: a fresh checkout of exactly the pinned commit (a half-done one from an
# interrupted run is removed).
clone_pinned() {
    rm -rf "$APP" && mkdir -p "$APP" && cd "$APP" \
    && git init -q . \
    && git fetch -q --depth 1 "$1" "$2" \
    && git checkout -q FETCH_HEAD \
    && test "$(git rev-parse HEAD)" = "$2"
}

_fingerprint() { # STEP
    local body var helper
    body=$(declare -f "step_$1")
    for helper in $SHARED_STEPS; do
        case $body in *"$helper"*) body+=$'\n'$(declare -f "$helper") ;; esac
    done
    {
        printf '%s\n' "$body"
        for var in $INPUTS CUDA; do
            case $body in *"\$$var"* | *"\${$var"*) printf '%s=%s\n' "$var" "${!var-}" ;; esac
        done
        case $body in *pip*) cat "$PINS"/constraints.txt "$PINS"/torch-cu*.txt "$PINS"/*-requirements.txt 2>/dev/null ;; esac
    } | sha256sum | cut -c1-16
}

_progress() { # N STEP EVENT
    printf '%s %s/%s %s %s\n' "$(date +%s)" "$1" "$total" "$2" "$3" >>"$STATE/progress"
    printf 'cloudsd-install: %s/%s %s %s\n' "$1" "$total" "$2" "$3" >&2
}

run_steps() {
    local wanted=("$@") step n=0 key stale=0 rc
    [ "${#wanted[@]}" -gt 0 ] || read -r -a wanted <<<"$STEPS"
    total=$(wc -w <<<"$STEPS")
    mkdir -p "$STATE" || return 1
    printf '%s\n' "$CUDA" >"$STATE/cuda"
    exec 9>>"$STATE/lock"
    flock -n 9 || { echo "cloudsd-install: another install runs; waiting for it" >&2 && flock 9; }
    for step in $STEPS; do
        n=$((n + 1))
        case " ${wanted[*]} " in *" $step "*) ;; *) continue ;; esac
        key=$(_fingerprint "$step")
        if [ "$stale" = 0 ] && [ "$(cat "$STATE/$step.done" 2>/dev/null)" = "$key" ]; then
            _progress "$n" "$step" skip
            continue
        fi
        stale=1 # every step after one that runs runs too: it may build on what changed
        rm -f "$STATE/$step.done"
        _progress "$n" "$step" start
        (set -euo pipefail && "step_$step") 2>&1 | tee "$STATE/$step.log" >&2
        rc=${PIPESTATUS[0]}
        if [ "$rc" != 0 ]; then
            _progress "$n" "$step" failed
            exec 9>&-
            return "$rc"
        fi
        printf '%s\n' "$key" >"$STATE/$step.done"
        _progress "$n" "$step" done
    done
    exec 9>&- # the UI started after this must not hold the install's lock
}
