"""UI profiles: `--ui` picks the image, ports, health check and folders; the shared start script gives each UI
the flags it needs (CPU mode included); API renders are saved; and `cloudsd up --ui comfyui` against the fake
clouds and the local engine asks for the ComfyUI image and reaches ComfyUI's health path through the tunnel.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cloudsd import config
from cloudsd.core.up import UpOptions
from cloudsd.ui import (
    PROFILES,
    default_image_target,
    highest_cuda,
    image_cuda,
    image_for_gpu,
    needs_cuda_12_8,
    profile,
)
from tests.cli_helpers import cloudsd, cloudsd_json, free_port, http_get, interrupt, start, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
COMFY_IMAGE = "ghcr.io/cloudsd/comfyui:0.3.77-cu124"


# -- profiles and options ------------------------------------------------------------------------------------


def test_profiles_ports_health_and_folders() -> None:
    a1111, forge, comfy = PROFILES["a1111"], PROFILES["forge"], PROFILES["comfyui"]
    assert (a1111.internal_port, a1111.health_path, a1111.data_dir) == (7860, "/internal/ping", "/workspace/webui")
    assert (forge.internal_port, forge.health_path, forge.model_dirs) == (7860, "/internal/ping", a1111.model_dirs)
    assert (comfy.internal_port, comfy.health_path, comfy.data_dir) == (8188, "/system_stats", "/workspace/comfyui")
    assert comfy.model_dirs["checkpoint"] == "models/checkpoints" and comfy.output_dir == "output"
    assert a1111.model_dirs["embedding"] == "embeddings" and a1111.refresh_calls and not comfy.refresh_calls
    assert comfy.machine_env() == {"CLOUDSD_UI_FLAVOR": "comfyui", "CLOUDSD_UI_PORT": "8188"}
    assert [profile(n).image() for n in PROFILES] == [
        "ghcr.io/cloudsd/a1111:1.10.1-cu124", "ghcr.io/cloudsd/forge:2.0.1-dfdcbab-cu124", COMFY_IMAGE]


@pytest.mark.parametrize(("gpu", "blackwell"), [
    ("NVIDIA GeForce RTX 5090", True), ("RTX 5070 Ti", True), ("NVIDIA RTX PRO 6000 Blackwell Server Edition", True),
    ("NVIDIA B200", True), ("RTX 4090", False), ("RTX 5000 Ada", False), ("H100 SXM", False), ("CPU", False),
    (None, False),
])
def test_blackwell_gpus_get_the_cuda_12_8_image(gpu: str | None, blackwell: bool) -> None:
    assert needs_cuda_12_8(gpu) is blackwell
    assert image_for_gpu("forge", gpu).endswith("-cu128" if blackwell else "-cu124")


def test_image_cuda_and_own_images() -> None:
    assert image_cuda(COMFY_IMAGE) == "12.4" and image_cuda("x/y:1-cu128") == "12.8"
    assert image_cuda("cloudsd-testbed:latest") is None and image_cuda("127.0.0.1:5000/cu124/x:1") is None
    assert default_image_target("ghcr.io/cloudsd/forge:2.0.1-dfdcbab-cu128") == ("forge", "12.8")
    assert default_image_target("me.io/x/comfyui:0.3.77-cu124", "me.io/x") == ("comfyui", "12.4")
    assert default_image_target("ghcr.io/cloudsd/a1111:latest") is None
    assert highest_cuda(None, "12.4", "12.10") == "12.10" and highest_cuda(None) is None


def _options(environ: dict[str, str], **flags: Any) -> UpOptions:
    settings = config.resolve(flags, file=Path("/nonexistent/config.yaml"), environ=environ)
    return UpOptions.from_settings(settings, "x")


def test_ui_chooses_image_and_local_port() -> None:
    comfy = _options({}, ui="comfyui")
    assert (comfy.image, comfy.default_image, comfy.port) == (COMFY_IMAGE, True, 8188)
    a1111 = _options({"CLOUDSD_REGISTRY": "registry.example/team"})
    assert (a1111.image, a1111.port) == ("registry.example/team/a1111:1.10.1-cu124", 7860)
    foreign = _options({"CLOUDSD_IMAGE": "runpod/a1111:custom"}, ui="forge", port=9000)
    assert (foreign.image, foreign.default_image, foreign.ui, foreign.port) == ("runpod/a1111:custom", False,
                                                                                 "forge", 9000)


# -- the extension that saves API renders, on the stand-in (in-process) -------------------------------------


@pytest.fixture
def standin() -> Any:
    import importlib
    import sys

    here = str(ROOT / "images" / "testbed")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("standin_ui")


def _txt2img(server: Any, body: dict[str, Any]) -> Any:
    import threading

    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        port = server.server_address[1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/txt2img",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1
            return json.load(response)
    finally:
        server.shutdown()
        server.server_close()


def _saved(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "outputs").rglob("*.png"))


@pytest.mark.parametrize(("installed", "env_off", "asked", "saved"), [
    (True, False, False, 1),  # the extension saves what the API would not
    (True, True, False, 0),  # CLOUDSD_SAVE_API_IMAGES=0 turns it off
    (False, False, False, 0),  # A1111 itself saves API renders only when asked
    (False, False, True, 1),
])
def test_api_renders_saved_by_the_extension(standin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            installed: bool, env_off: bool, asked: bool, saved: int) -> None:
    app = tmp_path / "app"
    if installed:
        (app / "extensions-builtin").mkdir(parents=True)
        (app / "extensions-builtin" / "cloudsd").symlink_to(ROOT / "images" / "ui" / "extension")
    if env_off:
        monkeypatch.setenv("CLOUDSD_SAVE_API_IMAGES", "0")
    data = tmp_path / "webui"
    server = standin.make_server("a1111", "127.0.0.1", 0, data, None, log=False, app_dir=app)
    reply = _txt2img(server, {"prompt": "a cat", "seed": 5, **({"save_images": True} if asked else {})})
    assert len(reply["images"]) == 1
    files = _saved(data)
    assert len(files) == saved
    if saved:
        assert files[0].parent == data / "outputs" / "txt2img-images" / datetime.now().strftime("%Y-%m-%d")


def test_without_api_flag_there_is_no_api(standin: Any, tmp_path: Path) -> None:
    import urllib.error

    server = standin.make_server("a1111", "127.0.0.1", 0, tmp_path, None, log=False, api=False)
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        _txt2img(server, {"prompt": "x"})
    assert excinfo.value.code == 404


# -- the shared start script in the testbed image ------------------------------------------------------------


@pytest.fixture(scope="module")
def run_testbed() -> Iterator[Callable[..., Any]]:
    from tests.fakes.machines import ensure_test_network
    from tests.support.images import docker_client_or_skip, ensure_testbed_image

    client = docker_client_or_skip()
    image = ensure_testbed_image(client)
    network = ensure_test_network(client)
    containers: list[Any] = []

    def run(env: dict[str, str], **options: Any) -> Any:
        container = client.containers.run(image, detach=True, name=f"cloudsd-test-ui-{uuid.uuid4().hex[:10]}",
                                          environment=env, labels={"cloudsd.test": "test_ui_profiles"},
                                          network=network, **options)
        containers.append(container)
        return container

    yield run
    for container in containers:
        container.remove(force=True)
    client.close()


def _inside(container: Any, port: int, path: str, body: dict[str, Any] | None = None,
            deadline_s: float = 90) -> Any:
    """GET (or POST `body` to) http://127.0.0.1:<port><path> inside the container, once it answers (a boot
    takes seconds, more on a loaded machine: the deadline only bounds a failure)."""
    data = "None" if body is None else repr(json.dumps(body).encode())
    code = (f"import urllib.request as u; r = u.Request('http://127.0.0.1:{port}{path}', data={data}); "
            "print(u.urlopen(r, timeout=5).read().decode())")
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        result = container.exec_run(["python3", "-c", code])
        if result.exit_code == 0:
            return json.loads(result.output)
        time.sleep(0.3)
    raise AssertionError(f"nothing answered on {port}{path}; ui.log:\n{_log(container)}")


def _log(container: Any) -> str:
    return str(container.exec_run(["cat", "/var/log/cloudsd/ui.log"]).output.decode(errors="replace"))


@pytest.mark.docker
def test_a1111_without_gpu_gets_cpu_flags_api_and_saves_api_renders(run_testbed: Callable[..., Any]) -> None:
    box = run_testbed({})
    flags = _inside(box, 7860, "/sdapi/v1/cmd-flags")
    assert {k: flags[k] for k in ("api", "no_download_sd_model", "data_dir", "listen", "server_name")} == {
        "api": True, "no_download_sd_model": True, "data_dir": "/workspace/webui", "listen": False,
        "server_name": None}
    assert flags["skip_prepare_environment"] and flags["skip_install"]
    assert (flags["use_cpu"], flags["precision"], flags["no_half"], flags["skip_torch_cuda_test"]) == (
        ["all"], "full", True, True)
    assert "no NVIDIA GPU visible: a1111 runs on the CPU (slow)" in _log(box)
    reply = _inside(box, 7860, "/sdapi/v1/txt2img", {"prompt": "saved without asking", "seed": 3})
    assert len(reply["images"]) == 1
    listing = box.exec_run(["sh", "-c", "ls /workspace/webui/outputs/txt2img-images/*/"]).output.decode()
    assert re.fullmatch(r"00000-3\.png\n", listing), listing


@pytest.mark.docker
def test_forge_and_comfyui_get_their_own_cpu_flags(run_testbed: Callable[..., Any]) -> None:
    forge = run_testbed({"CLOUDSD_UI_FLAVOR": "forge"})
    comfy = run_testbed({"CLOUDSD_UI_FLAVOR": "comfyui"})
    flags = _inside(forge, 7860, "/sdapi/v1/cmd-flags")
    assert (flags["always_cpu"], flags["use_cpu"], flags["api"]) == (True, [], True)
    stats = _inside(comfy, 8188, "/system_stats")
    assert stats["system"]["argv"] == [
        "main.py", "--listen", "127.0.0.1", "--port", "8188", "--base-directory", "/workspace/comfyui",
        "--disable-auto-launch", "--database-url", "sqlite:////workspace/comfyui/user/comfyui.db", "--cpu"]
    assert stats["devices"][0]["type"] == "cpu"
    assert "comfyui runs on the CPU" in _log(comfy)


@pytest.mark.docker
def test_start_script_refuses_other_addresses_and_flavors(run_testbed: Callable[..., Any]) -> None:
    listen = run_testbed({"CLOUDSD_UI_ARGS": "--medvram --listen"})
    unknown = run_testbed({"CLOUDSD_UI_FLAVOR": "sdnext"})
    extra = run_testbed({"CLOUDSD_UI_ARGS": "--medvram-sdxl --no-half-vae", "CLOUDSD_UI_PORT": "7870"})
    flags = _inside(extra, 7870, "/sdapi/v1/cmd-flags")
    assert flags["medvram_sdxl"] and flags["no_half_vae"] and flags["port"] == 7870
    for box, want in ((listen, "refusing --listen from CLOUDSD_UI_ARGS"),
                      (unknown, "this image runs a1111 forge comfyui, not sdnext")):
        deadline = time.monotonic() + 20
        while want not in _log(box) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert want in _log(box)
    assert listen.exec_run(["sh", "-c", "grep -c ':1EB4 .* 0A' /proc/net/tcp"]).output.decode().strip() == "0"


@pytest.mark.docker
def test_start_script_refuses_argparse_prefixes_and_commandline_args(run_testbed: Callable[..., Any]) -> None:
    """argparse takes `--lis` for --listen and `--sha` for --share, and A1111/Forge append COMMANDLINE_ARGS
    to their command line: both ways around the refusal are closed (issue 11 item 13)."""
    box = run_testbed({"CLOUDSD_UI_PORT": "7871"})
    allowed = run_testbed({"CLOUDSD_UI_PORT": "7872", "COMMANDLINE_ARGS": "--lowvram --no-half-vae"})  # boots meanwhile
    _inside(box, 7871, "/internal/ping")

    def start(env: dict[str, str]) -> tuple[int, str]:
        result = box.exec_run(["timeout", "5", "/opt/cloudsd/ui/start"], environment=env)
        return result.exit_code, result.output.decode(errors="replace")

    for env, word, flag in (({"CLOUDSD_UI_ARGS": "--lis 0.0.0.0"}, "--lis", "--listen"),
                            ({"CLOUDSD_UI_ARGS": "--medvram --sha"}, "--sha", "--share"),
                            ({"CLOUDSD_UI_ARGS": "--server=0.0.0.0"}, "--server=0.0.0.0", "--server-name"),
                            ({"COMMANDLINE_ARGS": "--api '--lis'"}, "--lis", "--listen"),
                            ({"COMMANDLINE_ARGS": "--share"}, "--share", "--share"),
                            ({"COMMANDLINE_ARGS": "--ngrok-reg eu"}, "--ngrok-reg", "--ngrok-region")):
        code, out = start(env)
        source = next(iter(env))
        assert (code, out.strip()) == (2, f"cloudsd-ui: refusing {word} from {source} (it would be {flag}): "
                                          "the UI listens on 127.0.0.1 only (reach it over SSH)"), env
    # Flags that are no prefix of a public one still reach the UI, from COMMANDLINE_ARGS too, as upstream's
    # launch.py appends them (the stand-in does the same).
    flags = _inside(allowed, 7872, "/sdapi/v1/cmd-flags")
    assert flags["lowvram"] and flags["no_half_vae"]


@pytest.mark.docker
def test_an_image_started_without_cloudsd_runs_its_own_flavor(run_testbed: Callable[..., Any], tmp_path: Path) -> None:
    """A ComfyUI image started with none of cloudsd's environment is ComfyUI on 8188, not A1111 on 7860;
    its HEALTHCHECK script answers once the UI does, and a login shell finds the venv first on PATH."""
    flavor = tmp_path / "flavor"
    flavor.write_text("comfyui\n")
    box = run_testbed({}, volumes={str(flavor): {"bind": "/opt/cloudsd/ui/flavor", "mode": "ro"}})
    stats = _inside(box, 8188, "/system_stats")
    assert "system" in stats
    assert box.exec_run(["/opt/cloudsd/ui/healthcheck"]).exit_code == 0
    assert box.exec_run(["/opt/cloudsd/ui/healthcheck"], environment={"CLOUDSD_UI_PORT": "7860"}).exit_code != 0
    box.exec_run(["mkdir", "-p", "/opt/cloudsd/venv/bin"])
    path = box.exec_run(["bash", "-lc", "echo $PATH"]).output.decode().strip()
    assert path.startswith("/opt/cloudsd/venv/bin:"), path


# -- `cloudsd up --ui comfyui`: the fake clouds and the local engine -----------------------------------------


def _tunnel_answers_comfyui(name: str) -> dict[str, Any]:
    """Reattach the tunnel with `cloudsd tunnel` and read /system_stats through it."""
    port = free_port()
    proc = start("tunnel", name, "--port", str(port))
    try:
        wait_for_line(proc, f"{name}:", deadline_s=120)
        status, body = http_get(f"http://127.0.0.1:{port}/system_stats")
        assert status == 200
        return dict(json.loads(body))
    finally:
        code, _, err = interrupt(proc)
        assert code == 0, err


def _assert_comfyui(stats: dict[str, Any]) -> None:
    argv = stats["system"]["argv"]
    assert argv[:5] == ["main.py", "--listen", "127.0.0.1", "--port", "8188"], argv
    assert "--base-directory" in argv and "devices" in stats


@pytest.mark.docker
def test_up_comfyui_on_fake_runpod(fake_runpod: Any) -> None:
    record = cloudsd_json("up", "comfy-rp", "--provider", "runpod", "--ui", "comfyui", "--detach", "--yes")
    try:
        assert (record["image"], record["ui"]) == (COMFY_IMAGE, "comfyui")
        (pod,) = fake_runpod.pods.values()
        assert pod.image == COMFY_IMAGE
        assert {k: pod.env[k] for k in ("CLOUDSD_UI_FLAVOR", "CLOUDSD_UI_PORT")} == {
            "CLOUDSD_UI_FLAVOR": "comfyui", "CLOUDSD_UI_PORT": "8188"}
        _assert_comfyui(_tunnel_answers_comfyui("comfy-rp"))
    finally:
        assert cloudsd("down", "comfy-rp", "--yes").returncode == 0
    assert fake_runpod.live_pods() == []


@pytest.mark.docker
def test_up_comfyui_on_fake_vast(fake_vast: Any) -> None:
    record = cloudsd_json("up", "comfy-vast", "--provider", "vastai", "--ui", "comfyui", "--detach", "--yes")
    try:
        assert (record["image"], record["ui"]) == (COMFY_IMAGE, "comfyui")
        (create,) = [c.body for c in fake_vast.calls("PUT", "/api/v0/asks/") if "image" in (c.body or {})]
        assert create["image"] == COMFY_IMAGE
        assert create["env"]["CLOUDSD_UI_FLAVOR"] == "comfyui" and create["env"]["CLOUDSD_UI_PORT"] == "8188"
        searches = [c.body for c in fake_vast.calls("POST", "/api/v0/bundles/")]
        assert searches, "no offer search"
        _assert_comfyui(_tunnel_answers_comfyui("comfy-vast"))
    finally:
        assert cloudsd("down", "comfy-vast", "--yes").returncode == 0
    assert fake_vast.live_instances() == []


@pytest.mark.docker
def test_up_comfyui_and_a1111_on_the_local_engine(local_env: dict[str, str]) -> None:
    """A foreign (here: the test) image run with `--ui`: the flavor's port, health path and CPU mode."""
    result = cloudsd("up", "comfy-local", "--provider", "local", "--ui", "comfyui", "--detach", "--json")
    assert result.returncode == 0, result.stderr
    try:
        assert json.loads(result.stdout)["ui"] == "comfyui"
        _assert_comfyui(_tunnel_answers_comfyui("comfy-local"))
    finally:
        assert cloudsd("down", "comfy-local", "--yes").returncode == 0
    a1111 = cloudsd("up", "a1111-local", "--provider", "local", "--detach", "--port", str(free_port()))
    try:
        assert a1111.returncode == 0, a1111.stderr
        assert "no GPU: AUTOMATIC1111 runs in CPU mode (slow)" in a1111.stderr
    finally:
        assert cloudsd("down", "a1111-local", "--yes").returncode == 0


@pytest.mark.docker
def test_the_hugging_face_cache_is_on_the_volume(run_testbed: Callable[..., Any]) -> None:
    """The UI's Hugging Face cache is under /workspace, so the next machine on that volume reuses it; an
    HF_HOME the user set wins."""
    box = run_testbed({"CLOUDSD_UI_PORT": "7873"})
    _inside(box, 7873, "/internal/ping")
    environ = box.exec_run(["sh", "-c", "read pid start < /run/cloudsd/ui.pid && tr '\\0' '\\n' < /proc/$pid/environ"])
    assert "HF_HOME=/workspace/.cache/huggingface" in environ.output.decode().splitlines()
    assert box.exec_run(["test", "-d", "/workspace/.cache/huggingface"]).exit_code == 0
    own = run_testbed({"CLOUDSD_UI_PORT": "7874", "HF_HOME": "/workspace/hf"})
    _inside(own, 7874, "/internal/ping")
    environ = own.exec_run(["sh", "-c", "read pid start < /run/cloudsd/ui.pid && tr '\\0' '\\n' < /proc/$pid/environ"])
    assert "HF_HOME=/workspace/hf" in environ.output.decode().splitlines()
