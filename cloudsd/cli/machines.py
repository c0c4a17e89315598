"""The machine commands: `up`, `offers`, `status`, `tunnel`, `ssh`, `down`, `doctor`.

Each command parses its options, calls one core function with the `App`'s settings, ledger and providers,
and renders what comes back. Only click is imported at the top (rich, paramiko, httpx and docker inside the
commands), so `cloudsd --help` stays fast.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from cloudsd.cli.app import App, pass_app
from cloudsd.cli.params import (
    CUDA,
    DISK_GB,
    FRACTION,
    LIMIT,
    MACHINE_NAME,
    PORT,
    POSITIVE_DURATION,
    PRICE,
    SPEND,
    VRAM_GB,
    ProviderChoice,
)

if TYPE_CHECKING:
    from cloudsd.ledger import Ledger
    from cloudsd.machine import Offer

OFFER_KEYS = ("gpu", "min_vram", "max_price", "disk", "min_reliability", "region", "cuda", "interruptible")


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
        choice = {k: kwargs.pop(k) for k in OFFER_KEYS}
        choice["gpu"] = list(choice["gpu"]) or None
        return func(choice=choice, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    wrapper.__click_params__ = func.__click_params__  # type: ignore[attr-defined]
    del func.__click_params__
    return wrapper


def _choice_settings(choice: dict[str, Any]) -> dict[str, Any]:
    return {"gpu": choice["gpu"], "max_price": choice["max_price"], "disk_gb": choice["disk"]}


@click.command()
@click.argument("name", required=False, type=MACHINE_NAME)
@click.option("--provider", type=ProviderChoice(extra=("auto",)), help="Where to run.")
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
@click.option("--volume", metavar="NAME", help="Mount this volume at /workspace (models on it are not sent again).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before renting a machine that costs money.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine record as JSON.")
@pass_app
def up(app: App, name: str | None, provider: str | None, image: str | None, ui: str | None,
       image_source: str | None, port: int | None,
       choice: dict[str, Any], detach: bool, keep_on_failure: bool | None, max_time: float | None,
       max_spend: float | None, idle_stop: float | None, idle_action: str | None, models: tuple[str, ...],
       manifest: str | None, volume: str | None, yes: bool, as_json: bool) -> None:
    """Start a machine with the web UI and tunnel it to http://127.0.0.1:PORT.

    Attached by default: the tunnel stays up with a status line until Ctrl-C, which detaches and leaves
    the machine running. Example: `cloudsd up mybox --provider vastai --gpu 'RTX 4090' --max-price 0.5`.
    With `--max-time 2h --idle-stop 30m` a watchdog on the machine ends it even with the laptop closed.
    With `--models` or `--manifest`, the disk is sized for the models (unless --disk) and they are synced
    once the machine is ready. With `--volume NAME` the machine is placed where the volume lives and mounts it at
    /workspace: models already on it are not sent again.
    """
    from cloudsd.cli import render
    from cloudsd.cli.progress import LiveReporter
    from cloudsd.cli.sync import model_requests, show_push
    from cloudsd.core import hold  # noqa: F401 - loaded before the URL is shown: Ctrl-C from then on detaches
    from cloudsd.core.up import UpOptions, models_failed, spec_from
    from cloudsd.core.up import up as start
    from cloudsd.errors import CloudsdError

    flags = {"provider": provider, "image": image, "ui": ui, "image_source": image_source, "port": port,
             "keep_on_failure": keep_on_failure,
             "max_time": max_time, "max_spend": max_spend, "idle_stop": idle_stop, "idle_action": idle_action}
    if volume:
        from cloudsd.core.volumes import provider_for

        flags["provider"] = provider_for(app.ledger, volume, provider)
    settings = app.configure({**flags, **_choice_settings(choice)})
    requests = model_requests(list(models), manifest)  # a bad path or reference fails before renting
    options = UpOptions.from_settings(settings, name, spec=spec_from(settings, choice), volume=volume)

    def confirm(offer: Offer) -> bool:
        if yes or offer.price_per_hour == 0:
            return True
        budget = f" ({options.budget.describe()})" if options.budget.enforced else ""
        return click.confirm(
            f"Rent {offer.gpu_name} ×{offer.gpu_count} on {offer.provider} at "
            f"{render.money(offer.price_per_hour, 3)}/h{budget}?", default=True, err=True)

    with LiveReporter(quiet=as_json) as reporter:
        result = start(options, app.ledger, app.providers, reporter, confirm=confirm, models=requests)
    session, record = result.session, result.session.record
    if result.pushed is not None:
        try:
            show_push(result.pushed, as_json, table=not as_json)
        except CloudsdError as exc:
            session.close()
            raise models_failed(record.name, exc.message) from None
    hold_ready(app, session, "is ready:", f"end it with `cloudsd down {record.name}`", detach=detach,
               as_json=as_json)


def hold_ready(app: App, session: Any, headline: str, ending: str, *, detach: bool, as_json: bool) -> None:
    """Say the machine is ready (or print its record as JSON), then close the tunnel (`detach`) or hold it."""
    from cloudsd.cli import render

    record = session.record
    out = render.console(stderr=True)
    if as_json:
        render.print_json({**record.to_dict(), "url": session.url})
    else:
        out.print(render.styled((f"{record.name} {headline}", "bold green"), f" {session.url}"))
        if record.price_per_hour:
            out.print(f"  billing {render.money(record.price_per_hour, 3)}/h; {ending}")
    if detach:
        session.close()
        if not as_json:
            out.print(f"  the tunnel closes now; reopen it with `cloudsd tunnel {record.name}`")
        return
    _hold(app, session)


def _hold(app: App, session: Any) -> None:
    """Draw the attached status line while core holds the machine, then say how it ended."""
    ticks = 0
    try:  # "ready" is on the screen: a Ctrl-C from now on detaches, even before the first tick
        from rich.text import Text

        from cloudsd.cli import render
        from cloudsd.cli.progress import LiveReporter
        from cloudsd.core.hold import HoldLine, hold

        record = session.record
        out = render.console(stderr=True)
        with out.status("") as line:
            def on_tick(view: HoldLine) -> None:
                nonlocal ticks
                ticks += 1
                text = render.status_line(record.name, view.uptime_s, record.price_per_hour, session.url,
                                          cost_usd=view.cost_usd, budget=view.budget_text)
                if view.warning:
                    out.print(render.styled(("warning:", "yellow"), f" {view.warning}"))
                if not view.ssh_healthy:
                    text += " · SSH dropped, reconnecting on next request"
                line.update(Text(text))

            def announce(text: str) -> None:
                line.stop()
                out.print(text)

            end = hold(session, app.ledger, app.providers, on_tick, announce, LiveReporter)
    except KeyboardInterrupt:
        if ticks:  # hold catches its own Ctrl-C once it ticks: this one came later (ending the machine)
            raise
        session.close()
        from cloudsd.cli import render
        from cloudsd.core.hold import HoldEnd

        record, out, end = session.record, render.console(stderr=True), HoldEnd("detached")
    if end.how == "budget":
        out.print(f"{record.name}: destroyed · {final_cost(app.ledger, record.name)}")
    elif end.how == "ended":
        out.print(f"{record.name}: {end.reason} · {final_cost(app.ledger, record.name)}")
    else:
        cost = f" (and billing {render.money(record.price_per_hour, 3)}/h)" if record.price_per_hour else ""
        out.print(f"Detached. Machine {record.name} keeps running{cost}.")
        out.print(f"  reattach: cloudsd tunnel {record.name}")
        out.print(f"  end it:   cloudsd down {record.name}")


def final_cost(ledger: Ledger, name: str) -> str:
    """"cost $0.1234 (estimate: 2m13s at $2.690/h)", or what a stopped machine still bills."""
    from cloudsd.cli import render
    from cloudsd.core.cost import session_cost
    from cloudsd.durations import format_duration

    record, events = ledger.session(name)
    cost = session_cost(record, events)
    text = (f"cost {render.money(cost.cost_usd, 4)} (estimate: {format_duration(cost.running_s)} at "
            f"{render.money(record.price_per_hour, 3)}/h")
    if cost.stopped_s:
        text += f", {format_duration(cost.stopped_s)} stopped at {render.money(record.storage_price_per_hour, 4)}/h"
    text += ")"
    if cost.state == "stopped":
        text += (f"; stopped, it still bills storage {render.money(record.storage_price_per_hour, 4)}/h: "
                 f"end it with `cloudsd down {name}`")
    return text


@click.command()
@click.option("--provider", type=ProviderChoice(extra=("all",)), default="all",
              show_default=True, help="Which providers to ask.")
@offer_options
@click.option("--limit", type=LIMIT, default=20, show_default=True, help="How many offers to show.")
@click.option("--volume", metavar="NAME", help="Only offers a machine using this volume can start from.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def offers(app: App, provider: str, choice: dict[str, Any], limit: int, volume: str | None, as_json: bool) -> None:
    """Live offers from every configured provider, cheapest first, total $/h with storage for --disk.

    Example: `cloudsd offers --gpu 'RTX 4090' --gpu 'RTX 3090' --max-price 0.6 --disk 60`.
    """
    from cloudsd.cli import render
    from cloudsd.core.offers import select
    from cloudsd.core.up import gather_offers, spec_from
    from cloudsd.errors import CloudsdError

    settings = app.configure(_choice_settings(choice))
    spec = spec_from(settings, choice)
    if volume:
        from cloudsd.core.volumes import offers_for, provider_for

        provider_for(app.ledger, volume, provider)
        found = offers_for(app.ledger, app.providers, volume, spec)
    elif provider == "all":
        names = app.providers.configured_clouds()
        if not names:
            raise CloudsdError(
                "no cloud provider is configured.",
                hint="Set RUNPOD_API_KEY or VAST_API_KEY (or write ~/.runpod/config.toml or "
                     "~/.config/vastai/vast_api_key); `cloudsd doctor` checks them. "
                     "`cloudsd offers --provider local` shows this computer.")
    else:
        names = (provider,)
    if not volume:
        found = gather_offers(app.providers, names, spec)
    chosen = select(found, spec)[:limit]
    if as_json:
        render.print_json([o.to_dict() for o in chosen])
    else:
        render.print_table(render.offers_table(chosen, spec, render.console().width))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Check each provider with one live call and say which key it used (last four characters only)."""
    from cloudsd.cli import render
    from cloudsd.core.doctor import check_all

    results = check_all(app.providers)
    if as_json:
        render.print_json([r.to_dict() for r in results])
    else:
        render.print_table(render.doctor_table(results))
    if not any(r.ok for r in results):
        sys.exit(1)


@click.command(name="status")  # alias: ls
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Machines in the ledger with the provider's live view, their cost so far, and strays (alias: ls)."""
    from cloudsd.cli.status import show_status  # click-free: `cloudsd status` also runs it without click

    show_status(app, as_json)


@click.command()
@click.argument("name")
@click.option("--port", type=PORT, help="Local port (default: the one used before).")
@pass_app
def tunnel(app: App, name: str, port: int | None) -> None:
    """Reattach the web UI tunnel to a running machine, until Ctrl-C."""
    from cloudsd.cli import render
    from cloudsd.cli.progress import LiveReporter
    from cloudsd.core import hold  # noqa: F401 - loaded before the URL is shown: Ctrl-C from then on detaches
    from cloudsd.core.attach import attach, rearm
    from cloudsd.core.watchdog import WatchdogSettings

    with LiveReporter() as reporter:
        session = attach(name, port, app.ledger, app.providers, reporter)
    # The watchdog is back before the URL is shown: a Ctrl-C after the URL detaches (in _hold), and one while it
    # was still being rearmed, after the URL, ended the command as aborted (exit 130).
    note = rearm(app.ledger, app.providers, session, WatchdogSettings.from_settings(app.settings))
    render.console(stderr=True).print(render.styled((f"{name}:", "bold green"), f" {session.url}"))
    if note:
        render.console(stderr=True).print(f"  {note}")
    _hold(app, session)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def ssh(app: App, name: str, command: tuple[str, ...]) -> None:
    """Open a shell on the machine, or run one command: `cloudsd ssh NAME -- nvidia-smi`.

    Uses the machine's own key and its pinned host key.
    """
    import shutil
    import subprocess

    from cloudsd.core.shell import run_command, ssh_argv
    from cloudsd.errors import CloudsdError

    if not command:
        argv = ssh_argv(app.ledger, name)
        if shutil.which("ssh") is None:
            raise CloudsdError("no `ssh` program on this computer for an interactive shell.",
                               hint="Install OpenSSH, or run one command: `cloudsd ssh NAME -- CMD`.")
        sys.exit(subprocess.call(argv))
    code, out, err = run_command(app.ledger, name, list(command))
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="End every machine in the ledger.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-outputs", is_flag=True, help="Do not pull the outputs first.")
@click.option("--force", is_flag=True, help="Destroy even when the outputs cannot be saved.")
@pass_app
def down(app: App, names: tuple[str, ...], all_: bool, yes: bool, no_outputs: bool, force: bool) -> None:
    """End machines and confirm with the provider that they are gone. Safe to repeat.

    First the outputs are pulled into ~/cloudsd-outputs/NAME/ (the `outputs_dir` setting,
    CLOUDSD_OUTPUTS_DIR) and verified; if that fails, the machine is not destroyed (unless --force or
    --no-outputs).
    """
    from cloudsd.cli import render
    from cloudsd.cli.progress import LiveReporter
    from cloudsd.core.status import status as machine_status
    from cloudsd.core.sync import outputs_root as root_of
    from cloudsd.core.teardown import NOT_ENDED, end_stray
    from cloudsd.core.teardown import down as end
    from cloudsd.errors import CloudsdError

    if not names and not all_:
        raise click.UsageError("name a machine, or use --all")
    ledger, providers = app.ledger, app.providers
    out = render.console(stderr=True)
    chosen = list(names)
    strays = []
    if all_:
        chosen = [r.name for r in ledger.machines(active_only=True)]
        strays = [r for r in machine_status(ledger, providers, sweep=providers.configured_clouds()) if r.stray]
        if not chosen and not strays:
            out.print("No machines to end.")
            return
    outputs_root = root_of(app.settings) if not no_outputs else None
    if chosen and not yes and not click.confirm(render.down_question(chosen, outputs_root), default=False,
                                                err=True):
        raise click.Abort()
    if strays:
        listing = ", ".join(f"{r.name} ({r.provider} {r.provider_id}, {render.money(r.price_per_hour, 3)}/h)"
                            for r in strays)
        out.print(f"Not in this ledger but labelled cloudsd- on your accounts: {listing}")
        if not yes and not click.confirm("End these strays too?", default=False, err=True):
            strays = []
    with LiveReporter() as reporter:
        results = end(chosen, ledger, providers, reporter, outputs_root=outputs_root, force=force)
        for row in strays:
            reporter.phase("destroying", f"stray {row.name} on {row.provider}")
            end_stray(providers, row.provider, str(row.provider_id))
            results.append((row.name, "stray destroyed"))
    for name, outcome in results:
        out.print(f"{name}: {outcome}" + (f" · {final_cost(ledger, name)}" if "stray" not in outcome else ""))
    from cloudsd.core.volumes import reminders

    for line in reminders(ledger, [name for name, _ in results], time.time()):
        out.print(line)
    left = [name for name, outcome in results if outcome.startswith(NOT_ENDED)]
    if left:
        raise CloudsdError(f"{', '.join(left)} not ended (see above).", hint="They may still bill.")
