"""`up` never harms a machine that has the name, and never leaves a created machine unrecorded (issue 11, 1 and 3).

On the real local Docker engine: the create call makes a real container, and the test checks the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudsd import keys
from cloudsd.config import resolve
from cloudsd.core.machines import Providers, QuietReporter
from cloudsd.core.up import UpOptions, up
from cloudsd.errors import CloudsdError, LedgerError, ProviderError
from cloudsd.ledger import Ledger
from tests.fixtures_local import own_machines

pytestmark = pytest.mark.docker


def _containers(docker_client: Any, name: str) -> list[Any]:
    return own_machines(docker_client, name)  # not another xdist worker's machine of the same name


def _options(name: str) -> UpOptions:
    return UpOptions.from_settings(resolve({"provider": "local"}), name)


def _existing_machine(ledger: Ledger, name: str) -> tuple[bytes, str]:
    pair = keys.create_key_pair(name)
    ledger.reserve(name, "local", "img")
    ledger.update(name, provider_id="abc", status="running", key_path=str(pair.private_path))
    keys.write_known_hosts(pair, "127.0.0.1", 2222, "ssh-ed25519 AAAApinned")
    return pair.private_path.read_bytes(), pair.known_hosts_path.read_text()


class RacingLedger(Ledger):
    """Another `up` claims the name after this one looked: the early check passes, reserve() must refuse."""

    def check_free(self, name: str) -> None:
        return None


def test_racing_up_leaves_the_first_machine_intact(local_env: dict[str, str], docker_client: Any,
                                                    cloudsd_home: Path) -> None:
    ledger = RacingLedger()
    key, known_hosts = _existing_machine(ledger, "busy")
    providers = Providers(resolve({"provider": "local"}))
    try:
        with pytest.raises(CloudsdError, match="already exists"):
            up(_options("busy"), ledger, providers, QuietReporter())
    finally:
        providers.close()
    folder = keys.machine_dir("busy")
    assert keys.load_key_pair("busy").private_path.read_bytes() == key
    assert (folder / "known_hosts").read_text() == known_hosts
    assert ledger.get("busy").status == "running" and ledger.get("busy").provider_id == "abc"
    assert _containers(docker_client, "busy") == []


def test_up_of_a_running_name_is_refused_before_anything(local_env: dict[str, str], cloudsd_home: Path) -> None:
    ledger = Ledger()
    key, known_hosts = _existing_machine(ledger, "busy")
    providers = Providers(resolve({"provider": "local"}))
    reporter = QuietReporter()
    try:
        with pytest.raises(CloudsdError, match="already exists"):
            up(_options("busy"), ledger, providers, reporter)
    finally:
        providers.close()
    assert reporter.lines == [], "not even the offers were asked for"
    assert keys.load_key_pair("busy").private_path.read_bytes() == key


class FullDiskLedger(Ledger):
    """Every write from the moment the provider id is to be recorded fails, as on a full disk."""

    full = False

    def update(self, name: str, **kwargs: Any) -> None:
        if "provider_id" in kwargs:
            self.full = True
        if self.full:
            raise LedgerError(f"cannot write the ledger at {self.path} (database or disk is full).",
                              hint="Free some disk space and try again.")
        super().update(name, **kwargs)


def test_full_disk_after_create_destroys_the_machine(local_env: dict[str, str], docker_client: Any,
                                                     cloudsd_home: Path) -> None:
    ledger = FullDiskLedger()
    providers = Providers(resolve({"provider": "local"}))
    try:
        with pytest.raises(CloudsdError) as caught:
            up(_options("full"), ledger, providers, QuietReporter())
    finally:
        providers.close()
    text = str(caught.value)
    assert "disk is full" in text and "was destroyed" in text, text
    assert _containers(docker_client, "full") == [], "the machine that could not be recorded is gone"


def test_full_disk_and_a_failing_destroy_print_the_id_and_the_command(
        local_env: dict[str, str], docker_client: Any, cloudsd_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsd.providers.local import LocalProvider

    def refuse(self: LocalProvider, provider_id: str) -> None:
        raise ProviderError("the engine refused")  # the border: a provider that cannot destroy right now

    monkeypatch.setattr(LocalProvider, "destroy", refuse)
    monkeypatch.setattr("cloudsd.core.machines.POLL_S", 0.01)
    monkeypatch.setattr("cloudsd.core.teardown.destroy_and_confirm",
                        _quick(__import__("cloudsd.core.machines", fromlist=["x"]).destroy_and_confirm))
    ledger = FullDiskLedger()
    providers = Providers(resolve({"provider": "local"}))
    try:
        with pytest.raises(CloudsdError) as caught:
            up(_options("stuck"), ledger, providers, QuietReporter())
    finally:
        providers.close()
    (container,) = _containers(docker_client, "stuck")
    text = str(caught.value)
    assert container.id in text and "cloudsd down stuck" in text and "may still bill" in text, text


def _quick(func: Any) -> Any:
    def call(provider: Any, provider_id: str, **kwargs: Any) -> None:
        func(provider, provider_id, deadline_s=0.5)

    return call
