"""The pure volume rules: per GB-month accrual on a 720-hour month, month to date, strays by label."""

from __future__ import annotations

from datetime import datetime

import pytest

from cloudsd.core.volumes import strays, volume_cost
from cloudsd.ledger import VolumeRecord
from cloudsd.volumes import VolumeInfo


def _record(created_at: float, deleted_at: float | None = None, **kw: object) -> VolumeRecord:
    values: dict[str, object] = dict(id=1, name="v", provider="vastai", provider_id="7", placement="m1", region="US",
                                     size_gb=50.0, price_per_gb_month=0.10, created_at=created_at,
                                     deleted_at=deleted_at, status="deleted" if deleted_at else "ready",
                                     attached_to=None)
    values.update(kw)
    return VolumeRecord(**values)  # type: ignore[arg-type]


def test_a_volume_bills_per_gb_month_on_a_720_hour_month() -> None:
    start = datetime(2026, 11, 10).timestamp()
    cost = volume_cost(_record(start), now=start + 72 * 3600)  # 72 h of 720: a tenth of a month
    assert cost.per_month_usd == pytest.approx(5.0)
    assert cost.total_usd == pytest.approx(0.5)
    assert cost.month_to_date_usd == pytest.approx(0.5)


def test_month_to_date_starts_on_the_first_and_a_deleted_volume_stops() -> None:
    start = datetime(2026, 11, 30).timestamp()
    first = datetime(2026, 12, 1).timestamp()
    cost = volume_cost(_record(start), now=first + 36 * 3600)
    assert cost.total_usd == pytest.approx(5.0 * 60 / 720)
    assert cost.month_to_date_usd == pytest.approx(5.0 * 36 / 720)
    ended = volume_cost(_record(start, deleted_at=start + 3600), now=first + 36 * 3600)
    assert ended.total_usd == pytest.approx(5.0 / 720) and ended.month_to_date_usd == 0.0


def test_strays_are_cloudsd_labels_the_ledger_does_not_know() -> None:
    def info(pid: str, label: str | None) -> VolumeInfo:
        return VolumeInfo("vastai", pid, label, 10.0, "m1", 0.1)

    live = [info("7", "cloudsd-v"), info("8", "cloudsd-lost"), info("9", "someone-else"), info("10", None)]
    assert [v.provider_id for v in strays(live, [_record(0.0)])] == ["8"]
    assert [v.provider_id for v in strays(live, [_record(0.0, deleted_at=1.0)])] == ["7", "8"]
