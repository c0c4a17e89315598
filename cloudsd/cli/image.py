"""`cloudsd image build` and `cloudsd image push`: cloudsd's own images, on the local Docker engine.

Only click is imported at the top, so registering this group keeps `cloudsd --help` fast.
"""

from __future__ import annotations

from typing import Any

import click

from cloudsd.cli.app import App, pass_app

UI_CHOICE = click.Choice(["a1111", "forge", "comfyui", "testbed"])
CUDA_CHOICE = click.Choice(["12.4", "12.8"])


@click.group()
def image() -> None:
    """Build and push cloudsd's images: A1111, Forge and ComfyUI, and the small testbed.

    \b
    cloudsd image build                         ghcr.io/cloudsd/a1111:1.10.1-cu124 (needs GitHub)
    cloudsd image build --ui comfyui --cuda 12.8   the variant for RTX 50-series (Blackwell) GPUs
    cloudsd image build --ui testbed            cloudsd-testbed:latest (offline, no GPU needed)
    cloudsd image push --ui comfyui             to the configured registry (`docker login` first)
    """


class _Progress:
    """Keeps the build's `Step n/m` lines on screen and shows everything else on one updating line."""

    def __init__(self) -> None:
        from cloudsd.cli import render

        self.console = render.console(stderr=True)
        self.status: Any = None

    def __enter__(self) -> _Progress:
        self.status = self.console.status("starting")
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def __call__(self, text: str) -> None:
        from rich.text import Text

        if text.startswith("Step "):
            self.console.print(Text(f"  {text}", style="dim"))
        self.status.update(Text(text))


def _target(app: App, ui: str | None, cuda: str, tag: str | None) -> Any:
    from cloudsd import images

    settings = app.settings
    return images.build_target(ui or settings["ui"], cuda, tag, settings["registry"]), settings


@image.command()
@click.option("--ui", type=UI_CHOICE, help="Which image (default: the configured ui).")
@click.option("--cuda", type=CUDA_CHOICE, default="12.4", show_default=True,
              help="CUDA variant: 12.8 for RTX 50-series and other Blackwell GPUs (host driver >= 570).")
@click.option("--tag", help="Name for the image (default: the configured registry's name for it).")
@pass_app
def build(app: App, ui: str | None, cuda: str, tag: str | None) -> None:
    """Build an image from the images/ folder of this checkout and print its size.

    The UI images fetch their pinned upstream from GitHub and Python packages from PyPI while building;
    the testbed needs neither. Example: `cloudsd image build --ui forge --cuda 12.8`.
    """
    from cloudsd import images

    target, settings = _target(app, ui, cuda, tag)
    with _Progress() as progress:
        built = images.build(target, allow_pull=settings["image_pull"] != "never", on_progress=progress)
    click.echo(f"built {built.tag} ({images.human_size(built.size_bytes)}, {built.image_id[:19]})")


@image.command()
@click.option("--ui", type=UI_CHOICE, help="Which image (default: the configured ui).")
@click.option("--cuda", type=CUDA_CHOICE, default="12.4", show_default=True, help="CUDA variant.")
@click.option("--tag", help="The image to push (default: the configured registry's name for it).")
@pass_app
def push(app: App, ui: str | None, cuda: str, tag: str | None) -> None:
    """Push an image to its registry with the engine's stored login (`docker login ghcr.io` first).

    Example: `cloudsd image push --ui a1111 --cuda 12.8`.
    """
    from cloudsd import images

    target, _ = _target(app, ui, cuda, tag)
    with _Progress() as progress:
        images.push(target.tag, on_progress=progress)
    click.echo(f"pushed {target.tag}")
