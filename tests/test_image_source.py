"""`image_source`: which path `up` takes for the web UI and why, decided before anything is rented
(cloudsd.images.machine_image against a fake registry on 127.0.0.1), and how the setting resolves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from cloudsd.config import resolve
from cloudsd.core.up import UpOptions
from cloudsd.errors import ImageMissing
from cloudsd.images import machine_image
from cloudsd.ui_install import STOCK_IMAGES
from tests.fakes.registry import FakeRegistry

PREBUILT = "ghcr.io/cloudsd/comfyui:0.3.77-cu128"
STOCK_128 = STOCK_IMAGES["12.8"]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    with FakeRegistry(public={"cloudsd/comfyui": ["0.3.77-cu128"], "runpod/pytorch": [STOCK_128.split(":")[1]]}) as fake:
        monkeypatch.setenv("CLOUDSD_REGISTRY_API_URL", fake.base_url)
        yield fake


def options(source: str, **settings: object) -> UpOptions:
    return UpOptions.from_settings(resolve({"ui": "comfyui", "image_source": source, **settings}), "box")


def test_auto_takes_the_prebuilt_image_when_it_can_be_pulled(registry: FakeRegistry) -> None:
    said: list[str] = []
    choice = machine_image(options("auto"), "comfyui", "RTX 5090", on_local_engine=False, on_progress=said.append)
    assert (choice.image, choice.install) == (PREBUILT, False)
    assert said[-1] == f"the machine pulls the prebuilt {PREBUILT}: found in ghcr.io, pullable without credentials"


def test_auto_installs_on_a_stock_image_when_the_prebuilt_one_is_missing(registry: FakeRegistry) -> None:
    registry.public["cloudsd/comfyui"].clear()
    said: list[str] = []
    choice = machine_image(options("auto"), "comfyui", "RTX 5090", on_local_engine=False, on_progress=said.append)
    assert (choice.image, choice.install, choice.cuda) == (STOCK_128, True, "12.8")
    assert said[-1] == choice.why == (
        f"installs comfyui on first boot of {STOCK_128} into /workspace (the prebuilt {PREBUILT} cannot be "
        "pulled: ghcr.io has no cloudsd/comfyui:0.3.77-cu128 (not published))")


def test_install_always_installs_and_prebuilt_refuses(registry: FakeRegistry) -> None:
    choice = machine_image(options("install"), "comfyui", "RTX 5090", on_local_engine=False)
    assert (choice.image, choice.install) == (STOCK_128, True)
    assert choice.why.endswith("(image_source is install)")
    registry.public["cloudsd/comfyui"].clear()
    with pytest.raises(ImageMissing, match="the prebuilt image .* cannot be pulled.*Nothing was rented"):
        machine_image(options("prebuilt"), "comfyui", "RTX 5090", on_local_engine=False)


def test_never_rents_when_the_stock_image_cannot_be_pulled_either(registry: FakeRegistry) -> None:
    registry.public["cloudsd/comfyui"].clear()
    registry.public["runpod/pytorch"].clear()
    with pytest.raises(ImageMissing, match="the stock image .* cannot be pulled either.*Nothing was rented"):
        machine_image(options("auto"), "comfyui", "RTX 5090", on_local_engine=False)
    named = replace(options("install"), stock_image="ghcr.io/someone/pytorch:cu124")
    with pytest.raises(ImageMissing, match="ghcr.io/someone/pytorch:cu124"):
        machine_image(named, "comfyui", None, on_local_engine=False)


def test_the_setting_resolves_from_flag_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve()["image_source"] == "auto"
    monkeypatch.setenv("CLOUDSD_IMAGE_SOURCE", "install")
    assert resolve().source("image_source").startswith("env")
    assert options("prebuilt").image_source == "prebuilt"
    assert UpOptions.from_settings(resolve(), None).image_source == "install"
    monkeypatch.setenv("CLOUDSD_IMAGE_SOURCE", "sometimes")
    with pytest.raises(Exception, match="sometimes"):
        resolve()


def test_install_needs_the_images_folder_before_anything_is_rented(registry: FakeRegistry, tmp_path: object,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsd.errors import ConfigError

    monkeypatch.setenv("CLOUDSD_IMAGES_DIR", str(tmp_path))  # no install scripts there
    with pytest.raises(ConfigError, match="no cloudsd images/ folder"):
        machine_image(options("install"), "comfyui", "RTX 5090", on_local_engine=False)
    assert registry.requests == []  # refused before even asking a registry
