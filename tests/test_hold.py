"""The attached CLI's budget loop (core/hold.py) in-process on the memory provider: a budget reached ends the
machine and says why, a machine gone meanwhile stops the hold, Ctrl-C detaches and leaves it running, and the
warning comes once. The SSH side of a session is a stand-in: these rules never touch the connection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloudsd.config import resolve
from cloudsd.core import lifecycle
from cloudsd.core.budget import Budget
from cloudsd.core.cost import session_cost
from cloudsd.core.hold import BudgetGuard, HoldLine, hold
from cloudsd.core.machines import Providers, QuietReporter, wait_until_running
from cloudsd.errors import ProvisioningError
from cloudsd.ledger import EventKind, Ledger, Status
from cloudsd.machine import CreateRequest, MachineStatus, OfferSpec
from cloudsd.providers.memory import MemoryProvider, World
from tests.support.memory_machines import running_machine


@dataclass
class StandInForward:
    healthy: bool = True
    connection: Any = None


@dataclass
class StandInSession:
    """What `hold` uses of a Session: its record, the forward's health, and close()."""

    record: Any
    forward: StandInForward = field(default_factory=StandInForward)
    url: str = "http://127.0.0.1:7860"
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def _running(world: World, ledger: Ledger, budget: Budget | None = None, name: str = "box") -> str:
    provider_id = running_machine(world, ledger, name, price_per_hour=3.6)
    if budget is not None:
        ledger.event(name, EventKind.BUDGET, {"budget": budget.to_dict(), "deadlines": []})
    return provider_id


def _hold(ledger: Ledger, session: StandInSession, on_tick: Any = None) -> tuple[Any, list[str], list[HoldLine]]:
    said: list[str] = []
    lines: list[HoldLine] = []

    def tick(line: HoldLine) -> None:
        lines.append(line)
        if on_tick:
            on_tick(line)

    providers = Providers(resolve({"provider": "memory"}))
    end = hold(session, ledger, providers, tick, said.append, _quiet, sleep=lambda _: None)  # type: ignore[arg-type]
    return end, said, lines


class _quiet(QuietReporter):
    def __enter__(self) -> _quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_time_budget_reached_ends_the_machine_and_says_why(world: World) -> None:
    ledger = Ledger()
    provider_id = _running(world, ledger, Budget(max_time_s=0.01))
    time.sleep(0.02)
    session = StandInSession(ledger.get("box"))
    end, said, _ = _hold(ledger, session)
    assert (end.how, end.reason) == ("budget", "time budget 0s reached")
    assert said == ["box: time budget 0s reached; ending it."]
    assert session.closed and provider_id not in world.machines
    record, events = ledger.session("box")
    assert record.status is Status.TERMINATED
    assert session_cost(record, events).ended_by == "cloudsd: time budget 0s reached"


def test_ctrl_c_detaches_and_the_machine_keeps_running(world: World) -> None:
    ledger = Ledger()
    provider_id = _running(world, ledger)
    session = StandInSession(ledger.get("box"))

    def interrupt(line: HoldLine) -> None:
        raise KeyboardInterrupt

    end, said, lines = _hold(ledger, session, interrupt)
    assert end.how == "detached" and said == [] and session.closed
    assert provider_id in world.machines and ledger.get("box").status is Status.RUNNING
    assert lines[0].ssh_healthy and lines[0].budget_text == ""


def test_ctrl_c_before_the_first_tick_detaches_too(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """"ready" is printed before the guard exists: a Ctrl-C while it is being built is a detach, not exit 130."""
    ledger = Ledger()
    provider_id = _running(world, ledger)
    session = StandInSession(ledger.get("box"))

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cloudsd.core.hold.BudgetGuard", interrupted)
    end, said, lines = _hold(ledger, session)
    assert end.how == "detached" and said == [] and lines == [] and session.closed
    assert provider_id in world.machines and ledger.get("box").status is Status.RUNNING


def test_the_guard_warns_once_and_notices_a_machine_gone(world: World) -> None:
    ledger = Ledger()
    provider_id = _running(world, ledger, Budget(max_time_s=100.0))
    started = ledger.session("box")[1][1][0]  # the `created` event
    now = [started + 85.0]
    guard = BudgetGuard(ledger, MemoryProvider(), "box", lambda: None, clock=lambda: now[0])
    first = guard.tick()
    assert first.warning is not None and "85% of the budget is used" in first.warning
    assert first.budget_text == "time 85%" and first.reached is None and first.ended is None
    now[0] += 1.0
    assert guard.tick().warning is None, "the warning comes once"
    del world.machines[provider_id]
    now[0] += 20.0  # past the provider check interval
    view = guard.tick()
    assert view.ended == "gone (ended outside cloudsd)"
    assert ledger.get("box").status is Status.TERMINATED


def test_the_guard_notices_a_stop_and_a_down_from_elsewhere(world: World) -> None:
    ledger = Ledger()
    provider_id = _running(world, ledger)
    now = [time.time()]
    guard = BudgetGuard(ledger, MemoryProvider(), "box", lambda: None, clock=lambda: now[0])
    world.machines[provider_id].status = MachineStatus.STOPPED
    assert guard.tick().ended is None, "the provider is asked every 15 s, not every second"
    now[0] += 20.0
    assert guard.tick().ended == "stopped outside cloudsd (by the provider, or in its console)"
    lifecycle.destroying(ledger, "box", "down")
    now[0] += 20.0
    assert guard.tick().ended == "the machine is destroying (`cloudsd down` from elsewhere?)"


def test_a_boot_that_never_ends_times_out(world: World) -> None:
    world.add_offer("a")
    world.boot_polls = 10**6
    provider = MemoryProvider()
    provider_id = provider.create(provider.offers(OfferSpec())[0],
                                  CreateRequest(name="slow", image="img", public_key="ssh-ed25519 AAAA"))
    seen: list[str] = []
    with pytest.raises(ProvisioningError, match="was not running after 0 s"):
        wait_until_running(provider, provider_id, deadline_s=0.0, on_change=lambda i: seen.append(i.status.value),
                           sleep=lambda _: None)
    assert seen == ["booting"]


def test_the_attached_cli_detaches_on_a_ctrl_c_before_its_first_tick(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Between "ready" and the first status tick (the status line starting up on a loaded machine) a Ctrl-C
    still detaches: exit 0 and the reattach/end commands, never a bare exit 130."""
    from types import SimpleNamespace

    import rich.status

    from cloudsd.cli.machines import _hold as cli_hold

    ledger = Ledger()
    provider_id = _running(world, ledger)
    session = StandInSession(ledger.get("box"))

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rich.status.Status, "__enter__", interrupted)
    app = SimpleNamespace(ledger=ledger, providers=Providers(resolve({"provider": "memory"})))
    cli_hold(app, session)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "Detached. Machine box keeps running" in err and "cloudsd down box" in err and session.closed
    assert provider_id in world.machines and ledger.get("box").status is Status.RUNNING
