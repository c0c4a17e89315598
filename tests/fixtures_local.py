"""Fixtures for tests on the local Docker engine: the test image, the isolated network, cleanup."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.fakes.machines import TEST_NETWORK, ensure_test_network
from tests.support.locks import engine_lock


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    from tests.support.images import docker_client_or_skip

    client = docker_client_or_skip()
    ensure_test_network(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def testbed_image(docker_client: object) -> str:
    from tests.support.images import ensure_testbed_image

    return ensure_testbed_image(docker_client)


NO_UI_IMAGE = "cloudsd-testbed-noui:latest"


@pytest.fixture(scope="session")
def no_ui_image(docker_client: object, testbed_image: str) -> str:
    """The test image with a web UI that never answers: for failures after the machine was created."""
    import io

    dockerfile = f'FROM {testbed_image}\nENV CLOUDSD_UI_CMD="exec sleep 86400"\n'
    with engine_lock("no-ui-image"):
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=NO_UI_IMAGE, rm=True,  # type: ignore[attr-defined]
                                   pull=False)
    return NO_UI_IMAGE


@pytest.fixture
def own_network(docker_client: object) -> Iterator[str]:
    """A test network of this test's own (outbound NAT off, as `cloudsd-test`), for containers found by DNS
    alias: two tests serving the same alias on one network would answer each other's machines."""
    name = ensure_test_network(docker_client, f"{TEST_NETWORK}-{uuid.uuid4().hex[:10]}")
    yield name
    network = docker_client.networks.get(name)  # type: ignore[attr-defined]
    network.reload()
    for container_id in network.attrs.get("Containers") or {}:  # a machine a failed test left behind
        network.disconnect(container_id, force=True)
    network.remove()


def own_machines(client: object, name: str | None = None, *, running_only: bool = False) -> list[object]:
    """The containers of this test's CLOUDSD_HOME (named `name`, if given): other tests' machines of the same
    name, in another pytest-xdist worker or another checkout on this engine, are not seen."""
    from cloudsd.providers.local import HOME_LABEL, MACHINE_LABEL, home_tag

    label = f"{MACHINE_LABEL}={name}" if name else MACHINE_LABEL
    return client.containers.list(all=not running_only,  # type: ignore[attr-defined, no-any-return]
                                  filters={"label": [label, f"{HOME_LABEL}={home_tag()}"]})


def _remove_local_machines(client: object) -> None:
    """This test's machines only (its own CLOUDSD_HOME): other test runs on the same engine keep theirs."""
    for container in own_machines(client):
        container.remove(force=True, v=True)  # type: ignore[attr-defined]


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, docker_client: object, testbed_image: str) -> Iterator[dict[str, str]]:
    """Environment for running cloudsd against the local engine with the test image, on the test network."""
    env = {"CLOUDSD_LOCAL_NETWORK": TEST_NETWORK, "CLOUDSD_IMAGE": testbed_image, "CLOUDSD_LOCAL_GPUS": "none"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    _remove_local_machines(docker_client)


@pytest.fixture
def local_provider(local_env: dict[str, str]) -> Iterator[object]:
    from cloudsd.providers.local import LocalProvider

    provider = LocalProvider(network=TEST_NETWORK, gpus="none")
    yield provider
    provider.close()
