"""Holding an attached machine: the tunnel stays up with a status line until Ctrl-C, and the budget is kept.

Every second the attached CLI asks `BudgetGuard.tick` for the cost so far and the budget used; it warns
once at the budget's warning share, ends the machine when a time or spend budget is reached, and stops
holding when the machine stops or goes away (its watchdog, or the provider). The CLI only draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from cloudsd.core import lifecycle
from cloudsd.core.access import Session
from cloudsd.core.budget import Deadline, use
from cloudsd.core.cost import SessionCost, session_cost
from cloudsd.core.guard import plan_of
from cloudsd.core.machines import Providers
from cloudsd.core.reporter import Reporter
from cloudsd.core.teardown import down
from cloudsd.core.watchdog import Reading, read
from cloudsd.errors import CloudsdError
from cloudsd.ledger import EventKind, Ledger, MachineRecord, Status
from cloudsd.machine import MachineStatus
from cloudsd.providers import Provider
from cloudsd.ssh import Connection

SEEN_EVERY_S = 30.0  # how often the attached CLI writes what the watchdog reports into the ledger
TICK_S = 1.0


@dataclass(frozen=True)
class GuardView:
    cost: SessionCost
    uptime_s: float
    budget_text: str  # "time 40% · spend 12%", or ""
    warning: str | None  # set once, when a budget first reaches its warning share
    reached: Deadline | None  # a time or spend budget used up: end the machine
    ended: str | None  # the machine stopped or went away: why


class BudgetGuard:
    """What the attached CLI checks every second: cost so far, budget use, the watchdog, the machine."""

    def __init__(self, ledger: Ledger, provider: Provider, name: str,
                 connection: Callable[[], Connection | None], *, check_every_s: float = 15.0,
                 read_every_s: float = 15.0, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.provider = provider
        self.name = name
        self.connection = connection
        self.check_every_s = check_every_s
        self.read_every_s = read_every_s
        self.clock = clock
        self.warned = False
        self._checked = self._read = self._seen = clock()

    def tick(self) -> GuardView:
        now = self.clock()
        record, events = self.ledger.session(self.name)
        plan = plan_of(events)
        cost = session_cost(record, events, now)
        uptime = now - (cost.started_at or record.created_at)
        text, warning, reached = "", None, None
        if plan is not None and cost.started_at is not None:
            used = use(plan.budget, started_at=plan.time_from or cost.started_at, now=now, spent_usd=cost.cost_usd,
                       price_per_hour=record.price_per_hour)
            text = " · ".join(f"{label} {share:.0%}" for label, share in
                              (("time", used.time_share), ("spend", used.spend_share)) if share is not None)
            if used.share is not None and used.share >= plan.budget.warn_at and not self.warned:
                self.warned = True
                warning = (f"{used.share:.0%} of the budget is used ({plan.budget.describe()}); cost so far "
                           f"${cost.cost_usd:.4f}. At the limit the machine ends without pulling outputs: "
                           f"`cloudsd down {self.name}` now saves them first")
            reached = used.reached
            if plan.script and now - self._read >= self.read_every_s:
                self._read = now
                self._note_reading(plan.script, now)
        ended = None
        if now - self._checked >= self.check_every_s:
            self._checked = now
            ended = self._check(record)
        return GuardView(cost, uptime, text, warning, reached, ended)

    def _note_reading(self, script: str, now: float) -> None:
        connection = self.connection()
        if connection is None or not connection.active:
            return
        try:
            reading: Reading = read(connection, script)
        except CloudsdError:
            return
        if now - self._seen >= SEEN_EVERY_S:
            self._seen = now
            self.ledger.event(self.name, EventKind.WATCHDOG_SEEN, reading.to_event())

    def _check(self, record: MachineRecord) -> str | None:
        if record.status in (Status.DESTROYING, Status.TERMINATED):
            return f"the machine is {record.status} (`cloudsd down` from elsewhere?)"
        if not record.provider_id:
            return None
        try:
            info = self.provider.get(record.provider_id)
        except CloudsdError:
            return None
        if info is None or info.status is MachineStatus.STOPPED:
            return lifecycle.reconcile(self.ledger, record, None if info is None else info.status, self.provider)
        return None


@dataclass(frozen=True)
class HoldLine:
    """What the status line shows at one tick."""

    uptime_s: float
    cost_usd: float
    budget_text: str
    warning: str | None
    ssh_healthy: bool


@dataclass(frozen=True)
class HoldEnd:
    """Why holding stopped: "detached" (Ctrl-C), "budget" (cloudsd ended it; `reason`), or "ended" (`reason`)."""

    how: str
    reason: str = ""


def hold(session: Session, ledger: Ledger, providers: Providers, on_tick: Callable[[HoldLine], None],
         announce: Callable[[str], None], reporter_for_down: Callable[[], AbstractContextManager[Reporter]], *,
         sleep: Callable[[float], None] = time.sleep) -> HoldEnd:
    """Keep the tunnel up, calling `on_tick` every second, until Ctrl-C (detach: the machine keeps running),
    a time or spend budget is reached (the machine is ended, without pulling outputs: the watchdog would end
    it at the limit regardless), or the machine stops or goes away. The session is closed on return."""
    record = session.record
    reached: Deadline | None = None
    ended: str | None = None
    try:
        guard = BudgetGuard(ledger, providers.get(record.provider), record.name, lambda: session.forward.connection)
        while True:
            view = guard.tick()
            on_tick(HoldLine(view.uptime_s, view.cost.cost_usd, view.budget_text, view.warning,
                             session.forward.healthy))
            if view.reached or view.ended:
                reached, ended = view.reached, view.ended
                break
            sleep(TICK_S)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    if reached is not None:
        announce(f"{record.name}: {reached.reason}; ending it.")
        lifecycle.budget_reached(ledger, record.name, reached.reason, reached.at)
        with reporter_for_down() as reporter:
            down([record.name], ledger, providers, reporter)
        return HoldEnd("budget", reached.reason)
    if ended is not None:
        return HoldEnd("ended", ended)
    return HoldEnd("detached")
