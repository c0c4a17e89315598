"""Entry point and the `cloudsd` command group.

Everything heavy (docker, paramiko, httpx, rich) is imported inside the commands, so `cloudsd --help`
and `cloudsd --version` start fast. Errors become one line and an exit code here, and only here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from cloudsd import __version__
from cloudsd.cli import cmd_image
from cloudsd.cli.params import (
    CUDA,
    DISK_GB,
    DURATION,
    FRACTION,
    LIMIT,
    MACHINE_NAME,
    PORT,
    POSITIVE_DURATION,
    PRICE,
    SPEND,
    VRAM_GB,
)
from cloudsd.errors import CloudsdError
from cloudsd.redact import scrub

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def _debug() -> bool:
    return os.environ.get("CLOUDSD_DEBUG", "") not in ("", "0")


def say_error(text: str) -> None:
    """Every error line goes out here: secrets masked in any form they may take (`cloudsd.redact`), and
    one line, whatever a provider's message held."""
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


class AliasedGroup(click.Group):
    """A group that knows a few aliases (`ls` for `status`) without listing them twice in --help."""

    aliases = {"ls": "status"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest


@click.group(cls=AliasedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cloudsd")
def cli() -> None:
    """Stable Diffusion web UIs on a rented GPU, one command up and one command down.

    \b
    cloudsd up                 start a machine, tunnel the web UI to 127.0.0.1
    cloudsd status             what runs, what it costs
    cloudsd tunnel NAME        reattach the tunnel
    cloudsd down NAME          end the machine and confirm it is gone

    Config, keys and the ledger live in $CLOUDSD_HOME (default ~/.cloudsd).
    Set CLOUDSD_DEBUG=1 to see tracebacks.
    """


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config.yaml.")
def init(force: bool) -> None:
    """Write a commented config.yaml into the config dir."""
    from cloudsd.config import init_file

    path = init_file(force=force)
    click.echo(f"wrote {path}")


@cli.group()
def config() -> None:
    """Inspect the settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_show(as_json: bool) -> None:
    """Print every setting with its value and where it came from (flag > env > file > default)."""
    from cloudsd.cli import render
    from cloudsd.config import resolve

    settings = resolve()
    if as_json:
        render.print_json({k: {"value": settings[k], "source": settings.source(k)} for k in settings})
    else:
        render.print_table(render.settings_table(settings))


def offer_options(func: Any) -> Any:
    """The flags that choose an offer, shared by `up` and `offers`, packed into one `choice` dict."""
    options = [
        click.option("--gpu", multiple=True, help="GPU to accept, e.g. 'RTX 4090' (repeatable)."),
        click.option("--min-vram", type=VRAM_GB, help="Least GPU memory, GB."),
        click.option("--max-price", type=PRICE, help="Most USD per hour, storage included."),
        click.option("--disk", type=DISK_GB, help="Disk in GB (priced into the offer)."),
        click.option("--min-reliability", type=FRACTION, help="Least host reliability, 0-1 (Vast.ai)."),
        click.option("--region", help="Region or country, e.g. 'US' or 'Sweden'."),
        click.option("--cuda", type=CUDA, help="Least CUDA version the host driver supports, e.g. 12.4."),
        click.option("--interruptible", is_flag=True, default=None, help="Spot/bid machines (cheaper, may stop)."),
    ]
    for option in reversed(options):
        func = option(func)

    def wrapper(**kwargs: Any) -> Any:
        keys = ("gpu", "min_vram", "max_price", "disk", "min_reliability", "region", "cuda", "interruptible")
        choice = {k: kwargs.pop(k) for k in keys}
        choice["gpu"] = list(choice["gpu"]) or None
        return func(choice=choice, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    wrapper.__click_params__ = func.__click_params__  # type: ignore[attr-defined]
    del func.__click_params__
    return wrapper


@cli.command()
@click.argument("name", required=False, type=MACHINE_NAME)
@click.option("--provider", type=click.Choice(["local", "runpod", "vastai", "auto"]), help="Where to run.")
@click.option("--image", help="Container image with sshd and the web UI.")
@click.option("--ui", type=click.Choice(["a1111", "forge", "comfyui"]), help="Which web UI the image runs.")
@click.option("--image-source", type=click.Choice(["auto", "prebuilt", "install"]),
              help="cloudsd's prebuilt image, or install the UI on first boot of a stock PyTorch image; "
                   "auto: prebuilt when it can be pulled.")
@click.option("--port", type=PORT, help="Local port for the web UI (the next free one if busy).")
@offer_options
@click.option("--detach", is_flag=True, help="Return once the machine is ready instead of holding the tunnel.")
@click.option("--keep-on-failure", is_flag=True, default=None, help="Keep a machine that fails to start.")
@click.option("--max-time", type=POSITIVE_DURATION, help="End the machine this long after it starts, e.g. 45m or 2h.")
@click.option("--max-spend", type=SPEND, help="End the machine once it has cost this many USD.")
@click.option("--idle-stop", type=POSITIVE_DURATION, help="Stop the machine after this long with no use, e.g. 30m.")
@click.option("--idle-action", type=click.Choice(["stop", "terminate"]),
              help="What idle does: stop (keeps the disk, which still bills storage) or terminate.")
@click.option("--models", multiple=True, metavar="PATH|REF",
              help="Models to put on the machine once it is ready (repeatable; as for `cloudsd sync models`).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="A models.yaml to sync once ready.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before renting a machine that costs money.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine record as JSON.")
def up(name: str | None, provider: str | None, image: str | None, ui: str | None, image_source: str | None,
       port: int | None,
       choice: dict[str, Any], detach: bool, keep_on_failure: bool | None, max_time: float | None,
       max_spend: float | None, idle_stop: float | None, idle_action: str | None, models: tuple[str, ...],
       manifest: str | None, yes: bool, as_json: bool) -> None:
    """Start a machine with the web UI and tunnel it to http://127.0.0.1:PORT.

    Attached by default: the tunnel stays up with a status line until Ctrl-C, which detaches and leaves
    the machine running. Example: `cloudsd up mybox --provider vastai --gpu 'RTX 4090' --max-price 0.5`.
    With `--max-time 2h --idle-stop 30m` a watchdog on the machine ends it even with the laptop closed.
    With `--models` or `--manifest`, the disk is sized for the models (unless --disk) and they are synced
    once the machine is ready.
    """
    from cloudsd.cli import session

    flags = {"provider": provider, "image": image, "ui": ui, "image_source": image_source, "port": port,
             "keep_on_failure": keep_on_failure,
             "max_time": max_time, "max_spend": max_spend, "idle_stop": idle_stop, "idle_action": idle_action}
    session.run_up(name, flags, choice, detach=detach, yes=yes, as_json=as_json, models=list(models),
                   manifest=manifest)


@cli.command()
@click.option("--provider", type=click.Choice(["local", "runpod", "vastai", "all"]), default="all",
              show_default=True, help="Which providers to ask.")
@offer_options
@click.option("--limit", type=LIMIT, default=20, show_default=True, help="How many offers to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def offers(provider: str, choice: dict[str, Any], limit: int, as_json: bool) -> None:
    """Live offers from every configured provider, cheapest first, total $/h with storage for --disk.

    Example: `cloudsd offers --gpu 'RTX 4090' --gpu 'RTX 3090' --max-price 0.6 --disk 60`.
    """
    from cloudsd.cli import session

    session.run_offers(provider, choice, limit, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """Check each provider with one live call and say which key it used (last four characters only)."""
    from cloudsd.cli import session

    session.run_doctor(as_json)


@cli.command(name="status")  # alias: ls
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(as_json: bool) -> None:
    """Machines in the ledger with the provider's live view, their cost so far, and strays (alias: ls)."""
    from cloudsd.cli import session

    session.run_status(as_json)



@cli.command()
@click.argument("name")
@click.option("--port", type=PORT, help="Local port (default: the one used before).")
def tunnel(name: str, port: int | None) -> None:
    """Reattach the web UI tunnel to a running machine, until Ctrl-C."""
    from cloudsd.cli import session

    session.run_tunnel(name, port)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, command: tuple[str, ...]) -> None:
    """Open a shell on the machine, or run one command: `cloudsd ssh NAME -- nvidia-smi`.

    Uses the machine's own key and its pinned host key.
    """
    from cloudsd.cli import session

    session.run_ssh(name, list(command))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="End every machine in the ledger.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-outputs", is_flag=True, help="Do not pull the outputs first.")
@click.option("--force", is_flag=True, help="Destroy even when the outputs cannot be saved.")
def down(names: tuple[str, ...], all_: bool, yes: bool, no_outputs: bool, force: bool) -> None:
    """End machines and confirm with the provider that they are gone. Safe to repeat.

    First the outputs are pulled into ~/cloudsd-outputs/NAME/ (the `outputs_dir` setting,
    CLOUDSD_OUTPUTS_DIR) and verified; if that fails, the machine is not destroyed (unless --force or
    --no-outputs).
    """
    from cloudsd.cli import session

    if not names and not all_:
        raise click.UsageError("name a machine, or use --all")
    session.run_down(list(names), all_=all_, yes=yes, save_outputs=not no_outputs, force=force)


cli.add_command(cmd_image.image)
from cloudsd.cli import cmd_cost  # noqa: E402,F401 - registers `cost` and `budget` on `cli` (click only)

cli.add_command(__import__("cloudsd.cli.cmd_sync", fromlist=["sync"]).sync)

__all__ = ["cli", "main", "DURATION"]
