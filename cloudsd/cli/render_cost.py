"""Pure rendering of the cost report and budget results: data in, rich renderables or text out."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.table import Table

from cloudsd.cli.render import fit, money
from cloudsd.durations import format_duration


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def _state(line: Any) -> str:
    cost = line.cost
    if cost.state == "ended":
        return f"ended ({cost.ended_by})" if cost.ended_by else "ended"
    if cost.state == "stopped":
        return f"stopped, storage billing ({cost.extra.get('stopped_by') or 'stopped'})"
    return "running"


SESSIONS_DROP = ("GPU", "started", "state", "duration", "difference")


def sessions_table(report: Any, width: int | None = None) -> Table:
    billed = any(line.billed_usd is not None for line in report.lines)
    table = Table(title="cost per session: cloudsd's estimate" + (", and what the provider billed" if billed else ""))
    columns = ["name", "provider", "GPU", "$/h", "started", "duration", "state", "cost"]
    if billed:
        columns += ["billed", "difference"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("$/h", "duration", "cost", "billed", "difference")
                         else "left")
    for line in report.lines:
        cost = line.cost
        row = [cost.name, cost.provider, cost.gpu or "-", money(cost.price_per_hour, 3), _when(cost.started_at),
               format_duration(line.window_seconds), _state(line), money(line.window_cost_usd, 4)]
        if billed:
            row += [money(line.billed_usd, 4), "-" if line.difference_usd is None else f"{line.difference_usd:+.4f}"]
        table.add_row(*row)
    return fit(table, width, SESSIONS_DROP)


def groups_table(report: Any) -> Table:
    table = Table(title=f"cost by {report.by}: cloudsd's estimate")
    for column in (report.by, "sessions", "time", "cost"):
        table.add_column(column, justify="left" if column == report.by else "right")
    for g in report.groups:
        table.add_row(g.key, str(g.sessions), format_duration(g.seconds), money(g.cost_usd, 4))
    return table


def summary_lines(report: Any) -> list[str]:
    window = ""
    if report.since is not None or report.until is not None:
        window = f" ({_when(report.since) if report.since else 'start'} to {_when(report.until) if report.until else 'now'})"
    lines = [
        f"total{window}: {money(report.total_usd, 4)}",
        f"month to date: {money(report.month_to_date_usd, 4)}",
        f"accruing now: {money(report.accruing_per_hour, 3)}/h; this month at that rate: "
        f"{money(report.month_projection_usd, 2)}",
    ]
    for b in report.billing:
        if not b.available:
            lines.append(f"{b.provider}: estimate (provider billing unavailable: {b.why})")
            continue
        text = (f"{b.provider} billed {money(b.billed_usd, 4)} for these machines; cloudsd estimated "
                f"{money(b.estimate_usd, 4)} (difference {b.difference_usd:+.4f})")
        if b.balance_usd is not None:
            text += f"; balance {money(b.balance_usd, 2)}"
        if b.spend_per_hour:
            text += f", spending {money(b.spend_per_hour, 3)}/h"
        if b.missing:
            text += f" ({b.missing})"
        lines.append(text)
    for line in report.lines:
        if line.cost.transfers:
            lines.append(f"{line.cost.name}'s cost includes bandwidth {money(line.cost.bandwidth_usd, 4)} "
                         "(an estimate from what cloudsd moved, at the offer's $/GB)")
    stopped = [line for line in report.lines if line.cost.state == "stopped"]
    for line in stopped:
        lines.append(f"{line.cost.name} is stopped and still bills storage {money(line.cost.storage_price_per_hour, 4)}"
                     f"/h: end it with `cloudsd down {line.cost.name}`")
    return lines


def volume_lines(volumes: Iterable[Any]) -> list[str]:
    """One line per volume (`core.volumes.VolumeLine`): storage bills per GB-month whether or not it is used."""
    lines = []
    for v in volumes:
        billed = "" if v.billed_usd is None else f", {v.record.provider} billed {money(v.billed_usd, 4)}"
        gone = " (deleted)" if not v.record.active else ""
        lines.append(f"volume {v.record.name}{gone} on {v.record.provider}, {v.record.size_gb:g} GB at "
                     f"{money(v.cost.per_month_usd)}/month: {money(v.window_usd, 4)} in this period, "
                     f"{money(v.cost.month_to_date_usd, 4)} this month{billed}")
    return lines
