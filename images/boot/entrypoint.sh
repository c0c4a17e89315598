#!/usr/bin/env bash
# cloudsd boot layer: make a container reachable by SSH key and start its web UI on 127.0.0.1.
#
#   entrypoint.sh [--no-ui] [--foreground | --onstart]
#
# Idempotent, and used two ways (see README.md in this directory):
# - as the image ENTRYPOINT (PID 1, or a child of docker-init/tini): does the steps below, then stays in
#   the foreground as the container's init: reaps children, restarts sshd if it dies, and on
#   SIGTERM/SIGINT stops the UI and sshd and exits at once, so `docker stop` is quick;
# - from a provider's onstart hook, after the provider started its own sshd (Vast.ai's ssh launch
#   modes): does only the missing steps and returns. Running it again changes nothing.
#
# Steps: authorized_keys from $PUBLIC_KEY / $SSH_PUBLIC_KEY; host keys if missing; the provider's
# environment saved to /etc/cloudsd/env; sshd started unless port 22 already listens; the UI started
# unless it already runs ($CLOUDSD_UI_CMD, else /opt/cloudsd/ui/start; log /var/log/cloudsd/ui.log).
set -u

SSHD=/usr/sbin/sshd
SSH_PORT=22
RUN_DIR=/run/cloudsd
LOG_DIR=/var/log/cloudsd
ENV_FILE=/etc/cloudsd/env
UI_START=/opt/cloudsd/ui/start
UI_FLAVOR_FILE=/opt/cloudsd/ui/flavor
UI_PIDFILE=$RUN_DIR/ui.pid
AUTHORIZED_KEYS=/root/.ssh/authorized_keys
SAVED_ENV_RE='^(RUNPOD_|CONTAINER_|VAST_|CLOUDSD_)|^PUBLIC_KEY$'

log() { printf '%s cloudsd-boot[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*" >&2; }

# -- process and port checks that need nothing beyond /proc (CUDA base images may lack procps) ---------

# port_listening PORT: true if a TCP socket listens on PORT, on any address.
port_listening() {
    local hex f local_addr st
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        while read -r _ local_addr _ st _; do
            [ "$st" = 0A ] && [ "${local_addr##*:}" = "$hex" ] && return 0
        done <"$f"
    done
    return 1
}

# proc_start_time PID: the kernel's start time of PID (field 22 of /proc/PID/stat), empty if gone.
proc_start_time() {
    local stat rest fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) } # the command name may contain spaces and parentheses
    read -r -a fields <<<"$rest"
    [ "${fields[0]}" != Z ] || return 1
    printf '%s' "${fields[19]}"
}

# pidfile_alive FILE: the pidfile's process still runs (pid and start time match, so a reused pid
# after a container restart does not count).
pidfile_alive() {
    local pid start now
    [ -r "$1" ] || return 1
    read -r pid start <"$1" || return 1
    [ -n "${pid:-}" ] || return 1
    now=$(proc_start_time "$pid") || return 1
    [ "$now" = "${start:-}" ]
}

write_pidfile() { # FILE PID
    printf '%s %s\n' "$2" "$(proc_start_time "$2")" >"$1"
}

# -- steps ----------------------------------------------------------------------------------------------

# A provider's onstart hook may run with a trimmed environment; the container's own is PID 1's.
import_container_env() {
    local kv name
    [ "$$" != 1 ] && [ -r /proc/1/environ ] || return 0
    while IFS= read -r -d '' kv; do
        name=${kv%%=*}
        [[ $name =~ $SAVED_ENV_RE || $name == SSH_PUBLIC_KEY ]] || continue
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        [ -n "${!name+set}" ] || export "$kv"
    done </proc/1/environ
}

install_keys() {
    local keys line added=0
    keys="${PUBLIC_KEY:-}"$'\n'"${SSH_PUBLIC_KEY:-}"
    keys=${keys//'\n'/$'\n'} # some dashboards pass a literal backslash-n between keys
    mkdir -p "${AUTHORIZED_KEYS%/*}"
    chmod 0700 "${AUTHORIZED_KEYS%/*}"
    touch "$AUTHORIZED_KEYS"
    chmod 0600 "$AUTHORIZED_KEYS"
    # Never glue a new key onto a last line that lacks its newline.
    if [ -s "$AUTHORIZED_KEYS" ] && [ -n "$(tail -c 1 "$AUTHORIZED_KEYS")" ]; then
        printf '\n' >>"$AUTHORIZED_KEYS"
    fi
    while IFS= read -r line; do
        line=${line%$'\r'}
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        [ -n "$line" ] && [ "${line:0:1}" != "#" ] || continue
        if ! grep -qxF -- "$line" "$AUTHORIZED_KEYS"; then
            printf '%s\n' "$line" >>"$AUTHORIZED_KEYS"
            added=$((added + 1))
        fi
    done <<<"$keys"
    [ "$added" = 0 ] || log "added $added key(s) to $AUTHORIZED_KEYS"
}

# The host keys are kept on the persistent volume too: a provider whose stop drops the container disk
# (RunPod keeps only /workspace) brings the machine back with the same keys, so the key cloudsd pinned at
# `up` still matches after `cloudsd start`.
HOST_KEYS_KEPT=${CLOUDSD_HOST_KEYS_DIR:-/workspace/.cloudsd/ssh-host-keys}

ensure_host_keys() {
    if ! compgen -G '/etc/ssh/ssh_host_*_key' >/dev/null && compgen -G "$HOST_KEYS_KEPT/ssh_host_*_key" >/dev/null; then
        cp -p "$HOST_KEYS_KEPT"/ssh_host_* /etc/ssh/ && log "restored SSH host keys from $HOST_KEYS_KEPT"
    fi
    if ! compgen -G '/etc/ssh/ssh_host_*_key' >/dev/null; then
        ssh-keygen -A >/dev/null && log "generated SSH host keys"
    fi
    if [ -d "${HOST_KEYS_KEPT%/*/*}" ] && ! compgen -G "$HOST_KEYS_KEPT/ssh_host_*_key" >/dev/null; then
        (umask 077 && mkdir -p "$HOST_KEYS_KEPT" && cp -p /etc/ssh/ssh_host_* "$HOST_KEYS_KEPT"/) 2>/dev/null || true
    fi
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
}

# Written to a temp file and renamed, so a reader never sees half a file. Single quotes keep every
# value literal; an embedded ' becomes '\''.
save_env() {
    local tmp name value q="'"
    mkdir -p "${ENV_FILE%/*}"
    chmod 0700 "${ENV_FILE%/*}"
    tmp=$(mktemp "${ENV_FILE%/*}/.env.XXXXXX") || return 1
    {
        printf '# Written by /opt/cloudsd/boot/entrypoint.sh: the provider-given environment, which SSH\n'
        printf '# sessions do not see. Use: . %s\n' "$ENV_FILE"
        for name in $(compgen -e | LC_ALL=C sort -u); do
            [[ $name =~ $SAVED_ENV_RE ]] || continue
            value=${!name}
            printf "export %s='%s'\n" "$name" "${value//$q/$q\\$q$q}"
        done
    } >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
}

sshd_pid=""

start_sshd() { # MODE: foreground (a child we supervise) or daemon (sshd forks and detaches)
    if port_listening "$SSH_PORT"; then
        log "sshd already listens on port $SSH_PORT"
        return 0
    fi
    "$SSHD" -t >/dev/null 2>&1 || log "sshd -t: $("$SSHD" -t 2>&1)"
    if [ "$1" = foreground ]; then
        "$SSHD" -D -e 9>&- &
        sshd_pid=$!
        log "started sshd (pid $sshd_pid)"
    else
        mkdir -p "$LOG_DIR"
        if "$SSHD" -E "$LOG_DIR/sshd.log" 9>&-; then
            log "started sshd (daemon)"
        else
            log "sshd failed to start; see $LOG_DIR/sshd.log"
        fi
    fi
}

# The UI this image runs: $CLOUDSD_UI_FLAVOR, else the first word of the image's flavor file (so a
# ComfyUI image started without cloudsd's environment is still ComfyUI on 8188), else a1111.
ui_flavor() {
    local flavors=""
    if [ -n "${CLOUDSD_UI_FLAVOR:-}" ]; then
        printf '%s' "$CLOUDSD_UI_FLAVOR"
        return 0
    fi
    read -r flavors _ <"$UI_FLAVOR_FILE" 2>/dev/null || true
    printf '%s' "${flavors:-a1111}"
}

ui_port() {
    if [ -n "${CLOUDSD_UI_PORT:-}" ]; then
        printf '%s' "$CLOUDSD_UI_PORT"
    elif [ "$(ui_flavor)" = comfyui ]; then
        printf 8188
    else
        printf 7860
    fi
}

start_ui() {
    local port pid cmd
    port=$(ui_port)
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    if pidfile_alive "$UI_PIDFILE"; then
        log "UI already running (pid $(cut -d' ' -f1 "$UI_PIDFILE"))"
        return 0
    fi
    if port_listening "$port"; then
        log "port $port already listens; not starting another UI"
        return 0
    fi
    if [ -n "${CLOUDSD_UI_CMD:-}" ]; then
        cmd=(/bin/sh -c "$CLOUDSD_UI_CMD")
    elif [ -x "$UI_START" ]; then
        cmd=("$UI_START")
    else
        log "no UI: CLOUDSD_UI_CMD is unset and $UI_START is missing"
        return 0
    fi
    printf '==== %s cloudsd-boot: starting UI on 127.0.0.1:%s: %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$port" "${cmd[*]}" >>"$LOG_DIR/ui.log"
    # setsid: the UI leads its own process group (stopped as a whole) and outlives an onstart shell.
    # The UI must bind 127.0.0.1 only; these two variables tell it where.
    if command -v setsid >/dev/null; then
        CLOUDSD_UI_HOST=127.0.0.1 CLOUDSD_UI_PORT=$port \
            setsid "${cmd[@]}" </dev/null >>"$LOG_DIR/ui.log" 2>&1 9>&- &
    else
        CLOUDSD_UI_HOST=127.0.0.1 CLOUDSD_UI_PORT=$port \
            nohup "${cmd[@]}" </dev/null >>"$LOG_DIR/ui.log" 2>&1 9>&- &
    fi
    pid=$!
    write_pidfile "$UI_PIDFILE" "$pid"
    ui_started_at=$(date +%s)
    log "started UI (pid $pid, port $port, log $LOG_DIR/ui.log)"
}

stop_ui() {
    local pid start
    pidfile_alive "$UI_PIDFILE" || return 0
    read -r pid start <"$UI_PIDFILE"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
}

# -- init loop ------------------------------------------------------------------------------------------

stopping=0
shutdown() {
    local pid i
    trap - TERM INT
    stopping=1
    log "stopping"
    stop_ui
    [ -z "$sshd_pid" ] || kill -TERM "$sshd_pid" 2>/dev/null
    read -r pid _ <"$UI_PIDFILE" 2>/dev/null || pid=""
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30; do
        [ -n "$pid" ] && pidfile_alive "$UI_PIDFILE" || break
        sleep 0.1
    done
    rm -f "$UI_PIDFILE"
    exit 0
}

# A UI that exits (killed for memory, say) is started again after a pause that doubles with each quick
# failure (UI_BACKOFF_FIRST_S up to UI_BACKOFF_MAX_S; a UI that ran UI_HEALTHY_S or longer starts the series
# again). Every restart is counted in $UI_RESTARTS_FILE, "<count> <unix time of the last>", which survives
# a restarted container but not a new one, as /run does.
UI_RESTARTS_FILE=$RUN_DIR/ui-restarts
UI_BACKOFF_FIRST_S=${CLOUDSD_UI_BACKOFF_FIRST_S:-2}
UI_BACKOFF_MAX_S=${CLOUDSD_UI_BACKOFF_MAX_S:-120}
UI_HEALTHY_S=${CLOUDSD_UI_HEALTHY_S:-300}
ui_started_at=0
ui_restart_at=0
ui_backoff=0

watch_ui() { # NOW: restart a UI that exited, with backoff
    local now=$1 count=0 last
    [ "$ui_started_at" != 0 ] || return 0 # this boot never started a UI (--no-ui, or one already ran)
    pidfile_alive "$UI_PIDFILE" && return 0
    if [ "$ui_restart_at" = 0 ]; then
        if [ $((now - ui_started_at)) -ge "$UI_HEALTHY_S" ] || [ "$ui_backoff" = 0 ]; then
            ui_backoff=$UI_BACKOFF_FIRST_S
        else
            ui_backoff=$((ui_backoff * 2))
            [ "$ui_backoff" -le "$UI_BACKOFF_MAX_S" ] || ui_backoff=$UI_BACKOFF_MAX_S
        fi
        ui_restart_at=$((now + ui_backoff))
        log "the UI exited after $((now - ui_started_at)) s; starting it again in $ui_backoff s (log $LOG_DIR/ui.log)"
        return 0
    fi
    [ "$now" -ge "$ui_restart_at" ] || return 0
    ui_restart_at=0
    read -r count last <"$UI_RESTARTS_FILE" 2>/dev/null || count=0
    printf '%s %s\n' "$((${count:-0} + 1))" "$now" >"$UI_RESTARTS_FILE.tmp" && mv -f "$UI_RESTARTS_FILE.tmp" "$UI_RESTARTS_FILE"
    start_ui
}

supervise() {
    local last_restart=0 now tick
    trap shutdown TERM INT
    while [ "$stopping" = 0 ]; do
        sleep 2 &
        tick=$!
        wait "$tick" 2>/dev/null || kill "$tick" 2>/dev/null
        now=$(date +%s)
        if [ -n "$sshd_pid" ] && ! kill -0 "$sshd_pid" 2>/dev/null; then
            if [ $((now - last_restart)) -ge 5 ]; then
                log "sshd (pid $sshd_pid) exited; restarting it"
                last_restart=$now
                sshd_pid=""
                start_sshd foreground
            fi
        fi
        [ "$stopping" = 1 ] || watch_ui "$now"
    done
}

# -- main -----------------------------------------------------------------------------------------------

main() {
    local with_ui=1 mode=""
    while [ $# -gt 0 ]; do
        case $1 in
        --no-ui) with_ui=0 ;;
        --foreground) mode=foreground ;;
        --onstart) mode=onstart ;;
        -h | --help)
            sed -n '2,15p' "$0"
            return 0
            ;;
        *)
            log "unknown argument: $1"
            return 2
            ;;
        esac
        shift
    done
    if [ -z "$mode" ]; then
        mode=onstart
        if [ "$$" = 1 ]; then
            mode=foreground
        elif [ "$PPID" = 1 ]; then
            case $(cat /proc/1/comm 2>/dev/null) in
            docker-init | tini | dumb-init | catatonit) mode=foreground ;;
            esac
        fi
    fi
    if [ "$mode" = foreground ]; then
        rm -f "$UI_PIDFILE" # a fresh container: nothing from an earlier boot still runs
    fi

    mkdir -p "$RUN_DIR" "$LOG_DIR"
    # One boot at a time (an onstart hook may race the entrypoint). Children must not inherit fd 9.
    exec 9>"$RUN_DIR/boot.lock"
    if command -v flock >/dev/null; then
        flock -w 60 9 || log "could not lock $RUN_DIR/boot.lock; going on anyway"
    fi

    import_container_env
    install_keys
    ensure_host_keys
    save_env || log "could not write $ENV_FILE"
    if [ "$mode" = foreground ]; then
        start_sshd foreground
    else
        start_sshd daemon
    fi
    [ "$with_ui" = 0 ] || start_ui
    exec 9>&-

    if [ "$mode" = foreground ]; then
        supervise
    fi
    return 0
}

main "$@"
