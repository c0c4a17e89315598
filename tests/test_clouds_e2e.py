"""End to end against the fake clouds, driving the real `cloudsd` program: offers, up, tunnel, down, faults.

The fakes' machines are real containers with a real sshd, so the same SSH and tunnel code runs as against
RunPod and Vast.ai. Each fault switch has a test in which nothing leaks and the user sees one clear line.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudsd.ui import DEFAULT_CUDA
from tests.cli_helpers import cloudsd, cloudsd_json, free_port, interrupt, start, wait_for_line, wait_http

pytestmark = pytest.mark.docker
HOURS_PER_MONTH = {"runpod": 730.0, "vastai": 720.0}  # RunPod's docs; Vast's published examples


@dataclass
class Cloud:
    """One fake cloud behind a common face, so every test runs against both."""

    name: str
    fake: Any

    def live(self) -> list[Any]:
        if self.name == "runpod":
            return list(self.fake.live_pods())
        return list(self.fake.live_instances())

    def true_cheapest(self, gpu: str, disk_gb: int) -> float:
        """The cheapest on-demand price for one `gpu` with `disk_gb` of storage, from the fake's own catalog."""
        if self.name == "runpod":
            from tests.fakes.runpod_cloud import CATALOG

            prices = [p for g in CATALOG if g.display_name == gpu for p in (g.secure, g.community) if p]
            return min(prices) + disk_gb * 0.10 / HOURS_PER_MONTH["runpod"]
        # The default image is cloudsd's CUDA 12.4 variant, so only hosts whose driver runs it are offered.
        rows = [r for r in self.fake.catalog if r["gpu_name"] == gpu and r["num_gpus"] == 1 and r["rentable"]
                and r["verified"] and r["direct_port_count"] >= 1 and not r.get("rented")
                and r["cuda_max_good"] >= float(DEFAULT_CUDA)]
        return min(r["dph_base"] + r["storage_cost"] * disk_gb / HOURS_PER_MONTH["vastai"] for r in rows)

    def make_stray(self) -> tuple[str, str]:
        """A `cloudsd-` machine made behind this ledger's back (another laptop): (provider id, name)."""
        if self.name == "runpod":
            pod = self.fake.cloud.create_pod(name="cloudsd-orphan", image="cloudsd-testbed:latest",
                                             gpu_type_id="NVIDIA GeForce RTX 3090", gpu_count=1, cloud_type="ALL",
                                             bid_per_gpu=None, env={})
            return str(pod.id), "orphan"
        (instance_id,) = self.fake.seed_instances(1, label_prefix="cloudsd-orphan")
        return str(instance_id), "orphan0"


@pytest.fixture(params=["runpod", "vastai"])
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    fake = request.getfixturevalue("fake_runpod" if request.param == "runpod" else "fake_vast")
    yield Cloud(request.param, fake)


def _row(home: Path, name: str) -> dict[str, Any]:
    db = sqlite3.connect(home / "ledger.sqlite3")
    db.row_factory = sqlite3.Row
    return dict(db.execute("SELECT * FROM machines WHERE name = ? ORDER BY id DESC LIMIT 1", (name,)).fetchone())


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_offers_json_is_the_true_cheapest(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    offers = cloudsd_json("offers", "--provider", cloud.name, "--gpu", "RTX 4090", "--disk", "40")
    assert offers, "the catalog has RTX 4090s"
    assert offers[0]["price_per_hour"] == pytest.approx(cloud.true_cheapest("RTX 4090", 40), abs=1e-6)
    assert [o["price_per_hour"] for o in offers] == sorted(o["price_per_hour"] for o in offers)
    assert all(o["gpu_name"] == "RTX 4090" and o["provider"] == cloud.name for o in offers)
    billed_per_gb = [o["download_usd_per_gb"] is not None for o in offers]
    assert all(billed_per_gb) if cloud.name == "vastai" else not any(billed_per_gb)  # Vast bills bandwidth per GB
    if cloud.name == "vastai":
        monkeypatch.setenv("COLUMNS", "240")  # a wide terminal: every column shown in full
        table = cloudsd("offers", "--provider", cloud.name, "--gpu", "RTX 4090").stdout
        assert "$/GB" in table and f"{offers[0]['download_usd_per_gb']:.4f}" in table


def test_no_offer_fits_names_the_filter(cloud: Cloud) -> None:
    result = cloudsd("offers", "--provider", cloud.name, "--gpu", "RTX 4090", "--max-price", "0.01", "--json")
    assert result.returncode != 0
    (line,) = _error_lines(result.stderr)
    assert "--max-price 0.01" in line


def test_up_tunnel_down(cloud: Cloud, cloudsd_home: Path) -> None:
    cheapest = cloud.true_cheapest("RTX 4090", 40)  # before the rental takes that offer off the market
    record = cloudsd_json("up", "c1", "--provider", cloud.name, "--gpu", "RTX 4090", "--disk", "40", "--detach",
                          "--yes", timeout=300)
    assert record["provider"] == cloud.name and record["status"] == "running"
    assert record["price_per_hour"] == pytest.approx(cheapest, abs=1e-6)
    assert len(cloud.live()) == 1

    port = free_port()
    tunnel = start("tunnel", "c1", "--port", str(port))
    try:
        wait_for_line(tunnel, "c1:")
        assert wait_http(f"http://127.0.0.1:{port}/internal/ping") == b"{}"
    finally:
        interrupt(tunnel)

    result = cloudsd("down", "c1", "--yes")
    assert result.returncode == 0, result.stderr
    assert cloud.live() == []
    assert _row(cloudsd_home, "c1")["status"] == "terminated"


def test_rate_limits_and_502s_are_ridden_out(cloud: Cloud) -> None:
    cloud.fake.faults.rate_limit_burst = 3
    offers = cloudsd_json("offers", "--provider", cloud.name)
    assert offers
    cloud.fake.faults.html_502 = 2
    offers = cloudsd_json("offers", "--provider", cloud.name)
    assert offers


def test_capacity_errors_try_the_next_offers_then_one_line(cloud: Cloud, cloudsd_home: Path) -> None:
    cloud.fake.faults.capacity_error = True
    result = cloudsd("up", "full", "--provider", cloud.name, "--detach", "--yes")
    assert result.returncode == 5, result.stderr
    (line,) = _error_lines(result.stderr)
    assert "no offer could be started after 3 tries" in line
    assert cloud.live() == []
    assert _row(cloudsd_home, "full")["status"] == "terminated"


def test_a_create_refused_for_another_reason_also_tries_the_next_offers(cloudsd_home: Path, fake_vast: Any) -> None:
    fake_vast.faults.create_forbidden = True  # a 403 on create: the offer is not rentable by this account
    result = cloudsd("up", "nope", "--provider", "vastai", "--detach", "--yes")
    assert result.returncode == 5, result.stderr
    (line,) = _error_lines(result.stderr)
    assert "no offer could be started after 3 tries" in line and "not available to this account" in line
    assert "rejected the API key" not in result.stderr
    assert len([r for r in fake_vast.requests if r.method == "PUT" and "/asks/" in r.path]) == 3


def test_never_ready_machines_are_destroyed(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.fake.faults.never_ready = True
    monkeypatch.setenv("CLOUDSD_BOOT_TIMEOUT", "3")
    result = cloudsd("up", "stuck", "--provider", cloud.name, "--detach", "--yes")
    assert result.returncode != 0
    assert len(_error_lines(result.stderr)) == 1
    assert "was not running after 3 s" in result.stderr
    assert cloud.live() == []


def test_slow_boot_is_waited_for(cloud: Cloud) -> None:
    cloud.fake.faults.boot_delay_s = 4
    record = cloudsd_json("up", "slow", "--provider", cloud.name, "--detach", "--yes")
    assert record["status"] == "running"
    assert cloudsd("down", "slow", "--yes").returncode == 0
    assert cloud.live() == []


def test_create_that_times_out_is_found_not_repeated(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.fake.faults.create_timeout_once = True
    record = cloudsd_json("up", "late", "--provider", cloud.name, "--detach", "--yes")
    assert record["status"] == "running"
    assert len(cloud.live()) == 1, "the create was not repeated"
    assert cloudsd("down", "late", "--yes").returncode == 0
    assert cloud.live() == []


def test_ctrl_c_while_booting_destroys(cloud: Cloud, cloudsd_home: Path) -> None:
    cloud.fake.faults.boot_delay_s = 60
    proc = start("up", "cc", "--provider", cloud.name, "--yes")
    wait_for_line(proc, "✓ creating")
    code, _, err = interrupt(proc)
    assert code == 130, err
    assert cloud.live() == []
    assert _row(cloudsd_home, "cc")["status"] == "terminated"


def test_strays_are_listed_and_ended_by_down_all(cloud: Cloud) -> None:
    stray_id, stray_name = cloud.make_stray()
    rows = cloudsd_json("status")
    strays = [r for r in rows if r["stray"]]
    assert [(r["name"], r["provider_id"]) for r in strays] == [(stray_name, stray_id)]
    assert strays[0]["price_per_hour"] > 0
    result = cloudsd("down", "--all", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"{stray_name}: stray destroyed" in result.stderr
    assert cloud.live() == []


def test_missing_key_names_env_and_file(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY" if cloud.name == "runpod" else "VAST_API_KEY")
    result = cloudsd("up", "nokey", "--provider", cloud.name, "--detach", "--yes")
    assert result.returncode == 3
    (line,) = _error_lines(result.stderr)
    if cloud.name == "runpod":
        assert "RUNPOD_API_KEY" in line and "~/.runpod/config.toml" in line
    else:
        assert "VAST_API_KEY" in line and "vast_api_key" in line


def test_wrong_key_is_one_line_without_the_key(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    var = "RUNPOD_API_KEY" if cloud.name == "runpod" else "VAST_API_KEY"
    monkeypatch.setenv(var, "wrong-key-1234567890")
    result = cloudsd("offers", "--provider", cloud.name)
    assert result.returncode == 3
    assert len(_error_lines(result.stderr)) == 1
    assert "wrong-key-1234567890" not in result.stderr + result.stdout


def test_doctor_says_which_key_source(cloud: Cloud) -> None:
    checks = {c["provider"]: c for c in cloudsd_json("doctor")}
    mine = checks[cloud.name]
    assert mine["ok"] is True
    assert mine["credential"].endswith(f"(…{cloud.fake.api_key[-4:]})")
    assert cloud.fake.api_key not in str(checks)
    if cloud.name == "runpod":
        assert "REST v2" in mine["detail"] and "no balance" in mine["detail"]


def test_doctor_refuses_a_malformed_key_naming_its_source(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    var = "RUNPOD_API_KEY" if cloud.name == "runpod" else "VAST_API_KEY"
    bad = "rpa_SECRETÄ\r\nX-Injected: yes"
    monkeypatch.setenv(var, bad)
    result = cloudsd("doctor", "--json")
    mine = {c["provider"]: c for c in json.loads(result.stdout)}[cloud.name]
    assert mine["ok"] is False and f"env {var}" in mine["detail"] and "line break" in mine["detail"]
    assert "SECRET" not in result.stdout + result.stderr and "Injected" not in result.stdout + result.stderr
    plain = cloudsd("doctor")
    assert "SECRET" not in plain.stdout + plain.stderr and "Traceback" not in plain.stderr


def test_up_never_rents_for_a_prebuilt_image_nobody_can_pull(cloud: Cloud, cloudsd_home: Path) -> None:
    """The registry lacks cloudsd's image: `up` says so before anything is created, and rents nothing."""
    cloud.fake.registry.public["cloudsd/a1111"].clear()  # the repository is public, this tag unpublished
    result = cloudsd("up", "nopull", "--provider", cloud.name, "--detach", "--yes", "--image-source", "prebuilt")
    assert result.returncode != 0
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: the prebuilt image ghcr.io/cloudsd/a1111:1.10.1-cu124 cannot be pulled: ghcr.io "
                           "has no cloudsd/a1111:1.10.1-cu124 (not published). Nothing was rented. Publish it")
    assert cloud.live() == []
    # auto would install on a stock image instead, but nobody can pull that one either (the fake has none)
    result = cloudsd("up", "nopull", "--provider", cloud.name, "--detach", "--yes")
    assert result.returncode != 0
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: the prebuilt ghcr.io/cloudsd/a1111:1.10.1-cu124 cannot be pulled: ghcr.io has no "
                           "cloudsd/a1111:1.10.1-cu124 (not published), and the stock image "
                           "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04 to install a1111 into cannot be "
                           "pulled either: ")
    assert cloud.live() == []
    assert not (cloudsd_home / "ledger.sqlite3").exists() or sqlite3.connect(cloudsd_home / "ledger.sqlite3").execute(
        "SELECT count(*) FROM machines WHERE name = 'nopull'").fetchone() == (0,)
