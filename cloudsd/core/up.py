"""`up`, top to bottom: size the disk, ask for offers, create, record, wait, SSH, tunnel, watchdog, models.

The ledger knows a machine from before the create call until the provider confirms it gone. Anything that
fails after a create (a boot that times out, SSH that never answers, Ctrl-C) destroys that machine before
the error reaches the user, unless they asked to keep it; then the message says how to end it
(`core/teardown.ended_unless_ready`). A boot or SSH failure tries the next offer, up to MAX_OFFERS_TRIED.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cloudsd import keys
from cloudsd.config import Settings
from cloudsd.core import lifecycle, volumes
from cloudsd.core import offers as offer_choice
from cloudsd.core.access import Session, tunnel_to_ready_ui
from cloudsd.core.budget import Budget, check_new_budget, provider_deadline
from cloudsd.core.guard import arm
from cloudsd.core.machines import Providers, wait_until_running
from cloudsd.core.reporter import Reporter
from cloudsd.core.sync import disk_gb_for, push_to
from cloudsd.core.teardown import TryNextOffer, ended_unless_ready
from cloudsd.core.watchdog import WatchdogSettings
from cloudsd.errors import CloudsdError, ConfigError, NoCapacity, SyncError
from cloudsd.images import ImageChoice, choose_image, install_ui, machine_image
from cloudsd.ledger import Ledger
from cloudsd.machine import CreateRequest, MachineInfo, Offer, OfferSpec
from cloudsd.names import name_problem
from cloudsd.providers import Provider, cloud_names
from cloudsd.ssh import connect
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import PushSummary
from cloudsd.ui import DEFAULT_CUDA, DEFAULT_REGISTRY, UIProfile, highest_cuda, image_cuda, profile

MAX_OFFERS_TRIED = 3


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
    disk_chosen: bool = False  # --disk was given: models do not resize it
    volume: str | None = None  # a cloudsd volume to mount at /workspace; the machine is placed where it lives

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None, **overrides: Any) -> UpOptions:
        provider = settings["provider"]
        providers = cloud_names() if provider == "auto" else (provider,)
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
            disk_chosen=settings.source("disk_gb").startswith("flag"),
        )
        values.update(overrides)
        return cls(**values)


def spec_from(settings: Settings, choice: dict[str, Any] | None = None) -> OfferSpec:
    """The offer filters: gpu, max price and disk from the settings, the rest from flags. Only hosts whose driver
    runs the image's CUDA version (its `-cuXYZ` tag) are offered; `--cuda` can only raise that floor."""
    choice = choice or {}
    image = choose_image(settings["ui"], None, image=settings["image"], registry=settings["registry"]).image
    return OfferSpec(
        gpus=tuple(settings["gpu"]), max_price_per_hour=settings["max_price"], disk_gb=settings["disk_gb"],
        min_vram_gb=choice.get("min_vram"), min_reliability=choice.get("min_reliability"), region=choice.get("region"),
        cuda=highest_cuda(choice.get("cuda"), image_cuda(image)), interruptible=bool(choice.get("interruptible")),
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


@dataclass
class UpResult:
    """A ready machine, and what `--models` put on it."""

    session: Session
    pushed: PushSummary | None = None


def up(options: UpOptions, ledger: Ledger, providers: Providers, reporter: Reporter,
       confirm: Callable[[Offer], bool] | None = None, models: list[ModelRequest] | None = None) -> UpResult:
    """Start a machine and return it ready, with the web UI tunneled to 127.0.0.1.

    `confirm` is asked once, with the cheapest fitting offer, before anything that can cost money. With
    `models`, the disk is sized for them (unless it was chosen) and they are pushed once the machine is ready
    and its watchdog armed, so a failed push leaves a guarded machine; the push is recorded like `sync models`.
    """
    options = _sized_for(options, models or [], reporter)
    session = _start(options, ledger, providers, reporter, confirm)
    pushed = _push(session, ledger, models, reporter) if models else None
    return UpResult(session, pushed)


def _sized_for(options: UpOptions, models: list[ModelRequest], reporter: Reporter) -> UpOptions:
    if not models or options.disk_chosen or options.volume:  # with a volume, models land on the volume
        return options
    disk_gb, notes = disk_gb_for(models)
    if disk_gb <= options.spec.disk_gb:
        return options
    for note in [*notes, f"disk: {disk_gb} GB, for the models plus headroom"]:
        reporter.note(note)
    return replace(options, spec=replace(options.spec, disk_gb=disk_gb))


def _push(session: Session, ledger: Ledger, models: list[ModelRequest], reporter: Reporter) -> PushSummary:
    name = session.record.name
    try:
        with reporter.transfer() as progress:
            return push_to(ledger, session.record, session.connection, models, progress)
    except CloudsdError as exc:
        session.close()
        raise models_failed(name, exc.message) from None


def models_failed(name: str, message: str) -> SyncError:
    """The error when `up --models` could not put every model on the machine, which keeps running."""
    return SyncError(f"{message} Machine {name} is running.",
                     hint=f"Retry with `cloudsd sync models {name} …`, end it with `cloudsd down {name}`.")


def _start(options: UpOptions, ledger: Ledger, providers: Providers, reporter: Reporter,
           confirm: Callable[[Offer], bool] | None) -> Session:
    ui = profile(options.ui)
    name = options.name or new_name()
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{problem}.")
    ledger.check_free(name)  # a name in use is refused before offers are asked for (reserve() decides races)
    check_new_budget(options.budget, started_at=time.time(), now=time.time(), spent_usd=0.0)  # before renting
    reporter.phase("offers", f"asking {', '.join(options.providers)} for live offers")
    if options.volume:
        volumes.check_unused(ledger, options.volume)
    found = (volumes.offers_for(ledger, providers, options.volume, options.spec) if options.volume
             else gather_offers(providers, options.providers, options.spec, reporter))
    candidates = offer_choice.select(found, options.spec)
    if confirm is not None and not confirm(candidates[0]):
        raise CloudsdError("nothing was rented.")
    failures: list[str] = []
    tries = candidates[:MAX_OFFERS_TRIED]
    for attempt, offer in enumerate(tries, start=1):
        if attempt > 1:
            reporter.note(f"trying the next offer ({attempt} of {len(tries)})")
        try:
            return _up_on(offer, name, ui, options, ledger, providers.get(offer.provider), providers, reporter)
        except TryNextOffer as exc:
            if len(tries) == 1:
                raise exc.cause from None
            failures.append(f"{offer.provider} {offer.gpu_name} ({offer.offer_id}): {exc}")
            reporter.note(f"offer {offer.offer_id} failed and was cleaned up: {exc}")
    raise NoCapacity(
        f"no offer could be started after {len(failures)} tries: " + "; ".join(failures),
        hint="Try again later, or loosen the filters (`cloudsd offers` lists what is available).",
    )


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
        lifecycle.priced(ledger, name, offer, str(pair.private_path))
    except BaseException as exc:
        lifecycle.not_created(ledger, name, f"not created: {str(exc) or type(exc).__name__}")
        raise
    # the host's driver must run the image (a stock image to install into: the CUDA of the UI's PyTorch pins)
    cuda = highest_cuda(options.spec.cuda, choice.cuda if choice.install else image_cuda(image))
    deadline_at = (provider_deadline(options.budget, now=time.time(), price_per_hour=offer.price_per_hour)
                   if provider.supports_deadline else None)  # the provider's own backstop behind the watchdog
    request = CreateRequest(name=name, image=image, public_key=pair.public_line,
                            env={"CLOUDSD_MACHINE": name, **ui.machine_env(), **options.env},
                            disk_gb=options.spec.disk_gb, cuda=cuda,
                            onstart=None if choice.install else "/opt/cloudsd/boot/entrypoint.sh",
                            deadline_at=deadline_at,
                            volume_id=volumes.needed(ledger, options.volume).provider_id if options.volume else None)
    reporter.phase("creating", f"{provider.name}: {offer.gpu_name} at ${offer.price_per_hour:.3f}/h")
    if offer.gpu_count == 0:
        reporter.note(f"no GPU: {ui.title} runs in CPU mode (slow)")
    with ended_unless_ready(ledger, providers, name, keep_on_failure=options.keep_on_failure,
                            reporter=reporter) as attempt:
        provider_id = attempt.provider_id = provider.create(offer, request)
        if options.volume:
            volumes.attach(ledger, options.volume, name)
        lifecycle.created(ledger, name, provider_id, offer, deadline_at)
        if provider.bills_money:
            reporter.note(f"{provider.name} machine {provider_id} is billing ${offer.price_per_hour:.3f}/h; "
                          f"end it with `cloudsd down {name}`")
        session = _make_ready(name, provider, provider_id, ui, options, ledger, pair, reporter, choice)
        attempt.ready = True
        if options.budget.enforced:
            _arm_watchdog(session, provider, options, ledger, reporter)
    return session


def _arm_watchdog(session: Session, provider: Provider, options: UpOptions, ledger: Ledger,
                  reporter: Reporter) -> None:
    """Start the on-machine watchdog with the budget; a budget that cannot be enforced fails the `up`."""
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


def _make_ready(name: str, provider: Provider, provider_id: str, ui: UIProfile, options: UpOptions,
                ledger: Ledger, pair: keys.KeyPair, reporter: Reporter, choice: ImageChoice) -> Session:
    reporter.phase("booting", f"{provider.name} is starting {provider_id[:12]}")

    def on_change(info: MachineInfo) -> None:
        reporter.phase("booting", f"{info.status.value}{' - ' + info.detail if info.detail else ''}")

    info = wait_until_running(provider, provider_id, deadline_s=options.boot_timeout_s, on_change=on_change)
    assert info.ssh is not None
    lifecycle.running(ledger, name, info.ssh)
    reporter.phase("ssh", f"connecting to {info.ssh}")
    connection = connect(info.ssh, pair.private_path, None, deadline_s=options.ssh_timeout_s,
                         on_attempt=lambda n, why: reporter.phase("ssh", f"attempt {n}: {why}"))
    lifecycle.host_key_pinned(ledger, name, connection.host_key.text)
    keys.write_known_hosts(pair, info.ssh.host, info.ssh.port, connection.host_key.text)
    def install() -> None:
        install_ui(connection, ui.name, choice.cuda or DEFAULT_CUDA, deadline_s=options.install_timeout_s,
                   on_progress=lambda text: reporter.phase("install", text), env=options.env)

    forward = tunnel_to_ready_ui(ledger.get(name), connection, ui, options.port, deadline_s=options.ui_timeout_s,
                                 phase=reporter.phase, prepare=install if choice.install else None)
    lifecycle.ready(ledger, name, forward.local_port, forward.url)
    reporter.phase("ready", forward.url)
    return Session(ledger.get(name), connection, forward, ui)
