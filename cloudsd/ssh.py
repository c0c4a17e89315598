"""SSH to machines (paramiko): connect with retry, pin the host key, run commands, open channels.

One long-lived `Connection` per machine carries commands, SFTP and the web UI tunnel. The socket is made
here (TCP_NODELAY, which paramiko does not set), aes-gcm is preferred (paramiko's default ctr+hmac costs
about 15%), and the host key is checked against the key pinned on first connect: a mismatch is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloudsd.errors import HostKeyMismatch, SSHError
from cloudsd.machine import SSHEndpoint
from cloudsd.openssh import host_key_mismatch, pwrite_all

# paramiko.config imports `invoke` (and with it unittest.mock: 50-150 ms, a third of paramiko's import) only to
# run the `Match exec` lines of an ssh_config, which cloudsd never reads; paramiko catches the ImportError.
_blocked = sys.modules.setdefault("invoke", None) is None  # type: ignore[arg-type]
import paramiko  # noqa: E402
from paramiko.buffered_pipe import BufferedPipe  # noqa: E402
from paramiko.common import cMSG_CHANNEL_OPEN, cMSG_CHANNEL_REQUEST, cMSG_CHANNEL_WINDOW_ADJUST  # noqa: E402
from paramiko.packet import NeedRekeyException, Packetizer  # noqa: E402

if _blocked:
    del sys.modules["invoke"]  # anyone else may still import it

# paramiko logs every failed banner read (sshd still starting) with a traceback on stderr; the retry loop
# below reports those attempts itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
# A channel carries at most window/RTT; paramiko's reads turn quadratic far above 8 MiB (see
# shared/reference/transfer-performance.md), so 8 MiB it is.
WINDOW_BYTES = 8 * 1024 * 1024
# The tunnel's channels receive into the tunnel's own buffer, which is written out as it arrives (not
# paramiko's), so they can take more: at 50 ms, 12 MiB moved 191 MB/s where 8 MiB moved 134 (ssh -N -L: 28),
# at the same CPU per GB (benchmarks/tunnel.py, quiet machine, 2026-12-07 04:33).
TUNNEL_WINDOW_BYTES = 12 * 1024 * 1024
MAX_PACKET_BYTES = 32768
KEEPALIVE_S = 15
FORWARD_OPEN_TIMEOUT_S = 30.0
# paramiko starts a rekey after 512 MiB, and its transport thread can deadlock in it: a CHANNEL_CLOSE that
# arrives before the server's KEXINIT is answered as a user message, which waits for the kex that only that
# thread can finish (paramiko#822, open); 30 s later the session dies. So never start one from here, as the
# OpenSSH client does not by default: sshd rekeys at its cipher's limit, and sends nothing else meanwhile.
NO_CLIENT_REKEY = 1 << 62


@dataclass(frozen=True)
class HostKey:
    text: str  # "ssh-ed25519 AAAA…"

    @classmethod
    def of(cls, key: paramiko.PKey) -> HostKey:
        return cls(f"{key.get_name()} {key.get_base64()}")


class Connection:
    """An authenticated SSH transport to one machine (paramiko). A `Link` for the agent, as `openssh.Master` is."""

    receive_window_bytes = WINDOW_BYTES  # ours, per channel
    send_window_bytes = 2 * 1024 * 1024  # sshd's, per channel

    def __init__(self, transport: paramiko.Transport, endpoint: SSHEndpoint, host_key: HostKey) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.host_key = host_key
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run `command`; return (exit status, stdout, stderr)."""
        try:
            channel = self.transport.open_session(timeout=timeout_s)
            channel.settimeout(timeout_s)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
                channel.shutdown_write()
            out = _read_all(channel.makefile("rb"))
            err = _read_all(channel.makefile_stderr("rb"))
            status = channel.recv_exit_status()
            channel.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"lost the SSH connection to {self.endpoint} ({exc or type(exc).__name__}).",
                           hint="Run the command again; `cloudsd status` shows whether the machine runs.") from None
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def open_process(self, command: str, *, timeout_s: float = 30.0) -> paramiko.Channel:
        """`command` started and left running, to talk to over the channel's stdin/stdout (caller closes)."""
        try:
            channel = self.transport.open_session(timeout=timeout_s)
            channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"lost the SSH connection to {self.endpoint} ({exc or type(exc).__name__}).") from None
        return channel

    def open_stream(self, command: str, *, window: int = WINDOW_BYTES) -> ChannelStream:
        """`command` on a new session channel, started without waiting for sshd's answer (`start_command`)."""
        try:
            channel = self.transport.open_session(window_size=window, timeout=60)
            start_command(channel, command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"lost the SSH connection to {self.endpoint} ({exc or type(exc).__name__}).") from None
        return ChannelStream(channel)

    def request_forward_channel(self, port: int, origin: tuple[str, int], *,
                                signal: ChannelSignal | None = None,
                                make_buffer: ReceiveBufferFactory | None = None) -> PendingChannel:
        """Ask for a direct-tcpip channel to 127.0.0.1:`port` and return at once: 12 MiB of window when the
        caller's buffer takes the bytes (`make_buffer`, the tunnel's), else paramiko's own with 8 MiB.

        Any number of requests can be in flight together, so a burst of connections (a web UI's page load)
        pays one round trip for all of them, where opening them one after another pays one each.
        """
        return PendingChannel.request(
            self.transport, "direct-tcpip", ("127.0.0.1", port), origin,
            window_bytes=WINDOW_BYTES if make_buffer is None else TUNNEL_WINDOW_BYTES,
            max_packet_bytes=MAX_PACKET_BYTES, signal=signal, make_buffer=make_buffer,
        )

    def open_pty_keeper(self) -> paramiko.Channel:
        """A session with a pty that just waits.

        sshd turns TCP_NODELAY on only once a pty is allocated on the connection; without one, a response
        written in two pieces waits ~40 ms for the client's delayed ACK (shared/reference, section 4).
        """
        channel = self.transport.open_session(timeout=30)
        channel.get_pty(term="dumb", width=80, height=24)
        channel.exec_command("exec sleep 2147483647")
        return channel


class ChannelStream:
    """An agent stream on a paramiko channel: the interface `openssh.ProcessStream` has too."""

    lingers = False

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.channel.sendall(data)  # type: ignore[arg-type]  # paramiko slices it; a memoryview slices for free
        except paramiko.SSHException as exc:
            raise OSError(str(exc)) from None

    def recv(self, size: int) -> bytes:
        try:
            return self.channel.recv(size)
        except paramiko.SSHException as exc:
            raise OSError(str(exc)) from None

    def send_from_file(self, fd: int, offset: int, size: int) -> None:
        """Send `size` bytes of file `fd` from `offset`; EOFError if the file ends first."""
        while size:
            data = os.pread(fd, min(size, 1 << 20), offset)
            if not data:
                raise EOFError("the file ended before the bytes asked for")
            self.sendall(data)
            offset, size = offset + len(data), size - len(data)

    def recv_into_file(self, fd: int, offset: int, size: int) -> int:
        """Up to `size` bytes of the stream written to file `fd` at `offset`; 0 at the end."""
        data = self.recv(size)
        pwrite_all(fd, data, offset)
        return len(data)

    def shutdown_write(self) -> None:
        self.channel.shutdown_write()

    def exit_status(self, timeout_s: float) -> int:
        """The exit status, waiting up to `timeout_s` for it; -1 if none came."""
        self.channel.status_event.wait(timeout_s)
        return self.channel.exit_status if self.channel.exit_status_ready() else -1

    def stderr_text(self) -> str:
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(65536)
        return err.decode(errors="replace")

    def close(self) -> None:
        self.channel.close()


class ChannelSignal(Protocol):
    """What paramiko calls on a channel's event: `set` on the open's answer, on data, EOF and close."""

    def set(self) -> None: ...

    def clear(self) -> None: ...


# The channel's receive buffer of the caller's making, given the channel it buffers for: paramiko's transport
# thread calls its `feed` with each CHANNEL_DATA payload, and `close` on EOF and on close (a BufferedPipe).
ReceiveBufferFactory = Callable[[paramiko.Channel], "BufferedPipe[bytes]"]


class PendingChannel:
    """A channel whose CHANNEL_OPEN is on its way to sshd: `outcome()` says whether it opened, `wait()` blocks.

    paramiko's `open_channel` sends the request and then wakes up every 0.1 s until the answer came: with a
    thousand opens in flight on a 50 ms path that is ten thousand wake-ups a second, each taking the GIL from
    the threads that move the data. Here the request is sent by the same steps (under the transport's lock: a
    channel id, the channel registered with its window, an event that paramiko's transport thread sets on
    the answer, on a refusal and when the connection dies), and nothing polls. The same event is the
    channel's data event (paramiko sets it on data, EOF and close), so one `signal` tells an event loop
    everything that happens on the channel; without one, `wait()` sleeps on a threading.Event. `make_buffer`
    replaces the channel's receive buffer before any data can reach it.
    """

    def __init__(self, transport: paramiko.Transport, channel: paramiko.Channel, event: threading.Event) -> None:
        self.transport = transport
        self.channel = channel  # paramiko keeps its channels in a WeakValueDictionary: this holds it meanwhile
        self.event = event

    @classmethod
    def request(cls, transport: paramiko.Transport, kind: str, dest: tuple[str, int], origin: tuple[str, int], *,
                window_bytes: int, max_packet_bytes: int, signal: ChannelSignal | None = None,
                make_buffer: ReceiveBufferFactory | None = None) -> PendingChannel:
        if not transport.is_active():
            raise paramiko.SSHException("SSH session not active")
        t: Any = transport
        event = threading.Event()
        with t.lock:
            window_bytes = t._sanitize_window_size(window_bytes)
            max_packet_bytes = t._sanitize_packet_size(max_packet_bytes)
            chanid = t._next_channel()
            message = paramiko.Message()
            message.add_byte(cMSG_CHANNEL_OPEN)
            message.add_string(kind)
            message.add_int(chanid)
            message.add_int(window_bytes)
            message.add_int(max_packet_bytes)
            message.add_string(dest[0])
            message.add_int(dest[1])
            message.add_string(origin[0])
            message.add_int(origin[1])
            channel: Any = paramiko.Channel(chanid)
            if make_buffer is not None:
                channel.in_buffer = make_buffer(channel)
            t._channels.put(chanid, channel)
            t.channel_events[chanid] = signal if signal is not None else event
            t.channels_seen[chanid] = True
            channel._set_transport(transport)
            channel._set_window(window_bytes, max_packet_bytes)
            if signal is not None:
                channel.in_buffer.set_event(signal)
        t._send_user_message(message)
        return cls(transport, channel, event)

    def outcome(self) -> paramiko.Channel | None:
        """The channel once sshd opened it; None while it has not answered. SSHException (ChannelException when
        sshd refused, as when nothing listens on the port) or EOFError when it will not open."""
        t: Any = self.transport
        channel: Any = self.channel
        if channel.active:
            return self.channel  # opened (and maybe closed again since: its data is still there to read)
        if channel.closed or t._channels.get(channel.chanid) is not channel or not t.is_active():
            self.forget()
            raise t.get_exception() or paramiko.SSHException("Unable to open channel.")
        return None

    def wait(self, timeout_s: float) -> paramiko.Channel:
        """Block until `outcome()` is known, or SSHException after `timeout_s`.

        paramiko sets no event when the connection is closed from this side, hence the check every second.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.event.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            channel = self.outcome()
            if channel is not None:
                return channel
            if time.monotonic() >= deadline:
                self.forget()
                raise paramiko.SSHException("Timeout opening channel.")

    def forget(self) -> None:
        """Stop waiting for the answer (paramiko then ignores it)."""
        t: Any = self.transport
        chanid = self.channel.get_id()
        with t.lock:
            t.channel_events.pop(chanid, None)
            if t._channels.get(chanid) is self.channel:
                t._channels.delete(chanid)


def consumed(channel: paramiko.Channel, nbytes: int) -> int:
    """Count `nbytes` of the channel's data as taken by its reader, as `Channel.recv` does: returns the window
    to grant sshd now (a tenth of the window or more, at once), else 0."""
    return int(channel._check_add_window(nbytes))  # type: ignore[attr-defined]


def grant_window(channel: paramiko.Channel, nbytes: int, *, wait: bool = True) -> bool:
    """Send sshd a WINDOW_ADJUST of `nbytes` for `channel`. With `wait=False` (paramiko's transport thread,
    which must never wait for a key exchange it alone can finish) nothing is sent while one is under way:
    returns False, and the caller grants it later with `wait=True`."""
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
    message.add_int(channel.remote_chanid)
    message.add_int(nbytes)
    t: Any = channel.get_transport()
    if wait:
        t._send_user_message(message)
        return True
    with t.clear_to_send_lock:
        if not t.clear_to_send.is_set():
            return False
        t._send_message(message)
    return True


class BufferedReads:
    """The packetizer's `read_all`, served from one buffer filled by large socket reads.

    paramiko reads each packet with a `recv` for its first block and one or more for the rest, and joins the
    pieces with `+=`: two or three system calls per 32 KiB packet (sshd never sends bigger ones), each one
    releasing the GIL and waiting to take it back from the threads that consume the data. This asks the socket
    for up to 256 KiB at a time and cuts the packets out of what came. The waiting keeps paramiko's behaviour on
    its 0.1 s socket timeout: keepalives, a closed transport, and a rekey only at a packet boundary.

    Installed once the handshake is done (the banner's leftover bytes, which only paramiko's own `read_all`
    knows, are gone by then); on a paramiko whose packetizer lacks the attributes used, nothing is installed.
    """

    CHUNK_BYTES = 256 * 1024

    def __init__(self, packetizer: Packetizer) -> None:
        self.packetizer = packetizer
        self.sock: socket.socket = packetizer._Packetizer__socket  # type: ignore[attr-defined]
        self.buffer = bytearray()

    @classmethod
    def install(cls, packetizer: Packetizer) -> bool:
        names = ("_Packetizer__socket", "_Packetizer__remainder", "_Packetizer__closed", "_Packetizer__need_rekey")
        if not all(hasattr(packetizer, name) for name in names) or not hasattr(packetizer, "_check_keepalive"):
            return False
        if packetizer._Packetizer__remainder:  # type: ignore[attr-defined]
            return False
        packetizer.read_all = cls(packetizer).read_all  # type: ignore[method-assign]
        return True

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        buffer, packetizer = self.buffer, self.packetizer
        while len(buffer) < n:
            if packetizer.handshake_timed_out():
                raise EOFError()
            try:
                chunk = self.sock.recv(max(self.CHUNK_BYTES, n - len(buffer)))
            except TimeoutError:
                chunk = None
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    chunk = None
                elif packetizer._Packetizer__closed:  # type: ignore[attr-defined]
                    raise EOFError() from None
                else:
                    raise
            if chunk is None:
                if packetizer._Packetizer__closed:  # type: ignore[attr-defined]
                    raise EOFError()
                if check_rekey and not buffer and packetizer._Packetizer__need_rekey:  # type: ignore[attr-defined]
                    raise NeedRekeyException()
                packetizer._check_keepalive()  # type: ignore[attr-defined]
                continue
            if not chunk:
                raise EOFError()
            buffer += chunk
        with memoryview(buffer) as view:
            out = bytes(view[:n])
        del buffer[:n]
        return out


def start_command(channel: paramiko.Channel, command: str) -> None:
    """Start `command` on a new session channel without waiting for sshd's answer (one round trip less).

    paramiko's `exec_command` waits for sshd's reply before anything can be written; sshd handles a channel's
    messages in order, so data sent right after the request reaches the command's stdin. A refused request
    closes the channel (paramiko does that on the failure reply), which the caller sees as a stream that ended
    without an exit status, as it sees a command that could not start.
    """
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("exec")
    message.add_boolean(True)
    message.add_string(command)
    transport = channel.get_transport()
    transport._send_user_message(message)  # type: ignore[attr-defined]


def _read_all(stream: paramiko.ChannelFile) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _open_socket(endpoint: SSHEndpoint, timeout_s: float) -> socket.socket:
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def connect_once(
    endpoint: SSHEndpoint,
    key_path: Path,
    pinned: str | None,
    *,
    timeout_s: float = 15.0,
) -> Connection:
    """One attempt: TCP, SSH handshake, host-key check against `pinned` (None: first connect), key auth."""
    sock = _open_socket(endpoint, timeout_s)
    transport = paramiko.Transport(sock, default_window_size=WINDOW_BYTES, default_max_packet_size=MAX_PACKET_BYTES)
    transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = NO_CLIENT_REKEY
    try:
        options = transport.get_security_options()
        supported = [c for c in PREFERRED_CIPHERS if c in options.ciphers]
        options.ciphers = tuple(supported) + tuple(c for c in options.ciphers if c not in supported)
        transport.banner_timeout = timeout_s
        transport.handshake_timeout = timeout_s
        transport.start_client(timeout=timeout_s)
        host_key = HostKey.of(transport.get_remote_server_key())
        if pinned is not None and host_key.text != pinned:
            raise host_key_mismatch(endpoint)
        pkey = paramiko.PKey.from_path(key_path)  # ECDSA; ed25519 for machines started before
        transport.auth_publickey(endpoint.user, pkey)
        transport.set_keepalive(KEEPALIVE_S)
        BufferedReads.install(transport.packetizer)
        return Connection(transport, endpoint, host_key)
    except BaseException:
        transport.close()
        raise


def connect(
    endpoint: SSHEndpoint,
    key_path: Path,
    pinned: str | None,
    *,
    deadline_s: float,
    on_attempt: Callable[[int, str], None] | None = None,
) -> Connection:
    """Connect, retrying until sshd answers and accepts the key, within `deadline_s`.

    Refused connections, banners cut short (a port proxy that accepts before sshd listens) and keys not yet
    installed are retried; a host-key mismatch is not.
    """
    started = time.monotonic()
    attempt = 0
    last = "no attempt"
    while True:
        attempt += 1
        remaining = deadline_s - (time.monotonic() - started)
        try:
            return connect_once(endpoint, key_path, pinned, timeout_s=max(2.0, min(15.0, remaining)))
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException:
            last = "the machine did not accept cloudsd's key"
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = str(exc) or type(exc).__name__
        if on_attempt:
            on_attempt(attempt, last)
        if time.monotonic() - started + 1.0 > deadline_s:
            raise SSHError(
                f"SSH to {endpoint} did not work within {deadline_s:.0f} s ({last}).",
            )
        time.sleep(min(1.0 + attempt * 0.25, 3.0))
