"""`push_models`: the user's models on the machine, in the web UI's folders, each verified by sha256.

One `serve` session on the machine carries the whole sync: resolve references, look at what is there (one
request: sizes, cached digests, partial files, free disk), decide (`plan`), check the disk, send, commit
(verify and rename), fetch what the machine downloads itself, and tell the UI to rescan. When nothing
changed, that is one exec and one request. The data streams start while the index is on its way, for the
files the machine is not known to hold (`present`: what earlier syncs put there), so a sync of models the
machine already has starts none.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudsd.errors import SyncError
from cloudsd.redact import url_digest
from cloudsd.sync import timeline
from cloudsd.sync.agent import Agent, AgentFailure, Link, Serve, state_dir_for
from cloudsd.sync.collect import LocalModel, RefModel, apply_resolved, expand_local, source_failure
from cloudsd.sync.hashcache import HashCache
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.plan import SPLIT_BYTES, LocalFile, PushAction, RemoteFile, plan_push
from cloudsd.sync.progress import NullProgress, Progress
from cloudsd.sync.push import BLOCK, Pusher, PushJob
from cloudsd.sync.sources import Endpoints, parse_ref
from cloudsd.sync.streams import Prestart, prestart_count
from cloudsd.ui import UIProfile

FETCH_PARALLEL = 3



def fetch_identity(ref_text: str, sha256: str | None, url: str) -> str:
    """What a partial download on the machine is kept under, to resume it: the file's sha256 when known,
    else a digest of the URL, never the URL (its query may hold a token)."""
    return f"{ref_text} {sha256 or url_digest(url)}"

@dataclass(frozen=True)
class ModelResult:
    label: str
    kind: str
    remote: str
    size: int | None
    sha256: str | None
    outcome: str  # present | sent | resumed | fetched | failed
    message: str = ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.remote) if self.remote else self.label

    @property
    def short_hash(self) -> str:
        """The first 10 hex digits of the sha256: what A1111 shows as `name [abcdef0123]` (and Civitai's AutoV2)."""
        return self.sha256[:10] if self.sha256 else ""


@dataclass
class PushSummary:
    results: list[ModelResult] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0
    agent_runs: int = 0
    refresh: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ModelResult]:
        return [r for r in self.results if r.outcome == "failed"]


def push_models(link: Link, ui: UIProfile, requests: list[ModelRequest], *,
                progress: Progress | None = None, endpoints: Endpoints | None = None,
                bulk: Link | None = None, present: Collection[str] | None = ()) -> PushSummary:
    """Put every requested model on the machine; failures of single models are in the summary, a dropped
    connection or a full disk raise SyncError (after which a new run resumes). The data streams go over
    `bulk` when given (the system ssh's master), the requests over `link`. `present`: the paths on the machine
    that earlier syncs put there, None when it may hold any of them (a volume from another evening): only a hint
    for what streams to start ahead; the machine's index decides what is sent."""
    started = time.monotonic()
    progress = progress or NullProgress()
    endpoints = endpoints or Endpoints.from_env()
    hashes = HashCache()
    try:
        refs = [RefModel(r, parse_ref(r.source)) for r in requests if r.is_ref]  # bad references fail first
        agent = Agent(link, state_dir_for(ui), bulk=bulk)
        run = _Run(agent, ui, progress, endpoints, hashes)
        run.serve.start()  # the agent starts on the machine (a round trip, its Python) while the files are listed
        try:
            local = [m for r in requests if not r.is_ref for m in expand_local(ui, r, hashes)]
            _no_collisions(local)
            timeline.mark("listed")
            if present is not None:
                run.start_streams([m.file for m in local if m.file.remote not in present])
            summary = run.go(local, refs)
        finally:
            run.close()
        summary.agent_runs = agent.execs
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        hashes.close()


def _no_collisions(local: list[LocalModel]) -> None:
    seen: dict[str, str] = {}
    for model in local:
        other = seen.setdefault(model.file.remote, model.file.path)
        if other != model.file.path:
            raise SyncError(f"{other} and {model.file.path} would both become {model.file.remote}.",
                            hint="Rename one, or sync them separately with another --kind.")


class _Run:
    def __init__(self, agent: Agent, ui: UIProfile, progress: Progress, endpoints: Endpoints,
                 hashes: HashCache) -> None:
        self.agent, self.ui, self.progress, self.endpoints, self.hashes = agent, ui, progress, endpoints, hashes
        self.serve = agent.serve(on_event=self._event)
        self.summary = PushSummary()
        self._fetch_keys: dict[str, tuple[str, int]] = {}
        self._refreshed: Callable[[], dict[str, Any]] | None = None  # a refresh sent right behind a commit
        self._prestart: Prestart | None = None

    def start_streams(self, files: list[LocalFile]) -> None:
        """Start the streams that `files` would want, in the index's shadow (see `Prestart`)."""
        pieces = sum(-(-f.size // BLOCK) if f.size >= SPLIT_BYTES else 1 for f in files)
        count = prestart_count(self.agent, "push", sum(f.size for f in files), pieces)
        if count:
            timeline.mark(f"prestart {count}")
            self._prestart = Prestart(self.agent, "recv", count)

    def close(self) -> None:
        try:
            if self._prestart is not None:
                self._prestart.close()
        finally:
            self.serve.close()

    def go(self, local: list[LocalModel], refs: list[RefModel]) -> PushSummary:
        if refs:
            sources = [{"source": m.ref.source(self.endpoints), "token": m.ref.token(self.endpoints)} for m in refs]
            replies = self.serve.request("resolve", refs=sources)["refs"]
            for model, reply in zip(refs, replies, strict=True):
                apply_resolved(self.ui, model, reply, self.endpoints)
        failed = [m for m in refs if m.failure]
        refs = [m for m in refs if not m.failure]
        for model in failed:
            self._result(model.label, model.kind or "?", "", None, None, "failed", model.failure or "")
        folders = sorted({posixpath.dirname(m.file.remote) for m in local} | {posixpath.dirname(m.remote) for m in refs})
        index = self.serve.request("index", free=folders, files=[
            {"path": m.file.remote, "size": m.file.size} for m in local] + [
            {"path": m.remote, "size": m.size, "hash": True} for m in refs])
        remote = {e["path"]: RemoteFile.from_index(e) for e in index["files"]}
        actions = self._plan(local, remote)
        fetches = [m for m in refs if not self._ref_present(m, remote[m.remote])]
        self._check_disk(actions, fetches, remote, index["free"])
        self._push(actions, refresh=not fetches)
        if fetches:
            self._fetch(fetches, remote)
        changed = any(r.outcome in ("sent", "resumed", "fetched") for r in self.summary.results)
        statuses = self._refreshed()["statuses"] if self._refreshed is not None else None
        if changed and statuses is None and self.ui.refresh_calls:
            statuses = self.serve.request("refresh", port=self.ui.internal_port,
                                          paths=list(self.ui.refresh_calls))["statuses"]
        if changed and statuses is not None:
            self.summary.refresh = statuses
        return self.summary

    # -- deciding -----------------------------------------------------------------------------------------
    def _plan(self, local: list[LocalModel], remote: dict[str, RemoteFile]) -> list[tuple[LocalModel, PushAction]]:
        actions = plan_push([m.file for m in local], remote)
        if any(a.action == "hash" for a in actions):  # same size there: is it the same file?
            files = [m.file if m.file.sha256 else _with_sha(m, self.hashes.sha256(Path(m.file.path))) for m in local]
            local = [LocalModel(m.request, m.kind, f, m.stat) for m, f in zip(local, files, strict=True)]
            actions = plan_push(files, remote)
        pairs = list(zip(local, actions, strict=True))
        for model, action in pairs:
            if action.action == "skip":
                sha256 = remote[model.file.remote].sha256
                problem = _mismatch(model, sha256)
                self._local_result(model, "failed" if problem else "present", sha256, problem)
        return [(m, a) for m, a in pairs if a.action != "skip"]

    def _ref_present(self, model: RefModel, there: RemoteFile) -> bool:
        if there.size is None or (model.size is not None and there.size != model.size):
            return False
        if model.sha256 and there.sha256 != model.sha256:
            return False
        self._result(model.label, model.kind or "?", model.remote, there.size, there.sha256, "present",
                     "" if model.sha256 else "no known sha256 to check it against")
        return True

    def _check_disk(self, actions: list[tuple[LocalModel, PushAction]], fetches: list[RefModel],
                    remote: dict[str, RemoteFile], disks: dict[str, dict[str, int]]) -> None:
        """Stop before sending anything when the files would not fit, per disk."""
        need: dict[int, int] = {}
        where: dict[int, str] = {}
        for path, size in [(m.file.remote, m.file.size - a.start) for m, a in actions] + [
                (m.remote, (m.size or m.size_hint or 0) - (remote[m.remote].partial_size or 0)) for m in fetches]:
            disk = disks[posixpath.dirname(path)]
            need[disk["dev"]] = need.get(disk["dev"], 0) + max(0, size)
            where.setdefault(disk["dev"], posixpath.dirname(path))
        for dev, wanted in need.items():
            free = disks[where[dev]]["free"]
            if wanted > free:
                raise SyncError(
                    f"the models do not fit on the machine: they need {_gb(wanted)}, and the disk holding "
                    f"{where[dev]} has {_gb(free)} free. Nothing was sent.",
                    hint="Start a machine with a bigger disk (`cloudsd up --disk N`), or sync fewer models.")

    # -- sending ------------------------------------------------------------------------------------------
    def _push(self, actions: list[tuple[LocalModel, PushAction]], retry: bool = True, refresh: bool = False) -> None:
        """Send, then commit; with `refresh` (nothing left to fetch after this), the UI's rescan goes right
        behind the commit, which the agent answers first: one round trip for both."""
        if not actions:
            return
        jobs = [PushJob(i, m.file.key, Path(m.file.path), m.file.remote, m.file.size, m.file.mtime_ns,
                        m.file.size >= SPLIT_BYTES, a.start, m.file.identity, known=m.file.sha256)
                for i, (m, a) in enumerate(actions)]
        models = {j.final: (m, a, j) for (m, a), j in zip(actions, jobs, strict=True)}
        self.progress.begin(len(jobs), sum(j.size - j.start for j in jobs))
        early = _Commits(self.serve, lambda job: not _mismatch(models[job.final][0], job.sha256))
        try:
            prestart = self._prestart if self._prestart is not None and not self._prestart.taken else None
            Pusher(self.agent, self.serve, self.progress, prestart, written=early.add).push(jobs)
        except AgentFailure as exc:
            if exc.kind == "disk-full":
                self.serve.request("abort", paths=[j.final for j in jobs])
                raise SyncError(f"the machine's disk filled up ({exc}); the partly sent files were removed.",
                                hint="Start a machine with a bigger disk (`cloudsd up --disk N`), or free space.") from None
            raise
        self.summary.bytes_sent += sum(j.size - j.start for j in jobs)
        commits = []
        for model, _, job in models.values():
            if job.final in early.sent:
                continue
            problem = _mismatch(model, job.sha256)
            if problem:
                self.serve.request("abort", paths=[job.final])
                self._local_result(model, "failed", job.sha256, problem)
                continue
            commits.append(_commit_item(job))
        again, known = [], []
        early.flush()  # the agent takes requests in order: the last commit saves the index for all of them
        committed = self.serve.submit("commit", files=commits)
        if refresh and (commits or early.sent) and self.ui.refresh_calls:
            if self._refreshed is not None:
                self._refreshed()
            self._refreshed = self.serve.submit("refresh", port=self.ui.internal_port,
                                                paths=list(self.ui.refresh_calls))
        for reply in early.replies() + committed()["files"]:
            model, action, job = models[reply["path"]]
            if reply.get("ok"):
                known.append((job.local, model.stat, str(job.sha256)))
                self._local_result(model, "resumed" if job.start else "sent", job.sha256)
                self.progress.finish(job.key, "verified")
            elif reply.get("kind") == "hash-mismatch" and (job.start or job.known) and retry:
                # a resumed part, or a file changed behind the size and mtime its cached digest is kept under
                self.progress.note(f"{job.key}: " + ("the resumed part did not match" if job.start else
                                                     "it changed since it was last read") + "; sending it again whole")
                file = replace(model.file, sha256=None)
                again.append((LocalModel(model.request, model.kind, file, model.stat), PushAction(file, "send")))
            else:
                self._local_result(model, "failed", job.sha256, f"{model.file.key}: {reply.get('message')}")
                self.progress.finish(job.key, "failed")
        self.hashes.put_many(known)
        self._push(again, retry=False, refresh=refresh)

    def _fetch(self, fetches: list[RefModel], remote: dict[str, RemoteFile]) -> None:
        self.progress.begin(len(fetches), sum(m.size or m.size_hint or 0 for m in fetches))
        items = []
        for model in fetches:
            self._fetch_keys[model.remote] = (model.label, remote[model.remote].partial_size or 0)
            self.progress.file(model.label, model.label, model.size or model.size_hint or 0,
                               remote[model.remote].partial_size or 0)
            items.append({"path": model.remote, "url": model.url, "sha256": model.sha256, "size": model.size,
                          "short_hash": model.request.short_hash,
                          "token": model.ref.token(self.endpoints),
                          "identity": fetch_identity(model.ref.text, model.sha256, model.url)})
        replies = self.serve.request("fetch", items=items, parallel=FETCH_PARALLEL)["files"]
        for model in fetches:
            reply = replies[model.remote]
            if reply.get("ok"):
                self._result(model.label, model.kind or "?", model.remote, reply.get("size"), reply.get("sha256"),
                             "fetched", "" if model.sha256 else "no known sha256: recorded, not checked")
                self.progress.finish(model.label, "verified" if model.sha256 else "fetched")
            else:
                if reply.get("kind") == "disk-full":
                    self.summary.notes.append("the machine's disk is full: start one with a bigger --disk")
                self._result(model.label, model.kind or "?", model.remote, model.size, None, "failed",
                             source_failure(model, reply, self.endpoints))
                self.progress.finish(model.label, "failed")

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and event.get("path") in self._fetch_keys:
            key, seen = self._fetch_keys[event["path"]]
            done = int(event.get("done") or 0)
            if done > seen:
                self.progress.advance(key, done - seen)
                self._fetch_keys[event["path"]] = (key, done)

    # -- results ------------------------------------------------------------------------------------------
    def _local_result(self, model: LocalModel, outcome: str, sha256: str | None, message: str = "") -> None:
        self._result(model.file.key, model.kind, model.file.remote, model.file.size, sha256, outcome, message)

    def _result(self, label: str, kind: str, remote: str, size: int | None, sha256: str | None, outcome: str,
                message: str = "") -> None:
        self.summary.results.append(ModelResult(label, kind, remote, size, sha256, outcome, message))


def _with_sha(model: LocalModel, sha256: str) -> LocalFile:
    return replace(model.file, sha256=sha256)


class _Commits:
    """Small files committed (checked and renamed into place by the agent) in batches while the push goes on,
    as the machine reports each one written whole: the end of a push then waits for its last batch, not for
    all of them (1,000 files took the agent ~60 ms after the last byte). Big files are committed at the end,
    behind their followers. `add` is called from the streams' reader threads."""

    BATCH = 64

    def __init__(self, serve: Serve, wanted: Callable[[PushJob], bool]) -> None:
        self.serve, self.wanted = serve, wanted
        self.sent: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._waiting: list[Callable[[], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def add(self, job: PushJob) -> None:
        if job.sha256 is None or job.written_sha256 is None or not self.wanted(job):
            return  # committed at the end (or refused there), as before
        with self._lock:
            self.sent.add(job.final)
            self._pending.append(_commit_item(job))
            if len(self._pending) >= self.BATCH:
                batch, self._pending = self._pending, []
                self._waiting.append(self.serve.submit("commit", files=batch, save=False))

    def flush(self) -> None:
        """Send the files not yet in a batch (the push is over: no more come)."""
        with self._lock:
            batch, self._pending = self._pending, []
            if batch:
                self._waiting.append(self.serve.submit("commit", files=batch, save=False))

    def replies(self) -> list[dict[str, Any]]:
        """Every batch's answers, in order."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return [reply for wait in waiting for reply in wait()["files"]]


def _commit_item(job: PushJob) -> dict[str, Any]:
    return {"path": job.final, "size": job.size, "sha256": job.sha256, "mtime_ns": job.mtime_ns,
            "written_sha256": job.written_sha256}


def _mismatch(model: LocalModel, sha256: str | None) -> str:
    """Why a local file is not the one its manifest entry names ('' when it is)."""
    want, short = model.request.sha256, model.request.short_hash
    if sha256 and want and sha256 != want:
        return f"{model.file.key}: its sha256 is {sha256}, the manifest says {want}; not installed."
    if sha256 and short and not sha256.startswith(short):
        return f"{model.file.key}: its short hash is {sha256[:10]}, the manifest says {short}; not installed."
    return ""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"
