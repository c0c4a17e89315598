"""A userspace TCP proxy on 127.0.0.1 that adds a fixed one-way delay in each direction.

    python benchmarks/delay_proxy.py --target 127.0.0.1:2222 --delay-ms 25 [--port 0]

prints `listening 127.0.0.1:PORT` on stdout once it accepts connections, then runs until SIGTERM/Ctrl-C.
As a module:

    with DelayProxy(("127.0.0.1", 2222), delay_ms=25) as proxy:   # a thread with its own event loop
        ... connect to ("127.0.0.1", proxy.port) ...

    proc, port = spawn_proxy(("127.0.0.1", 2222), delay_ms=25)    # the same, in a separate process

It models latency only (the kernel here may have no netem): every chunk read on one side is written to the
other side `delay_ms` after it was read, in order, and reads never wait for writes, so the proxy adds no
bandwidth limit of its own (up to `max_in_flight_bytes` queued per direction, far above any window an SSH
channel uses). Half-close passes through, delayed like data. No loss, no jitter. With 25 ms each way, a
TCP connection through it sees about 50 ms of round-trip time.

Run it as a separate process when the code under test is Python too: it then does not compete for the
GIL with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

READ_BYTES = 256 * 1024
MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
BACKLOG = 1024


class _Direction:
    """One direction of one connection: a reader that stamps chunks and a writer that waits them out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                 max_in_flight: int) -> None:
        self.reader = reader
        self.writer = writer
        self.delay_s = delay_s
        self.max_in_flight = max_in_flight
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.in_flight = 0
        self.have_data = asyncio.Event()
        self.have_room = asyncio.Event()
        self.have_room.set()

    async def read_side(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.in_flight >= self.max_in_flight:
                    self.have_room.clear()
                    await self.have_room.wait()
                data = await self.reader.read(READ_BYTES)
                self.queue.append((loop.time() + self.delay_s, data))
                self.in_flight += len(data)
                self.have_data.set()
                if not data:
                    return
        except (ConnectionError, OSError):
            self.queue.append((loop.time() + self.delay_s, b""))
            self.have_data.set()

    async def write_side(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self.queue:
                    self.have_data.clear()
                    await self.have_data.wait()
                due, data = self.queue.popleft()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(data)
                await self.writer.drain()
                self.in_flight -= len(data)
                self.have_room.set()
        except (ConnectionError, OSError):
            return


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def _serve_one(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target: tuple[str, int],
                     delay_s: float, max_in_flight: int) -> None:
    try:
        # The connect takes no extra delay: the SYN/SYN-ACK round trip is not modelled.
        upstream_r, upstream_w = await asyncio.wait_for(asyncio.open_connection(*target), timeout=10)
    except (OSError, asyncio.TimeoutError):
        client_w.close()
        return
    _nodelay(client_w)
    _nodelay(upstream_w)
    up = _Direction(client_r, upstream_w, delay_s, max_in_flight)
    down = _Direction(upstream_r, client_w, delay_s, max_in_flight)
    tasks = [asyncio.ensure_future(c) for c in (up.read_side(), up.write_side(), down.read_side(), down.write_side())]
    try:
        # Done when both directions have delivered their EOF, or one side failed.
        await asyncio.gather(tasks[1], tasks[3])
    finally:
        for task in tasks:
            task.cancel()
        for w in (client_w, upstream_w):
            w.close()


async def serve(target: tuple[str, int], delay_ms: float, *, host: str = "127.0.0.1", port: int = 0,
                max_in_flight_bytes: int = MAX_IN_FLIGHT_BYTES,
                started: asyncio.Future[int] | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever). `started` receives the listening port."""
    delay_s = delay_ms / 1000

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await _serve_one(r, w, target, delay_s, max_in_flight_bytes)
        except asyncio.CancelledError:
            pass  # the proxy is stopping; nothing to report

    server = await asyncio.start_server(handle, host, port, backlog=BACKLOG, limit=READ_BYTES * 4)
    bound = server.sockets[0].getsockname()[1]
    if started is not None:
        started.set_result(bound)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


class DelayProxy:
    """The proxy on a background thread with its own event loop; a context manager."""

    def __init__(self, target: tuple[str, int], delay_ms: float, *, port: int = 0) -> None:
        self.target = target
        self.delay_ms = delay_ms
        self.requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> int:
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("delay proxy did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"delay proxy failed: {self._error}")
        return self.port

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            started: asyncio.Future[int] = self._loop.create_future()
            task = asyncio.ensure_future(serve(self.target, self.delay_ms, port=self.requested_port,
                                               started=started, stop=self._stop))
            try:
                self.port = await started
            finally:
                self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop already ended
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_proxy(target: tuple[str, int], delay_ms: float, *, python: str = sys.executable,
                timeout_s: float = 15.0) -> tuple[subprocess.Popen[str], int]:
    """Run the proxy as a child process; returns (process, port). The caller terminates it."""
    proc = subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--target", f"{target[0]}:{target[1]}", "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    line = result[0].strip() if result else ""
    if not line.startswith("listening "):
        proc.kill()
        proc.wait(timeout=5)
        raise RuntimeError(f"delay proxy did not start (said {line!r})")
    return proc, int(line.rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay per direction (default 25)")
    parser.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    target = (host or "127.0.0.1", int(port))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started: asyncio.Future[int] = loop.create_future()
        task = asyncio.ensure_future(serve(target, args.delay_ms, port=args.port, started=started, stop=stop))
        bound = await started
        print(f"listening 127.0.0.1:{bound}", flush=True)
        await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
