"""The tunnel under a web UI's load, and across a dropped SSH connection (real container, real sshd)."""

from __future__ import annotations

import concurrent.futures
import http.client
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
