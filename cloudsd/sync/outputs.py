"""`pull_outputs`: the web UI's new and changed images, home, verified, never overwriting anything.

DEST keeps the UI's subfolders (`txt2img-images/2026-11-29/00001-123.png`). DEST/.cloudsd/pulled.json records
what came down (by the name, size and mtime it had on the machine), so a file is pulled once and only once,
even after its local copy was moved away. A remote name that could write outside DEST is refused. A local
file of the same name and the same content is kept as is; one that differs is never overwritten: the
incoming copy gets `name (1).png`. Files arrive in DEST/.cloudsd/partial and are linked into place only
after every byte range matched the machine's sha256.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudsd.errors import SyncError
from cloudsd.sync.agent import Agent, Link, Serve, state_dir_for
from cloudsd.sync.hashcache import HashCache
from cloudsd.sync.plan import LocalOutput, PullAction, Pulled, RemoteOutput, conflict_name, plan_pull
from cloudsd.sync.progress import NullProgress, Progress
from cloudsd.sync.pull import Puller, PullJob
from cloudsd.sync.streams import MEASURE_RTT_BYTES, Prestart, prestart_count
from cloudsd.ui import UIProfile

STATE = ".cloudsd"
RECORD = "pulled.json"
# Partial files are spread over this many folders: the streams create files at once, and a file system creates
# a name under its folder's lock (ext4 finds the new inode while holding it), so one folder kept the streams
# waiting on one another.
PARTIAL_SHELVES = 8


@dataclass
class PullSummary:
    dest: Path
    pulled: list[tuple[str, str]] = field(default_factory=list)  # (name on the machine, local name)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # the ones that got a new name
    already: int = 0  # pulled by an earlier run
    same: int = 0  # a local file of that name has the same content
    problems: list[str] = field(default_factory=list)
    bytes_pulled: int = 0
    seconds: float = 0.0
    agent_runs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def pull_outputs(link: Link, ui: UIProfile, dest: Path, *,
                 progress: Progress | None = None, bulk: Link | None = None) -> PullSummary:
    """Pull what is new on the machine into `dest` (the data streams over `bulk` when given)."""
    started = time.monotonic()
    progress = progress or NullProgress()
    dest = dest.expanduser().absolute()
    summary = PullSummary(dest)
    agent = Agent(link, state_dir_for(ui), bulk=bulk)
    serve = agent.serve()
    serve.start()  # the agent starts on the machine while DEST is read
    # the data streams start while the listing is on its way (as many as an evening's outputs want; the ones a
    # small pull does not need are ended unused, and a big one opens more)
    count = prestart_count(agent, "pull")
    prestart = Prestart(agent, "send", count) if count else None
    try:
        _pull_new(agent, ui, dest, serve, summary, progress, prestart)
    finally:
        if prestart is not None:
            prestart.close()
    summary.seconds = time.monotonic() - started
    summary.agent_runs = agent.execs
    return summary


def _pull_new(agent: Agent, ui: UIProfile, dest: Path, serve: Serve, summary: PullSummary, progress: Progress,
              prestart: Prestart | None) -> None:
    try:
        record = _load_record(dest)
        local = _scan(dest)
        reply = serve.request("outputs", root=posixpath.join(ui.data_dir, ui.output_dir),
                              known={rel: [p.size, p.mtime_ns] for rel, p in record.items()},
                              local={rel: o.size for rel, o in local.items()})
        outputs = [RemoteOutput(f["rel"], f["size"], f["mtime_ns"], f.get("sha256")) for f in reply["files"]]
        actions = plan_pull(outputs, record, local)
        if sum(a.output.size for a in actions if a.action == "pull") >= MEASURE_RTT_BYTES and agent.rtt_s is None:
            serve.measure_rtt()  # how many streams the pull wants (an OpenSSH master timed it as it connected)
    finally:
        serve.close()
    if any(a.action == "hash" for a in actions):
        hashes = HashCache()
        try:
            for action in actions:
                if action.action == "hash":
                    local[action.target] = LocalOutput(local[action.target].size,
                                                       hashes.sha256(dest / action.target))
        finally:
            hashes.close()
        actions = plan_pull(outputs, record, local)
    for action in actions:
        out = action.output
        if action.action == "skip":
            summary.already += 1
        elif action.action == "same":
            summary.same += 1
            record[out.rel] = Pulled(out.size, out.mtime_ns, action.target)
        elif action.action == "unsafe":
            summary.problems.append(f"{out.rel!r}: refused, the name would write outside {dest}")
    pulls = [a for a in actions if a.action == "pull"]
    if pulls:
        _pull(agent, ui, dest, pulls, record, summary, progress, prestart)
    if pulls or summary.same:
        _save_record(dest, record)


def _pull(agent: Agent, ui: UIProfile, dest: Path, pulls: list[PullAction], record: dict[str, Pulled],
          summary: PullSummary, progress: Progress, prestart: Prestart | None) -> None:
    partials = dest / STATE / "partial"
    try:
        shutil.rmtree(partials, ignore_errors=True)  # what a broken run left: it starts over
        partials.mkdir(parents=True)
        for shelf in range(PARTIAL_SHELVES):
            (partials / str(shelf)).mkdir()
    except OSError as exc:
        raise SyncError(f"cannot write to {dest} ({exc.strerror}).", hint="Choose another folder with --dest.") from None
    need, free = sum(a.output.size for a in pulls), shutil.disk_usage(partials).free
    if need > free:  # the sizes the machine listed are all it may send (pull.py holds it to them)
        shutil.rmtree(partials, ignore_errors=True)
        raise SyncError(f"the outputs do not fit here: {len(pulls)} new files need {_mb(need)}, and the disk "
                        f"holding {dest} has {_mb(free)} free. Nothing was pulled.",
                        hint="Free some space, or choose another folder with --dest.")
    root = posixpath.join(ui.data_dir, ui.output_dir)
    jobs = [PullJob(i, a.output.rel, posixpath.join(root, a.output.rel), a.output.size, a.output.mtime_ns,
                    partials / str(i % PARTIAL_SHELVES) / f"{i}.partial") for i, a in enumerate(pulls)]
    progress.begin(len(jobs), sum(j.size for j in jobs))
    placer = _Placer(dest, {job.fid: action.target for job, action in zip(jobs, pulls, strict=True)}, progress)
    failed = True
    try:
        Puller(agent, progress, prestart, completed=placer.put).pull(jobs)
        failed = False
    finally:
        # what was verified and placed stays placed, and recorded, even when the connection dropped
        placed = placer.finish()
        for job in jobs:
            outcome = placed.get(job.fid)
            if isinstance(outcome, str):
                record[job.key] = Pulled(job.size, job.mtime_ns, outcome)
                summary.pulled.append((job.key, outcome))
                if outcome != job.key:
                    summary.renamed.append((job.key, outcome))
                summary.bytes_pulled += job.size
            elif isinstance(outcome, OSError):  # a name this disk cannot hold (too long; a file where a folder must go)
                summary.problems.append(f"{job.key!r}: cannot be saved here ({outcome.strerror or outcome})")
                progress.finish(job.key, "failed")
            elif job.fid in placed:
                summary.problems.append(f"{job.key!r}: refused, a folder on its way is a link out of {dest}")
            elif not job.complete:
                summary.problems.append(f"{job.key}: {job.problem or 'did not arrive whole'}")
                progress.finish(job.key, "failed")
        if failed and placed:  # else the caller saves it
            _save_record(dest, record)
    shutil.rmtree(partials, ignore_errors=True)


class _Placer:
    """Links each verified file into place while the others still arrive, on a thread of its own (a stream
    that finished a file goes on to its next one at once): a 1,000-file pull no longer ends with 1,000 links
    done one after another. `finish` waits for the last and gives each placed file's outcome by job: its name
    under DEST, None (refused: a folder on its way leads out of DEST) or the OSError that kept it out."""

    def __init__(self, dest: Path, targets: dict[int, str], progress: Progress) -> None:
        self.dest, self.targets, self.progress = dest, targets, progress
        self.folders = _Folders(os.path.realpath(dest))
        self.outcomes: dict[int, str | OSError | None] = {}
        self._queue: queue.SimpleQueue[PullJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cloudsd-place", daemon=True)
        self._thread.start()

    def put(self, job: PullJob) -> None:
        self._queue.put(job)

    def finish(self) -> dict[int, str | OSError | None]:
        self._queue.put(None)
        self._thread.join()
        return self.outcomes

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                os.utime(job.partial, ns=(time.time_ns(), job.mtime_ns))
                outcome: str | OSError | None = _place(self.dest, self.folders, job.partial, self.targets[job.fid])
            except OSError as exc:
                outcome = exc
            self.outcomes[job.fid] = outcome
            if isinstance(outcome, str):
                self.progress.finish(job.key, "verified")


class _Folders:
    """The folders that files of one pull go into, each made and checked once to lie inside DEST (realpath
    walks every part of a path: twice per file, it was a third of a 1,000-file pull's own CPU)."""

    def __init__(self, real_dest: str) -> None:
        self.real_dest = real_dest
        self.ready: dict[Path, bool] = {}

    def inside(self, folder: Path) -> bool:
        ready = self.ready.get(folder)
        if ready is None:
            # realpath follows the links among the folders that exist and appends the rest as written (the plan
            # refused `..` and absolute names): checked before any folder is made, and again after, in case one
            # became a link meanwhile.
            ready = _inside(self.real_dest, folder)
            if ready:
                folder.mkdir(parents=True, exist_ok=True)
                ready = _inside(self.real_dest, folder)
            self.ready[folder] = ready
        return ready


def _place(dest: Path, folders: _Folders, partial: Path, rel: str) -> str | None:
    """Link the verified file in at `rel` (or the next free `name (n)` if one appeared meanwhile), never
    replacing a file, never outside DEST. Returns the name it got."""
    taken: set[str] = set()
    while True:
        target = dest / rel
        if not folders.inside(target.parent):
            return None
        try:
            os.link(partial, target)  # fails if the name exists, where a rename would replace it
            os.unlink(partial)
            return rel
        except FileExistsError:
            taken.add(rel.casefold())
            rel = conflict_name(rel, taken)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if target.exists():  # a disk without hard links: check, then rename
                taken.add(rel.casefold())
                rel = conflict_name(rel, taken)
                continue
            os.replace(partial, target)
            return rel


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _inside(real_dest: str, folder: Path) -> bool:
    real = os.path.realpath(folder)
    return real == real_dest or real.startswith(real_dest + os.sep)


def _scan(dest: Path) -> dict[str, LocalOutput]:
    found: dict[str, LocalOutput] = {}
    if not dest.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(dest):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                found[path.relative_to(dest).as_posix()] = LocalOutput(path.stat().st_size)
    return found


def _load_record(dest: Path) -> dict[str, Pulled]:
    try:
        data: Any = json.loads((dest / STATE / RECORD).read_text())
        return {rel: Pulled(int(e["size"]), int(e["mtime_ns"]), str(e["local"])) for rel, e in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _save_record(dest: Path, record: dict[str, Pulled]) -> None:
    path = dest / STATE / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    files = {rel: {"size": p.size, "mtime_ns": p.mtime_ns, "local": p.local} for rel, p in sorted(record.items())}
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    os.replace(tmp, path)


def record_pulled(dest: Path, entries: dict[str, tuple[int, int, str]]) -> None:
    """Note files that reached DEST another way (`cloudsd generate` saves pictures as they finish) as pulled:
    {name on the machine: (size, mtime_ns there, name under DEST)}, so `pull_outputs` never fetches them."""
    if not entries:
        return
    dest = dest.expanduser().absolute()
    record = _load_record(dest)
    for rel, (size, mtime_ns, local) in entries.items():
        record[rel] = Pulled(size, mtime_ns, local)
    _save_record(dest, record)
