"""The UI install on first boot of a stock image, end to end: images/comfyui/install.sh run by cloudsd's own
code (cloudsd.ui_install: the payload, the detached start, the progress read back) in a container of a stand-in
stock image, against a stand-in upstream made here (tests/support/standin_upstream.py: a git repository and a
folder of wheels, mounted read-only; the container has no network at all).

First boot killed mid-install, a resumed boot that finishes it and starts the UI, a second boot that finds
every step done, and a pin change that redoes only the steps it changes.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudsd import ui_install
from cloudsd.errors import ProvisioningError
from cloudsd.ui_install import InstallProgress, parse_progress, status_command
from tests.support.images import IMAGES_DIR, docker_client_or_skip, ensure_stock_image
from tests.support.standin_upstream import HELD_FLAG, HOLD_FLAG, StandinUpstream, make_standin_upstream

FLAVOR = "comfyui"
ROOT = ui_install.install_root(FLAVOR)
STATE = f"{ROOT}/install-state"


class ContainerShell:
    """cloudsd.ui_install's Runner over `docker exec` (what an SSH connection is on a cloud machine)."""

    def __init__(self, container: str) -> None:
        self.container = container

    def run(self, command: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
        done = subprocess.run(["docker", "exec", "-i", self.container, "bash", "-c", command], input=stdin,
                              capture_output=True, timeout=timeout_s)
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")

    def ok(self, command: str) -> str:
        code, out, err = self.run(command)
        assert code == 0, f"{command}: {out}{err}"
        return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> StandinUpstream:
    return make_standin_upstream(tmp_path_factory.mktemp("standin"), FLAVOR)


@pytest.fixture
def machine(upstream: StandinUpstream) -> Iterator[ContainerShell]:
    client = docker_client_or_skip()
    image = ensure_stock_image(client)
    name = f"cloudsd-install-test-{uuid.uuid4().hex[:10]}"
    mount = upstream.repo.parent
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", "-v", f"{mount}:/standin:ro",
                    "--label", "cloudsd.test=install", image, "sleep", "infinity"], check=True, capture_output=True)
    try:
        yield ContainerShell(name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def inputs(upstream: StandinUpstream, commit: str) -> dict[str, str]:
    """The script's inputs pointed at the stand-ins (the real ones are its defaults)."""
    return {"COMFYUI_REPO": "file:///standin/upstream.git", "COMFYUI_COMMIT": commit,
            "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/standin/wheels",
            "CLOUDSD_STANDIN": f"{ROOT}/app/standin_ui.py"}


def progress_lines(shell: ContainerShell) -> list[str]:
    return [" ".join(line.split()[1:]) for line in shell.ok(f"cat {STATE}/progress").splitlines()]


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 120.0,
               log: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}\n{log()}")


def ui_answers(shell: ContainerShell) -> bool:
    return shell.run("curl -sf http://127.0.0.1:8188/system_stats")[0] == 0


def power_cut(shell: ContainerShell) -> None:
    """Every process but the container's init ends at once, as when the machine is stopped. `kill -1` is not
    atomic against fork: a child forked while it runs can survive it (and went on installing, under load), so
    it is repeated until nothing could have escaped."""
    shell.run("for i in $(seq 20); do kill -KILL -1 2>/dev/null; sleep 0.05; done")


def test_install_killed_midway_resumes_then_a_second_boot_finds_it_done(
        machine: ContainerShell, upstream: StandinUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = upstream.commits
    env = inputs(upstream, first)
    seen: list[str] = []

    # First boot: the torch step's check holds (the stand-in torchvision's .pth) and the machine goes down.
    machine.ok(f"touch {HOLD_FLAG}")
    ui_install.start_install(machine, FLAVOR, "12.4", IMAGES_DIR, env)
    wait_until(lambda: machine.run(f"test -e {HELD_FLAG}")[0] == 0, "the install reaches the torch step",
               timeout_s=240, log=lambda: machine.run(f"cat {STATE}/progress {ROOT}/install.log")[1][-2000:])
    held = parse_progress(machine.ok(status_command(FLAVOR)))
    assert (held.step, held.event, held.running, held.index, held.total) == ("torch", "start", True, 2, 4)
    power_cut(machine)
    machine.ok(f"rm -f {HOLD_FLAG}")
    cut = parse_progress(machine.ok(status_command(FLAVOR)))
    assert cut.interrupted and cut.step == "torch"
    assert machine.run(f"test -e {STATE}/venv.done")[0] == 0
    assert machine.run(f"test -e {STATE}/torch.done")[0] != 0
    assert not ui_answers(machine)

    # cloudsd finds it stopped midway, starts it again, and it goes on from the torch step to the UI. The grace
    # before an install found stopped is started again is cut from 15 s, not to 0: a start just made does not
    # hold the install's lock yet, and read at once it looked stopped too, so a second install raced the first
    # (and the later phases, where the test starts each install, are left the real grace).
    with monkeypatch.context() as patched:
        patched.setattr(ui_install, "START_GRACE_S", 5.0)
        done = ui_install.wait_for_install(machine, FLAVOR, "12.4", IMAGES_DIR, deadline_s=300,
                                           on_progress=seen.append, env=env, poll_s=0.5)
    assert done.finished and (done.index, done.step) == (4, "requirements")
    assert any(text.startswith("resuming the install") for text in seen), seen
    assert progress_lines(machine) == ["1/4 venv skip", "2/4 torch start", "2/4 torch done", "3/4 clone start",
                                       "3/4 clone done", "4/4 requirements start", "4/4 requirements done"]
    assert machine.ok(f"git -C {ROOT}/app rev-parse HEAD").strip() == first
    assert machine.ok(f"{ROOT}/venv/bin/python -c 'import torch; print(torch.version.cuda)'").strip() == "12.4"
    wait_until(lambda: ui_answers(machine), "the UI answers on 127.0.0.1:8188")
    # cloudsd's custom node is installed beside the app, and the UI loads it: it writes the activity file.
    assert machine.ok(f"ls {ROOT}/app/cloudsd_custom_nodes").split() == ["cloudsd_ui_activity"]
    wait_until(lambda: machine.run("test -s /run/cloudsd/ui-activity")[0] == 0, "the node records activity")
    venv_made = machine.ok(f"stat -c %Y.%i {ROOT}/venv/bin/python3 {ROOT}/app/.git/HEAD")

    # Second boot: every step is found done; nothing is installed again, and the UI starts.
    power_cut(machine)
    assert not ui_answers(machine)
    ui_install.start_install(machine, FLAVOR, "12.4", IMAGES_DIR, env)
    again = ui_install.wait_for_install(machine, FLAVOR, "12.4", IMAGES_DIR, deadline_s=120,
                                        on_progress=seen.append, env=env, poll_s=0.5)
    assert again.finished
    assert progress_lines(machine) == ["1/4 venv skip", "2/4 torch skip", "3/4 clone skip", "4/4 requirements skip"]
    assert machine.ok(f"stat -c %Y.%i {ROOT}/venv/bin/python3 {ROOT}/app/.git/HEAD") == venv_made
    wait_until(lambda: ui_answers(machine), "the UI answers again")

    # A newer upstream commit: the steps that read it run again, the venv and PyTorch stay.
    power_cut(machine)
    newer = inputs(upstream, second)
    ui_install.start_install(machine, FLAVOR, "12.4", IMAGES_DIR, newer)
    ui_install.wait_for_install(machine, FLAVOR, "12.4", IMAGES_DIR, deadline_s=120, on_progress=seen.append,
                                env=newer, poll_s=0.5)
    assert progress_lines(machine) == ["1/4 venv skip", "2/4 torch skip", "3/4 clone start", "3/4 clone done",
                                       "4/4 requirements start", "4/4 requirements done"]
    assert machine.ok(f"git -C {ROOT}/app rev-parse HEAD").strip() == second


def test_a_failed_step_stops_the_install_and_says_which(machine: ContainerShell, upstream: StandinUpstream) -> None:
    env = inputs(upstream, "0" * 40)  # a commit the upstream does not have
    ui_install.start_install(machine, FLAVOR, "12.4", IMAGES_DIR, env)
    with pytest.raises(ProvisioningError, match="failed at step clone"):
        ui_install.wait_for_install(machine, FLAVOR, "12.4", IMAGES_DIR, deadline_s=300, on_progress=lambda _: None,
                                    env=env, poll_s=0.5)
    assert progress_lines(machine)[-1] == "3/4 clone failed"
    assert not ui_answers(machine)


@pytest.mark.parametrize(("output", "expected"), [
    ("", InstallProgress(0, 0, "", "", "", False)),
    ("---\n---\nrunning\n", InstallProgress(0, 0, "", "", "", True)),
    ("1796 2/4 torch start\n---\nDownloading torch (2.1 GB)\n---\nrunning\n",
     InstallProgress(2, 4, "torch", "start", "Downloading torch (2.1 GB)", True)),
    ("1796 4/4 requirements done\n---\nok\n---\nidle\n", InstallProgress(4, 4, "requirements", "done", "ok", False)),
])
def test_parse_progress(output: str, expected: InstallProgress) -> None:
    assert parse_progress(output) == expected


def test_progress_states() -> None:
    assert InstallProgress(4, 4, "requirements", "skip", "", False).finished
    assert InstallProgress(2, 4, "torch", "start", "", False).interrupted
    assert not InstallProgress(2, 4, "torch", "start", "", True).interrupted
    assert InstallProgress(3, 4, "clone", "failed", "", False).failed
    assert InstallProgress(2, 4, "torch", "start", "Collecting torch", True).describe() == \
        "step 2/4 torch start: Collecting torch"


def test_the_payload_holds_what_the_machine_runs(tmp_path: Path) -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(ui_install.setup_payload("forge", IMAGES_DIR))) as tar:
        names = set(tar.getnames())
    assert {"forge/install.sh", "forge/upstream.env", "forge/constraints.txt", "forge/torch-cu128.txt",
            "forge/extension-requirements.txt", "ui/install-steps.sh", "ui/install-on-boot", "ui/start",
            "boot/entrypoint.sh"} <= names
    assert not any(name.endswith("Dockerfile") or name.startswith(("a1111/", "comfyui/")) for name in names)


@pytest.mark.docker
def test_up_installs_the_ui_on_a_stock_image_and_waits_for_it(
        local_env: dict[str, str], docker_client: object, upstream: StandinUpstream, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`cloudsd up --image-source install` on the local engine: the machine runs a stand-in stock image, the
    install is an `up` phase that `up` waits for, then the UI answers through the tunnel."""
    from tests.cli_helpers import cloudsd, cloudsd_json, free_port, interrupt, start, wait_for_line, wait_http
    from tests.fixtures_local import own_machines
    from tests.support.standin_upstream import build_stock_standin

    tag = f"cloudsd-test-stock-standin:{uuid.uuid4().hex[:10]}"
    build_stock_standin(docker_client, ensure_stock_image(docker_client), upstream, tag, tmp_path)  # type: ignore[arg-type]
    try:
        monkeypatch.delenv("CLOUDSD_IMAGE")  # cloudsd's own image for the UI, which image_source decides about
        for key, value in {"CLOUDSD_UI": "comfyui", "CLOUDSD_STOCK_IMAGE": tag}.items():
            monkeypatch.setenv(key, value)
        port = free_port()
        result = cloudsd("up", "inst", "--provider", "local", "--detach", "--image-source", "install",
                         "--port", str(port))
        assert result.returncode == 0, result.stderr
        assert f"web UI: installs comfyui on first boot of {tag} into /workspace (image_source is install)" \
            in result.stderr
        assert "install (" in result.stderr  # the phase, finished before the web UI phase
        assert result.stderr.index("install (") < result.stderr.index("web UI (")
        stats = cloudsd("ssh", "inst", "--", "curl", "-sf", "http://127.0.0.1:8188/system_stats")
        assert "comfyui_version" in stats.stdout, stats.stderr
        assert [(r["name"], r["live"]) for r in cloudsd_json("status")] == [("inst", "running")]
        shown = cloudsd("ssh", "inst", "--", "cat", f"{STATE}/progress")
        assert shown.stdout.split()[-3:] == ["4/4", "requirements", "done"]

        # The machine stops and starts again: the stock image starts only sshd; `tunnel` finds the install
        # on /workspace done and starts the UI from it.
        (container,) = own_machines(docker_client, "inst")
        container.restart(timeout=2)  # type: ignore[attr-defined]
        assert cloudsd("ssh", "inst", "--", "curl", "-sf", "http://127.0.0.1:8188/system_stats").returncode != 0
        tunnel_port = free_port()
        tunnel = start("tunnel", "inst", "--port", str(tunnel_port))
        try:
            wait_for_line(tunnel, "inst:")
            assert b"comfyui_version" in wait_http(f"http://127.0.0.1:{tunnel_port}/system_stats")
        finally:
            interrupt(tunnel)
        shown = cloudsd("ssh", "inst", "--", "cat", f"{STATE}/progress")
        assert [" ".join(line.split()[1:]) for line in shown.stdout.splitlines()] == [
            "1/4 venv skip", "2/4 torch skip", "3/4 clone skip", "4/4 requirements skip"]

        # `cloudsd stop` and `cloudsd start`: the same, through `start`.
        cloudsd("stop", "inst", check=True)
        result = cloudsd("start", "inst", "--detach", check=True)
        assert "install (" in result.stderr and "inst is ready again" in result.stderr
        stats = cloudsd("ssh", "inst", "--", "curl", "-sf", "http://127.0.0.1:8188/system_stats")
        assert "comfyui_version" in stats.stdout, stats.stderr
    finally:
        cloudsd("down", "inst", "--yes")
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
