"""What the user names: kinds inferred from folders, names and sizes; references; manifests; the disk size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudsd.core.sync import HEADROOM_GB, disk_gb_for
from cloudsd.errors import ConfigError
from cloudsd.sync.collect import expand_local
from cloudsd.sync.hashcache import HashCache
from cloudsd.sync.kinds import GB, MB, infer_kind, kind_from_civitai
from cloudsd.sync.manifest import ModelRequest, load_manifest
from cloudsd.sync.sources import Endpoints, looks_like_ref, parse_ref
from cloudsd.ui import profile


@pytest.mark.parametrize(("name", "size", "folders", "kind"), [
    ("anything.safetensors", 10 * MB, ["models", "Stable-diffusion"], "checkpoint"),
    ("x.safetensors", 5 * GB, ["loras"], "lora"),  # the folder wins over the size
    ("x.safetensors", 5 * GB, ["Lora", "sub"], "lora"),
    ("x.pt", 50 * MB, ["embeddings"], "embedding"),
    ("x.pth", 60 * MB, ["ESRGAN"], "upscaler"),
    ("x.safetensors", 2 * GB, ["ControlNet"], "controlnet"),
    ("4x-UltraSharp.pth", 67 * MB, ["Downloads"], "upscaler"),
    ("easynegative.safetensors", 25_000, [], "embedding"),
    ("badhands.pt", 3 * MB, [], "embedding"),
    ("vae-ft-mse-840000-ema-pruned.safetensors", 335 * MB, [], "vae"),
    ("realisticVisionV51_v51VAE.safetensors", int(2.1 * GB), [], "checkpoint"),  # baked VAE, not a VAE
    ("my_lora_v2.safetensors", 1.2 * GB, [], "lora"),
    ("control_v11p_sd15_canny.pth", int(1.45 * GB), [], "controlnet"),  # ControlNet 1.1 ships as .pth
    ("big_unknown.pth", int(1.45 * GB), [], None),
    ("control_v11p_sd15_canny.safetensors", int(1.45 * GB), [], "controlnet"),
    ("dreamshaper_8.safetensors", int(2.1 * GB), [], "checkpoint"),
    ("style.safetensors", 150 * MB, [], "lora"),
    ("mystery.safetensors", int(1.2 * GB), [], None),  # between LoRA and checkpoint sizes: ask
    ("notes.txt", 100, ["Lora"], "lora"),  # folders decide even then; the walk skips non-model files
    ("notes.txt", 100, [], None),
])
def test_infer_kind(name: str, size: int, folders: list[str], kind: str | None) -> None:
    assert infer_kind(name, int(size), folders) == kind


def test_civitai_model_types() -> None:
    assert [kind_from_civitai(t) for t in ("Checkpoint", "LORA", "LoCon", "TextualInversion", "VAE",
                                           "Controlnet", "Upscaler", "Poses", None)] == [
        "checkpoint", "lora", "lora", "embedding", "vae", "controlnet", "upscaler", None, None]


def test_refs() -> None:
    ref = parse_ref("civitai:128713")
    assert (ref.type, ref.version_id) == ("civitai", "128713")
    ref = parse_ref("hf:stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors")
    assert (ref.repo, ref.path, ref.rev) == ("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                             "v1-5-pruned-emaonly.safetensors", "main")
    ref = parse_ref("hf:org/repo/sub/dir/f.safetensors@0123abc")
    assert (ref.repo, ref.path, ref.rev) == ("org/repo", "sub/dir/f.safetensors", "0123abc")
    ref = parse_ref("https://example.com/f.safetensors?token=SECRET#sha256=" + "a" * 64)
    assert ref.url == "https://example.com/f.safetensors?token=SECRET" and ref.sha256 == "a" * 64
    assert "SECRET" not in ref.text


@pytest.mark.parametrize(("text", "words"), [
    ("civitai:abc", "civitai:<modelVersionId>"), ("hf:org/repo", "hf:<org>/<repo>/<path>"),
    ("s3://bucket/x.safetensors", "unknown model reference"), ("ftp://h/x", "unknown model reference"),
    ("https://h/x#sha256=123", "64 hex digits"),
])
def test_bad_refs_are_one_clear_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ref(text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_paths_are_not_refs() -> None:
    assert not looks_like_ref("C:\\models\\x.safetensors") and not looks_like_ref("./civitai/x")
    assert looks_like_ref("civitai:1") and looks_like_ref("s3://x")


def test_tokens_belong_to_one_origin() -> None:
    env = Endpoints.from_env({"CIVITAI_TOKEN": "c", "HF_TOKEN": "h", "HF_ENDPOINT": "https://hf.mirror:8443/"})
    assert parse_ref("civitai:1").token(env) == {"value": "c", "origin": "https://civitai.com:443"}
    assert parse_ref("hf:a/b/c").token(env) == {"value": "h", "origin": "https://hf.mirror:8443"}
    assert parse_ref("https://civitai.com/api/download/models/1").token(env) == {
        "value": "c", "origin": "https://civitai.com:443"}
    assert parse_ref("https://evil.example/civitai.com").token(env) is None
    assert parse_ref("http://civitai.com/api/download/models/1").token(env) is None  # not the same origin
    assert parse_ref("civitai:1").token(Endpoints.from_env({})) is None


def test_the_laptop_and_the_agent_compute_a_tokens_origin_with_one_function() -> None:
    from cloudsd.remote.agent import web
    from cloudsd.sync import sources

    assert sources.origin is web.origin  # the token is paired here and compared there: one definition
    assert web.origin("HTTPS://Civitai.com/x?y") == "https://civitai.com:443" and web.origin("http://h:bad/") == "http://h:0"


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    manifest = tmp_path / "models.yaml"
    manifest.write_text(
        "models:\n"
        "  - name: DreamShaper 8\n    kind: checkpoint\n    source: civitai:128713\n"
        "    sha256: 879DB523C30D3B9017143D56705015E15A2CB5628762C11D086FED9538ABD7FD\n"
        "  - source: mine.safetensors\n    kind: lora\n    short_hash: abcdef0123\n    file: renamed.safetensors\n")
    first, second = load_manifest(manifest)
    assert first == ModelRequest("civitai:128713", "checkpoint",
                                 "879db523c30d3b9017143d56705015e15a2cb5628762c11d086fed9538abd7fd", name="DreamShaper 8")
    assert second.source == str(tmp_path / "mine.safetensors") and not second.is_ref
    assert (second.short_hash, second.save_as) == ("abcdef0123", "renamed.safetensors")


@pytest.mark.parametrize(("body", "words"), [
    ("models: {}", "expected a list"), ("models:\n  - kind: lora\n", "needs a `source:`"),
    ("models:\n  - source: civitai:1\n    kind: lorra\n", "unknown kind 'lorra'"),
    ("models:\n  - source: civitai:1\n    sha256: abc\n", "64 hex digits"),
    ("models:\n  - source: civitai:1\n    colour: red\n", "unknown field 'colour'"),
    ("models:\n  - source: civitai:1\n    file: ../x\n", "plain file name"),
    ("models: [", "not valid YAML"),
])
def test_bad_manifests_name_the_entry(tmp_path: Path, body: str, words: str) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(body)
    with pytest.raises(ConfigError, match=words):
        load_manifest(manifest)


def test_the_shipped_template_loads() -> None:
    template = Path(__file__).resolve().parents[1] / "templates" / "models.yaml"
    entries = load_manifest(template)
    assert {e.name for e in entries} >= {"Stable Diffusion v1.5", "DreamShaper 8", "Realistic Vision V5.1",
                                         "Stable Diffusion 2.1 (768, v-prediction; generate at 768x768)"}
    by_name = {e.name: e for e in entries}
    assert by_name["Stable Diffusion v1.5"].sha256 == "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    assert all(e.is_ref and e.kind == "checkpoint" for e in entries)
    for entry in entries:
        parse_ref(entry.source)


def _tree(root: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.truncate(size)  # sparse: sizes without the bytes


def test_a_models_folder_maps_to_the_ui_folders(tmp_path: Path) -> None:
    _tree(tmp_path / "sd", {"Stable-diffusion/a.safetensors": 3 * GB, "Lora/chars/b.safetensors": 20 * MB,
                            "embeddings/neg.pt": 30_000, "VAE/v.safetensors": 300 * MB, "Lora/readme.txt": 10,
                            ".cache/x.safetensors": 10})
    cache = HashCache(tmp_path / "h.sqlite3")
    a1111 = {m.file.remote: m.kind for m in expand_local(profile("a1111"), ModelRequest(str(tmp_path / "sd")), cache)}
    assert a1111 == {"/workspace/webui/models/Stable-diffusion/a.safetensors": "checkpoint",
                     "/workspace/webui/models/Lora/chars/b.safetensors": "lora",
                     "/workspace/webui/embeddings/neg.pt": "embedding",
                     "/workspace/webui/models/VAE/v.safetensors": "vae"}
    comfy = sorted(m.file.remote for m in expand_local(profile("comfyui"), ModelRequest(str(tmp_path / "sd")), cache))
    assert comfy == ["/workspace/comfyui/models/checkpoints/a.safetensors",
                     "/workspace/comfyui/models/embeddings/neg.pt",
                     "/workspace/comfyui/models/loras/chars/b.safetensors",
                     "/workspace/comfyui/models/vae/v.safetensors"]
    forced = expand_local(profile("a1111"), ModelRequest(str(tmp_path / "sd" / "Lora"), kind="checkpoint"), cache)
    assert [m.file.remote for m in forced] == ["/workspace/webui/models/Stable-diffusion/chars/b.safetensors"]


def test_an_ambiguous_file_asks_for_kind(tmp_path: Path) -> None:
    _tree(tmp_path, {"mystery.safetensors": int(1.2 * GB)})
    with pytest.raises(ConfigError, match="--kind"):
        expand_local(profile("a1111"), ModelRequest(str(tmp_path / "mystery.safetensors")), HashCache(tmp_path / "h"))
    with pytest.raises(ConfigError, match="no such file"):
        expand_local(profile("a1111"), ModelRequest(str(tmp_path / "nope")), HashCache(tmp_path / "h"))


def test_the_hash_cache_trusts_only_unchanged_files(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"a" * 100)
    cache = HashCache(tmp_path / "h.sqlite3")
    first = cache.sha256(path)
    assert cache.get(path, path.stat()) == first
    st = path.stat()
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache.get(path, path.stat()) is None and cache.sha256(path) != first


def test_disk_size_for_up(tmp_path: Path) -> None:
    _tree(tmp_path, {"Lora/a.safetensors": 5 * GB, "Lora/b.txt": 50 * GB})
    requests = [ModelRequest(str(tmp_path)), ModelRequest("civitai:1", size=10 * GB), ModelRequest("hf:a/b/c.ckpt")]
    gb, notes = disk_gb_for(requests)
    assert gb == -(-int((5 + 10 + 4.3) * GB * 1.1) // GB) + HEADROOM_GB
    assert len(notes) == 1 and "hf:a/b/c.ckpt" in notes[0]


@pytest.mark.parametrize("name", ["lora\x00.safetensors", "lora\n.safetensors", ".hidden.safetensors", ""])
def test_a_source_file_name_with_control_characters_is_refused(name: str) -> None:
    from cloudsd.sync.collect import RefModel, apply_resolved

    model = RefModel(ModelRequest("civitai:128713"), parse_ref("civitai:128713"))
    apply_resolved(profile("a1111"), model, {"ok": True, "name": name, "size": 10, "url": "http://cdn.test/x"},
                   Endpoints.from_env({}))
    assert model.failure and "no usable file name" in model.failure and "`file:`" in model.failure
    assert model.remote == ""


def test_listing_a_folder_reads_its_cached_digests_in_one_query(tmp_path: Path) -> None:
    """A re-sync of 1,000 files asked the digest cache 1,000 times; now once per folder named. A file cached
    after that, a changed file and a sibling folder whose name starts the same are still answered right."""
    lora = tmp_path / "sd" / "Lora"
    lora.mkdir(parents=True)
    sibling = tmp_path / "sd" / "Lora2"
    sibling.mkdir()
    files = [lora / f"l{i}.safetensors" for i in range(30)]
    for path in [*files, sibling / "s.safetensors"]:
        path.write_bytes(os.urandom(1000))
    cache = HashCache(tmp_path / "h")
    cache.put_many([(p, p.stat(), f"sha-{p.name}") for p in [*files, sibling / "s.safetensors"]])
    files[0].write_bytes(os.urandom(1001))  # changed since it was cached
    statements: list[str] = []
    cache._db.set_trace_callback(statements.append)
    models = expand_local(profile("a1111"), ModelRequest(str(lora)), cache)
    assert sum(s.lstrip().upper().startswith("SELECT") for s in statements) == 1, statements
    assert {Path(m.file.path).name: m.file.sha256 for m in models} == {
        p.name: None if p == files[0] else f"sha-{p.name}" for p in files}
    assert cache.get(sibling / "s.safetensors", (sibling / "s.safetensors").stat()) == "sha-s.safetensors"
    cache.put_many([(files[0], files[0].stat(), "sha-new")])
    assert cache.get(files[0], files[0].stat()) == "sha-new"
    cache.close()
