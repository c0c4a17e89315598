"""The cost rules, on synthetic ledger rows and events: intervals, stopped storage, overlaps, skew, windows."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cloudsd.core.cost import (
    Interval,
    clock_offset,
    group,
    session_cost,
    session_costs,
    split_by_day,
    to_laptop_time,
)
from cloudsd.ledger import EventKind, Ledger, MachineRecord

RATE = 3.6  # $/h: one cent per 10 s
STORAGE = 0.36


def record(name: str = "m", rid: int = 1, rate: float = RATE, storage: float = STORAGE) -> MachineRecord:
    return MachineRecord(
        id=rid, name=name, provider="runpod", provider_id=f"p{rid}", image="img", gpu="H100 PCIe",
        price_per_hour=rate, storage_price_per_hour=storage, created_at=0.0, ready_at=None, terminated_at=None,
        status="running", ssh_host=None, ssh_port=None, ssh_user=None, host_key=None, key_path=None,
        local_port=None, ui="a1111", detail="",
    )


def ev(when: float, kind: str, name: str = "m", /, **data: Any) -> tuple[float, str, str, dict[str, Any]]:
    return (when, name, kind, data)


def test_running_bills_from_create_to_the_destroy_call() -> None:
    events = [ev(90, "reserved"), ev(100, "created"), ev(130, "ready"), ev(200, "destroying", reason="down"),
              ev(215, "terminated")]
    cost = session_cost(record(), events, now=1000)
    assert cost.started_at == 100 and cost.ended_at == 200
    assert cost.running_s == 100 and cost.stopped_s == 0
    assert cost.cost_usd == pytest.approx(0.10)
    assert cost.accruing_per_hour == 0 and cost.ended_by == "down"


def test_a_running_machine_accrues_until_now() -> None:
    cost = session_cost(record(), [ev(0, "reserved"), ev(100, "created")], now=160)
    assert cost.state == "running" and cost.ended_at is None
    assert cost.cost_usd == pytest.approx(0.06)
    assert cost.accruing_per_hour == RATE


def test_stopped_time_bills_storage_only() -> None:
    events = [ev(0, "reserved"), ev(100, "created"), ev(200, "stopped", reason="cloudsd stop"),
              ev(300, "resumed"), ev(400, "destroying")]
    cost = session_cost(record(), events, now=1000)
    assert [(i.state, i.seconds) for i in cost.intervals] == [("running", 100), ("stopped", 100), ("running", 100)]
    assert cost.cost_usd == pytest.approx(200 * RATE / 3600 + 100 * STORAGE / 3600)


def test_a_machine_still_stopped_accrues_storage_now() -> None:
    events = [ev(0, "reserved"), ev(100, "created"),
              ev(500, "watchdog-ended", action="stop", reason="idle for 15s", at=130.0)]
    cost = session_cost(record(), events, now=430)
    assert cost.state == "stopped" and cost.accruing_per_hour == STORAGE
    assert cost.running_s == 30 and cost.stopped_s == 300  # the stop counts from when the watchdog acted
    assert cost.extra["stopped_by"] == "the watchdog: idle for 15s"


def test_a_watchdog_end_stops_billing_at_its_time_not_when_it_was_noticed() -> None:
    events = [ev(0, "reserved"), ev(100, "created"), ev(110, "watchdog-installed"),
              ev(900, "watchdog-ended", action="terminate", reason="time budget 45m reached", at=145.0),
              ev(900, "gone")]
    cost = session_cost(record(), events, now=2000)
    assert cost.ended_at == 145 and cost.running_s == 45
    assert cost.ended_by == "the watchdog: time budget 45m reached"


def test_never_created_costs_nothing() -> None:
    cost = session_cost(record(), [ev(0, "reserved"), ev(5, "not-created", reason="no capacity")], now=100)
    assert cost.started_at is None and cost.cost_usd == 0 and cost.state == "never created"


def test_times_never_run_backwards_so_nothing_counts_twice_or_negative() -> None:
    # An estimate from the machine's clock before the last transition, and a laptop clock that jumped back.
    events = [ev(0, "reserved"), ev(100, "created"), ev(200, "stopped"),
              ev(210, "watchdog-ended", action="stop", at=150.0),  # already stopped: no new interval
              ev(190, "resumed"),  # the clock went back 20 s: clamped to 200
              ev(180, "destroying")]  # back again: clamped, so the running interval is empty, not negative
    cost = session_cost(record(), events, now=10_000)
    assert all(i.seconds >= 0 for i in cost.intervals)
    assert cost.ended_at == 200
    assert cost.running_s == 100 and cost.stopped_s == 0
    spans = [(i.start, i.end) for i in cost.intervals]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), "intervals overlap"


def test_events_after_the_end_are_ignored() -> None:
    events = [ev(0, "reserved"), ev(100, "created"), ev(200, "destroying"), ev(250, "resumed"),
              ev(300, "watchdog-ended", action="terminate", at=400.0)]
    assert session_cost(record(), events, now=1000).cost_usd == pytest.approx(100 * RATE / 3600)


def test_sessions_of_a_reused_name_get_their_own_events(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a", "runpod", "img")
    ledger.update("a", status="booting", event=EventKind.CREATED)
    ledger.update("a", status="terminated", event=EventKind.DESTROYING)
    ledger.reserve("b", "runpod", "img")
    ledger.update("b", status="booting", event=EventKind.CREATED)
    ledger.reserve("a", "runpod", "img")
    ledger.event("b", EventKind.ATTACHED)  # b's, though written after a's second session began
    ledger.update("a", status="booting", event=EventKind.CREATED)
    pairs = ledger.sessions()
    assert [(r.id, [e[2] for e in evs]) for r, evs in pairs] == [
        (1, ["reserved", "created", "destroying"]), (2, ["reserved", "created", "attached"]),
        (3, ["reserved", "created"])]
    assert [e[2] for e in ledger.session("a")[1]] == ["reserved", "created"]


def test_costs_per_session() -> None:
    rows = [record("a", 1), record("b", 2), record("a", 3, rate=7.2)]
    pairs = [(rows[0], [ev(0, "reserved", "a"), ev(10, "created", "a"), ev(20, "destroying", "a")]),
             (rows[1], [ev(5, "reserved", "b"), ev(15, "created", "b")]),
             (rows[2], [ev(30, "reserved", "a"), ev(40, "created", "a")])]
    costs = session_costs(pairs, now=50)
    assert [round(c.cost_usd, 6) for c in costs] == [round(10 * RATE / 3600, 6), round(35 * RATE / 3600, 6),
                                                     round(10 * 7.2 / 3600, 6)]


def test_window_and_groups_clip_intervals() -> None:
    costs = session_costs([
        (record("a", 1), [ev(0, "reserved", "a"), ev(100, "created", "a"), ev(200, "destroying", "a")]),
        (record("b", 2), [ev(0, "reserved", "b"), ev(150, "created", "b"), ev(250, "destroying", "b")])], now=1000)
    assert costs[0].cost_between(150, None) == pytest.approx(50 * RATE / 3600)
    by_provider = group(costs, "provider", 150, 220)
    assert [(g.key, g.sessions, g.seconds) for g in by_provider] == [("runpod", 2, 120)]


def test_split_by_day_cuts_at_local_midnight() -> None:
    midnight = datetime(2026, 3, 2).timestamp()
    pieces = split_by_day(Interval(midnight - 600, midnight + 1200, "running", RATE))
    assert [(day, piece.seconds) for day, piece in pieces] == [("2026-03-01", 600), ("2026-03-02", 1200)]


def test_clock_offset_from_the_round_trip_midpoint() -> None:
    # The machine's clock is 40 s ahead; the reading came back 0.2 s after it was asked for.
    offset = clock_offset(machine_time=1040.1, sent_at=1000.0, received_at=1000.2)
    assert offset == pytest.approx(40.0)
    assert to_laptop_time(1100.0, offset) == pytest.approx(1060.0)


def test_bandwidth_billed_per_gb_is_an_estimate_from_what_cloudsd_moved() -> None:
    events = [ev(1000.0, "created", download_usd_per_gb=0.005, upload_usd_per_gb=0.002),
              ev(1000.0 + 60, "models-synced", bytes_in=4_000_000_000),
              ev(1000.0 + 120, "outputs-pulled", bytes_out=500_000_000),
              ev(1000.0 + 3600, "destroying")]
    cost = session_cost(record(), events, now=1000.0 + 7200)
    assert cost.bandwidth_usd == pytest.approx(4 * 0.005 + 0.5 * 0.002)
    assert cost.cost_usd == pytest.approx(RATE + cost.bandwidth_usd)
    assert cost.cost_between(1000.0 + 90, None) == pytest.approx(RATE * (3600 - 90) / 3600 + 0.5 * 0.002)
    assert cost.to_dict()["bandwidth_usd"] == pytest.approx(0.021)
    no_rates = [ev(1000.0, "created"), ev(1000.0 + 60, "models-synced", bytes_in=4_000_000_000)]
    assert session_cost(record(), no_rates, now=1000.0 + 60).transfers == ()
