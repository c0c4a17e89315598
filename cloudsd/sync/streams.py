"""Data streams to and from the agent: how many, opened at once, and read in large pieces.

One stream carries at most one window per round trip. The windows are the link's: sshd gives 2 MiB per
channel for data going up; data coming down gets cloudsd's 8 MiB over paramiko and OpenSSH's fixed 2 MiB over
the system client. So the count follows from the round trip and the window: enough streams that together
they could carry `TARGET_BYTES_PER_S`. On loopback every extra stream is only overhead (an agent process, an
SSH channel), so it is one or two there. The round trip is the one the OpenSSH master timed as it connected
(`openssh.Master.rtt_s`), else the shortest of several pings (`Serve.measure_rtt`); load only lengthens either.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable

from cloudsd.openssh import pwrite_all
from cloudsd.sync.agent import Agent, Stream

# What a transfer should be able to reach where the link allows it (a datacenter or fibre path).
TARGET_BYTES_PER_S = 320_000_000
MAX_AUTO_STREAMS = 8
# Each stream costs an agent process and its Python start on the machine: a stream per 24 MB at most. 128 MB
# of small files at 50 ms over the master, quiet 2-core machine, medians of 3 interleaved (push / pull):
# 3 streams 1.77 / 1.65 s (each window-bound: 3 x 2 MiB per round trip), 5 streams 1.46 / 1.45 s, 8 streams
# 1.52 / 1.43 s. Under heavy load (CPU binds first) 3 were faster than 6-8 there, but that load is the test
# box's, not a user's.
MIN_BYTES_PER_STREAM = 24_000_000
MEASURE_RTT_BYTES = 16 << 20  # below this two streams at most, whatever the round trip: not worth a ping
READ_BYTES = 8 * 1024 * 1024  # all a paramiko channel holds (a smaller read memmoves the rest); a pipe gives less


def stream_count(agent: Agent, direction: str, total_bytes: int, units: int) -> int:
    """Streams for a transfer: CLOUDSD_SYNC_STREAMS if set, else by round trip, window and size."""
    wanted = os.environ.get("CLOUDSD_SYNC_STREAMS", "")
    if wanted.isdigit() and int(wanted) > 0:
        count = int(wanted)
    else:
        rtt = agent.rtt_s if agent.rtt_s is not None else 0.05
        window = agent.bulk.send_window_bytes if direction == "push" else agent.bulk.receive_window_bytes
        count = math.ceil(rtt * TARGET_BYTES_PER_S / window)
        # pushes keep two: one stream's sender waits on the machine's writes while the other's is sent
        count = min(count, MAX_AUTO_STREAMS, math.ceil(total_bytes / MIN_BYTES_PER_STREAM))
        count = max(2 if direction == "push" else 1, count)
        if total_bytes < MEASURE_RTT_BYTES:
            count = min(count, 2)
    return max(1, min(count, units, 16))


def open_streams(agent: Agent, job: str, count: int) -> list[Stream]:
    """Open `count` agent streams at once (each open waits a round trip; in parallel they wait one)."""
    streams: list[Stream | None] = [None] * count
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            streams[i] = agent.open(job, bulk=True)
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        close_quietly([s for s in streams if s is not None])
        raise errors[0]
    return [s for s in streams if s is not None]


# What a pull's streams are started ahead for, before its size is known: an evening's outputs, a few hundred
# images. 1,000 files (128 MB) at 50 ms pulled as fast with 4 streams started ahead (and 2 more after the
# listing) as with 6 or 8, and 0.2 s faster than with none (cold, medians of 8 interleaved).
PULL_AHEAD_BYTES = 4 * MIN_BYTES_PER_STREAM


def prestart_count(agent: Agent, direction: str, total_bytes: int | None = None, units: int = MAX_AUTO_STREAMS) -> int:
    """How many streams to start before the reply that says what they carry: `stream_count` for `total_bytes`
    (a push's, known from its files; a pull's is not known yet: `PULL_AHEAD_BYTES`). 0 when the round trip is
    not known and matters (the transfer measures it first, and then opens its streams)."""
    if total_bytes is None:
        total_bytes = PULL_AHEAD_BYTES
    if not total_bytes or (agent.rtt_s is None and total_bytes >= MEASURE_RTT_BYTES):
        return 0
    return stream_count(agent, direction, total_bytes, units)


class Prestart:
    """Agent streams started ahead, while the request whose reply says what they will carry (a push's
    `index`, a pull's `outputs`) is on its way: each stream's channel opens and its agent starts on the machine
    (a round trip and a Python start) in that reply's shadow instead of after it. Single use: the transfer
    `take`s them, and `close` ends the ones nobody took (a sync with nothing to move)."""

    def __init__(self, agent: Agent, job: str, count: int) -> None:
        self.agent, self.job, self.count = agent, job, count
        self._installs = agent.installs  # an agent put on the machine meanwhile: these found none and ended
        self._streams: list[Stream] = []
        self._error: BaseException | None = None
        self.taken = False
        self._thread = threading.Thread(target=self._open, name="cloudsd-prestart", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            self._streams = open_streams(self.agent, self.job, self.count)
        except BaseException as exc:  # the transfer opens its own, and meets the cause there
            self._error = exc

    def take(self, count: int) -> list[Stream]:
        """`count` open streams: the ones started ahead (the rest closed), and more if they are too few."""
        self._thread.join()
        streams, self._streams, self.taken = self._streams, [], True
        if self._error is not None or self.agent.installs != self._installs:
            close_quietly(streams)
            streams = []
        release(streams[count:])
        streams = streams[:count]
        if len(streams) < count:
            try:
                streams += open_streams(self.agent, self.job, count - len(streams))
            except BaseException:
                close_quietly(streams)
                raise
        return streams

    def close(self) -> None:
        """End what was started and not taken: each agent sees its input end and exits."""
        if not self.taken:
            self._thread.join()
            self.taken = True
            release(self._streams)
            self._streams = []


def release(streams: list[Stream]) -> None:
    """End streams that carried nothing: their input ends, and each agent exits by itself (an `ssh` process
    then ends with it; a paramiko channel is closed here)."""
    for stream in streams:
        try:
            stream.shutdown_write()
            if not stream.lingers:
                stream.close()
        except (OSError, EOFError):
            pass


class StreamReader:
    """JSON lines and exact byte counts from a stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = memoryview(b"")

    def _recv(self) -> bytes:
        data = self.stream.recv(READ_BYTES)
        if not data:
            raise EOFError("the stream ended")
        return bytes(data)

    def readline(self) -> bytes:
        while True:
            at = bytes(self.buf[:65536]).find(b"\n") if self.buf else -1
            if at >= 0:
                line = bytes(self.buf[:at])
                self.buf = self.buf[at + 1:]
                return line
            if len(self.buf) > 65536:
                raise ValueError("a header line longer than 64 KiB")
            self.buf = memoryview(bytes(self.buf) + self._recv())

    def write_into(self, fd: int, offset: int, length: int, written: Callable[[int], None]) -> None:
        """Write the next `length` bytes into file `fd` at `offset`, calling `written(n)` after each piece: what
        was already read first, then the rest straight from the stream (`Stream.recv_into_file`: over the
        system client, the kernel moves it from the pipe into the file)."""
        if self.buf:
            piece = self.buf[:length]
            self.buf = self.buf[len(piece):]
            pwrite_all(fd, piece, offset)
            offset, length = offset + len(piece), length - len(piece)
            written(len(piece))
        while length:
            n = self.stream.recv_into_file(fd, offset, length)
            if not n:
                raise EOFError("the stream ended")
            offset, length = offset + n, length - n
            written(n)

    def read_into(self, length: int, sink: Callable[[memoryview], None]) -> None:
        """Hand the next `length` bytes to `sink`, in the pieces they arrive in."""
        while length:
            if not self.buf:
                self.buf = memoryview(self._recv())
            piece = self.buf[:length]
            self.buf = self.buf[len(piece):]
            sink(piece)
            length -= len(piece)


def close_quietly(streams: list[Stream]) -> None:
    for stream in streams:
        try:
            stream.close()
        except (OSError, EOFError):
            pass
