"""`cloudsd stop NAME` and `cloudsd start NAME`: keep the machine and its disk overnight."""

from __future__ import annotations

import click

from cloudsd.cli.app import App, pass_app
from cloudsd.cli.params import PORT


@click.command("stop")
@click.argument("name")
@pass_app
def stop_cmd(app: App, name: str) -> None:
    """Stop the machine and keep its disk, to `cloudsd start` it again later.

    A stopped machine bills only its storage until `cloudsd start NAME` or `cloudsd down NAME`. On RunPod
    the container disk is lost and /workspace (models, outputs) is kept. Example: `cloudsd stop mybox`.
    """
    from cloudsd.cli import render
    from cloudsd.cli.progress import LiveReporter
    from cloudsd.core.resume import stop

    out = render.console(stderr=True)
    with LiveReporter() as reporter:
        record = stop(name, app.ledger, app.providers, reporter)
        keeps = app.providers.get(record.provider).stop_keeps
    bills = (f"it still bills storage {render.money(record.storage_price_per_hour, 4)}/h"
             if record.storage_price_per_hour else "it costs nothing while stopped")
    out.print(f"{name}: stopped; {keeps} is kept and {bills}.")
    out.print(f"  resume it: cloudsd start {name}")
    out.print(f"  end it:    cloudsd down {name}")


@click.command("start")
@click.argument("name")
@click.option("--port", type=PORT, help="Local port for the web UI (default: the one used before).")
@click.option("--detach", is_flag=True, help="Return once the machine is ready instead of holding the tunnel.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine record as JSON.")
@pass_app
def start_cmd(app: App, name: str, port: int | None, detach: bool, as_json: bool) -> None:
    """Resume a stopped machine with its disk, wait for the web UI and tunnel it, as `up` does.

    The watchdog gets the budget the machine had back (a time budget counts from this start). When the
    provider cannot resume it (its host's GPU is rented out), nothing is lost: try again later.
    Example: `cloudsd start mybox`.
    """
    from cloudsd.cli.machines import hold_ready
    from cloudsd.cli.progress import LiveReporter
    from cloudsd.core import hold  # noqa: F401 - loaded before the URL is shown: Ctrl-C from then on detaches
    from cloudsd.core.resume import StartOptions, start
    from cloudsd.core.watchdog import WatchdogSettings

    settings = app.settings
    options = StartOptions(port=port, resume_timeout_s=settings["timeouts.resume"],
                           boot_timeout_s=settings["timeouts.boot"], ssh_timeout_s=settings["timeouts.ssh"],
                           ui_timeout_s=settings["timeouts.ui"], watchdog=WatchdogSettings.from_settings(settings))
    with LiveReporter(quiet=as_json) as reporter:
        session = start(name, app.ledger, app.providers, reporter, options)
    hold_ready(app, session, "is ready again:",
               f"stop it with `cloudsd stop {name}`, end it with `cloudsd down {name}`", detach=detach, as_json=as_json)
