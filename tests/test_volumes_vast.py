"""Vast.ai volumes on the fake Vast (shaped by Vast's OpenAPI and official CLI): create, placement, attach,
re-use without re-sending, removal refused while attached, cost per second, strays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudsd.errors import ProviderError
from cloudsd.machine import OfferSpec
from cloudsd.volumes import VolumeRequest
from tests.cli_helpers import cloudsd, cloudsd_json

MB = 1024 * 1024


def test_create_sends_the_clis_shapes_and_lists_by_label(fake_vast: Any, vast_provider: Any) -> None:
    info = vast_provider.create_volume(VolumeRequest("my-models", 30, region=None))
    (search,) = fake_vast.calls("POST", "/api/v0/volumes/search")
    assert search.body["disk_space"] == {"gte": 30} and search.body["order"] == [["storage_cost", "asc"]]
    (rent,) = fake_vast.calls("PUT", "/api/v0/volumes")
    assert rent.body == {"id": search_first_id(fake_vast, search.body), "size": 30, "name": "cloudsd_my_models"}
    assert info.label == "cloudsd-my-models" and info.name == "my-models" and info.size_gb == 30
    cheapest = min(r["storage_cost"] for r in fake_vast.catalog if r["verified"])
    assert info.price_per_gb_month == pytest.approx(cheapest)
    assert [v.provider_id for v in vast_provider.list_volumes()] == [info.provider_id]
    assert fake_vast.volume_billed_usd(info.provider_id) > 0  # billing from the rent, per second


def search_first_id(fake_vast: Any, body: dict[str, Any]) -> int:
    from tests.fakes.vast_catalog import matches, order_rows

    rows = [r for r in fake_vast._volume_offers() if matches(r, body)]
    return int(order_rows(rows, body["order"])[0]["id"])


def test_offers_are_on_the_volumes_machine_and_elsewhere_is_refused(fake_vast: Any, vast_provider: Any) -> None:
    info = vast_provider.create_volume(VolumeRequest("placed", 10))
    spec = OfferSpec(disk_gb=10)
    placed = vast_provider.volume_offers(spec, info)
    assert placed and {fake_vast._offers[int(o.offer_id)]["machine_id"] for o in placed} == {int(info.placement)}
    elsewhere = next(o for o in vast_provider.offers(spec)
                     if fake_vast._offers[int(o.offer_id)]["machine_id"] != int(info.placement))
    from cloudsd.machine import CreateRequest

    request = CreateRequest(name="wrong", image="img", public_key="ssh-ed25519 AAAA x", volume_id=info.provider_id)
    with pytest.raises(ProviderError, match="can only be attached to instances on that machine"):
        vast_provider.create(elsewhere, request)
    assert fake_vast.live_instances() == []
    (create,) = fake_vast.calls("PUT", "/api/v0/asks/")
    assert create.body["volume_info"] == {"create_new": False, "volume_id": int(info.provider_id),
                                          "mount_path": "/workspace"}


def test_delete_is_quiet_when_gone(fake_vast: Any, vast_provider: Any) -> None:
    info = vast_provider.create_volume(VolumeRequest("gone", 10))
    vast_provider.delete_volume(info.provider_id)
    vast_provider.delete_volume(info.provider_id)
    assert vast_provider.list_volumes() == []
    (first, _) = fake_vast.calls("DELETE", "/api/v0/volumes")
    assert first.query == {"id": info.provider_id} and first.body == {"id": int(info.provider_id)}


def test_strays_on_vast_are_listed_and_kept_without_yes(fake_vast: Any, vast_provider: Any) -> None:
    stray = vast_provider.create_volume(VolumeRequest("lost", 10))
    rows = cloudsd_json("volume", "ls", "--provider", "vastai")
    assert [(r["name"], r["stray"], r["provider_id"]) for r in rows] == [("lost", True, stray.provider_id)]
    assert rows[0]["per_month_usd"] == pytest.approx(10 * stray.price_per_gb_month)
    assert cloudsd("volume", "rm", "lost", "--provider", "vastai").returncode != 0
    assert [v.provider_id for v in vast_provider.list_volumes()] == [stray.provider_id]
    assert cloudsd("volume", "rm", "lost", "--provider", "vastai", "--yes").returncode == 0
    assert vast_provider.list_volumes() == []


@pytest.mark.docker
def test_two_evenings_on_a_vast_volume(fake_vast: Any, vast_provider: Any, tmp_path: Path) -> None:
    lora = tmp_path / "models" / "Lora" / "kept.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"\x01" * 3 * MB)
    created = cloudsd_json("volume", "create", "evenings", "--provider", "vastai", "--size", "20")
    volume_id = created["provider_id"]

    offers = cloudsd_json("offers", "--volume", "evenings")
    machines = {fake_vast._offers[int(o["offer_id"])]["machine_id"] for o in offers}
    assert machines == {int(created["placement"])}

    first = cloudsd("up", "one", "--volume", "evenings", "--detach", "--yes", "--models", str(lora.parent.parent))
    assert first.returncode == 0, first.stderr
    (inst,) = fake_vast.live_instances()
    assert fake_vast.instance(inst)["machine_id"] == int(created["placement"])
    refused = cloudsd("volume", "rm", "evenings", "--yes")
    assert refused.returncode != 0 and "in use by machine one" in refused.stderr
    down = cloudsd("down", "one", "--yes", "--no-outputs")
    assert down.returncode == 0, down.stderr
    assert "volume evenings keeps billing $" in down.stderr and "cloudsd volume rm evenings" in down.stderr

    assert cloudsd("up", "two", "--volume", "evenings", "--detach", "--yes").returncode == 0
    again = cloudsd_json("sync", "models", "two", str(lora.parent.parent))
    assert [r["outcome"] for r in again["results"]] == ["present"] and again["bytes_sent"] == 0
    listed = cloudsd_json("volume", "ls")
    assert listed[0]["used_by"] == "two" and listed[0]["month_to_date_usd"] > 0
    assert cloudsd("down", "two", "--yes", "--no-outputs").returncode == 0
    assert cloudsd("volume", "rm", "evenings", "--yes").returncode == 0
    assert vast_provider.list_volumes() == [] and fake_vast.volume_billed_usd(volume_id) > 0


def test_status_and_cost_show_accrual_month_to_date_and_vasts_own_figure(fake_vast: Any) -> None:
    import time

    created = cloudsd_json("volume", "create", "billed", "--provider", "vastai", "--size", "50")
    time.sleep(1.0)
    text = cloudsd("status").stdout
    per_month = 50 * created["price_per_gb_month"]
    assert f"volume billed (vastai, 50 GB) ${per_month:.2f}/month, $0.0" in text and "this month" in text
    report = cloudsd_json("cost")
    (line,) = report["volumes"]
    assert line["name"] == "billed" and line["per_month_usd"] == pytest.approx(per_month)
    assert line["month_to_date_usd"] > 0 and line["window_usd"] >= line["month_to_date_usd"]
    # Vast's charges carry the volume's storage; the fake bills per second, so they agree within a few seconds
    assert line["billed_usd"] == pytest.approx(line["window_usd"], abs=per_month * 5 / 3600 / 720)
    lines = cloudsd("cost").stdout
    assert "volume billed on vastai, 50 GB at $" in lines and "vastai billed $" in lines
    assert cloudsd("volume", "rm", "billed", "--yes").returncode == 0
    assert "volume billed" not in cloudsd("status").stdout


def test_gpu_puts_the_volume_on_a_host_with_that_gpu(fake_vast: Any, vast_provider: Any) -> None:
    def gpu_of(placement: str) -> str:
        (row,) = [r for r in fake_vast.catalog if r["machine_id"] == int(placement)]
        return str(row["gpu_name"])

    default = vast_provider.create_volume(VolumeRequest("default", 20, cuda="12.4", machine_disk_gb=40))
    assert gpu_of(default.placement) != "RTX 3090"  # without --gpu the volume goes elsewhere
    vast_provider.delete_volume(default.provider_id)
    created = cloudsd_json("volume", "create", "fast", "--provider", "vastai", "--size", "20", "--gpu", "RTX 3090")
    assert gpu_of(created["placement"]) == "RTX 3090"
    offers = cloudsd_json("offers", "--volume", "fast")
    assert offers and {o["gpu_name"] for o in offers} == {"RTX 3090"}
    none = cloudsd("volume", "create", "nowhere", "--provider", "vastai", "--size", "20", "--gpu", "H200 NVL")
    errors = [line for line in none.stderr.splitlines() if line.startswith("error:")]
    assert none.returncode == 5 and len(errors) == 1 and "--gpu" in errors[0], none.stderr
    assert [v["name"] for v in cloudsd_json("volume", "ls")] == ["fast"]  # nothing reserved for the refusal
