"""The stand-in web UI (images/testbed/standin_ui.py), run in-process on 127.0.0.1 with a temp data dir."""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

STANDIN_DIR = Path(__file__).resolve().parents[1] / "images" / "testbed"
STANDIN_PATH = STANDIN_DIR / "standin_ui.py"


def _load_standin() -> ModuleType:
    """The stand-in is a script with sibling modules, not a package: import it the way it runs."""
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    return importlib.import_module("standin_ui")


standin = _load_standin()


class UI:
    def __init__(self, flavor: str, data_dir: Path, activity: Path) -> None:
        self.data_dir = data_dir
        self.activity = activity
        self.server = standin.make_server(flavor, "127.0.0.1", 0, data_dir, str(activity), log=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, _, data = self.request(method, path, body)
        assert code == status, data
        return json.loads(data)


@pytest.fixture
def make_ui(tmp_path: Path) -> Iterator[Any]:
    started: list[UI] = []

    def make(flavor: str = "a1111") -> UI:
        ui = UI(flavor, tmp_path / flavor, tmp_path / "run" / "ui-activity")
        started.append(ui)
        return ui

    yield make
    for ui in started:
        ui.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def check_png(data: bytes) -> tuple[int, int]:
    """Signature, IHDR and an IDAT that inflates to exactly the rows an 8-bit RGB image needs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, dict[bytes, list[bytes]]()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body)
        chunks.setdefault(tag, []).append(body)
        pos += 12 + length
    assert list(chunks)[0] == b"IHDR" and b"IEND" in chunks
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    assert len(raw) == height * (1 + 3 * width)
    return width, height


# -- A1111 --------------------------------------------------------------------------------------------------


def test_ping_index_and_layout(make_ui: Any) -> None:
    ui = make_ui()
    assert ui.json("GET", "/internal/ping") == {}
    status, headers, body = ui.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<title>" in body and b"Stable Diffusion" in body
    for rel in (
        "models/Stable-diffusion",
        "models/Lora",
        "models/VAE",
        "embeddings",
        "models/ControlNet",
        "models/ESRGAN",
        "outputs",
    ):
        assert (ui.data_dir / rel).is_dir(), rel
    assert ui.request("GET", "/no/such/route")[0] == 404


def test_models_listed_at_start_and_after_refresh_only(make_ui: Any, tmp_path: Path) -> None:
    ckpts = tmp_path / "a1111" / "models" / "Stable-diffusion"
    first = write_model(ckpts / "first.safetensors", b"first model" * 1000)
    ui = make_ui()
    models = ui.json("GET", "/sdapi/v1/sd-models")
    assert len(models) == 1
    digest = sha256_of(first)
    assert models[0] == {
        "title": f"first.safetensors [{digest[:10]}]",
        "model_name": "first",
        "hash": digest[:10],
        "sha256": digest,
        "filename": str(first),
        "config": None,
    }

    second = write_model(ckpts / "sub" / "second.ckpt", b"second")
    write_model(ckpts / "notes.txt", b"not a model")
    lora = write_model(ui.data_dir / "models" / "Lora" / "style.safetensors", b"lora")
    assert len(ui.json("GET", "/sdapi/v1/sd-models")) == 1
    assert ui.json("GET", "/sdapi/v1/loras") == []

    assert ui.json("POST", "/sdapi/v1/refresh-checkpoints") is None
    assert ui.json("POST", "/sdapi/v1/refresh-loras") is None
    assert ui.json("POST", "/sdapi/v1/refresh-vae") is None
    models = {m["model_name"]: m for m in ui.json("GET", "/sdapi/v1/sd-models")}
    assert set(models) == {"first", "sub_second"}
    # as A1111 lists a checkpoint it has not loaded (nor found in cache.json): no hash yet; loading hashes it
    assert models["first"]["title"] == f"first.safetensors [{digest[:10]}]"  # loaded at start
    assert models["sub_second"] == {"title": "sub/second.ckpt", "model_name": "sub_second", "hash": None,
                                    "sha256": None, "filename": str(second), "config": None}
    assert ui.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "sub/second.ckpt"}) is None
    models = {m["model_name"]: m for m in ui.json("GET", "/sdapi/v1/sd-models")}
    assert models["sub_second"]["title"] == f"sub/second.ckpt [{sha256_of(second)[:10]}]"
    assert ui.json("GET", "/sdapi/v1/options")["sd_model_checkpoint"] == models["sub_second"]["title"]
    assert ui.json("POST", "/sdapi/v1/refresh-checkpoints") is None  # the digest is kept (cache.json)
    assert {m["model_name"]: m for m in ui.json("GET", "/sdapi/v1/sd-models")} == models
    assert ui.json("GET", "/sdapi/v1/loras") == [
        {"name": "style", "alias": "style", "path": str(lora), "metadata": {}}
    ]


def test_hash_cache_reused_while_the_mtime_holds(make_ui: Any, tmp_path: Path) -> None:
    """cache.json as A1111's modules/hashes.py keeps it: `{"mtime": getmtime, "sha256": …}` per title, good
    while the mtime is exactly that."""
    model = write_model(tmp_path / "a1111" / "models" / "Stable-diffusion" / "m.safetensors", b"weights")
    make_ui().close()  # the first checkpoint is loaded at start, and so hashed
    cache_file = tmp_path / "a1111" / "cache.json"
    cache = json.loads(cache_file.read_text())
    assert cache["hashes"]["checkpoint/m.safetensors"] == {"mtime": os.path.getmtime(model),
                                                            "sha256": sha256_of(model)}

    # An unchanged file is not hashed again: a planted digest comes back as is.
    cache["hashes"]["checkpoint/m.safetensors"]["sha256"] = "ab" * 32
    cache_file.write_text(json.dumps(cache))
    ui = make_ui()
    assert ui.json("GET", "/sdapi/v1/sd-models")[0]["hash"] == "abababab" + "ab"

    # A new mtime invalidates the entry: listed without a hash until it is loaded again.
    os.utime(model, (time.time() + 10, time.time() + 10))
    ui.json("POST", "/sdapi/v1/refresh-checkpoints")
    assert ui.json("GET", "/sdapi/v1/sd-models")[0]["sha256"] is None
    ui.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "m"})
    assert ui.json("GET", "/sdapi/v1/sd-models")[0]["sha256"] == sha256_of(model)


def test_options_switch_checkpoint(make_ui: Any, tmp_path: Path) -> None:
    ckpts = tmp_path / "a1111" / "models" / "Stable-diffusion"
    write_model(ckpts / "a.safetensors", b"a")
    b = write_model(ckpts / "b.safetensors", b"b")
    ui = make_ui()
    assert ui.json("GET", "/sdapi/v1/options")["sd_model_checkpoint"].startswith("a.safetensors [")
    assert ui.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "b"}) is None
    assert (
        ui.json("GET", "/sdapi/v1/options")["sd_model_checkpoint"] == f"b.safetensors [{sha256_of(b)[:10]}]"
    )
    error = ui.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, status=500)
    assert "not found" in error["errors"]


def test_a_job_loads_its_checkpoint_and_so_hashes_it(make_ui: Any, tmp_path: Path) -> None:
    """Checkpoints that came after the start are listed without a hash; a job loads the one it runs on (the
    override's, else the option's, else the first) and only that one gets its hash, in the listing and in the
    picture's infotext. An override is undone after the job."""
    ui = make_ui()  # no checkpoint at start: none loaded
    ckpts = tmp_path / "a1111" / "models" / "Stable-diffusion"
    a, b = write_model(ckpts / "a.safetensors", b"a" * 100), write_model(ckpts / "b.safetensors", b"b" * 100)
    ui.json("POST", "/sdapi/v1/refresh-checkpoints")
    assert [m["title"] for m in ui.json("GET", "/sdapi/v1/sd-models")] == ["a.safetensors", "b.safetensors"]
    result = ui.json("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1,
                                                   "override_settings": {"sd_model_checkpoint": "b"}})
    assert json.loads(result["info"])["sd_model_hash"] == sha256_of(b)[:10]
    assert [m["hash"] for m in ui.json("GET", "/sdapi/v1/sd-models")] == [None, sha256_of(b)[:10]]
    assert ui.json("GET", "/sdapi/v1/options")["sd_model_checkpoint"] is None  # the override was undone
    result = ui.json("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1})
    assert json.loads(result["info"])["sd_model_hash"] == sha256_of(a)[:10]
    assert ui.json("GET", "/sdapi/v1/options")["sd_model_checkpoint"] == f"a.safetensors [{sha256_of(a)[:10]}]"


def test_txt2img_png_info_and_save_only_when_asked(make_ui: Any, tmp_path: Path) -> None:
    model = write_model(tmp_path / "a1111" / "models" / "Stable-diffusion" / "m.safetensors", b"m")
    ui = make_ui()
    request = {"prompt": "a red fox", "seed": 1234, "steps": 4}
    result = ui.json("POST", "/sdapi/v1/txt2img", request)
    assert result["parameters"].items() >= request.items()  # the request with every default filled in
    assert (result["parameters"]["cfg_scale"], result["parameters"]["save_images"]) == (7.0, False)
    info = json.loads(result["info"])
    assert (info["seed"], info["prompt"], info["sd_model_hash"]) == (1234, "a red fox", sha256_of(model)[:10])
    png = base64.b64decode(result["images"][0])
    assert check_png(png) == (64, 64)
    outputs = ui.data_dir / "outputs"
    assert not any(p.is_file() for p in outputs.rglob("*")), "save_images defaults to false"

    again = ui.json("POST", "/sdapi/v1/txt2img", request)
    assert base64.b64decode(again["images"][0]) == png, "pixels follow from prompt and seed"
    other = ui.json("POST", "/sdapi/v1/txt2img", {**request, "seed": 5})
    assert base64.b64decode(other["images"][0]) != png

    ui.json("POST", "/sdapi/v1/txt2img", {**request, "save_images": True})
    ui.json("POST", "/sdapi/v1/txt2img", {**request, "seed": 7, "save_images": True})
    day = outputs / "txt2img-images" / datetime.now().strftime("%Y-%m-%d")
    assert sorted(p.name for p in day.iterdir()) == ["00000-1234.png", "00001-7.png"]
    assert (day / "00000-1234.png").read_bytes() == png


def test_progress_and_memory(make_ui: Any) -> None:
    ui = make_ui()
    progress = ui.json("GET", "/sdapi/v1/progress")
    assert progress["progress"] == 0.0 and "state" in progress
    memory = ui.json("GET", "/sdapi/v1/memory")
    assert memory["ram"]["total"] > 0 and memory["cuda"]["system"]["total"] > 0


def test_keep_alive_two_requests_one_connection(make_ui: Any) -> None:
    ui = make_ui()
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
    try:
        conn.request("GET", "/internal/ping")
        first = conn.getresponse()
        assert first.getheader("Content-Length") == "2" and first.read() == b"{}"
        sock = conn.sock
        assert sock is not None and not first.will_close
        conn.request("POST", "/sdapi/v1/refresh-checkpoints", body=b"")
        second = conn.getresponse()
        assert second.status == 200 and second.read() == b"null"
        conn.request("GET", "/bench/small")
        assert len(conn.getresponse().read()) == 4096
        assert conn.sock is sock, "the server closed the connection between requests"
    finally:
        conn.close()


def test_bench_routes(make_ui: Any) -> None:
    ui = make_ui()
    n = 3 * 65536 + 123
    status, headers, body = ui.request("GET", f"/bench/bytes?n={n}")
    assert status == 200 and headers["content-length"] == str(n) and len(body) == n
    assert ui.request("GET", "/bench/bytes?n=0")[2] == b""
    status, headers, body = ui.request("GET", "/bench/small")
    assert status == 200 and headers["content-length"] == "4096" and len(body) == 4096


def test_activity_file_records_last_request(make_ui: Any) -> None:
    ui = make_ui()
    time.sleep(1.2)  # past the once-a-second limit that the start's own write began
    before = time.time()
    ui.request("GET", "/internal/ping")
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            stamp = float(ui.activity.read_text())
        except (OSError, ValueError):
            stamp = 0.0
        if stamp >= before - 0.01:
            break
        time.sleep(0.05)
    assert before - 0.01 <= stamp <= time.time()


# -- ComfyUI ------------------------------------------------------------------------------------------------


def comfy_graph(ckpt: str, prefix: str = "ComfyUI") -> dict[str, Any]:
    """ComfyUI's default workflow in API format (as "Save (API Format)" writes it)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 4, "cfg": 8, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def wait_history(ui: Any, prompt_id: str, deadline_s: float = 20.0) -> dict[str, Any]:
    import time

    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        history = ui.json("GET", f"/history/{prompt_id}")
        if history:
            return dict(history[prompt_id])
        time.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} never finished")


def test_comfyui_stats_models_and_rescan_on_mtime(make_ui: Any) -> None:
    ui = make_ui("comfyui")
    stats = ui.json("GET", "/system_stats")
    assert "system" in stats and stats["devices"][0]["vram_total"] > 0
    for rel in (
        "models/checkpoints",
        "models/loras",
        "models/vae",
        "models/embeddings",
        "models/controlnet",
        "models/upscale_models",
        "output",
    ):
        assert (ui.data_dir / rel).is_dir(), rel
    assert {"checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models"} <= set(
        ui.json("GET", "/models")
    )
    assert ui.json("GET", "/models/checkpoints") == []
    assert ui.request("GET", "/models/nope")[0] == 404

    write_model(ui.data_dir / "models" / "checkpoints" / "sd15.safetensors", b"x")
    write_model(ui.data_dir / "models" / "checkpoints" / "xl" / "base.safetensors", b"y")
    assert ui.json("GET", "/models/checkpoints") == ["sd15.safetensors", "xl/base.safetensors"]
    info = ui.json("GET", "/object_info")
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "sd15.safetensors",
        "xl/base.safetensors",
    ]
    write_model(ui.data_dir / "models" / "checkpoints" / "xl" / "refiner.safetensors", b"z")
    assert "xl/refiner.safetensors" in ui.json("GET", "/models/checkpoints")


def test_comfyui_prompt_history_and_view(make_ui: Any) -> None:
    ui = make_ui("comfyui")
    write_model(ui.data_dir / "models" / "checkpoints" / "sd15.safetensors", b"x")
    queued = ui.json("POST", "/prompt", {"prompt": comfy_graph("sd15.safetensors"), "client_id": "t"})
    assert set(queued) == {"prompt_id", "number", "node_errors"} and queued["node_errors"] == {}
    assert re.fullmatch(r"[0-9a-f-]{36}", queued["prompt_id"])
    second = ui.json("POST", "/prompt", {"prompt": comfy_graph("sd15.safetensors")})
    assert second["number"] == queued["number"] + 1

    out = ui.data_dir / "output"
    entry = wait_history(ui, queued["prompt_id"])
    wait_history(ui, second["prompt_id"])
    assert sorted(p.name for p in out.iterdir()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    image = entry["outputs"]["9"]["images"][0]
    assert image == {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    assert entry["status"]["completed"] is True and entry["status"]["status_str"] == "success"
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_success"]
    assert ui.json("GET", "/history/unknown") == {}

    status, headers, body = ui.request("GET", "/view?filename=ComfyUI_00001_.png&subfolder=&type=output")
    assert status == 200 and headers["content-type"] == "image/png"
    assert body == (out / "ComfyUI_00001_.png").read_bytes() and check_png(body) == (64, 64)
    assert ui.request("GET", "/view?filename=../../etc/passwd&type=output")[0] == 400
    assert ui.request("GET", "/view?filename=missing.png&type=output")[0] == 404


def test_comfyui_prompt_validation(make_ui: Any) -> None:
    ui = make_ui("comfyui")
    error = ui.json("POST", "/prompt", {"prompt": comfy_graph("missing.safetensors")}, status=400)
    assert error["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert ui.json("POST", "/prompt", {}, status=400)["error"]["type"] == "no_prompt"
    assert not any((ui.data_dir / "output").iterdir())


def test_comfyui_bench_and_index(make_ui: Any) -> None:
    ui = make_ui("comfyui")
    assert b"ComfyUI" in ui.request("GET", "/")[2]
    assert len(ui.request("GET", "/bench/bytes?n=70000")[2]) == 70000
    assert len(ui.request("GET", "/bench/small")[2]) == 4096


# -- as a program ---------------------------------------------------------------------------------------------


def _stamp(activity: Path) -> float:
    """The activity file's time, 0 while it is missing or half-written."""
    try:
        return float(activity.read_text())
    except (OSError, ValueError):
        return 0.0


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN_PATH),
            "--port",
            "0",
            "--flavor",
            "comfyui",
            "--data-dir",
            str(tmp_path / "c"),
            "--activity-file",
            str(tmp_path / "activity"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
        conn.request("GET", "/system_stats")
        assert conn.getresponse().status == 200
        conn.close()
        assert (tmp_path / "c" / "models" / "checkpoints").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_the_built_in_extension_records_activity_through_the_app_hook(tmp_path: Path) -> None:
    """With its app folder, the A1111 stand-in loads cloudsd's real extension (images/ui/extension) and gives
    its on_app_started hook the app, as A1111 does; the extension, not the stand-in, writes the activity
    file, counting every request but cloudsd's own health probes."""
    extension = Path(__file__).resolve().parents[1] / "images" / "ui" / "extension"
    app_dir = tmp_path / "app"
    shutil.copytree(extension, app_dir / "extensions-builtin" / "cloudsd")
    activity = tmp_path / "run" / "ui-activity"
    server = standin.make_server("a1111", "127.0.0.1", 0, tmp_path / "data", str(activity), log=False,
                                 app_dir=app_dir)
    assert server.activity.path is None  # the stand-in's own writer is off
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]

    def get(agent: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/internal/ping", headers={"User-Agent": agent})
            assert conn.getresponse().read() == b"{}"
        finally:
            conn.close()

    def stamp() -> float:
        return _stamp(activity)

    try:
        deadline = time.time() + 3
        while stamp() == 0.0 and time.time() < deadline:  # loading the extension counts as activity
            time.sleep(0.05)
        started = stamp()
        assert started > 0
        time.sleep(1.3)  # past the once-a-second limit
        get("cloudsd-health")
        time.sleep(1.3)
        assert stamp() == started, "a cloudsd health probe counted as use"
        before = time.time()
        get("Mozilla/5.0")
        deadline = time.time() + 3
        while stamp() < before - 0.01 and time.time() < deadline:
            time.sleep(0.05)
        assert before - 0.01 <= stamp() <= time.time()
    finally:
        server.shutdown()
        server.server_close()


def test_the_comfyui_custom_node_records_requests_prompts_and_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its app folder, the ComfyUI stand-in loads cloudsd's real custom node (images/ui/comfyui, found
    through the app's extra_model_paths.yaml as ComfyUI finds it) and gives it a PromptServer with the hooks it
    uses; the node, not the stand-in, writes the activity file: every request but cloudsd's health probes, and
    a running queue with no requests at all."""
    app_dir = tmp_path / "app"
    shutil.copytree(Path(__file__).resolve().parents[1] / "images" / "ui" / "comfyui", app_dir)
    activity = tmp_path / "run" / "ui-activity"
    monkeypatch.setenv("CLOUDSD_STANDIN_STEP_S", "2.5")  # 4 steps: a 10 s render
    server = standin.make_server("comfyui", "127.0.0.1", 0, tmp_path / "data", str(activity), log=False,
                                 app_dir=app_dir)
    assert server.activity.path is None  # the stand-in's own writer is off
    assert len(server.app.prompt_server.app.middlewares) == 1  # the node's, in the frozen app
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    write_model(tmp_path / "data" / "models" / "checkpoints" / "m.safetensors", b"x")

    def call(method: str, path: str, agent: str, body: Any = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers={"User-Agent": agent})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def stamp() -> float:
        return _stamp(activity)

    def wait_past(t: float, limit_s: float = 3.0) -> None:
        deadline = time.time() + limit_s
        while stamp() < t - 0.01 and time.time() < deadline:
            time.sleep(0.05)

    try:
        wait_past(1.0)  # loading the node counts as activity
        started = stamp()
        assert started > 0
        time.sleep(1.3)  # past the once-a-second limit
        assert call("GET", "/system_stats", "cloudsd-health") == 200
        time.sleep(1.3)
        assert stamp() == started, "a cloudsd health probe counted as use"
        before = time.time()
        assert call("GET", "/object_info", "Mozilla/5.0") == 200
        wait_past(before)
        assert before - 0.01 <= stamp() <= time.time()
        # A queued render keeps the UI in use while nobody sends a request.
        assert call("POST", "/prompt", "Mozilla/5.0", {"prompt": comfy_graph("m.safetensors")}) == 200
        queued = time.time()
        time.sleep(7.5)  # more than the node's queue poll (5 s) + its once-a-second write
        assert stamp() > queued + 4, "a running queue did not count as use"
    finally:
        call("POST", "/interrupt", "cloudsd-health")
        server.shutdown()
        server.server_close()
