"""`generate`: pictures from the terminal through the machine's own web UI API, over cloudsd's SSH tunnel.

Rules:
- Every name (checkpoint, LoRA, sampler, scheduler, upscaler) is checked against the machine before
  anything runs; an unknown one is refused with the closest names the machine has.
- Jobs of `batch_size` pictures run one after another; each picture is written into DEST as soon as its
  job finishes, with the UI's own generation parameters in the PNG. The UI saves it on the machine too;
  at the end a script on the machine (started with the run, so its start-up is not on the path) finds those
  files and they are noted in DEST's pulled-index, so `sync outputs` and `down` never fetch them again.
- Ctrl-C interrupts the job on the machine (A1111 `/sdapi/v1/interrupt`; ComfyUI `/interrupt` plus the
  pending prompts deleted from its queue), keeps every picture that finished, and raises `Interrupted`.
- A time or spend budget that would end the machine before the run is done refuses the run up front,
  estimated from earlier runs on the same machine (seconds per sampling step).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cloudsd.core.access import Session, open_tunnel, reconnect_record, wait_for_ui
from cloudsd.core.budget import deadlines
from cloudsd.core.cost import session_cost
from cloudsd.core.generate_a1111 import A1111Backend
from cloudsd.core.generate_comfy import ComfyBackend
from cloudsd.core.generate_common import Events, GenerateError, Job, RemoteStat, Stat
from cloudsd.core.guard import plan_of
from cloudsd.core.machines import Providers, refresh_record
from cloudsd.core.sync import synced_hashes
from cloudsd.errors import BudgetError, CloudsdError, SSHError
from cloudsd.generate.request import MAX_SEED, GenerateRequest, Picture
from cloudsd.ledger import EventKind, Ledger, MachineRecord, Status
from cloudsd.ssh import Connection
from cloudsd.ui import UIProfile, profile

__all__ = ["GenerateError", "Interrupted", "Job", "RunResult", "check_budget", "open_session", "plan_jobs", "run"]


class Interrupted(CloudsdError):
    """Ctrl-C during a run: the job on the machine was interrupted; `pictures` finished before it."""

    exit_code = 130

    def __init__(self, pictures: list[Picture]) -> None:
        super().__init__(f"interrupted; kept {len(pictures)} finished picture(s).")
        self.pictures = pictures


@dataclass
class RunResult:
    pictures: list[Picture] = field(default_factory=list)
    seconds: float = 0.0
    recorded: int = 0  # noted in DEST's pulled-index


def plan_jobs(requests: list[GenerateRequest], rng: random.Random | None = None) -> list[Job]:
    """Each request split into jobs of `batch_size`; a request without a seed gets a random one. Seeds run
    on from job to job (A1111 gives picture i of a batch seed+i, so a job starts where the last one ended)."""
    rng = rng or random.Random()
    jobs: list[Job] = []
    for request in requests:
        seed = request.seed if request.seed is not None else rng.randrange(MAX_SEED)
        for size in request.batches():
            jobs.append(Job(request, len(jobs) + 1, seed % (MAX_SEED + 1), size))
            seed += size
    return jobs


# -- budget ------------------------------------------------------------------------------------------------
def step_seconds(ledger: Ledger, name: str) -> float | None:
    """Seconds per sampling step in earlier runs on this machine (None: no run yet)."""
    _, events = ledger.session(name)
    found = [(d.get("seconds", 0.0), d.get("steps", 0)) for _, _, kind, d in events if kind == EventKind.GENERATED]
    seconds, steps = sum(s for s, _ in found), sum(n for _, n in found)
    return seconds / steps if steps else None


def total_steps(jobs: list[Job]) -> int:
    steps = 0
    for job in jobs:
        r = job.request
        per = r.steps if not r.init_image else max(1, int(r.steps * r.denoise_value))
        if r.hires_scale and not r.init_image:
            per += int((r.hires_steps or r.steps) * (r.hires_scale ** 2))
        steps += per * job.batch_size
    return steps


def check_budget(ledger: Ledger, record: MachineRecord, jobs: list[Job], now: float | None = None) -> str | None:
    """Refuse a run that would outlast the machine's time or spend budget; a note on what is known, or None."""
    now = time.time() if now is None else now
    _, events = ledger.session(record.name)
    plan = plan_of(events)
    if plan is None or (plan.budget.max_time_s is None and plan.budget.max_spend_usd is None):
        return None
    cost = session_cost(record, events, now)
    started = plan.time_from or cost.started_at or now
    found = deadlines(plan.budget, started_at=started, now=now, spent_usd=cost.cost_usd,
                      price_per_hour=record.price_per_hour)
    if not found:
        return None
    left = found[0].at - now
    per_step = step_seconds(ledger, record.name)
    need = per_step * total_steps(jobs) if per_step is not None else None
    hint = (f"Make fewer pictures (--count), or give the machine more: `cloudsd budget {record.name} "
            f"--max-time …` or `--max-spend …`.")
    if left <= 0:
        raise BudgetError(f"the machine's {found[0].reason.replace(' reached', '')} is used up; nothing was "
                          "generated.", hint=hint)
    if need is not None and need > left:
        raise BudgetError(f"this run needs about {need:.0f} s (from earlier runs here) but the machine ends in "
                          f"{left:.0f} s ({found[0].reason}); nothing was generated.", hint=hint)
    if left < 3600:
        return f"the machine's budget ends in {left / 60:.0f} min ({found[0].reason.replace(' reached', '')})"
    return None


# -- running -----------------------------------------------------------------------------------------------
def _check_running(record: MachineRecord) -> None:
    if record.status is Status.STOPPED:
        raise CloudsdError(f"machine {record.name!r} is stopped.", hint=f"Start it with `cloudsd start {record.name}`.")
    if record.status is not Status.RUNNING:
        raise CloudsdError(f"machine {record.name!r} is {record.status}.", hint="`cloudsd status` shows its state.")


def open_session(ledger: Ledger, providers: Providers, name: str, *, deadline_s: float = 20.0) -> Session:
    """SSH and a private tunnel (any free local port) to the UI of a running machine; the machine's own
    tunnel port in the ledger stays as it is."""
    record = ledger.get(name)
    _check_running(record)
    ui = profile(record.ui or "a1111")
    try:
        # SSH first, the provider only when that fails: a `generate` pays for no provider call (nor for
        # importing its client) when the machine answers.
        connection = reconnect_record(record, deadline_s=deadline_s, ledger=ledger)
    except SSHError:
        _check_running(refresh_record(ledger, providers, record))  # stopped or gone meanwhile (its watchdog)?
        raise
    try:
        forward = open_tunnel(record, connection, 0)
        wait_for_ui(forward.local_port, ui, deadline_s=deadline_s)
    except BaseException:
        connection.close()
        raise
    return Session(record, connection, forward, ui)


class Backend(Protocol):
    def prepare(self, requests: list[GenerateRequest], events: Events) -> None: ...

    def run(self, job: Job, on_progress: Callable[[float, float | None, str], None],
            next_job: Job | None = None) -> list[Picture]:
        """Run `job` and return its pictures; `next_job` may be queued on the machine meanwhile."""
        ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...

    def remote_names(self, stat: Stat, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        """Set each picture's `remote_rel` where found; {name on the machine: (size, mtime_ns)}."""
        ...


def run(requests: list[GenerateRequest], jobs: list[Job], ui: UIProfile, port: int, dest: Path,
        connection: Connection | None, events: Events, *, ledger: Ledger | None = None,
        name: str | None = None) -> RunResult:
    """Run `jobs` against the UI tunneled to 127.0.0.1:`port`, writing pictures into `dest`. With the
    machine's SSH `connection`, the pictures' files on the machine are noted in DEST's pulled-index."""
    synced = synced_hashes(ledger, name) if ledger is not None and name is not None else {}
    backend: Backend = (ComfyBackend(port, dest, ui) if ui.name == "comfyui"
                        else A1111Backend(port, dest, ui, synced))
    stat = RemoteStat(connection) if connection is not None else None
    try:
        return _run(backend, requests, jobs, dest, stat, events, ledger, name)
    finally:
        backend.close()
        if stat is not None:
            stat.close()


def _run(backend: Backend, requests: list[GenerateRequest], jobs: list[Job], dest: Path,
         stat: RemoteStat | None, events: Events, ledger: Ledger | None, name: str | None) -> RunResult:
    result = RunResult()
    started = time.monotonic()
    total = sum(j.batch_size for j in jobs)
    backend.prepare(requests, events)  # every name checked before anything runs
    noted: set[int] = set()
    for job in jobs:
        if job.request.seed is None and id(job.request) not in noted:
            noted.add(id(job.request))
            events.note(f"seed {job.seed} (random) for {job.request.prompt[:60]!r}")
    if stat is not None:
        stat.start()  # after the name checks, not beside them: its start-up overlaps the first job
    try:
        for number, job in enumerate(jobs):
            done = len(result.pictures)

            def on_progress(fraction: float, eta: float | None, detail: str, done: int = done,
                            size: int = job.batch_size) -> None:
                events.progress(done + fraction * size, total, eta, detail)

            following = jobs[number + 1] if number + 1 < len(jobs) else None
            for picture in backend.run(job, on_progress, following):
                result.pictures.append(picture)
                events.picture(picture)
            events.progress(len(result.pictures), total, None, "")
    except KeyboardInterrupt:
        events.note("interrupting the job on the machine …")
        backend.interrupt()
        result.seconds = time.monotonic() - started
        _finish(backend, stat, result, dest, events)
        raise Interrupted(result.pictures) from None
    result.seconds = time.monotonic() - started
    _finish(backend, stat, result, dest, events)
    if ledger is not None and name is not None:
        ledger.event(name, EventKind.GENERATED, {"pictures": len(result.pictures), "seconds": round(result.seconds, 3),
                                         "steps": total_steps(jobs)})
    return result


def _finish(backend: Backend, stat: Stat | None, result: RunResult, dest: Path, events: Events) -> None:
    if stat is None or not result.pictures:
        return
    from cloudsd.sync.outputs import record_pulled

    try:
        found = backend.remote_names(stat, result.pictures, result.seconds + 300.0)
    except CloudsdError as exc:
        events.note(f"could not find the pictures on the machine ({exc.message}); `sync outputs` may fetch "
                    "them again")
        return
    entries = {}
    for picture in result.pictures:
        if picture.remote_rel and picture.remote_rel in found:
            size, mtime_ns = found[picture.remote_rel]
            entries[picture.remote_rel] = (size, mtime_ns, picture.path.relative_to(dest).as_posix())
    record_pulled(dest, entries)
    result.recorded = len(entries)
