"""`cloudsd init` and `cloudsd config show`: the settings file and where each value comes from."""

from __future__ import annotations

import click

from cloudsd.cli.app import App, pass_app


@click.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config.yaml.")
def init(force: bool) -> None:
    """Write a commented config.yaml into the config dir."""
    from cloudsd.config import init_file

    path = init_file(force=force)
    click.echo(f"wrote {path}")


@click.group()
def config() -> None:
    """Inspect the settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def config_show(app: App, as_json: bool) -> None:
    """Print every setting with its value and where it came from (flag > env > file > default)."""
    from cloudsd.cli import render

    settings = app.settings
    if as_json:
        render.print_json({k: {"value": settings[k], "source": settings.source(k)} for k in settings})
    else:
        render.print_table(render.settings_table(settings))
