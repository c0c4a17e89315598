"""Install the web UI on the first boot of a stock CUDA + PyTorch image, when cloudsd's prebuilt image is not
used (`image_source`: install, or auto when the prebuilt one cannot be pulled).

The machine runs a stock image the providers keep cached (RunPod's `runpod/pytorch`; see STOCK_IMAGES), with
the provider's own sshd. Once SSH answers, cloudsd sends the flavor's install script, its pins and the boot
layer (`setup_payload`: the same files the flavor's Dockerfile runs) to /workspace/cloudsd/setup and starts
images/ui/install-on-boot there, detached: the script installs the UI into /workspace/cloudsd/<flavor> (the
volume, so a stopped and started machine keeps it), step by step with markers, then starts the UI through
the boot layer. `wait_for_install` reads the script's progress file over SSH until the last step is done;
an install that stopped midway (the machine restarted, the process was killed) is started again and goes on
from its last finished step. A second boot finds every step done and only starts the UI.

Core code: no click, no rich; `parse_progress` is pure.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloudsd.errors import ProvisioningError

INSTALL_BASE = "/workspace/cloudsd"
SETUP_DIR = f"{INSTALL_BASE}/setup"
# RunPod's PyTorch images: cached on RunPod's hosts (so a machine starts in seconds), public on Docker Hub (so
# Vast.ai hosts pull them too), with Python 3.11, git and an sshd that RunPod and Vast.ai start with the
# machine's key. The CUDA in the tag is the floor the host's driver must run: 12.4 (driver >= 550), or 12.8
# (driver >= 570) for Blackwell GPUs. The UI's own PyTorch, pinned in images/<flavor>/torch-cu*.txt, goes
# into its venv; the image's PyTorch is not used.
STOCK_IMAGES = {
    "12.4": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
    "12.8": "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04",
}
POLL_S = 5.0
MAX_RESTARTS = 2
START_GRACE_S = 15.0
DONE_EVENTS = ("done", "skip")


class Runner(Protocol):
    """What the install needs of an SSH connection (cloudsd.ssh.Connection has it)."""

    def run(self, command: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]: ...


def install_root(flavor: str) -> str:
    return f"{INSTALL_BASE}/{flavor}"


def stock_image(cuda: str) -> str:
    return STOCK_IMAGES.get(cuda) or STOCK_IMAGES["12.4"]


def setup_payload(flavor: str, images: Path) -> bytes:
    """A gzipped tar of what the machine needs: <flavor>/ (install.sh and its pins), ui/ (the step runner, the
    start script, install-on-boot) and boot/ (the boot layer), from images/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder in (flavor, "ui", "boot"):
            for path in sorted((images / folder).rglob("*")):
                if path.is_file() and path.name != "Dockerfile" and "__pycache__" not in path.parts:
                    tar.add(path, arcname=path.relative_to(images).as_posix(), recursive=False)
    return buffer.getvalue()


def start_command(flavor: str, cuda: str | None, env: dict[str, str] | None = None) -> str:
    """The shell command that unpacks the payload (on stdin) and starts the install, detached, unless one runs.
    No `cuda`: the one the machine's earlier install was for."""
    root = install_root(flavor)
    values = {**({"CUDA": cuda} if cuda else {}), **(env or {})}
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(values.items()))
    return (f"set -e; mkdir -p {SETUP_DIR} {root}/install-state; tar -xzf - -C {SETUP_DIR}; "
            f"if flock -n {root}/install-state/lock true; then : >{root}/install-state/progress; "
            f"{assigns} setsid nohup bash {SETUP_DIR}/ui/install-on-boot {flavor} "
            f">{root}/install.log 2>&1 </dev/null & fi")


def status_command(flavor: str) -> str:
    state = f"{install_root(flavor)}/install-state"
    return (f"tail -n 1 {state}/progress 2>/dev/null; echo ---; "
            f"step=$(tail -n 1 {state}/progress 2>/dev/null | cut -d' ' -f3); "
            f"[ -z \"$step\" ] || tail -n 1 {state}/$step.log 2>/dev/null; echo ---; "
            f"if [ ! -e {state}/lock ] || flock -n {state}/lock true; then echo idle; else echo running; fi")


@dataclass(frozen=True)
class InstallProgress:
    index: int  # the step's number, 1-based; 0 before the first
    total: int
    step: str
    event: str  # start | done | skip | failed | "" (nothing yet)
    detail: str  # the last line the step wrote
    running: bool  # an install process holds the lock

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.index == self.total and self.event in DONE_EVENTS

    @property
    def failed(self) -> bool:
        return self.event == "failed"

    @property
    def interrupted(self) -> bool:
        """It stopped midway with no process left to finish it (killed, or the machine restarted)."""
        return not self.running and not self.finished and not self.failed

    def describe(self) -> str:
        if not self.event:
            return "starting" if self.running else "not started"
        detail = f": {self.detail}" if self.detail and self.event == "start" else ""
        return f"step {self.index}/{self.total} {self.step} {self.event}{detail}"


def parse_progress(output: str) -> InstallProgress:
    """`status_command`'s output -> InstallProgress. The progress line is `<epoch> <n>/<total> <step> <event>`."""
    parts = (output.split("---\n") + ["", ""])[:3]
    last, detail, lock = (p.strip() for p in parts)
    running = lock == "running"
    words = last.split()
    if len(words) < 4 or "/" not in words[1]:
        return InstallProgress(0, 0, "", "", "", running)
    index, _, total = words[1].partition("/")
    try:
        n, of = int(index), int(total)
    except ValueError:
        return InstallProgress(0, 0, "", "", "", running)
    return InstallProgress(n, of, words[2], words[3], " ".join(detail.split())[:160], running)


def installed_here(connection: Runner, flavor: str) -> bool:
    """Whether this machine's UI was installed on boot (an install ran here, finished or not)."""
    return connection.run(f"test -d {install_root(flavor)}/install-state", timeout_s=30)[0] == 0


def start_install(connection: Runner, flavor: str, cuda: str | None, images: Path,
                  env: dict[str, str] | None = None) -> None:
    code, _out, err = connection.run(start_command(flavor, cuda, env), timeout_s=120,
                                     stdin=setup_payload(flavor, images))
    if code != 0:
        raise ProvisioningError(f"could not start installing {flavor} on the machine: {' '.join(err.split())[:200]}",
                                hint="The image needs bash, tar, flock and a writable /workspace.")


def wait_for_install(connection: Runner, flavor: str, cuda: str | None, images: Path, *, deadline_s: float,
                     on_progress: Callable[[str], None], env: dict[str, str] | None = None,
                     poll_s: float = POLL_S, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> InstallProgress:
    """Poll the install's progress until its last step is done. An install found stopped midway is started
    again (it resumes), at most MAX_RESTARTS times; a failed step or the deadline raises ProvisioningError."""
    started = last_start = clock()
    restarts = 0
    log = f"{install_root(flavor)}/install.log"
    shown = ""
    while True:
        code, out, err = connection.run(status_command(flavor), timeout_s=30)
        if code != 0:
            raise ProvisioningError(f"could not read the install's progress: {' '.join(err.split())[:200]}")
        progress = parse_progress(out)
        if progress.describe() != shown:
            shown = progress.describe()
            on_progress(shown)
        if progress.finished:
            return progress
        if progress.failed:
            raise ProvisioningError(
                f"installing {flavor} on the machine failed at step {progress.step}: {progress.detail or 'see its log'}",
                hint=f"Its log is {log} on the machine; with `image_source: prebuilt` cloudsd uses its published image.")
        if progress.interrupted and clock() - last_start > START_GRACE_S:  # a fresh start may not hold the lock yet
            if restarts >= MAX_RESTARTS:
                raise ProvisioningError(f"installing {flavor} stopped at step {progress.step or 1} and did not go on "
                                        f"after {restarts} restarts.", hint=f"Its log is {log} on the machine.")
            restarts += 1
            on_progress(f"resuming the install (from step {max(progress.index, 1)})")
            start_install(connection, flavor, cuda, images, env)
            last_start = clock()
        if clock() - started > deadline_s:
            raise ProvisioningError(
                f"installing {flavor} was not done after {deadline_s:.0f} s ({progress.describe()}).",
                hint="Raise timeouts.install (`cloudsd config set timeouts.install 2h`); the install resumes where "
                     "it stopped on the next start of the machine.")
        sleep(poll_s)
