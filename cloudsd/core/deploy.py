"""`up`: choose an offer, create, wait, SSH, tunnel, health; and `attach`, the tunnel to a running machine.

The ledger knows a machine from before the create call until the provider confirms it gone. Anything that
fails after a create (a boot that times out, SSH that never answers, Ctrl-C) destroys that machine before
the error reaches the user, unless they asked to keep it; then the message says how to end it.
"""

from __future__ import annotations

import http.client
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudsd import keys
from cloudsd.config import Settings
from cloudsd.core import offers as offer_choice
from cloudsd.core.budget import Budget, check_new_budget, provider_deadline
from cloudsd.core.machines import (
    Providers,
    Reporter,
    destroy_and_confirm,
    end_record,
    refresh_record,
    wait_until_running,
)
from cloudsd.core.watchdog import WatchdogSettings
from cloudsd.errors import (
    CloudsdError,
    ConfigError,
    HostKeyMismatch,
    LedgerError,
    NoCapacity,
    ProviderError,
    ProvisioningError,
    SSHError,
)
from cloudsd.images import ImageChoice, choose_image, install_ui, machine_image
from cloudsd.ledger import Ledger, MachineRecord
from cloudsd.models import CreateRequest, MachineInfo, Offer, OfferSpec, SSHEndpoint
from cloudsd.names import name_problem
from cloudsd.providers import Provider
from cloudsd.ssh import Connection, connect
from cloudsd.tunnel import LocalForward
from cloudsd.ui import DEFAULT_CUDA, DEFAULT_REGISTRY, UIProfile, highest_cuda, image_cuda, profile

MAX_OFFERS_TRIED = 3
NOT_ENDED = "not ended"  # the start of a `down` outcome for a machine it could not act on


@dataclass(frozen=True)
class UpOptions:
    name: str | None
    providers: tuple[str, ...]
    image: str
    ui: str
    port: int
    spec: OfferSpec = field(default_factory=OfferSpec)
    keep_on_failure: bool = False
    boot_timeout_s: float = 600.0
    ssh_timeout_s: float = 120.0
    ui_timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    default_image: bool = False  # `image` is cloudsd's own: use its CUDA 12.8 variant on Blackwell GPUs
    registry: str = DEFAULT_REGISTRY
    image_pull: str = "auto"  # auto | never: may a missing image be pulled onto the local engine
    image_source: str = "auto"  # auto | prebuilt | install: cloudsd's image, or the UI installed on first boot
    stock_image: str | None = None  # the stock image to install into (None: cloudsd.ui_install.STOCK_IMAGES)
    install_timeout_s: float = 5400.0
    budget: Budget = field(default_factory=Budget)  # time, spend and idle limits, enforced on the machine too
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None, **overrides: Any) -> UpOptions:
        provider = settings["provider"]
        providers = ("runpod", "vastai") if provider == "auto" else (provider,)
        spec = spec_from(settings)
        ui = profile(settings["ui"])
        image = choose_image(ui.name, None, image=settings["image"], registry=settings["registry"]).image
        # Unless set, the local port is the UI's usual one: 7860 for A1111 and Forge, 8188 for ComfyUI.
        port = ui.internal_port if settings.source("port") == "default" else settings["port"]
        values: dict[str, Any] = dict(
            name=name, providers=providers, image=image, ui=settings["ui"], port=port,
            spec=spec, keep_on_failure=settings["keep_on_failure"], boot_timeout_s=settings["timeouts.boot"],
            ssh_timeout_s=settings["timeouts.ssh"], ui_timeout_s=settings["timeouts.ui"],
            default_image=not settings["image"], registry=settings["registry"], image_pull=settings["image_pull"],
            image_source=settings["image_source"], stock_image=settings["stock_image"],
            install_timeout_s=settings["timeouts.install"],
            budget=Budget.from_settings(settings), watchdog=WatchdogSettings.from_settings(settings),
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class Session:
    """A ready machine with its SSH connection and web UI tunnel open. Close it to detach."""

    record: MachineRecord
    connection: Connection
    forward: LocalForward
    profile: UIProfile

    @property
    def url(self) -> str:
        return self.forward.url

    def close(self) -> None:
        self.forward.close()
        self.connection.close()


def spec_from(settings: Settings, choice: dict[str, Any] | None = None) -> OfferSpec:
    """The offer filters: gpu, max price and disk from the settings, the rest from flags. Without --cuda, only
    hosts whose driver runs the image's CUDA version (its `-cuXYZ` tag) are offered."""
    choice = choice or {}
    image = choose_image(settings["ui"], None, image=settings["image"], registry=settings["registry"]).image
    return OfferSpec(
        gpus=tuple(settings["gpu"]), max_price_per_hour=settings["max_price"], disk_gb=settings["disk_gb"],
        min_vram_gb=choice.get("min_vram"), min_reliability=choice.get("min_reliability"), region=choice.get("region"),
        cuda=choice.get("cuda") or image_cuda(image), interruptible=bool(choice.get("interruptible")),
    )


def new_name() -> str:
    return f"sd-{secrets.token_hex(2)}"


def gather_offers(providers: Providers, names: tuple[str, ...], spec: OfferSpec,
                  reporter: Reporter | None = None) -> list[Offer]:
    """Live offers from every named provider; a provider that fails is reported and skipped if others answer."""
    found: list[Offer] = []
    errors: list[CloudsdError] = []
    for name in names:
        try:
            found.extend(providers.get(name).offers(spec))
        except CloudsdError as exc:
            if len(names) == 1:
                raise
            errors.append(exc)
            if reporter:
                reporter.note(f"{name}: {exc}")
    if not found and errors:
        raise errors[0]
    return found


def up(options: UpOptions, ledger: Ledger, providers: Providers, reporter: Reporter,
       confirm: Callable[[Offer], bool] | None = None) -> Session:
    """Start a machine and return it ready, with the web UI tunneled to 127.0.0.1.

    `confirm` is asked once, with the cheapest fitting offer, before anything that can cost money.
    """
    ui = profile(options.ui)
    name = options.name or new_name()
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{problem}.")
    ledger.check_free(name)  # a name in use is refused before offers are asked for (reserve() decides races)
    check_new_budget(options.budget, started_at=time.time(), now=time.time(), spent_usd=0.0)  # before renting
    reporter.phase("offers", f"asking {', '.join(options.providers)} for live offers")
    candidates = offer_choice.select(gather_offers(providers, options.providers, options.spec, reporter),
                                     options.spec)
    if confirm is not None and not confirm(candidates[0]):
        raise CloudsdError("nothing was rented.")
    failures: list[str] = []
    tries = candidates[:MAX_OFFERS_TRIED]
    for attempt, offer in enumerate(tries, start=1):
        if attempt > 1:
            reporter.note(f"trying the next offer ({attempt} of {len(tries)})")
        try:
            return _up_on(offer, name, ui, options, ledger, providers.get(offer.provider), providers, reporter)
        except _TryNextOffer as exc:
            if len(tries) == 1:
                raise exc.cause from None
            failures.append(f"{offer.provider} {offer.gpu_name} ({offer.offer_id}): {exc}")
            reporter.note(f"offer {offer.offer_id} failed and was cleaned up: {exc}")
    raise NoCapacity(
        f"no offer could be started after {len(failures)} tries: " + "; ".join(failures),
        hint="Try again later, or loosen the filters (`cloudsd offers` lists what is available).",
    )


class _TryNextOffer(Exception):
    """This offer did not work out and was cleaned up; the next one may."""

    def __init__(self, cause: CloudsdError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _up_on(offer: Offer, name: str, ui: UIProfile, options: UpOptions, ledger: Ledger, provider: Provider,
           providers: Providers, reporter: Reporter) -> Session:
    choice = machine_image(options, ui.name, offer.gpu_name, on_local_engine=provider.prepares_images,
                           on_progress=lambda text: reporter.phase("image", text))  # before anything is recorded
    image = choice.image
    if choice.ours:
        reporter.note(f"web UI: {choice.why}")  # which path, and why, before anything is rented
    # The name is claimed first: nothing of a machine that already has it (its key, known_hosts) is touched.
    ledger.reserve(name, provider.name, image, ui=ui.name)
    try:
        pair = keys.create_key_pair(name)
        ledger.update(name, gpu=offer.gpu_name, price_per_hour=offer.price_per_hour,
                      storage_price_per_hour=offer.storage_price_per_hour, key_path=str(pair.private_path))
    except BaseException as exc:
        _forget(ledger, name, f"not created: {exc or type(exc).__name__}")
        raise
    cuda = highest_cuda(options.spec.cuda, image_cuda(image))  # the host's driver must run the image
    deadline_at = (provider_deadline(options.budget, now=time.time(), price_per_hour=offer.price_per_hour)
                   if provider.supports_deadline else None)  # RunPod's own backstop behind the watchdog
    request = CreateRequest(name=name, image=image, public_key=pair.public_line,
                            env={"CLOUDSD_MACHINE": name, **ui.machine_env(), **options.env},
                            disk_gb=options.spec.disk_gb, cuda=cuda,
                            onstart=None if choice.install else "/opt/cloudsd/boot/entrypoint.sh",
                            deadline_at=deadline_at)
    reporter.phase("creating", f"{provider.name}: {offer.gpu_name} at ${offer.price_per_hour:.3f}/h")
    if offer.gpu_count == 0:
        reporter.note(f"no GPU: {ui.title} runs in CPU mode (slow)")
    provider_id: str | None = None
    try:
        try:
            provider_id = provider.create(offer, request)
        except NoCapacity as exc:
            _forget(ledger, name, f"not created: {exc}")
            raise _TryNextOffer(exc) from None
        except BaseException as exc:
            # The create may have gone through before it failed: look for the label before giving up.
            _cleanup(ledger, providers, name, f"create failed: {exc or type(exc).__name__}", options, reporter)
            raise
        ledger.update(name, provider_id=provider_id, status="booting", event="created",
                      data={"provider_id": provider_id, "offer": offer.offer_id,
                            "price_per_hour": offer.price_per_hour, "deadline_at": deadline_at})
        if provider.bills_money:
            reporter.note(f"{provider.name} machine {provider_id} is billing ${offer.price_per_hour:.3f}/h; "
                          f"end it with `cloudsd down {name}`")
        try:
            session = _make_ready(name, provider, provider_id, ui, options, ledger, pair, reporter, choice)
        except (ProvisioningError, SSHError) as exc:
            if options.keep_on_failure:
                raise
            _cleanup(ledger, providers, name, f"failed: {exc}", options, reporter)
            raise _TryNextOffer(exc) from None
        if options.budget.enforced:
            _arm_watchdog(session, provider, options, ledger, reporter)
        return session
    except (_TryNextOffer, _Unrecorded):
        raise
    except LedgerError as exc:
        if provider_id is None:
            raise
        # The ledger cannot be written (a full disk): end the machine by its id, never through the ledger.
        raise _end_unrecorded(provider, name, provider_id, exc, keep=options.keep_on_failure) from None
    except BaseException as exc:
        if options.keep_on_failure:
            record = ledger.find(name)
            if record and record.active:
                raise CloudsdError(
                    f"{exc or type(exc).__name__}; machine {name!r} was kept as asked and may still bill.",
                    hint=f"End it with `cloudsd down {name}`.",
                ) from exc
        record = ledger.find(name)
        if record is not None and record.active:
            _cleanup(ledger, providers, name, f"failed: {exc or type(exc).__name__}", options, reporter)
        raise


def _arm_watchdog(session: Session, provider: Provider, options: UpOptions, ledger: Ledger,
                  reporter: Reporter) -> None:
    """Start the on-machine watchdog with the budget; a budget that cannot be enforced fails the `up`."""
    from cloudsd.core.guard import arm

    reporter.phase("watchdog", options.budget.describe())
    try:
        arm(ledger, session.record, session.connection, provider, options.budget, options.watchdog)
    except BaseException:
        session.close()
        raise
    record = session.record
    if options.budget.idle_s and options.budget.idle_action == "stop" and provider.bills_money:
        reporter.note(f"when idle, {record.name} stops: its disk stays and still bills "
                      f"${record.storage_price_per_hour:.3f}/h until `cloudsd down {record.name}`")


def _forget(ledger: Ledger, name: str, reason: str) -> None:
    ledger.update(name, status="terminated", terminated_at=time.time(), detail=reason, event="not-created",
                  data={"reason": reason})


def _cleanup(ledger: Ledger, providers: Providers, name: str, reason: str, options: UpOptions,
             reporter: Reporter) -> None:
    record = ledger.get(name)
    if options.keep_on_failure and record.provider_id:
        reporter.note(f"keeping machine {name!r} as asked; it may still bill: end it with `cloudsd down {name}`")
        return
    reporter.phase("cleaning up", f"destroying {name} ({reason})")
    try:
        end_record(ledger, providers, record, reason=reason)
    except LedgerError as exc:
        if not record.provider_id:
            raise
        raise _end_unrecorded(providers.get(record.provider), name, record.provider_id, exc, keep=False) from None
    except CloudsdError as exc:
        raise CloudsdError(
            f"{reason}; and destroying the machine failed too ({exc}). It may still bill.",
            hint=f"Run `cloudsd down {name}` to try again.",
        ) from None


class _Unrecorded(CloudsdError):
    """A created machine the ledger could not record, already dealt with (destroyed, or its id printed)."""


def _end_unrecorded(provider: Provider, name: str, provider_id: str, cause: LedgerError, *,
                    keep: bool) -> CloudsdError:
    """The error for a created machine the ledger could not record: destroyed first, unless `keep`; when it
    was not destroyed, the message carries its provider id and the command that ends it."""
    how = (f"End it with `cloudsd down {name}` once the ledger can be written (it is found by its label), "
           f"or in {provider.name}'s console: machine {provider_id}.")
    if keep:
        return _Unrecorded(f"{cause.message} {provider.name} machine {provider_id} ({name}) was kept as asked and "
                            "may still bill.", hint=how)
    try:
        destroy_and_confirm(provider, provider_id)
    except CloudsdError as exc:
        return _Unrecorded(f"{cause.message} Destroying {provider.name} machine {provider_id} ({name}) failed too "
                            f"({exc}); it may still bill.", hint=how)
    return _Unrecorded(f"{cause.message} {provider.name} machine {provider_id} ({name}) was destroyed, so nothing "
                        "bills unrecorded.", hint=cause.hint)


def _make_ready(name: str, provider: Provider, provider_id: str, ui: UIProfile, options: UpOptions,
                ledger: Ledger, pair: keys.KeyPair, reporter: Reporter, choice: ImageChoice) -> Session:
    reporter.phase("booting", f"{provider.name} is starting {provider_id[:12]}")

    def on_change(info: MachineInfo) -> None:
        reporter.phase("booting", f"{info.status.value}{' - ' + info.detail if info.detail else ''}")

    info = wait_until_running(provider, provider_id, deadline_s=options.boot_timeout_s, on_change=on_change)
    assert info.ssh is not None
    ledger.update(name, status="running", ssh_host=info.ssh.host, ssh_port=info.ssh.port, ssh_user=info.ssh.user,
                  event="running", data={"ssh": str(info.ssh)})
    reporter.phase("ssh", f"connecting to {info.ssh}")
    connection = connect(info.ssh, pair.private_path, None, deadline_s=options.ssh_timeout_s,
                         on_attempt=lambda n, why: reporter.phase("ssh", f"attempt {n}: {why}"))
    ledger.update(name, host_key=connection.host_key.text, event="host-key-pinned",
                  data={"host_key": connection.host_key.text})
    keys.write_known_hosts(pair, info.ssh.host, info.ssh.port, connection.host_key.text)
    try:
        if choice.install:
            install_ui(connection, ui.name, choice.cuda or DEFAULT_CUDA, deadline_s=options.install_timeout_s,
                       on_progress=lambda text: reporter.phase("install", text), env=options.env)
        forward = open_tunnel(ledger.get(name), connection, options.port)
        reporter.phase("web UI", f"waiting for {ui.title} at {forward.url}")
        wait_for_ui(forward.local_port, ui, deadline_s=options.ui_timeout_s,
                    on_wait=lambda why: reporter.phase("web UI", why))
    except BaseException:
        connection.close()
        raise
    ledger.update(name, ready_at=time.time(), local_port=forward.local_port, event="ready",
                  data={"url": forward.url})
    reporter.phase("ready", forward.url)
    return Session(ledger.get(name), connection, forward, ui)


def open_tunnel(record: MachineRecord, connection: Connection, port: int) -> LocalForward:
    ui = profile(record.ui or "a1111")

    def reconnect() -> Connection:
        return reconnect_record(record, deadline_s=30)

    forward = LocalForward(connection, ui.internal_port, port, reconnect=reconnect)
    forward.start()
    return forward


def reconnect_record(record: MachineRecord, *, deadline_s: float, ledger: Ledger | None = None) -> Connection:
    """SSH to a machine in the ledger, checking its pinned host key. A row without one (an older cloudsd,
    a crash right after the first connect) gets the key seen now pinned, so no later connect trusts blindly."""
    if not (record.ssh_host and record.ssh_port and record.key_path):
        raise SSHError(f"machine {record.name!r} has no SSH endpoint yet.",
                       hint="`cloudsd status` shows its state.")
    endpoint = SSHEndpoint(record.ssh_host, record.ssh_port, record.ssh_user or "root")
    if record.host_key:
        return connect(endpoint, Path(record.key_path), record.host_key, deadline_s=deadline_s)
    if ledger is None:
        own = Ledger()
        try:
            return reconnect_record(record, deadline_s=deadline_s, ledger=own)
        finally:
            own.close()
    pinned = ledger.get(record.name).host_key  # another process may have pinned it since `record` was read
    connection = connect(endpoint, Path(record.key_path), pinned, deadline_s=deadline_s)
    if pinned is None:
        try:
            pinned = ledger.pin_host_key(record.name, connection.host_key.text)
            if pinned != connection.host_key.text:
                raise HostKeyMismatch(f"the machine at {endpoint} presented another SSH host key than the one "
                                      "pinned meanwhile; refusing to connect.",
                                      hint=f"If it was rebuilt on purpose, end it with `cloudsd down {record.name}`.")
            keys.write_known_hosts(keys.load_key_pair(record.name), endpoint.host, endpoint.port, pinned)
        except BaseException:
            connection.close()
            raise
    return connection


def ui_healthy(local_port: int, ui: UIProfile, timeout_s: float = 5.0) -> tuple[bool, str]:
    """One health probe through the tunnel: (ready, why not)."""
    conn = http.client.HTTPConnection("127.0.0.1", local_port, timeout=timeout_s)
    try:
        conn.request("GET", ui.health_path, headers={"User-Agent": "cloudsd-health"})  # not UI use (idle stop)
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            return True, "ready"
        return False, f"{ui.health_path} answered HTTP {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"not answering yet ({type(exc).__name__})"
    finally:
        conn.close()


def wait_for_ui(local_port: int, ui: UIProfile, *, deadline_s: float, on_wait: Any = None) -> None:
    started = time.monotonic()
    while True:
        ok, why = ui_healthy(local_port, ui)
        if ok:
            return
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise ProvisioningError(f"the {ui.title} web UI did not become ready within {deadline_s:.0f} s ({why}).")
        if on_wait:
            on_wait(f"{why}, {elapsed:.0f} s")
        time.sleep(1.0)


def attach(name: str, port: int | None, ledger: Ledger, providers: Providers, reporter: Reporter,
           *, ssh_timeout_s: float = 60.0) -> Session:
    """Reopen SSH and the web UI tunnel to a machine that runs."""
    record = ledger.get(name)
    if not record.active or record.status == "terminated":
        raise CloudsdError(f"machine {name!r} is {record.status}.", hint="Start a new one with `cloudsd up`.")
    provider = providers.get(record.provider)
    if record.provider_id:
        info = provider.get(record.provider_id)
        if info is None:
            ledger.update(name, status="terminated", terminated_at=time.time(), detail="gone (found by tunnel)",
                          event="gone")
            raise CloudsdError(f"machine {name!r} no longer exists at {provider.name}.",
                               hint="Start a new one with `cloudsd up`.")
        if info.ssh and (info.ssh.host, info.ssh.port) != (record.ssh_host, record.ssh_port):
            ledger.update(name, ssh_host=info.ssh.host, ssh_port=info.ssh.port, event="ssh-moved",
                          data={"ssh": str(info.ssh)})
            record = ledger.get(name)
    ui = profile(record.ui or "a1111")
    reporter.phase("ssh", f"connecting to {record.ssh_user}@{record.ssh_host}:{record.ssh_port}")
    connection = reconnect_record(record, deadline_s=ssh_timeout_s, ledger=ledger)
    try:
        forward = open_tunnel(record, connection, port or record.local_port or 7860)
        reporter.phase("web UI", f"checking {ui.title} at {forward.url}")
        wait_for_ui(forward.local_port, ui, deadline_s=60, on_wait=lambda why: reporter.phase("web UI", why))
    except BaseException:
        connection.close()
        raise
    ledger.update(name, local_port=forward.local_port, event="attached", data={"url": forward.url})
    return Session(ledger.get(name), connection, forward, ui)


def down(names: list[str], ledger: Ledger, providers: Providers, reporter: Reporter, *,
         outputs_root: Path | None = None, force: bool = False) -> list[tuple[str, str]]:
    """End each named machine and confirm it is gone; returns (name, outcome) pairs.

    With `outputs_root`, a machine that was ever ready has its outputs pulled into outputs_root/NAME and
    verified first; if that fails it is not destroyed (CloudsdError), unless `force`.
    """
    results: list[tuple[str, str]] = []
    for name in names:
        try:
            providers.get(ledger.get(name).provider)
        except ConfigError as exc:  # a row this version cannot act on must not keep the others alive
            results.append((name, f"{NOT_ENDED}: {exc.message}; end it in that provider's console"))
            continue
        record = refresh_record(ledger, providers, ledger.get(name))  # gone meanwhile (its watchdog)?
        if record.status == "terminated":
            results.append((name, "already gone"))
            continue
        if outputs_root is not None and record.ready_at:
            _save_outputs_first(ledger, record, outputs_root / name, reporter, force)
        reporter.phase("destroying", f"{name} on {record.provider}")
        try:
            end_record(ledger, providers, record, reason="down")
        except ProviderError as exc:
            raise CloudsdError(f"could not confirm that {name!r} is gone: {exc}",
                               hint=f"Run `cloudsd down {name}` again; it is safe to repeat.") from None
        results.append((name, "destroyed"))
    return results


def _save_outputs_first(ledger: Ledger, record: MachineRecord, dest: Path, reporter: Reporter, force: bool) -> None:
    from cloudsd.core.sync import save_outputs

    reporter.phase("saving outputs", f"{record.name} to {dest}")
    try:
        if record.status == "stopped":
            # No SSH into a stopped machine: say so at once instead of waiting out an SSH timeout.
            raise CloudsdError(f"it is stopped; its disk still holds them (and bills storage): start it again "
                               f"from {record.provider}'s console to save them")
        summary = save_outputs(ledger, record, dest)
    except Exception as exc:  # with --force nothing here may keep a billing machine alive, not even a bug
        if not force:
            if not isinstance(exc, (CloudsdError, OSError)):
                raise
            raise CloudsdError(
                f"did not destroy {record.name!r}: its outputs could not be saved ({exc}).",
                hint=f"Fix that and run `cloudsd down {record.name}` again; `--no-outputs` destroys it without "
                     "saving them, `--force` destroys it even when saving fails.") from None
        lost = getattr(exc, "problems", None) or []
        reporter.note(f"{record.name}: outputs not saved ({exc}); destroying anyway (--force)")
        for problem in lost:
            reporter.note(f"  not saved: {problem}")
        return
    if summary.pulled:
        reporter.note(f"{record.name}: saved {len(summary.pulled)} new output(s) in {summary.dest}")


def end_stray(providers: Providers, provider_name: str, provider_id: str) -> None:
    """End a `cloudsd-` machine the ledger does not know, and confirm it is gone."""
    from cloudsd.core.machines import destroy_and_confirm

    destroy_and_confirm(providers.get(provider_name), provider_id)
