"""From what the user named to what goes where: local files with their kind and place on the machine, and
references resolved by the agent into a name, a kind, a size, an expected sha256 and a download URL."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudsd import paths
from cloudsd.errors import ConfigError
from cloudsd.sync.kinds import infer_kind, is_model_file, kind_from_civitai, kind_of_folder
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.plan import LocalFile
from cloudsd.sync.sources import Endpoints, Ref, parse_ref
from cloudsd.ui import UIProfile


@dataclass(frozen=True)
class LocalModel:
    request: ModelRequest
    kind: str
    file: LocalFile
    stat: os.stat_result


@dataclass
class RefModel:
    request: ModelRequest
    ref: Ref
    kind: str | None = None
    remote: str = ""
    size: int | None = None  # exact, when known
    size_hint: int | None = None  # about (Civitai's sizeKB), for the disk check
    sha256: str | None = None  # what the file must have
    url: str = ""
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.request.name or self.ref.text


def remote_path(ui: UIProfile, kind: str, rel: str) -> str:
    return posixpath.join(ui.data_dir, ui.model_dirs[kind], rel)


def expand_local(ui: UIProfile, request: ModelRequest, hashes: Any) -> list[LocalModel]:
    """The model files a path names (a file, or the model files under a folder) with kind and destination."""
    root = Path(request.source).expanduser()
    if not root.exists():
        raise ConfigError(f"no such file or folder: {root}.")
    found: list[tuple[Path, list[str], str]] = []
    if root.is_file():
        found.append((root, [root.parent.name], root.name))
    else:
        hashes.load_under(root)  # one query for the folder's cached digests, not one per file
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            # strings, not a Path per step: a re-sync of 1,000 files spent most of its listing in pathlib
            below = os.path.relpath(dirpath, root)
            parts = [] if below == os.curdir else below.split(os.sep)
            for name in sorted(filenames):
                if is_model_file(name):
                    found.append((Path(dirpath, name), [root.name, *parts], "/".join([*parts, name])))
        if not found:
            raise ConfigError(f"no model files in {root} (looked for .safetensors, .ckpt, .pt, .pth, .bin, …).")
    models = []
    for path, folders, found_rel in found:
        st = path.stat()
        kind = request.kind or infer_kind(path.name, st.st_size, folders)
        if kind is None:
            raise ConfigError(f"cannot tell what kind of model {path} is ({st.st_size / 1e9:.2f} GB).",
                              hint="Name it with --kind (checkpoint, lora, vae, embedding, controlnet, upscaler).")
        rel = found_rel
        if request.kind is None:
            # below the folder that named the kind, the layout is kept (A1111 lists subfolders too)
            for i in reversed(range(len(folders))):
                if kind_of_folder(folders[i]):
                    rel = "/".join([*folders[i + 1:], path.name])
                    break
        if request.save_as and root.is_file():
            rel = request.save_as
        key = request.label if root.is_file() else f"{root.name}/{found_rel}"
        file = LocalFile(key, str(path), remote_path(ui, kind, rel), st.st_size, st.st_mtime_ns, hashes.get(path, st))
        models.append(LocalModel(request, kind, file, st))
    return models


def apply_resolved(ui: UIProfile, model: RefModel, reply: dict[str, Any], endpoints: Endpoints) -> None:
    """Fill a reference in from the agent's `resolve` reply, or set its failure line."""
    if not reply.get("ok"):
        model.failure = source_failure(model, reply, endpoints)
        return
    name = model.request.save_as or str(reply.get("name") or "")
    name = posixpath.basename(name.replace("\\", "/"))
    if not name or name.startswith(".") or any(ord(c) < 32 or c == "\x7f" for c in name):
        shown = f" ({name!r})" if name else ""
        model.failure = (f"{model.label}: the source gave no usable file name{shown}; set one with `file:` in a "
                         "manifest.")
        return
    size, hint = reply.get("size"), reply.get("size_hint")
    kind = model.request.kind or kind_from_civitai(reply.get("model_type")) or infer_kind(
        name, int(size or hint or model.request.size or 0))
    if kind is None:
        model.failure = f"{model.label}: cannot tell what kind of model {name} is; give --kind."
        return
    source_sha = reply.get("sha256") or model.ref.sha256
    if model.request.sha256 and source_sha and model.request.sha256 != source_sha:
        model.failure = (f"{model.label}: the manifest's sha256 {model.request.sha256[:10]}… differs from the "
                         f"source's {source_sha[:10]}…; the source changed, or the manifest is wrong.")
        return
    short = model.request.short_hash
    if short and source_sha and not source_sha.startswith(short):
        model.failure = (f"{model.label}: the source's file has short hash {source_sha[:10]}, the manifest says "
                         f"{short}; the source changed, or the manifest is wrong.")
        return
    model.kind = kind
    model.remote = remote_path(ui, kind, name)
    model.size = model.request.size if model.request.size is not None else size
    model.size_hint = hint
    model.sha256 = model.request.sha256 or source_sha
    model.url = str(reply["url"])


def source_failure(model: RefModel, reply: dict[str, Any], endpoints: Endpoints) -> str:
    """One line for a failed lookup or download, naming the token to set when one is missing."""
    ref, kind = model.ref, str(reply.get("kind") or "")
    service = {"civitai": "Civitai", "hf": "Hugging Face"}.get(ref.service(endpoints), ref.service(endpoints))
    env, token = ref.token_env(endpoints), ref.token(endpoints)
    status = reply.get("status")
    if kind in ("unauthorized", "forbidden"):
        if env and token is None:
            return f"{model.label}: {service} answered {status}: this model needs an API token. Set {env}."
        if env:
            return (f"{model.label}: {service} refused the token in {env} ({status}): the model is gated, early "
                    "access or private; accept its licence or request access on the website.")
        return f"{model.label}: {service} answered {status} (access denied)."
    if kind == "not-found":
        return f"{model.label}: {service} has no such model or file (404); check the reference."
    return f"{model.label}: {reply.get('message') or kind}"


def check_sources(requests: list[ModelRequest]) -> None:
    """Fail on a bad reference, a missing path or a bad source endpoint now, before anything is rented or sent."""
    if any(request.is_ref for request in requests):
        Endpoints.from_env()
    for request in requests:
        if request.is_ref:
            parse_ref(request.source)
        elif not paths.expand(request.source, "model path").exists():
            raise ConfigError(f"no such file or folder: {request.source}.")
