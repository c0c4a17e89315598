"""The ComfyUI half of the stand-in web UI: /system_stats, /object_info, /models, /prompt, /history, /view."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from standin_comfy_jobs import ComfyJobs
from standin_comfy_nodes import load_custom_nodes
from standin_common import (
    COMFYUI_FOLDERS,
    VRAM_TOTAL,
    HTTPError,
    Reply,
    html_reply,
    json_reply,
    memory_stats,
    next_counter,
    write_new_file,
)

COMFY_MODEL_EXTS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


class ComfyApp:
    """ComfyUI: folder listings are cached and rescanned when a directory's mtime changes; prompts run
    at once and write output/<prefix>_<5 digits>_.png. With `app_dir` (where main.py is), the custom nodes
    of <base>/custom_nodes and of the app's extra_model_paths.yaml are loaded as ComfyUI loads them, and
    their aiohttp middlewares run on every request (standin_comfy_nodes.py)."""

    title = "ComfyUI"

    def __init__(self, base_dir: Path, argv: list[str] | None = None, app_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self.argv = list(argv) if argv is not None else list(sys.argv)  # what /system_stats reports
        for rel in COMFYUI_FOLDERS.values():
            (base_dir / rel).mkdir(parents=True, exist_ok=True)
        self.folders = {k: base_dir / v for k, v in COMFYUI_FOLDERS.items() if k != "outputs"}
        self.output_dir = base_dir / COMFYUI_FOLDERS["outputs"]
        self.lock = threading.Lock()
        self._listings: dict[str, tuple[list[str], dict[str, float]]] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.jobs = ComfyJobs(self)  # /prompt validation, the queue and its worker, /interrupt, /upload/image
        # As main.py: PromptServer, then the custom nodes, then the app starts (frozen).
        self.prompt_server = load_custom_nodes(base_dir, app_dir, self.jobs) if app_dir else None
        self.aiohttp_app = self.prompt_server.app if self.prompt_server else None

    def list_folder(self, folder: str) -> list[str]:
        root = self.folders[folder]
        with self.lock:
            cached = self._listings.get(folder)
        if cached is not None and all(_mtime(d) == m for d, m in cached[1].items()):
            return cached[0]
        dirs = {str(root): _mtime(str(root))}
        names = []
        for dirpath, subdirs, files in os.walk(root, followlinks=True):
            for sub in subdirs:
                dirs[os.path.join(dirpath, sub)] = _mtime(os.path.join(dirpath, sub))
            for f in files:
                if os.path.splitext(f)[1].lower() in COMFY_MODEL_EXTS:
                    names.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
        names.sort()
        with self.lock:
            self._listings[folder] = (names, dirs)
        return names

    def object_info(self) -> dict[str, Any]:
        return self.jobs.object_info()

    def websocket(self, handler: Any, query: dict[str, list[str]]) -> None:
        """GET /ws: the WebSocket that carries progress and execution messages."""
        self.jobs.websocket(handler, query)

    def _save(self, png: bytes, node: dict[str, Any]) -> dict[str, str]:
        prefix = str((node.get("inputs") or {}).get("filename_prefix") or "ComfyUI")
        subfolder, _, name = prefix.rpartition("/")
        folder = (self.output_dir / subfolder).resolve()
        if os.path.commonpath([folder, self.output_dir.resolve()]) != str(self.output_dir.resolve()):
            raise HTTPError(
                400,
                {
                    "error": {
                        "type": "invalid_prompt",
                        "message": "Saving outside the output folder is not allowed",
                    }
                },
            )
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            number = next_counter(folder, re.compile(re.escape(name) + r"_(\d+)_\.png$"), 1)
            filename = f"{name}_{number:05d}_.png"
            write_new_file(folder / filename, png)
        return {"filename": filename, "subfolder": subfolder, "type": "output"}

    def view(self, query: dict[str, list[str]], body: bytes) -> Reply:
        filename = query.get("filename", [""])[0]
        subfolder = query.get("subfolder", [""])[0]
        kind = query.get("type", ["output"])[0]
        if (
            not filename
            or filename.startswith("/")
            or ".." in filename
            or kind not in ("output", "input", "temp")
        ):
            return 400, b"", "text/plain"
        root = (self.base_dir / kind).resolve()
        path = (root / subfolder / filename).resolve()
        if os.path.commonpath([path, root]) != str(root) or not path.is_file():
            return 404, b"404: Not Found", "text/plain"
        ctype = "image/png" if path.suffix.lower() == ".png" else "application/octet-stream"
        return 200, path.read_bytes(), ctype

    def system_stats(self) -> dict[str, Any]:
        ram = memory_stats()["ram"]
        return {
            "system": {
                "os": "posix",
                "ram_total": ram["total"],
                "ram_free": ram["free"],
                "comfyui_version": "0.0.0-standin",
                "python_version": sys.version,
                "pytorch_version": "standin",
                "embedded_python": False,
                "argv": self.argv,
            },
            "devices": [self._device(ram)],
        }

    def _device(self, ram: dict[str, int]) -> dict[str, Any]:
        if "--cpu" in self.argv:  # as the real one reports itself with --cpu
            return {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram["total"],
                    "vram_free": ram["free"], "torch_vram_total": ram["total"], "torch_vram_free": ram["free"]}
        return {
            "name": "cuda:0 Stand-in GPU",
            "type": "cuda",
            "index": 0,
            "vram_total": VRAM_TOTAL,
            "vram_free": VRAM_TOTAL,
            "torch_vram_total": VRAM_TOTAL,
            "torch_vram_free": VRAM_TOTAL,
        }

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply | None:
        if method == "GET":
            if path == "/":
                return html_reply(self.title)
            if path == "/system_stats":
                return json_reply(self.system_stats())
            if path == "/object_info":
                return json_reply(self.object_info())
            if path.startswith("/object_info/"):
                info = self.object_info()
                name = path.removeprefix("/object_info/")
                return json_reply({name: info[name]} if name in info else {})
            if path == "/models":
                return json_reply(list(self.folders))
            if path.startswith("/models/"):
                folder = path.removeprefix("/models/")
                return (
                    json_reply(self.list_folder(folder))
                    if folder in self.folders
                    else (404, b"404: Not Found", "text/plain")
                )
            if path == "/history":
                with self.lock:
                    return json_reply(dict(self.history))
            if path.startswith("/history/"):
                prompt_id = path.removeprefix("/history/")
                with self.lock:
                    entry = self.history.get(prompt_id)
                return json_reply({prompt_id: entry} if entry else {})
            if path == "/view":
                return self.view(query, body)
            if path == "/embeddings":
                return json_reply([os.path.splitext(n)[0] for n in self.list_folder("embeddings")])
        return self.jobs.handle(method, path, query, body)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0
