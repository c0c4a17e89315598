"""Pulling files from the machine over `send` streams, each range checked against the machine's sha256.

Files are spread over the streams by size; a big file is cut into one byte range per stream. The agent
hashes what it sends and puts the digest after the bytes; here the bytes of a small range are hashed as they
are written to a local partial file, and a big range goes from the stream into the file without passing
through Python (splice, over the system client) and is hashed from the file by a thread just behind the
writes. Placing a file is the caller's business: it is told of each as its last range matches (`completed`).

The machine is not trusted with the laptop's disk: each stream must answer exactly the ranges it was asked for,
in order, so no file grows past the size the machine listed for it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudsd.errors import SyncError
from cloudsd.openssh import pwrite_all
from cloudsd.sync import timeline
from cloudsd.sync.agent import Agent, Stream, lost_connection
from cloudsd.sync.digest import TrailingDigest
from cloudsd.sync.plan import SPLIT_BYTES
from cloudsd.sync.progress import Progress
from cloudsd.sync.streams import Prestart, StreamReader, close_quietly, open_streams, stream_count

# Ranges at least this big are written without passing through Python and hashed by a thread behind the writes
# (`Puller._receive_big`); smaller ones are hashed and written as they arrive (a thread per file costs more).
TRAILING_BYTES = 8 << 20
# What writing to the local file (not reading the stream) fails with when the kernel does both in one call.
FILE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


@dataclass
class PullJob:
    fid: int
    key: str  # the name on the machine, relative to the output folder
    remote: str
    size: int
    mtime_ns: int
    partial: Path
    ranges: list[tuple[int, int]] = field(default_factory=list)
    verified: int = 0
    sha256: str | None = None  # of the whole file, when it came as one range
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.problem is None and self.verified == len(self.ranges)


class Puller:
    def __init__(self, agent: Agent, progress: Progress, prestart: Prestart | None = None,
                 completed: Callable[[PullJob], None] | None = None) -> None:
        self.agent = agent
        self.progress = progress
        self.prestart = prestart  # streams started while the listing was on its way
        self.completed = completed  # told of each file as its last range matches (from a stream's thread)
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._started: set[int] = set()

    def pull(self, jobs: list[PullJob]) -> None:
        if not jobs:
            return
        total = sum(j.size for j in jobs)
        units = max(len(jobs), 1 if total < SPLIT_BYTES else 64)
        count = stream_count(self.agent, "pull", total, units)
        if self.prestart is not None:  # already running: all of them carry a share
            count = max(count, min(self.prestart.count, units))
        loads: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        weights = [0] * count
        for job in sorted(jobs, key=lambda j: -j.size):
            parts = count if job.size >= SPLIT_BYTES else 1
            step = -(-job.size // parts) if job.size else 0
            job.ranges = [(off, min(step, job.size - off)) for off in range(0, job.size, step)] if step else [(0, 0)]
            for offset, length in job.ranges:
                target = weights.index(min(weights))
                weights[target] += length + 4096
                loads[target].append({"fid": job.fid, "path": job.remote, "size": job.size,
                                      "mtime_ns": job.mtime_ns, "off": offset, "len": length})
        loads = [load for load in loads if load]
        timeline.mark(f"streams {len(loads)}")
        if self.prestart is not None:
            channels = self.prestart.take(len(loads))
        else:
            channels = open_streams(self.agent, "send", len(loads))
        timeline.mark("streams-opened")
        by_fid = {j.fid: j for j in jobs}
        threads = [threading.Thread(target=self._run, args=(c, load, by_fid), daemon=True)
                   for c, load in zip(channels, loads, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        timeline.mark("data-received")
        close_quietly(channels)
        if self.errors:
            if not self.agent.active:
                raise lost_connection()
            first = self.errors[0]
            raise first if isinstance(first, SyncError) else lost_connection(first)

    def _run(self, channel: Stream, load: list[dict[str, Any]], jobs: dict[int, PullJob]) -> None:
        try:
            channel.sendall(json.dumps({"items": load}).encode() + b"\n")
            channel.shutdown_write()
            reader = StreamReader(channel)
            for asked in load:
                head = json.loads(reader.readline())
                timeline.once("first-head")
                job = jobs[int(asked["fid"])]
                if head.get("fid") != asked["fid"]:
                    job.problem = "the machine answered another file than the one asked for"
                    return
                if "changed" in head or "missing" in head:
                    job.problem = "changed on the machine while it was pulled" if "changed" in head else (
                        f"gone from the machine ({head['missing']})")
                    continue
                if (head.get("off"), head.get("len")) != (asked["off"], asked["len"]):
                    job.problem = (f"the machine sent {head.get('len')} bytes at {head.get('off')} where it listed "
                                   f"{asked['len']} at {asked['off']} (a {job.size}-byte file); refused")
                    return  # the rest of this stream cannot be trusted either: it is not read
                with self._lock:
                    if job.fid not in self._started:
                        self._started.add(job.fid)
                        self.progress.file(job.key, job.key, job.size)
                # the caller made the partials' folder; a file is open only while its range arrives (a
                # pull of thousands would otherwise hold thousands: macOS allows a process 256)
                fd = os.open(job.partial, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    digest = self._receive(reader, fd, job, int(head["off"]), int(head["len"]))
                finally:
                    os.close(fd)
                trailer = json.loads(reader.readline())
                if trailer.get("short") or trailer.get("sha256") != digest:
                    job.problem = "arrived with another sha256 than the machine's"
                else:
                    if len(job.ranges) == 1:
                        job.sha256 = digest
                    with self._lock:
                        job.verified += 1
                        complete = job.complete
                    if complete and self.completed is not None:
                        self.completed(job)
        except OSError as exc:
            # a local file, or else the channel (a dropped connection)
            self.errors.append(SyncError(f"cannot write {exc.filename} ({exc.strerror}).") if exc.filename else exc)
        except (EOFError, ValueError, KeyError) as exc:
            self.errors.append(exc)

    def _receive(self, reader: StreamReader, fd: int, job: PullJob, offset: int, length: int) -> str:
        """Write the range into the partial file and return the sha256 of what was written."""
        if length >= TRAILING_BYTES:
            return self._receive_big(reader, fd, job, offset, length)
        digest = hashlib.sha256()
        position = offset

        def sink(piece: memoryview) -> None:
            nonlocal position
            digest.update(piece)
            try:
                pwrite_all(fd, piece, position)
            except OSError as exc:  # a full disk: say which file, not "the connection dropped"
                raise OSError(exc.errno, exc.strerror, str(job.partial)) from None
            position += len(piece)
            self.progress.advance(job.key, len(piece))

        reader.read_into(length, sink)
        return digest.hexdigest()

    def _receive_big(self, reader: StreamReader, fd: int, job: PullJob, offset: int, length: int) -> str:
        """A big range goes from the stream into the file without passing through Python where the stream
        allows it (over the system client the kernel splices the pipe into the file); a thread hashes what
        was written just behind, so hashing and moving run at once (~1 CPU-s/GB less than reading, hashing
        and writing each piece here)."""
        with TrailingDigest(job.partial, offset) as digest:
            def written(nbytes: int) -> None:
                digest.advance(nbytes)
                self.progress.advance(job.key, nbytes)

            try:
                reader.write_into(fd, offset, length, written)
            except OSError as exc:
                if exc.filename is None and exc.errno in FILE_ERRNOS:  # a full disk: say which file
                    raise OSError(exc.errno, exc.strerror, str(job.partial)) from None
                raise
            return digest.hexdigest()
