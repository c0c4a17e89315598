"""cloudsd's own images: build and push them on the Docker engine, and make sure the image a machine on the
local engine needs is there (already present, pulled, or built from images/ on first use).

Core code: no click and no rich. Progress goes to an `on_progress(text)` callback, one short line at a time;
the CLI draws it. docker is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudsd.errors import ConfigError, EngineUnavailable, ImageBuildError, ImageMissing
from cloudsd.ui import (
    DEFAULT_CUDA,
    DEFAULT_REGISTRY,
    default_image_target,
    image_cuda,
    image_for_gpu,
    profile,
)

Progress = Callable[[str], None]
UIS = ("a1111", "forge", "comfyui", "testbed")
TESTBED_TAG = "cloudsd-testbed:latest"
TESTBED_BASE = "cloudsd-base:bookworm"
PULL_STALL_S = 60.0  # a pull or push that moves nothing for this long has failed
PULL_DEADLINE_S = 3600.0
TRIAL_HINT = "or try cloudsd without a GPU on the small test image: `cloudsd up --image cloudsd-testbed:latest`."


@dataclass(frozen=True)
class BuildTarget:
    ui: str  # a1111 | forge | comfyui | testbed
    tag: str
    dockerfile: str  # relative to the build context, images/
    cuda: str | None = None  # None for the testbed
    buildargs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    size_bytes: int


def images_dir() -> Path:
    """The build context: `images/` of the checkout cloudsd runs from, or $CLOUDSD_IMAGES_DIR."""
    explicit = os.environ.get("CLOUDSD_IMAGES_DIR")
    # A checkout has images/ beside the package; an installed wheel carries it as cloudsd/images_data.
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parents[1] / "images",
                                                    Path(__file__).parent / "images_data"]
    for where in candidates:
        if (where / "boot" / "entrypoint.sh").is_file() and (where / "ui" / "start").is_file():
            return where
    raise ConfigError(
        f"no cloudsd images/ folder at {where}: images are built from a checkout of the cloudsd repository.",
        hint="Install cloudsd from a checkout (`pip install -e .`), or set CLOUDSD_IMAGES_DIR to its images/ folder.")


def build_target(ui: str, cuda: str | None = None, tag: str | None = None,
                 registry: str = DEFAULT_REGISTRY) -> BuildTarget:
    """What `cloudsd image build --ui UI --cuda CUDA --tag TAG` builds."""
    if ui == "testbed":
        return BuildTarget("testbed", tag or TESTBED_TAG, "testbed/Dockerfile", None, {"BASE": TESTBED_BASE})
    if ui not in UIS:
        raise ConfigError(f"no image for {ui!r}.", hint=f"Choose one of: {', '.join(UIS)}.")
    cuda = cuda or DEFAULT_CUDA
    default = profile(ui).image(registry, cuda)  # also rejects a CUDA version without a variant
    return BuildTarget(ui, tag or default, f"{ui}/Dockerfile", cuda, {"CUDA": cuda})


def external_bases(dockerfile: str) -> list[str]:
    """The images a Dockerfile starts FROM that are not its own stages (the ones a build must pull)."""
    stages: set[str] = set()
    bases: list[str] = []
    for line in dockerfile.splitlines():
        words = line.split()
        if len(words) < 2 or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        image = args[0]
        if image.lower() not in stages and "$" not in image and image not in bases:
            bases.append(image)
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2].lower())
    return bases


def has_registry_host(image: str) -> bool:
    """Whether the name says where to pull it from (`ghcr.io/…`, `127.0.0.1:5000/…`, `localhost/…`). A bare
    name (`cloudsd-testbed:latest`, `user/app`) would mean Docker Hub, where anyone can publish it."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def split_tag(image: str) -> tuple[str, str]:
    """`host:5000/repo:tag` -> (`host:5000/repo`, `tag`); no tag means `latest`."""
    repo, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, "latest"
    return repo, tag


def human_size(size_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size_bytes < 1000 or unit == "GB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.2f} {unit}"
        size_bytes /= 1000
    raise AssertionError("unreachable")


def _client(timeout: float = PULL_STALL_S) -> Any:
    import docker

    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        from cloudsd.providers.local import NO_ENGINE_HINT

        raise EngineUnavailable(f"no Docker engine is reachable ({_one_line(str(exc), 160)}).",
                                hint=NO_ENGINE_HINT) from None
    return client


def _quiet(_text: str) -> None:
    pass


# -- build ---------------------------------------------------------------------------------------------------


def build(target: BuildTarget, *, allow_pull: bool = True, on_progress: Progress = _quiet,
          client: Any = None) -> BuiltImage:
    """Build `target` from images/ with the engine's own builder; raises ImageBuildError with the reason."""
    import docker

    context = images_dir()
    client = client or _client(timeout=3600)  # a build step may be quiet for minutes
    if target.ui == "testbed":
        _ensure_testbed_base(client, context, on_progress)
    else:
        for base in external_bases((context / target.dockerfile).read_text()):
            _ensure_base(client, base, allow_pull, on_progress)
    on_progress(f"building {target.tag} from {context / target.dockerfile}")
    last = ""
    try:
        for chunk in client.api.build(path=str(context), dockerfile=target.dockerfile, tag=target.tag,
                                      buildargs=target.buildargs, rm=True, forcerm=True, pull=False, decode=True):
            if "error" in chunk:
                detail = str(chunk.get("error") or "").strip()
                raise ImageBuildError(f"building {target.tag} failed: {_one_line(detail)}",
                                      hint=f"The step before it: {last}" if last else None)
            for line in str(chunk.get("stream") or chunk.get("status") or "").splitlines():
                if line.strip():
                    last = _one_line(line)
                    on_progress(last)
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"building {target.tag} failed: {_one_line(str(exc.explanation or exc))}") from None
    except (OSError, docker.errors.DockerException) as exc:
        raise ImageBuildError(f"building {target.tag} failed: {_one_line(str(exc))}") from None
    image = client.images.get(target.tag)
    return BuiltImage(target.tag, str(image.id), int(image.attrs.get("Size") or 0))


def _ensure_base(client: Any, base: str, allow_pull: bool, on_progress: Progress) -> None:
    import docker

    try:
        client.images.get(base)
        return
    except docker.errors.ImageNotFound:
        pass
    if not allow_pull:
        raise ImageBuildError(f"the base image {base} is not on the Docker engine, and pulling is off.",
                              hint=f"Pull it (`docker pull {base}`), or set image_pull to auto.")
    pull(base, client=client, on_progress=on_progress)


def _ensure_testbed_base(client: Any, context: Path, on_progress: Progress) -> None:
    import docker

    try:
        client.images.get(TESTBED_BASE)
        return
    except docker.errors.ImageNotFound:
        pass
    script = context / "base" / "build.sh"
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise ImageBuildError(f"the base image {TESTBED_BASE} is missing; {script} makes it and needs root and "
                              "debootstrap.", hint=f"Run `sudo {script}` (or scripts/bootstrap.sh), then build again.")
    on_progress(f"making {TESTBED_BASE} with {script} (debootstrap)")
    proc = subprocess.Popen(["bash", str(script), TESTBED_BASE], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail = ""
    for line in proc.stdout:
        if line.strip():
            tail = _one_line(line)
            on_progress(tail)
    if proc.wait() != 0:
        raise ImageBuildError(f"{script} failed: {tail}")


# -- pull and push -------------------------------------------------------------------------------------------


class _LayerProgress:
    """Bytes moved per layer, from the engine's JSON progress messages, as one line."""

    def __init__(self, verb: str, image: str, on_progress: Progress) -> None:
        self.verb, self.image, self.on_progress = verb, image, on_progress
        self.layers: dict[str, tuple[int, int]] = {}
        self.done: set[str] = set()
        self.shown = 0.0

    def update(self, chunk: dict[str, Any]) -> None:
        layer, status = str(chunk.get("id") or ""), str(chunk.get("status") or "")
        detail = chunk.get("progressDetail") or {}
        if layer and detail.get("total"):
            self.layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
        if layer and status.lower() in ("pull complete", "already exists", "pushed", "layer already exists",
                                        "mounted from"):
            self.done.add(layer)
        now = time.monotonic()
        if now - self.shown < 0.2:
            return
        self.shown = now
        current = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        moved = f": {human_size(current)} of {human_size(total)}" if total else ""
        self.on_progress(f"{self.verb} {self.image}{moved} ({len(self.done)} layers done)")


def _stream(chunks: Iterable[dict[str, Any]], progress: _LayerProgress, deadline_s: float) -> None:
    started = time.monotonic()
    for chunk in chunks:
        error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
        if error:
            raise ImageBuildError(_one_line(str(error)))
        progress.update(chunk)
        if time.monotonic() - started > deadline_s:
            raise ImageBuildError(f"not done after {deadline_s:.0f} s")


def pull(image: str, *, client: Any = None, on_progress: Progress = _quiet,
         stall_s: float = PULL_STALL_S, deadline_s: float = PULL_DEADLINE_S) -> None:
    """Pull `image`; ImageBuildError with the engine's reason if it fails, stalls for `stall_s` or runs out
    of time. (The client's socket timeout is what bounds a stall.)"""
    import docker

    client = client or _client(timeout=stall_s)
    repo, tag = split_tag(image)
    progress = _LayerProgress("pulling", image, on_progress)
    on_progress(f"pulling {image}")
    try:
        _stream(client.api.pull(repo, tag=tag, stream=True, decode=True), progress, deadline_s)
    except ImageBuildError as exc:
        raise ImageBuildError(f"pulling {image} failed: {exc}") from None
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"pulling {image} failed: {_one_line(str(exc.explanation or exc))}") from None
    except Exception as exc:  # requests/urllib3 timeouts and connection errors surface as their own types
        raise ImageBuildError(f"pulling {image} failed: {_one_line(str(exc)) or type(exc).__name__}") from None


def push(image: str, *, client: Any = None, on_progress: Progress = _quiet,
         stall_s: float = PULL_STALL_S, deadline_s: float = PULL_DEADLINE_S) -> None:
    """Push `image` to the registry its name gives, with the engine's stored credentials."""
    import docker

    client = client or _client(timeout=stall_s)
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(f"there is no image {image} on the Docker engine to push.",
                              hint="Build it first: `cloudsd image build` with the same --ui, --cuda and --tag.") from None
    repo, tag = split_tag(image)
    progress = _LayerProgress("pushing", image, on_progress)
    on_progress(f"pushing {image}")
    try:
        _stream(client.api.push(repo, tag=tag, stream=True, decode=True), progress, deadline_s)
    except ImageBuildError as exc:
        host = repo.partition("/")[0] if has_registry_host(repo) else "docker.io"
        denied = any(w in str(exc).lower() for w in ("denied", "unauthorized", "authentication required"))
        hint = (f"Log in first: `docker login {host}`." if denied else
                f"Is {host} reachable from here? The registry is the `registry` setting (`cloudsd config show`).")
        raise ImageBuildError(f"pushing {image} failed: {exc}", hint=hint) from None
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"pushing {image} failed: {_one_line(str(exc.explanation or exc))}") from None
    except Exception as exc:
        raise ImageBuildError(f"pushing {image} failed: {_one_line(str(exc)) or type(exc).__name__}") from None


# -- the local engine ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChoice:
    """Which image a machine runs, decided in one place (`choose_image`), as plain data, before anything is
    rented. `way` says who gets the image onto the machine: "engine" (the local Docker engine has it, or
    pulls or builds it first) or "host-pulls" (the provider's host pulls it from its registry at create)."""

    image: str
    ui: str
    cuda: str | None  # the CUDA version its tag names (…-cu124 -> "12.4"); None for a foreign image without one
    registry: str
    ours: bool  # cloudsd's own image: its CUDA variant follows the GPU, and images/ can build it
    way: str  # "engine" | "host-pulls"
    install: bool = False  # `image` is a stock CUDA + PyTorch image: the UI is installed on its first boot
    why: str = ""  # one line: which path `up` takes and why (said before anything is rented)


def choose_image(ui: str, gpu_name: str | None, *, image: str | None, registry: str = DEFAULT_REGISTRY,
                 on_local_engine: bool = False) -> ImageChoice:
    """The image for `ui` on a machine with this GPU: the named `image` as it is, else cloudsd's own in the
    CUDA variant the GPU needs (12.8 for Blackwell, else 12.4; no GPU known yet: 12.4)."""
    name = image or image_for_gpu(ui, gpu_name, registry)
    return ImageChoice(name, ui, image_cuda(name), registry, ours=not image,
                       way="engine" if on_local_engine else "host-pulls")


def machine_image(options: Any, ui: str, gpu_name: str | None, *, on_local_engine: bool,
                  on_progress: Progress = _quiet) -> ImageChoice:
    """Choose the image of a machine with this GPU (`options` is an UpOptions) and make sure it can be had,
    before anything is rented, saying which path it takes and why (`on_progress`).

    `options.image_source` decides between cloudsd's prebuilt image and installing the UI on first boot of a
    stock CUDA + PyTorch image (cloudsd.ui_install): prebuilt (refused when it cannot be pulled), install, or
    auto (prebuilt when the registry says anyone can pull it, else install). On the local engine the
    prebuilt image is pulled or built there (`ensure_local`), so auto means prebuilt. A named image is the
    user's to vouch for; install never rents for a stock image nobody can pull either."""
    choice = choose_image(ui, gpu_name, image=None if options.default_image else options.image,
                          registry=options.registry, on_local_engine=on_local_engine)
    source = getattr(options, "image_source", "prebuilt")
    if choice.ours and source == "install":
        return _install_choice(choice, options, "image_source is install", on_progress)
    if choice.way == "engine":
        on_progress(f"looking for {choice.image}")
        ensure_local(choice.image, registry=options.registry, allow_pull=options.image_pull != "never",
                     on_progress=on_progress)
    elif choice.ours and source == "auto":
        from cloudsd.registry import check_pullable  # httpx: kept out of `cloudsd --help`

        on_progress(f"asking the registry for {choice.image}")
        found = check_pullable(choice.image)
        if not found.pullable:
            return _install_choice(choice, options, f"the prebuilt {choice.image} cannot be pulled: {found.reason}",
                                   on_progress)
        on_progress(f"the machine pulls the prebuilt {choice.image}: {found.reason}")
    elif choice.ours:
        require_pullable(choice.image, ui, on_progress=on_progress)
    return replace(choice, why=f"prebuilt image {choice.image}")


def install_ui(connection: Any, ui: str, cuda: str, *, deadline_s: float, on_progress: Progress = _quiet,
                env: dict[str, str] | None = None) -> None:
    """On a machine of a stock image (an ImageChoice with `install`), over its SSH `connection`: install the
    UI with images/<ui>/install.sh into /workspace (resuming or skipping what an earlier boot did), start it,
    and wait for the install within `deadline_s` (cloudsd.ui_install)."""
    from cloudsd.ui_install import start_install, wait_for_install

    on_progress(f"sending the {ui} install script and starting it")
    start_install(connection, ui, cuda, images_dir(), env)
    wait_for_install(connection, ui, cuda, images_dir(), deadline_s=deadline_s, on_progress=on_progress, env=env)


def resume_installed_ui(connection: Any, ui: str, *, deadline_s: float = 5400.0,
                        on_progress: Progress = _quiet) -> bool:
    """On a machine whose UI was installed on boot (a stock image: nothing of cloudsd starts it when the machine
    starts again): run the install again, which finds its steps done (or finishes an interrupted one) and
    starts the UI unless it runs. False, doing nothing, on any other machine."""
    from cloudsd.ui_install import installed_here, start_install, wait_for_install

    if not installed_here(connection, ui):
        return False
    on_progress(f"{ui} was installed on this machine's first boot: checking it and starting it")
    start_install(connection, ui, None, images_dir())
    wait_for_install(connection, ui, None, images_dir(), deadline_s=deadline_s, on_progress=on_progress)
    return True


def _install_choice(choice: ImageChoice, options: Any, reason: str, on_progress: Progress) -> ImageChoice:
    from cloudsd.ui_install import stock_image

    images_dir()  # the install script is sent from images/: a ConfigError now, before anything is rented
    stock = getattr(options, "stock_image", None) or stock_image(choice.cuda or DEFAULT_CUDA)
    if choice.way == "engine":
        on_progress(f"looking for {stock}")
        ensure_local(stock, registry=options.registry, allow_pull=options.image_pull != "never",
                     on_progress=on_progress)
    else:
        from cloudsd.registry import check_pullable

        on_progress(f"asking the registry for {stock}")
        found = check_pullable(stock)
        if not found.pullable:
            raise ImageMissing(
                f"{reason}, and the stock image {stock} to install {choice.ui} into cannot be pulled either: "
                f"{found.reason}. Nothing was rented.",
                hint="Set `stock_image` to a CUDA + PyTorch image with git, python3 and sshd that hosts can pull, "
                     "or publish cloudsd's image (`cloudsd image build` then `cloudsd image push`).")
    why = f"installs {choice.ui} on first boot of {stock} into /workspace ({reason})"
    on_progress(why)
    return replace(choice, image=stock, install=True, why=why)


def ensure_local(image: str, *, registry: str = DEFAULT_REGISTRY, allow_pull: bool = True,
                 on_progress: Progress = _quiet, client: Any = None) -> None:
    """Make sure `image` is on the local engine: pull it (only a name with a registry host, and only if
    allowed), else build it from images/ when it is one of cloudsd's own images (or the testbed).
    ImageMissing, one line saying what to do, when neither works."""
    import docker

    client = client or _client()
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    why = ""
    if allow_pull and has_registry_host(image):
        try:
            pull(image, client=client, on_progress=on_progress)
            return
        except ImageBuildError as exc:
            why = str(exc)
    elif not allow_pull:
        why = "pulling is off (image_pull is never)"
    else:
        why = "cloudsd pulls only names with a registry host (write docker.io/… for Docker Hub)"
    ours = default_image_target(image, registry)
    if ours is None and image != TESTBED_TAG:
        raise ImageMissing(
            f"the image {image!r} is not on the local Docker engine, and {why}.",
            hint=f"Put it there yourself (`docker pull {image}`, or `docker build -t {image} …`), {TRIAL_HINT}")
    target = build_target(ours[0], ours[1], image, registry) if ours else build_target("testbed", tag=image)
    on_progress(f"{image} is not on the engine ({why}); building it from images/{target.dockerfile}")
    try:
        build(target, allow_pull=allow_pull, on_progress=on_progress, client=client)
    except (ImageBuildError, ConfigError) as exc:
        cuda = f" --cuda {target.cuda}" if target.cuda and target.cuda != DEFAULT_CUDA else ""
        build_cmd = f"cloudsd image build --ui {target.ui}{cuda}"
        raise ImageMissing(
            f"the image {image!r} could not be pulled ({why}) nor built here ({exc.message.rstrip('.')}).",
            hint=f"Build it where GitHub is reachable: `{build_cmd}` (then `cloudsd image push`), {TRIAL_HINT}",
        ) from None


# -- a registry, before renting --------------------------------------------------------------------------------


def require_pullable(image: str, ui: str, *, on_progress: Progress = _quiet) -> None:
    """Before a provider is asked for a machine that would pull cloudsd's own `image`: make sure anyone can
    pull it (cloudsd.registry, an anonymous manifest request). ImageMissing, before anything is rented, when
    not; else say which image the machine will pull, and why."""
    from cloudsd.registry import check_pullable  # httpx: kept out of `cloudsd --help`

    on_progress(f"asking the registry for {image}")
    found = check_pullable(image)
    if not found.pullable:
        cuda = image_cuda(image)
        flags = f"--ui {ui}" + (f" --cuda {cuda}" if cuda and cuda != DEFAULT_CUDA else "")
        raise ImageMissing(
            f"the prebuilt image {image} cannot be pulled: {found.reason}. Nothing was rented.",
            hint=(f"Publish it (`cloudsd image build {flags}` then `cloudsd image push {flags}`, or the images "
                  "workflow on a version tag), set `registry` to where it is, or run another image with "
                  f"`--image NAME --ui {ui}`."))
    on_progress(f"the machine pulls the prebuilt {image}: {found.reason}")


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
