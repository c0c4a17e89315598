"""The `cloudsd` command group.

Each command lives in the module of its group (machines, sync, cost, image, settings) and is imported only
when it runs or `--help` lists it (click's lazy-group pattern); everything heavy (docker, paramiko, httpx,
rich) is imported inside the commands. `main.py` runs this group, and turns its errors into exit codes.
"""

from __future__ import annotations

import importlib

import click

from cloudsd import __version__
from cloudsd.cli.app import App

# Every command, by name: "module:attribute" under cloudsd.cli. One way in for all of them.
COMMANDS = {
    "budget": "cost:budget",
    "config": "settings:config",
    "cost": "cost:cost",
    "doctor": "machines:doctor",
    "down": "machines:down",
    "generate": "generate:generate_cmd",
    "image": "image:image",
    "init": "settings:init",
    "offers": "machines:offers",
    "ssh": "machines:ssh",
    "start": "resume:start_cmd",
    "status": "machines:status",
    "stop": "resume:stop_cmd",
    "sync": "sync:sync",
    "tunnel": "machines:tunnel",
    "up": "machines:up",
    "volume": "volume:volume",
}


class LazyGroup(click.Group):
    """The command group: imports a command's module on first use, and knows a few aliases (`ls` for
    `status`) without listing them twice in --help."""

    aliases = {"ls": "status"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = self.aliases.get(cmd_name, cmd_name)
        if name not in COMMANDS:
            return None
        module_name, _, attribute = COMMANDS[name].partition(":")
        command: click.Command = getattr(importlib.import_module(f"cloudsd.cli.{module_name}"), attribute)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest

    def invoke(self, ctx: click.Context) -> None:
        """A command's return value is no exit code, as in click's standalone mode. `main` runs the group with
        standalone_mode=False, where click returns either a command's value or the code of a `ctx.exit(code)`
        (click.exceptions.Exit); with the values dropped here, what it returns is always an exit code."""
        super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cloudsd")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Stable Diffusion web UIs on a rented GPU, one command up and one command down.

    \b
    cloudsd up                 start a machine, tunnel the web UI to 127.0.0.1
    cloudsd status             what runs, what it costs
    cloudsd tunnel NAME        reattach the tunnel
    cloudsd generate NAME "…"  pictures from the terminal, through the machine's UI
    cloudsd stop NAME          stop for the night, keeping the disk (start NAME resumes)
    cloudsd down NAME          end the machine and confirm it is gone

    Config, keys and the ledger live in $CLOUDSD_HOME (default ~/.cloudsd).
    Set CLOUDSD_DEBUG=1 to see tracebacks.
    """
    app = App()
    ctx.obj = app
    ctx.call_on_close(app.close)


__all__ = ["COMMANDS", "cli"]
