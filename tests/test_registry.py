"""cloudsd.registry against a fake registry on 127.0.0.1 (tests/fakes/registry.py), and `up` refusing to rent
for cloudsd's own image when nobody can pull it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudsd.errors import ImageMissing
from cloudsd.images import require_pullable
from cloudsd.registry import base_url, check_pullable, parse_challenge, parse_reference
from tests.fakes.registry import FakeRegistry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    with FakeRegistry(public={"cloudsd/a1111": ["1.10.1-cu124"]}, private={"cloudsd/forge"}) as fake:
        monkeypatch.setenv("CLOUDSD_REGISTRY_API_URL", fake.base_url)
        yield fake


def test_names_are_read_as_docker_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDSD_REGISTRY_API_URL", raising=False)
    assert tuple(vars(parse_reference("ghcr.io/cloudsd/a1111:1.10.1-cu124")).values()) == (
        "ghcr.io", "cloudsd/a1111", "1.10.1-cu124")
    assert tuple(vars(parse_reference("ubuntu")).values()) == ("registry-1.docker.io", "library/ubuntu", "latest")
    assert tuple(vars(parse_reference("runpod/pytorch:2.4")).values()) == (
        "registry-1.docker.io", "runpod/pytorch", "2.4")
    assert parse_reference("127.0.0.1:5000/x/y@sha256:ab").reference == "sha256:ab"
    assert parse_reference("localhost:5000/x").repository == "x"
    assert base_url("ghcr.io") == "https://ghcr.io" and base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert parse_challenge('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull"') == {
        "realm": "https://ghcr.io/token", "service": "ghcr.io", "scope": "repository:a/b:pull"}
    assert parse_challenge('Basic realm="x"') is None


def test_a_public_image_is_found_through_the_anonymous_token_flow(registry: FakeRegistry) -> None:
    found = check_pullable("ghcr.io/cloudsd/a1111:1.10.1-cu124")
    assert (found.pullable, found.reason) == (True, "found in ghcr.io, pullable without credentials")
    methods = [(m, p.split("?")[0]) for m, p, _ in registry.requests]
    assert methods == [("HEAD", "/v2/cloudsd/a1111/manifests/1.10.1-cu124"), ("GET", "/token"),
                       ("HEAD", "/v2/cloudsd/a1111/manifests/1.10.1-cu124")]
    assert registry.requests[-1][2]["Authorization"].startswith("Bearer ")


def test_missing_private_and_unreachable_images_say_why(registry: FakeRegistry,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    missing = check_pullable("ghcr.io/cloudsd/a1111:1.10.1-cu128")
    assert (missing.pullable, missing.reason) == (False, "ghcr.io has no cloudsd/a1111:1.10.1-cu128 (not published)")
    private = check_pullable("ghcr.io/cloudsd/forge:2.0.1-dfdcbab-cu124")
    assert not private.pullable and "no anonymous token for cloudsd/forge (HTTP 401)" in private.reason
    monkeypatch.setenv("CLOUDSD_REGISTRY_API_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    gone = check_pullable("ghcr.io/cloudsd/a1111:1.10.1-cu124")
    assert not gone.pullable and gone.reason.startswith("ghcr.io could not be asked (ConnectError")


def test_require_pullable_stops_before_renting_with_what_to_do(registry: FakeRegistry) -> None:
    said: list[str] = []
    require_pullable("ghcr.io/cloudsd/a1111:1.10.1-cu124", "a1111", on_progress=said.append)
    assert said[-1] == ("the machine pulls the prebuilt ghcr.io/cloudsd/a1111:1.10.1-cu124: "
                        "found in ghcr.io, pullable without credentials")
    with pytest.raises(ImageMissing) as caught:
        require_pullable("ghcr.io/cloudsd/a1111:1.10.1-cu128", "a1111")
    assert caught.value.message == ("the prebuilt image ghcr.io/cloudsd/a1111:1.10.1-cu128 cannot be pulled: "
                                    "ghcr.io has no cloudsd/a1111:1.10.1-cu128 (not published). Nothing was rented.")
    assert "`cloudsd image build --ui a1111 --cuda 12.8`" in str(caught.value.hint)


def test_the_image_is_chosen_in_one_place_as_plain_data() -> None:
    from cloudsd.images import ImageChoice, choose_image

    ours = choose_image("comfyui", "NVIDIA GeForce RTX 5090", image=None, registry="127.0.0.1:5000/x")
    assert ours == ImageChoice("127.0.0.1:5000/x/comfyui:0.3.77-cu128", "comfyui", "12.8", "127.0.0.1:5000/x",
                               ours=True, way="host-pulls")
    assert choose_image("forge", None, image=None).image == "ghcr.io/cloudsd/forge:2.0.1-dfdcbab-cu124"
    named = choose_image("a1111", "RTX 5090", image="runpod/stable-diffusion:web-ui", on_local_engine=True)
    assert (named.image, named.cuda, named.ours, named.way) == ("runpod/stable-diffusion:web-ui", None, False, "engine")
