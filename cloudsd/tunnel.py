"""A local port forward over SSH, as a `with` block whose worker errors surface on exit.

Built for a web UI, which opens dozens of connections on every page load: one thread runs an event loop
(epoll, no 1,024-descriptor limit) over the listening socket and every forwarded connection, so a
connection costs no thread. A channel open is sent the moment a connection is accepted and the loop goes
on at once, so a burst of connections waits one round trip for all its channels. paramiko's transport
thread writes each channel's data straight to its local socket while that takes it (`_ClientPipe`), and
tells the loop through one socketpair about the rest (opened, refused, data left over, EOF, closed).
64 KiB socket reads, whole-buffer channel reads, half-close passed through, a listen backlog of 512, a
12 MiB window on each forwarded channel (`ssh.TUNNEL_WINDOW_BYTES`), and a pty session kept open so sshd sets TCP_NODELAY (without it,
every keep-alive request may wait ~40 ms for a delayed ACK). When the SSH connection drops (a laptop that
slept), the next connection reconnects through `reconnect`.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable

import paramiko
from paramiko.buffered_pipe import BufferedPipe

from cloudsd.errors import CloudsdError, SSHError, TunnelError
from cloudsd.ssh import (
    FORWARD_OPEN_TIMEOUT_S,
    Connection,
    PendingChannel,
    consumed,
    grant_window,
)

CHUNK = 65536
BACKLOG = 512
ACCEPTS_PER_TURN = 256  # then the loop serves the connections it has before it accepts more
WINDOW_RECHECK_S = 0.01  # how often a connection waiting for sshd's window looks again (paramiko has no event)
CHANNEL_ERRORS = (OSError, paramiko.SSHException, EOFError)


def bind_local(port: int, *, host: str = "127.0.0.1", tries: int = 100) -> tuple[socket.socket, int]:
    """Listen on `port`, or on the next free one when it is busy. Returns (socket, port)."""
    last: OSError | None = None
    for candidate in range(port, min(port + tries, 65536)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, candidate))
            sock.listen(BACKLOG)
            return sock, sock.getsockname()[1]  # not `candidate`: port 0 means "any free port"
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise TunnelError(f"cannot listen on {host}:{candidate} ({exc.strerror}).") from None
            last = exc
    raise TunnelError(f"no free local port from {port} to {port + tries - 1} ({last}).",
                      hint="Pick another with --port.")


class _Wakeup:
    """The loop's doorbell: paramiko's transport thread queues a link and rings (one byte) unless it rang already."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.ready: collections.deque[_Link] = collections.deque()
        self._rung = False

    def notify(self, link: _Link) -> None:
        self.ready.append(link)
        if not self._rung:
            self._rung = True
            try:
                self.writer.send(b"\0")
            except OSError:
                pass  # a byte is there already, or the loop has ended

    def drain(self) -> list[_Link]:
        try:
            self.reader.recv(4096)  # the one byte rung (a few more only when close() rang as well)
        except OSError:
            pass
        self._rung = False  # before taking the queue: a link queued from here on rings again
        links: list[_Link] = []
        while self.ready:
            links.append(self.ready.popleft())
        return links

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class _Signal:
    """The event paramiko sets for one channel (open answered, data, EOF, close): queues its link for the loop."""

    def __init__(self, link: _Link, wakeup: _Wakeup) -> None:
        self.link = link
        self.wakeup = wakeup

    def set(self) -> None:
        self.wakeup.notify(self.link)

    def clear(self) -> None:
        pass  # the loop tries a read whenever it is told, and a read with nothing there is harmless


class _ClientPipe(BufferedPipe):  # type: ignore[type-arg]  # generic only in the stubs
    """The channel's receive buffer, which hands each payload straight to the local socket from paramiko's
    transport thread while that socket takes it.

    Only what the socket does not take (a slow reader) is buffered here, and then the loop is woken to write it
    out: new data queues behind it (`held`) until the loop has written all of it and finds nothing more. Without
    this every 32 KiB packet woke the loop and crossed threads (buffer, lock, doorbell, epoll, a second copy):
    over a third of the tunnel's CPU per GB. Backpressure is sshd's window, granted back only for bytes the local
    socket has taken (`Channel.recv` grants them when read, which let a stalled reader's connection hold two
    windows). The transport thread never waits for a key exchange, which only it can finish: a grant that
    falls into one is left `owed` to the loop.
    """

    def __init__(self, channel: paramiko.Channel, client: socket.socket) -> None:
        super().__init__()
        self.channel = channel
        self.client = client  # non-blocking
        self.held = False  # bytes wait in the loop (here or in the link): new data queues behind them
        self.owed = 0  # window that could not be granted during a key exchange; the loop grants it
        self.lock: threading.Lock = self._lock  # type: ignore[attr-defined]

    def feed(self, data: bytes) -> None:
        sent = 0
        with self.lock:
            if not self.held:
                try:
                    sent = self.client.send(data)
                except OSError:  # full (BlockingIOError), or gone: the loop finds out when it writes
                    sent = 0
                if sent < len(data):
                    data = data[sent:]
                    self.held = True
                else:
                    data = b""
            if data:
                self._buffer.frombytes(data)  # type: ignore[attr-defined]
                if self._event is not None:  # type: ignore[attr-defined]
                    self._event.set()  # type: ignore[attr-defined]
        # The window is counted outside our lock: paramiko takes the channel's lock for it, and a thread closing
        # the transport holds that lock while it closes this buffer (which takes ours): both inside, they deadlock.
        grant = consumed(self.channel, sent) if sent else 0
        if grant:
            try:
                granted = grant_window(self.channel, grant, wait=False)
            except CHANNEL_ERRORS:
                return  # the connection is going away: paramiko closes the channel
            if not granted:
                with self.lock:
                    self.owed += grant
                    if self._event is not None:  # type: ignore[attr-defined]
                        self._event.set()  # type: ignore[attr-defined]

    def take(self) -> bytes | None:
        """All that is buffered; b"" at EOF once nothing is left; None when nothing is, and then the transport
        thread writes directly again (call only with nothing of the link's left unwritten)."""
        with self.lock:
            buffer = self._buffer  # type: ignore[attr-defined]
            if len(buffer):
                data: bytes = buffer.tobytes()
                del buffer[:]
                return data
            if self._closed:  # type: ignore[attr-defined]
                return b""
            self.held = False
            return None

    def take_owed(self) -> int:
        with self.lock:
            owed, self.owed = self.owed, 0
            return owed

    def hold(self) -> None:
        """From now on buffer everything (the local socket is closing)."""
        with self.lock:
            self.held = True


class _Link:
    """One forwarded connection: the local socket, its channel (once sshd opened it) and the bytes in between."""

    def __init__(self, client: socket.socket, requested_at: float) -> None:
        self.client = client
        self.requested_at = requested_at
        self.pending: PendingChannel | None = None
        self.channel: paramiko.Channel | None = None
        self.pipe: _ClientPipe | None = None
        self.to_client = memoryview(b"")  # read from the channel, not yet taken by the local socket
        self.to_channel = b""  # read from the local socket, waiting for sshd's window
        self.client_eof = False  # the local side sent EOF (or can send no more): the channel's write side is shut
        self.channel_eof = False  # the machine side sent EOF: the local socket's write side is shut
        self.events = 0  # what the selector watches on the local socket
        self.closed = False


class LocalForward:
    """Forward 127.0.0.1:<local port> to 127.0.0.1:`remote_port` on the machine."""

    def __init__(
        self,
        connection: Connection,
        remote_port: int,
        local_port: int,
        *,
        reconnect: Callable[[], Connection] | None = None,
    ) -> None:
        self.connection = connection
        self.remote_port = remote_port
        self.requested_port = local_port
        self.local_port = local_port
        self._reconnect = reconnect
        self._listener: socket.socket | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._keeper: paramiko.Channel | None = None
        self._loop_thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wakeup: _Wakeup | None = None
        self._links: set[_Link] = set()
        self._opening: set[_Link] = set()
        self._window_waits: set[_Link] = set()
        self._accept_paused_until = 0.0
        self.connections_served = 0
        self.reconnects = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def __enter__(self) -> LocalForward:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
        if exc_type is None and self._errors:
            raise TunnelError(f"the tunnel failed: {self._errors[0]}")

    def start(self) -> None:
        self._listener, self.local_port = bind_local(self.requested_port)
        self._listener.setblocking(False)
        self._keeper = self._open_keeper(self.connection)
        self._wakeup = _Wakeup()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ)
        self._loop_thread = threading.Thread(target=self._loop, name="cloudsd-tunnel", daemon=True)
        self._loop_thread.start()

    def close(self) -> None:
        """Stop listening and close every forwarded connection."""
        self._closing.set()
        if self._wakeup is not None:
            try:
                self._wakeup.writer.send(b"\0")
            except OSError:
                pass
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(timeout=2)
        if self._listener is not None:
            self._listener.close()
        if self._keeper is not None:
            self._keeper.close()

    @property
    def healthy(self) -> bool:
        loop_alive = self._loop_thread is not None and self._loop_thread.is_alive()
        return self.connection.active and not self._closing.is_set() and loop_alive

    def ensure_connected(self) -> Connection:
        """The live connection, reconnecting first when it dropped (and a way to reconnect was given)."""
        with self._lock:
            if self.connection.active:
                return self.connection
            if self._reconnect is None:
                raise SSHError("the SSH connection to the machine dropped.")
            self.connection = self._reconnect()
            self._keeper = self._open_keeper(self.connection)
            self.reconnects += 1
            return self.connection

    @staticmethod
    def _open_keeper(connection: Connection) -> paramiko.Channel | None:
        try:
            return connection.open_pty_keeper()
        except (paramiko.SSHException, OSError):
            return None  # only latency suffers without it

    # -- the loop (one thread; everything below runs in it) --------------------------------------------

    def _loop(self) -> None:
        assert self._selector is not None and self._wakeup is not None
        selector, wakeup = self._selector, self._wakeup
        try:
            while not self._closing.is_set():
                timeout: float | None = None
                if self._window_waits:
                    timeout = WINDOW_RECHECK_S
                elif self._opening or self._accept_paused_until:
                    timeout = 1.0
                for key, mask in selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.data is not None:
                        link: _Link = key.data
                        if mask & selectors.EVENT_WRITE and not link.closed:
                            self._write_client(link)
                        if mask & selectors.EVENT_READ and not link.closed:
                            self._read_client(link)
                for link in dict.fromkeys(wakeup.drain()):
                    if not link.closed:
                        self._on_channel(link)
                for link in list(self._window_waits):
                    if not link.closed and link.channel is not None and link.channel.send_ready():
                        self._window_waits.discard(link)
                        self._send_channel(link, b"")
                self._expire(time.monotonic())
        except Exception as exc:  # a bug here must not pass silently: `healthy` turns false, `with` raises it
            self._errors.append(exc)
        finally:
            for link in list(self._links):
                self._close_link(link)
            if self._listener is not None:
                self._listener.close()
            selector.close()
            wakeup.close()

    def _accept(self) -> None:
        assert self._listener is not None and self._wakeup is not None
        for _ in range(ACCEPTS_PER_TURN):
            try:
                client, origin = self._listener.accept()
            except BlockingIOError:
                return
            except OSError:
                # Out of descriptors (EMFILE) or the like: the backlog keeps the connection; try again shortly
                # instead of spinning on a listener that stays readable.
                self._pause_accepting()
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, time.monotonic())

            def make_buffer(channel: paramiko.Channel, link: _Link = link) -> _ClientPipe:
                link.pipe = _ClientPipe(channel, link.client)
                return link.pipe

            # The channel is asked for now, and the loop goes on: a page load's burst of connections has all
            # its opens in flight at once and waits one round trip for all of them.
            try:
                link.pending = self.ensure_connected().request_forward_channel(
                    self.remote_port, origin, signal=_Signal(link, self._wakeup), make_buffer=make_buffer)
            except (CloudsdError, *CHANNEL_ERRORS):
                client.close()  # SSH dropped and cannot come back (yet): close this one connection
                continue
            self._links.add(link)
            self._opening.add(link)

    def _pause_accepting(self) -> None:
        assert self._selector is not None
        if not self._accept_paused_until:
            self._selector.unregister(self._listener)  # type: ignore[arg-type]
        self._accept_paused_until = time.monotonic() + 0.1

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            assert self._selector is not None and self._listener is not None
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ)
        for link in [link for link in self._opening if now - link.requested_at > FORWARD_OPEN_TIMEOUT_S]:
            if link.pending is not None:
                link.pending.forget()
            self._close_link(link)

    def _on_channel(self, link: _Link) -> None:
        """Something happened on the link's channel: it opened or failed, data came, or it ended."""
        if link.channel is None:
            assert link.pending is not None
            try:
                channel = link.pending.outcome()
            except CHANNEL_ERRORS:
                # The UI is not listening (yet), or SSH dropped: close this one connection, as a refused port would.
                self._close_link(link)
                return
            if channel is None:
                return
            channel.settimeout(0.0)
            link.channel = channel
            self._opening.discard(link)
            self.connections_served += 1
            self._watch(link)
        self._read_channel(link)

    def _read_channel(self, link: _Link) -> None:
        """Write out what the channel's buffer holds (what the local socket did not take from paramiko's transport
        thread directly), and pass on EOF."""
        pipe = link.pipe
        assert link.channel is not None and pipe is not None
        if owed := pipe.take_owed():
            self._grant(link, owed)
        while not link.to_client and not link.channel_eof:
            data = pipe.take()
            if data is None:
                return  # nothing there: the transport thread writes directly again
            if not data:
                link.channel_eof = True
                try:
                    link.client.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._maybe_done(link)
                return
            link.to_client = memoryview(data)
            self._write_client(link)

    def _write_client(self, link: _Link) -> None:
        try:
            sent = link.client.send(link.to_client)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close_link(link)  # the local side went away
            return
        link.to_client = link.to_client[sent:]
        if sent and link.channel is not None and (grant := consumed(link.channel, sent)):
            self._grant(link, grant)
        self._watch(link)
        if not link.to_client:
            self._read_channel(link)

    def _grant(self, link: _Link, nbytes: int) -> None:
        assert link.channel is not None
        try:
            grant_window(link.channel, nbytes)
        except CHANNEL_ERRORS:
            pass  # the connection is going away: paramiko closes the channel

    def _read_client(self, link: _Link) -> None:
        try:
            data = link.client.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._close_link(link)
            return
        if not data:
            self._end_upstream(link)
            return
        self._send_channel(link, data)

    def _send_channel(self, link: _Link, data: bytes) -> None:
        assert link.channel is not None
        data = link.to_channel + data
        while data:
            try:
                sent = link.channel.send(data)  # at most one packet, and never more than sshd's window allows
            except TimeoutError:
                sent = 0  # sshd's window is full: wait for it, reading no more from the local side meanwhile
                self._window_waits.add(link)
                break
            except CHANNEL_ERRORS:
                data = b""
                self._end_upstream(link)
                break
            if sent == 0:  # the channel was closed or shut for writing
                data = b""
                self._end_upstream(link)
                break
            data = data[sent:]
        link.to_channel = data
        self._watch(link)

    def _end_upstream(self, link: _Link) -> None:
        link.client_eof = True
        link.to_channel = b""
        self._window_waits.discard(link)
        if link.channel is not None:
            try:
                link.channel.shutdown_write()
            except CHANNEL_ERRORS:
                pass
        self._watch(link)
        self._maybe_done(link)

    def _maybe_done(self, link: _Link) -> None:
        if link.client_eof and link.channel_eof and not link.to_client:
            self._close_link(link)

    def _watch(self, link: _Link) -> None:
        """Watch the local socket for what the link can use now: reads while the channel takes more, writes
        while bytes wait for it."""
        assert self._selector is not None
        if link.closed:
            return
        events = 0
        if link.channel is not None and not link.client_eof and not link.to_channel:
            events |= selectors.EVENT_READ
        if link.to_client:
            events |= selectors.EVENT_WRITE
        if events == link.events:
            return
        if not link.events:
            self._selector.register(link.client, events, link)
        elif not events:
            self._selector.unregister(link.client)
        else:
            self._selector.modify(link.client, events, link)
        link.events = events

    def _close_link(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        if link.events and self._selector is not None:
            try:
                self._selector.unregister(link.client)
            except (KeyError, ValueError, OSError):
                pass
        if link.pipe is not None:
            link.pipe.hold()  # so paramiko's transport thread never writes to a closed (or reused) descriptor
        link.client.close()
        if link.channel is not None:
            try:
                link.channel.close()  # raises EOFError when the SSH connection has dropped meanwhile
            except CHANNEL_ERRORS:
                pass
        self._links.discard(link)
        self._opening.discard(link)
        self._window_waits.discard(link)
