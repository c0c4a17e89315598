"""The testbed image for tests: built from images/testbed once per session, rebuilt when its files change.

    client = docker_client_or_skip()
    image = ensure_testbed_image(client)     # "cloudsd-testbed:latest"

The image carries the label `cloudsd.testbed.hash`: a digest of every file under images/boot,
images/testbed and images/ui (names, exec bits, contents) and of the base image's id. A matching label means the image
is current, so a test session does no build at all. The check and the build hold a lock across processes
(tests/support/locks.py), so pytest-xdist workers, and other checkouts on the same engine, build it once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.locks import engine_lock

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
BASE_BUILD_SCRIPT = IMAGES_DIR / "base" / "build.sh"
TESTBED_DOCKERFILE = "testbed/Dockerfile"  # relative to IMAGES_DIR, the build context
# CLOUDSD_TESTBED_IMAGE: another tag, so two checkouts with different images/ share one engine without rebuilding
# each other's image back and forth.
TESTBED_IMAGE = os.environ.get("CLOUDSD_TESTBED_IMAGE") or "cloudsd-testbed:latest"
DEFAULT_BASE_IMAGE = "cloudsd-base:bookworm"
HASH_LABEL = "cloudsd.testbed.hash"
HASHED_DIRS = ("boot", "testbed", "ui")

_lock = threading.Lock()
_ready: dict[str, str] = {}  # base image -> testbed image, once checked in this session


def docker_client_or_skip() -> docker.DockerClient:
    """A client for a running Docker engine; skips the test without one, or fails it when
    CLOUDSD_REQUIRE_DOCKER=1 (CI, where the environment promises an engine)."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises DockerException, requests/urllib3 errors, or OSError
        reason = f"no Docker engine: {exc}"
        if os.environ.get("CLOUDSD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{reason} (CLOUDSD_REQUIRE_DOCKER=1)")
        pytest.skip(reason)
    return client


def base_image_name() -> str:
    return os.environ.get("CLOUDSD_BASE_IMAGE", DEFAULT_BASE_IMAGE)


def testbed_hash(base_image_id: str = "") -> str:
    """Digest of the files the testbed is built from, plus the base image id."""
    digest = hashlib.sha256(f"base {base_image_id}\n".encode())
    for top in HASHED_DIRS:
        for path in sorted((IMAGES_DIR / top).rglob("*")):
            parts = path.relative_to(IMAGES_DIR).parts
            if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue  # caches and editor files are not part of the image
            rel = path.relative_to(IMAGES_DIR).as_posix()
            executable = os.access(path, os.X_OK)
            digest.update(f"{rel}\0{int(executable)}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_base_image(client: docker.DockerClient, base: str) -> Any:
    """The base image, built with images/base/build.sh (root + debootstrap) when missing."""
    try:
        return client.images.get(base)
    except docker.errors.ImageNotFound:
        pass
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise RuntimeError(
            f"base image {base} is missing and cannot be built here: {BASE_BUILD_SCRIPT} needs root and "
            "debootstrap. Build it on a machine that has them (`sudo images/base/build.sh`), or set "
            "CLOUDSD_BASE_IMAGE to an existing image with openssh-server and python3."
        )
    result = subprocess.run(["bash", str(BASE_BUILD_SCRIPT), base], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{BASE_BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return client.images.get(base)


def ensure_testbed_image(client: docker.DockerClient | None = None) -> str:
    """Build `cloudsd-testbed:latest` unless an image with the current hash label exists; returns its tag."""
    client = client or docker.from_env()
    base = base_image_name()
    with _lock:
        if _ready.get(base) == TESTBED_IMAGE:
            return TESTBED_IMAGE
        with engine_lock("testbed-image"):
            _ensure_current(client, base)
        _ready[base] = TESTBED_IMAGE
        return TESTBED_IMAGE


def _ensure_current(client: docker.DockerClient, base: str) -> None:
    base_image = ensure_base_image(client, base)
    wanted = testbed_hash(base_image.id)
    try:
        current = client.images.get(TESTBED_IMAGE)
    except docker.errors.ImageNotFound:
        current = None
    if current is None or (current.labels or {}).get(HASH_LABEL) != wanted:
        _build(client, base, wanted)
        if current is not None:
            _remove_quietly(client, current.id)


def _build(client: docker.DockerClient, base: str, label: str) -> None:
    try:
        client.images.build(
            path=str(IMAGES_DIR),
            dockerfile=TESTBED_DOCKERFILE,
            tag=TESTBED_IMAGE,
            buildargs={"BASE": base},
            labels={HASH_LABEL: label},
            pull=False,
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        lines = [str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log]
        raise RuntimeError(f"building {TESTBED_IMAGE} failed: {exc}\n{''.join(lines)[-4000:]}") from exc


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    """Drop the outdated image, and any untagged testbed left by an earlier session, so rebuilds leave
    no dangling images behind. An image still in use, or already gone, is fine."""
    try:
        client.images.remove(image_id, noprune=False)
    except docker.errors.APIError:
        pass
    try:
        client.images.prune(filters={"dangling": True, "label": HASH_LABEL})
    except docker.errors.APIError:
        pass


STOCK_IMAGE = os.environ.get("CLOUDSD_STOCK_TEST_IMAGE") or "cloudsd-base:bookworm-stock"
STOCK_EXTRA = "git,python3-venv"


def ensure_stock_image(client: docker.DockerClient) -> str:
    """A stand-in for a provider's stock CUDA + PyTorch image: the test base plus what those images have that
    the install needs (git, python3 with venv), and nothing of cloudsd. Built once with images/base/build.sh."""
    with engine_lock("stock-image"):
        try:
            client.images.get(STOCK_IMAGE)
            return STOCK_IMAGE
        except docker.errors.ImageNotFound:
            pass
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            raise RuntimeError(f"{STOCK_IMAGE} is missing and cannot be built here: {BASE_BUILD_SCRIPT} needs root "
                               f"and debootstrap (`sudo CLOUDSD_BASE_EXTRA={STOCK_EXTRA} {BASE_BUILD_SCRIPT} "
                               f"{STOCK_IMAGE}`).")
        result = subprocess.run(["bash", str(BASE_BUILD_SCRIPT), STOCK_IMAGE], capture_output=True, text=True,
                                env={**os.environ, "CLOUDSD_BASE_EXTRA": STOCK_EXTRA})
        if result.returncode != 0:
            raise RuntimeError(f"{BASE_BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return STOCK_IMAGE
