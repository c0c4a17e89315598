"""The machine fetching models itself, end to end: a stand-in for Civitai, Hugging Face and the CDN runs as
its own container on the test network, and `cloudsd sync models` asks the machine to fetch from it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import cloudsd, cloudsd_json
from tests.fakes.model_sources import content
from tests.fakes.sources_container import request_log, start_sources_container

pytestmark = pytest.mark.docker
TOKEN = "civitai-token-for-the-test-0123456789"
FILES = [
    {"name": "gated_lora.safetensors", "seed": "gated", "size": 2_000_000, "version_id": "555",
     "model_type": "LORA", "gated": True},
    {"name": "dreamshaper_8.safetensors", "seed": "dream", "size": 5_000_000, "version_id": "128713"},
    {"name": "v1-5.safetensors", "seed": "hf", "size": 3_000_000, "repo": "org/sd", "hf_path": "unet/v1-5.safetensors"},
    {"name": "login.safetensors", "seed": "x", "size": 10, "version_id": "666", "mode": "html"},
    {"name": "flaky.safetensors", "seed": "flaky", "size": 6_000_000, "version_id": "669", "mode": "flaky"},
]


def sha_of(seed: str, size: int) -> str:
    return hashlib.sha256(content(seed, size)).hexdigest()


@pytest.fixture
def sources(docker_client: Any, testbed_image: str, tmp_path: Path, own_network: str) -> Iterator[Any]:
    container = start_sources_container(docker_client, testbed_image, tmp_path / "sources", FILES, TOKEN,
                                        network=own_network)
    yield container
    container.remove(force=True)


@pytest.fixture
def machine(local_env: dict[str, str], sources: Any, own_network: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CLOUDSD_LOCAL_NETWORK", own_network)  # where this test's stand-in answers
    monkeypatch.setenv("CLOUDSD_CIVITAI_BASE_URL", "http://civitai.test")
    monkeypatch.setenv("HF_ENDPOINT", "http://huggingface.test")
    cloudsd_json("up", "fetcher", "--provider", "local", "--detach")
    yield "fetcher"
    cloudsd("down", "fetcher", "--yes", "--no-outputs")


def on_machine(name: str, command: str) -> str:
    result = cloudsd("ssh", name, "--", command)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_machine_fetches_verifies_and_the_token_stays_home(machine: str, sources: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    manifest = tmp_path / "models.yaml"
    manifest.write_text("models:\n  - source: hf:org/sd/unet/v1-5.safetensors\n    kind: checkpoint\n")
    result = cloudsd("sync", "models", machine, "civitai:555", "civitai:128713", "--manifest", str(manifest),
                     "--json")
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr and "cdn-secret" not in result.stdout + result.stderr
    got = {r["remote"]: (r["outcome"], r["kind"], r["sha256"]) for r in json.loads(result.stdout)["results"]}
    assert got == {
        "/workspace/webui/models/Lora/gated_lora.safetensors": ("fetched", "lora", sha_of("gated", 2_000_000)),
        "/workspace/webui/models/Stable-diffusion/dreamshaper_8.safetensors": (
            "fetched", "checkpoint", sha_of("dream", 5_000_000)),
        "/workspace/webui/models/Stable-diffusion/v1-5.safetensors": ("fetched", "checkpoint", sha_of("hf", 3_000_000)),
    }
    for remote, (_, _, digest) in got.items():
        assert on_machine(machine, f"sha256sum {remote}").split()[0] == digest
    listed = json.loads(on_machine(machine, "curl -sf 127.0.0.1:7860/sdapi/v1/sd-models"))
    assert sorted(m["title"] for m in listed) == ["dreamshaper_8.safetensors", "v1-5.safetensors"]  # not loaded yet

    log = request_log(sources)
    civitai = [e for e in log if e["role"] == "civitai" and e["path"].endswith("/555")]
    assert civitai and all(e["auth"] == f"Bearer {TOKEN}" for e in civitai)
    assert [e for e in log if e["role"] == "cdn"] and all(e["auth"] is None for e in log if e["role"] == "cdn")
    assert all(e["auth"] is None for e in log if e["role"] == "hf")  # no HF_TOKEN: nothing sent there

    again = cloudsd_json("sync", "models", machine, "civitai:555", "civitai:128713", "--manifest", str(manifest))
    assert {r["outcome"] for r in again["results"]} == {"present"} and again["agent_runs"] == 1


@pytest.mark.parametrize(("token", "words"), [
    (None, "civitai:555: Civitai answered 401: this model needs an API token. Set CIVITAI_TOKEN."),
    ("not-the-token", "civitai:555: Civitai refused the token in CIVITAI_TOKEN (403)")])
def test_source_failures_are_one_line_each_and_leave_nothing(machine: str, monkeypatch: pytest.MonkeyPatch,
                                                              token: str | None, words: str) -> None:
    if token:
        monkeypatch.setenv("CIVITAI_TOKEN", token)
    result = cloudsd("sync", "models", machine, "civitai:555", "civitai:666", "civitai:404")
    assert result.returncode == 8
    lines = [line for line in result.stderr.splitlines() if line.startswith(("✗", "error:"))]
    assert len(lines) == 4 and "Traceback" not in result.stderr
    assert any(words in line for line in lines)
    assert any("civitai:666" in line and ("error page" in line or "text/html" in line) for line in lines)
    assert any("civitai:404" in line and "404" in line for line in lines)
    assert lines[-1] == "error: 3 of 3 models failed."
    left = on_machine(machine, "ls -A /workspace/webui/models/Lora /workspace/webui/models/Stable-diffusion")
    assert "safetensors" not in left  # no error page saved as a model, no partial left


def test_a_broken_download_resumes_on_the_next_run(machine: str, sources: Any) -> None:
    first = cloudsd("sync", "models", machine, "civitai:669")
    assert first.returncode == 8 and "run again to resume" in first.stderr
    second = cloudsd_json("sync", "models", machine, "civitai:669")
    assert [r["outcome"] for r in second["results"]] == ["fetched"]
    ranges = [e["range"] for e in request_log(sources) if e["role"] == "cdn" and "flaky" in e["path"]]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
