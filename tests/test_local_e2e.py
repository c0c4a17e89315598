"""End to end on the real local Docker engine, driving the real `cloudsd` program as a user would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.cli_helpers import cloudsd, cloudsd_json, free_port, interrupt, start, wait_for_line, wait_http
from tests.fixtures_local import own_machines

pytestmark = pytest.mark.docker


def _containers(docker_client: object, name: str) -> list[object]:
    return own_machines(docker_client, name)


def _ledger_row(home: Path, name: str) -> dict[str, object]:
    db = sqlite3.connect(home / "ledger.sqlite3")
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM machines WHERE name = ? ORDER BY id DESC LIMIT 1", (name,)).fetchone()
    return dict(row)


def test_up_status_tunnel_ssh_down(local_env: dict[str, str], docker_client: object, cloudsd_home: Path) -> None:
    port = free_port()
    record = cloudsd_json("up", "e2e", "--provider", "local", "--detach", "--port", str(port))
    assert record["name"] == "e2e" and record["status"] == "running"
    assert record["url"].startswith("http://127.0.0.1:")
    assert record["host_key"].startswith("ssh-ed25519 ")

    # The container: labelled, sshd published on 127.0.0.1 only, the UI not published at all.
    (container,) = _containers(docker_client, "e2e")
    ports = container.attrs["NetworkSettings"]["Ports"]  # type: ignore[attr-defined]
    assert set(ports) == {"22/tcp"}
    assert {b["HostIp"] for b in ports["22/tcp"]} == {"127.0.0.1"}

    rows = cloudsd_json("status")
    assert [(r["name"], r["status"], r["live"]) for r in rows] == [("e2e", "running", "running")]

    tunnel_port = free_port()
    tunnel = start("tunnel", "e2e", "--port", str(tunnel_port))
    try:
        wait_for_line(tunnel, "e2e:")
        page = wait_http(f"http://127.0.0.1:{tunnel_port}/")
        assert b"Stable Diffusion" in page
        assert wait_http(f"http://127.0.0.1:{tunnel_port}/internal/ping") == b"{}"
    finally:
        code, _, err = interrupt(tunnel)
    assert "Detached" in err and "cloudsd down e2e" in err and "cloudsd tunnel e2e" in err

    result = cloudsd("ssh", "e2e", "--", "cat", "/etc/hostname")
    assert result.returncode == 0, result.stderr
    result = cloudsd("ssh", "e2e", "--", "exit", "3")
    assert result.returncode == 3

    result = cloudsd("down", "e2e", "--yes")
    assert result.returncode == 0, result.stderr
    assert "e2e: destroyed" in result.stderr
    assert _containers(docker_client, "e2e") == []
    row = _ledger_row(cloudsd_home, "e2e")
    assert row["status"] == "terminated" and row["terminated_at"]

    again = cloudsd("down", "e2e", "--yes")
    assert again.returncode == 0 and "already gone" in again.stderr
    assert cloudsd_json("status") == []


def test_host_key_mismatch_is_refused(local_env: dict[str, str], cloudsd_home: Path) -> None:
    cloudsd_json("up", "pin", "--provider", "local", "--detach")
    db = sqlite3.connect(cloudsd_home / "ledger.sqlite3")
    db.execute("UPDATE machines SET host_key = ? WHERE name = 'pin'",
               ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0aGlzIGlzIG5vdCB0aGUgbWFjaGluZSdzIGtleSEhISE=",))
    db.commit()
    result = cloudsd("tunnel", "pin")
    assert result.returncode != 0
    assert "different SSH host key" in result.stderr
    assert "Traceback" not in result.stderr
    refused = cloudsd("down", "pin", "--yes")  # its outputs cannot be saved from a machine it will not trust
    assert refused.returncode != 0 and "did not destroy 'pin'" in refused.stderr
    assert "different SSH host key" in refused.stderr
    assert cloudsd("down", "pin", "--yes", "--force").returncode == 0


def test_failure_after_create_destroys_the_machine(local_env: dict[str, str], docker_client: object,
                                                   cloudsd_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                   no_ui_image: str) -> None:
    # This image's web UI never answers, so its health path never succeeds.
    monkeypatch.setenv("CLOUDSD_UI_TIMEOUT", "4")
    result = cloudsd("up", "broken", "--provider", "local", "--image", no_ui_image, "--detach")
    assert result.returncode != 0
    assert "did not become ready" in result.stderr
    assert "Traceback" not in result.stderr
    assert _containers(docker_client, "broken") == []
    assert _ledger_row(cloudsd_home, "broken")["status"] == "terminated"


def test_keep_on_failure_keeps_and_says_how_to_end(local_env: dict[str, str], docker_client: object,
                                                   monkeypatch: pytest.MonkeyPatch, no_ui_image: str) -> None:
    monkeypatch.setenv("CLOUDSD_UI_TIMEOUT", "3")
    result = cloudsd("up", "kept", "--provider", "local", "--image", no_ui_image, "--detach", "--keep-on-failure")
    assert result.returncode != 0
    assert "cloudsd down kept" in result.stderr
    assert len(_containers(docker_client, "kept")) == 1
    assert cloudsd("down", "kept", "--yes").returncode == 0
    assert _containers(docker_client, "kept") == []


def test_ctrl_c_before_ready_destroys(local_env: dict[str, str], docker_client: object, cloudsd_home: Path,
                                      monkeypatch: pytest.MonkeyPatch, no_ui_image: str) -> None:
    monkeypatch.setenv("CLOUDSD_UI_TIMEOUT", "300")
    proc = start("up", "interrupted", "--provider", "local", "--image", no_ui_image)
    wait_for_line(proc, "✓ ssh")
    code, _, err = interrupt(proc)
    assert code == 130, err
    assert _containers(docker_client, "interrupted") == []
    assert _ledger_row(cloudsd_home, "interrupted")["status"] == "terminated"


def test_busy_port_moves_to_next_free(local_env: dict[str, str]) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        record = cloudsd_json("up", "ports", "--provider", "local", "--detach", "--port", str(port))
        assert record["local_port"] != port
    finally:
        busy.close()
        cloudsd("down", "ports", "--yes")


def test_no_engine_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    result = cloudsd("up", "x", "--provider", "local", "--detach")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Docker engine" in lines[0] and "dockerd" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_image_names_the_build(local_env: dict[str, str]) -> None:
    result = cloudsd("up", "x", "--provider", "local", "--image", "cloudsd-nope:missing", "--detach")
    assert result.returncode != 0
    assert "not on the local Docker engine" in result.stderr and "docker build" in result.stderr
