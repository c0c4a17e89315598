"""The ComfyUI half of the stand-in web UI: /system_stats, /object_info, /models, /prompt, /history, /view."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from standin_common import (
    COMFYUI_FOLDERS,
    VRAM_TOTAL,
    HTTPError,
    Reply,
    html_reply,
    image_size,
    json_reply,
    memory_stats,
    next_counter,
    parse_json,
    png_image,
    write_new_file,
)

COMFY_MODEL_EXTS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


def _node(
    name: str, category: str, required: dict[str, Any], outputs: list[str], out_node: bool = False
) -> dict[str, Any]:
    return {
        "input": {"required": required},
        "input_order": {"required": list(required)},
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": outputs,
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": "nodes",
        "category": category,
        "output_node": out_node,
    }


class ComfyApp:
    """ComfyUI: folder listings are cached and rescanned when a directory's mtime changes; prompts run
    at once and write output/<prefix>_<5 digits>_.png."""

    title = "ComfyUI"

    def __init__(self, base_dir: Path, argv: list[str] | None = None) -> None:
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
        lists = {
            f: self.list_folder(f) for f in ("checkpoints", "loras", "vae", "controlnet", "upscale_models")
        }
        strength = ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]
        nodes = [
            _node(
                "CheckpointLoaderSimple",
                "loaders",
                {"ckpt_name": [lists["checkpoints"]]},
                ["MODEL", "CLIP", "VAE"],
            ),
            _node(
                "LoraLoader",
                "loaders",
                {
                    "model": ["MODEL"],
                    "clip": ["CLIP"],
                    "lora_name": [lists["loras"]],
                    "strength_model": strength,
                    "strength_clip": strength,
                },
                ["MODEL", "CLIP"],
            ),
            _node("VAELoader", "loaders", {"vae_name": [lists["vae"]]}, ["VAE"]),
            _node(
                "ControlNetLoader", "loaders", {"control_net_name": [lists["controlnet"]]}, ["CONTROL_NET"]
            ),
            _node(
                "UpscaleModelLoader", "loaders", {"model_name": [lists["upscale_models"]]}, ["UPSCALE_MODEL"]
            ),
            _node(
                "CLIPTextEncode",
                "conditioning",
                {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]},
                ["CONDITIONING"],
            ),
            _node(
                "EmptyLatentImage",
                "latent",
                {
                    "width": ["INT", {"default": 512}],
                    "height": ["INT", {"default": 512}],
                    "batch_size": ["INT", {"default": 1}],
                },
                ["LATENT"],
            ),
            _node(
                "KSampler",
                "sampling",
                {
                    "model": ["MODEL"],
                    "seed": ["INT", {"default": 0}],
                    "steps": ["INT", {"default": 20}],
                    "positive": ["CONDITIONING"],
                    "negative": ["CONDITIONING"],
                    "latent_image": ["LATENT"],
                },
                ["LATENT"],
            ),
            _node("VAEDecode", "latent", {"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
            _node(
                "SaveImage",
                "image",
                {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                [],
                True,
            ),
        ]
        return {n["name"]: n for n in nodes}

    def validate(self, graph: dict[str, Any]) -> dict[str, Any]:
        checks = {
            "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
            "LoraLoader": ("lora_name", "loras"),
            "VAELoader": ("vae_name", "vae"),
        }
        errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            check = checks.get(node.get("class_type", "")) if isinstance(node, dict) else None
            if check is None:
                continue
            field, folder = check
            value = (node.get("inputs") or {}).get(field)
            choices = self.list_folder(folder)
            if value not in choices:
                error = {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{field}: '{value}' not in {choices}",
                    "extra_info": {"input_name": field, "received_value": value},
                }
                errors[node_id] = {
                    "errors": [error],
                    "dependent_outputs": [],
                    "class_type": node["class_type"],
                }
        return errors

    def prompt(self, query: dict[str, list[str]], body: bytes) -> Reply:
        data = parse_json(body)
        graph = data.get("prompt")
        if not isinstance(graph, dict):
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "", "extra_info": {}}
            return json_reply({"error": error, "node_errors": {}}, 400)
        savers = {
            k: n for k, n in graph.items() if isinstance(n, dict) and n.get("class_type") == "SaveImage"
        }
        if not savers:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return json_reply({"error": error, "node_errors": []}, 400)
        node_errors = self.validate(graph)
        if node_errors:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }
            return json_reply({"error": error, "node_errors": node_errors}, 400)
        inputs = [n.get("inputs") or {} for n in graph.values() if isinstance(n, dict)]
        text = "\n".join(str(i["text"]) for i in inputs if isinstance(i.get("text"), str))
        seed = next(
            (i.get("seed", i.get("noise_seed")) for i in inputs if "seed" in i or "noise_seed" in i), 0
        )
        size = next((i for i in inputs if "width" in i and "height" in i), {})
        png = png_image(*image_size(size), f"{text}\x00{seed}", {"prompt": json.dumps(graph)})
        outputs = {node_id: {"images": [self._save(png, n)]} for node_id, n in savers.items()}
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        with self.lock:
            number = self.number
            self.number += 1
            self.history[prompt_id] = {
                "prompt": [number, prompt_id, graph, {"client_id": data.get("client_id")}, list(savers)],
                "outputs": outputs,
                "status": {"status_str": "success", "completed": True, "messages": []},
                "meta": {k: {"node_id": k, "display_node": k} for k in savers},
            }
        return json_reply({"prompt_id": prompt_id, "number": number, "node_errors": {}})

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
            if path == "/queue":
                return json_reply({"queue_running": [], "queue_pending": []})
            if path == "/view":
                return self.view(query, body)
            if path == "/embeddings":
                return json_reply([os.path.splitext(n)[0] for n in self.list_folder("embeddings")])
        if method == "POST" and path == "/prompt":
            return self.prompt(query, body)
        return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0
