"""A provider whose machines live in this process: the provider contract and the money rules, tested in seconds.

Like fsspec's memory filesystem beside the real ones: registered by name like any other provider, but never
offered to users (`CLOUDSD_PROVIDERS=memory` enables it, and the tests do). All `MemoryProvider`s of a
process share one `World`, so a machine created by one command is seen by the next, as on a real account.
The world can be told to fail the way clouds do: no capacity for an offer, a boot that fails, a create call
that goes through and then breaks, a destroy that is refused. Its machines answer no SSH: the endpoint it
reports is whatever `World.ssh` says (a closed port unless a test points it at an sshd).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cloudsd.errors import NoCapacity, ProviderError, ResumeRefused
from cloudsd.machine import CreateRequest, MachineInfo, MachineStatus, Offer, OfferSpec, SSHEndpoint
from cloudsd.providers import Provider, Stoppable

CLOSED_PORT = 9  # discard: nothing listens on 127.0.0.1:9 here, so SSH is refused at once


@dataclass
class MemoryMachine:
    provider_id: str
    label: str
    offer: Offer
    request: CreateRequest
    status: MachineStatus = MachineStatus.BOOTING
    polls: int = 0  # how often `get` has looked at it while it boots


@dataclass
class World:
    """Every memory machine of this process, the offers on sale, and the faults to play."""

    offers: list[Offer] = field(default_factory=list)
    machines: dict[str, MemoryMachine] = field(default_factory=dict)
    no_capacity: set[str] = field(default_factory=set)  # offer ids whose create raises NoCapacity
    fails_boot: set[str] = field(default_factory=set)  # offer ids whose machines fail to start
    boot_polls: int = 0  # `get` calls a machine stays booting before it runs
    create_then_raise: BaseException | None = None  # the create goes through, then this is raised (once)
    refuse_destroy: bool = False  # destroy raises ProviderError and the machine stays
    ssh: SSHEndpoint = field(default_factory=lambda: SSHEndpoint("127.0.0.1", CLOSED_PORT))
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, id or offer id), in order
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add_offer(self, offer_id: str, gpu_name: str = "RTX 4090", price_per_hour: float = 0.5,
                  storage_price_per_hour: float = 0.02) -> None:
        self.offers.append(Offer(provider="memory", offer_id=offer_id, gpu_name=gpu_name, gpu_count=1,
                                 vram_gb=24.0, price_per_hour=price_per_hour, disk_gb=40,
                                 storage_price_per_hour=storage_price_per_hour))

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


WORLD = World()


class MemoryProvider(Stoppable, Provider):
    """Machines in a `World` (the process's own unless one is given)."""

    name = "memory"
    bills_money = True  # priced like a cloud, so every money rule applies to it

    def __init__(self, world: World | None = None, **_ignored: Any) -> None:
        self.world = world or WORLD

    def offers(self, spec: OfferSpec) -> list[Offer]:
        fitting = [
            Offer(**{**o.to_dict(), "disk_gb": spec.disk_gb}) for o in self.world.offers
            if (not spec.gpus or o.gpu_name in spec.gpus)
            and (spec.max_price_per_hour is None or o.price_per_hour <= spec.max_price_per_hour)
        ]
        return sorted(fitting, key=lambda o: o.price_per_hour)

    def create(self, offer: Offer, request: CreateRequest) -> str:
        self.world.calls.append(("create", offer.offer_id))
        if offer.offer_id in self.world.no_capacity:
            raise NoCapacity(f"offer {offer.offer_id} is taken.")
        provider_id = f"m{next(self.world._ids)}"
        self.world.machines[provider_id] = MemoryMachine(provider_id, request.label, offer, request)
        if self.world.create_then_raise is not None:
            exc, self.world.create_then_raise = self.world.create_then_raise, None
            raise exc
        return provider_id

    def get(self, provider_id: str) -> MachineInfo | None:
        machine = self.world.machines.get(provider_id)
        if machine is None:
            return None
        if machine.status is MachineStatus.BOOTING:
            if machine.offer.offer_id in self.world.fails_boot:
                machine.status = MachineStatus.FAILED
            elif machine.polls >= self.world.boot_polls:
                machine.status = MachineStatus.RUNNING
            machine.polls += 1
        return self._info(machine)

    def destroy(self, provider_id: str) -> None:
        self.world.calls.append(("destroy", provider_id))
        if self.world.refuse_destroy:
            raise ProviderError(f"memory refused to destroy {provider_id}.")
        self.world.machines.pop(provider_id, None)

    def list_machines(self) -> list[MachineInfo]:
        return [self._info(m) for m in self.world.machines.values()]

    def stop(self, provider_id: str) -> None:
        machine = self.world.machines.get(provider_id)
        if machine is None:
            raise ProviderError(f"memory has no machine {provider_id}.")
        machine.status = MachineStatus.STOPPED

    def start(self, provider_id: str) -> None:
        machine = self.world.machines.get(provider_id)
        if machine is None or machine.status is not MachineStatus.STOPPED:
            raise ResumeRefused(f"memory cannot resume {provider_id}.")
        machine.status = MachineStatus.RUNNING

    def _info(self, machine: MemoryMachine) -> MachineInfo:
        running = machine.status is MachineStatus.RUNNING
        return MachineInfo(provider=self.name, provider_id=machine.provider_id, label=machine.label,
                           status=machine.status, ssh=self.world.ssh if running else None,
                           price_per_hour=machine.offer.price_per_hour, gpu_name=machine.offer.gpu_name,
                           image=machine.request.image, storage_price_per_hour=machine.offer.storage_price_per_hour)
