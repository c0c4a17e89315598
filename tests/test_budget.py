"""Budgets as deadlines, refusals with numbers, and how a machine's end is put down to the watchdog."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudsd.core.budget import (
    PROVIDER_GRACE_S,
    Budget,
    check_new_budget,
    deadlines,
    provider_deadline,
    use,
)
from cloudsd.core.guard import attribute, plan_of
from cloudsd.core.watchdog import WatchdogSettings, machine_config
from cloudsd.errors import BudgetError


def ev(when: float, kind: str, /, **data: Any) -> tuple[float, str, str, dict[str, Any]]:
    return (when, "m", kind, data)


def test_time_and_spend_become_deadlines() -> None:
    budget = Budget(max_time_s=2700, max_spend_usd=1.0)
    found = deadlines(budget, started_at=1000, now=1600, spent_usd=0.5, price_per_hour=2.0)
    assert [(d.kind, d.at) for d in found] == [("spend", 1600 + 900), ("time", 3700)]
    assert found[0].reason == "spend budget $1.00 reached" and found[1].reason == "time budget 45m reached"


def test_the_provider_deadline_trails_the_watchdog_by_the_grace() -> None:
    assert provider_deadline(Budget(max_time_s=600), now=100, price_per_hour=1) == 700 + PROVIDER_GRACE_S
    assert provider_deadline(Budget(idle_s=60), now=100, price_per_hour=1) is None
    assert provider_deadline(Budget(max_spend_usd=1), now=0, price_per_hour=0) is None  # free: never reached


def test_a_budget_below_what_is_spent_is_refused_with_the_numbers() -> None:
    with pytest.raises(BudgetError, match=r"already cost \$0\.4200; a spend budget of \$0\.30 is not above"):
        check_new_budget(Budget(max_spend_usd=0.30), started_at=0, now=600, spent_usd=0.42)
    with pytest.raises(BudgetError, match=r"already run 10m; a time budget of 5m"):
        check_new_budget(Budget(max_time_s=300), started_at=0, now=600, spent_usd=0)
    with pytest.raises(BudgetError, match="above \\$0"):
        check_new_budget(Budget(max_spend_usd=0), started_at=0, now=0, spent_usd=0)
    check_new_budget(Budget(max_spend_usd=0.5, max_time_s=900), started_at=0, now=600, spent_usd=0.42)


def test_use_reports_shares_and_what_is_reached() -> None:
    budget = Budget(max_time_s=100, max_spend_usd=10)
    used = use(budget, started_at=0, now=80, spent_usd=1, price_per_hour=1)
    assert used.share == pytest.approx(0.8) and used.reached is None
    used = use(budget, started_at=0, now=101, spent_usd=1, price_per_hour=1)
    assert used.reached is not None and used.reached.kind == "time" and used.reached.at == 100


def test_the_watchdog_config_is_on_the_machine_clock_and_holds_no_key() -> None:
    budget = Budget(max_time_s=60, idle_s=30, idle_action="terminate")
    found = deadlines(budget, started_at=100, now=100, spent_usd=0, price_per_hour=1)
    calls = {"stop": {"method": "PUT", "url": "${VAST_URL}/x", "headers": {"Authorization": "Bearer ${K}"}}}
    config = machine_config("vastai", budget, found, offset_s=-25.0, settings=WatchdogSettings(poll_s=2),
                            end_calls=calls)
    assert config["deadlines"] == [{"at": 135.0, "reason": "time budget 1m reached"}]
    assert (config["provider"], config["idle_s"], config["idle_action"], config["poll_s"]) == ("vastai", 30, "terminate", 2)
    assert not any("key" in k.lower() for k in config) and config["end_calls"] == calls
    assert machine_config("local", budget, found, 0.0, WatchdogSettings(), end_calls=None)["end_calls"] == {}


def _armed(**budget: Any) -> list[tuple[float, str, str, dict[str, Any]]]:
    b = Budget(**budget)
    found = deadlines(b, started_at=100, now=100, spent_usd=0, price_per_hour=3.6)
    return [ev(90, "reserved"), ev(100, "created"), ev(130, "ready"),
            ev(131, "budget", budget=b.to_dict(), deadlines=[d.to_dict() for d in found]),
            ev(132, "watchdog-installed", script="/var/lib/cloudsd/watchdog.py", idle_deadline_at=160.0)]


def test_gone_after_the_time_deadline_is_the_watchdog_at_the_deadline() -> None:
    events = _armed(max_time_s=45)
    found = attribute(plan_of(events), events, "gone", noticed_at=900, self_terminates=True)
    assert found == {"action": "terminate", "reason": "time budget 45s reached", "basis": "time", "at": 145,
                     "noticed_at": 900}


def test_gone_before_any_deadline_is_not_put_down_to_the_watchdog() -> None:
    events = _armed(max_time_s=3600)
    assert attribute(plan_of(events), events, "gone", noticed_at=900, self_terminates=True) is None
    assert attribute(None, events, "gone", noticed_at=900, self_terminates=True) is None


def test_stopped_with_an_idle_budget_is_the_watchdog_at_its_last_idle_deadline() -> None:
    events = _armed(idle_s=30)
    events.append(ev(170, "watchdog-seen", idle_deadline_at=200.0))
    found = attribute(plan_of(events), events, "stopped", noticed_at=500, self_terminates=True)
    assert found is not None and (found["at"], found["reason"]) == (200.0, "idle for 30s")
    # A terminate-on-idle machine that is merely stopped was stopped by someone else.
    events = _armed(idle_s=30, idle_action="terminate")
    assert attribute(plan_of(events), events, "stopped", noticed_at=500, self_terminates=True) is None


def test_the_estimate_is_never_before_the_machine_was_last_seen_alive() -> None:
    events = _armed(max_time_s=45)
    events.append(ev(170, "watchdog-seen"))  # seen up after its deadline: the watchdog was late
    found = attribute(plan_of(events), events, "gone", noticed_at=900, self_terminates=True)
    assert found is not None and found["at"] == 170


def test_a_local_machine_that_ends_itself_is_stopped_not_gone() -> None:
    events = _armed(max_time_s=45)
    found = attribute(plan_of(events), events, "stopped", noticed_at=900, self_terminates=False)
    assert found is not None and found["action"] == "stop" and found["at"] == 145


def test_watchdog_reports_come_back_on_the_laptop_clock() -> None:
    from cloudsd.core.watchdog import _parse

    # The machine's clock runs 40 s ahead of the laptop's.
    out = json.dumps({"now": 1040.1, "running": True, "state": {
        "last_activity": 1030.0, "activity_source": "web UI request", "idle_deadline": 1930.0,
        "ending": {"action": "stop", "reason": "idle for 15m", "at": 1940.0, "done_at": None, "next_at": 1.0}}})
    reading = _parse(out + "\n", sent=1000.0, received=1000.2)
    assert reading.offset_s == pytest.approx(40.0)
    assert reading.last_activity_at == pytest.approx(990.0)
    assert reading.idle_deadline_at == pytest.approx(1890.0)
    assert reading.ending is not None and reading.ending["at"] == pytest.approx(1900.0)
    assert "next_at" not in reading.ending
    assert reading.ui_restarts is None and reading.ui_restarted_at is None  # no restart, or an older watchdog
    restarted = json.dumps({"now": 1040.1, "running": True, "state": None, "ui_restarts": [3, 1020.0]})
    reading = _parse(restarted, sent=1000.0, received=1000.2)
    assert reading.ui_restarts == 3 and reading.ui_restarted_at == pytest.approx(980.0)
