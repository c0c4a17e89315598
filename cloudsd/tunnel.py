"""A local port forward over SSH, as a `with` block whose worker errors surface on exit.

Built for a web UI: many concurrent connections (a thread per direction, not select(), which breaks above
1,024 descriptors), 64 KiB socket reads and whole-buffer channel reads with `sendall`, half-close passed
through, a listen backlog of 512, an 8 MiB window on each forwarded channel, and a pty session kept open
so sshd sets TCP_NODELAY (without it, every keep-alive request may wait ~40 ms for a delayed ACK). When
the SSH connection drops (a laptop that slept), the next connection reconnects through `reconnect`.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable

import paramiko

from cloudsd.errors import SSHError, TunnelError
from cloudsd.ssh import WINDOW_BYTES, Connection

CHUNK = 65536
BACKLOG = 512


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
        self._accept_thread: threading.Thread | None = None
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
        self._keeper = self._open_keeper(self.connection)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="cloudsd-tunnel", daemon=True)
        self._accept_thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._keeper is not None:
            self._keeper.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)

    @property
    def healthy(self) -> bool:
        return self.connection.active and not self._closing.is_set()

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

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                client, origin = self._listener.accept()
            except OSError:
                if self._closing.is_set():
                    return
                continue
            threading.Thread(target=self._serve, args=(client, origin), daemon=True).start()

    def _serve(self, client: socket.socket, origin: tuple[str, int]) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection = self.ensure_connected()
            channel = connection.open_forward_channel(self.remote_port, origin)
        except (paramiko.SSHException, OSError, SSHError, EOFError):
            # The UI is not listening (yet), or SSH dropped and cannot come back: close this one
            # connection, as a refused port would.
            client.close()
            return
        self.connections_served += 1
        try:
            upstream = threading.Thread(target=_pump_to_channel, args=(client, channel), daemon=True)
            upstream.start()
            _pump_to_socket(channel, client)
            upstream.join()
        finally:
            try:
                channel.close()  # raises EOFError when the SSH connection has dropped meanwhile
            except (OSError, paramiko.SSHException, EOFError):
                pass
            client.close()


def _pump_to_channel(client: socket.socket, channel: paramiko.Channel) -> None:
    try:
        while True:
            data = client.recv(CHUNK)
            if not data:
                break
            channel.sendall(data)
    except (OSError, paramiko.SSHException, EOFError):
        pass
    finally:
        try:
            channel.shutdown_write()
        except (OSError, paramiko.SSHException, EOFError):
            pass


def _pump_to_socket(channel: paramiko.Channel, client: socket.socket) -> None:
    try:
        while True:
            # Take all that is buffered (at most one window): paramiko deletes a partial read from the front
            # of its buffer, a memmove of everything behind it, which cost 40% of the tunnel's CPU in downloads.
            data = channel.recv(WINDOW_BYTES)
            if not data:
                break
            client.sendall(data)
    except (OSError, paramiko.SSHException, EOFError):
        pass
    finally:
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
