"""Bodies of the machine commands: resolve settings, call core, draw progress and results."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from cloudsd.cli import render
from cloudsd.config import resolve
from cloudsd.core.deploy import NOT_ENDED, Session, UpOptions, attach, down, gather_offers, spec_from, up
from cloudsd.core.machines import Providers
from cloudsd.core.status import status
from cloudsd.core.volumes import listing as volume_listing
from cloudsd.core.volumes import reminders as volume_reminders
from cloudsd.errors import CloudsdError
from cloudsd.ledger import Ledger, MachineRecord
from cloudsd.models import OfferSpec
from cloudsd.providers import provider_class
from cloudsd.redact import scrub

CLOUDS = ("runpod", "vastai")


class LiveReporter:
    """Draws each phase of `up` on one updating line, keeping finished phases above it with their times."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = render.console(stderr=True)
        self.quiet = quiet
        self._status: Any = None
        self._phase: str | None = None
        self._phase_started = time.monotonic()

    def __enter__(self) -> LiveReporter:
        if not self.quiet:
            self._status = self.console.status("starting")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
        self._finish_phase()

    def _finish_phase(self) -> None:
        if self._phase and self._phase != "ready" and not self.quiet:
            self.console.print(render.styled("  ", ("✓", "green"),
                                             f" {self._phase} ({time.monotonic() - self._phase_started:.1f} s)"))
        self._phase = None

    def phase(self, name: str, detail: str = "") -> None:
        if name != self._phase:
            self._finish_phase()
            self._phase = name
            self._phase_started = time.monotonic()
        if self._status is not None:
            self._status.update(Text(scrub(f"{name}: {detail}")))  # literal: details carry provider text

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"  {scrub(message)}")  # notes carry provider errors (a skipped provider)


def _hold(session: Session, record: MachineRecord, ledger: Ledger | None = None,
          providers: Providers | None = None) -> None:
    """Keep the tunnel up with a status line until Ctrl-C, then detach and say how to come back.

    With the ledger and providers, the line shows the cost so far and the budget used, warns once at the
    budget's warning share, ends the machine when a time or spend budget is reached, and stops holding when
    the machine stops or goes away (its watchdog, or the provider).
    """
    from cloudsd.core.guard import BudgetGuard

    out = render.console(stderr=True)
    guard = None
    if ledger is not None and providers is not None:
        guard = BudgetGuard(ledger, providers.get(record.provider), record.name, lambda: session.forward.connection)
    reached = ended = None
    try:
        with out.status("") as line:
            while True:
                view = guard.tick() if guard is not None else None
                uptime = view.uptime_s if view else time.time() - (record.created_at or time.time())
                text = render.status_line(record.name, uptime, record.price_per_hour, session.url,
                                          cost_usd=view.cost.cost_usd if view else None,
                                          budget=view.budget_text if view else "")
                if view and view.warning:
                    out.print(render.styled(("warning:", "yellow"), f" {view.warning}"))
                if view and (view.reached or view.ended):
                    reached, ended = view.reached, view.ended
                    break
                if not session.forward.healthy:
                    text += " · SSH dropped, reconnecting on next request"
                line.update(Text(text))
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    if reached is not None and ledger is not None and providers is not None:
        out.print(f"{record.name}: {reached.reason}; ending it.")
        ledger.event(record.name, "budget-reached", {"reason": reached.reason, "at": reached.at})
        with LiveReporter() as reporter:  # no output pull: the watchdog ends it at the limit regardless
            down([record.name], ledger, providers, reporter)
        out.print(f"{record.name}: destroyed · {final_cost(ledger, record.name)}")
        return
    if ended is not None and ledger is not None:
        out.print(f"{record.name}: {ended} · {final_cost(ledger, record.name)}")
        return
    cost = f" (and billing {render.money(record.price_per_hour, 3)}/h)" if record.price_per_hour else ""
    out.print(f"Detached. Machine {record.name} keeps running{cost}.")
    out.print(f"  reattach: cloudsd tunnel {record.name}")
    out.print(f"  end it:   cloudsd down {record.name}")


def final_cost(ledger: Ledger, name: str) -> str:
    """"cost $0.1234 (estimate: 2m13s at $2.690/h)", or what a stopped machine still bills."""
    from cloudsd.core.cost import session_cost
    from cloudsd.core.guard import current
    from cloudsd.durations import format_duration

    record, events = current(ledger, name)
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


def _settings_and_spec(flags: dict[str, Any], choice: dict[str, Any]) -> tuple[Any, OfferSpec]:
    settings = resolve({**flags, "gpu": choice["gpu"], "max_price": choice["max_price"], "disk_gb": choice["disk"]})
    return settings, spec_from(settings, choice)


def run_up(name: str | None, flags: dict[str, Any], choice: dict[str, Any], *, detach: bool, yes: bool,
           as_json: bool, models: list[str] | None = None, manifest: str | None = None,
           volume: str | None = None) -> None:
    if volume:
        flags = {**flags, "provider": _volume_provider(volume, flags.get("provider"))}
    settings, spec = _settings_and_spec(flags, choice)
    requests = _model_requests(models or [], manifest)  # a bad path or reference fails before renting
    if requests and choice["disk"] is None:
        from dataclasses import replace

        from cloudsd.core.sync import disk_gb_for

        disk_gb, notes = disk_gb_for(requests)
        if disk_gb > spec.disk_gb:
            spec = replace(spec, disk_gb=disk_gb)
            if not as_json:
                for note in [*notes, f"disk: {disk_gb} GB, for the models plus headroom"]:
                    render.console(stderr=True).print(f"  {note}")
    options = UpOptions.from_settings(settings, name, spec=spec, volume=volume)
    ledger = Ledger()
    providers = Providers(settings)

    def confirm(offer: Any) -> bool:
        if yes or offer.price_per_hour == 0:
            return True
        budget = f" ({options.budget.describe()})" if options.budget.enforced else ""
        return click.confirm(
            f"Rent {offer.gpu_name} ×{offer.gpu_count} on {offer.provider} at "
            f"{render.money(offer.price_per_hour, 3)}/h{budget}?", default=True, err=True)

    try:
        with LiveReporter(quiet=as_json) as reporter:
            session = up(options, ledger, providers, reporter, confirm=confirm)
        record = session.record
        out = render.console(stderr=True)
        if requests:
            from cloudsd.cli.sync_run import push_after_up

            push_after_up(session, requests, as_json)
        if as_json:
            render.print_json({**record.to_dict(), "url": session.url})
        else:
            out.print(render.styled((f"{record.name} is ready:", "bold green"), f" {session.url}"))
            if record.price_per_hour:
                out.print(f"  billing {render.money(record.price_per_hour, 3)}/h; end it with "
                          f"`cloudsd down {record.name}`")
        if detach:
            session.close()
            if not as_json:
                out.print(f"  the tunnel closes now; reopen it with `cloudsd tunnel {record.name}`")
            return
        _hold(session, record, ledger, providers)
    finally:
        providers.close()
        ledger.close()


def _model_requests(models: list[str], manifest: str | None) -> list[Any]:
    if not models and not manifest:
        return []

    from cloudsd.sync.collect import check_sources
    from cloudsd.sync.manifest import from_args, load_manifest

    requests = from_args(models, None) + (load_manifest(Path(manifest)) if manifest else [])
    check_sources(requests)
    return requests


def run_tunnel(name: str, port: int | None) -> None:
    settings = resolve()
    ledger = Ledger()
    providers = Providers(settings)
    try:
        with LiveReporter() as reporter:
            session = attach(name, port, ledger, providers, reporter)
        render.console(stderr=True).print(render.styled((f"{name}:", "bold green"), f" {session.url}"))
        _ensure_watchdog(ledger, providers, settings, session)
        _hold(session, session.record, ledger, providers)
    finally:
        providers.close()
        ledger.close()


def _ensure_watchdog(ledger: Ledger, providers: Providers, settings: Any, session: Session) -> None:
    """A machine with a budget whose watchdog no longer runs (a restart, a resume) gets it back."""
    from cloudsd.core.guard import ensure_watchdog
    from cloudsd.core.watchdog import WatchdogSettings

    note = ensure_watchdog(ledger, session.record, session.connection, providers.get(session.record.provider),
                           WatchdogSettings.from_settings(settings))
    if note:
        render.console(stderr=True).print(f"  {note}")


def run_status(as_json: bool) -> None:
    settings = resolve()
    ledger = Ledger()
    providers = Providers(settings)
    try:
        sweep = tuple(p for p in CLOUDS if _configured(providers, p))
        rows = status(ledger, providers, sweep=sweep)
        volumes = [] if as_json else volume_listing(ledger, providers, time.time(),
                                                    sweep=[p for p in sweep if provider_class(p).supports_volumes])
    finally:
        providers.close()
        ledger.close()
    if as_json:
        render.print_json([r.to_dict() for r in rows])
        return
    volume_lines = render.volume_status_lines(v.to_dict() for v in volumes)
    if not rows:
        render.console().print("\n".join(["No machines. Start one with `cloudsd up`.", *volume_lines]))
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


def _configured(providers: Providers, name: str) -> bool:
    """Whether the user has a key for this cloud (so sweeping it makes sense)."""
    try:
        providers.get(name)
    except CloudsdError:
        return False
    return True


def run_ssh(name: str, command: list[str]) -> None:
    from cloudsd import keys
    from cloudsd.core.deploy import reconnect_record

    ledger = Ledger()
    try:
        record = ledger.get(name)
        if record.status != "terminated" and record.ssh_host and not record.host_key:
            reconnect_record(record, deadline_s=30, ledger=ledger).close()  # pins the host key on first connect
            record = ledger.get(name)
    finally:
        ledger.close()
    if record.status == "terminated" or not record.ssh_host or not record.host_key:
        raise CloudsdError(f"machine {name!r} is not reachable ({record.status}).",
                           hint="`cloudsd status` shows its state.")
    pair = keys.load_key_pair(name)
    keys.write_known_hosts(pair, record.ssh_host, record.ssh_port or 22, record.host_key)
    argv = ["ssh", "-i", str(pair.private_path), "-o", f"UserKnownHostsFile={pair.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-p", str(record.ssh_port),
            f"{record.ssh_user or 'root'}@{record.ssh_host}"]
    if not command:
        if shutil.which("ssh") is None:
            raise CloudsdError("no `ssh` program on this computer for an interactive shell.",
                               hint="Install OpenSSH, or run one command: `cloudsd ssh NAME -- CMD`.")
        sys.exit(subprocess.call(argv))
    with reconnect_record(record, deadline_s=30) as connection:
        code, out, err = connection.run(" ".join(command), timeout_s=3600)
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


def run_down(names: list[str], *, all_: bool, yes: bool, save_outputs: bool = True, force: bool = False) -> None:
    from cloudsd.core.deploy import end_stray

    settings = resolve()
    ledger = Ledger()
    providers = Providers(settings)
    out = render.console(stderr=True)
    try:
        strays = []
        if all_:
            names = [r.name for r in ledger.machines(active_only=True)]
            sweep = tuple(p for p in CLOUDS if _configured(providers, p))
            strays = [r for r in status(ledger, providers, sweep=sweep) if r.stray]
            if not names and not strays:
                out.print("No machines to end.")
                return
        from cloudsd.core.sync import outputs_root as root_of

        outputs_root = root_of(settings) if save_outputs else None
        if names and not yes and not click.confirm(render.down_question(names, outputs_root), default=False,
                                                   err=True):
            raise click.Abort()
        if strays:
            listing = ", ".join(f"{r.name} ({r.provider} {r.provider_id}, {render.money(r.price_per_hour, 3)}/h)"
                                for r in strays)
            out.print(f"Not in this ledger but labelled cloudsd- on your accounts: {listing}")
            if not yes and not click.confirm("End these strays too?", default=False, err=True):
                strays = []
        with LiveReporter() as reporter:
            results = down(names, ledger, providers, reporter, outputs_root=outputs_root, force=force)
            for row in strays:
                reporter.phase("destroying", f"stray {row.name} on {row.provider}")
                end_stray(providers, row.provider, str(row.provider_id))
                results.append((row.name, "stray destroyed"))
        for name, outcome in results:
            out.print(f"{name}: {outcome}" + (f" · {final_cost(ledger, name)}" if "stray" not in outcome else ""))
        for line in volume_reminders(ledger, [name for name, _ in results], time.time()):
            out.print(line)
        left = [name for name, outcome in results if outcome.startswith(NOT_ENDED)]
        if left:
            raise CloudsdError(f"{', '.join(left)} not ended (see above).", hint="They may still bill.")
    finally:
        providers.close()
        ledger.close()


def _volume_provider(volume: str, chosen: str | None) -> str:
    from cloudsd.core.volumes import provider_for

    ledger = Ledger()
    try:
        return provider_for(ledger, volume, chosen)
    finally:
        ledger.close()


def run_offers(provider: str, choice: dict[str, Any], limit: int, as_json: bool, volume: str | None = None) -> None:
    from cloudsd.core.offers import select

    settings, spec = _settings_and_spec({}, choice)
    providers = Providers(settings)
    try:
        if volume:
            from cloudsd.core.volumes import offers_for

            _volume_provider(volume, provider)
            ledger = Ledger()
            try:
                found = offers_for(ledger, providers, volume, spec)
            finally:
                ledger.close()
            names: tuple[str, ...] = ()
        elif provider == "all":
            names = tuple(p for p in CLOUDS if _configured(providers, p))
            if not names:
                raise CloudsdError(
                    "no cloud provider is configured.",
                    hint="Set RUNPOD_API_KEY or VAST_API_KEY (or write ~/.runpod/config.toml or "
                         "~/.config/vastai/vast_api_key); `cloudsd doctor` checks them. "
                         "`cloudsd offers --provider local` shows this computer.")
        else:
            names = (provider,)
        if names:
            found = gather_offers(providers, names, spec, LiveReporter(quiet=True))
        chosen = select(found, spec)[:limit]
    finally:
        providers.close()
    if as_json:
        render.print_json([o.to_dict() for o in chosen])
    else:
        render.print_table(render.offers_table(chosen, spec, render.console().width))


def run_doctor(as_json: bool) -> None:
    from cloudsd.core.doctor import check_all

    settings = resolve()
    providers = Providers(settings)
    try:
        results = check_all(providers)
    finally:
        providers.close()
    if as_json:
        render.print_json([r.to_dict() for r in results])
    else:
        render.print_table(render.doctor_table(results))
    if not any(r.ok for r in results):
        sys.exit(1)
