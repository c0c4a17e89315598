"""Providers built from settings, and the waits on a provider: for a machine to boot, for it to be gone; the
ledger row as the provider sees it now. Getting into a machine (SSH, the tunnel, the web UI's health) is
`core/access.py`, kept apart so that `status`, `cost` and `down` load no SSH library.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from cloudsd.config import Settings
from cloudsd.errors import CloudsdError, ProviderError, ProvisioningError, RateLimited
from cloudsd.ledger import Ledger, MachineRecord, Status
from cloudsd.providers import Provider, cloud_names, get_provider
from cloudsd.providers.credentials import has_key

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from cloudsd.machine import MachineInfo
    from cloudsd.sync.progress import Progress

# `status` builds Providers on every run, most often with no machine to wait for: cloudsd.machine (dataclasses
# made at import) and cloudsd.sync.progress (threading) are imported where they are used.

POLL_S = 1.0


class QuietReporter:
    """A `Reporter` (core/reporter.py) that draws nothing and keeps the lines (tests read them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def phase(self, name: str, detail: str = "") -> None:
        self.lines.append(f"{name}: {detail}")

    def note(self, message: str) -> None:
        self.lines.append(message)

    @contextmanager
    def transfer(self) -> Iterator[Progress]:
        from cloudsd.sync.progress import NullProgress

        yield NullProgress()


class Providers:
    """Provider objects for one command, built once each from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._built:
            self._built[name] = get_provider(name, **self.settings.section(name))
        return self._built[name]

    def configured_clouds(self) -> tuple[str, ...]:
        """The clouds the user has credentials for (so asking them for offers or strays makes sense). A cloud
        without a key is passed over before its module (and httpx) is imported: `status` stays fast."""
        found = []
        for name in cloud_names():
            if not has_key(name, self.settings.section(name).get("api_key")):
                continue
            try:
                self.get(name)
            except CloudsdError:
                continue
            found.append(name)
        return tuple(found)

    def close(self) -> None:
        for provider in self._built.values():
            provider.close()
        self._built.clear()


def wait_until_running(
    provider: Provider,
    provider_id: str,
    *,
    deadline_s: float,
    on_change: Callable[[MachineInfo], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> MachineInfo:
    """Poll `get` until the machine runs with an SSH endpoint; ProvisioningError on failure or timeout.
    A rate limit never ends the wait: it backs off and keeps polling until the deadline."""
    from cloudsd.machine import MachineStatus

    started = time.monotonic()
    last: MachineInfo | None = None
    pause = provider.poll_interval_s
    while True:
        try:
            info = provider.get(provider_id)
        except RateLimited as exc:
            if time.monotonic() - started > deadline_s:
                raise ProvisioningError(f"{provider.name} machine {provider_id} was not confirmed running after "
                                        f"{deadline_s:.0f} s: {exc.message}") from None
            pause = min(pause * 2, 30.0)
            sleep(pause)
            continue
        pause = provider.poll_interval_s
        if info is None:
            raise ProvisioningError(f"{provider.name} machine {provider_id} disappeared while starting.")
        if last is None or (info.status, info.detail) != (last.status, last.detail):
            if on_change:
                on_change(info)
        last = info
        if info.status is MachineStatus.RUNNING and info.ssh is not None:
            return info
        if info.status in (MachineStatus.FAILED, MachineStatus.STOPPED, MachineStatus.TERMINATED):
            raise ProvisioningError(
                f"{provider.name} machine {provider_id} failed to start ({info.status.value}: {info.detail})."
            )
        if time.monotonic() - started > deadline_s:
            raise ProvisioningError(
                f"{provider.name} machine {provider_id} was not running after {deadline_s:.0f} s "
                f"(last state: {info.status.value}{': ' + info.detail if info.detail else ''})."
            )
        sleep(pause)


def destroy_and_confirm(
    provider: Provider,
    provider_id: str,
    *,
    deadline_s: float = 180.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Destroy, then poll until the provider confirms the machine is gone. ProviderError if it never does."""
    started = time.monotonic()
    destroy_sent = False
    while True:
        try:
            if not destroy_sent or time.monotonic() - started > 30:
                provider.destroy(provider_id)
                destroy_sent = True
            if provider.get(provider_id) is None:
                return
        except ProviderError:
            if time.monotonic() - started > deadline_s:
                raise
        if time.monotonic() - started > deadline_s:
            raise ProviderError(
                f"{provider.name} has not confirmed that machine {provider_id} is gone after {deadline_s:.0f} s; "
                "it may still bill."
            )
        sleep(max(POLL_S, provider.poll_interval_s))


def refresh_record(ledger: Ledger, providers: Providers, record: MachineRecord) -> MachineRecord:
    """The row after asking the provider: a machine that went away or stopped meanwhile (its watchdog, the
    provider) is recorded as such first, so billing ends when it really did and not when cloudsd looked."""
    # Reconciling (and the budget rules behind it) loads here, not with `Providers`, which `status` needs
    # on an empty ledger too.
    from cloudsd.core import lifecycle
    from cloudsd.machine import MachineStatus

    if not record.provider_id or record.status not in (Status.RUNNING, Status.BOOTING):
        return record
    provider = providers.get(record.provider)
    try:
        info = provider.get(record.provider_id)
    except ProviderError:
        return record
    if info is None or info.status is MachineStatus.STOPPED:
        lifecycle.reconcile(ledger, record, None if info is None else info.status, provider)
        return ledger.get(record.name)
    return record


def reachable_record(ledger: Ledger, name: str) -> MachineRecord:
    """The row of a machine cloudsd can SSH into (pinned host key); CloudsdError saying where to look if not."""
    record = ledger.get(name)
    if record.status is Status.TERMINATED or not record.ssh_host or not record.host_key:
        raise CloudsdError(f"machine {name!r} is not reachable ({record.status}).",
                           hint="`cloudsd status` shows its state.")
    return record
