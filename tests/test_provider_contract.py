"""The provider contract, one suite that every provider passes: local, runpod and vastai (on their fakes, with
real containers behind them), and the in-process memory provider (without Docker: its machines answer no SSH)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cloudsd import keys
from cloudsd.core.machines import destroy_and_confirm, wait_until_running
from cloudsd.machine import CreateRequest, MachineStatus, Offer, OfferSpec, SSHEndpoint
from cloudsd.providers import Provider
from cloudsd.providers.memory import MemoryProvider, World
from cloudsd.ssh import connect


@dataclass
class Subject:
    provider: Provider
    image: str
    sshd: bool = True  # its machines run a real sshd


@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.docker),
                        pytest.param("runpod", marks=pytest.mark.docker),
                        pytest.param("vastai", marks=pytest.mark.docker), "memory"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    name = request.param
    if name == "memory":
        world = World()
        world.add_offer("cheap", price_per_hour=0.3)
        world.add_offer("dear", price_per_hour=0.9)
        provider = MemoryProvider(world)
        yield Subject(provider, "cloudsd-testbed:latest", sshd=False)
        provider.close()
        return
    testbed_image = request.getfixturevalue("testbed_image")
    if name == "local":
        provider = request.getfixturevalue("local_provider")
    elif name == "runpod":
        from cloudsd.providers.runpod import RunPodProvider

        fake = request.getfixturevalue("fake_runpod")
        provider = RunPodProvider(api_key=fake.api_key, base_url=fake.base_url)
    else:
        from cloudsd.providers.vastai import VastProvider

        fake = request.getfixturevalue("fake_vast")
        provider = VastProvider(api_key=fake.api_key, base_url=fake.base_url)
    yield Subject(provider, testbed_image)
    for machine in provider.list_machines():
        provider.destroy(machine.provider_id)
    provider.close()


def _request(subject: Subject, name: str) -> tuple[CreateRequest, keys.KeyPair]:
    pair = keys.create_key_pair(name)
    return CreateRequest(name=name, image=subject.image, public_key=pair.public_line, disk_gb=20,
                         onstart="/opt/cloudsd/boot/entrypoint.sh"), pair


def _cheapest(provider: Provider) -> Offer:
    offers = provider.offers(OfferSpec(disk_gb=20))
    assert offers, "a provider with capacity lists at least one offer"
    return min(offers, key=lambda o: o.price_per_hour)


def test_offers_are_normalised(subject: Subject) -> None:
    offers = subject.provider.offers(OfferSpec(disk_gb=20))
    assert offers
    for offer in offers:
        assert isinstance(offer, Offer)
        assert offer.provider == subject.provider.name
        assert offer.price_per_hour >= 0
        assert offer.disk_gb == 20
        assert offer.offer_id


def test_lifecycle(subject: Subject) -> None:
    provider = subject.provider
    request, pair = _request(subject, "contract")
    started = time.monotonic()
    provider_id = provider.create(_cheapest(provider), request)
    assert isinstance(provider_id, str) and provider_id
    info = provider.get(provider_id)
    assert info is not None, "a machine just created is known to the provider"
    assert info.status in (MachineStatus.CREATING, MachineStatus.BOOTING, MachineStatus.RUNNING)
    assert request.label in [m.label for m in provider.list_machines()]

    running = wait_until_running(provider, provider_id, deadline_s=120)
    assert running.ssh is not None
    if subject.sshd:
        _check_key_installed(running.ssh, pair)
    assert time.monotonic() - started < 180

    destroy_and_confirm(provider, provider_id, deadline_s=60)
    assert provider.get(provider_id) is None
    provider.destroy(provider_id)  # safe to repeat, quiet when gone
    assert request.label not in [m.label for m in provider.list_machines()]


def _check_key_installed(ssh: SSHEndpoint, pair: keys.KeyPair) -> None:
    with connect(ssh, pair.private_path, None, deadline_s=60) as conn:
        code, out, _ = conn.run("cat /root/.ssh/authorized_keys")
        assert code == 0 and pair.public_line.split()[1] in out


def test_unknown_ids_are_gone_not_errors(subject: Subject) -> None:
    unknown: Any = "999999" if subject.provider.name == "vastai" else "doesnotexist0"
    assert subject.provider.get(unknown) is None
    subject.provider.destroy(unknown)


def test_volumes_where_supported(subject: Subject) -> None:
    """A volume: created with cloudsd's label, listed, offers placed where it lives, delete safe to repeat."""
    from cloudsd.volumes import VolumeRequest

    provider = subject.provider
    if not provider.supports_volumes:
        with pytest.raises(NotImplementedError):
            provider.create_volume(VolumeRequest("contract-vol", 10))
        return
    info = provider.create_volume(VolumeRequest("contract-vol", 10))
    try:
        assert info.name == "contract-vol" and info.provider == provider.name and info.placement
        assert [v.provider_id for v in provider.list_volumes() if v.name == "contract-vol"] == [info.provider_id]
        placed = provider.volume_offers(OfferSpec(disk_gb=20), info)
        assert placed and all(o.provider == provider.name for o in placed)
    finally:
        provider.delete_volume(info.provider_id)
    provider.delete_volume(info.provider_id)  # quiet when already gone
    assert [v for v in provider.list_volumes() if v.name == "contract-vol"] == []
