"""Budgets over a machine's life: arming the watchdog, noticing what it did, and the attached CLI's guard.

How the laptop learns that the watchdog ended a machine, when the machine is gone: the provider keeps no
note of why (a pod-scoped or container key may only stop or terminate its own machine, not relabel it), so
cloudsd reasons from what its ledger knows. A machine found gone after a time or spend deadline the watchdog
was armed with was ended by the watchdog, at that deadline: the watchdog sleeps until a deadline and acts
within a second of it, so billing stops there and not when the laptop happened to look. A machine found
stopped, with an idle budget armed, was stopped by the watchdog for idleness, at the idle deadline it last
reported (an open tunnel is the only way to make web UI requests, so once the laptop is gone that deadline
no longer moves). The estimate is never before the last moment cloudsd saw the machine alive, nor after it
noticed the end. Anything else is reported as ended or stopped outside cloudsd, at the moment it was seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudsd.core.budget import Budget, Deadline, check_new_budget, deadlines, idle_reason
from cloudsd.core.cost import Event, session_cost
from cloudsd.core.watchdog import WatchdogSettings, install, machine_config, measure_offset, read
from cloudsd.errors import BudgetError, CloudsdError
from cloudsd.ledger import EventKind, Ledger, MachineRecord, Status
from cloudsd.providers import Provider

if TYPE_CHECKING:
    from cloudsd.ssh import Connection  # the type only: reading budgets needs no SSH library

# Events that prove the machine was up at the time they were written.
ALIVE = (EventKind.CREATED, EventKind.RUNNING, EventKind.READY, EventKind.ATTACHED, EventKind.HOST_KEY_PINNED,
         EventKind.SSH_MOVED, EventKind.RESUMED, EventKind.WATCHDOG_INSTALLED, EventKind.WATCHDOG_SEEN)


@dataclass(frozen=True)
class Plan:
    """The budget in force for one session, from its latest `budget` event."""

    budget: Budget
    deadlines: tuple[Deadline, ...]
    set_at: float
    watchdog_at: float | None  # when the watchdog was (last) installed with this budget
    script: str | None  # where the watchdog runs on the machine
    idle_deadline_at: float | None  # the idle deadline the watchdog last reported (laptop clock)
    time_from: float | None = None  # a time budget counts from here (a `cloudsd start`); None: from the create


def plan_of(events: list[Event]) -> Plan | None:
    plan: Plan | None = None
    for at, _, kind, data in events:
        if kind == EventKind.BUDGET:
            plan = Plan(Budget.from_dict(data.get("budget") or {}),
                        tuple(Deadline(**d) for d in data.get("deadlines") or []), at, None, None, None,
                        data.get("time_from"))
        elif plan is not None and kind in (EventKind.WATCHDOG_INSTALLED, EventKind.WATCHDOG_SEEN):
            plan = Plan(plan.budget, plan.deadlines, plan.set_at,
                        at if kind == EventKind.WATCHDOG_INSTALLED else plan.watchdog_at,
                        data.get("script") or plan.script,
                        data.get("idle_deadline_at") or plan.idle_deadline_at, plan.time_from)
    return plan


def arm(ledger: Ledger, record: MachineRecord, connection: Connection, provider: Provider, budget: Budget,
        settings: WatchdogSettings, *, now: float | None = None, time_from: float | None = None) -> Plan:
    """Check `budget` against what the session has cost, put it into the watchdog on the machine, record it.
    `time_from` (a `cloudsd start`) makes a time budget count from then instead of from the create; a plan
    re-armed later keeps it."""
    record, events = ledger.session(record.name)
    now = time.time() if now is None else now
    cost = session_cost(record, events, now)
    old = plan_of(events)
    time_from = time_from if time_from is not None else (old.time_from if old else None)
    started = time_from or (cost.started_at if cost.started_at is not None else now)
    check_new_budget(budget, started_at=started, now=now, spent_usd=cost.cost_usd)
    found = deadlines(budget, started_at=started, now=now, spent_usd=cost.cost_usd,
                      price_per_hour=record.price_per_hour)
    offset, rtt = measure_offset(connection)
    calls = {action: call.to_dict() for action in ("stop", "terminate")
             if provider.supports_self_stop and (call := provider.self_stop_call(action)) is not None}
    config = machine_config(provider.name, budget, found, offset, settings, end_calls=calls or None)
    reading = install(connection, config)
    ledger.event(record.name, EventKind.BUDGET, {"budget": budget.to_dict(), "deadlines": [d.to_dict() for d in found],
                                                 "time_from": time_from})
    ledger.event(record.name, EventKind.WATCHDOG_INSTALLED, {**reading.to_event(), "rtt_s": round(rtt, 4), "config": config})
    plan = plan_of(ledger.session(record.name)[1])
    assert plan is not None
    return plan


def provider_deadline_of(events: list[Event]) -> float | None:
    """The server-side deadline asked for at create (`supports_deadline`), from the `created` event."""
    for _, _, kind, data in events:
        if kind == EventKind.CREATED and data.get("deadline_at") is not None:
            return float(data["deadline_at"])
    return None


def attribute(plan: Plan | None, events: list[Event], found: str, noticed_at: float, *,
              self_terminates: bool) -> dict[str, Any] | None:
    """Whether the watchdog explains a machine found `found` ("gone" or "stopped"), and when it acted.

    Returns the `watchdog-ended` event data, or None when nothing the watchdog was armed with fits.
    """
    if plan is None or plan.watchdog_at is None:
        return None
    alive = [at for at, _, kind, _ in events if kind in ALIVE]
    last_alive = max(alive) if alive else plan.watchdog_at
    deadline_action = "terminate" if self_terminates else "stop"
    wanted = "terminate" if found == "gone" else "stop"
    candidates: list[tuple[float, str, str]] = []
    if deadline_action == wanted:
        candidates += [(d.at, d.reason, d.kind) for d in plan.deadlines]
    budget = plan.budget
    if budget.idle_s and (budget.idle_action if self_terminates else "stop") == wanted:
        known = plan.idle_deadline_at or plan.watchdog_at + budget.idle_s
        candidates.append((known, idle_reason(budget.idle_s), "idle"))
    fitting = [c for c in candidates if c[0] <= noticed_at]
    if not fitting:
        return None
    at, reason, basis = min(fitting)
    return {"action": wanted, "reason": reason, "basis": basis, "at": min(max(at, last_alive), noticed_at),
            "noticed_at": noticed_at}


def change_budget(ledger: Ledger, record: MachineRecord, connection: Connection, provider: Provider,
                  changes: dict[str, Any], settings: WatchdogSettings) -> tuple[Plan, list[str]]:
    """`cloudsd budget NAME …` on a running machine: the new budget, refused with numbers if already used up."""
    if record.status is not Status.RUNNING:
        raise BudgetError(f"machine {record.name!r} is {record.status}; budgets apply to running machines.",
                          hint="`cloudsd status` shows its state.")
    _, events = ledger.session(record.name)
    old = plan_of(events)
    merged = {**(old.budget.to_dict() if old else Budget().to_dict()),
              **{k: v for k, v in changes.items() if v is not None}}
    plan = arm(ledger, record, connection, provider, Budget.from_dict(merged), settings)
    notes = []
    server_side = provider_deadline_of(events)
    if server_side is not None and any(d.at > server_side for d in plan.deadlines):
        notes.append(f"{provider.name} still ends the machine at the deadline set when it was created "
                     f"({time.strftime('%H:%M:%S', time.localtime(server_side))}); that one cannot be moved.")
    return plan, notes


def ensure_watchdog(ledger: Ledger, record: MachineRecord, connection: Connection, provider: Provider,
                    settings: WatchdogSettings) -> str | None:
    """Restart the watchdog of a machine with a budget if it no longer runs; a note for the user, or None."""
    _, events = ledger.session(record.name)
    plan = plan_of(events)
    if plan is None or plan.script is None or not plan.budget.enforced:
        return None
    try:
        if read(connection, plan.script).running:
            return None
    except CloudsdError:
        pass
    try:
        arm(ledger, record, connection, provider, plan.budget, settings)
    except BudgetError as exc:
        return f"the budget is used up ({exc.message}); end the machine with `cloudsd down {record.name}`"
    return "the watchdog was not running; it runs again with the same budget"
