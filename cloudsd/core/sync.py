"""Sync for a machine in the ledger: which machine, connect, push models or pull outputs, record it.

`down` calls `save_outputs` before destroying; `up` sizes the disk with `disk_gb_for` and pushes with `push_to`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloudsd import paths
from cloudsd.config import Settings
from cloudsd.core.access import open_master, reconnect_record
from cloudsd.errors import CloudsdError, MachineNotFound, SyncError
from cloudsd.ledger import EventKind, Ledger, MachineRecord, Status
from cloudsd.ssh import Connection
from cloudsd.sync.agent import Link
from cloudsd.sync.kinds import is_model_file
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import PushSummary, push_models
from cloudsd.sync.outputs import PullSummary, pull_outputs
from cloudsd.sync.progress import NullProgress, Progress
from cloudsd.ui import profile

CONNECT_DEADLINE_S = 30.0
# What a model of each kind takes when nothing says its size (fp16 SD 1.x checkpoint, typical LoRA, …).
KIND_BYTES = {"checkpoint": 4_300_000_000, "lora": 200_000_000, "vae": 335_000_000, "embedding": 1_000_000,
              "controlnet": 1_450_000_000, "upscaler": 70_000_000}
HEADROOM_GB = 20  # the web UI's caches, outputs, a model being replaced


def outputs_root(settings: Settings) -> Path:
    """The folder that holds each machine's outputs folder: the `outputs_dir` setting, ~ expanded."""
    return paths.expand(settings["outputs_dir"], f"outputs_dir ({settings.source('outputs_dir')})").absolute()


def default_outputs_dir(settings: Settings, name: str) -> Path:
    """outputs_dir/NAME (default ~/cloudsd-outputs/NAME)."""
    return outputs_root(settings) / name


def choose_machine(ledger: Ledger, args: list[str]) -> tuple[str, list[str]]:
    """(machine name, the rest of `args`): the first argument when it names a running machine, else the only
    running machine. Several running and none named, or none running: CloudsdError saying what to do."""
    active = [r for r in ledger.machines(active_only=True)]
    names = sorted({r.name for r in active})
    if args and args[0] in names:
        return args[0], args[1:]
    if args and not Path(args[0]).exists() and ":" not in args[0]:
        record = ledger.find(args[0])
        if record is not None:
            raise CloudsdError(f"machine {args[0]!r} is {record.status}.", hint="`cloudsd status` lists the machines.")
    if len(names) == 1:
        return names[0], args
    if not names:
        raise MachineNotFound("no machine is running.", hint="Start one with `cloudsd up`.")
    raise CloudsdError(f"{len(names)} machines are running ({', '.join(names)}): name one.",
                       hint=f"For example `cloudsd sync models {names[0]} PATH`.")


def running_record(ledger: Ledger, name: str) -> MachineRecord:
    record = ledger.get(name)
    if record.status is not Status.RUNNING or not record.ssh_host:
        raise CloudsdError(f"machine {name!r} is {record.status}, not running.",
                           hint="`cloudsd status` shows its state; `cloudsd up` starts a new one.")
    return record


@contextmanager
def sync_link(ledger: Ledger, record: MachineRecord) -> Iterator[Link]:
    """What a sync command runs over: the machine's OpenSSH master when the system `ssh` can be used (it
    stays up for the next command, which then skips connect and auth), else a paramiko connection of its own."""
    master = open_master(record, timeout_s=CONNECT_DEADLINE_S)
    if master is not None:
        yield master
        return
    with reconnect_record(record, deadline_s=CONNECT_DEADLINE_S, ledger=ledger) as connection:
        yield connection


def sync_models(ledger: Ledger, name: str, requests: list[ModelRequest], progress: Progress) -> PushSummary:
    record = running_record(ledger, name)
    with sync_link(ledger, record) as link:
        return push_to(ledger, record, link, requests, progress)


def push_to(ledger: Ledger, record: MachineRecord, link: Link, requests: list[ModelRequest],
            progress: Progress) -> PushSummary:
    """Push models over an open link and record what is on the machine (`models-synced`). Over a paramiko
    connection (`up`), the data goes over the machine's OpenSSH master when one can be had."""
    bulk = open_master(record) if isinstance(link, Connection) and requests else None
    summary = push_models(link, profile(record.ui or "a1111"), requests, progress=progress, bulk=bulk,
                          present=models_on_machine(ledger, record))
    fetched = sum(r.size or 0 for r in summary.results if r.outcome == "fetched")  # the machine downloaded these
    ledger.event(record.name, EventKind.MODELS_SYNCED,
                 {"results": [[r.remote, r.outcome, r.short_hash] for r in summary.results],
                  "bytes_in": summary.bytes_sent + fetched})
    return summary


def models_on_machine(ledger: Ledger, record: MachineRecord) -> set[str] | None:
    """The paths on the machine that this session's earlier syncs put there or found there (a hint for how
    many streams to start ahead; the machine's own index decides what is sent). None when a volume is mounted:
    it may hold the models of any earlier evening."""
    if any(volume.attached_to == record.name for volume in ledger.volumes(active_only=True)):
        return None
    return {remote for remote, _ in _synced(ledger, record.name)}


def synced_hashes(ledger: Ledger, name: str) -> dict[str, str]:
    """{path on the machine: short sha256} of every model this session's syncs put on the machine or found
    there, the newest for a path that was synced more than once."""
    return {remote: short for remote, short in _synced(ledger, name) if short}


def _synced(ledger: Ledger, name: str) -> Iterator[tuple[str, str]]:
    """(path on the machine, short sha256 or "") of each model that this session's syncs left on the machine,
    oldest first (`models-synced` events: sent, resumed, present or fetched)."""
    _, events = ledger.session(name)
    for _, _, kind, data in events:
        if kind == EventKind.MODELS_SYNCED:
            for entry in data.get("results", []):
                if isinstance(entry, list) and len(entry) >= 2 and entry[1] in ("sent", "resumed", "present", "fetched"):
                    short = entry[2] if len(entry) >= 3 else None
                    yield str(entry[0]), str(short or "")


def sync_outputs(ledger: Ledger, name: str, dest: Path, progress: Progress) -> PullSummary:
    return pull_record_outputs(ledger, running_record(ledger, name), dest, progress)


def pull_record_outputs(ledger: Ledger, record: MachineRecord, dest: Path, progress: Progress) -> PullSummary:
    with sync_link(ledger, record) as link:
        summary = pull_outputs(link, profile(record.ui or "a1111"), dest, progress=progress)
    ledger.event(record.name, EventKind.OUTPUTS_PULLED, {"dest": str(summary.dest), "pulled": len(summary.pulled),
                                                 "problems": summary.problems, "bytes_out": summary.bytes_pulled})
    return summary


def save_outputs(ledger: Ledger, record: MachineRecord, dest: Path) -> PullSummary:
    """Pull and verify every output before the machine is destroyed; SyncError if any could not be saved."""
    try:
        summary = pull_record_outputs(ledger, record, dest, NullProgress())
    except CloudsdError as exc:
        raise SyncError(str(exc)) from None
    if summary.problems:
        error = SyncError(f"{len(summary.problems)} output(s) could not be saved: {'; '.join(summary.problems[:3])}")
        error.problems = list(summary.problems)
        raise error
    return summary


def disk_gb_for(requests: list[ModelRequest]) -> tuple[int, list[str]]:
    """Disk (GB) for a machine that will hold these models, plus headroom; and notes on guessed sizes."""
    total, notes = 0, []
    for request in requests:
        if request.is_ref:
            size = request.size
            if size is None:
                size = KIND_BYTES.get(request.kind or "checkpoint", KIND_BYTES["checkpoint"])
                notes.append(f"{request.label}: size unknown before renting, counted as {size / 1e9:.1f} GB")
            total += size
            continue
        path = paths.expand(request.source, "model path")
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            for dirpath, _, filenames in os.walk(path):
                total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames if is_model_file(f))
    return math.ceil(total * 1.1 / 1e9) + HEADROOM_GB, notes
