"""What the runner and both UI backends share: jobs, the events they report, errors, file writing, and the
one SSH exec that finds the pictures' files on the machine."""

from __future__ import annotations

import json
import re
import shlex
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


STAT_SCRIPT = r"""
import json, os, re, sys, time
d = json.load(sys.stdin)
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
print(json.dumps(out))
"""


def stat_remote(connection: Connection, payload: dict[str, Any]) -> dict[str, tuple[int, int]]:
    code, out, err = connection.run("python3 -c " + shlex.quote(STAT_SCRIPT), timeout_s=60,
                                    stdin=json.dumps(payload).encode())
    if code != 0:
        raise CloudsdError(f"exit {code}: {err.strip()[-200:]}")
    data = json.loads(out.strip().splitlines()[-1])
    return {rel: (int(v[0]), int(v[1])) for rel, v in data.items()}
