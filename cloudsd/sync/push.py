"""Pushing files to the machine over several `recv` streams at once.

Small files travel whole, one per frame, and the agent hashes each as it writes it. A file whose sha256 the
hash cache knows (same size and mtime as when it was read) is not hashed here at all: the machine's digest of
what it received must equal the known one, so the check is as strict, one pass cheaper; a file changed behind
an unchanged mtime fails that check and is sent again, hashed. A big file is hashed in
order by one thread (one reused buffer) that cuts it into blocks; the blocks go out over all streams straight
from the file (`Stream.send_from_file`: sendfile over the system client, so the kernel hands the cached pages
to the ssh pipe and Python never copies them), and as the machine acks them the contiguous written prefix is
reported to the agent's `serve`, whose follower hashes the file on the machine just behind the writes. So
checking a big file at the end costs only the last block. Bytes that change between their hash and their
send make the machine's digest differ: the file is refused, never put in place torn. Nothing is renamed into
place here: the caller commits what was sent, and the agent checks each digest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import Any

from cloudsd.errors import SyncError
from cloudsd.remote.agent.common import partial_path
from cloudsd.sync import timeline
from cloudsd.sync.agent import Agent, AgentFailure, Serve, Stream, lost_connection
from cloudsd.sync.progress import Progress
from cloudsd.sync.streams import (
    MEASURE_RTT_BYTES,
    Prestart,
    StreamReader,
    close_quietly,
    open_streams,
    stream_count,
)

BLOCK = 4 << 20
READ_CHUNK = 1 << 20


@dataclass
class PushJob:
    fid: int
    key: str
    local: Path
    final: str
    size: int
    mtime_ns: int
    big: bool
    start: int = 0  # bytes the machine has already verified (a resume)
    identity: dict[str, int] = field(default_factory=dict)
    known: str | None = None  # the local file's sha256 from the hash cache: not hashed again here
    sha256: str | None = None  # of the local file: `known`, else learned while sending it
    written_sha256: str | None = None  # of what the agent wrote (small files)
    acked: dict[int, int] = field(default_factory=dict)
    prefix: int = 0

    @property
    def partial(self) -> str:
        return partial_path(self.final)


class Pusher:
    def __init__(self, agent: Agent, serve: Serve, progress: Progress, prestart: Prestart | None = None,
                 written: Callable[[PushJob], None] | None = None) -> None:
        self.agent = agent
        self.serve = serve
        self.progress = progress
        self.prestart = prestart  # streams started while the index was on its way
        self.written = written  # called (from a reader thread) when the machine has written a small file whole
        self.errors: list[BaseException] = []
        self.failed = threading.Event()
        self._lock = threading.Lock()

    def push(self, jobs: list[PushJob]) -> None:
        """Send every job's bytes; fill in `sha256` (and `written_sha256`); raise SyncError on any failure."""
        if not jobs:
            return
        total = sum(j.size - j.start for j in jobs)
        pieces = sum(-(-(j.size - j.start) // BLOCK) if j.big else 1 for j in jobs)
        if total >= MEASURE_RTT_BYTES and self.agent.rtt_s is None:
            self.serve.measure_rtt()
        count = stream_count(self.agent, "push", total, pieces)
        if self.prestart is not None:  # already running: all of them carry a share
            count = max(count, min(self.prestart.count, pieces))
        timeline.mark(f"streams {count}")
        big = [j for j in jobs if j.big]
        opened: list[Stream] = []
        opener = threading.Thread(target=lambda: opened.extend(self._open(count)), daemon=True)
        opener.start()  # the streams open while `prepare` makes the partial files
        if big:
            self.serve.request("prepare", files=[{"path": j.final, "keep": j.start} for j in big])
            for job in big:
                job.prefix = job.start
                self.serve.notify("follow", path=job.final, size=job.size, identity=job.identity, ready=job.start)
        opener.join()
        timeline.mark("streams-opened")
        if self.errors:
            raise self._error()
        units: queue.Queue[Any] = queue.Queue(maxsize=count + 2)
        by_fid = {j.fid: j for j in jobs}
        workers = [threading.Thread(target=self._produce, args=(jobs, units, len(opened)), daemon=True)]
        workers += [threading.Thread(target=self._send, args=(c, units), daemon=True) for c in opened]
        readers = [threading.Thread(target=self._acks, args=(c, by_fid), daemon=True) for c in opened]
        for thread in workers + readers:
            thread.start()
        for thread in workers:
            thread.join()
        timeline.mark("data-sent")
        if self.failed.is_set():
            for thread in readers:
                thread.join(timeout=2)  # the agent's own account of what went wrong may still arrive
            close_quietly(opened)
        for thread in readers:
            thread.join()
        timeline.mark("data-acked")
        close_quietly(opened)
        if self.errors:
            raise self._error()

    def _open(self, count: int) -> list[Stream]:
        try:
            if self.prestart is not None:
                return self.prestart.take(count)
            return open_streams(self.agent, "recv", count)
        except BaseException as exc:
            self._fail(exc)
            return []

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.failed.set()

    def _error(self) -> BaseException:
        """The most telling failure: what the agent said, then a dropped connection, then the first one."""
        for exc in self.errors:
            if isinstance(exc, AgentFailure):
                return exc
        if not self.agent.active:
            return lost_connection()
        first = self.errors[0]
        if isinstance(first, SyncError):
            return first
        return lost_connection(first)

    def _put(self, units: queue.Queue[Any], unit: Any) -> bool:
        while not self.failed.is_set():
            try:
                units.put(unit, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, jobs: list[PushJob], units: queue.Queue[Any], streams: int) -> None:
        view = memoryview(bytearray(READ_CHUNK))  # one buffer for every read: nothing to allocate per block
        try:
            for job in jobs:
                if not job.big:
                    if not self._put(units, job):
                        return
                    continue
                self.progress.file(job.key, job.key, job.size, job.start)
                if job.known is not None:  # the machine's digest of what it gets must equal it: no pass here
                    job.sha256 = job.known
                    for pos in range(job.start, job.size, BLOCK):
                        if not self._put(units, (job, pos, min(BLOCK, job.size - pos))):
                            return
                    continue
                digest = hashlib.sha256()
                with job.local.open("rb", buffering=0) as f:
                    pos = 0
                    while pos < job.size:
                        # the part already on the machine is only hashed; the rest goes out in blocks, each
                        # hashed here before a sender hands it to its stream straight from the file
                        end = job.start if pos < job.start else min(pos + BLOCK, job.size)
                        _hash_range(f, view, digest, end - pos, job)
                        if pos >= job.start and not self._put(units, (job, pos, end - pos)):
                            return
                        pos = end
                    if f.read(1):
                        raise SyncError(f"{job.local} grew while it was being sent; sync it again.")
                job.sha256 = digest.hexdigest()
        except OSError as exc:
            self._fail(SyncError(f"cannot read {exc.filename or 'a local file'} ({exc.strerror})."))
        except BaseException as exc:
            self._fail(exc)
        finally:
            for _ in range(streams):
                self._put(units, None)

    def _send(self, channel: Stream, units: queue.Queue[Any]) -> None:
        files: dict[int, int] = {}  # a descriptor of each big file this sender sends blocks of
        try:
            while not self.failed.is_set():
                try:
                    unit = units.get(timeout=0.2)
                except queue.Empty:
                    continue
                if unit is None:
                    break
                if isinstance(unit, PushJob):
                    self._send_file(channel, unit)
                else:
                    job, offset, length = unit
                    self._send_block(channel, files, job, offset, length)
            channel.sendall(b'{"op":"end"}\n')
            channel.shutdown_write()
        except (OSError, EOFError) as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
        finally:
            for fd in files.values():
                os.close(fd)

    def _send_block(self, channel: Stream, files: dict[int, int], job: PushJob, offset: int, length: int) -> None:
        """One block of a big file, from the file to the stream without passing through Python where the
        stream allows it (`Stream.send_from_file`); the producer hashed it already."""
        if job.fid not in files:
            try:
                files[job.fid] = os.open(job.local, os.O_RDONLY)
            except OSError as exc:
                raise SyncError(f"cannot read {job.local} ({exc.strerror}).") from None
        head = {"op": "data", "fid": job.fid, "path": job.partial, "off": offset, "len": length}
        channel.sendall(json.dumps(head).encode() + b"\n")
        try:
            channel.send_from_file(files[job.fid], offset, length)
        except EOFError:
            raise SyncError(f"{job.local} got shorter while it was being sent; sync it again.") from None
        self.progress.advance(job.key, length)

    def _send_file(self, channel: Stream, job: PushJob) -> None:
        """A small file whole: read, hashed and sent in one pass; straight from the file when its digest is
        known (the machine's must equal it)."""
        self.progress.file(job.key, job.key, job.size)
        head = {"op": "file", "fid": job.fid, "path": job.partial, "len": job.size}
        try:
            f = job.local.open("rb", buffering=0)
        except OSError as exc:
            raise SyncError(f"cannot read {job.local} ({exc.strerror}).") from None
        if job.known is not None:
            job.sha256 = job.known
            with f:
                channel.sendall(json.dumps(head).encode() + b"\n")
                try:
                    channel.send_from_file(f.fileno(), 0, job.size)
                except EOFError:
                    raise SyncError(f"{job.local} got shorter while it was being sent; sync it again.") from None
            self.progress.advance(job.key, job.size)
            return
        digest = hashlib.sha256()
        with f:
            header = json.dumps(head).encode() + b"\n"
            # the header and a first chunk in one buffer: one packet fewer per file, and most fit whole
            buf = bytearray(len(header) + min(READ_CHUNK, job.size))
            buf[:len(header)] = header
            view, start, left = memoryview(buf), len(header), job.size
            if not left:  # an empty file: its header is all there is
                job.sha256 = digest.hexdigest()
                channel.sendall(view[:start])
            while left:
                n = f.readinto(view[start:start + min(READ_CHUNK, left)])
                if not n:
                    raise SyncError(f"{job.local} got shorter while it was being sent; sync it again.")
                digest.update(view[start:start + n])
                if n == left:  # known before the last byte goes: the machine's answer finds it set
                    job.sha256 = digest.hexdigest()
                channel.sendall(view[:start + n])
                self.progress.advance(job.key, n)
                left -= n
                start = 0

    def _acks(self, channel: Stream, jobs: dict[int, PushJob]) -> None:
        reader = StreamReader(channel)
        try:
            while True:
                try:
                    message = json.loads(reader.readline())
                except EOFError:
                    break
                timeline.once("first-ack")
                if "ack" in message:
                    self._acked(jobs[message["ack"]], int(message["off"]), int(message["len"]))
                elif "wrote" in message:
                    job = jobs[message["wrote"]]
                    job.written_sha256 = message["sha256"]
                    if self.written is not None:
                        self.written(job)
                elif "error" in message:
                    self._fail(AgentFailure({"kind": message["error"], "message": message.get("message", "")}))
                    return
        except (OSError, ValueError, SyncError) as exc:
            self._fail(exc)
            return
        status = channel.exit_status(10)
        if status not in (0, -1) and not self.failed.is_set():
            self._fail(SyncError(f"a data stream of cloudsd's agent stopped (exit {status})."))

    def _acked(self, job: PushJob, offset: int, length: int) -> None:
        with self._lock:
            job.acked[offset] = length
            moved = job.prefix
            while job.prefix in job.acked:
                job.prefix += job.acked.pop(job.prefix)
            advanced = job.prefix != moved
        if advanced:
            self.serve.notify("ready", path=job.final, upto=job.prefix)


def _hash_range(f: FileIO, view: memoryview, digest: Any, length: int, job: PushJob) -> None:
    """The next `length` bytes of `f` into `digest`, read into `view` a piece at a time."""
    while length:
        n = f.readinto(view[:min(len(view), length)])
        if not n:
            raise SyncError(f"{job.local} got shorter while it was being sent; sync it again.")
        digest.update(view[:n])
        length -= n
