"""`cloudsd stop` and `cloudsd start` end to end, driving the real program: on the local engine and the fake
Vast.ai, whose machines are real containers, including a resume the host refuses."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import cloudsd, cloudsd_json, free_port, wait_http

pytestmark = pytest.mark.docker


def _events(home: Path, name: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    db = sqlite3.connect(home / "ledger.sqlite3")
    rows = db.execute("SELECT kind, data FROM events WHERE machine = ? ORDER BY id", (name,)).fetchall()
    return [(kind, json.loads(data)) for kind, data in rows]


def _status(name: str) -> dict[str, Any]:
    rows = [r for r in cloudsd_json("status") if r["name"] == name]
    assert rows, f"{name} not in status"
    return dict(rows[0])


def _one_error(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def _marker_survives(name: str) -> None:
    """A file written before the stop is still on the disk after the start."""
    assert cloudsd("ssh", name, "--", "cat", "/workspace/kept.txt", check=True).stdout.strip() == "kept"


def test_local_stop_start_keeps_disk_and_rearms_watchdog(local_env: dict[str, str], cloudsd_home: Path) -> None:
    port = free_port()
    cloudsd("up", "box", "--detach", "--port", str(port), "--max-time", "1h", "--idle-stop", "30m",
            check=True, timeout=300)
    cloudsd("ssh", "box", "--", "sh", "-c", "'mkdir -p /workspace && echo kept > /workspace/kept.txt'", check=True)

    result = cloudsd("stop", "box", check=True)
    assert "box: stopped; its disk is kept" in result.stderr
    assert "cloudsd start box" in result.stderr
    row = _status("box")
    assert row["status"] == "stopped" and row["live"].startswith("stopped")
    assert "cloudsd start box" in row["note"]
    assert "stop again" not in cloudsd("stop", "box", check=True).stderr  # safe to repeat
    refused = cloudsd("down", "box", "--yes")  # its outputs cannot be saved from a stopped machine
    assert refused.returncode != 0 and "cloudsd start box --detach" in refused.stderr

    result = cloudsd("start", "box", "--detach", check=True, timeout=300)
    assert "box is ready again" in result.stderr
    assert _status("box")["status"] == "running"
    _marker_survives("box")
    kinds = [k for k, _ in _events(cloudsd_home, "box")]
    assert kinds.index("stopped") < kinds.index("resumed") < len(kinds) - 1 - kinds[::-1].index("budget")
    budgets = [d for k, d in _events(cloudsd_home, "box") if k == "budget"]
    assert budgets[-1]["budget"]["max_time_s"] == 3600 and budgets[-1]["budget"]["idle_s"] == 1800
    assert budgets[-1]["time_from"] is not None  # the time budget counts from the start
    # The watchdog runs again on the machine (a stop killed it with the container's processes).
    assert cloudsd("ssh", "box", "--", "pgrep", "-f", "watchdog.py", check=True).stdout.strip()

    result = cloudsd("start", "box")
    assert result.returncode != 0 and "already runs" in result.stderr and "cloudsd tunnel box" in result.stderr
    cloudsd("down", "box", "--yes", check=True, timeout=300)


def test_start_attached_reattaches_the_tunnel(local_env: dict[str, str], cloudsd_home: Path) -> None:
    from tests.cli_helpers import interrupt, start, wait_for_line

    port = free_port()
    cloudsd("up", "box", "--detach", "--port", str(port), check=True, timeout=300)
    cloudsd("stop", "box", check=True)
    proc = start("start", "box")
    try:
        wait_for_line(proc, "is ready again", deadline_s=240)
        wait_http(f"http://127.0.0.1:{port}/internal/ping", deadline_s=30)
    finally:
        code, _, err = interrupt(proc)
    assert code == 0 and "Detached" in err
    cloudsd("down", "box", "--yes", check=True, timeout=300)


def test_vast_stop_start_and_a_refused_resume(fake_vast: Any, cloudsd_home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cloudsd("up", "night", "--provider", "vastai", "--gpu", "RTX 3090", "--detach", "--yes", check=True,
            timeout=300)
    cloudsd("ssh", "night", "--", "sh", "-c", "'mkdir -p /workspace && echo kept > /workspace/kept.txt'",
            check=True)
    result = cloudsd("stop", "night", check=True)
    assert "still bills storage $" in result.stderr
    (instance_id,) = fake_vast.live_instances()
    instance = fake_vast._instances[instance_id]
    row = _status("night")
    assert row["rate_per_hour"] == pytest.approx(row["storage_price_per_hour"]) and row["rate_per_hour"] > 0
    assert "cloudsd start night" in row["note"]

    cloudsd("start", "night", "--detach", check=True, timeout=300)
    _marker_survives("night")
    assert [r.body for r in fake_vast.calls("PUT", f"/api/v0/instances/{instance.id}/")][-1] == \
        {"state": "running"}

    # The next evening someone else has the host's GPU: the start is refused in one line, the disk is kept.
    cloudsd("stop", "night", check=True)
    fake_vast.hosts_taken.add(instance.id)
    monkeypatch.setenv("CLOUDSD_RESUME_TIMEOUT", "3s")
    result = cloudsd("start", "night", "--detach", timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 5, result.stderr
    assert len(errors) == 1 and "could not resume 'night'" in errors[0] and "disk is kept" in errors[0]
    assert "cloudsd start night" in errors[0] and "--no-outputs" in errors[0]
    assert fake_vast.live_instances() == [instance.id]  # not destroyed
    assert instance.intended == "stopped"  # the pending start was withdrawn: it will not start unattended
    assert _status("night")["status"] == "stopped"

    fake_vast.hosts_taken.discard(instance.id)
    monkeypatch.delenv("CLOUDSD_RESUME_TIMEOUT")
    fake_vast.faults.resume_refused = True  # Vast may also refuse the `state: running` at once
    result = cloudsd("start", "night", "--detach", timeout=120)
    assert result.returncode == 5 and "could not resume 'night'" in _one_error(result)
    assert fake_vast.live_instances() == [instance.id] and _status("night")["status"] == "stopped"
    fake_vast.faults.resume_refused = False
    cloudsd("start", "night", "--detach", check=True, timeout=300)
    _marker_survives("night")
    cloudsd("down", "night", "--yes", check=True, timeout=300)
    assert not fake_vast.live_instances()


def test_runpod_stop_start_and_a_refused_resume(fake_runpod: Any, cloudsd_home: Path) -> None:
    cloudsd("up", "pod", "--provider", "runpod", "--gpu", "RTX 3090", "--detach", "--yes", check=True, timeout=300)
    cloudsd("ssh", "pod", "--", "sh", "-c", "'mkdir -p /workspace && echo kept > /workspace/kept.txt'", check=True)
    stopped = cloudsd("stop", "pod", check=True).stderr
    assert "still bills storage $" in stopped
    assert "/workspace (models, outputs; the container disk is lost) is kept" in stopped
    assert _status("pod")["status"] == "stopped"
    fake_runpod.faults.resume_refused = True
    result = cloudsd("start", "pod", "--detach", timeout=120)
    assert result.returncode == 5 and "could not resume 'pod'" in _one_error(result)
    assert "cloudsd start pod" in _one_error(result) and _status("pod")["status"] == "stopped"
    fake_runpod.faults.resume_refused = False
    cloudsd("start", "pod", "--detach", check=True, timeout=300)
    _marker_survives("pod")  # /workspace, and the host key pinned at `up` (kept on /workspace)
    cloudsd("down", "pod", "--yes", check=True, timeout=300)
    assert not list(fake_runpod.live_pods())


def test_host_keys_survive_a_lost_container_disk(docker_client: Any, testbed_image: str) -> None:
    """RunPod's stop keeps only /workspace: a resumed machine (a new container disk on the same volume) must
    present the host key cloudsd pinned at `up`, or `cloudsd start` could not reconnect."""
    import uuid

    from tests.fakes.machines import TEST_NETWORK

    volume = docker_client.volumes.create(name=f"cloudsd-test-workspace-{uuid.uuid4().hex[:8]}")
    keys = []
    try:
        for _ in range(2):
            container = docker_client.containers.run(
                testbed_image, detach=True, environment={"PUBLIC_KEY": "ssh-ed25519 AAAA test"},
                labels={"cloudsd.test": "lifecycle"}, volumes={volume.name: {"bind": "/workspace", "mode": "rw"}},
                network=TEST_NETWORK)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    code, out = container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
                    if code == 0:
                        keys.append(out.decode().split()[1])
                        break
                    time.sleep(0.5)
            finally:
                container.remove(force=True)
        assert len(keys) == 2 and keys[0] == keys[1]
    finally:
        volume.remove(force=True)
