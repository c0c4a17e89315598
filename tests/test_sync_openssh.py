"""Sync over the system OpenSSH client: the machine's master connection carries the agent's streams (verified
as over paramiko), outlives each command, is replaced when stale, ends with `down`, refuses another host key
with cloudsd's own error; and paramiko carries everything when there is no `ssh` or the switch says so."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsd import keys
from cloudsd.errors import HostKeyMismatch
from cloudsd.ledger import Ledger
from cloudsd.machine import SSHEndpoint
from cloudsd.openssh import (
    ROUND_TRIPS,
    Master,
    ProcessStream,
    Target,
    _alive,
    control_dir,
    end_master,
    handshake_rtt,
)
from cloudsd.ssh import connect
from cloudsd.sync import timeline
from cloudsd.sync.agent import Agent
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import push_models
from cloudsd.sync.outputs import pull_outputs
from cloudsd.ui import profile
from tests.cli_helpers import cloudsd, cloudsd_json

MB = 1 << 20
needs_ssh = pytest.mark.skipif(not Path("/usr/bin/ssh").exists() and not os.environ.get("CI"),
                               reason="no OpenSSH client on this computer")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def master_pid(master: Master) -> int:
    check = subprocess.run([master.ssh, *master.options(), "-O", "check", master.endpoint.host],
                           capture_output=True, text=True, timeout=10)
    found = re.search(r"pid=(\d+)", check.stderr)
    assert found, check.stderr
    return int(found.group(1))


@pytest.fixture
def pinned(local_env: dict[str, str], docker_client: Any) -> Iterator[tuple[Any, Target]]:
    """A machine (the test image, real sshd) with cloudsd's key and its host key pinned by a first connect."""
    from tests.fakes.machines import TEST_NETWORK

    pair = keys.create_key_pair("os")
    container = docker_client.containers.run(
        local_env["CLOUDSD_IMAGE"], detach=True, environment={"PUBLIC_KEY": pair.public_line},
        network=TEST_NETWORK, ports={"22/tcp": ("127.0.0.1", None)}, labels={"cloudsd.machine": "os"})
    target: Target | None = None
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"])
        endpoint = SSHEndpoint("127.0.0.1", port)
        with connect(endpoint, pair.private_path, None, deadline_s=60) as first:
            target = Target(endpoint, pair.private_path, first.host_key.text)
        yield container, target
    finally:
        if target is not None:
            end_master(target)
        container.remove(force=True)


@pytest.mark.docker
@needs_ssh
def test_system_ssh_streams_carry_push_and_pull_verified(pinned: tuple[Any, Target], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    container, target = pinned
    monkeypatch.setenv("CLOUDSD_SYNC_STREAMS", "3")
    models = tmp_path / "sd"
    files = {"Stable-diffusion/big.safetensors": os.urandom(70 * MB),  # in blocks over all three streams
             **{f"Lora/l{i}.safetensors": os.urandom(100_000 + i) for i in range(6)}}
    for rel, data in files.items():
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(data)
    master = Master.for_target(target)
    assert master is not None
    master.ensure()
    assert master.active and not master.reused
    # the master times its round trip from these lines of ssh's log as it connects (handshake_rtt, tested on its
    # own below: on a loaded machine the samples may disagree, and then a sync pings as before) ...
    for asked, answered in ROUND_TRIPS[:-1]:
        assert any(asked in line for _, line in master.log) and any(answered in line for _, line in master.log)
    # cloudsd's key has no public half ssh can read, so its first offer is signed: no query, one round trip less
    assert not any("Offering public key" in line for _, line in master.log)
    assert master.rtt_s is None or 0 < master.rtt_s < 1
    if master.rtt_s is None:
        master.rtt_path.write_text("0.0005")
    # ... and no sync over it pings to choose its stream count
    timeline.start()
    opened: list[object] = []
    real_open = Agent.open

    def spy(self: Agent, job: str, *, bulk: bool = False) -> Any:
        stream = real_open(self, job, bulk=bulk)
        opened.append(stream)
        return stream

    monkeypatch.setattr(Agent, "open", spy)
    summary = push_models(master, profile("a1111"), [ModelRequest(str(models))])
    assert {r.outcome for r in summary.results} == {"sent"} and len(summary.results) == 7
    assert len(opened) >= 4 and all(isinstance(s, ProcessStream) for s in opened)  # serve + 3 streams, all ssh
    listing = container.exec_run(["sh", "-c", "cd /workspace/webui/models && sha256sum Stable-diffusion/* Lora/*"])
    on_machine = dict(reversed(line.split()) for line in listing.output.decode().splitlines())
    assert on_machine == {rel: sha(data) for rel, data in files.items()}

    outputs = {"txt2img-images/a.png": os.urandom(90 * MB), **{f"txt2img-images/s{i}.png": os.urandom(50_000 + i)
                                                                for i in range(20)}}
    for rel, data in outputs.items():
        local = tmp_path / "up" / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    subprocess.run(["docker", "cp", f"{tmp_path / 'up'}/.", f"{container.id}:/workspace/webui/outputs"], check=True)
    opened.clear()
    dest = tmp_path / "pulled"
    pulled = pull_outputs(master, profile("a1111"), dest)
    assert pulled.problems == [] and len(pulled.pulled) == len(outputs)
    assert {rel: sha((dest / rel).read_bytes()) for rel in outputs} == {rel: sha(d) for rel, d in outputs.items()}
    assert len(opened) == 4 and all(isinstance(s, ProcessStream) for s in opened)
    assert pull_outputs(master, profile("a1111"), dest).pulled == []  # once only, as over paramiko
    marks = [name for name, _ in timeline.marks()]
    timeline.stop()
    assert "streams 3" in marks and "ping" not in marks, marks
    master.exit()
    assert not master.rtt_path.exists()


def test_the_round_trip_is_read_from_ssh_debug_log() -> None:
    """OpenSSH 9.2's DEBUG1 lines as a master connected through a 50 ms path (times in seconds, as read): the
    median of the key exchange's, the service request's and the key query's round trips, when they agree; none
    from lines read together (a late reader), and none at all from samples that disagree."""
    lines = [(0.005, "debug1: Connection established."),
             (0.141, "debug1: Remote protocol version 2.0, remote software version OpenSSH_9.2p1"),
             (0.419, "debug1: expecting SSH2_MSG_KEX_ECDH_REPLY"),
             (0.481, "debug1: SSH2_MSG_KEX_ECDH_REPLY received"),
             (0.990, "debug1: SSH2_MSG_NEWKEYS sent"),
             (1.003, "debug1: Will attempt key: /k ED25519 SHA256:x explicit"),
             (1.075, "debug1: SSH2_MSG_SERVICE_ACCEPT received"),
             (1.224, "debug1: Offering public key: /k ED25519 SHA256:x explicit"),
             (1.277, "debug1: Server accepts key: /k ED25519 SHA256:x explicit"),
             (1.506, 'Authenticated to 127.0.0.1 ([127.0.0.1]:40653) using "publickey".')]
    assert handshake_rtt(lines) == pytest.approx(0.062)
    assert handshake_rtt(lines[:7]) == pytest.approx(0.067)  # two samples: their mean
    assert handshake_rtt(lines[:4]) is None  # one sample is not enough
    late = [(at if "ECDH_REPLY received" not in text else 0.419, text) for at, text in lines]
    assert handshake_rtt(late) == pytest.approx(0.0625)  # the pair read in one chunk gave nothing
    skewed = [(at if "Server accepts" not in text else 1.234, text) for at, text in lines]
    assert handshake_rtt(skewed) is None  # 62 ms, 72 ms and 10 ms: no telling which is right
    assert handshake_rtt([(0.1, "debug1: Server accepts key: /k"), (0.2, "debug1: Offering public key: /k")]) is None


def test_the_round_trip_is_read_from_a_signed_first_offer() -> None:
    """The same with cloudsd's own key (no public half ssh can read: the first offer is signed, no query), as
    OpenSSH 9.2 logged it through a 50 ms path: the key exchange (61 ms), the service request (50 ms), the
    `none` probe (59 ms) and the signed offer (60 ms)."""
    lines = [(0.107, "debug1: expecting SSH2_MSG_KEX_ECDH_REPLY"),
             (0.168, "debug1: SSH2_MSG_KEX_ECDH_REPLY received"),
             (0.190, "debug1: Will attempt key: /k/id_ecdsa  explicit"),
             (0.190, "debug1: SSH2_MSG_EXT_INFO received"),
             (0.240, "debug1: SSH2_MSG_SERVICE_ACCEPT received"),
             (0.299, "debug1: Authentications that can continue: publickey"),
             (0.299, "debug1: Next authentication method: publickey"),
             (0.299, "debug1: Trying private key: /k/id_ecdsa"),
             (0.359, 'Authenticated to 127.0.0.1 ([127.0.0.1]:46703) using "publickey".')]
    assert handshake_rtt(lines) == pytest.approx(0.0595)
    assert handshake_rtt([]) is None


@pytest.mark.docker
@needs_ssh
def test_a_big_file_changed_after_it_was_hashed_is_refused_not_committed(
        pinned: tuple[Any, Target], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block is hashed when it is read and sent later from the file itself (sendfile): bytes that changed in
    between make the machine's digest differ, and the file is refused, never put in place."""
    container, target = pinned
    monkeypatch.setenv("CLOUDSD_SYNC_STREAMS", "1")
    big = tmp_path / "sd" / "Stable-diffusion" / "big.safetensors"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(70 * MB))
    send = ProcessStream.send_from_file

    def change_then_send(self: ProcessStream, fd: int, offset: int, size: int) -> None:
        if offset == 0:  # the first block was hashed before it was queued; change it before it goes
            with big.open("r+b") as f:
                f.write(b"changed!")
        send(self, fd, offset, size)

    monkeypatch.setattr(ProcessStream, "send_from_file", change_then_send)
    master = Master.for_target(target)
    assert master is not None
    master.ensure()
    summary = push_models(master, profile("a1111"), [ModelRequest(str(tmp_path / "sd"))])
    assert [r.outcome for r in summary.results] == ["failed"]
    assert "sha256" in (summary.results[0].message or "")
    found = container.exec_run(["sh", "-c", "ls -A /workspace/webui/models/Stable-diffusion"]).output.decode()
    assert found.split() == []  # neither the file nor its partial


@pytest.mark.docker
@needs_ssh
def test_a_host_key_other_than_the_pinned_one_is_refused_by_the_system_ssh(pinned: tuple[Any, Target]) -> None:
    _, target = pinned
    other = keys.create_key_pair("other").public_line.rsplit(" ", 1)[0]  # some other key
    wrong = Target(target.endpoint, target.key_path, other)
    master = Master.for_target(wrong)
    assert master is not None
    with pytest.raises(HostKeyMismatch) as by_ssh:
        master.ensure()
    assert not master.active
    with pytest.raises(HostKeyMismatch) as by_paramiko:
        connect(target.endpoint, target.key_path, other, deadline_s=10)
    assert str(by_ssh.value) == str(by_paramiko.value) and "\n" not in str(by_ssh.value)
    assert by_ssh.value.hint == by_paramiko.value.hint


@pytest.mark.docker
@needs_ssh
def test_sync_commands_share_a_master_that_down_ends_and_paramiko_carries_them_without_ssh(
        local_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "sd"
    (models / "Lora").mkdir(parents=True)
    (models / "Lora" / "one.safetensors").write_bytes(os.urandom(2 * MB))
    cloudsd_json("up", "om", "--provider", "local", "--detach")
    ledger = Ledger()
    record = ledger.get("om")
    ledger.close()
    assert record.ssh_host and record.ssh_port and record.key_path and record.host_key
    master = Master.for_target(Target(SSHEndpoint(record.ssh_host, record.ssh_port, record.ssh_user or "root"),
                                      Path(record.key_path), record.host_key))
    assert master is not None
    # `up` brought the master up as soon as SSH answered: the first sync reuses it
    assert master.active
    pid = master_pid(master)
    warm = tmp_path / "warm"
    (warm / "Lora").mkdir(parents=True)
    (warm / "Lora" / "warm.safetensors").write_bytes(os.urandom(MB))
    assert [r["outcome"] for r in cloudsd_json("sync", "models", "om", str(warm))["results"]] == ["sent"]
    assert master_pid(master) == pid
    master.exit()

    # no `ssh` on PATH, then the switch: paramiko carries the sync, and no master is left behind
    no_ssh = tmp_path / "bin"
    no_ssh.mkdir()
    with monkeypatch.context() as env:
        env.setenv("PATH", str(no_ssh))
        first = cloudsd_json("sync", "models", "om", str(models))
    assert [r["outcome"] for r in first["results"]] == ["sent"] and not master.active
    with monkeypatch.context() as env:
        env.setenv("CLOUDSD_SSH_CLIENT", "paramiko")
        assert {r["outcome"] for r in cloudsd_json("sync", "models", "om", str(models))["results"]} == {"present"}
    assert not master.active

    # with ssh: the first command starts the master, the next one uses it
    assert cloudsd_json("sync", "models", "om", str(models))["agent_runs"] == 1
    assert master.active
    pid = master_pid(master)
    assert cloudsd_json("sync", "models", "om", str(models))["agent_runs"] == 1
    assert master_pid(master) == pid

    # a master killed hard leaves its socket behind: the next command starts a new one
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert master.socket_path.exists()
    (models / "Lora" / "two.safetensors").write_bytes(os.urandom(MB))
    again = cloudsd_json("sync", "models", "om", str(models))
    assert sorted(r["outcome"] for r in again["results"]) == ["present", "sent"]
    assert master.active and master_pid(master) != pid

    # something else at the socket's place is no master either
    os.kill(master_pid(master), signal.SIGKILL)
    time.sleep(0.2)
    master.socket_path.unlink()
    master.socket_path.write_text("not a socket")
    assert {r["outcome"] for r in cloudsd_json("sync", "models", "om", str(models))["results"]} == {"present"}
    pid = master_pid(master)

    # `stop` ends it with the machine's sleep; `start` brings a new one up for the machine's next evening
    assert cloudsd("stop", "om").returncode == 0
    assert not master.socket_path.exists() and not _gone_within(pid, 10)
    assert cloudsd("start", "om", "--detach").returncode == 0
    ledger = Ledger()
    record = ledger.get("om")
    ledger.close()
    master = Master.for_target(Target(SSHEndpoint(record.ssh_host or "", record.ssh_port or 0, record.ssh_user or "root"),
                                      Path(record.key_path or ""), record.host_key or ""))
    assert master is not None and master.active
    pid = master_pid(master)

    assert cloudsd("down", "om", "--yes", "--no-outputs").returncode == 0
    assert not master.socket_path.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()


def _gone_within(pid: int, seconds: float) -> bool:
    """False once process `pid` has ended (within `seconds`), True if it still runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    return Path(f"/proc/{pid}").exists()


def test_control_sockets_live_in_a_private_folder_short_enough_for_a_socket(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    home_ssh = Path(os.environ["CLOUDSD_HOME"]) / "ssh"
    folder = control_dir()
    assert folder is not None and (folder == home_ssh) == (len(str(home_ssh)) + 18 <= 86)
    assert (folder.stat().st_mode & 0o777) == 0o700
    deep = tmp_path / ("d" * 90)
    monkeypatch.setenv("CLOUDSD_HOME", str(deep))
    fallback = control_dir()
    assert fallback is not None and not str(fallback).startswith(str(deep))
    assert len(str(fallback)) + 17 + 18 < 104 and (fallback.stat().st_mode & 0o777) == 0o700
    other = tmp_path / ("e" * 90)
    monkeypatch.setenv("CLOUDSD_HOME", str(other))
    assert control_dir() != fallback  # another CLOUDSD_HOME, another folder


def test_a_file_left_where_a_socket_was_is_no_master(tmp_path: Path) -> None:
    stale = tmp_path / "sock"
    stale.write_text("left over")
    assert not _alive(stale) and not stale.exists()
    import socket

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(stale))  # a socket nobody listens on (its master was killed)
    assert stale.exists() and not _alive(stale) and not stale.exists()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(stale))
        server.listen(1)
        assert _alive(stale)


def test_the_pinned_key_alone_is_trusted_and_nothing_from_the_user_is_read(tmp_path: Path) -> None:
    target = Target(SSHEndpoint("127.0.0.1", 2222), tmp_path / "id", "ssh-ed25519 AAAAC3Nza")
    folder = control_dir()
    assert folder is not None
    master = Master("/usr/bin/ssh", target, folder)
    options = master.options()
    pairs = {options[i + 1] for i, o in enumerate(options) if o == "-o"}
    assert {"StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes", "IdentityAgent=none",
            "ForwardAgent=no", "ForwardX11=no", "GlobalKnownHostsFile=/dev/null",
            f"UserKnownHostsFile={master.known_hosts}", f"HostKeyAlias={master.alias}"} <= pairs
    assert options[:2] == ["-F", "/dev/null"] and options[options.index("-i") + 1] == str(tmp_path / "id")
    another = Master("/usr/bin/ssh", Target(target.endpoint, target.key_path, "ssh-ed25519 BBBB"), folder)
    assert another.socket_path != master.socket_path  # another host key at the same address: another master


class _Link:
    def __init__(self, receive: int, send: int) -> None:
        self.receive_window_bytes, self.send_window_bytes = receive, send


class _Agent:
    """What `stream_count` reads of an agent: the measured round trip and the data link's windows."""

    def __init__(self, rtt_s: float, receive: int, send: int = 2 * MB) -> None:
        self.rtt_s, self.bulk = rtt_s, _Link(receive, send)


def test_stream_counts_follow_round_trip_window_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsd.sync.streams import stream_count

    def count(agent: _Agent, direction: str, total: int) -> int:
        return stream_count(agent, direction, total, 1000)  # type: ignore[arg-type]

    far, near = _Agent(0.05, 2 * MB), _Agent(0.0008, 2 * MB)  # the system ssh: 2 MiB each way
    assert count(far, "pull", 1 << 30) == 8 and count(far, "push", 1 << 30) == 8
    assert count(far, "pull", 128_000_000) == 6  # a stream per 24 MB: each one is an agent's start
    assert count(far, "push", 132_278_777) == 6  # the benchmark's 1,000 files: 3 were window-bound at 50 ms
    assert count(near, "pull", 1 << 30) == 1 and count(near, "push", 1 << 30) == 2
    assert count(_Agent(0.05, 8 * MB), "pull", 1 << 30) == 2  # paramiko's own 8 MiB window going down
    assert count(far, "pull", 10_000_000) <= 2
    monkeypatch.setenv("CLOUDSD_SYNC_STREAMS", "5")
    assert count(near, "pull", 1 << 30) == 5
