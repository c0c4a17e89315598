"""`cloudsd cost` on a ledger written by hand: windows, grouping, projection, and the estimate label."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from cloudsd.core.report import build
from cloudsd.ledger import Ledger
from tests.cli_helpers import cloudsd, cloudsd_json

DAY1 = datetime(2026, 3, 1, 23, 0).timestamp()  # 23:00 local time, an hour before midnight


def _session(ledger: Ledger, name: str, provider: str, created: float, ended: float | None, rate: float) -> None:
    ledger.reserve(name, provider, "img")
    ledger.update(name, gpu="H100 PCIe", price_per_hour=rate, storage_price_per_hour=0.01)
    ledger.update(name, provider_id=f"id-{name}", status="running", event="created")
    if ended is not None:
        ledger.update(name, status="destroying", event="destroying", data={"reason": "down"})
        ledger.update(name, status="terminated", terminated_at=ended, event="terminated")
    db = sqlite3.connect(ledger.path)
    ids = [row[0] for row in db.execute("SELECT id FROM events WHERE machine = ? ORDER BY id", (name,))]
    times = [created - 5, created, ended, ended][: len(ids)]  # reserved, created, destroying, terminated
    for event_id, at in zip(ids, times, strict=True):
        db.execute("UPDATE events SET at = ? WHERE id = ?", (at, event_id))
    db.commit()
    db.close()


@pytest.fixture
def ledger(cloudsd_home: Path) -> Ledger:
    led = Ledger()
    _session(led, "a", "runpod", DAY1, DAY1 + 7200, rate=3.6)  # 23:00 to 01:00: an hour on each day
    _session(led, "b", "vastai", DAY1 + 1800, DAY1 + 3600, rate=7.2)
    return led


def test_window_grouping_and_totals(ledger: Ledger) -> None:
    report = build(ledger, None, since=DAY1 + 3600, until=None, by="day", now=DAY1 + 10_000)
    assert [(line.cost.name, round(line.window_cost_usd, 6)) for line in report.lines] == [("a", 3.6)]
    assert [(g.key, round(g.cost_usd, 6)) for g in report.groups] == [("2026-03-02", 3.6)]
    whole = build(ledger, None, by="day", now=DAY1 + 10_000)
    assert round(whole.total_usd, 6) == 3.6 * 2 + 7.2 * 0.5
    assert [(g.key, round(g.cost_usd, 6)) for g in whole.groups] == [("2026-03-01", 3.6 + 3.6), ("2026-03-02", 3.6)]
    by_provider = build(ledger, None, by="provider", now=DAY1 + 10_000)
    assert [(g.key, g.sessions) for g in by_provider.groups] == [("runpod", 1), ("vastai", 1)]
    assert whole.accruing_per_hour == 0 and whole.basis == "estimate from the ledger"


def test_a_running_machine_is_projected_to_the_end_of_the_month(cloudsd_home: Path) -> None:
    led = Ledger()
    _session(led, "r", "runpod", DAY1, None, rate=1.0)
    now = DAY1 + 3600
    report = build(led, None, now=now)
    assert report.accruing_per_hour == 1.0
    month_end = datetime(2026, 4, 1).timestamp()
    assert report.month_projection_usd == pytest.approx(report.month_to_date_usd + (month_end - now) / 3600)


def test_cli_labels_figures_as_an_estimate_when_billing_is_unavailable(ledger: Ledger) -> None:
    # No RunPod or Vast.ai key here: their billing cannot be had, so the figures are the ledger's estimate.
    report = cloudsd_json("cost", "--since", "2026-03-02")
    assert [s["name"] for s in report["sessions"]] == ["a"]
    assert report["sessions"][0]["cost_usd"] == pytest.approx(3.6)
    assert report["sessions"][0]["billed_usd"] is None
    assert report["basis"].startswith("estimate (provider billing unavailable: runpod: not configured here")
    until = cloudsd_json("cost", "--until", "2026-03-01")  # the whole day, inclusive
    assert sum(s["cost_usd"] for s in until["sessions"]) == pytest.approx(3.6 + 3.6)
    text = cloudsd("cost", "--by", "day").stdout.replace("\n", " ")
    assert "2026-03-01" in text and "estimate (provider billing unavailable" in text
    bad = cloudsd("cost", "--since", "yesterday")
    assert bad.returncode == 2 and "not a date like 2026-05-01" in bad.stderr
