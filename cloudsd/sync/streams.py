"""Data streams to and from the agent: how many, opened at once, and read without paramiko's traps.

One SSH channel carries at most one window per round trip, and sshd's window for data going up is a fixed
2 MiB, so pushes use several channels on the same connection (8 at 50 ms: ~8 × 2 MiB / 50 ms); data coming
down uses cloudsd's own 8 MiB window, so fewer suffice. On loopback (no latency) every extra channel is
only overhead. Reads take everything paramiko has buffered (`recv(WINDOW_BYTES)`): a smaller read makes it
shift the rest of its buffer down, and a window far above 8 MiB makes that quadratic.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import cast

import paramiko

from cloudsd.ssh import WINDOW_BYTES
from cloudsd.sync.agent import Agent

LOW_RTT_S = 0.005


def stream_count(agent: Agent, direction: str, total_bytes: int, units: int) -> int:
    """Streams for a transfer: CLOUDSD_SYNC_STREAMS if set, else by round-trip time and size."""
    wanted = os.environ.get("CLOUDSD_SYNC_STREAMS", "")
    if wanted.isdigit() and int(wanted) > 0:
        count = int(wanted)
    else:
        rtt = agent.rtt_s if agent.rtt_s is not None else 1.0
        if direction == "push":
            count = 2 if rtt < LOW_RTT_S else 8
        else:
            count = 1 if rtt < LOW_RTT_S else 3
        if total_bytes < 16 << 20:
            count = min(count, 2)
    return max(1, min(count, units, 16))


def open_streams(agent: Agent, job: str, count: int, max_packet: int | None = None) -> list[paramiko.Channel]:
    """Open `count` agent channels at once (each open waits a round trip; in parallel they wait one)."""
    channels: list[paramiko.Channel | None] = [None] * count
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            channels[i] = agent.open(job, max_packet=max_packet)
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for channel in channels:
            if channel is not None:
                channel.close()
        raise errors[0]
    return [c for c in channels if c is not None]


class StreamReader:
    """JSON lines and exact byte counts from a channel."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.buf = memoryview(b"")

    def _recv(self) -> bytes:
        data = self.channel.recv(WINDOW_BYTES)
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

    def read_into(self, length: int, sink: Callable[[memoryview], None]) -> None:
        """Hand the next `length` bytes to `sink`, in the pieces they arrive in."""
        while length:
            if not self.buf:
                self.buf = memoryview(self._recv())
            piece = self.buf[:length]
            self.buf = self.buf[len(piece):]
            sink(piece)
            length -= len(piece)


def close_quietly(channels: list[paramiko.Channel]) -> None:
    for channel in channels:
        try:
            channel.close()
        except (OSError, paramiko.SSHException, EOFError):
            pass


def send_all(channel: paramiko.Channel, data: memoryview) -> None:
    """`sendall` without copies: paramiko slices what it is given, and a memoryview slices for free."""
    channel.sendall(cast(bytes, data))
