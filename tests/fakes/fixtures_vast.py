"""Pytest fixtures for the fake Vast.ai (loaded through `pytest_plugins` in tests/conftest.py).

    def test_something(fake_vast, vast_provider): …          # no Docker needed until a machine boots
    @pytest.mark.docker
    def test_boot(fake_vast, vast_provider): …               # the testbed image is ensured first

`fake_vast` also sets VAST_API_KEY and VAST_URL, so `VastProvider()` and the CLI reach the fake. A test
marked `docker` skips with a reason when no engine runs, and fails instead under CLOUDSD_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .machines import TEST_IMAGE, ensure_test_network
from .registry import serve_cloudsd_registry
from .vast_server import FakeVast


def _docker_image_or_skip() -> str:
    from tests.support.images import docker_client_or_skip, ensure_testbed_image

    client = docker_client_or_skip()
    try:
        ensure_test_network(client)
        return ensure_testbed_image(client)
    finally:
        client.close()


@pytest.fixture
def fake_vast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    """A started FakeVast; every container it booted is removed afterwards."""
    image = _docker_image_or_skip() if request.node.get_closest_marker("docker") else TEST_IMAGE
    fake = FakeVast(image=image).start()
    monkeypatch.setenv("VAST_API_KEY", fake.api_key)
    monkeypatch.setenv("VAST_URL", fake.base_url)
    try:
        with serve_cloudsd_registry(monkeypatch) as registry:
            fake.registry = registry  # type: ignore[attr-defined]  # where `up` checks cloudsd's images
            yield fake
    finally:
        fake.stop()


@pytest.fixture
def vast_provider(fake_vast: FakeVast) -> Iterator[object]:
    """A VastProvider on the fake, with short backoffs so retry tests stay fast."""
    from cloudsd.providers.vastai import VastProvider

    provider = VastProvider(api_key=fake_vast.api_key, base_url=fake_vast.base_url, backoff_base_s=0.05,
                            deadline_s=20.0)
    provider.recover_settle_s = 0.1
    try:
        yield provider
    finally:
        provider.close()
