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


def _legacy_pair(name: str) -> keys.KeyPair:
    """The ed25519 pair cloudsd made for a machine before its keys were ECDSA (id_ed25519 and its .pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = keys.machine_dir(name)
    folder.mkdir(parents=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = folder / "id_ed25519"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (folder / "id_ed25519.pub").write_text(f"{public.decode()} cloudsd-{name}\n")
    return keys.KeyPair(private, f"{public.decode()} cloudsd-{name}")


def test_a_machine_started_with_an_ed25519_key_is_still_reached(local_env: dict[str, str], docker_client: Any,
                                                                 cloudsd_home: Path) -> None:
    """New machines get an ECDSA pair; one started before keeps its ed25519 pair, over both SSH clients."""
    from cloudsd.machine import SSHEndpoint
    from cloudsd.openssh import Master, Target
    from cloudsd.ssh import connect

    legacy = _legacy_pair("older")
    assert keys.load_key_pair("older") == legacy
    fresh = keys.create_key_pair("newer")
    assert fresh.public_line.startswith("ecdsa-sha2-nistp256 ") and fresh.private_path.stat().st_mode & 0o077 == 0
    assert not list(fresh.private_path.parent.glob("*.pub")), "a .pub beside the key would bring the query back"
    assert keys.load_key_pair("newer") == fresh
    container, port = _machine(docker_client, local_env["CLOUDSD_IMAGE"], legacy)
    try:
        endpoint = SSHEndpoint("127.0.0.1", port)
        connection = connect(endpoint, legacy.private_path, None, deadline_s=60)
        try:
            host_key = connection.host_key.text
            assert connection.run("echo ok", timeout_s=30)[:2] == (0, "ok\n")
        finally:
            connection.close()
        master = Master.for_target(Target(endpoint, legacy.private_path, host_key))
        assert master is not None
        master.ensure()
        try:
            assert master.active and any("Offering public key" in line for _, line in master.log)
        finally:
            master.exit()
    finally:
        container.remove(force=True)
