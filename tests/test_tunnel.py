"""The tunnel under a web UI's load, and across a dropped SSH connection (real container, real sshd)."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from cloudsd.config import resolve
from cloudsd.core.access import Session
from cloudsd.core.machines import Providers, QuietReporter
from cloudsd.core.up import UpOptions, up
from cloudsd.ledger import Ledger

pytestmark = pytest.mark.docker


@pytest.fixture
def session(local_env: dict[str, str]) -> Iterator[Session]:
    settings = resolve({"provider": "local"})
    ledger = Ledger()
    providers = Providers(settings)
    options = UpOptions.from_settings(settings, "tun", port=0)
    running = up(options, ledger, providers, QuietReporter()).session
    yield running
    running.close()
    from cloudsd.core.teardown import down

    down(["tun"], ledger, providers, QuietReporter())
    providers.close()
    ledger.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_many_concurrent_connections(session: Session) -> None:
    port = session.forward.local_port
    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda _: _get(port, "/bench/small"), range(300)))
    assert all(status == 200 and len(body) == 4096 for status, body in results)


def test_keep_alive_and_large_body(session: Session) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", session.forward.local_port, timeout=30)
    for _ in range(20):
        conn.request("GET", "/bench/small")
        response = conn.getresponse()
        assert response.status == 200 and len(response.read()) == 4096
    conn.request("GET", f"/bench/bytes?n={32 * 1024 * 1024}")
    response = conn.getresponse()
    assert len(response.read()) == 32 * 1024 * 1024
    conn.close()


def test_reconnects_after_ssh_drops(session: Session) -> None:
    port = session.forward.local_port
    assert _get(port, "/internal/ping") == (200, b"{}")
    session.forward.connection.transport.close()  # as a laptop waking from sleep finds it
    assert _get(port, "/internal/ping") == (200, b"{}")
    assert session.forward.reconnects == 1


def test_ui_port_closed_means_closed_connection_not_a_hang(session: Session) -> None:
    # A forward to a port nothing listens on inside the machine: the local connection closes at once.
    from cloudsd.tunnel import LocalForward

    with LocalForward(session.connection, 9, 0) as forward:
        conn = http.client.HTTPConnection("127.0.0.1", forward.local_port, timeout=10)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.request("GET", "/")
            conn.getresponse()


def _raw_get(sock: socket.socket, path: str) -> bytes:
    """One keep-alive GET on `sock`; returns the body (the stand-in always sends Content-Length)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the reply's headers"
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the reply"
        body += chunk
    return body


def test_open_connections_cost_no_thread(session: Session) -> None:
    # A page load opens dozens of connections and keeps them alive: the tunnel serves them all from one loop.
    threads_before = threading.active_count()
    served_before = session.forward.connections_served
    sockets = [socket.create_connection(("127.0.0.1", session.forward.local_port), timeout=30) for _ in range(150)]
    try:
        for sock in sockets:
            assert len(_raw_get(sock, "/bench/small")) == 4096
        assert threading.active_count() - threads_before < 10
        assert session.forward.connections_served - served_before == 150
        assert all(len(_raw_get(sock, "/bench/small")) == 4096 for sock in sockets)  # still alive, all of them
    finally:
        for sock in sockets:
            sock.close()


def test_many_channel_opens_in_flight_at_once(session: Session) -> None:
    pending = [session.connection.request_forward_channel(session.forward.remote_port, ("127.0.0.1", 40000 + i))
               for i in range(40)]  # all asked for before any answer is awaited
    channels = [p.wait(30) for p in pending]
    for channel in channels:
        channel.settimeout(30)
        channel.sendall(b"GET /bench/small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    for channel in channels:
        reply = b""
        while chunk := channel.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and len(reply.partition(b"\r\n\r\n")[2]) == 4096
        channel.close()


def test_upload_larger_than_sshds_window(session: Session) -> None:
    # sshd grants a forwarded channel 2 MiB of window; the rest of the body waits for its window adjusts.
    conn = http.client.HTTPConnection("127.0.0.1", session.forward.local_port, timeout=30)
    conn.request("POST", "/nowhere", body=os.urandom(9 * 1024 * 1024))
    response = conn.getresponse()
    assert response.status == 404  # the stand-in replies once it has read the whole body
    response.read()
    conn.request("GET", "/bench/small")  # the same connection: not a byte lost or added
    response = conn.getresponse()
    assert response.status == 200 and len(response.read()) == 4096
    conn.close()


def test_half_close_passes_through(session: Session) -> None:
    with socket.create_connection(("127.0.0.1", session.forward.local_port), timeout=30) as sock:
        sock.sendall(b"GET /bench/small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # the UI sees EOF after the request, answers it, then closes
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and len(reply.partition(b"\r\n\r\n")[2]) == 4096


def test_closing_the_forward_closes_its_connections(session: Session) -> None:
    from cloudsd.tunnel import LocalForward

    with LocalForward(session.connection, session.forward.remote_port, 0) as forward:
        sock = socket.create_connection(("127.0.0.1", forward.local_port), timeout=30)
        assert len(_raw_get(sock, "/bench/small")) == 4096
    try:
        assert sock.recv(1) == b""  # EOF, not a connection left open behind a closed tunnel
    except ConnectionResetError:
        pass
    finally:
        sock.close()


_BLOCKS_SERVER = """
import hashlib, pathlib, socket, sys
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
pathlib.Path(f"/tmp/blocks.{port}.ready").touch()
c, _ = s.accept()
for i in range(768):
    c.sendall(hashlib.sha256(i.to_bytes(4, "big")).digest() * 1024)
c.close()
"""


def _blocks(session: Session, port: int) -> bytes:
    """Start a one-connection server on the machine's `port` that sends 24 MiB of distinct 32 KiB blocks (so a
    byte written out of turn shows); returns what it will send."""
    import hashlib
    import time

    status, _, err = session.connection.run(
        f"rm -f /tmp/blocks.{port}.ready && cat > /tmp/blocks.py && "
        f"(nohup python3 /tmp/blocks.py {port} >/dev/null 2>&1 &)", stdin=_BLOCKS_SERVER.encode())
    assert status == 0, err
    deadline = time.monotonic() + 20
    while session.connection.run(f"test -e /tmp/blocks.{port}.ready")[0] != 0:
        assert time.monotonic() < deadline, "the block server did not start"
        time.sleep(0.1)
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 1024 for i in range(768))


def test_slow_reader_gets_every_byte_in_order_within_the_window(session: Session) -> None:
    # The reader stalls now and then: the forward then buffers what the local socket does not take, and hands
    # data over directly again once that is written out; meanwhile it holds no more than the channel's window
    # (backpressure is sshd's window).
    import time

    from cloudsd.ssh import TUNNEL_WINDOW_BYTES
    from cloudsd.tunnel import LocalForward

    expected = _blocks(session, 7001)
    with LocalForward(session.connection, 7001, 0) as forward:
        sock = socket.create_connection(("127.0.0.1", forward.local_port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        got = bytearray()
        held_most = 0
        try:
            while chunk := sock.recv(65536):
                got += chunk
                if len(got) // (3 << 20) != (len(got) - len(chunk)) // (3 << 20):
                    time.sleep(0.5)  # a stall: sshd's window fills up behind the forward
                    held = sum(len(link.pipe or b"") + len(link.to_client) for link in list(forward._links))
                    held_most = max(held_most, held)
        finally:
            sock.close()
    assert len(got) == len(expected)
    assert got == expected
    assert 0 < held_most <= TUNNEL_WINDOW_BYTES


def test_window_granted_during_a_key_exchange_is_not_lost(session: Session) -> None:
    # paramiko's transport thread writes the data and grants the window, but it must not wait for a key
    # exchange (only it can finish one): a grant that falls into one is owed, and sent once it is over. Lost,
    # sshd would stop for good once its window ran out. The key exchange is what paramiko does to start one:
    # no user message may go out until clear_to_send is set again.
    from cloudsd.tunnel import LocalForward

    expected = _blocks(session, 7002)
    transport = session.connection.transport
    with LocalForward(session.connection, 7002, 0) as forward:
        sock = socket.create_connection(("127.0.0.1", forward.local_port), timeout=30)
        got = bytearray()
        try:
            while len(got) < 1 << 20:
                got += sock.recv(65536)
            with transport.clear_to_send_lock:
                transport.clear_to_send.clear()
            try:
                sock.settimeout(1.0)
                while True:  # until sshd's window is spent: every grant since is owed
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        break
                    assert chunk, "the stream ended during the key exchange"
                    got += chunk
                assert len(got) < len(expected)
            finally:
                with transport.clear_to_send_lock:
                    transport.clear_to_send.set()
            sock.settimeout(30)
            while chunk := sock.recv(65536):
                got += chunk
        finally:
            sock.close()
    assert got == expected


def test_window_is_counted_outside_the_buffers_lock() -> None:
    # paramiko's Transport.close holds a channel's lock while it closes the channel's buffer (which takes the
    # buffer's lock); the transport thread feeding the buffer must therefore not take the channel's lock (to count
    # the window) while it holds the buffer's, or the two deadlock (seen once in a whole run: test_reconnects_…).
    import paramiko

    from cloudsd.tunnel import _ClientPipe

    channel = paramiko.Channel(0)
    channel.in_window_size = 1 << 20
    client, peer = socket.socketpair()
    try:
        client.setblocking(False)
        pipe = _ClientPipe(channel, client)
        held_during_count: list[bool] = []
        count = channel._check_add_window  # type: ignore[attr-defined]

        def counting(n: int) -> int:
            held_during_count.append(pipe.lock.locked())
            return int(count(n))

        channel._check_add_window = counting  # type: ignore[attr-defined]  # the real count, watched
        pipe.feed(b"x" * 4096)
        assert peer.recv(8192) == b"x" * 4096
        assert held_during_count == [False]
    finally:
        client.close()
        peer.close()
