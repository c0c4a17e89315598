"""RunPod network volumes on the fake REST v2 (every request and answer checked against the schema derived from
RunPod's OpenAPI document): create, placement in the volume's data center, attach, re-use without re-sending,
removal refused while attached, cost from RunPod's own volume billing, strays."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cloudsd.errors import NoCapacity
from cloudsd.machine import CreateRequest, OfferSpec
from cloudsd.volumes import VolumeRequest
from tests.cli_helpers import cloudsd, cloudsd_json

MB = 1024 * 1024


@pytest.fixture
def runpod(fake_runpod_api: Any) -> Any:
    from cloudsd.providers.runpod import RunPodProvider

    provider = RunPodProvider(api_key=fake_runpod_api.api_key, base_url=fake_runpod_api.base_url)
    yield provider
    provider.close()
    assert fake_runpod_api.violations == []


def test_create_list_and_placed_offers(fake_runpod_api: Any, runpod: Any) -> None:
    info = runpod.create_volume(VolumeRequest("models", 50))
    (body,) = [b for b in fake_runpod_api.requests if isinstance(b, dict) and "dataCenter" in b]
    assert body == {"name": "cloudsd-models", "size": 50, "dataCenter": "US-TX-3"}  # the best-stocked data center
    assert info.name == "models" and info.placement == "US-TX-3" and info.price_per_gb_month == 0.07
    assert [v.provider_id for v in runpod.list_volumes()] == [info.provider_id]
    placed = runpod.volume_offers(OfferSpec(disk_gb=20), info)
    assert placed and all(o.offer_id.endswith("|SECURE") and o.region == "US-TX-3" for o in placed)
    assert any(o.offer_id.endswith("|COMMUNITY") for o in runpod.offers(OfferSpec(disk_gb=20)))  # elsewhere
    elsewhere = runpod.create_volume(VolumeRequest("far", 10, region="EU-RO-1"))
    assert runpod.volume_offers(OfferSpec(disk_gb=20), elsewhere) == []  # no stock in that data center


def test_a_pod_outside_the_volumes_data_center_is_refused(fake_runpod_api: Any, runpod: Any) -> None:
    info = runpod.create_volume(VolumeRequest("placed", 10, region="US-TX-3"))
    community = next(o for o in runpod.offers(OfferSpec(disk_gb=20)) if o.offer_id.endswith("|COMMUNITY"))
    request = CreateRequest(name="wrong", image="img", public_key="ssh-ed25519 AAAA x", volume_id=info.provider_id)
    with pytest.raises(NoCapacity, match="data center US-TX-3"):
        runpod.create(community, request)
    assert fake_runpod_api.cloud.live_pods() == []
    create = [b for b in fake_runpod_api.requests if isinstance(b, dict) and "gpu" in b][-1]
    assert create["mounts"] == {"network": [{"volumeId": info.provider_id, "path": "/workspace"}]}
    assert create["dataCenterIds"] == ["US-TX-3"] and "persistent" not in create["mounts"]
    runpod.delete_volume(info.provider_id)
    runpod.delete_volume(info.provider_id)  # quiet when already gone
    assert runpod.list_volumes() == []


def test_cost_strays_and_runpods_own_billing(fake_runpod_api: Any, runpod: Any) -> None:
    created = cloudsd_json("volume", "create", "billed", "--provider", "runpod", "--size", "100")
    stray = runpod.create_volume(VolumeRequest("lost", 10))
    time.sleep(1.0)
    rows = cloudsd_json("volume", "ls", "--provider", "runpod")
    assert [(r["name"], r["stray"]) for r in rows] == [("billed", False), ("lost", True)]
    assert rows[0]["per_month_usd"] == pytest.approx(7.0) and rows[0]["month_to_date_usd"] > 0
    (line,) = cloudsd_json("cost")["volumes"]
    assert line["provider_id"] == created["provider_id"] and line["window_usd"] > 0
    assert line["billed_usd"] == pytest.approx(line["window_usd"], abs=7.0 * 5 / 3600 / 720)
    assert "volume billed (runpod, 100 GB) $7.00/month" in cloudsd("status").stdout
    assert cloudsd("volume", "rm", "lost", "--provider", "runpod").returncode != 0  # not without an answer
    assert cloudsd("volume", "rm", "lost", "--provider", "runpod", "--yes").returncode == 0
    assert [v.provider_id for v in runpod.list_volumes()] == [created["provider_id"]]
    assert stray.provider_id not in {v.provider_id for v in runpod.list_volumes()}


@pytest.mark.docker
def test_two_evenings_on_a_network_volume(fake_runpod: Any, tmp_path: Path) -> None:
    lora = tmp_path / "models" / "Lora" / "kept.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"\x02" * 3 * MB)
    cloudsd_json("volume", "create", "evenings", "--provider", "runpod", "--size", "20", "--region", "US-TX-3")
    first = cloudsd("up", "one", "--volume", "evenings", "--detach", "--yes", "--models", str(lora.parent.parent))
    assert first.returncode == 0, first.stderr
    (pod,) = fake_runpod.cloud.live_pods()
    assert pod.cloud == "SECURE" and pod.network_volume
    refused = cloudsd("volume", "rm", "evenings", "--yes")
    assert refused.returncode != 0 and "in use by machine one" in refused.stderr
    down = cloudsd("down", "one", "--yes", "--no-outputs")
    assert down.returncode == 0, down.stderr
    assert "volume evenings keeps billing $1.40/month" in down.stderr
    assert cloudsd("up", "two", "--volume", "evenings", "--detach", "--yes").returncode == 0
    again = cloudsd_json("sync", "models", "two", str(lora.parent.parent))
    assert [r["outcome"] for r in again["results"]] == ["present"] and again["bytes_sent"] == 0
    assert cloudsd("down", "two", "--yes", "--no-outputs").returncode == 0
    assert cloudsd("volume", "rm", "evenings", "--yes").returncode == 0
    assert fake_runpod.violations == []
