"""The agent fetching models itself, against a stand-in for Civitai, Hugging Face and their CDN on three
loopback origins: tokens only to their own origin, error pages and wrong hashes refused, resume."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsd.remote.agent.common import partial_path
from tests.fakes.model_sources import Sources
from tests.sync_helpers import TOKEN, FakeFile, LocalAgent, content, start_sources

CKPT = content("ckpt", 3_000_000)
LORA = content("lora", 200_000)
HF_FILE = content("hf", 1_500_000)
FILES = [
    FakeFile("dreamshaper_8.safetensors", CKPT, version_id="128713"),
    FakeFile("gated_lora.safetensors", LORA, version_id="555", model_type="LORA", gated=True),
    FakeFile("login.safetensors", b"", version_id="666", mode="html"),
    FakeFile("early.safetensors", b"", version_id="667", mode="error-json"),
    FakeFile("tampered.safetensors", CKPT, version_id="668", mode="wrong"),
    FakeFile("flaky.safetensors", content("flaky", 2_000_000), version_id="669", mode="flaky"),
    FakeFile("v1-5.safetensors", HF_FILE, repo="org/sd", hf_path="unet/v1-5.safetensors"),
    FakeFile("gated-hf.safetensors", LORA, repo="org/gated", hf_path="x.safetensors", gated=True),
    FakeFile("plain.bin", LORA),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sources() -> Iterator[tuple[Sources, dict[str, str]]]:
    running, public = start_sources([FakeFile(**vars(f)) for f in FILES])
    yield running, public
    running.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    running = LocalAgent(tmp_path / "state")
    yield running
    running.close()


def origin(url: str) -> str:
    from cloudsd.sync.sources import origin as cloudsd_origin

    return cloudsd_origin(url)


def civitai(public: dict[str, str], version: str) -> dict[str, Any]:
    return {"type": "civitai", "base": public["civitai"], "version_id": version}


def token_for(public: dict[str, str], role: str, value: str = TOKEN) -> dict[str, str]:
    return {"value": value, "origin": origin(public[role])}


def fetch_one(agent: LocalAgent, path: Path, url: str, **extra: Any) -> dict[str, Any]:
    item = {"path": str(path), "url": url, "identity": url, **extra}
    reply = agent.request("fetch", items=[item], parallel=1)
    return dict(reply["files"][str(path)])


def test_civitai_token_goes_to_civitai_only(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                            tmp_path: Path) -> None:
    fake, public = sources
    token = token_for(public, "civitai")
    meta = agent.request("resolve", refs=[{"source": civitai(public, "555"), "token": token}])["refs"][0]
    assert meta["ok"] and meta["name"] == "gated_lora.safetensors" and meta["sha256"] == sha(LORA)
    assert meta["model_type"] == "LORA"
    result = fetch_one(agent, tmp_path / "Lora" / meta["name"], meta["url"], sha256=meta["sha256"], token=token)
    assert result["ok"] and result["sha256"] == sha(LORA)
    assert (tmp_path / "Lora" / "gated_lora.safetensors").read_bytes() == LORA
    by_role = {(e["role"], e["path"]): e["auth"] for e in fake.log}
    assert by_role[("civitai", "/api/v1/model-versions/555")] == f"Bearer {TOKEN}"
    assert by_role[("civitai", "/api/download/models/555")] == f"Bearer {TOKEN}"
    cdn = [e for e in fake.log if e["role"] == "cdn"]
    assert cdn and all(e["auth"] is None for e in cdn)  # the redirect trap: no token to the CDN
    printed = "".join(agent.lines)
    assert TOKEN not in printed and "cdn-secret" not in printed and "X-Amz-Signature" not in printed


@pytest.mark.parametrize(("token", "status", "kind"), [(None, 401, "unauthorized"), ("wrong", 403, "forbidden")])
def test_gated_civitai_without_or_with_a_wrong_token(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                                     token: str | None, status: int, kind: str) -> None:
    _, public = sources
    tok = token_for(public, "civitai", token) if token else None
    meta = agent.request("resolve", refs=[{"source": civitai(public, "555"), "token": tok}])["refs"][0]
    assert meta == {"ok": False, "kind": kind, "status": status,
                    "message": f"127.0.0.1 answered HTTP {status} for {public['civitai']}/api/v1/model-versions/555"}


def test_unknown_civitai_version_is_404(sources: tuple[Sources, dict[str, str]], agent: LocalAgent) -> None:
    _, public = sources
    meta = agent.request("resolve", refs=[{"source": civitai(public, "999"), "token": None}])["refs"][0]
    assert meta["kind"] == "not-found" and meta["status"] == 404


@pytest.mark.parametrize("version", ["666", "667"])
def test_an_error_page_is_never_saved_as_a_model(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                                 tmp_path: Path, version: str) -> None:
    _, public = sources
    meta = agent.request("resolve", refs=[{"source": civitai(public, version), "token": None}])["refs"][0]
    target = tmp_path / "Stable-diffusion" / meta["name"]
    result = fetch_one(agent, target, meta["url"], sha256=meta["sha256"])
    assert result["kind"] == "not-a-model" and not result["ok"]
    assert "error page" in result["message"] or "text/html" in result["message"]
    assert "?" not in result["message"].replace("?…", "")  # no presigned query in messages
    assert not target.exists() and not Path(partial_path(str(target))).exists()
    assert not Path(partial_path(str(target)) + ".json").exists()


def test_a_wrong_hash_is_refused_and_nothing_stays(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                                   tmp_path: Path) -> None:
    _, public = sources
    meta = agent.request("resolve", refs=[{"source": civitai(public, "668"), "token": None}])["refs"][0]
    target = tmp_path / meta["name"]
    result = fetch_one(agent, target, meta["url"], sha256=meta["sha256"])
    assert result["kind"] == "hash-mismatch" and result["got"] != meta["sha256"]
    assert not target.exists() and not Path(partial_path(str(target))).exists()


def test_a_broken_download_resumes_with_a_range(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                                tmp_path: Path) -> None:
    fake, public = sources
    data = next(f.data for f in fake.files if f.name == "flaky.safetensors")
    meta = agent.request("resolve", refs=[{"source": civitai(public, "669"), "token": None}])["refs"][0]
    target = tmp_path / meta["name"]
    first = fetch_one(agent, target, meta["url"], sha256=meta["sha256"])
    assert first["kind"] == "network" and "run again to resume" in first["message"]
    kept = os.path.getsize(partial_path(str(target)))
    assert 0 < kept < len(data) and not target.exists()
    second = fetch_one(agent, target, meta["url"], sha256=meta["sha256"])
    assert second["ok"] and second["resumed_from"] == kept and target.read_bytes() == data
    ranges = [e for e in fake.log if e["role"] == "cdn" and e["path"].endswith("flaky.safetensors")]
    assert len(ranges) == 2


def test_hugging_face_hash_from_linked_etag_and_token_scope(sources: tuple[Sources, dict[str, str]],
                                                            agent: LocalAgent, tmp_path: Path) -> None:
    fake, public = sources
    src = {"type": "hf", "endpoint": public["hf"], "repo": "org/sd", "path": "unet/v1-5.safetensors", "rev": "main"}
    token = token_for(public, "hf")
    meta = agent.request("resolve", refs=[{"source": src, "token": token}])["refs"][0]
    assert meta["sha256"] == sha(HF_FILE) and meta["size"] == len(HF_FILE) and meta["name"] == "v1-5.safetensors"
    result = fetch_one(agent, tmp_path / meta["name"], meta["url"], sha256=meta["sha256"], size=meta["size"],
                       token=token)
    assert result["ok"]
    assert all(e["auth"] is None for e in fake.log if e["role"] == "cdn")
    assert any(e["auth"] == f"Bearer {TOKEN}" for e in fake.log if e["role"] == "hf")


@pytest.mark.parametrize(("token", "kind"), [(None, "unauthorized"), ("nope", "forbidden")])
def test_gated_hugging_face(sources: tuple[Sources, dict[str, str]], agent: LocalAgent, token: str | None,
                            kind: str) -> None:
    _, public = sources
    src = {"type": "hf", "endpoint": public["hf"], "repo": "org/gated", "path": "x.safetensors", "rev": "main"}
    meta = agent.request("resolve", refs=[{"source": src, "token": token_for(public, "hf", token) if token else None}])
    assert meta["refs"][0]["kind"] == kind


def test_plain_url_name_from_content_disposition_and_short_hash(sources: tuple[Sources, dict[str, str]],
                                                               agent: LocalAgent, tmp_path: Path) -> None:
    _, public = sources
    url = f"{public['cdn']}/files/plain.bin?download=1"
    meta = agent.request("resolve", refs=[{"source": {"type": "url", "url": url}, "token": None}])["refs"][0]
    assert meta["name"] == "plain.bin" and meta["size"] == len(LORA) and meta["sha256"] is None
    bad = fetch_one(agent, tmp_path / "plain.bin", url, short_hash="0000000000")
    assert bad["kind"] == "hash-mismatch" and not (tmp_path / "plain.bin").exists()
    good = fetch_one(agent, tmp_path / "plain.bin", url, short_hash=sha(LORA)[:10])
    assert good["ok"] and good["sha256"] == sha(LORA)


def test_not_enough_disk_is_refused_before_downloading(sources: tuple[Sources, dict[str, str]], agent: LocalAgent,
                                                       tmp_path: Path) -> None:
    _, public = sources
    huge = 1 << 60
    url = f"{public['cdn']}/files/plain.bin"
    result = fetch_one(agent, tmp_path / "plain.bin", url, size=huge)
    assert result["kind"] == "size-mismatch"  # the server offers another size: refused before any byte
    assert not Path(partial_path(str(tmp_path / "plain.bin"))).exists()


def test_unreachable_source_is_one_line(agent: LocalAgent, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    meta = agent.request("resolve", refs=[{"source": {"type": "url", "url": f"http://127.0.0.1:{port}/x?token=abc"},
                                           "token": None}])["refs"][0]
    assert meta["kind"] == "network" and "abc" not in meta["message"] and "?…" in meta["message"]
