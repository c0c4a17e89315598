"""Entry point and the `cloudsd` command group.

Each command lives in the module of its group (machines, sync, cost, image, settings) and is imported only
when it runs or `--help` lists it (click's lazy-group pattern); everything heavy (docker, paramiko, httpx,
rich) is imported inside the commands, so `cloudsd --help` and `cloudsd --version` start fast. Errors become
one line and an exit code here, and only here.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from cloudsd import __version__
from cloudsd.cli.app import App
from cloudsd.errors import CloudsdError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def _debug() -> bool:
    return os.environ.get("CLOUDSD_DEBUG", "") not in ("", "0")


def say_error(text: str) -> None:
    """Every error line goes out here: secrets masked in any form they may take (`cloudsd.redact`), and
    one line, whatever a provider's message held."""
    from cloudsd.redact import scrub  # only an error needs it: `--help` starts without its json and urllib

    click.echo(" ".join(scrub(text).splitlines()), err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn cloudsd errors and Ctrl-C into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="cloudsd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            hint = f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help."
            click.echo(hint, err=True)
        say_error(f"Error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except CloudsdError as exc:
        if _debug():
            raise
        say_error(f"error: {exc}")
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, the traceback on request
        if _debug():
            raise
        say_error(f"internal error: {type(exc).__name__}: {exc} (run with CLOUDSD_DEBUG=1 for the traceback)")
        sys.exit(EXIT_INTERNAL)


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


__all__ = ["cli", "main"]
