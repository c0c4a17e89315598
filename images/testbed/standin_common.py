"""Shared pieces of the stand-in web UI: the cloudsd folder layout and ports, replies, PNG rendering."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The folder layout and ports every cloudsd image uses (see images/boot/README.md).
A1111_PORT = 7860
COMFYUI_PORT = 8188
A1111_DATA_DIR = "/workspace/webui"
COMFYUI_BASE_DIR = "/workspace/comfyui"
A1111_FOLDERS = {
    "checkpoints": "models/Stable-diffusion",
    "loras": "models/Lora",
    "vae": "models/VAE",
    "embeddings": "embeddings",
    "controlnet": "models/ControlNet",
    "upscale_models": "models/ESRGAN",
    "outputs": "outputs",
}
COMFYUI_FOLDERS = {
    "checkpoints": "models/checkpoints",
    "loras": "models/loras",
    "vae": "models/vae",
    "embeddings": "models/embeddings",
    "controlnet": "models/controlnet",
    "upscale_models": "models/upscale_models",
    "outputs": "output",
}
ACTIVITY_FILE = "/run/cloudsd/ui-activity"
STEP_FILE = "/run/cloudsd/standin-step-s"  # seconds per sampling step at 512x512; tests write it to slow jobs


def step_seconds(pixels: int) -> float:
    """How long one sampling step of `pixels` takes: STEP_FILE, else $CLOUDSD_STANDIN_STEP_S, else 0.005 s at
    512x512, scaled by the pixel count."""
    raw = os.environ.get("CLOUDSD_STANDIN_STEP_S")
    try:
        raw = Path(STEP_FILE).read_text().strip() or raw
    except OSError:
        pass
    try:
        per = float(raw) if raw else 0.005
    except ValueError:
        per = 0.005
    return per * pixels / (512 * 512)

Reply = tuple[int, bytes, str]  # status, body, content type
Route = Callable[[dict[str, list[str]], bytes], Reply]


class HTTPError(Exception):
    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(str(payload))
        self.status = status
        self.payload = payload


def json_reply(obj: Any, status: int = 200) -> Reply:
    return status, json.dumps(obj).encode(), "application/json"


def html_reply(title: str) -> Reply:
    page = f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return 200, page.encode(), "text/html; charset=utf-8"


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise HTTPError(422, {"detail": f"invalid JSON: {exc}"}) from exc
    if not isinstance(data, dict):
        raise HTTPError(422, {"detail": "expected a JSON object"})
    return data


# -- images -----------------------------------------------------------------------------------------------


def png_image(width: int, height: int, key: str, text: dict[str, str] | None = None) -> bytes:
    """An RGB PNG whose pixels follow from `key` (prompt and seed), with optional tEXt chunks."""
    d = hashlib.sha256(key.encode()).digest()
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 for every row
        for x in range(width):
            row += bytes(((d[0] + x * (d[3] | 1)) & 255, (d[1] + y * (d[4] | 1)) & 255, (d[2] + x * y) & 255))
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for k, v in (text or {}).items():
        out += chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1", "replace"))
    return out + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b"")


def image_size(request: dict[str, Any]) -> tuple[int, int]:
    """A latent-sized picture: 512x512 asked gives 64x64."""
    w, h = int(request.get("width", 512)), int(request.get("height", 512))
    return max(8, min(w // 8, 256)), max(8, min(h // 8, 256))


def next_counter(folder: Path, pattern: re.Pattern[str], start: int) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("*") if (m := pattern.match(p.name))]
    return max(numbers, default=start - 1) + 1


def write_new_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


VRAM_TOTAL = 24 << 30


def memory_stats() -> dict[str, Any]:
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = info.get("MemTotal", 0)
    free = info.get("MemAvailable", 0)
    vram = {"free": VRAM_TOTAL, "used": 0, "total": VRAM_TOTAL}
    return {
        "ram": {"free": free, "used": total - free, "total": total},
        "cuda": {
            "system": vram,
            "active": {"current": 0, "peak": 0},
            "allocated": {"current": 0, "peak": 0},
            "reserved": {"current": 0, "peak": 0},
            "inactive": {"current": 0, "peak": 0},
            "events": {"retries": 0, "oom": 0},
        },
    }
