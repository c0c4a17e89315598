"""A ledger row without a pinned host key gets one on its first connect, and is checked from then on (item 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudsd import keys
from cloudsd.core.access import reconnect_record
from cloudsd.errors import HostKeyMismatch
from cloudsd.ledger import Ledger
from tests.fakes.machines import TEST_NETWORK

pytestmark = pytest.mark.docker


def _machine(docker_client: Any, image: str, pair: keys.KeyPair) -> tuple[Any, int]:
    container = docker_client.containers.run(
        image, detach=True, environment={"PUBLIC_KEY": pair.public_line}, network=TEST_NETWORK,
        ports={"22/tcp": ("127.0.0.1", None)}, labels={"cloudsd.machine": "unpinned"})
    container.reload()
    return container, int(container.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"])


def test_first_connect_pins_and_a_later_key_is_refused(local_env: dict[str, str], docker_client: Any,
                                                       cloudsd_home: Path) -> None:
    pair = keys.create_key_pair("unpinned")
    container, port = _machine(docker_client, local_env["CLOUDSD_IMAGE"], pair)
    try:
        ledger = Ledger()
        ledger.reserve("unpinned", "local", "img")
        ledger.update("unpinned", status="running", provider_id=container.id, ssh_host="127.0.0.1", ssh_port=port,
                      ssh_user="root", key_path=str(pair.private_path))  # as an older cloudsd left it: no host key
        record = ledger.get("unpinned")
        with reconnect_record(record, deadline_s=60) as connection:  # no ledger given: it opens its own
            seen = connection.host_key.text
        assert ledger.get("unpinned").host_key == seen
        assert pair.known_hosts_path.read_text() == f"[127.0.0.1]:{port} {seen}\n"

        # the same stale record (read before the pin) is now checked against the pinned key
        ledger.update("unpinned", host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostKeyOtherHostKeyOtherHost")
        with pytest.raises(HostKeyMismatch):
            reconnect_record(record, deadline_s=10, ledger=ledger)
    finally:
        container.remove(force=True)
