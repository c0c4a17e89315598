"""Volumes on the local engine, end to end through the real `cloudsd` program: create, attach, re-use without
re-sending, removal refused while attached, the reminder at `down`, strays, and the refusal where none exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import cloudsd, cloudsd_json
from tests.fixtures_local import own_machines

pytestmark = pytest.mark.docker
MB = 1024 * 1024


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path


def _docker_volumes(client: Any, label: str) -> list[Any]:
    return client.volumes.list(filters={"label": f"cloudsd.volume={label}"})  # type: ignore[no-any-return]


@pytest.fixture
def remove_volumes(docker_client: Any) -> Any:
    yield
    from cloudsd.providers.local import HOME_LABEL, home_tag

    for volume in docker_client.volumes.list(filters={"label": f"{HOME_LABEL}={home_tag()}"}):
        volume.remove(force=True)


def test_models_stay_on_the_volume_between_machines(local_env: dict[str, str], docker_client: Any,
                                                     remove_volumes: None, tmp_path: Path) -> None:
    _write(tmp_path / "models" / "Lora" / "kept.safetensors", 3 * MB)
    created = cloudsd_json("volume", "create", "keep", "--provider", "local", "--size", "10")
    assert created["provider"] == "local" and created["status"] == "ready"
    (volume,) = _docker_volumes(docker_client, "cloudsd-keep")

    up = cloudsd("up", "first", "--provider", "local", "--volume", "keep", "--detach",
                 "--models", str(tmp_path / "models"))
    assert up.returncode == 0, up.stderr
    (container,) = own_machines(docker_client, "first")
    mounts = {m["Destination"]: m.get("Name") for m in container.attrs["Mounts"]}
    assert mounts["/workspace"] == volume.name

    listed = cloudsd_json("volume", "ls")
    assert [(r["name"], r["used_by"], r["stray"]) for r in listed] == [("keep", "first", False)]
    busy = cloudsd("up", "other", "--provider", "local", "--volume", "keep", "--detach")
    assert busy.returncode != 0 and "volume 'keep' is in use by machine first" in busy.stderr
    assert own_machines(docker_client, "other") == []
    refused = cloudsd("volume", "rm", "keep", "--yes")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1 and "in use by machine first" in errors[0], refused.stderr
    assert _docker_volumes(docker_client, "cloudsd-keep")

    down = cloudsd("down", "first", "--yes", "--no-outputs")
    assert down.returncode == 0, down.stderr
    assert "volume keep is kept" in down.stdout + down.stderr and "cloudsd volume rm keep" in down.stdout + down.stderr

    # The second evening: the models are on the volume, with the agent's index; nothing is sent again.
    assert cloudsd("up", "second", "--provider", "local", "--volume", "keep", "--detach").returncode == 0
    again = cloudsd_json("sync", "models", "second", str(tmp_path / "models"))
    assert [r["outcome"] for r in again["results"]] == ["present"]
    assert again["bytes_sent"] == 0 and again["agent_runs"] == 1
    assert cloudsd("down", "second", "--yes", "--no-outputs").returncode == 0

    removed = cloudsd("volume", "rm", "keep", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert _docker_volumes(docker_client, "cloudsd-keep") == []
    assert cloudsd_json("volume", "ls") == []


def test_stray_volumes_are_listed_and_deleted_only_with_yes(local_env: dict[str, str], docker_client: Any,
                                                             remove_volumes: None) -> None:
    from cloudsd.providers.local import HOME_LABEL, home_tag

    docker_client.volumes.create(name=f"cloudsd-lost-{home_tag()}",
                                 labels={"cloudsd.volume": "cloudsd-lost", HOME_LABEL: home_tag()})
    rows = cloudsd_json("volume", "ls", "--provider", "local")
    assert [(r["name"], r["stray"]) for r in rows] == [("lost", True)]
    unasked = cloudsd("volume", "rm", "lost", "--provider", "local")  # no terminal to answer: nothing deleted
    assert unasked.returncode != 0 and _docker_volumes(docker_client, "cloudsd-lost")
    assert cloudsd("volume", "rm", "lost", "--provider", "local", "--yes").returncode == 0
    assert _docker_volumes(docker_client, "cloudsd-lost") == []


def test_offers_with_a_volume_are_where_it_lives(local_env: dict[str, str], remove_volumes: None) -> None:
    cloudsd_json("volume", "create", "here", "--provider", "local", "--size", "5")
    offers = json.loads(cloudsd("offers", "--volume", "here", "--json", check=True).stdout)
    assert [o["region"] for o in offers] == ["this computer"]
    wrong = cloudsd("offers", "--volume", "here", "--provider", "vastai")
    assert wrong.returncode == 2 and "volume 'here' is on local, not vastai" in wrong.stderr


def test_a_provider_without_volumes_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSD_PROVIDERS", "memory")  # the in-process provider, which has no volumes
    result = cloudsd("volume", "create", "v", "--provider", "memory", "--size", "10")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "memory has no volumes in cloudsd" in errors[0] and "local, runpod, vastai" in result.stderr
    missing = cloudsd("up", "--volume", "nope", "--provider", "local")
    assert missing.returncode != 0 and "no volume named 'nope'" in missing.stderr
