"""What kind of model a file is, and which web UI folder it goes to.

The kind comes from `--kind`, else from a folder name on the file's path (`Lora`, `Stable-diffusion`,
`checkpoints`, …, as A1111, Forge, ComfyUI and ai-dock name them), else from the file name and size:
a tiny file is an embedding, a name with `control`, `vae` or `lora` says so, a small `.pth` is an upscaler, a
safetensors file over 1.5 GB is a checkpoint and one under 1 GB a LoRA. Between 1 and 1.5 GB (ControlNet
and SDXL-VAE-sized files) the answer is "ask the user".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

KINDS = ("checkpoint", "lora", "vae", "embedding", "controlnet", "upscaler")
MODEL_EXTENSIONS = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf"})

GB = 1_000_000_000
MB = 1_000_000

FOLDER_KINDS = {
    "stable-diffusion": "checkpoint", "checkpoints": "checkpoint", "checkpoint": "checkpoint", "ckpt": "checkpoint",
    "lora": "lora", "loras": "lora", "lycoris": "lora", "locon": "lora",
    "vae": "vae",
    "embeddings": "embedding", "embedding": "embedding", "textual_inversion": "embedding",
    "controlnet": "controlnet", "t2i_adapter": "controlnet",
    "esrgan": "upscaler", "realesrgan": "upscaler", "upscale_models": "upscaler", "upscalers": "upscaler",
    "swinir": "upscaler",
}

# Civitai's model.type, as its API spells it.
CIVITAI_TYPES = {
    "checkpoint": "checkpoint", "lora": "lora", "locon": "lora", "dora": "lora", "lycoris": "lora",
    "textualinversion": "embedding", "vae": "vae", "controlnet": "controlnet", "upscaler": "upscaler",
}

_WORDS = re.compile(r"[a-z0-9]+")


def is_model_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in MODEL_EXTENSIONS and not name.startswith(".")


def kind_of_folder(folder: str) -> str | None:
    return FOLDER_KINDS.get(folder.lower())


def infer_kind(name: str, size: int, folders: Sequence[str] = ()) -> str | None:
    """The kind of model file `name` of `size` bytes found under `folders` (outermost first); None when
    unsure. Folder names win over the name, the name over the size."""
    for folder in reversed(folders):
        kind = kind_of_folder(folder)
        if kind:
            return kind
    path = PurePosixPath(name.lower())
    ext, words = path.suffix, set(_WORDS.findall(path.stem))
    if ext not in MODEL_EXTENSIONS:
        return None
    if size < MB or (ext in (".pt", ".bin") and size < 10 * MB):
        return "embedding"
    if any(w.startswith(("control", "t2iadapter")) for w in words):
        return "controlnet"  # ControlNet 1.1 ships as .pth too
    if ext == ".pth":
        return "upscaler" if size < GB else None
    if size < GB and ("vae" in words or path.stem.endswith("vae")):
        return "vae"  # a checkpoint with a baked-in VAE ("…_v51VAE") is far bigger
    if size < 1.5 * GB and any(w.startswith(("lora", "lycoris", "locon")) for w in words):
        return "lora"
    if size > 1.5 * GB:
        return "checkpoint"
    if size < GB:
        return "lora"
    return None


def kind_from_civitai(model_type: str | None) -> str | None:
    return CIVITAI_TYPES.get((model_type or "").lower().replace(" ", ""))


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        from cloudsd.errors import ConfigError

        raise ConfigError(f"unknown model kind {kind!r}.", hint=f"Use one of: {', '.join(KINDS)}.")
    return kind
