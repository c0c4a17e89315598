"""`cloudsd generate` end to end on the local engine, driving the real program against both stand-in UI families
(the test image's A1111 and ComfyUI stand-ins): every option, defaults from the config file, prompts files,
errors, Ctrl-C, budgets, and pictures that `sync outputs` never fetches twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudsd.generate.png import text as png_text
from tests.cli_helpers import cloudsd, free_port

pytestmark = pytest.mark.docker


def _machine(name: str, ui: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A running machine with a checkpoint and a LoRA; returns the working folder (now the current one)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "dreamshaper_8.safetensors").write_bytes(os.urandom(3000))
    (work / "Ashe2-8.safetensors").write_bytes(os.urandom(2000))
    cloudsd("up", name, "--ui", ui, "--detach", "--port", str(free_port()), check=True, timeout=300)
    cloudsd("sync", "models", name, "dreamshaper_8.safetensors", "--kind", "checkpoint", check=True)
    cloudsd("sync", "models", name, "Ashe2-8.safetensors", "--kind", "lora", check=True)
    return work


def _remote_files(name: str, folder: str) -> list[str]:
    out = cloudsd("ssh", name, "--", "sh", "-c", f"'find {folder} -name \"*.png\" | sort'", check=True).stdout
    return [line for line in out.splitlines() if line]


def _gen_json(*args: str) -> Any:
    result = cloudsd("generate", *args, "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a1111_every_option_defaults_prompts_errors(local_env: dict[str, str], cloudsd_home: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _machine("gen", "a1111", tmp_path, monkeypatch)
    short_hash = cloudsd("ssh", "gen", "--", "sha256sum",
                         "/workspace/webui/models/Stable-diffusion/dreamshaper_8.safetensors",
                         check=True).stdout[:10]
    out = work / "elsewhere"
    result = _gen_json("gen", "portrait of ashe", "--negative", "lowres, bad hands", "--checkpoint", short_hash,
                       "--lora", "Ashe2-8:0.8", "--steps", "12", "--cfg", "5.5", "--sampler", "Euler a",
                       "--scheduler", "Karras", "--size", "512x768", "--seed", "100", "--count", "3",
                       "--batch-size", "2", "--hires", "1.5", "--hires-steps", "5", "--denoise", "0.4",
                       "--upscaler", "Latent (bicubic)", "--out", str(out))
    pictures = result["pictures"]
    assert [p["seed"] for p in pictures] == [100, 101, 102]
    for picture in pictures:
        path = Path(picture["path"])
        assert path.parent.parent.parent == out and path.is_file()
        params = png_text(path.read_bytes())["parameters"]
        assert params == picture["parameters"]
        assert params.startswith("portrait of ashe, <lora:Ashe2-8:0.8>\nNegative prompt: lowres, bad hands\n")
        for part in ("Steps: 12", "Sampler: Euler a", "Schedule type: Karras", "CFG scale: 5.5",
                     f"Seed: {picture['seed']}", "Size: 512x768", f"Model hash: {short_hash}", "Model: dreamshaper_8",
                     "Denoising strength: 0.4", "Hires upscale: 1.5", "Hires steps: 5",
                     "Hires upscaler: Latent (bicubic)", "Lora hashes: \"Ashe2-8"):
            assert part in params, (part, params)
    machine = _remote_files("gen", "/workspace/webui/outputs")
    assert len(machine) == 3  # also on the machine
    pulled = cloudsd("sync", "outputs", "gen", "--dest", str(out), "--json", check=True)
    assert json.loads(pulled.stdout)["pulled"] == []  # never fetched twice

    # img2img from the first picture
    init = pictures[0]["path"]
    result = _gen_json("gen", "ashe in winter", "--init-image", init, "--denoise", "0.6", "--seed", "5")
    (picture,) = result["pictures"]
    assert "/img2img-images/" in picture["path"] and "Denoising strength: 0.6" in picture["parameters"]
    assert Path(picture["path"]).is_relative_to(Path.home() / "cloudsd-outputs" / "gen")

    # defaults from the config file; a prompts file with per-item overrides
    (cloudsd_home / "config.yaml").write_text("generate:\n  steps: 9\n  sampler: Euler\n  negative: blurry\n")
    (work / "prompts.yaml").write_text("- a lighthouse\n- prompt: a castle\n  steps: 14\n  size: 640x448\n"
                                       "  lora: Ashe2-8:0.5\n")
    result = _gen_json("gen", "--prompts", "prompts.yaml", "--seed", "1")
    first, second = (p["parameters"] for p in result["pictures"])
    assert "Steps: 9, Sampler: Euler" in first and "Negative prompt: blurry" in first
    assert "Steps: 14" in second and "Size: 640x448" in second and "<lora:Ashe2-8:0.5>" in second
    (work / "prompts.txt").write_text("one\n# skipped\ntwo\n")
    assert len(_gen_json("gen", "--prompts", "prompts.txt")["pictures"]) == 2

    # unknown names: refused before anything runs, with the closest names the machine has
    before = _remote_files("gen", "/workspace/webui/outputs")
    for args, flag, near in ((["--checkpoint", "dreamshaper8"], "--checkpoint", "'dreamshaper_8'"),
                             (["--lora", "Ashe:0.5"], "--lora", "'Ashe2-8'"),
                             (["--sampler", "Eular a"], "--sampler", "'Euler a'"),
                             (["--hires", "2", "--upscaler", "UltraSharp"], "--upscaler", "'Latent")):
        result = cloudsd("generate", "gen", "x", *args)
        line = _one_error(result)
        assert result.returncode == 2 and flag in line and near in line and "nothing was generated" in line
    # out of memory: one line with what to change
    result = cloudsd("generate", "gen", "x", "--size", "4096x4096", "--hires", "2")
    line = _one_error(result)
    assert result.returncode == 12 and "ran out of memory" in line and "Lower --size" in line
    assert _remote_files("gen", "/workspace/webui/outputs") == before


def _wait_for_pictures(proc: subprocess.Popen[str], count: int, deadline_s: float = 120) -> list[str]:
    assert proc.stderr is not None
    seen: list[str] = []
    lines: list[str] = []
    started = time.monotonic()
    while len(seen) < count and time.monotonic() - started < deadline_s:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        match = re.search(r"(\S+\.png)\s+seed", line)
        if match:
            seen.append(match.group(1))
    assert len(seen) >= count, "".join(lines)
    return seen


@pytest.mark.parametrize("ui", ["a1111", "comfyui"])
def test_ctrl_c_interrupts_the_machine_and_keeps_what_finished(ui: str, local_env: dict[str, str],
                                                              cloudsd_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine("slow", ui, tmp_path, monkeypatch)
    folder = "/workspace/webui/outputs" if ui == "a1111" else "/workspace/comfyui/output"
    cloudsd("ssh", "slow", "--", "sh", "-c", "'mkdir -p /run/cloudsd && echo 0.15 > /run/cloudsd/standin-step-s'",
            check=True)
    proc = subprocess.Popen([sys.executable, "-m", "cloudsd", "generate", "slow", "a slow one", "--count", "6",
                             "--steps", "10", "--seed", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    first = _wait_for_pictures(proc, 1)
    time.sleep(0.5)  # inside the second job
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "kept" in err
    kept = [p for p in (Path.home() / "cloudsd-outputs" / "slow").rglob("*.png")]
    assert Path(first[0]).is_file() and 1 <= len(kept) < 6
    on_machine = _remote_files("slow", folder)
    # a job that finished as the interrupt landed is saved there unkept (`sync outputs` brings it): one at most
    assert len(kept) <= len(on_machine) <= len(kept) + 1, (on_machine, kept)
    time.sleep(3)  # nothing more arrives on the machine: the job there was interrupted, the queue emptied
    assert _remote_files("slow", folder) == on_machine
    probe = ("'import json,urllib.request as u;print(u.urlopen(\"http://127.0.0.1:"
             + ("7860/sdapi/v1/progress" if ui == "a1111" else "8188/queue") + "\").read().decode())'")
    state = json.loads(cloudsd("ssh", "slow", "--", "python3", "-c", probe, check=True).stdout)
    if ui == "a1111":
        assert state["state"]["job_count"] == 0
    else:
        assert state == {"queue_running": [], "queue_pending": []}


def test_comfyui_every_option_and_errors(local_env: dict[str, str], cloudsd_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _machine("cg", "comfyui", tmp_path, monkeypatch)
    (work / "4x-UltraSharp.pth").write_bytes(os.urandom(500))
    cloudsd("sync", "models", "cg", "4x-UltraSharp.pth", "--kind", "upscaler", check=True)
    result = _gen_json("cg", "portrait of ashe, <lora:Ashe2-8:0.9>", "--negative", "lowres",
                       "--checkpoint", "dreamshaper_8", "--steps", "8", "--cfg", "6", "--sampler", "DPM++ 2M",
                       "--scheduler", "Karras", "--size", "512x640", "--seed", "11", "--count", "3",
                       "--batch-size", "2", "--hires", "1.5", "--hires-steps", "4", "--denoise", "0.45",
                       "--upscaler", "4x-UltraSharp")
    pictures = result["pictures"]
    assert len(pictures) == 3 and [p["seed"] for p in pictures] == [11, 11, 13]
    for picture in pictures:
        data = Path(picture["path"]).read_bytes()
        graph = json.loads(png_text(data)["prompt"])  # ComfyUI's own metadata, in the machine's exact file
        classes = {n["class_type"]: n["inputs"] for n in graph.values()}
        assert classes["CheckpointLoaderSimple"]["ckpt_name"] == "dreamshaper_8.safetensors"
        assert classes["LoraLoader"]["lora_name"] == "Ashe2-8.safetensors"
        assert classes["UpscaleModelLoader"]["model_name"] == "4x-UltraSharp.pth"
        assert classes["ImageScale"]["width"] == 768 and classes["ImageScale"]["height"] == 960
        samplers = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
        assert [(s["steps"], s["denoise"]) for s in samplers] == [(8, 1.0), (4, 0.45)]
        assert samplers[0]["sampler_name"] == "dpmpp_2m" and samplers[0]["scheduler"] == "karras"
        assert samplers[0]["cfg"] == 6.0
    machine = _remote_files("cg", "/workspace/comfyui/output")
    assert len(machine) == 3
    pulled = cloudsd("sync", "outputs", "cg", "--json", check=True)
    assert json.loads(pulled.stdout)["pulled"] == []

    result = _gen_json("cg", "winter", "--init-image", pictures[0]["path"], "--denoise", "0.6", "--seed", "2")
    graph = json.loads(png_text(Path(result["pictures"][0]["path"]).read_bytes())["prompt"])
    assert any(n["class_type"] == "LoadImage" for n in graph.values())

    result = cloudsd("generate", "cg", "x", "--sampler", "Eular a")
    assert result.returncode == 2 and "--sampler" in _one_error(result) and "euler" in _one_error(result)
    result = cloudsd("generate", "cg", "x", "--size", "4096x4096", "--hires", "2")
    assert result.returncode == 12 and "ran out of memory" in _one_error(result)


def test_generate_respects_the_budget(local_env: dict[str, str], cloudsd_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine("tight", "a1111", tmp_path, monkeypatch)
    cloudsd("ssh", "tight", "--", "sh", "-c", "'mkdir -p /run/cloudsd && echo 0.05 > /run/cloudsd/standin-step-s'",
            check=True)
    _gen_json("tight", "warm up", "--count", "2", "--steps", "10")  # the machine's seconds per step
    uptime = json.loads(cloudsd("status", "--json", check=True).stdout)[0]["uptime_s"]
    cloudsd("budget", "tight", "--max-time", f"{int(uptime) + 60}s", check=True)
    before = _remote_files("tight", "/workspace/webui/outputs")
    result = cloudsd("generate", "tight", "a long run", "--count", "400", "--steps", "30")
    line = _one_error(result)
    assert result.returncode == 10 and "this run needs about" in line and "nothing was generated" in line
    assert "cloudsd budget tight" in line
    assert _remote_files("tight", "/workspace/webui/outputs") == before
    assert len(_gen_json("tight", "a short one", "--steps", "5")["pictures"]) == 1


def _stat_processes(connection: Any) -> int:
    _, out, _ = connection.run("ps -eo args")
    return sum("for line in sys.stdin" in line for line in out.splitlines())


def test_the_files_lookup_runs_in_a_script_started_before_the_end(local_env: dict[str, str], cloudsd_home: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The stat script starts with the run (its python3 start-up off the path after the last picture), answers
    each query on one line over the same process, and a query still answers after it died."""
    from cloudsd.core.access import reconnect_record
    from cloudsd.core.generate_common import RemoteStat, stat_remote
    from cloudsd.ledger import Ledger

    _machine("look", "a1111", tmp_path, monkeypatch)
    _gen_json("look", "two", "--count", "2", "--steps", "4", "--seed", "77")
    ledger = Ledger()
    connection = reconnect_record(ledger.get("look"), deadline_s=30, ledger=ledger)
    try:
        payload = {"root": "/workspace/webui/outputs", "folders": ["txt2img-images"], "age_s": 3600,
                   "pattern": r"^\d+-\d+"}
        expected = stat_remote(connection, payload)
        assert len(expected) == 2 and all(size > 0 for size, _ in expected.values())
        stat = RemoteStat(connection)
        assert _stat_processes(connection) == 0  # nothing runs before `start`
        stat.start()
        deadline = time.monotonic() + 30
        while _stat_processes(connection) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stat_processes(connection) == 1  # running before any query
        assert stat(payload) == expected
        assert stat({**payload, "folders": [], "rels": [next(iter(expected))]}) == dict([next(iter(expected.items()))])
        assert _stat_processes(connection) == 1  # both answered by the same process
        connection.run("pkill -f 'for line in sys.stdin'")
        assert stat(payload) == expected  # gone: answered by a command of its own
        stat.close()
        assert _stat_processes(connection) == 0
    finally:
        connection.close()
