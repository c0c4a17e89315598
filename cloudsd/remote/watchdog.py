#!/usr/bin/env python3
"""cloudsd's watchdog: ends this machine when its time or spend budget is reached, stops it when it sits idle.

Runs on the rented machine with nothing but python3 (3.8 or newer) and needs no laptop: cloudsd copies it over
SSH and starts it detached (`setsid`), so it outlives the SSH connection, the tunnel and the laptop.

    watchdog.py [--config /etc/cloudsd/watchdog.json]   run (one instance per machine: a lock file)
    watchdog.py --status [--config …]                   print this machine's clock, the watchdog's state and
                                                        the web UI's restarts (the boot layer's ui_restarts_file)

Config (JSON, written by cloudsd, re-read whenever it changes): provider (a name, for the log), end_calls
({"stop": call, "terminate": call}, built by the provider; see `end_machine`), deadlines [{at, reason}] in
this machine's epoch seconds, idle_s, idle_action (stop | terminate),
idle_reason, activity_file, gpu_busy_percent, poll_s, env_file, state_file, log_file, lock_file,
ui_restarts_file.

Activity, for idle: the web UI's last request (the epoch in `activity_file`, written by the UI), a shell on a
pty whose terminal was used within the idle window, or GPU use at or above `gpu_busy_percent` (where
`nvidia-smi` exists). The tunnel's own pty keeper runs `sleep`, not a shell, so an open tunnel alone is not
activity. The watchdog sleeps until the next deadline, so it acts within a second of it, not a poll later.

Ending sends the request the provider built for it (`end_calls`: method, URL, headers, body, and which answer
means success), filled in from /etc/cloudsd/env with the credential the provider gave this machine (a key
scoped to it, never the user's account key: cloudsd does not put that on the machine). This script knows no
vendor. It follows no redirect, so the key reaches the URL's own host only, and counts success only on the
documented answer. Without `end_calls` (the local engine: no API, no such credential) it sends SIGTERM to
PID 1, which stops the container. A failed call is retried with backoff (1 s doubling to 60 s) until it works.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO, Any

VERSION = 1
DEFAULT_CONFIG = "/etc/cloudsd/watchdog.json"
SHELLS = {"bash", "sh", "dash", "zsh", "fish", "ash", "ksh", "mksh", "tcsh", "csh", "busybox"}
DEFAULTS: dict[str, Any] = {
    "provider": "local", "deadlines": [], "idle_s": None, "idle_action": "stop", "idle_reason": "idle",
    "activity_file": "/run/cloudsd/ui-activity", "gpu_busy_percent": 10.0, "poll_s": 20.0,
    "env_file": "/etc/cloudsd/env", "state_file": "/run/cloudsd/watchdog-state.json",
    "log_file": "/var/log/cloudsd/watchdog.log", "lock_file": "/run/cloudsd/watchdog.lock",
    "ui_restarts_file": "/run/cloudsd/ui-restarts",
}
MAX_BACKOFF_S = 60.0
REISSUE_S = 60.0  # a machine still alive this long after a successful call gets the call again


# -- small helpers ------------------------------------------------------------------------------------------
def load_config(path: str) -> dict[str, Any]:
    with open(path) as handle:
        data = json.load(handle)
    config = dict(DEFAULTS)
    config.update(data)
    return config


def read_env(path: str) -> dict[str, str]:
    """`export NAME='value'` lines (as the boot layer writes /etc/cloudsd/env) as a dict."""
    env: dict[str, str] = {}
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return env
    for line in lines:
        line = line.strip()
        if not line.startswith("export "):
            continue
        try:
            words = shlex.split(line[len("export "):])
        except ValueError:
            continue
        for word in words:
            name, sep, value = word.partition("=")
            if sep:
                env[name] = value
    return env


def write_json(path: str, data: Any) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


# -- activity -----------------------------------------------------------------------------------------------
def ui_activity(path: str) -> float | None:
    """The epoch of the web UI's last request, from the file's content, else its modification time."""
    try:
        with open(path) as handle:
            return float(handle.read().strip())
    except (OSError, ValueError):
        pass
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def shell_activity() -> float | None:
    """The last use of a terminal that runs a shell: the newest access or change time of its /dev/pts device."""
    newest = None
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as handle:
                comm = handle.read().strip()
            if comm not in SHELLS:
                continue
            tty = os.readlink(f"/proc/{pid}/fd/0")
        except OSError:
            continue
        if not tty.startswith("/dev/pts/"):
            continue
        try:
            info = os.stat(tty)
        except OSError:
            continue
        used = max(info.st_atime, info.st_mtime)
        newest = used if newest is None else max(newest, used)
    return newest


def gpu_busy(threshold: float) -> bool | None:
    """True when any GPU is at or above `threshold` % utilisation; None without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    values = []
    for line in out.stdout.decode(errors="replace").splitlines():
        try:
            values.append(float(line.strip()))
        except ValueError:
            continue
    return any(v >= float(threshold) for v in values) if values else None


# -- ending the machine -------------------------------------------------------------------------------------
class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, never followed: the key goes to the URL's own host and nowhere else."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def fill(value: Any, env: dict[str, str]) -> Any:
    """`value` with `${NAME}` / `${NAME:-default}` filled from `env`, through dicts and lists."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: fill(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, env) for v in value]
    return value


def send(method: str, url: str, headers: dict[str, str], body: Any, timeout: float = 30.0) -> tuple[int, str]:
    """One request, no redirects followed (a 3xx comes back as its status)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    for name, value in headers.items():
        request.add_header(name, value)
    request.add_header("User-Agent", f"cloudsd-watchdog/{VERSION}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:  # noqa: S310 - the provider's API
            return response.status, response.read(65536).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536).decode(errors="replace")


def end_machine(config: dict[str, Any], env: dict[str, str], action: str) -> tuple[bool, str]:
    """Stop or terminate this machine with the request the provider gave for `action` (`end_calls`); with
    none (the local engine: no API, no credential scoped to the machine), stop PID 1. Returns (done, detail).
    Done only on the documented answer: a status in `ok_statuses` whose JSON holds every `ok_fields` pair, or
    a status in `gone_statuses`."""
    call = (config.get("end_calls") or {}).get(action)
    if not call:
        try:
            os.kill(1, signal.SIGTERM)
        except OSError as exc:
            return False, f"could not signal PID 1: {exc}"
        return True, "sent SIGTERM to PID 1"
    missing = [name for name in call.get("needs_env") or [] if not env.get(name)]
    if missing:
        return False, "{} missing from {}".format(", ".join(missing), config["env_file"])
    url = fill(call["url"], env)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False, f"refusing to send the key to {parts.scheme}://{parts.hostname or '?'}: not a plain API URL"
    status, text = send(call["method"], url, fill(call.get("headers") or {}, env), fill(call.get("body"), env))
    if status in (call.get("gone_statuses") or []):
        return True, f"the machine is already gone (HTTP {status})"
    if status in (call.get("ok_statuses") or []):
        wanted = fill(call.get("ok_fields") or {}, env)
        try:
            answer = json.loads(text) if wanted else {}
        except ValueError:
            answer = None
        if isinstance(answer, dict) and all(answer.get(k) == v for k, v in wanted.items()):
            return True, f"{action} accepted (HTTP {status})"
        return False, f"{action} answered HTTP {status} without the expected answer: {text[:200]}"
    return False, f"{action} failed (HTTP {status}): {text[:200]}"


# -- the loop -----------------------------------------------------------------------------------------------
class Watchdog:
    def __init__(self, config_path: str, clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.clock = clock
        self.config = load_config(config_path)
        self.config_mtime = os.stat(config_path).st_mtime
        self.started_at = clock()
        self.ending: dict[str, Any] | None = None  # {"action", "reason", "at", "attempts", "next_at", "done_at", "detail"}
        self.last_activity = self.started_at
        self.activity_source = "watchdog start"
        self.idle_deadline: float | None = None

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} cloudsd-watchdog[{os.getpid()}]: {message}\n"
        try:
            os.makedirs(os.path.dirname(self.config["log_file"]), exist_ok=True)
            with open(self.config["log_file"], "a") as handle:
                handle.write(line)
        except OSError:
            sys.stderr.write(line)

    def reload(self) -> None:
        try:
            mtime = os.stat(self.config_path).st_mtime
            if mtime != self.config_mtime:
                self.config = load_config(self.config_path)
                self.config_mtime = mtime
                self.log("config reloaded: {}".format(json.dumps(self.config.get("deadlines"))))
        except (OSError, ValueError) as exc:
            self.log(f"cannot read {self.config_path}: {exc}")

    def observe(self, now: float) -> float | None:
        """Update the last activity; return the idle deadline (None without an idle budget)."""
        config = self.config
        candidates = [(self.last_activity, self.activity_source)]
        ui = ui_activity(config["activity_file"])
        if ui is not None:
            candidates.append((min(ui, now), "web UI request"))
        shell = shell_activity()
        if shell is not None:
            candidates.append((min(shell, now), "shell"))
        if config.get("idle_s") and gpu_busy(config.get("gpu_busy_percent", 10.0)):
            candidates.append((now, "GPU in use"))
        self.last_activity, self.activity_source = max(candidates, key=lambda c: c[0])
        idle_s = config.get("idle_s")
        self.idle_deadline = self.last_activity + float(idle_s) if idle_s else None
        return self.idle_deadline

    def step(self) -> float:
        """One look: end the machine if a budget is reached; return how long to sleep."""
        self.reload()
        now = self.clock()
        idle_deadline = self.observe(now)
        waits = [float(self.config.get("poll_s") or 20.0)]
        for deadline in self.config.get("deadlines") or []:
            if now >= float(deadline["at"]):
                self.trigger("terminate", deadline.get("reason", "budget reached"), now)
            else:
                waits.append(float(deadline["at"]) - now)
        if idle_deadline is not None:
            if now >= idle_deadline:
                self.trigger(self.config.get("idle_action", "stop"), self.config.get("idle_reason", "idle"), now)
            else:
                waits.append(idle_deadline - now)
        if self.ending is not None:
            waits.append(self.act(now))
        self.write_state(now)
        return max(0.05, min(waits))

    def trigger(self, action: str, reason: str, now: float) -> None:
        if self.ending is not None and (self.ending["action"] == "terminate" or action == "stop"):
            return  # already ending at least as hard
        self.ending = {"action": action, "reason": reason, "at": now, "attempts": 0, "next_at": now,
                       "done_at": None, "detail": ""}
        self.log(f"{action}: {reason}")

    def act(self, now: float) -> float:
        ending = self.ending
        assert ending is not None
        if now < ending["next_at"]:
            return ending["next_at"] - now
        ending["attempts"] += 1
        try:
            done, detail = end_machine(self.config, read_env(self.config["env_file"]), ending["action"])
        except Exception as exc:  # the network, a refused connection, a timeout: try again later
            done, detail = False, f"{type(exc).__name__}: {exc}"
        ending["detail"] = detail
        if done:
            ending["done_at"] = now
            ending["next_at"] = now + REISSUE_S
            self.log("{} accepted: {}".format(ending["action"], detail))
        else:
            delay = min(MAX_BACKOFF_S, 2.0 ** (ending["attempts"] - 1))
            ending["next_at"] = now + delay
            self.log(f"{ending['action']} failed (attempt {ending['attempts']}, next in {delay:.0f} s): {detail}")
        return ending["next_at"] - now

    def write_state(self, now: float) -> None:
        state = {
            "version": VERSION, "pid": os.getpid(), "now": now, "started_at": self.started_at,
            "last_activity": self.last_activity, "activity_source": self.activity_source,
            "idle_deadline": self.idle_deadline, "deadlines": self.config.get("deadlines") or [],
            "ending": self.ending,
        }
        try:
            write_json(self.config["state_file"], state)
        except OSError as exc:
            self.log("cannot write {}: {}".format(self.config["state_file"], exc))

    def run(self) -> None:
        config = self.config
        self.log(f"started (version {VERSION}, provider {config.get('provider')}, deadlines "
                 f"{json.dumps(config.get('deadlines'))}, idle {config.get('idle_s')} s, "
                 f"action {config.get('idle_action')})")
        while True:
            try:
                pause = self.step()
            except Exception as exc:  # never die of a surprise: log it and look again
                self.log(f"error: {type(exc).__name__}: {exc}")
                pause = 5.0
            time.sleep(pause)


# -- lock, status, install ----------------------------------------------------------------------------------
def take_lock(path: str) -> IO[str] | None:
    """An open, exclusively locked file, or None when another watchdog holds it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return handle


def status(config_path: str) -> dict[str, Any]:
    config = dict(DEFAULTS)
    try:
        config = load_config(config_path)
    except (OSError, ValueError):
        pass
    state = None
    try:
        with open(config["state_file"]) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        pass
    lock = take_lock(config["lock_file"])
    running = lock is None
    if lock is not None:
        lock.close()
    return {"now": time.time(), "running": running, "state": state,
            "ui_restarts": ui_restarts(config["ui_restarts_file"])}


def ui_restarts(path: str) -> list[float] | None:
    """[count, epoch of the last] from the boot layer's file ("<count> <epoch>"); None when the UI never
    restarted (no file) or the file is not that."""
    try:
        with open(path) as handle:
            count, last = handle.read().split()[:2]
        return [int(count), float(last)]
    except (OSError, ValueError):
        return None


def install(payload: dict[str, Any]) -> None:
    """Put the watchdog and its config in place and start it unless it runs; print what happened as JSON.

    Run by cloudsd in one SSH exec: `python3 -c '…'` with `payload` on stdin ({source, sha256, config,
    config_path, image_path, install_path}). A watchdog that already runs re-reads the new config itself.
    """
    source, digest = payload["source"], payload["sha256"]
    script = payload["install_path"]
    image_path = payload.get("image_path")
    if image_path and _sha256(image_path) == digest:
        script = image_path  # the image carries this very version
    elif _sha256(script) != digest:
        os.makedirs(os.path.dirname(script), exist_ok=True)
        tmp = script + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(source)
        os.chmod(tmp, 0o755)
        os.replace(tmp, script)
    config_path = payload["config_path"]
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    write_json(config_path, payload["config"])
    os.chmod(config_path, 0o600)
    config = load_config(config_path)
    lock = take_lock(config["lock_file"])
    started = False
    pid = None
    if lock is not None:
        lock.close()
        os.makedirs(os.path.dirname(config["log_file"]), exist_ok=True)
        with open(config["log_file"], "a") as log, open(os.devnull) as devnull:
            process = subprocess.Popen([sys.executable, script, "--config", config_path], stdin=devnull, stdout=log,
                                       stderr=log, start_new_session=True, close_fds=True, cwd="/")
        pid, started = process.pid, True
        for _ in range(100):  # up to 10 s for it to take the lock and write its first state
            time.sleep(0.1)
            if process.poll() is not None or (take_lock_probe(config["lock_file"])
                                              and _state_pid(config["state_file"]) == pid):
                break
    result = status(config_path)
    result.update({"script": script, "started": started, "pid": pid, "python": sys.version.split()[0]})
    sys.stdout.write(json.dumps(result) + "\n")


def take_lock_probe(path: str) -> bool:
    lock = take_lock(path)
    if lock is None:
        return True
    lock.close()
    return False


def _state_pid(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(json.load(handle).get("pid"))
    except (OSError, ValueError, TypeError):
        return None


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def main(argv: list[str]) -> int:
    config_path = DEFAULT_CONFIG
    if "--config" in argv:
        config_path = argv[argv.index("--config") + 1]
    if "--status" in argv:
        sys.stdout.write(json.dumps(status(config_path)) + "\n")
        return 0
    config = load_config(config_path)
    lock = take_lock(config["lock_file"])
    if lock is None:
        sys.stderr.write("cloudsd-watchdog: another watchdog already runs on this machine\n")
        return 0
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watchdog = Watchdog(config_path)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    watchdog.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
