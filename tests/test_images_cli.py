"""`cloudsd image build` / `cloudsd image push`, and `cloudsd up` on the local engine when the image is missing.

Nothing here reaches beyond this computer: the only image built is the testbed (from the local debootstrap
base), pushes and pulls go to 127.0.0.1:1 where nothing listens, and a real UI image is only ever asked
for with pulling off.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloudsd import images
from cloudsd.errors import ConfigError
from tests.cli_helpers import cloudsd
from tests.fixtures_local import own_machines

IMAGES = Path(__file__).resolve().parents[1] / "images"
CITEST = "cloudsd-testbed:citest"
NOWHERE = "127.0.0.1:1"  # a registry address where nothing listens: refused at once, on this computer


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- without an engine ---------------------------------------------------------------------------------------


def test_build_targets_and_default_names() -> None:
    a1111 = images.build_target("a1111")
    assert (a1111.tag, a1111.dockerfile, a1111.buildargs) == (
        "ghcr.io/cloudsd/a1111:1.10.1-cu124", "a1111/Dockerfile", {"CUDA": "12.4"})
    comfy = images.build_target("comfyui", "12.8", registry="registry.example:5000/me/")
    assert comfy.tag == "registry.example:5000/me/comfyui:0.3.77-cu128" and comfy.buildargs == {"CUDA": "12.8"}
    assert images.build_target("forge", tag="mine:1").tag == "mine:1"
    testbed = images.build_target("testbed")
    assert (testbed.tag, testbed.buildargs) == ("cloudsd-testbed:latest", {"BASE": "cloudsd-base:bookworm"})
    with pytest.raises(ConfigError, match="CUDA 11.8"):
        images.build_target("a1111", "11.8")
    with pytest.raises(ConfigError, match="sdnext"):
        images.build_target("sdnext")


def test_bases_a_build_needs() -> None:
    want = ["nvidia/cuda:12.4.1-base-ubuntu22.04", "nvidia/cuda:12.8.1-base-ubuntu22.04"]
    for flavor in ("a1111", "forge", "comfyui"):
        assert images.external_bases((IMAGES / flavor / "Dockerfile").read_text()) == want
    assert images.external_bases((IMAGES / "testbed" / "Dockerfile").read_text()) == []
    assert images.external_bases("FROM a:1 AS one\nFROM one\nFROM --platform=x b:2\n") == ["a:1", "b:2"]


def test_names_and_sizes() -> None:
    assert images.has_registry_host("ghcr.io/cloudsd/a1111:1") and images.has_registry_host("localhost/x")
    assert images.has_registry_host("127.0.0.1:5000/x:y")
    assert not images.has_registry_host("cloudsd-testbed:latest") and not images.has_registry_host("user/app:1")
    assert images.split_tag("127.0.0.1:1/a/b:c") == ("127.0.0.1:1/a/b", "c")
    assert images.split_tag("127.0.0.1:1/a/b") == ("127.0.0.1:1/a/b", "latest")
    assert images.split_tag("ubuntu") == ("ubuntu", "latest")
    assert [images.human_size(n) for n in (512, 132_350_000, 5_610_000_000)] == ["512 B", "132.35 MB", "5.61 GB"]


def test_no_images_folder_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDSD_IMAGES_DIR", str(tmp_path))
    result = cloudsd("image", "build", "--ui", "testbed")
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [line for line in result.stderr.splitlines() if line.strip()]
    assert "no cloudsd images/ folder" in result.stderr and "pip install -e ." in result.stderr


def test_unknown_cuda_variant_is_refused() -> None:
    result = cloudsd("image", "build", "--ui", "a1111", "--cuda", "11.8")
    assert result.returncode == 2 and "11.8" in result.stderr


# -- on the local engine -------------------------------------------------------------------------------------


@pytest.mark.docker
def test_build_the_testbed_and_print_its_size(docker_client: object) -> None:
    from tests.support.images import ensure_base_image

    ensure_base_image(docker_client, images.TESTBED_BASE)
    try:
        result = cloudsd("image", "build", "--ui", "testbed", "--tag", CITEST, timeout=600)
        assert result.returncode == 0, result.stderr
        match = re.fullmatch(r"built cloudsd-testbed:citest \((\d+\.\d\d) MB, sha256:[0-9a-f]{12}\)\n", result.stdout)
        assert match, result.stdout
        image = docker_client.images.get(CITEST)  # type: ignore[attr-defined]
        assert abs(image.attrs["Size"] / 1e6 - float(match.group(1))) < 0.01
        assert image.attrs["Config"]["Entrypoint"] == ["/opt/cloudsd/boot/entrypoint.sh"]
        assert "Step 1/" in result.stderr  # the build's progress went to stderr
        run = docker_client.containers.run(  # type: ignore[attr-defined]
            CITEST, entrypoint=["/bin/sh", "-c", "test -x /opt/cloudsd/ui/start && cat /opt/cloudsd/ui/flavor"],
            remove=True, network="cloudsd-test")
        assert run.decode().split() == ["a1111", "forge", "comfyui"]
    finally:
        _untag(docker_client, CITEST)


@pytest.mark.docker
def test_push_failure_is_one_line(docker_client: object, testbed_image: str) -> None:
    target = f"{NOWHERE}/cloudsd/testbed:citest"
    docker_client.images.get(testbed_image).tag(target)  # type: ignore[attr-defined]
    try:
        result = cloudsd("image", "push", "--tag", target, timeout=120)
    finally:
        _untag(docker_client, target)
    assert result.returncode == 11, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: pushing {target} failed:")
    assert "connection refused" in line and f"Is {NOWHERE} reachable from here?" in line


@pytest.mark.docker
def test_push_of_a_missing_image_says_build_first(docker_client: object) -> None:
    result = cloudsd("image", "push", "--tag", f"{NOWHERE}/cloudsd/never-built:x")
    assert result.returncode == 11
    assert error_lines(result.stderr) == [
        f"error: there is no image {NOWHERE}/cloudsd/never-built:x on the Docker engine to push. "
        "Build it first: `cloudsd image build` with the same --ui, --cuda and --tag."]


@pytest.mark.docker
def test_building_a_real_image_with_pulls_off_stops_before_the_network(docker_client: object,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.errors

    base = "nvidia/cuda:12.4.1-base-ubuntu22.04"
    try:
        docker_client.images.get(base)  # type: ignore[attr-defined]
        pytest.skip(f"{base} is on this engine, so the build would go on to GitHub")
    except docker.errors.ImageNotFound:
        pass
    monkeypatch.setenv("CLOUDSD_IMAGE_PULL", "never")
    result = cloudsd("image", "build", "--ui", "comfyui", "--tag", "cloudsd-comfyui:never")
    assert result.returncode == 11
    assert error_lines(result.stderr) == [
        f"error: the base image {base} is not on the Docker engine, and pulling is off. "
        f"Pull it (`docker pull {base}`), or set image_pull to auto."]


@pytest.mark.docker
def test_up_with_an_image_that_cannot_be_pulled_is_one_line(local_env: dict[str, str],
                                                            docker_client: object) -> None:
    result = cloudsd("up", "nopull", "--provider", "local", "--image", f"{NOWHERE}/nope:x", "--detach")
    assert result.returncode == 4
    (line,) = error_lines(result.stderr)
    assert f"pulling {NOWHERE}/nope:x failed" in line and "connection refused" in line
    assert "docker pull" in line and "--image cloudsd-testbed:latest" in line
    assert own_machines(docker_client, "nopull") == []


@pytest.mark.docker
def test_up_with_the_default_image_missing_names_the_build(local_env: dict[str, str], docker_client: object,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's main command on a machine that can neither pull nor build the A1111 image."""
    monkeypatch.delenv("CLOUDSD_IMAGE")
    monkeypatch.setenv("CLOUDSD_REGISTRY", f"{NOWHERE}/cloudsd")  # never a real registry, even by mistake
    monkeypatch.setenv("CLOUDSD_IMAGE_PULL", "never")
    result = cloudsd("up", "noimage", "--provider", "local", "--detach")
    assert result.returncode == 4
    (line,) = error_lines(result.stderr)
    assert f"the image '{NOWHERE}/cloudsd/a1111:1.10.1-cu124' could not be pulled" in line
    assert "`cloudsd image build --ui a1111`" in line and "`cloudsd up --image cloudsd-testbed:latest`" in line
    assert "Traceback" not in result.stderr
    assert cloudsd("status", "--json").stdout.strip() == "[]"


def _untag(client: object, tag: str) -> None:
    import docker.errors

    try:
        client.images.remove(tag, noprune=False)  # type: ignore[attr-defined]
    except docker.errors.APIError:
        pass
