"""`stop` and `start`: put a machine to sleep keeping its disk, and wake it up again the next evening.

Rules:
- `stop` asks the provider to stop the machine and waits until it says stopped; from then the ledger bills
  only storage (`stopped` event). The disk stays, and so do the ledger row, the key and the pinned host key.
- `start` resumes the same machine on the same host with the same disk, waits for SSH and the web UI as
  `up` does, re-arms the watchdog with the budget the machine had (a time budget counts from this start,
  a spend budget keeps counting what the machine already cost) and returns an open `Session`.
- Before anything is resumed, a budget that is already used up refuses the start (no money spent).
- When the provider cannot resume the machine (its host's GPU is rented by someone else, or it stays
  waiting for one past `resume_timeout_s`), the pending start is withdrawn with a stop (so it does not start
  later on its own, unattended and billing), the disk is kept and `ResumeRefused` says what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cloudsd.core import lifecycle
from cloudsd.core.access import Session, end_master_of, reconnect_record, tunnel_to_ready_ui
from cloudsd.core.budget import check_new_budget
from cloudsd.core.cost import session_cost
from cloudsd.core.guard import arm, plan_of
from cloudsd.core.machines import POLL_S, Providers, refresh_record
from cloudsd.core.reporter import Reporter
from cloudsd.core.watchdog import WatchdogSettings
from cloudsd.errors import BudgetError, CloudsdError, ProvisioningError, ResumeRefused
from cloudsd.images import resume_installed_ui
from cloudsd.ledger import Ledger, MachineRecord, Status
from cloudsd.machine import MachineInfo, MachineStatus
from cloudsd.providers import Provider
from cloudsd.ui import profile


@dataclass(frozen=True)
class StartOptions:
    port: int | None = None  # local port for the UI; None: the one used before
    resume_timeout_s: float = 60.0  # how long a resume may wait for the host's GPU before it counts as refused
    boot_timeout_s: float = 600.0  # how long the provider may take to say running once it has the GPU
    ssh_timeout_s: float = 120.0
    ui_timeout_s: float = 600.0
    watchdog: WatchdogSettings = WatchdogSettings()


def stop(name: str, ledger: Ledger, providers: Providers, reporter: Reporter, *,
         deadline_s: float = 180.0, sleep: Callable[[float], None] = time.sleep) -> MachineRecord:
    """Stop a running machine and keep its disk; returns the stopped row. Safe to repeat."""
    record = refresh_record(ledger, providers, ledger.get(name))
    if record.status is Status.STOPPED:
        return record
    if record.status is not Status.RUNNING or not record.provider_id:
        raise CloudsdError(f"machine {name!r} is {record.status}; only a running machine can be stopped.",
                           hint="`cloudsd status` shows its state.")
    provider = providers.get(record.provider)
    if not provider.supports_stop:
        raise CloudsdError(f"{provider.name} cannot stop a machine and keep its disk.",
                           hint=f"End it with `cloudsd down {name}` (its outputs are saved first).")
    reporter.phase("stopping", f"{name} on {provider.name}")
    provider.stop(record.provider_id)
    _wait_for(provider, record.provider_id, MachineStatus.STOPPED, deadline_s, sleep)
    lifecycle.stopped(ledger, name)
    end_master_of(record)  # its connection is dead; the next start may come back at another address anyway
    return ledger.get(name)


def _wait_for(provider: Provider, provider_id: str, wanted: MachineStatus, deadline_s: float,
              sleep: Callable[[float], None]) -> MachineInfo:
    started = time.monotonic()
    while True:
        info = provider.get(provider_id)
        if info is None:
            raise CloudsdError(f"{provider.name} machine {provider_id} is gone.",
                               hint="`cloudsd status` records it as ended.")
        if info.status is wanted:
            return info
        if time.monotonic() - started > deadline_s:
            raise CloudsdError(f"{provider.name} did not report machine {provider_id} {wanted.value} within "
                               f"{deadline_s:.0f} s (it says {info.status.value}).",
                               hint="Run the command again; it is safe to repeat.")
        sleep(POLL_S)


def check_resumable(ledger: Ledger, record: MachineRecord, now: float | None = None) -> None:
    """Refuse a start whose budget is already used up, before anything is resumed."""
    now = time.time() if now is None else now
    _, events = ledger.session(record.name)
    plan = plan_of(events)
    if plan is None or not plan.budget.enforced:
        return
    cost = session_cost(*ledger.session(record.name), now)
    try:
        check_new_budget(plan.budget, started_at=now - 1.0, now=now, spent_usd=cost.cost_usd)
    except BudgetError as exc:
        raise BudgetError(f"{record.name} was not started: {exc.message}",
                          hint=f"Give it a new budget: `cloudsd start {record.name} --max-spend N`, or end it "
                               f"with `cloudsd down {record.name}`.") from None


def start(name: str, ledger: Ledger, providers: Providers, reporter: Reporter, options: StartOptions,
          *, sleep: Callable[[float], None] = time.sleep) -> Session:
    """Resume a stopped machine and return it ready, tunneled, with its watchdog re-armed."""
    record = refresh_record(ledger, providers, ledger.get(name))
    provider = providers.get(record.provider)
    if record.status is Status.RUNNING:
        raise CloudsdError(f"machine {name!r} already runs.", hint=f"Reattach with `cloudsd tunnel {name}`.")
    if record.status is not Status.STOPPED or not record.provider_id:
        raise CloudsdError(f"machine {name!r} is {record.status}; only a stopped machine can be started.",
                           hint="Start a new one with `cloudsd up`.")
    if not provider.supports_stop:
        raise CloudsdError(f"{provider.name} cannot resume a machine.", hint="Start a new one with `cloudsd up`.")
    check_resumable(ledger, record)
    reporter.phase("resuming", f"asking {provider.name} to start {record.provider_id[:12]}")
    try:
        provider.start(record.provider_id)
        info = _wait_resumed(provider, record, options, reporter, sleep)
    except ResumeRefused as exc:
        _withdraw(provider, record.provider_id)
        lifecycle.resume_refused(ledger, name, exc.message)
        raise ResumeRefused(f"{provider.name} could not resume {name!r}: {exc.message}; its disk is kept.",
                            hint=_refused_hint(record)) from None
    assert info.ssh is not None
    lifecycle.started(ledger, name, info.ssh)
    record = ledger.get(name)
    ui = profile(record.ui or "a1111")
    reporter.phase("ssh", f"connecting to {info.ssh}")
    connection = reconnect_record(record, deadline_s=options.ssh_timeout_s, ledger=ledger)
    forward = tunnel_to_ready_ui(
        record, connection, ui, options.port or record.local_port or ui.internal_port,
        deadline_s=options.ui_timeout_s, phase=reporter.phase,
        prepare=lambda: resume_installed_ui(connection, ui.name,  # installed on boot: the image starts only sshd
                                            on_progress=lambda text: reporter.phase("install", text)))
    lifecycle.attached(ledger, name, forward.local_port, forward.url)
    session = Session(ledger.get(name), connection, forward, ui)
    try:
        _rearm(ledger, session, provider, options, reporter)
    except BaseException:
        session.close()
        raise
    reporter.phase("ready", forward.url)
    return session


def _wait_resumed(provider: Provider, record: MachineRecord, options: StartOptions, reporter: Reporter,
                  sleep: Callable[[float], None]) -> MachineInfo:
    """Poll until the machine runs with SSH. Still stopped or waiting for its GPU after `resume_timeout_s`
    means the host cannot take it back: ResumeRefused."""
    assert record.provider_id
    started = time.monotonic()
    got_host = False
    while True:
        info = provider.get(record.provider_id)
        elapsed = time.monotonic() - started
        if info is None:
            raise CloudsdError(f"{provider.name} machine {record.provider_id} is gone.",
                               hint="Start a new one with `cloudsd up`.")
        detail = f"{info.status.value}{' - ' + info.detail if info.detail else ''}"
        reporter.phase("resuming", f"{detail}, {elapsed:.0f} s")
        if info.status is MachineStatus.RUNNING and info.ssh is not None:
            return info
        if info.status is MachineStatus.FAILED:
            raise ProvisioningError(f"{provider.name} machine {record.provider_id} failed to resume ({detail}).",
                                    hint=f"Its disk may be kept: `cloudsd status` shows it; "
                                         f"`cloudsd down {record.name}` ends it.")
        got_host = got_host or info.status is MachineStatus.RUNNING
        if not got_host and elapsed > options.resume_timeout_s:
            raise ResumeRefused(f"the host has no GPU free for it (still {detail} after {elapsed:.0f} s)")
        if elapsed > options.resume_timeout_s + options.boot_timeout_s:
            raise ProvisioningError(f"{provider.name} machine {record.provider_id} was not running "
                                    f"{elapsed:.0f} s after the start ({detail}).",
                                    hint=f"`cloudsd stop {record.name}` stops it again; `cloudsd status` shows it.")
        sleep(POLL_S)


def _withdraw(provider: Provider, provider_id: str) -> None:
    """Take back a start the host could not honour, so the machine does not start later unattended."""
    try:
        provider.stop(provider_id)
    except CloudsdError:
        pass


def _refused_hint(record: MachineRecord) -> str:
    storage = (f" (it bills storage ${record.storage_price_per_hour:.4f}/h meanwhile)"
               if record.storage_price_per_hour else "")
    return (f"Try `cloudsd start {record.name}` again later{storage}, or end it with "
            f"`cloudsd down {record.name} --no-outputs` (that loses what is on its disk) and start a new one "
            f"with `cloudsd up`.")


def _rearm(ledger: Ledger, session: Session, provider: Provider, options: StartOptions, reporter: Reporter) -> None:
    """The budget the machine had, armed again; its time budget counts from this start."""
    _, events = ledger.session(session.record.name)
    plan = plan_of(events)
    if plan is None or not plan.budget.enforced:
        return
    reporter.phase("watchdog", plan.budget.describe())
    arm(ledger, session.record, session.connection, provider, plan.budget, options.watchdog,
        time_from=time.time())

