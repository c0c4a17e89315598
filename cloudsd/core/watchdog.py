"""The on-machine watchdog, seen from the laptop: its config, putting it on a machine over SSH, reading it.

The watchdog itself (`cloudsd/remote/watchdog.py`) is stdlib-only Python that cloudsd copies over SSH when
the image does not already carry the same version at `IMAGE_PATH`, so any image with sshd and python3 works.

Clocks: the laptop measures the machine's clock offset (machine - laptop, from the midpoint of one round
trip) before every install and every reading, hands the watchdog deadlines on the machine's clock, and turns
every time the watchdog reports back into the laptop's clock. The ledger only ever holds laptop times.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudsd.core.budget import Budget, Deadline, idle_reason
from cloudsd.core.cost import clock_offset, to_laptop_time
from cloudsd.errors import CloudsdError, SSHError

if TYPE_CHECKING:
    from cloudsd.ssh import Connection  # the type only: reading budgets needs no SSH library

IMAGE_PATH = "/opt/cloudsd/watchdog/watchdog.py"  # where an image may carry it
INSTALL_PATH = "/var/lib/cloudsd/watchdog.py"  # where cloudsd puts it otherwise
CONFIG_PATH = "/etc/cloudsd/watchdog.json"
LOG_PATH = "/var/log/cloudsd/watchdog.log"
# One exec: the payload (source, config) arrives on stdin; `install` writes what is missing and starts the
# watchdog in its own session unless one already runs (then that one re-reads the config).
BOOTSTRAP = ("python3 -c 'import sys,json;d=json.load(sys.stdin);g={\"__name__\":\"cloudsd_install\"};"
             "exec(compile(d[\"source\"],\"watchdog.py\",\"exec\"),g);g[\"install\"](d)'")
CLOCK = "python3 -c 'import time; print(repr(time.time()))'"


@dataclass(frozen=True)
class WatchdogSettings:
    poll_s: float = 20.0
    gpu_busy_percent: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> WatchdogSettings:
        return cls(poll_s=settings["watchdog.poll"], gpu_busy_percent=settings["watchdog.gpu_busy_percent"])


@dataclass(frozen=True)
class Reading:
    """What the watchdog reports, with every time on the laptop's clock."""

    offset_s: float  # machine clock - laptop clock
    running: bool
    last_activity_at: float | None
    activity_source: str | None
    idle_deadline_at: float | None
    ending: dict[str, Any] | None  # {"action", "reason", "at", …} once it decided to end the machine
    script: str | None = None
    reported_at: float | None = None  # when the watchdog last wrote its state (it does so every poll)
    ui_restarts: int | None = None  # how often the boot layer started a crashed web UI again (None: never)
    ui_restarted_at: float | None = None  # the last of those restarts

    def to_event(self) -> dict[str, Any]:
        return {"offset_s": round(self.offset_s, 3), "running": self.running,
                "last_activity_at": self.last_activity_at, "activity_source": self.activity_source,
                "idle_deadline_at": self.idle_deadline_at, "ending": self.ending, "script": self.script,
                "reported_at": self.reported_at}


def source() -> str:
    # importlib.resources pulls in tempfile and shutil: loaded here, only to install, so that `status`
    # (which reads budgets through this module) starts without them.
    from importlib import resources

    return resources.files("cloudsd.remote").joinpath("watchdog.py").read_text()


def machine_config(provider: str, budget: Budget, deadlines: list[Deadline], offset_s: float,
                   settings: WatchdogSettings, *, end_calls: dict[str, Any] | None) -> dict[str, Any]:
    """The watchdog's JSON config: deadlines moved onto the machine's clock, and the provider's own requests
    for ending the machine from inside (None: the watchdog stops PID 1). Holds no key of any kind."""
    return {
        "provider": provider,
        "end_calls": end_calls or {},
        "deadlines": [{"at": d.at + offset_s, "reason": d.reason} for d in deadlines],
        "idle_s": budget.idle_s,
        "idle_action": budget.idle_action,
        "idle_reason": idle_reason(budget.idle_s) if budget.idle_s else "idle",
        "poll_s": settings.poll_s,
        "gpu_busy_percent": settings.gpu_busy_percent,
        "log_file": LOG_PATH,
    }


def measure_offset(connection: Connection) -> tuple[float, float]:
    """(machine clock - laptop clock, round trip s), from one `time.time()` on the machine."""
    sent = time.time()
    code, out, err = connection.run(CLOCK, timeout_s=30)
    received = time.time()
    if code != 0:
        raise _no_python(code, err)
    try:
        machine_now = float(out.strip())
    except ValueError:
        raise CloudsdError(f"the machine's clock could not be read ({out.strip()[:80]!r}).") from None
    return clock_offset(machine_now, sent, received), received - sent


def _no_python(code: int, err: str) -> CloudsdError:
    if code == 127 or "not found" in err:
        return CloudsdError(
            "the machine has no python3, so the watchdog that enforces budgets without the laptop cannot run.",
            hint="Use an image with python3 (every cloudsd image has it), or start without --max-time, "
                 "--max-spend and --idle-stop.",
        )
    return CloudsdError(f"the watchdog could not be set up on the machine (exit {code}): {err.strip()[-300:]}")


def install(connection: Connection, config: dict[str, Any]) -> Reading:
    """Put the watchdog and `config` on the machine and make sure it runs; idempotent. `config` deadlines are
    already on the machine's clock (see `machine_config`)."""
    text = source()
    payload = {"source": text, "sha256": hashlib.sha256(text.encode()).hexdigest(), "config": config,
               "config_path": CONFIG_PATH, "image_path": IMAGE_PATH, "install_path": INSTALL_PATH}
    sent = time.time()
    code, out, err = connection.run(BOOTSTRAP, timeout_s=60, stdin=json.dumps(payload).encode())
    received = time.time()
    if code != 0:
        raise _no_python(code, err)
    reading = _parse(out, sent, received)
    if not reading.running:
        raise CloudsdError("the watchdog did not start on the machine.",
                           hint=f"See {LOG_PATH} there (`cloudsd ssh NAME -- tail {LOG_PATH}`).")
    return reading


def read(connection: Connection, script: str) -> Reading:
    """The watchdog's current state (one exec); SSHError when the machine does not answer."""
    sent = time.time()
    code, out, err = connection.run(f"python3 {shlex.quote(script)} --status --config {CONFIG_PATH}", timeout_s=20)
    received = time.time()
    if code != 0:
        raise SSHError(f"the watchdog's state could not be read (exit {code}): {err.strip()[-200:]}")
    return _parse(out, sent, received, script)


def _parse(out: str, sent: float, received: float, script: str | None = None) -> Reading:
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CloudsdError(f"the watchdog answered something unexpected: {out.strip()[-200:]!r}") from None
    offset = clock_offset(float(data["now"]), sent, received)
    state = data.get("state") or {}

    def laptop(value: Any) -> float | None:
        return None if value is None else to_laptop_time(float(value), offset)

    restarts = data.get("ui_restarts")  # [count, machine epoch]; absent from a watchdog older than this cloudsd
    if not (isinstance(restarts, list) and len(restarts) == 2):
        restarts = [None, None]
    ending = state.get("ending")
    if isinstance(ending, dict):
        ending = {**ending, "at": laptop(ending.get("at")), "done_at": laptop(ending.get("done_at"))}
        ending.pop("next_at", None)
    return Reading(
        offset_s=offset, running=bool(data.get("running")), last_activity_at=laptop(state.get("last_activity")),
        activity_source=state.get("activity_source"), idle_deadline_at=laptop(state.get("idle_deadline")),
        ending=ending if isinstance(ending, dict) else None, script=data.get("script") or script,
        reported_at=laptop(state.get("now")),
        ui_restarts=None if restarts[0] is None else int(restarts[0]), ui_restarted_at=laptop(restarts[1]),
    )
