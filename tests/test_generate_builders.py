"""The pure parts of `generate`: option parsing, prompts files, A1111 bodies, ComfyUI graphs (validated by the
stand-in's copy of ComfyUI's validate_prompt), name matching, PNG text chunks, budget checks."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from cloudsd.errors import ConfigError
from cloudsd.generate import a1111, comfy
from cloudsd.generate.png import text, with_text
from cloudsd.generate.request import (
    GenerateRequest,
    Lora,
    apply_overrides,
    check,
    load_prompts,
    parse_lora,
    parse_size,
    strip_lora_tags,
)

STANDIN_DIR = Path(__file__).resolve().parents[1] / "images" / "testbed"
if str(STANDIN_DIR) not in sys.path:
    sys.path.insert(0, str(STANDIN_DIR))
import standin_comfy_jobs  # noqa: E402  (the stand-in is a script folder, not a package)
from standin_common import png_image  # noqa: E402


def test_lora_and_size_forms() -> None:
    assert parse_lora("Ashe2-8:0.9") == Lora("Ashe2-8", 0.9)
    assert parse_lora("Ashe2-8") == Lora("Ashe2-8", 1.0)
    assert parse_lora("<lora:Ashe2-8:0.7>") == Lora("Ashe2-8", 0.7)
    with pytest.raises(ConfigError, match="weight 'x' is not a number"):
        parse_lora("Ashe:x")
    assert parse_size("512x768") == (512, 768)
    for bad in ("512", "500x512", "32x32", "512*512"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_prompt_loras_merge_with_flags_and_leave_comfy_text_clean() -> None:
    request = GenerateRequest("portrait of ashe, <lora:Ashe2-8:0.9>, <lora:detail:0.3>",
                              loras=(Lora("detail", 0.5), Lora("style", 1.0)))
    assert request.all_loras == (Lora("detail", 0.5), Lora("style", 1.0), Lora("Ashe2-8", 0.9))
    assert strip_lora_tags(request.prompt) == "portrait of ashe"


def test_check_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="--steps 0"):
        check(GenerateRequest("x", steps=0))
    with pytest.raises(ConfigError, match="--hires 8"):
        check(GenerateRequest("x", hires_scale=8))
    with pytest.raises(ConfigError, match="--denoise 1.5"):
        check(GenerateRequest("x", denoise=1.5))
    assert GenerateRequest("x", count=5, batch_size=2).batches() == [2, 2, 1]


def test_prompts_file_lines_and_yaml_overrides(tmp_path: Path) -> None:
    base = GenerateRequest("", steps=20, width=512, height=512)
    lines = tmp_path / "p.txt"
    lines.write_text("# a comment\na lighthouse\n\na castle, <lora:Ashe2-8:0.8>\n")
    assert [r.prompt for r in load_prompts(lines, base)] == ["a lighthouse", "a castle, <lora:Ashe2-8:0.8>"]
    items = tmp_path / "p.yaml"
    items.write_text("- a lighthouse\n- prompt: a castle\n  steps: 30\n  size: 640x448\n  lora: [Ashe2-8:0.9]\n"
                     "  hires: 1.5\n  seed: 9\n")
    plain, castle = load_prompts(items, base)
    assert plain.steps == 20 and (castle.steps, castle.width, castle.height, castle.seed) == (30, 640, 448, 9)
    assert castle.loras == (Lora("Ashe2-8", 0.9),) and castle.hires_scale == 1.5
    with pytest.raises(ConfigError, match="unknown key 'stepz'. Did you mean 'steps'"):
        apply_overrides(base, {"prompt": "x", "stepz": 3}, "f item 1")
    items.write_text("- prompt: x\n  size: huge\n")
    with pytest.raises(ConfigError, match="size 'huge'"):
        load_prompts(items, base)


A1111_CATALOG = a1111.Catalog(
    checkpoints=[{"title": "dreamshaper_8.safetensors [879db523c3]", "model_name": "dreamshaper_8",
                  "hash": "879db523c3", "sha256": "879db523c3" + "0" * 54,
                  "filename": "/w/models/Stable-diffusion/dreamshaper_8.safetensors"}],
    loras=[{"name": "Ashe2-8", "alias": "Ashe2-8"}],
    samplers=[{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"]}, {"name": "Euler a", "aliases": ["k_euler_a"]}],
    schedulers=[{"name": "karras", "label": "Karras"}], upscalers=["Latent", "4x-UltraSharp"],
    current_checkpoint=None)


def test_a1111_payload_has_every_option() -> None:
    request = GenerateRequest("ashe", negative="lowres", checkpoint="879db523c3", loras=(Lora("ashe2-8", 0.9),),
                              steps=12, cfg=5.5, sampler="euler a", scheduler="Karras", width=512, height=768,
                              hires_scale=1.5, hires_steps=5, denoise=0.4, upscaler="4x-ultrasharp")
    resolved = a1111.resolve(request, A1111_CATALOG)
    assert resolved.checkpoint_title == "dreamshaper_8.safetensors [879db523c3]"
    body = a1111.payload(request, resolved, seed=100, batch_size=2)
    assert body == {"prompt": "ashe, <lora:Ashe2-8:0.9>", "negative_prompt": "lowres", "seed": 100, "steps": 12,
                    "cfg_scale": 5.5, "width": 512, "height": 768, "sampler_name": "Euler a", "scheduler": "karras",
                    "batch_size": 2, "n_iter": 1, "save_images": True, "send_images": True, "enable_hr": True,
                    "hr_scale": 1.5, "hr_upscaler": "4x-UltraSharp", "hr_second_pass_steps": 5,
                    "denoising_strength": 0.4}
    img2img = a1111.payload(GenerateRequest("x", init_image=Path("i.png")), resolved, seed=1, batch_size=1,
                            init_image=b"PNG")
    assert img2img["init_images"] == [base64.b64encode(b"PNG").decode()] and img2img["denoising_strength"] == 0.75
    assert "enable_hr" not in img2img


def test_a_checkpoint_the_ui_has_not_hashed_is_found_by_the_hash_cloudsd_synced() -> None:
    """A1111 lists a checkpoint it has not loaded yet with no hash (title without ` [hash]`, hash and sha256
    null); the short hash cloudsd verified when it put the file there stands in, for that file only."""
    fresh = {"title": "fresh.safetensors", "model_name": "fresh", "hash": None, "sha256": None,
             "filename": "/w/models/Stable-diffusion/fresh.safetensors", "config": None}
    other = {**fresh, "title": "other.safetensors", "model_name": "other",
             "filename": "/w/models/Stable-diffusion/other.safetensors"}
    listed = [*A1111_CATALOG.checkpoints, fresh, other]
    synced = {fresh["filename"]: "1234567890", A1111_CATALOG.checkpoints[0]["filename"]: "ffffffffff"}
    catalog = a1111.Catalog(**{**A1111_CATALOG.__dict__, "checkpoints": a1111.with_synced_hashes(listed, synced)})
    assert a1111.resolve(GenerateRequest("x", checkpoint="1234567890"), catalog).checkpoint_title == "fresh.safetensors"
    assert a1111.resolve(GenerateRequest("x", checkpoint="fresh"), catalog).checkpoint_title == "fresh.safetensors"
    # the UI's own hash wins where it has one; a file cloudsd did not sync stays as listed
    assert a1111.resolve(GenerateRequest("x", checkpoint="879db523c3"), catalog).checkpoint_title.startswith("dream")
    with pytest.raises(ConfigError, match="checkpoint 'ffffffffff'"):
        a1111.resolve(GenerateRequest("x", checkpoint="ffffffffff"), catalog)
    assert catalog.checkpoints[2] == other
    assert listed[1]["hash"] is None  # the UI's answer is not changed in place


@pytest.mark.parametrize(("change", "flag", "closest"), [
    ({"checkpoint": "dreamshaper8"}, "--checkpoint", "'dreamshaper_8'"),
    ({"loras": (Lora("Ash"),)}, "--lora", "'Ashe2-8'"),
    ({"sampler": "Eular a"}, "--sampler", "'Euler a'"),
    ({"hires_scale": 2.0, "upscaler": "UltraSharp"}, "--upscaler", "'4x-UltraSharp'"),
])
def test_unknown_names_are_refused_with_the_closest(change: dict[str, object], flag: str, closest: str) -> None:
    with pytest.raises(ConfigError) as caught:
        a1111.resolve(GenerateRequest("x", **change), A1111_CATALOG)  # type: ignore[arg-type]
    assert flag in caught.value.message and closest in str(caught.value.hint)


def comfy_catalog(tmp_path: Path) -> tuple[comfy.Catalog, dict[str, object]]:
    lists = {"checkpoints": ["dreamshaper_8.safetensors"], "loras": ["Ashe2-8.safetensors", "detail.safetensors"],
             "vae": [], "controlnet": [], "upscale_models": ["4x-UltraSharp.pth"], "input": ["init.png"]}
    info = standin_comfy_jobs.object_info(lists)
    return comfy.Catalog.from_object_info(info), standin_comfy_jobs.node_types(lists)


@pytest.mark.parametrize("variant", ["plain", "latent-hires", "model-hires", "img2img"])
def test_comfy_workflow_passes_comfyui_validation(tmp_path: Path, variant: str) -> None:
    catalog, types = comfy_catalog(tmp_path)
    request = GenerateRequest("ashe, <lora:Ashe2-8:0.9>", negative="lowres", checkpoint="dreamshaper_8",
                              loras=(Lora("detail", 0.4),), steps=12, cfg=5.5, sampler="Euler a",
                              scheduler="Karras", width=512, height=768)
    if variant == "latent-hires":
        request = GenerateRequest(**{**request.__dict__, "hires_scale": 2.0, "hires_steps": 6, "denoise": 0.45})
    if variant == "model-hires":
        request = GenerateRequest(**{**request.__dict__, "hires_scale": 1.5, "upscaler": "4x-UltraSharp"})
    if variant == "img2img":
        request = GenerateRequest(**{**request.__dict__, "init_image": Path("init.png"), "denoise": 0.6})
    resolved = comfy.resolve(request, catalog)
    graph = comfy.workflow(request, resolved, seed=7, batch_size=2,
                           init_image="init.png" if variant == "img2img" else None)
    assert standin_comfy_jobs.validate(graph, types) is None
    classes = [n["class_type"] for n in graph.values()]
    assert classes.count("LoraLoader") == 2 and classes[-1] == "SaveImage"
    samplers = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
    assert samplers[0]["sampler_name"] == "euler_ancestral" and samplers[0]["scheduler"] == "karras"
    texts = [n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode"]
    assert texts == ["ashe", "lowres"]
    if variant == "latent-hires":
        assert len(samplers) == 2 and samplers[1]["denoise"] == 0.45 and samplers[1]["steps"] == 6
        assert "LatentUpscaleBy" in classes
    if variant == "model-hires":
        assert {"UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScale"} <= set(classes)
        scale = next(n["inputs"] for n in graph.values() if n["class_type"] == "ImageScale")
        assert (scale["width"], scale["height"]) == (768, 1152)
    if variant == "img2img":
        assert samplers[0]["denoise"] == 0.6 and "EmptyLatentImage" not in classes


def test_comfy_validation_answers_as_comfyui(tmp_path: Path) -> None:
    """The stand-in refuses what ComfyUI refuses, so a broken graph from cloudsd would fail the tests."""
    catalog, types = comfy_catalog(tmp_path)
    graph = comfy.workflow(GenerateRequest("x"), comfy.resolve(GenerateRequest("x"), catalog), seed=1, batch_size=1)
    broken = json.loads(json.dumps(graph))
    broken["1"]["class_type"] = "CheckpointLoader2"
    status, body = standin_comfy_jobs.validate(broken, types)  # type: ignore[misc]
    assert status == 400 and body["error"]["type"] == "missing_node_type"
    broken = json.loads(json.dumps(graph))
    sampler = next(k for k, n in broken.items() if n["class_type"] == "KSampler")
    del broken[sampler]["inputs"]["cfg"]
    broken[sampler]["inputs"]["steps"] = 0
    broken[sampler]["inputs"]["positive"] = ["1", 0]  # a MODEL where CONDITIONING belongs
    _, body = standin_comfy_jobs.validate(broken, types)  # type: ignore[misc]
    kinds = {e["type"] for e in body["node_errors"][sampler]["errors"]}
    assert kinds == {"required_input_missing", "value_smaller_than_min", "return_type_mismatch"}
    assert "cfg" in comfy.prompt_error(body) or "Required input is missing" in comfy.prompt_error(body)


def test_comfy_names_and_outcomes(tmp_path: Path) -> None:
    catalog, _ = comfy_catalog(tmp_path)
    with pytest.raises(ConfigError) as caught:
        comfy.resolve(GenerateRequest("x", sampler="Eular a"), catalog)
    assert "'euler a'" in str(caught.value.hint) or "'euler_ancestral'" in str(caught.value.hint)
    with pytest.raises(ConfigError, match="upscaler"):
        comfy.resolve(GenerateRequest("x", hires_scale=2, upscaler="Nope"), catalog)
    error = comfy.outcome({"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {}], ["execution_error", {"exception_message": "CUDA out of memory",
                                                       "exception_type": "torch.OutOfMemoryError"}]]}})
    assert error.done and error.error_type == "torch.OutOfMemoryError"
    assert comfy.outcome({}).done is False


def test_png_text_roundtrip() -> None:
    png = png_image(8, 8, "k", {"prompt": "{}"})
    assert text(png) == {"prompt": "{}"}
    both = with_text(png, "parameters", "a château\nSteps: 20")
    assert text(both) == {"prompt": "{}", "parameters": "a château\nSteps: 20"}


# -- the runner against the stand-in UIs, in this process (no machine: no index on the machine) ---------------
@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import threading

    import standin_ui

    monkeypatch.setenv("CLOUDSD_STANDIN_STEP_S", "0.02")
    servers = []

    def make(flavor: str):  # type: ignore[no-untyped-def]
        data = tmp_path / flavor
        folder = "models/Stable-diffusion" if flavor == "a1111" else "models/checkpoints"
        (data / folder).mkdir(parents=True)
        (data / folder / "dreamshaper_8.safetensors").write_bytes(b"weights")
        server = standin_ui.make_server(flavor, "127.0.0.1", 0, data, None, log=False)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


class Recorder:
    """What `run` reports, as the CLI's progress bar receives it."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, int, float | None, str]] = []
        self.pictures: list[object] = []
        self.notes: list[str] = []

    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None:
        self.updates.append((done, total, eta_s, detail))

    def picture(self, picture: object) -> None:
        self.pictures.append(picture)

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_progress_comes_from_the_ui_and_pictures_arrive_one_by_one(standin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cloudsd.core.generate import plan_jobs, run
    from cloudsd.ui import profile

    port = standin("a1111")
    requests = [GenerateRequest("a lighthouse", steps=40, count=3, seed=5)]
    jobs = plan_jobs(requests)
    events = Recorder()
    result = run(requests, jobs, profile("a1111"), port, tmp_path / "out", None, events)
    assert [p.seed for p in result.pictures] == [5, 6, 7]  # type: ignore[attr-defined]
    steps = [u for u in events.updates if u[3].startswith("step ")]
    assert steps, "the UI's own step counter reaches the progress bar"
    assert all(u[3].endswith("/40") for u in steps)
    etas = [u[2] for u in steps]  # the UI's ETA; none in the last step, where A1111's goes negative
    assert all(eta is None or eta > 0 for eta in etas) and 2 * sum(eta is not None for eta in etas) >= len(etas)
    assert all(0 <= u[0] <= 3 and u[1] == 3 for u in events.updates)
    # each picture counted as it arrived, not all at the end: `run` reports an arrival as a whole count (a poll that
    # finds the UI not yet sampling, as on a loaded machine, is a fraction with no detail either)
    done_marks = [u[0] for u in events.updates if u[3] == "" and isinstance(u[0], int)]
    assert done_marks == [1, 2, 3]
    assert not events.notes or "seed" not in events.notes[0]  # the seed was given: nothing printed


def test_comfy_runner_queues_ahead_and_reports_progress(standin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cloudsd.core.generate import plan_jobs, run
    from cloudsd.ui import profile

    port = standin("comfyui")
    requests = [GenerateRequest("a lighthouse", steps=10, count=3)]
    jobs = plan_jobs(requests)
    events = Recorder()
    result = run(requests, jobs, profile("comfyui"), port, tmp_path / "out", None, events)
    assert len(result.pictures) == 3 and all(p.path.is_file() for p in result.pictures)  # type: ignore[attr-defined]
    assert events.notes[0].startswith(f"seed {jobs[0].seed} (random)")
    assert [u[0] for u in events.updates if u[3] == "" and isinstance(u[0], int)] == [1, 2, 3]
    steps = [u for u in events.updates if u[3].startswith("step ")]
    assert steps and all(u[3].endswith("/10") for u in steps), "ComfyUI's own progress, from its WebSocket"

    hires = [GenerateRequest("a lighthouse", steps=10, hires_scale=1.5, hires_steps=6, seed=1)]
    events = Recorder()
    run(hires, plan_jobs(hires), profile("comfyui"), port, tmp_path / "out", None, events)
    assert any(u[3].endswith("/6 (pass 2)") for u in events.updates), "the hires pass is the second half"
    fractions = [u[0] for u in events.updates if u[3].startswith("step ")]
    assert fractions == sorted(fractions) and max(fractions) > 0.5


def test_standin_websocket_speaks_comfyui(standin) -> None:  # type: ignore[no-untyped-def]
    import json as json_

    from cloudsd.generate.client import UIClient
    from cloudsd.generate.ws import WebSocket

    port = standin("comfyui")
    ws = WebSocket(port, "/ws?clientId=abc")
    first = json_.loads(ws.recv())
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
    client = UIClient(port)
    info = client.get_json("/object_info")
    catalog = comfy.Catalog.from_object_info(info)
    request = GenerateRequest("x", steps=3, seed=1)
    graph = comfy.workflow(request, comfy.resolve(request, catalog), seed=1, batch_size=1)
    status, reply = client.json("POST", "/prompt", {"prompt": graph, "client_id": "abc"})
    assert status == 200
    kinds = []
    while True:
        message = json_.loads(ws.recv())
        kinds.append(message["type"])
        if message["type"] == "executing" and message["data"]["node"] is None:
            assert message["data"]["prompt_id"] == reply["prompt_id"]
            break
    assert kinds[:3] == ["status", "execution_start", "execution_cached"]
    assert kinds.count("progress") == 3 and "executed" in kinds and "execution_success" in kinds
    ws.close()
    client.close()


def test_a1111_sends_the_next_job_only_once_the_current_one_runs(standin, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A1111's queue is a lock, not a queue: two requests waiting on it run in either order. A request that
    takes a while to reach the lock (a busy thread pool) must not be overtaken by the one sent ahead of it."""
    import threading
    import time

    import standin_a1111_jobs

    from cloudsd.core.generate import plan_jobs, run
    from cloudsd.ui import profile

    original = standin_a1111_jobs.A1111Jobs.process
    arrivals: list[bool] = []  # per POST: was every earlier POST already running (holding the lock) or done?
    in_flight = [0]
    guard = threading.Lock()

    def slow_to_the_lock(self, body: bytes, *, img2img: bool):  # type: ignore[no-untyped-def]
        with guard:
            arrivals.append(in_flight[0] == 0 or self.queue_lock.locked())
            in_flight[0] += 1
        time.sleep(0.3)  # between arrival and the queue lock
        try:
            return original(self, body, img2img=img2img)
        finally:
            with guard:
                in_flight[0] -= 1

    monkeypatch.setattr(standin_a1111_jobs.A1111Jobs, "process", slow_to_the_lock)
    port = standin("a1111")
    requests = [GenerateRequest("a lighthouse", steps=20, count=3, seed=5)]
    result = run(requests, plan_jobs(requests), profile("a1111"), port, tmp_path / "out", None, Recorder())
    assert [p.seed for p in result.pictures] == [5, 6, 7]  # type: ignore[attr-defined]
    assert arrivals == [True, True, True]
