"""The pure half of sync: given what is here and what is there, decide what to move. No I/O.

Pushing models: a file whose remote namesake has the same size and sha256 is skipped; a partial file left by
a broken run is resumed from the prefix the machine verified, if it came from the same local file (same
size and mtime); anything else is sent whole. When the remote size matches but the local digest is not known
yet, the action is `hash`: the caller hashes the local file and plans again.

Pulling outputs: a file pulled before with the same size and mtime is skipped (it comes down once, even if
the local copy was moved away since); a remote name that could write outside the destination is refused; a
local file of the same name that differs is never overwritten: the incoming copy gets `name (1).ext`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

SPLIT_BYTES = 64 << 20  # files at least this big go in blocks over several streams, and can resume


@dataclass(frozen=True)
class LocalFile:
    key: str  # how the user names it, for messages
    path: str  # where it is here
    remote: str  # its final path on the machine
    size: int
    mtime_ns: int
    sha256: str | None = None  # known digest (hash cache), None if not read yet

    @property
    def identity(self) -> dict[str, int]:
        """What a partial file on the machine must have come from to be resumed."""
        return {"size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None = None
    sha256: str | None = None  # given when `size` is the size asked about
    partial_size: int | None = None
    partial_note: Mapping[str, Any] | None = None  # {"identity": …, "prefix": verified bytes}

    @classmethod
    def from_index(cls, entry: Mapping[str, Any]) -> RemoteFile:
        partial = entry.get("partial") or {}
        return cls(entry["path"], entry.get("size"), entry.get("sha256"), partial.get("size"), partial.get("note"))


@dataclass(frozen=True)
class PushAction:
    file: LocalFile
    action: str  # skip | send | resume | hash
    start: int = 0  # bytes already on the machine (resume)


def plan_push(files: Iterable[LocalFile], remote: Mapping[str, RemoteFile]) -> list[PushAction]:
    actions = []
    for f in files:
        r = remote.get(f.remote) or RemoteFile(f.remote)
        if r.size == f.size and r.sha256:
            if f.sha256 is None:
                actions.append(PushAction(f, "hash"))
                continue
            if f.sha256 == r.sha256:
                actions.append(PushAction(f, "skip"))
                continue
        start = resumable_prefix(f, r)
        actions.append(PushAction(f, "resume", start) if start else PushAction(f, "send"))
    return actions


def resumable_prefix(f: LocalFile, r: RemoteFile) -> int:
    note = r.partial_note or {}
    prefix = note.get("prefix")
    if (f.size < SPLIT_BYTES or note.get("identity") != f.identity or not isinstance(prefix, int)
            or r.partial_size is None):
        return 0
    return prefix if 0 < prefix <= r.partial_size and prefix < f.size else 0


# -- outputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteOutput:
    rel: str  # as the machine names it, relative to the UI's output folder
    size: int
    mtime_ns: int
    sha256: str | None = None


@dataclass(frozen=True)
class Pulled:
    """A file pulled by an earlier run (the record kept in DEST/.cloudsd/pulled.json)."""

    size: int
    mtime_ns: int
    local: str


@dataclass(frozen=True)
class LocalOutput:
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class PullAction:
    output: RemoteOutput
    action: str  # pull | skip | same | hash | unsafe
    target: str = ""  # where it goes, relative to DEST


def plan_pull(outputs: Iterable[RemoteOutput], pulled: Mapping[str, Pulled],
              local: Mapping[str, LocalOutput]) -> list[PullAction]:
    taken = {name.casefold() for name in local}  # names in use (case-insensitive disks exist)
    actions = []
    for out in sorted(outputs, key=lambda o: o.rel):
        before = pulled.get(out.rel)
        if before is not None and (before.size, before.mtime_ns) == (out.size, out.mtime_ns):
            actions.append(PullAction(out, "skip", before.local))
            continue
        rel = safe_relpath(out.rel)
        if rel is None:
            actions.append(PullAction(out, "unsafe"))
            continue
        here = local.get(rel)
        if here is not None and here.size == out.size and out.sha256:
            if here.sha256 is None:
                actions.append(PullAction(out, "hash", rel))
                continue
            if here.sha256 == out.sha256:
                actions.append(PullAction(out, "same", rel))
                continue
        target = conflict_name(rel, taken) if rel.casefold() in taken else rel
        taken.add(target.casefold())
        actions.append(PullAction(out, "pull", target))
    return actions


def safe_relpath(rel: str) -> str | None:
    """`rel` as a relative POSIX path that stays inside its folder, or None: no absolute paths, no `..`,
    no empty or hidden parts, no backslashes, drive letters or NUL bytes."""
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    return "/".join(parts)


def conflict_name(rel: str, taken: set[str]) -> str:
    """`dir/name (n).ext` for the first n whose name is not taken (compared case-insensitively)."""
    path = PurePosixPath(rel)
    stem, suffix = path.stem, path.suffix
    n = 1
    while True:
        candidate = str(path.with_name(f"{stem} ({n}){suffix}"))
        if candidate.casefold() not in taken:
            return candidate
        n += 1
