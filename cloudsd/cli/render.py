"""Pure rendering: data in, rich renderables out. Printing is separate, so tests can read cells."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from cloudsd.durations import format_duration


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def print_table(table: Table) -> None:
    console().print(table)


def money(usd: float | None, digits: int = 2) -> str:
    return "-" if usd is None else f"${usd:,.{digits}f}"


def settings_table(settings: Any) -> Table:
    table = Table(title=f"settings (file: {settings.file})")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key in settings:
        value = settings[key]
        if isinstance(value, tuple):
            value = ", ".join(value) or "-"
        table.add_row(key, "-" if value is None else str(value), settings.source(key))
    return table


def status_table(rows: Iterable[Any]) -> Table:
    table = Table(title="machines")
    rows = list(rows)
    notes = any(getattr(row, "note", "") for row in rows)
    for column in ("name", "provider", "state", "GPU", "$/h now", "billed time", "cost so far", "web UI") + (
            ("note",) if notes else ()):
        table.add_column(column)
    for row in rows:
        state = row.live if row.status in ("running", "stray") else f"{row.status} / {row.live}"
        if row.stray:
            state = f"STRAY ({row.live})"
        rate = getattr(row, "rate_per_hour", row.price_per_hour)
        storage = rate and rate == getattr(row, "storage_price_per_hour", None) and rate != row.price_per_hour
        cells = [
            row.name, row.provider, state, row.gpu or "-", money(rate, 4 if storage else 3) + (" storage" if storage else ""),
            format_duration(row.uptime_s) if not row.stray else "-",
            money(row.cost_usd, 4) if not row.stray else "-", row.url or "-",
        ]
        table.add_row(*cells, *((getattr(row, "note", "") or "-",) if notes else ()))
    return table


def status_line(name: str, uptime_s: float, price_per_hour: float, url: str, *, cost_usd: float | None = None,
                budget: str = "") -> str:
    cost = price_per_hour * uptime_s / 3600.0 if cost_usd is None else cost_usd
    used = f" · budget {budget}" if budget else ""
    return (f"{name} · up {format_duration(uptime_s)} · {money(price_per_hour, 3)}/h · {money(cost, 4)} so far{used} · "
            f"{url} · Ctrl-C detaches")


def offers_table(offers: Iterable[Any], spec: Any) -> Table:
    table = Table(title=f"offers (price includes {spec.disk_gb} GB of disk)")
    for column in ("provider", "offer", "GPU", "#", "VRAM", "$/h", "reliability", "region", "CUDA", "down Mb/s",
                   "spot"):
        table.add_column(column, justify="right" if column in ("#", "VRAM", "$/h", "down Mb/s") else "left")
    for o in offers:
        table.add_row(
            o.provider, o.offer_id, o.gpu_name, str(o.gpu_count), f"{o.vram_gb:g} GB", money(o.price_per_hour, 3),
            "-" if o.reliability is None else f"{o.reliability:.3f}", o.region or "-", o.cuda_version or "-",
            "-" if o.download_mbps is None else f"{o.download_mbps:,.0f}", "yes" if o.interruptible else "",
        )
    return table


def doctor_table(results: Iterable[Any]) -> Table:
    table = Table(title="providers")
    for column in ("provider", "ok", "credential", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r.provider, "[green]yes[/]" if r.ok else "[red]no[/]", r.credential, r.detail)
    return table


def size_text(size: int | None) -> str:
    """"4.27 GB" from 100 MB up, "12.3 MB" below, "-" when unknown."""
    if size is None:
        return "-"
    return f"{size / 1e9:.2f} GB" if size >= 10**8 else f"{size / 1e6:.1f} MB"
