"""What `cloudsd status` (alias `ls`) shows: the machines in the ledger with the provider's live view, their
cost so far, volumes, strays.

The click command (`machines.status`) parses the flags and calls `show_status`; `main.py` calls it without
click for a bare `cloudsd status` or `status --json`, the command people run most. So this module imports no
click, and prints what click.echo would (plain text ends with a new line and is flushed; rich only once there
is a table to draw).
"""

from __future__ import annotations

import sys
import time

from cloudsd.cli.app import App

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

NO_MACHINES = "No machines. Start one with `cloudsd up`."


def show_status(app: App, as_json: bool) -> None:
    ledger = app.ledger  # opened before the settings are read: a CLOUDSD_HOME that is a file is said so
    clouds = app.providers.configured_clouds()
    if not clouds and ledger.is_empty():
        # Every row comes from the ledger or from an account swept for strays: with neither, there is none to
        # show. A new user's first command, answered without the status and volume rules (core.status,
        # core.volumes and the dataclasses they make at import).
        _echo(_json(()) if as_json else NO_MACHINES)
        return
    from cloudsd.core.status import status as machine_status

    rows = machine_status(app.ledger, app.providers, sweep=clouds)
    if as_json:
        _echo(_json(r.to_dict() for r in rows))
        return
    from cloudsd.core.volumes import listing, volume_clouds

    volumes = listing(app.ledger, app.providers, time.time(), sweep=volume_clouds(clouds))
    if not rows and not volumes:  # the first thing a new user sees, without loading rich for it
        _echo(NO_MACHINES)
        return
    from cloudsd.cli import render

    volume_lines = render.volume_status_lines(v.to_dict() for v in volumes)
    if not rows:
        _echo("\n".join([NO_MACHINES, *volume_lines]))
        return
    render.print_table(render.status_table(rows, render.console().width))
    for line in volume_lines:
        render.console().print(line)
    for row in rows:
        if row.stray:
            what = "storage " if row.live == "stopped" else ""
            render.console().print(f"stray {row.name} on {row.provider} ({row.provider_id}) bills {what}"
                                   f"{render.money(row.rate_per_hour, 4)}/h: end it with `cloudsd down --all`")
        elif row.note:
            render.console().print(f"{row.name}: {row.note}")
        if row.budget_warning and row.budget_used is not None:
            render.console().print(render.styled(("warning:", "yellow"), f" {row.name} has used "
                                                 f"{row.budget_used:.0%} of its budget (${row.cost_usd:.4f} so far)"))


def _json(rows: Iterable[Any]) -> str:
    import json

    return json.dumps(list(rows), indent=2, default=str)


def _echo(text: str) -> None:
    """click.echo(text) for ASCII text (all this module writes without rich; json.dumps escapes the rest)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
