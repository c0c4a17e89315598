"""`cloudsd cost` and `cloudsd budget`. Only click is imported at the top, so `cloudsd --help` stays fast."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from cloudsd.cli.app import App, pass_app
from cloudsd.cli.params import POSITIVE_DURATION, SPEND


class DateType(click.ParamType):
    """`2026-05-01` (a whole day, local time) or `2026-05-01T14:30`."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, bool]:
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text)
            if not 1970 <= moment.year <= 2200:
                raise ValueError
            return moment.timestamp(), len(text) <= 10  # (epoch, whole day)
        except (ValueError, OverflowError, OSError):
            self.fail(f"{value!r} is not a date like 2026-05-01 or 2026-05-01T14:30 (years 1970 to 2200)", param, ctx)


DATE = DateType()


@click.command()
@click.option("--since", type=DATE, help="From this date (local time), e.g. 2026-05-01.")
@click.option("--until", type=DATE, help="Up to and including this date, or up to this time.")
@click.option("--by", type=click.Choice(["session", "provider", "gpu", "day"]), default="session",
              show_default=True, help="One row per session, or totals per provider, GPU or day.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def cost(app: App, since: tuple[float, bool] | None, until: tuple[float, bool] | None, by: str, as_json: bool) -> None:
    """What every session cost, what accrues now, and this month's projection.

    Figures come from the ledger at the rate locked when each machine was created, per second, with
    stopped machines at their storage rate. Where RunPod or Vast.ai report what they billed, that is shown
    beside the estimate with the difference. Example: `cloudsd cost --since 2026-05-01 --by day`.
    """
    from cloudsd.cli import render, render_cost
    from cloudsd.core.report import build
    from cloudsd.core.volumes import cost_lines

    start = since[0] if since else None
    end = None
    if until:
        end = (datetime.fromtimestamp(until[0]) + timedelta(days=1)).timestamp() if until[1] else until[0]
    report = build(app.ledger, app.providers, since=start, until=end, by=by)
    volumes = cost_lines(app.ledger, app.providers, since=start, until=end, now=report.now)
    attention = {r.name: r.attention for r in app.ledger.machines() if r.attention}  # shown, never hidden
    if as_json:
        render.print_json({**report.to_dict(), "attention": attention, "volumes": [v.to_dict() for v in volumes]})
        return
    for name, why in attention.items():
        render.console().print(f"{name}: {why}")
    if not report.lines:
        render.console().print("No machine billed in this period.")
    elif by == "session":
        render.print_table(render_cost.sessions_table(report, render.console().width))
    else:
        render.print_table(render_cost.groups_table(report))
    for line in [*render_cost.summary_lines(report), *render_cost.volume_lines(volumes)]:
        render.console().print(line)


@click.command()
@click.argument("name")
@click.option("--max-time", type=POSITIVE_DURATION, help="End it this long after it started, e.g. 3h.")
@click.option("--max-spend", type=SPEND, help="End it once it has cost this many USD in all.")
@click.option("--idle-stop", type=POSITIVE_DURATION, help="Stop it after this long with no use.")
@click.option("--idle-action", type=click.Choice(["stop", "terminate"]), help="What idle does.")
@pass_app
def budget(app: App, name: str, max_time: float | None, max_spend: float | None, idle_stop: float | None,
           idle_action: str | None) -> None:
    """Change the budget of a running machine; its watchdog takes the new one at once.

    A budget below what the machine has already used is refused, with the numbers.
    Example: `cloudsd budget mybox --max-spend 5 --idle-stop 20m`.
    """
    from cloudsd.cli import render
    from cloudsd.core.access import reconnect_record
    from cloudsd.core.guard import change_budget
    from cloudsd.core.watchdog import WatchdogSettings

    changes = {"max_time_s": max_time, "max_spend_usd": max_spend, "idle_s": idle_stop, "idle_action": idle_action}
    if all(v is None for v in changes.values()):
        raise click.UsageError("give at least one of --max-time, --max-spend, --idle-stop, --idle-action")
    record = app.ledger.get(name)
    provider = app.providers.get(record.provider)
    with reconnect_record(record, deadline_s=30) as connection:
        plan, notes = change_budget(app.ledger, record, connection, provider, changes,
                                    WatchdogSettings.from_settings(app.settings))
    out = render.console(stderr=True)
    out.print(f"{name}: {plan.budget.describe()}")
    for deadline in plan.deadlines:
        out.print(f"  ends at {datetime.fromtimestamp(deadline.at).strftime('%H:%M:%S')} ({deadline.reason})")
    for note in notes:
        out.print(f"  note: {note}")
