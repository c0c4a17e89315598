"""The memory provider's world, fresh for each test that asks for it, with the provider enabled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudsd.providers.memory import WORLD, World


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("CLOUDSD_PROVIDERS", "memory")
    # A named image: cloudsd's own would be looked up in its registry before renting, and tests stay offline.
    monkeypatch.setenv("CLOUDSD_IMAGE", "cloudsd-testbed:latest")
    WORLD.reset()
    yield WORLD
    WORLD.reset()
