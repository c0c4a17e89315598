"""Providers built from settings, and the shared waits: for a machine to boot, for it to be gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from cloudsd.config import Settings
from cloudsd.errors import ProviderError, ProvisioningError, RateLimited
from cloudsd.ledger import Ledger, MachineRecord
from cloudsd.models import MachineInfo, MachineStatus
from cloudsd.providers import Provider, get_provider

POLL_S = 1.0


class Reporter(Protocol):
    """How core code tells the user what it is doing; the CLI draws it, tests record it."""

    def phase(self, name: str, detail: str = "") -> None: ...

    def note(self, message: str) -> None: ...


class QuietReporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def phase(self, name: str, detail: str = "") -> None:
        self.lines.append(f"{name}: {detail}")

    def note(self, message: str) -> None:
        self.lines.append(message)


class Providers:
    """Provider objects for one command, built once each from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._built:
            self._built[name] = get_provider(name, **self.settings.section(name))
        return self._built[name]

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
    if not record.provider_id or record.status not in ("running", "booting"):
        return record
    provider = providers.get(record.provider)
    try:
        info = provider.get(record.provider_id)
    except ProviderError:
        return record
    if info is None or info.status is MachineStatus.STOPPED:
        from cloudsd.core.guard import reconcile

        reconcile(ledger, record, None if info is None else info.status, provider)
        return ledger.get(record.name)
    return record


def end_record(ledger: Ledger, providers: Providers, record: MachineRecord, *, reason: str,
               deadline_s: float = 180.0) -> None:
    """Destroy the machine behind a ledger row, confirm it is gone, then mark the row terminated.

    A row without a provider id (the create call never answered) is looked up by its label first.
    """
    provider = providers.get(record.provider)
    record = refresh_record(ledger, providers, record)
    if record.status == "terminated":
        return
    ledger.update(record.name, status="destroying", event="destroying", data={"reason": reason})
    provider_ids = [record.provider_id] if record.provider_id else [
        m.provider_id for m in provider.list_machines() if m.name == record.name
    ]
    for provider_id in provider_ids:
        destroy_and_confirm(provider, provider_id, deadline_s=deadline_s)
    ledger.update(record.name, status="terminated", terminated_at=time.time(), detail=reason,
                  event="terminated", data={"reason": reason})
