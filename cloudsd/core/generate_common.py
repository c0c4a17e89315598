"""What the runner and both UI backends share: jobs, the events they report, errors, file writing, and the
one SSH exec that finds the pictures' files on the machine."""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cloudsd.errors import CloudsdError
from cloudsd.generate.request import GenerateRequest, Picture
from cloudsd.ssh import Connection

OOM = re.compile(r"out of memory|OutOfMemory", re.IGNORECASE)


class GenerateError(CloudsdError):
    """The UI refused or failed a job."""

    exit_code = 12


class Events(Protocol):
    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None: ...

    def picture(self, picture: Picture) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class Job:
    request: GenerateRequest
    number: int  # 1-based across the run
    seed: int
    batch_size: int


class Silent:
    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None:
        pass

    def picture(self, picture: Picture) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def today() -> str:
    return datetime.now().strftime("%Y-%m-%d")


def write_new(folder: Path, stem: str, data: bytes) -> Path:
    """Write `data` as folder/stem.png, or stem (1).png, … : never over an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(10000):
        path = folder / (f"{stem}.png" if n == 0 else f"{stem} ({n}).png")
        try:
            with open(path, "xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue
    raise CloudsdError(f"no free file name for {stem} in {folder}.")


def ui_error(what: str, text: str) -> GenerateError:
    if OOM.search(text):
        return GenerateError(f"the GPU ran out of memory ({what}: {text[:200]}).",
                             hint="Lower --size or --batch-size, drop --hires or lower it, or rent a GPU with "
                                  "more VRAM.")
    return GenerateError(f"the web UI failed the {what}: {text}",
                         hint="Check the names and values you gave; `cloudsd ssh NAME` shows the UI's log.")


# One JSON query a line on stdin, one JSON answer a line on stdout: {name under root: [size, mtime_ns]} of the
# named files (`rels`) and of the files under `folders` newer than `age_s` whose name matches `pattern`.
STAT_SCRIPT = r"""
import json, os, re, sys, time
def stat(d):
    root, out = d["root"], {}
    for rel in d.get("rels") or []:
        try:
            st = os.stat(os.path.join(root, rel))
            out[rel] = [st.st_size, st.st_mtime_ns]
        except OSError:
            pass
    since = time.time() - d.get("age_s", 0)
    pattern = re.compile(d.get("pattern") or "^$")
    for folder in d.get("folders") or []:
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                if st.st_mtime >= since and pattern.match(name):
                    out[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
    return out
for line in sys.stdin:
    sys.stdout.write(json.dumps(stat(json.loads(line))) + "\n")
    sys.stdout.flush()
"""
STAT_COMMAND = "python3 -c " + shlex.quote(STAT_SCRIPT)

Stat = Callable[[dict[str, Any]], dict[str, tuple[int, int]]]


def _parse(line: str) -> dict[str, tuple[int, int]]:
    return {rel: (int(v[0]), int(v[1])) for rel, v in json.loads(line).items()}


def stat_remote(connection: Connection, payload: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """One query as a command of its own (a python3 start on the machine, ~0.1-0.3 s)."""
    code, out, err = connection.run(STAT_COMMAND, timeout_s=60, stdin=(json.dumps(payload) + "\n").encode())
    if code != 0:
        raise CloudsdError(f"exit {code}: {err.strip()[-200:]}")
    return _parse(out.strip().splitlines()[-1])


class RemoteStat:
    """The stat script started on the machine while a run's first job runs (`start`, from a thread of its
    own): its python3 start-up (~0.2 s on a busy machine, more than the query) overlaps the jobs instead of
    following the last picture, and the lookup at the end is one line each way. Not started, not running by
    then, or dead, the query runs as a command of its own (`stat_remote`)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._channel: Any = None
        self._out: Any = None
        self._opener = threading.Thread(target=self._open, name="generate-stat", daemon=True)

    def start(self) -> None:
        self._opener.start()

    def _open(self) -> None:
        try:
            channel = self.connection.open_process(STAT_COMMAND)
            self._out, self._channel = channel.makefile("rb"), channel
        except CloudsdError:
            pass  # the query falls back to a command of its own, which reports the error

    def __call__(self, payload: dict[str, Any], timeout_s: float = 60.0) -> dict[str, tuple[int, int]]:
        if self._opener.ident is not None:
            self._opener.join(timeout_s)
        channel = self._channel
        if channel is not None:
            try:
                channel.settimeout(timeout_s)
                channel.sendall((json.dumps(payload) + "\n").encode())
                line = self._out.readline()
                if line.endswith(b"\n"):
                    return _parse(line.decode())
            except (OSError, EOFError, ValueError):
                pass
            self.close()
        return stat_remote(self.connection, payload)

    def close(self) -> None:
        if self._opener.ident is not None:
            self._opener.join()
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
