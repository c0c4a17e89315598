"""Ending machines: `down`, a stray's end, and the rule for a paid machine that never became ready.

Teardown keeps the ledger row until the provider confirms the machine is gone. A machine created during
`up` that fails before it is ready is destroyed before the error reaches the user, unless they asked to
keep it; then the message says how to end it (`ended_unless_ready`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloudsd.core import lifecycle
from cloudsd.core.access import end_master_of
from cloudsd.core.machines import Providers, destroy_and_confirm, refresh_record
from cloudsd.core.reporter import Reporter
from cloudsd.core.sync import save_outputs
from cloudsd.errors import (
    CloudsdError,
    ConfigError,
    LedgerError,
    NoCapacity,
    ProviderError,
    ProvisioningError,
    SSHError,
)
from cloudsd.ledger import Ledger, MachineRecord, Status
from cloudsd.providers import Provider

NOT_ENDED = "not ended"  # the start of a `down` outcome for a machine it could not act on


def end_record(ledger: Ledger, providers: Providers, record: MachineRecord, *, reason: str,
               deadline_s: float = 180.0) -> None:
    """Destroy the machine behind a ledger row, confirm it is gone, then mark the row terminated.

    A row without a provider id (the create call never answered) is looked up by its label first.
    """
    provider = providers.get(record.provider)
    record = refresh_record(ledger, providers, record)
    if record.status is Status.TERMINATED:
        return
    lifecycle.destroying(ledger, record.name, reason)
    provider_ids = [record.provider_id] if record.provider_id else [
        m.provider_id for m in provider.list_machines() if m.name == record.name
    ]
    end_master_of(record)  # the system ssh's master connection, if a command left one
    for provider_id in provider_ids:
        destroy_and_confirm(provider, provider_id, deadline_s=deadline_s)
    lifecycle.terminated(ledger, record.name, reason)


class TryNextOffer(Exception):
    """This offer did not work out and was cleaned up; the next one may."""

    def __init__(self, cause: CloudsdError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class Attempt:
    """What `ended_unless_ready` knows of the machine it guards: the block sets the provider's id the moment
    there is one (before the ledger records it) and marks it ready."""

    provider_id: str | None = None
    ready: bool = False


class Unrecorded(CloudsdError):
    """A created machine the ledger could not record, already dealt with (destroyed, or its id printed)."""


def end_unrecorded(provider: Provider, name: str, provider_id: str, cause: LedgerError, *,
                   keep: bool) -> CloudsdError:
    """The error for a created machine the ledger could not record: destroyed first, unless `keep`; when it
    was not destroyed, the message carries its provider id and the command that ends it."""
    how = (f"End it with `cloudsd down {name}` once the ledger can be written (it is found by its label), "
           f"or in {provider.name}'s console: machine {provider_id}.")
    if keep:
        return Unrecorded(f"{cause.message} {provider.name} machine {provider_id} ({name}) was kept as asked and "
                          "may still bill.", hint=how)
    try:
        destroy_and_confirm(provider, provider_id)
    except CloudsdError as exc:
        return Unrecorded(f"{cause.message} Destroying {provider.name} machine {provider_id} ({name}) failed too "
                          f"({exc}); it may still bill.", hint=how)
    return Unrecorded(f"{cause.message} {provider.name} machine {provider_id} ({name}) was destroyed, so nothing "
                      "bills unrecorded.", hint=cause.hint)


@contextmanager
def ended_unless_ready(ledger: Ledger, providers: Providers, name: str, *, keep_on_failure: bool,
                       reporter: Reporter) -> Iterator[Attempt]:
    """Guard the reserved row `name` from the create call on: a paid machine that must be ended unless it
    became ready (and, when it did, unless the rest of `up` succeeded).

    - The provider had no capacity (no machine exists): the row is closed as not created; try the next offer.
    - Anything else fails (a boot or SSH that times out, Ctrl-C, a watchdog that cannot be armed): the
      machine is destroyed and confirmed gone before the error goes on. A boot or SSH failure before ready,
      or a create that failed for any reason but a bad key, tries the next offer instead.
    - With `keep_on_failure`, a machine that exists is kept and the error says how to end it.
    """
    attempt = Attempt()
    try:
        yield attempt
    except BaseException as exc:
        what_failed = str(exc) or type(exc).__name__  # Ctrl-C has no message of its own
        if isinstance(exc, LedgerError) and attempt.provider_id is not None:
            # The ledger cannot be written (a full disk): end the machine by its id, never through the ledger.
            raise end_unrecorded(providers.get(ledger.get(name).provider), name, attempt.provider_id, exc,
                                 keep=keep_on_failure) from None
        record = ledger.find(name)
        if record is None or not record.active:
            raise
        if isinstance(exc, NoCapacity) and not record.provider_id:
            lifecycle.not_created(ledger, name, f"not created: {exc}")
            raise TryNextOffer(exc) from None
        if keep_on_failure and record.provider_id:
            raise CloudsdError(
                f"{what_failed}; machine {name!r} was kept as asked and may still bill.",
                hint=f"End it with `cloudsd down {name}`.",
            ) from exc
        what = "failed" if record.provider_id else "create failed"  # the create may have gone through: by label
        reason = f"{what}: {what_failed}"
        reporter.phase("cleaning up", f"destroying {name} ({reason})")
        try:
            end_record(ledger, providers, record, reason=reason)
        except LedgerError as ledger_error:
            if not record.provider_id:
                raise
            raise end_unrecorded(providers.get(record.provider), name, record.provider_id, ledger_error,
                                 keep=False) from None
        except CloudsdError as cleanup_error:
            raise CloudsdError(
                f"{reason}; and destroying the machine failed too ({cleanup_error}). It may still bill.",
                hint=f"Run `cloudsd down {name}` to try again.",
            ) from None
        if isinstance(exc, ProvisioningError | SSHError) and record.provider_id and not attempt.ready:
            raise TryNextOffer(exc) from None
        if isinstance(exc, ProviderError) and not record.provider_id:
            # The create itself failed for anything but a bad key (a CredentialsError is no ProviderError):
            # whatever it made is ended now, so the next offer may work, as after a capacity error.
            raise TryNextOffer(exc) from None
        raise


def down(names: list[str], ledger: Ledger, providers: Providers, reporter: Reporter, *,
         outputs_root: Path | None = None, force: bool = False) -> list[tuple[str, str]]:
    """End each named machine and confirm it is gone; returns (name, outcome) pairs.

    With `outputs_root`, a machine that was ever ready has its outputs pulled into outputs_root/NAME and
    verified first; if that fails it is not destroyed (CloudsdError), unless `force`.
    """
    results: list[tuple[str, str]] = []
    for name in names:
        try:
            providers.get(ledger.get(name).provider)
        except ConfigError as exc:  # a row this version cannot act on must not keep the others alive
            results.append((name, f"{NOT_ENDED}: {exc.message}; end it in that provider's console"))
            continue
        record = refresh_record(ledger, providers, ledger.get(name))  # gone meanwhile (its watchdog)?
        if record.status is Status.TERMINATED:
            results.append((name, "already gone"))
            continue
        if outputs_root is not None and record.ready_at:
            _save_outputs_first(ledger, record, outputs_root / name, reporter, force)
        reporter.phase("destroying", f"{name} on {record.provider}")
        try:
            end_record(ledger, providers, record, reason="down")
        except ProviderError as exc:
            raise CloudsdError(f"could not confirm that {name!r} is gone: {exc}",
                               hint=f"Run `cloudsd down {name}` again; it is safe to repeat.") from None
        results.append((name, "destroyed"))
    return results


def _save_outputs_first(ledger: Ledger, record: MachineRecord, dest: Path, reporter: Reporter, force: bool) -> None:
    reporter.phase("saving outputs", f"{record.name} to {dest}")
    try:
        if record.status is Status.STOPPED:
            # No SSH into a stopped machine: say so at once instead of waiting out an SSH timeout.
            raise CloudsdError(f"it is stopped; its disk still holds them (and bills storage): "
                               f"`cloudsd start {record.name} --detach` first to save them")
        summary = save_outputs(ledger, record, dest)
    except Exception as exc:  # with --force nothing here may keep a billing machine alive, not even a bug
        if not force:
            if not isinstance(exc, (CloudsdError, OSError)):
                raise
            raise CloudsdError(
                f"did not destroy {record.name!r}: its outputs could not be saved ({exc}).",
                hint=f"Fix that and run `cloudsd down {record.name}` again; `--no-outputs` destroys it without "
                     "saving them, `--force` destroys it even when saving fails.") from None
        lost = getattr(exc, "problems", None) or []
        reporter.note(f"{record.name}: outputs not saved ({exc}); destroying anyway (--force)")
        for problem in lost:
            reporter.note(f"  not saved: {problem}")
        return
    if summary.pulled:
        reporter.note(f"{record.name}: saved {len(summary.pulled)} new output(s) in {summary.dest}")


def end_stray(providers: Providers, provider_name: str, provider_id: str) -> None:
    """End a `cloudsd-` machine the ledger does not know, and confirm it is gone."""
    destroy_and_confirm(providers.get(provider_name), provider_id)
