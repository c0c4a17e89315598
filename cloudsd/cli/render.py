"""Pure rendering: data in, rich renderables out. Printing is separate, so tests can read cells."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from cloudsd.durations import format_duration


def console(stderr: bool = False) -> Console:
    """A console that prints text literally: provider and user text may hold `[default]` (no markup)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from literal pieces, each a string or (string, style): the way to colour without markup."""
    return Text.assemble(*parts)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def print_table(table: Table) -> None:
    console().print(table)


def _cells_width(column: Column) -> int:
    """The widest cell, or the header's longest word (headers may wrap at spaces; cells should not)."""
    header = max((cell_len(word) for word in str(column.header).split()), default=0)
    cells = [c.cell_len if isinstance(c, Text) else cell_len(str(c)) for c in column._cells]
    return max([header, *cells])


def natural_width(table: Table) -> int:
    """Columns wide enough for every cell unwrapped, with rich's default box (padding and borders)."""
    return 1 + sum(_cells_width(column) + 3 for column in table.columns)


def fit(table: Table, width: int | None, drop: Sequence[str]) -> Table:
    """The table without its least useful columns (`drop`, first to go first) until it fits `width`, so the
    ones a user acts on (name, provider, price, URL) are never cut to `…`. None: as it is."""
    if width is None:
        return table
    for header in drop:
        if natural_width(table) <= width:
            break
        for index, column in enumerate(table.columns):
            if column.header == header:
                del table.columns[index]
                break
    if 1 + sum(max(_cells_width(c), cell_len(str(c.header))) + 3 for c in table.columns) > width:
        for column in table.columns:  # a header wider than its cells wraps, rather than a cell being cut
            header = str(column.header)
            if cell_len(header) > _cells_width(column):
                column.header = header.replace(" ", "\n")
    return table


def down_question(names: Sequence[str], outputs_root: Path | None) -> str:
    """`down`'s question: which machines, that their disks go, and where their outputs are saved first."""
    if len(names) == 1:
        what, disk, place = names[0], "Its disk is lost", f"{outputs_root / names[0]}" if outputs_root else ""
    else:
        what, disk = f"{len(names)} machines ({', '.join(names)})", "Their disks are lost"
        place = f"{outputs_root}/NAME" if outputs_root else ""
    saved = f"; the outputs are saved in {place} first." if place else ", outputs included (--no-outputs)."
    return f"Destroy {what}? {disk}{saved}"


def money(usd: float | None, digits: int = 2) -> str:
    return "-" if usd is None else f"${usd:,.{digits}f}"


def volume_status_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    """`status`: one line per volume (`VolumeRow.to_dict()`), what it accrues and this month so far."""
    lines = []
    for row in rows:
        name = row["name"] or row["provider_id"]
        where = f"{row['provider']}, {row['size_gb']:g} GB" if row["size_gb"] is not None else row["provider"]
        used = f", used by {row['used_by']}" if row["used_by"] else ""
        if row["stray"]:
            lines.append(f"stray volume {name} ({where}) bills {money(row['per_month_usd'])}/month: {row['note']}")
            continue
        note = f"; {row['note']}" if row["note"] else ""
        lines.append(f"volume {name} ({where}) {money(row['per_month_usd'])}/month, "
                     f"{money(row['month_to_date_usd'], 4)} this month{used}{note}")
    return lines


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


STATUS_DROP = ("note", "billed time", "GPU", "state")  # notes are printed under the table too


def status_table(rows: Iterable[Any], width: int | None = None) -> Table:
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
    return fit(table, width, STATUS_DROP)


def status_line(name: str, uptime_s: float, price_per_hour: float, url: str, *, cost_usd: float | None = None,
                budget: str = "") -> str:
    cost = price_per_hour * uptime_s / 3600.0 if cost_usd is None else cost_usd
    used = f" · budget {budget}" if budget else ""
    return (f"{name} · up {format_duration(uptime_s)} · {money(price_per_hour, 3)}/h · {money(cost, 4)} so far{used} · "
            f"{url} · Ctrl-C detaches")


OFFERS_DROP = ("offer", "down Mb/s", "CUDA", "region", "spot", "$/GB down/up", "reliability")  # then "#" joins "GPU"


def offers_table(offers: Iterable[Any], spec: Any, width: int | None = None) -> Table:
    offers = list(offers)
    table = Table(title=f"offers (price includes {spec.disk_gb} GB of disk)")
    for column in ("provider", "offer", "GPU", "#", "VRAM", "$/h", "reliability", "region", "CUDA", "down Mb/s",
                   "$/GB down/up", "spot"):
        table.add_column(column, justify="right" if column in ("#", "VRAM", "$/h", "down Mb/s") else "left")
    for o in offers:
        bandwidth = "-" if o.download_usd_per_gb is None and o.upload_usd_per_gb is None else \
            f"{o.download_usd_per_gb or 0:.4f}/{o.upload_usd_per_gb or 0:.4f}"
        table.add_row(
            o.provider, o.offer_id, o.gpu_name, str(o.gpu_count), f"{o.vram_gb:g} GB", money(o.price_per_hour, 3),
            "-" if o.reliability is None else f"{o.reliability:.3f}", o.region or "-", o.cuda_version or "-",
            "-" if o.download_mbps is None else f"{o.download_mbps:,.0f}", bandwidth, "yes" if o.interruptible else "",
        )
    table = fit(table, width, OFFERS_DROP)
    if width is not None and natural_width(table) > width:  # last: the count joins the GPU's name
        by_header = {str(c.header): c for c in table.columns}
        by_header["GPU"]._cells = [f"{name} ×{o.gpu_count}" if o.gpu_count != 1 else name
                                   for name, o in zip(by_header["GPU"]._cells, offers, strict=True)]
        table.columns.remove(by_header["#"])
        table = fit(table, width, ())
    return table


def doctor_table(results: Iterable[Any]) -> Table:
    table = Table(title="providers")
    for column in ("provider", "ok", "credential", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r.provider, Text("yes", "green") if r.ok else Text("no", "red"), r.credential, r.detail)
    return table


def size_text(size: int | None) -> str:
    """"4.27 GB" from 100 MB up, "12.3 MB" below, "-" when unknown."""
    if size is None:
        return "-"
    return f"{size / 1e9:.2f} GB" if size >= 10**8 else f"{size / 1e6:.1f} MB"
