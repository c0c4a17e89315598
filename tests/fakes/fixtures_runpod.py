"""pytest fixtures for the fake RunPod (loaded through `pytest_plugins` in tests/conftest.py).

    def test_boot(fake_runpod): …         # pods are real containers of the testbed image
    def test_api(fake_runpod_api): …      # the same API, pods as records only: no Docker needed

Both set RUNPOD_API_KEY and RUNPOD_API_BASE_URL, so `RunPodProvider()` and the CLI reach the fake, and both
fail the test afterwards if any request went to GraphQL or REST v1, or the fake answered off-schema.
`fake_runpod` skips with the reason when no Docker engine runs, and fails instead under
CLOUDSD_REQUIRE_DOCKER=1 (CI, where the environment promises one). Every container is removed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.registry import serve_cloudsd_registry
from tests.fakes.runpod_server import FakeRunPod


def _testbed_image_or_skip() -> str:
    from tests.fakes.machines import ensure_test_network
    from tests.support.images import docker_client_or_skip, ensure_testbed_image

    client = docker_client_or_skip()
    try:
        ensure_test_network(client)
        return ensure_testbed_image(client)
    finally:
        client.close()


def _serve(fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    with fake, serve_cloudsd_registry(monkeypatch) as registry:
        fake.registry = registry  # type: ignore[attr-defined]  # where `up` checks cloudsd's images
        monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
        monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.base_url)
        yield fake
        # Every test that uses the fake also checks: nothing spoke GraphQL or REST v1, nothing went off-schema.
        assert not fake.retired_calls, f"requests to retired RunPod APIs: {fake.retired_calls[:3]}"
        assert not fake.violations, f"the fake answered off-schema: {fake.violations[:3]}"


@pytest.fixture
def fake_runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    """A started FakeRunPod whose pods boot containers of the testbed image."""
    yield from _serve(FakeRunPod(image=_testbed_image_or_skip()), monkeypatch)


@pytest.fixture
def fake_runpod_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    """A started FakeRunPod whose pods are records only (runtime stays null)."""
    yield from _serve(FakeRunPod(boot_machines=False), monkeypatch)
