"""The A1111/Forge half of the stand-in web UI: /internal/ping and the /sdapi/v1 routes cloudsd uses."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
import types
from datetime import datetime
from pathlib import Path
from typing import Any

from standin_a1111_jobs import A1111Jobs
from standin_common import (
    A1111_FOLDERS,
    HTTPError,
    Reply,
    Route,
    html_reply,
    json_reply,
    memory_stats,
    next_counter,
    parse_json,
    write_new_file,
)

CHECKPOINT_EXTS = (".safetensors", ".ckpt")
LORA_EXTS = (".safetensors", ".ckpt", ".pt")


class HashCache:
    """A1111's `modules/hashes.py` over <data-dir>/cache.json: the "hashes" section is read once and kept in
    memory; an entry (`{"mtime": os.path.getmtime(file), "sha256": …}`) counts while the file's mtime is exactly
    the one recorded; a new digest is added and the whole file written back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data.get("hashes"), dict):
            self.data["hashes"] = {}

    def sha256_from_cache(self, file: Path, title: str) -> str | None:
        """`hashes.sha256_from_cache`: the recorded digest, or None (never reads the file)."""
        try:
            mtime = os.path.getmtime(file)
        except FileNotFoundError:
            return None
        with self.lock:
            entry = self.data["hashes"].get(title)
        if not isinstance(entry, dict) or entry.get("sha256") is None or mtime != entry.get("mtime", 0):
            return None
        return str(entry["sha256"])

    def sha256(self, file: Path, title: str) -> str:
        """`hashes.sha256`: from the cache, else read the whole file, record it and write the cache out."""
        cached = self.sha256_from_cache(file, title)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        with file.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        with self.lock:
            self.data["hashes"][title] = {"mtime": os.path.getmtime(file), "sha256": digest.hexdigest()}
            try:
                write_new_file(self.path, json.dumps(self.data, indent=4).encode())
            except OSError:
                pass
        return digest.hexdigest()


def scan(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts]
    return sorted(found, key=lambda p: str(p.relative_to(folder)).lower())


def _scripts_module() -> types.ModuleType:
    """The part of A1111's `modules.scripts` an always-on script uses: `Script` and `AlwaysVisible`."""
    existing = sys.modules.get("modules.scripts")
    if existing is not None:
        return existing

    class Script:
        def title(self) -> str:
            return type(self).__name__

        def show(self, is_img2img: bool) -> Any:
            return True

        def process(self, p: Any, *args: Any) -> None:
            pass

    package = sys.modules.setdefault("modules", types.ModuleType("modules"))
    module = types.ModuleType("modules.scripts")
    module.Script = Script  # type: ignore[attr-defined]
    module.AlwaysVisible = object()  # type: ignore[attr-defined]
    package.scripts = module  # type: ignore[attr-defined]
    sys.modules["modules.scripts"] = module
    return module


# -- extension hooks: modules.script_callbacks.on_app_started and the app it is given ----------------------


def _script_callbacks_module() -> types.ModuleType:
    """The part of A1111's `modules.script_callbacks` an extension uses here: `on_app_started`. Callbacks
    collect in `app_started` until the stand-in app that loaded them takes them (`take_app_started`)."""
    existing = sys.modules.get("modules.script_callbacks")
    if existing is not None:
        return existing
    module = types.ModuleType("modules.script_callbacks")
    registered: list[Any] = []

    def on_app_started(callback: Any, *, name: str | None = None) -> None:
        registered.append(callback)

    module.on_app_started = on_app_started  # type: ignore[attr-defined]
    module.app_started = registered  # type: ignore[attr-defined]
    package = sys.modules.setdefault("modules", types.ModuleType("modules"))
    package.script_callbacks = module  # type: ignore[attr-defined]
    sys.modules["modules.script_callbacks"] = module
    return module


class AsgiApp:
    """The part of the FastAPI (Starlette) app that A1111 passes to `on_app_started` callbacks which an
    extension uses here: `middleware_stack`, None until built, and `build_middleware_stack()`. The stand-in
    runs the stack for every request before answering it itself; the innermost endpoint does nothing."""

    def __init__(self) -> None:
        self.middleware_stack: Any = None

    def build_middleware_stack(self) -> Any:
        async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
            return None

        return endpoint

    def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        if self.middleware_stack is None:
            return
        scope = {"type": "http", "method": method, "path": path, "headers": headers}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        asyncio.run(self.middleware_stack(scope, receive, send))


def load_always_on_scripts(app_dir: Path | None) -> list[Any]:
    """The always-on scripts of <app>/extensions-builtin/*/scripts/*.py, loaded as A1111 loads them:
    each subclass of `modules.scripts.Script` is made once and kept if `show()` says AlwaysVisible."""
    if app_dir is None:
        return []
    scripts = _scripts_module()
    _script_callbacks_module().app_started.clear()  # type: ignore[attr-defined]  # only this app's
    found = []
    for path in sorted(app_dir.glob("extensions-builtin/*/scripts/*.py")):
        spec = importlib.util.spec_from_file_location(f"standin_script_{path.parent.parent.name}_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, scripts.Script) and obj is not scripts.Script:
                script = obj()
                if script.show(False) is scripts.AlwaysVisible:
                    found.append(script)
    return found


class A1111App:
    """A1111/Forge: model lists are read at start and after POST /sdapi/v1/refresh-*, as the real UI does.

    API renders are saved only when the request says "save_images": true, unless an always-on script of
    `app_dir`'s built-in extensions turns saving on, as in the real UI (where `process()` runs before the
    samples are saved)."""

    title = "Stable Diffusion"

    def __init__(
        self,
        data_dir: Path,
        app_dir: Path | None = None,
        api: bool = True,
        cmd_flags: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.scripts = load_always_on_scripts(app_dir)
        # As A1111 once its app serves: the extensions' on_app_started callbacks get the app.
        self.asgi = AsgiApp()
        for callback in list(_script_callbacks_module().app_started) if app_dir else []:  # type: ignore[attr-defined]
            callback(None, self.asgi)
        self.cmd_flags = dict(cmd_flags or {})
        for rel in A1111_FOLDERS.values():
            (data_dir / rel).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.cache = HashCache(data_dir / "cache.json")
        self.checkpoints = self._scan_checkpoints()
        self.loras = self._scan_loras()
        self.vaes = self._scan_vaes()
        first = self.checkpoints[0]["title"] if self.checkpoints else None
        self.options: dict[str, Any] = {
            "sd_model_checkpoint": first,
            "sd_vae": "Automatic",
            "samples_save": True,
            "samples_format": "png",
            "outdir_txt2img_samples": "outputs/txt2img-images",
        }
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/"): lambda q, b: html_reply(self.title),
            ("GET", "/internal/ping"): lambda q, b: json_reply({}),
            ("GET", "/sdapi/v1/sd-models"): lambda q, b: json_reply(self.checkpoints),
            ("GET", "/sdapi/v1/loras"): lambda q, b: json_reply(self.loras),
            ("GET", "/sdapi/v1/sd-vae"): lambda q, b: json_reply(self.vaes),
            ("GET", "/sdapi/v1/embeddings"): self.embeddings,
            ("POST", "/sdapi/v1/refresh-checkpoints"): self.refresh_checkpoints,
            ("POST", "/sdapi/v1/refresh-loras"): self.refresh_loras,
            ("POST", "/sdapi/v1/refresh-vae"): self.refresh_vae,
            ("GET", "/sdapi/v1/options"): lambda q, b: json_reply(self.options),
            ("POST", "/sdapi/v1/options"): self.set_options,
            ("GET", "/sdapi/v1/memory"): lambda q, b: json_reply(memory_stats()),
            ("GET", "/sdapi/v1/cmd-flags"): lambda q, b: json_reply(self.cmd_flags),
        }
        if self.checkpoints:  # A1111 loads one at start (the first, with no option saved), and so hashes it
            self.load_checkpoint(self.checkpoints[0])
        self.jobs = A1111Jobs(self)  # txt2img, img2img, progress, interrupt and the lists they check against
        self.routes.update(self.jobs.routes())
        if not api:  # without --api, A1111 serves only the web UI and /internal/*
            self.routes = {k: v for k, v in self.routes.items() if not k[1].startswith("/sdapi/")}

    def _scan_checkpoints(self) -> list[dict[str, Any]]:
        """`sd_models.list_models`: each checkpoint as `CheckpointInfo` makes it, with the sha256 only if
        cache.json has it (the title then ends in ` [short hash]`); nothing is hashed here."""
        root = self.data_dir / A1111_FOLDERS["checkpoints"]
        names = {path: path.relative_to(root).as_posix() for path in scan(root, CHECKPOINT_EXTS)}
        return [self._checkpoint(path, name, self.cache.sha256_from_cache(path, f"checkpoint/{name}"))
                for path, name in names.items()]

    @staticmethod
    def _checkpoint(path: Path, name: str, sha256: str | None) -> dict[str, Any]:
        """A checkpoint as /sdapi/v1/sd-models shows it (`title`, `model_name`, `hash` = the short hash or None,
        `sha256`, `filename`, `config`)."""
        short = sha256[:10] if sha256 else None
        return {"title": f"{name} [{short}]" if short else name,
                "model_name": os.path.splitext(name.replace("/", "_"))[0],
                "hash": short, "sha256": sha256, "filename": str(path), "config": None}

    def load_checkpoint(self, model: dict[str, Any]) -> dict[str, Any]:
        """`sd_models.load_model_weights`: loading a checkpoint hashes it (`calculate_shorthash`, through the
        cache), which gives it its ` [short hash]` title, and the `sd_model_checkpoint` option becomes that
        title. Returns the entry as listed from now on."""
        root = self.data_dir / A1111_FOLDERS["checkpoints"]
        path = Path(model["filename"])
        name = path.relative_to(root).as_posix()
        loaded = self._checkpoint(path, name, self.cache.sha256(path, f"checkpoint/{name}"))
        self.checkpoints = [loaded if m["filename"] == model["filename"] else m for m in self.checkpoints]
        self.options["sd_model_checkpoint"] = loaded["title"]
        return loaded

    def _scan_loras(self) -> list[dict[str, Any]]:
        paths = scan(self.data_dir / A1111_FOLDERS["loras"], LORA_EXTS)
        return [{"name": p.stem, "alias": p.stem, "path": str(p), "metadata": {}} for p in paths]

    def _scan_vaes(self) -> list[dict[str, Any]]:
        paths = scan(self.data_dir / A1111_FOLDERS["vae"], (".safetensors", ".pt", ".ckpt"))
        return [{"model_name": p.name, "filename": str(p)} for p in paths]

    def refresh_checkpoints(self, query: dict[str, list[str]], body: bytes) -> Reply:
        self.checkpoints = self._scan_checkpoints()
        return json_reply(None)

    def refresh_loras(self, query: dict[str, list[str]], body: bytes) -> Reply:
        self.loras = self._scan_loras()
        return json_reply(None)

    def refresh_vae(self, query: dict[str, list[str]], body: bytes) -> Reply:
        self.vaes = self._scan_vaes()
        return json_reply(None)

    def embeddings(self, query: dict[str, list[str]], body: bytes) -> Reply:
        paths = scan(self.data_dir / A1111_FOLDERS["embeddings"], (".pt", ".safetensors", ".bin"))
        loaded = {p.stem: {"step": None, "sd_checkpoint": None, "shape": 768, "vectors": 1} for p in paths}
        return json_reply({"loaded": loaded, "skipped": {}})

    def find_checkpoint(self, alias: str | None) -> dict[str, Any] | None:
        """`checkpoint_aliases`: the title, the name with and without the short hash, model_name, the file's
        stem, and the hashes once known."""
        for model in self.checkpoints:
            names = {model["title"], model["model_name"], model["hash"], model["sha256"]}
            names |= {model["title"].rsplit(" [", 1)[0], Path(model["filename"]).stem}
            if alias is not None and alias in names - {None}:
                return model
        return None

    def set_options(self, query: dict[str, list[str]], body: bytes) -> Reply:
        update = parse_json(body)
        if "sd_model_checkpoint" in update:
            model = self.find_checkpoint(update["sd_model_checkpoint"])
            if model is None:
                message = f"model {update['sd_model_checkpoint']!r} not found"
                raise HTTPError(500, {"error": "RuntimeError", "detail": "", "body": "", "errors": message})
            update["sd_model_checkpoint"] = self.load_checkpoint(model)["title"]
        self.options.update(update)
        return json_reply(None)

    def _save(self, images: list[bytes], seeds: list[int], kind: str = "txt2img-images") -> None:
        folder = self.data_dir / "outputs" / kind / datetime.now().strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            for png, seed in zip(images, seeds, strict=True):
                number = next_counter(folder, re.compile(r"(\d+)-"), 0)
                write_new_file(folder / f"{number:05d}-{seed}.png", png)

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply | None:
        route = self.routes.get((method, path))
        return route(query, body) if route else None
