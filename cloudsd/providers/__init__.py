"""The provider contract and a lazy registry of providers by name.

Importing this module imports no network, SSH or Docker library: each provider module is imported on first
use, so `cloudsd --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

from cloudsd.errors import ConfigError

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from typing import Any

    from cloudsd.machine import CreateRequest, MachineInfo, Offer, OfferSpec
    from cloudsd.volumes import VolumeInfo, VolumeRequest


@dataclass(frozen=True)
class Entry:
    """Where a provider's class lives, and what cloudsd may say about it without importing it."""

    target: str  # "module:Class", imported on first use
    cloud: bool = True  # rents machines on an account: swept for strays, tried by `--provider auto`
    listed: bool = True  # offered in `--provider` choices and the config; unlisted ones need ENABLE_ENV


# Every list of provider names (flag choices, the config, `auto`, the stray sweep) comes from here.
REGISTRY: dict[str, Entry] = {
    "local": Entry("cloudsd.providers.local:LocalProvider", cloud=False),
    "runpod": Entry("cloudsd.providers.runpod:RunPodProvider"),
    "vastai": Entry("cloudsd.providers.vastai:VastProvider"),
    # A machine world in this process: the provider contract and the money rules are tested on it without
    # Docker or a network. Never offered to users; CLOUDSD_PROVIDERS=memory enables it (tests do).
    "memory": Entry("cloudsd.providers.memory:MemoryProvider", cloud=False, listed=False),
}
ENABLE_ENV = "CLOUDSD_PROVIDERS"  # comma-separated unlisted providers to accept, e.g. "memory"


@dataclass(frozen=True)
class SelfStopCall:
    """One HTTP request the on-machine watchdog sends to stop or end its own machine, built by the provider so
    the watchdog knows no vendor. `${NAME}` and `${NAME:-default}` in `url`, `headers` and `body` are filled on
    the machine from its environment (the provider's machine-scoped key never leaves it). The watchdog follows
    no redirect and counts the call done only on a status in `ok_statuses` whose JSON body holds every
    `ok_fields` pair (after the same filling), or on a status in `gone_statuses` (the machine is gone)."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any = None
    ok_statuses: tuple[int, ...] = (200,)
    ok_fields: dict[str, Any] = field(default_factory=dict)
    gone_statuses: tuple[int, ...] = ()
    needs_env: tuple[str, ...] = ()  # variables that must be set on the machine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Provider(ABC):
    """A place that rents machines. One module per provider; only that module knows the vendor.

    Rules every provider keeps (the contract suite in tests/test_provider_contract.py checks them):
    - `create` returns as soon as the provider has given an id; it never waits for the machine to boot.
      Waiting and polling live in the core, with explicit deadlines.
    - `get` never sleeps; it returns None once the provider no longer knows the machine (it is gone).
    - `destroy` is safe to repeat and quiet when the machine is already gone.
    - Vendor JSON becomes `Offer`/`MachineInfo` here, and vendor errors become cloudsd errors here.
    """

    name: str = ""
    # Capabilities, as attributes: the core never asks "is this vastai?".
    supports_stop: bool = False  # can stop a machine and keep its disk (storage still bills)
    stop_keeps: str = "its disk"  # what a stop keeps, as `cloudsd stop` says it ("/workspace (…)" on RunPod)
    supports_self_stop: bool = False  # a credential scoped to the machine lets it end itself
    supports_deadline: bool = False  # the provider itself can end the machine at a time set at create
    bills_money: bool = True  # the local engine costs nothing
    prepares_images: bool = False  # the image must be on this computer's engine first (the core pulls or builds it)
    reports_billing: bool = False  # `billing()` says what the provider actually charged, per machine
    supports_volumes: bool = False  # storage that outlives a machine: `create_volume`, `CreateRequest.volume_id`
    reports_volume_billing: bool = False  # `volume_billing()` says what each volume was charged
    ssh_timeout_s: float = 120.0  # how long SSH may take to answer once the provider says running
    boot_timeout_s: float = 600.0  # how long the provider may take to say running (image pulls)
    poll_interval_s: float = 1.0  # the pace of status polls while waiting (some APIs limit each endpoint)

    @abstractmethod
    def offers(self, spec: OfferSpec) -> list[Offer]:
        """Live offers that fit `spec`, cheapest first."""

    @abstractmethod
    def create(self, offer: Offer, request: CreateRequest) -> str:
        """Start a machine from `offer`; return the provider's id as soon as there is one."""

    @abstractmethod
    def get(self, provider_id: str) -> MachineInfo | None:
        """The machine's live state, or None when the provider says it is gone. Never sleeps."""

    @abstractmethod
    def destroy(self, provider_id: str) -> None:
        """End the machine and every charge. Safe to repeat; quiet when already gone."""

    @abstractmethod
    def list_machines(self) -> list[MachineInfo]:
        """Every machine on the account labelled `cloudsd-…` (for the stray sweep)."""

    def check(self) -> str:
        """One cheap live call proving the credentials work; a short line on success, an error otherwise."""
        self.list_machines()
        return "reachable"

    def stop(self, provider_id: str) -> None:
        """Stop the machine, keeping its disk. Only where `supports_stop`."""
        raise NotImplementedError(f"{self.name} cannot stop a machine; use destroy")

    def start(self, provider_id: str) -> None:
        """Resume a stopped machine on the same host with the same disk. Only where `supports_stop`.
        Returns once the provider accepted the request (the core waits for it to run). When the provider
        cannot resume it (the host's GPU is taken meanwhile), raise `ResumeRefused`; the disk must be kept."""
        raise NotImplementedError(f"{self.name} cannot start a stopped machine")

    def self_stop_call(self, action: str) -> SelfStopCall | None:
        """The request that stops (`action` "stop") or ends ("terminate") a machine from inside it with the
        credential the provider put there. Only where `supports_self_stop`; None elsewhere."""
        return None

    def billing(self, since: float, until: float) -> list[dict[str, Any]]:
        """What the provider charged per machine between two epoch times, as dicts with `provider_id`,
        `amount_usd`, `start` and `end` (epoch seconds or None). Only where `reports_billing`."""
        raise NotImplementedError(f"{self.name} does not report billing")

    # -- volumes (only where `supports_volumes`) ----------------------------------------------------
    def create_volume(self, request: VolumeRequest) -> VolumeInfo:
        """Create a volume labelled `cloudsd-NAME`; return as soon as the provider has given an id. It bills per
        GB-month from now until `delete_volume`, whether or not a machine uses it."""
        raise NotImplementedError(f"{self.name} has no volumes")

    def list_volumes(self) -> list[VolumeInfo]:
        """Every volume on the account labelled `cloudsd-…`, with the machines using each."""
        raise NotImplementedError(f"{self.name} has no volumes")

    def delete_volume(self, provider_id: str) -> None:
        """Delete a volume and its data. Safe to repeat; quiet when already gone. The provider refuses while a
        machine uses it (ProviderError)."""
        raise NotImplementedError(f"{self.name} has no volumes")

    def volume_billing(self, since: float, until: float) -> dict[str, float]:
        """What the provider charged per volume id between two epoch times. Only where `reports_volume_billing`."""
        raise NotImplementedError(f"{self.name} does not report volume billing")

    def volume_offers(self, spec: OfferSpec, volume: VolumeInfo) -> list[Offer]:
        """Live offers a machine using `volume` can be started from: those placed where the volume lives."""
        return [offer for offer in self.offers(spec) if offer.region == volume.placement]

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing to release
        """Release connections. Safe to call more than once."""


class Stoppable(ABC):
    """A provider that can stop a machine and keep its disk (storage still bills)."""

    supports_stop = True

    @abstractmethod
    def stop(self, provider_id: str) -> None:
        """Stop the machine, keeping its disk."""


class ReportsBilling(ABC):
    """A provider that says what it charged, per machine, and what the account holds."""

    reports_billing = True

    @abstractmethod
    def billing(self, since: float, until: float) -> list[dict[str, Any]]:
        """See `Provider.billing`."""

    @abstractmethod
    def account(self) -> dict[str, Any]:
        """The account's money: `balance_usd` or `credit_usd`, and `spend_usd_per_hour`, where known."""


class KeyedAccount:
    """A provider that signs in with an API key; `doctor` shows where the key came from and its last four."""

    credential_source: str
    key_last4: str


def _enabled() -> set[str]:
    return {n.strip() for n in os.environ.get(ENABLE_ENV, "").split(",") if n.strip()}


def provider_names() -> list[str]:
    """Every provider a user may name: the listed ones, plus unlisted ones enabled by CLOUDSD_PROVIDERS."""
    enabled = _enabled()
    return [name for name, entry in REGISTRY.items() if entry.listed or name in enabled]


def cloud_names() -> tuple[str, ...]:
    """The listed providers that rent machines on an account: `--provider auto` and the stray sweep."""
    return tuple(name for name, entry in REGISTRY.items() if entry.cloud and entry.listed)


def provider_class(name: str) -> type[Provider]:
    """The class of the provider called `name`, imported but not built: its capabilities, without a key."""
    if name not in provider_names():
        raise ConfigError(
            f"unknown provider {name!r}", hint=f"Choose one of: {', '.join(provider_names())}."
        ) from None
    module_name, _, class_name = REGISTRY[name].target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_provider(name: str, **settings: Any) -> Provider:
    """Import and build the provider called `name` with its settings (keys, base URLs)."""
    return provider_class(name)(**settings)
