"""`status`: the ledger joined with each provider's live view, plus strays on the accounts.

A machine the provider says is gone or stopped, which cloudsd did not end or stop itself, is recorded here
with who did it and why (`core/lifecycle.reconcile`): usually the watchdog, for a budget or idleness.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

from cloudsd.errors import CloudsdError, ConfigError
from cloudsd.ledger import Ledger, MachineRecord, Status

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from cloudsd.core.cost import Event, SessionCost
    from cloudsd.core.guard import Plan
    from cloudsd.core.machines import Providers

RECENT_S = 86400.0  # machines the watchdog ended stay listed this long, so `status` can say why they are gone
SILENT_AFTER_S = 120.0  # a watchdog that has not written its state for this long is silent (it writes every poll)


@dataclass(frozen=True)
class StatusRow:
    """One machine as `status` shows it: the ledger's record, the provider's word now and the cost so far."""

    name: str
    provider: str
    provider_id: str | None
    status: str  # the ledger's
    live: str  # the provider's word now: running, booting, stopped, gone, or "unreachable: why"
    gpu: str | None
    price_per_hour: float  # the running rate locked at create
    uptime_s: float  # billed time so far
    cost_usd: float  # estimate from the ledger (running at price_per_hour, stopped at the storage rate)
    url: str | None
    ssh: str | None
    stray: bool = False
    rate_per_hour: float = 0.0  # what it bills now: the running rate, the storage rate while stopped, or 0
    storage_price_per_hour: float = 0.0
    note: str = ""  # who stopped or ended it, and why; what a stopped machine still costs
    budget_used: float | None = None  # the larger share of its time or spend budget used, 0..1+
    budget_warning: bool = False  # at or past the warning share (`warn_at`)
    watchdog_reported_at: float | None = None  # when the machine's watchdog last reported (laptop clock)
    watchdog_silent: bool = False  # a budget is armed but its watchdog does not run or stopped reporting
    ui_restarts: int | None = None  # the web UI crashed and the boot layer started it again this often (asked
    ui_restarted_at: float | None = None  # of the machine with the watchdog's state; None: never, or not asked)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _row(record: MachineRecord, live: str, cost: SessionCost, note: str = "",
         events: list[Event] | None = None, now: float = 0.0) -> StatusRow:
    from cloudsd.core.budget import use
    from cloudsd.core.guard import plan_of

    if cost.state == "stopped" and record.storage_price_per_hour:
        note = (f"{note + '; ' if note else ''}still bills storage ${record.storage_price_per_hour:.4f}/h: "
                f"resume it with `cloudsd start {record.name}`, end it with `cloudsd down {record.name}`")
    elif cost.state == "stopped":
        note = f"{note + '; ' if note else ''}resume it with `cloudsd start {record.name}`"
    if record.attention:  # a row this version cannot read whole is shown, and says so
        note = f"{record.attention}{'; ' + note if note else ''}"
    share, warn = None, False
    plan = plan_of(events or [])
    if plan is not None and cost.started_at is not None and cost.state != "ended":
        share = use(plan.budget, started_at=plan.time_from or cost.started_at, now=now, spent_usd=cost.cost_usd,
                    price_per_hour=record.price_per_hour).share
        warn = share is not None and share >= plan.budget.warn_at
    return StatusRow(
        budget_used=share, budget_warning=warn,
        name=record.name, provider=record.provider, provider_id=record.provider_id, status=record.status,
        live=live, gpu=record.gpu, price_per_hour=record.price_per_hour, uptime_s=cost.duration_s,
        cost_usd=cost.cost_usd, rate_per_hour=cost.accruing_per_hour,
        storage_price_per_hour=record.storage_price_per_hour, note=note,
        url=f"http://127.0.0.1:{record.local_port}" if record.local_port and record.status == "running" else None,
        ssh=f"{record.ssh_user}@{record.ssh_host}:{record.ssh_port}" if record.ssh_host else None,
    )


def _with_watchdog(row: StatusRow, record: MachineRecord, plan: Plan, events: list[Event], now: float) -> StatusRow:
    """When the machine's watchdog last reported (asked over SSH; else the last reading in the ledger), and a
    warning when it is silent: on RunPod and Vast.ai it is the only thing that ends the machine at its budget.
    The same answer carries the web UI's restarts (the boot layer's count), shown when there were any."""
    seen = [data.get("reported_at") or at for at, _, kind, data in events
            if kind in ("watchdog-installed", "watchdog-seen")]
    reported_at: float | None = max(seen) if seen else None
    running, why, restarts, restarted_at = True, "", None, None
    # SSH and the watchdog reader load only when a machine has a watchdog to ask (`status` with none stays light).
    from cloudsd.core.access import reconnect_record
    from cloudsd.core.watchdog import read

    try:
        connection = reconnect_record(record, deadline_s=10)
        try:
            reading = read(connection, plan.script or "")
        finally:
            connection.close()
        running, reported_at = reading.running, reading.reported_at or reported_at
        restarts, restarted_at = reading.ui_restarts, reading.ui_restarted_at
    except CloudsdError as exc:
        why = f" (could not ask it: {exc.message})"
    silent = not running or reported_at is None or now - reported_at > SILENT_AFTER_S
    ago = "never" if reported_at is None else f"{max(0.0, now - reported_at):.0f} s ago"
    if silent:
        text = (f"warning: the watchdog is silent (last reported {ago}){why}; nothing on the machine enforces its "
                f"budget: `cloudsd tunnel {record.name}` restarts it, `cloudsd down {record.name}` ends the machine")
    else:
        text = f"watchdog last reported {ago}"
    if restarts:
        last = "" if restarted_at is None else f", last {max(0.0, now - restarted_at):.0f} s ago"
        text += (f"; the web UI crashed and was started again {restarts} time{'s' if restarts != 1 else ''}{last}: "
                 f"see `cloudsd ssh {record.name} -- tail -n 50 /var/log/cloudsd/ui.log`")
    note = f"{row.note}; {text}" if row.note else text
    return replace(row, note=note, watchdog_reported_at=reported_at, watchdog_silent=silent, ui_restarts=restarts,
                   ui_restarted_at=restarted_at)


def status(ledger: Ledger, providers: Providers, *, sweep: tuple[str, ...] = ()) -> list[StatusRow]:
    """Active machines with their live state, cost and notes, machines the watchdog ended in the last day,
    and, for the providers in `sweep`, `cloudsd-` machines on the account that the ledger does not know."""
    now = time.time()
    rows = _ledger_rows(ledger, providers, now) if ledger.machines() else []
    known = {(r.provider, r.provider_id) for r in ledger.machines() if r.provider_id}
    for provider_name in sweep:
        from cloudsd.machine import MachineStatus  # loaded with a provider anyway; an empty `status` has none

        try:
            machines = providers.get(provider_name).list_machines()
        except CloudsdError:
            continue
        for machine in machines:
            if (provider_name, machine.provider_id) in known:
                continue
            stopped = machine.status is MachineStatus.STOPPED
            storage = machine.storage_price_per_hour or 0.0
            rate = storage if stopped else (machine.price_per_hour or 0.0)
            rows.append(StatusRow(
                name=machine.name or machine.label or machine.provider_id, provider=provider_name,
                provider_id=machine.provider_id, status="stray", live=machine.status.value,
                gpu=machine.gpu_name, price_per_hour=machine.price_per_hour or 0.0, uptime_s=0.0, cost_usd=0.0,
                url=None, ssh=str(machine.ssh) if machine.ssh else None, stray=True, rate_per_hour=rate,
                storage_price_per_hour=storage,
                note=f"stopped: still bills storage ${storage:.4f}/h" if stopped else "",
            ))
    return rows


def _ledger_rows(ledger: Ledger, providers: Providers, now: float) -> list[StatusRow]:
    """The active machines, asked of their providers, and those the watchdog ended in the last day."""
    rows = [_active_row(ledger, providers, record, now) for record in ledger.machines(active_only=True)]
    listed = {(r.provider, r.provider_id) for r in rows}
    for record in ledger.machines():
        recent = record.terminated_at is not None and now - record.terminated_at < RECENT_S
        if (record.status is Status.TERMINATED and recent and record.detail.startswith("ended by the watchdog")
                and (record.provider, record.provider_id) not in listed):
            from cloudsd.core.cost import session_cost

            record, events = ledger.session(record.name)
            rows.append(_row(record, "gone", session_cost(record, events, now), record.detail))
    return rows


def _active_row(ledger: Ledger, providers: Providers, record: MachineRecord, now: float) -> StatusRow:
    """A machine that may still bill, as its provider sees it now (recorded when that changed meanwhile)."""
    # The rules behind a row (cost, budgets, reconciling with the provider) load only when the ledger holds a
    # machine that may bill: `status` on an empty ledger, or with every machine ended, starts without them.
    from cloudsd.core import lifecycle
    from cloudsd.core.cost import session_cost
    from cloudsd.core.guard import plan_of
    from cloudsd.machine import MachineStatus

    live, note = "unknown", ""
    try:
        provider = providers.get(record.provider)
        info = provider.get(record.provider_id) if record.provider_id else None
        if record.provider_id and info is None:
            note, live = lifecycle.reconcile(ledger, record, None, provider, now=now), "gone"
        elif info is not None:
            live = info.status.value + (f" ({info.detail})" if info.detail and info.detail != info.status.value
                                        else "")
            if info.status is MachineStatus.STOPPED and record.status in (Status.RUNNING, Status.BOOTING):
                note = lifecycle.reconcile(ledger, record, info.status, provider, now=now)
            elif info.status is MachineStatus.RUNNING and record.status is Status.STOPPED:
                lifecycle.resumed(ledger, record)
        else:
            live = "not created"
    except CloudsdError as exc:
        live = f"unreachable: {exc.message}"
        if isinstance(exc, ConfigError):  # a provider this version does not know: say so, under the table too
            note = f"needs attention: {exc.message}; it may still bill there: end it in that provider's console"
    record, events = ledger.session(record.name)
    if not note and record.status is Status.STOPPED:
        note = record.detail
    row = _row(record, live, session_cost(record, events, now), note, events, now)
    plan = plan_of(events)
    if plan is not None and plan.script and plan.budget.enforced and record.status is Status.RUNNING \
            and live.startswith("running"):
        row = _with_watchdog(row, record, plan, events, now)
    return row
