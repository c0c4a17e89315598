"""Sync end to end against real machines (containers of the test image with a real sshd and the stand-in UI):
models pushed, verified, listed by the UI; re-sync in one exec; a killed transfer resumes; a full disk stops
cleanly; outputs come down once; `down` refuses to destroy what it could not save."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsd.config import resolve
from cloudsd.core.access import Session, reconnect_record
from cloudsd.core.machines import Providers, QuietReporter
from cloudsd.core.teardown import down
from cloudsd.core.up import UpOptions, up
from cloudsd.errors import SyncError
from cloudsd.ledger import Ledger
from cloudsd.remote.agent.common import partial_path
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import push_models
from cloudsd.sync.progress import RecordingProgress
from tests.cli_helpers import cloudsd, cloudsd_json
from tests.fixtures_local import own_machines

pytestmark = pytest.mark.docker
MB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def on_machine(name: str, command: str) -> str:
    result = cloudsd("ssh", name, "--", command)
    assert result.returncode == 0, result.stderr
    return result.stdout


def txt2img(name: str, prompt: str, count: int = 1) -> None:
    body = json.dumps({"prompt": prompt, "save_images": True, "batch_size": count, "steps": 2})
    on_machine(name, f"curl -sf -X POST -H 'Content-Type: application/json' -d '{body}' "
                     "127.0.0.1:7860/sdapi/v1/txt2img > /dev/null")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sd"
    write(root / "Stable-diffusion" / "one.safetensors", 3 * MB)
    write(root / "Stable-diffusion" / "big.safetensors", 80 * MB)  # goes in blocks, verified by the follower
    write(root / "Lora" / "chars" / "style.safetensors", 2 * MB)
    write(root / "embeddings" / "neg.pt", 20_000)
    return root


def test_push_listed_verified_then_resync_is_one_exec(local_env: dict[str, str], models_dir: Path) -> None:
    cloudsd_json("up", "sm", "--provider", "local", "--detach")
    first = cloudsd_json("sync", "models", "sm", str(models_dir))
    outcome = {Path(r["remote"]).name: (r["outcome"], r["kind"], r["short_hash"]) for r in first["results"]}
    assert outcome == {
        "one.safetensors": ("sent", "checkpoint", sha(models_dir / "Stable-diffusion" / "one.safetensors")[:10]),
        "big.safetensors": ("sent", "checkpoint", sha(models_dir / "Stable-diffusion" / "big.safetensors")[:10]),
        "style.safetensors": ("sent", "lora", sha(models_dir / "Lora" / "chars" / "style.safetensors")[:10]),
        "neg.pt": ("sent", "embedding", sha(models_dir / "embeddings" / "neg.pt")[:10])}
    on_disk = on_machine("sm", "cd /workspace/webui && sha256sum models/Stable-diffusion/* models/Lora/chars/* "
                               "embeddings/*")
    for line in on_disk.splitlines():
        digest, rel = line.split()
        local = models_dir / rel.replace("models/", "", 1)
        assert digest == sha(local), rel
    assert "partial" not in on_machine("sm", "ls -aR /workspace/webui/models /workspace/webui/embeddings")
    # the stand-in A1111 rescanned (refresh-checkpoints / refresh-loras); as A1111 does, it lists checkpoints it
    # has not loaded yet without a hash (it hashes one when it loads it)
    listed = json.loads(on_machine("sm", "curl -sf 127.0.0.1:7860/sdapi/v1/sd-models"))
    assert sorted((m["title"], m["hash"]) for m in listed) == [("big.safetensors", None), ("one.safetensors", None)]
    loras = json.loads(on_machine("sm", "curl -sf 127.0.0.1:7860/sdapi/v1/loras"))
    assert [lora["name"] for lora in loras] == ["style"]

    again = cloudsd_json("sync", "models", str(models_dir))  # NAME left out: the one running machine
    assert {r["outcome"] for r in again["results"]} == {"present"}
    assert again["agent_runs"] == 1 and again["bytes_sent"] == 0 and again["refresh"] == {}
    assert cloudsd("down", "sm", "--yes", "--no-outputs").returncode == 0


@pytest.fixture
def machine(local_env: dict[str, str]) -> Iterator[tuple[Session, Ledger, Providers]]:
    settings = resolve({"provider": "local"})
    ledger = Ledger()
    providers = Providers(settings)
    session = up(UpOptions.from_settings(settings, "core", port=0), ledger, providers, QuietReporter()).session
    yield session, ledger, providers
    session.close()
    down(["core"], ledger, providers, QuietReporter())
    providers.close()
    ledger.close()


class Killer(RecordingProgress):
    """Drops the SSH connection once `after` bytes went out, as a laptop losing Wi-Fi would."""

    def __init__(self, session: Session, after: int) -> None:
        super().__init__()
        self.session, self.after = session, after

    def advance(self, key: str, nbytes: int) -> None:
        super().advance(key, nbytes)
        if self.bytes_moved >= self.after:
            self.session.connection.transport.close()


def test_a_killed_transfer_resumes(machine: tuple[Session, Ledger, Providers], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback's stream count, even when a busy machine makes a channel open take over 5 ms (which would
    # choose 8 streams, each with less of its range written when the connection drops).
    monkeypatch.setenv("CLOUDSD_SYNC_STREAMS", "2")
    session, _, _ = machine
    big = write(tmp_path / "Stable-diffusion" / "huge.safetensors", 120 * MB)
    request = [ModelRequest(str(tmp_path))]
    with pytest.raises(SyncError) as info:
        push_models(session.connection, session.profile, request, progress=Killer(session, 48 * MB))
    assert "dropped" in str(info.value) and "run the same command again" in str(info.value).lower()

    final = "/workspace/webui/models/Stable-diffusion/huge.safetensors"
    with reconnect_record(session.record, deadline_s=30) as connection:
        assert connection.run(f"test -e {final}")[0] != 0  # nothing half-written is in place
        assert connection.run(f"test -s {partial_path(final)}")[0] == 0
        progress = RecordingProgress()
        summary = push_models(connection, session.profile, request, progress=progress)
        (result,) = summary.results
        assert result.outcome == "resumed" and result.sha256 == sha(big)
        assert progress.bytes_moved <= 120 * MB - 32 * MB  # at least 32 MiB were not sent again
        status, out, _ = connection.run(f"sha256sum {final}; ls -a /workspace/webui/models/Stable-diffusion")
        assert out.split()[0] == sha(big) and "partial" not in out


@pytest.mark.parametrize("wait_for", ["exit", "close", "nothing"])
def test_a_missing_agent_is_uploaded_whatever_ends_first(machine: tuple[Session, Ledger, Providers],
                                                         wait_for: str) -> None:
    """On a new machine `serve` exits at once (no agent yet). Whether the first request goes out before that
    exit, after it, or after the channel closed, the agent is uploaded and the request answered; never a
    hang, never a false "connection dropped"."""
    from cloudsd.sync.agent import MISSING, Agent, state_dir_for

    session, _, _ = machine
    connection = reconnect_record(session.record, deadline_s=30)
    try:
        connection.run("rm -rf /workspace/.cloudsd")
        agent = Agent(connection, state_dir_for(session.profile))
        serve = agent.serve()
        serve._start()
        assert serve.channel is not None
        if wait_for == "exit":
            assert serve.channel.exit_status(10) == MISSING
        elif wait_for == "close":
            channel = serve.channel.channel  # type: ignore[attr-defined]  # paramiko's, under the stream
            deadline = time.monotonic() + 10
            while not channel.closed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert channel.closed
        started = time.monotonic()
        assert serve.request("hash", paths=[])["sha256"] == {}
        assert time.monotonic() - started < 15
        assert agent.execs == 3  # the serve that found no agent, the upload, the serve that answered
        serve.close()
    finally:
        connection.close()


def test_one_connection_carries_more_than_paramikos_rekey_limit(machine: tuple[Session, Ledger, Providers]) -> None:
    # paramiko starts a rekey after 2**29 bytes received. If that happens in a channel's last window, the
    # channel's CLOSE arrives before sshd's KEXINIT, and paramiko's transport thread blocks answering it
    # until the kex it alone could finish times out (paramiko#822): the session dies 30 s later. Two
    # channels of exactly 256 MiB end right there. cloudsd never starts a rekey (sshd does).
    session, _, _ = machine
    transport = session.connection.transport
    for size in (256 * MB, 256 * MB, 1):
        started = time.monotonic()
        channel = transport.open_session(timeout=20)
        channel.exec_command(f"head -c {size} /dev/zero")
        received = 0
        while data := channel.recv(8 * MB):
            received += len(data)
        assert received == size and channel.recv_exit_status() == 0
        assert time.monotonic() - started < 20
    assert session.connection.active


def test_a_command_started_without_waiting_reads_what_was_sent_at_once(
        machine: tuple[Session, Ledger, Providers]) -> None:
    # start_command does not wait for sshd's reply to the exec: the bytes sent right behind it must still
    # reach the command's stdin, in order, and its output and exit status come back as with exec_command.
    from cloudsd.ssh import start_command

    session, _, _ = machine
    payload = os.urandom(3 * MB)
    for _ in range(3):
        channel = session.connection.transport.open_session(timeout=20)
        channel.settimeout(20)
        start_command(channel, "python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'")
        channel.sendall(payload)
        channel.shutdown_write()
        out = b""
        while data := channel.recv(65536):
            out += data
        assert out.decode().strip() == hashlib.sha256(payload).hexdigest()
        assert channel.recv_exit_status() == 0
    channel = session.connection.transport.open_session(timeout=20)
    channel.settimeout(20)
    start_command(channel, "exit 97")
    assert channel.recv(10) == b"" and channel.recv_exit_status() == 97
    assert session.connection.active


def small_disk_machine(docker_client: Any, image: str, size: str) -> tuple[Any, Any]:
    """A machine whose Lora folder is a small tmpfs (a full disk without filling the host's)."""
    from cloudsd import keys
    from cloudsd.machine import SSHEndpoint
    from cloudsd.ssh import connect
    from tests.fakes.machines import TEST_NETWORK

    pair = keys.create_key_pair("tiny")
    container = docker_client.containers.run(
        image, detach=True, environment={"PUBLIC_KEY": pair.public_line}, network=TEST_NETWORK,
        ports={"22/tcp": ("127.0.0.1", None)}, labels={"cloudsd.machine": "tiny"},
        tmpfs={"/workspace/webui/models/Lora": f"size={size}"})
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"])
    return container, connect(SSHEndpoint("127.0.0.1", port), pair.private_path, None, deadline_s=60)


def test_a_full_disk_stops_before_sending(local_env: dict[str, str], docker_client: Any, tmp_path: Path) -> None:
    from cloudsd.ui import profile

    container, connection = small_disk_machine(docker_client, local_env["CLOUDSD_IMAGE"], "4m")
    try:
        write(tmp_path / "Lora" / "wide.safetensors", 6 * MB)
        progress = RecordingProgress()
        with pytest.raises(SyncError) as info:
            push_models(connection, profile("a1111"), [ModelRequest(str(tmp_path))], progress=progress)
        message = str(info.value)
        assert "do not fit" in message and "6.3 MB" in message and "4.2 MB free" in message and "Nothing was sent" in message
        assert progress.bytes_moved == 0
        assert container.exec_run(["ls", "-A", "/workspace/webui/models/Lora"]).output == b""
    finally:
        connection.close()
        container.remove(force=True)


class Filler(RecordingProgress):
    """Fills the machine's disk just as a file starts going out (after the space check passed)."""

    def __init__(self, container: Any) -> None:
        super().__init__()
        self.container = container

    def file(self, key: str, name: str, size: int, done: int = 0) -> None:
        self.container.exec_run(["sh", "-c", "head -c 3000000 /dev/zero > /workspace/webui/models/Lora/filler"])


def test_a_disk_that_fills_up_meanwhile_leaves_nothing(local_env: dict[str, str], docker_client: Any,
                                                       tmp_path: Path) -> None:
    from cloudsd.ui import profile

    container, connection = small_disk_machine(docker_client, local_env["CLOUDSD_IMAGE"], "4m")
    try:
        write(tmp_path / "Lora" / "fits.safetensors", 2 * MB)
        with pytest.raises(SyncError) as info:
            push_models(connection, profile("a1111"), [ModelRequest(str(tmp_path))], progress=Filler(container))
        assert "disk filled up" in str(info.value) and "No space left" in str(info.value)
        assert "\n" not in str(info.value)
        listing = container.exec_run(["ls", "-A", "/workspace/webui/models/Lora"]).output.decode().split()
        assert listing == ["filler"]  # no partial, nothing renamed into place
    finally:
        connection.close()
        container.remove(force=True)


def test_outputs_come_down_once_and_never_overwrite(local_env: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cloudsd_json("up", "out", "--provider", "local", "--detach")
    txt2img("out", "a lighthouse", count=2)
    dest = tmp_path / "pulled"
    first = cloudsd_json("sync", "outputs", "out", "--dest", str(dest))
    assert len(first["pulled"]) == 2 and first["problems"] == []
    remote = {line.split()[1].split("outputs/", 1)[1]: line.split()[0] for line in on_machine(
        "out", "cd /workspace/webui && sha256sum $(find outputs -type f)").splitlines()}
    assert {rel: sha(dest / rel) for rel in remote} == remote  # same bytes, same subfolders
    assert cloudsd_json("sync", "outputs", "out", "--dest", str(dest))["pulled"] == []  # once only

    txt2img("out", "a second lighthouse")
    newest = sorted(set(on_machine("out", "cd /workspace/webui/outputs && find . -type f -printf '%P\\n'")
                        .split()) - set(remote))[0]
    mine = dest / newest
    mine.write_bytes(b"my own picture, do not touch")
    third = cloudsd_json("sync", "outputs", "out", "--dest", str(dest))
    renamed = dest / newest.replace(".png", " (1).png")
    assert third["renamed"] == [[newest, str(renamed.relative_to(dest))]]
    assert mine.read_bytes() == b"my own picture, do not touch"
    assert sha(renamed) == on_machine("out", f"sha256sum /workspace/webui/outputs/{newest}").split()[0]

    # `down` pulls first (into ~/cloudsd-outputs/out/, wherever it runs from), then destroys
    result = cloudsd("down", "out", "--yes")
    assert result.returncode == 0, result.stderr
    saved_in = tmp_path / "user-home" / "cloudsd-outputs" / "out"
    saved = sorted(p.relative_to(saved_in).as_posix() for p in saved_in.rglob("*.png"))
    assert saved == sorted([*remote, newest])


def test_down_refuses_when_outputs_cannot_be_saved(local_env: dict[str, str], docker_client: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSD_OUTPUTS_DIR", str(tmp_path / "cloudsd-outputs"))
    (tmp_path / "cloudsd-outputs").write_text("a file where the outputs folder would go")
    cloudsd_json("up", "keep", "--provider", "local", "--detach")
    txt2img("keep", "precious")
    result = cloudsd("down", "keep", "--yes")
    assert result.returncode != 0
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "did not destroy 'keep'" in line and "--no-outputs" in line and "--force" in line
    assert own_machines(docker_client, "keep", running_only=True)  # still there
    forced = cloudsd("down", "keep", "--yes", "--force")
    assert forced.returncode == 0 and "destroying anyway" in forced.stderr
    assert own_machines(docker_client, "keep") == []


def test_down_force_destroys_when_outputs_cannot_be_created_locally(
        local_env: dict[str, str], docker_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSD_OUTPUTS_DIR", str(tmp_path / "cloudsd-outputs"))
    cloudsd_json("up", "frc", "--provider", "local", "--detach")
    txt2img("frc", "unsaveable")
    rel = on_machine("frc", "cd /workspace/webui/outputs && find . -type f -printf '%P\\n'").split()[0]
    dest = tmp_path / "cloudsd-outputs" / "frc"
    dest.mkdir(parents=True)
    (dest / rel.split("/")[0]).write_text("a file where the output's folder must go")  # `x` beside `x/y.png`
    refused = cloudsd("down", "frc", "--yes")
    assert refused.returncode != 0 and "internal error" not in refused.stderr, refused.stderr
    assert "did not destroy 'frc'" in refused.stderr
    assert own_machines(docker_client, "frc", running_only=True)  # still there
    forced = cloudsd("down", "frc", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "internal error" not in forced.stderr
    assert f"not saved: {rel!r}" in forced.stderr  # each output that was not saved is listed
    assert own_machines(docker_client, "frc") == []


def test_no_outputs_skips_the_pull(local_env: dict[str, str], docker_client: Any, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSD_OUTPUTS_DIR", str(tmp_path / "cloudsd-outputs"))
    (tmp_path / "cloudsd-outputs").write_text("in the way")
    cloudsd_json("up", "gone", "--provider", "local", "--detach")
    txt2img("gone", "transient")
    assert cloudsd("down", "gone", "--yes", "--no-outputs").returncode == 0
    assert own_machines(docker_client, "gone") == []


def test_up_with_models_sizes_the_disk_and_syncs(local_env: dict[str, str], tmp_path: Path) -> None:
    write(tmp_path / "Lora" / "mine.safetensors", 1 * MB)
    result = cloudsd("up", "withm", "--provider", "local", "--detach", "--models", str(tmp_path / "Lora"))
    assert result.returncode == 0, result.stderr
    assert "disk: 21 GB" not in result.stderr  # 20 GB headroom + 1 MB is below the default 40 GB
    assert "sent ✓" in result.stdout + result.stderr
    assert on_machine("withm", "sha256sum /workspace/webui/models/Lora/mine.safetensors").split()[0] == sha(
        tmp_path / "Lora" / "mine.safetensors")
    assert cloudsd("down", "withm", "--yes", "--no-outputs").returncode == 0


def test_bad_input_is_one_line(local_env: dict[str, str], tmp_path: Path) -> None:
    cloudsd_json("up", "bad", "--provider", "local", "--detach")
    for args, words in [(["s3://bucket/x.safetensors"], "unknown model reference"),
                        ([str(tmp_path / "missing.safetensors")], "no such file"),
                        (["civitai:abc"], "civitai:<modelVersionId>")]:
        result = cloudsd("sync", "models", "bad", *args)
        lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    # a local file that is not the one its manifest names: sent, refused by its sha256, nothing left there
    write(tmp_path / "wrong.safetensors", 2 * MB)
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"models:\n  - source: wrong.safetensors\n    kind: lora\n    sha256: '{'0' * 64}'\n")
    result = cloudsd("sync", "models", "bad", "--manifest", str(manifest))
    assert result.returncode == 8 and "the manifest says 0000" in result.stderr and "not installed" in result.stderr
    assert on_machine("bad", "ls -A /workspace/webui/models/Lora") == ""
    assert cloudsd("down", "bad", "--yes", "--no-outputs").returncode == 0


def test_sync_through_a_fake_cloud(fake_vast: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "models" / "Lora" / "cloud.safetensors", 3 * MB)
    cloudsd_json("up", "vm", "--provider", "vastai", "--gpu", "RTX 4090", "--detach", "--yes", timeout=300)
    pushed = cloudsd_json("sync", "models", "vm", str(tmp_path / "models"))
    assert [r["outcome"] for r in pushed["results"]] == ["sent"]
    txt2img("vm", "from the cloud")
    result = cloudsd("down", "vm", "--yes")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "user-home" / "cloudsd-outputs" / "vm").rglob("*.png"))) == 1
    assert fake_vast.live_instances() == []
