"""The agent on the machine, seen from the laptop: built into one zip file, uploaded when missing and unpacked
there into a folder with its bytecode compiled by the machine's own python3 (so no start compiles it again:
a zip cannot hold a cache, and each stream is a Python start), run as `serve` (requests and replies, one JSON
line each) and as `recv`/`send` data streams.

A sync with nothing to do costs one `exec`: the `serve` command line itself checks that the agent of this
version is there (`test -f … || exit 97`), so a missing agent is found by the first request, not by an
extra round trip; it is then uploaded (one more exec) and the request sent again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
import queue
import shlex
import threading
import time
import zipfile
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from cloudsd.errors import SSHError, SyncError
from cloudsd.machine import SSHEndpoint
from cloudsd.sync import timeline
from cloudsd.ui import UIProfile

AGENT_PACKAGE = "cloudsd.remote.agent"
ZIP_PACKAGE = "cloudsd_agent"
ZIP_MAIN = b"import sys\nfrom cloudsd_agent.main import main\nsys.exit(main(sys.argv))\n"
MISSING = 97
STREAM_READ_BYTES = 8 * 1024 * 1024  # all a paramiko channel holds (a smaller read memmoves the rest)
RESUME_HINT = "Run the same command again: verified files stay, and big files resume where they stopped."
# Run on the machine by `upload` (python3 3.8+, the zip on stdin): unpack into a temporary folder, compile it,
# rename it into place (a concurrent upload of the same version may have won: then drop ours), and remove other
# versions.
INSTALL = """import compileall, io, os, shutil, sys, zipfile
folder, name = sys.argv[1], sys.argv[2]
tmp = os.path.join(folder, ".%s.%d" % (name, os.getpid()))
zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())).extractall(tmp)
compileall.compile_dir(tmp, quiet=1)
try:
    os.rename(tmp, os.path.join(folder, name))
except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
for entry in os.listdir(folder):
    if entry.startswith("agent-") and entry != name:
        path = os.path.join(folder, entry)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
"""


@functools.lru_cache(maxsize=1)
def build_agent() -> tuple[bytes, str]:
    """The agent as one zip file `python3` runs, and its name (`agent-<sha256 prefix>.pyz`). The bytes
    depend only on the sources, so the name changes exactly when the agent does."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        add("__main__.py", ZIP_MAIN)
        for entry in sorted(resources.files(AGENT_PACKAGE).iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                add(f"{ZIP_PACKAGE}/{entry.name}", entry.read_bytes())
    data = out.getvalue()
    return data, f"agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"


def agent_path(state_dir: str) -> str:
    """Where this version of the agent lives on the machine: a folder named after the zip's digest."""
    return posixpath.join(state_dir, build_agent()[1].removesuffix(".pyz"))


def state_dir_for(ui: UIProfile) -> str:
    """Where the agent and its digest index live: beside the UI's data folder (/workspace/.cloudsd)."""
    return posixpath.join(posixpath.dirname(ui.data_dir.rstrip("/")), ".cloudsd")


class AgentFailure(SyncError):
    """The agent answered a request with a failure; `kind` says which (disk-full, hash-mismatch, …)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("message") or reply.get("kind") or "the agent failed"))
        self.kind = str(reply.get("kind") or "")
        self.reply = reply


def lost_connection(exc: BaseException | None = None) -> SyncError:
    why = f" ({exc})" if exc and str(exc) else ""
    return SyncError(f"the SSH connection to the machine dropped during the sync{why}.", hint=RESUME_HINT)


class _Missing(Exception):
    """The agent of this version is not on the machine yet."""


class Stream(Protocol):
    """A running agent command's stdin/stdout: `ssh.ChannelStream` (paramiko) or `openssh.ProcessStream`.
    `lingers`: the command runs to its end after the caller lets go (an `ssh` process does; a paramiko channel
    dies with its connection)."""

    lingers: bool

    def sendall(self, data: bytes | bytearray | memoryview) -> None: ...
    def send_from_file(self, fd: int, offset: int, size: int) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def recv_into_file(self, fd: int, offset: int, size: int) -> int: ...
    def shutdown_write(self) -> None: ...
    def exit_status(self, timeout_s: float) -> int: ...
    def stderr_text(self) -> str: ...
    def close(self) -> None: ...


class Link(Protocol):
    """A way to run commands on the machine: `ssh.Connection` (paramiko) or `openssh.Master`. The windows say
    how many bytes one stream carries per round trip, each way."""

    endpoint: SSHEndpoint
    receive_window_bytes: int
    send_window_bytes: int

    @property
    def active(self) -> bool: ...
    def open_stream(self, command: str) -> Stream: ...
    def run(self, command: str, *, timeout_s: float = ..., stdin: bytes | None = ...) -> tuple[int, str, str]: ...


class Agent:
    """The agent on one machine: `serve` over `link`, data streams over `bulk` (the same link unless given)."""

    def __init__(self, link: Link, state_dir: str, *, bulk: Link | None = None) -> None:
        self.link = link
        self.bulk = bulk or link
        self.state_dir = state_dir
        self.data, self.name = build_agent()
        self.path = agent_path(state_dir)
        self.execs = 0  # agent runs started: tests and benchmarks count round trips with it
        self.installs = 0  # times the agent was put on the machine by this command
        # the link's round trip: timed by an OpenSSH master as it connected, else by `Serve.measure_rtt`
        self.rtt_s: float | None = getattr(self.bulk, "rtt_s", None)

    @property
    def active(self) -> bool:
        return self.link.active and (self.bulk is self.link or self.bulk.active)

    def command(self, job: str) -> str:
        path = shlex.quote(self.path)
        return f"test -f {path}/__main__.py || exit {MISSING}; exec python3 -I {path} {job}"

    def open(self, job: str, *, bulk: bool = False) -> Stream:
        link = self.bulk if bulk else self.link
        try:
            stream = link.open_stream(self.command(job))
        except SSHError as exc:
            raise lost_connection(exc) from None
        self.execs += 1
        return stream

    def upload(self) -> None:
        folder = shlex.quote(self.state_dir)
        command = (f"mkdir -p {folder} && exec python3 -I -c {shlex.quote(INSTALL)} {folder} "
                   f"{shlex.quote(posixpath.basename(self.path))}")
        status, _, err = self.link.run(command, stdin=self.data, timeout_s=120)
        self.execs += 1
        self.installs += 1
        if status == 127:
            raise SyncError("the machine has no python3, which cloudsd's agent needs.",
                            hint="cloudsd's images have it; install python3 in a foreign image.")
        if status != 0:
            raise SyncError(f"could not put cloudsd's agent into {self.state_dir} on the machine "
                            f"({err.strip() or f'exit {status}'}).")

    def serve(self, on_event: Callable[[dict[str, Any]], None] | None = None) -> Serve:
        """A `serve` session whose first request uploads the agent if it is missing."""
        return Serve(self, on_event)


class _Link:
    """One `serve` channel and the requests waiting on it. Its reader marks it ended and answers every waiting
    request under `lock`, and a request registers under the same lock, so a request either is answered by the
    reader or sees that the channel has already ended; it never waits on a channel nobody reads any more."""

    def __init__(self, channel: Stream) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.replies: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self.ended = threading.Event()


class Serve:
    """Requests to the agent's `serve`, one JSON line each, answered in order by id."""

    def __init__(self, agent: Agent, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self.agent = agent
        self.on_event = on_event
        self._link: _Link | None = None
        self._ids = 0
        self._ids_lock = threading.Lock()
        self._send_lock = threading.Lock()  # `ready` notes come from several threads

    @property
    def channel(self) -> Stream | None:
        return self._link.channel if self._link is not None else None

    def start(self) -> None:
        """Start the agent now, so that its start overlaps the caller's own work (the first request would)."""
        if self._link is None:
            self._start()

    def _start(self) -> None:
        timeline.mark("agent-open")
        link = _Link(self.agent.open("serve"))
        self._link = link
        threading.Thread(target=self._read, args=(link,), name="cloudsd-agent-serve", daemon=True).start()

    def _read(self, link: _Link) -> None:
        buf = b""
        try:
            while True:
                data = link.channel.recv(STREAM_READ_BYTES)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._dispatch(link, json.loads(line))
        except (OSError, SSHError, EOFError, ValueError):
            pass
        finally:
            with link.lock:
                link.ended.set()
                for waiting in link.replies.values():
                    waiting.put(None)

    def _dispatch(self, link: _Link, message: dict[str, Any]) -> None:
        if "id" in message:
            message["_at"] = time.perf_counter()
            timeline.mark(f"reply {message['id']}")
            with link.lock:
                waiting = link.replies.get(message["id"])
            if waiting is not None:
                waiting.put(message)
        elif self.on_event is not None and "event" in message:
            self.on_event(message)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; AgentFailure if the agent reports one."""
        for attempt in (1, 2):
            if self._link is None:
                self._start()
            try:
                return self._request(op, fields)
            except _Missing:
                if attempt == 2:
                    break
                self._link = None
                self.agent.upload()
        raise SyncError("cloudsd's agent would not start on the machine.")

    def _request(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self._submit(op, fields)()

    def submit(self, op: str, **fields: Any) -> Callable[[], dict[str, Any]]:
        """Send a request now and return what waits for its reply: requests sent one after another are
        answered in order, so a second one sent before the first's reply costs no round trip of its own. Only
        once the agent runs (after a first `request`)."""
        assert self._link is not None, "submit comes after a request"
        return self._submit(op, fields)

    def _submit(self, op: str, fields: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        link = self._link
        assert link is not None
        with self._ids_lock:
            self._ids += 1
            rid = self._ids
        waiting: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with link.lock:
            if link.ended.is_set():  # the agent's channel ended before this request (exit 97: no agent yet)
                raise self._gone(link)
            link.replies[rid] = waiting
        try:
            timeline.mark(f"request {rid} {op}")
            self._send(link, {"op": op, "id": rid, **fields})
        except BaseException:
            with link.lock:
                link.replies.pop(rid, None)
            raise

        def wait() -> dict[str, Any]:
            try:
                reply = waiting.get()  # the reader answers it, or puts None when the channel ends
            finally:
                with link.lock:
                    link.replies.pop(rid, None)
            if reply is None:
                raise self._gone(link)
            if not reply.get("ok"):
                raise AgentFailure(reply)
            return reply

        return wait

    def measure_rtt(self, samples: int = 3) -> float:
        """The shortest of `samples` `ping` round trips, sent together once the agent runs (so they cost one
        round trip in all), kept as `agent.rtt_s`. A loaded machine delays some replies, never speeds one up,
        so the shortest is the link's. Call after a first request."""
        link = self._link
        assert link is not None, "measure_rtt comes after a request"
        waiting: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        with self._ids_lock:
            ids = list(range(self._ids + 1, self._ids + 1 + samples))
            self._ids += samples
        with link.lock:
            if link.ended.is_set():
                raise self._gone(link)
            for rid in ids:
                waiting[rid] = link.replies[rid] = queue.Queue()
        lines = b"".join(json.dumps({"op": "ping", "id": rid}).encode() + b"\n" for rid in ids)
        timeline.mark("ping")
        try:
            sent = time.perf_counter()
            with self._send_lock:
                link.channel.sendall(lines)
            times = []
            for rid in ids:
                reply = waiting[rid].get()
                if reply is None:
                    raise self._gone(link)
                times.append(float(reply["_at"]) - sent)
        except (OSError, SSHError, EOFError) as exc:
            raise lost_connection(exc) from None
        finally:
            with link.lock:
                for rid in ids:
                    link.replies.pop(rid, None)
        rtt = min(times)
        self.agent.rtt_s = rtt if self.agent.rtt_s is None else min(rtt, self.agent.rtt_s)
        return rtt

    def notify(self, op: str, **fields: Any) -> None:
        """A request without a reply (`ready`)."""
        assert self._link is not None, "notify comes after a request"
        self._send(self._link, {"op": op, **fields})

    def _send(self, link: _Link, message: dict[str, Any]) -> None:
        try:
            with self._send_lock:
                link.channel.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except (OSError, SSHError, EOFError) as exc:
            if not self.agent.active:
                raise lost_connection(exc) from None
            # The connection is up, so the agent's channel ended (on a new machine: exit 97, the agent is
            # not there yet) and paramiko saw its close before the reader saw its end: wait, boundedly, for
            # the reader, then say why it ended.
            link.ended.wait(10)
            raise self._gone(link) from None

    def _gone(self, link: _Link) -> Exception:
        """Why the agent's channel closed: not installed, no python3, a crash, or SSH gone."""
        channel = link.channel
        if not self.agent.active:
            return lost_connection()
        status = channel.exit_status(10)  # the exit status may trail the end of output a little
        if status == MISSING:
            return _Missing()
        text = channel.stderr_text().strip()
        if status == 127:
            return SyncError("the machine has no python3, which cloudsd's agent needs.",
                             hint="cloudsd's images have it; install python3 in a foreign image.")
        return SyncError(f"cloudsd's agent on the machine stopped (exit {status}): {text[-500:] or 'no message'}")

    def close(self) -> None:
        link = self._link
        if link is not None and not link.ended.is_set():
            try:
                self._send(link, {"op": "quit"})
                link.channel.shutdown_write()
            except (SyncError, _Missing):
                pass
            if link.channel.lingers:
                return  # it ends on its own once the agent has saved its index; waiting would cost a round trip
            link.ended.wait(10)
            link.channel.close()
