"""Web UI profiles: what cloudsd must know about each UI flavour it can run, and which image runs it.

A profile holds the UI's port inside the machine, its health path, its folder layout and refresh calls,
and the name of cloudsd's own image for it. Any other image with sshd and python3 (a provider's own SD
template, say) runs as a "foreign image" with `--image NAME --ui FLAVOR`: cloudsd then relies on the
flavour's port, health path and folders, and passes CLOUDSD_UI_FLAVOR and CLOUDSD_UI_PORT to the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cloudsd.errors import ConfigError

DEFAULT_REGISTRY = "ghcr.io/cloudsd"
DEFAULT_CUDA = "12.4"  # host driver >= 550: every GPU a cloud rents today except Blackwell
BLACKWELL_CUDA = "12.8"  # host driver >= 570: the RTX 50 series and other Blackwell GPUs need it
CUDA_VARIANTS = (DEFAULT_CUDA, BLACKWELL_CUDA)
# GPUs whose kernels (sm_100, sm_120) exist only in PyTorch wheels built for CUDA >= 12.8.
_BLACKWELL = re.compile(r"\bRTX\s*50[5-9]0\b|blackwell|\bG?B[12]00\b|\bB300\b", re.IGNORECASE)
_CUDA_TAG = re.compile(r"-cu(\d{2,3})$")


@dataclass(frozen=True)
class UIProfile:
    """What cloudsd knows of one web UI: its port, health check and folders on the machine."""

    name: str
    title: str
    internal_port: int  # where the UI listens on 127.0.0.1 inside the machine
    health_path: str  # answers 200 once the UI is really ready
    data_dir: str  # base of the model folders and outputs on the machine
    model_dirs: dict[str, str] = field(default_factory=dict)  # kind -> folder relative to data_dir
    output_dir: str = "outputs"
    refresh_calls: tuple[str, ...] = ()  # POST paths that make the UI rescan its model folders
    image_name: str = ""  # cloudsd's image for this UI: <registry>/<image_name>:<image_version>-cu<XY>
    image_version: str = ""  # the pinned upstream version, as the image tag shows it

    def image(self, registry: str = DEFAULT_REGISTRY, cuda: str = DEFAULT_CUDA) -> str:
        """cloudsd's image for this UI and CUDA variant, e.g. ghcr.io/cloudsd/a1111:1.10.1-cu124."""
        if cuda not in CUDA_VARIANTS:
            raise ConfigError(f"no cloudsd image for CUDA {cuda}.", hint=f"Choose {' or '.join(CUDA_VARIANTS)}.")
        return f"{registry.rstrip('/')}/{self.image_name}:{self.image_version}-cu{cuda.replace('.', '')}"

    def machine_env(self) -> dict[str, str]:
        """What the machine's boot layer needs to start this UI on the right port (images/ui/start)."""
        return {"CLOUDSD_UI_FLAVOR": self.name, "CLOUDSD_UI_PORT": str(self.internal_port)}


A1111_MODEL_DIRS = {
    "checkpoint": "models/Stable-diffusion",
    "lora": "models/Lora",
    "vae": "models/VAE",
    "embedding": "embeddings",
    "controlnet": "models/ControlNet",
    "upscaler": "models/ESRGAN",
}
A1111_REFRESH = ("/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-vae")

PROFILES: dict[str, UIProfile] = {
    "a1111": UIProfile("a1111", "AUTOMATIC1111", 7860, "/internal/ping", "/workspace/webui", A1111_MODEL_DIRS,
                       "outputs", A1111_REFRESH, "a1111", "1.10.1"),
    "forge": UIProfile("forge", "Forge", 7860, "/internal/ping", "/workspace/webui", A1111_MODEL_DIRS,
                       "outputs", A1111_REFRESH, "forge", "2.0.1-dfdcbab"),
    "comfyui": UIProfile(
        "comfyui", "ComfyUI", 8188, "/system_stats", "/workspace/comfyui",
        {
            "checkpoint": "models/checkpoints",
            "lora": "models/loras",
            "vae": "models/vae",
            "embedding": "models/embeddings",
            "controlnet": "models/controlnet",
            "upscaler": "models/upscale_models",
        },
        "output",
        (),  # ComfyUI rescans a folder when its mtime changes
        "comfyui", "0.3.77",
    ),
}


def profile(name: str) -> UIProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown web UI {name!r}.", hint=f"Choose one of: {', '.join(PROFILES)}.") from None


def needs_cuda_12_8(gpu_name: str | None) -> bool:
    """Whether this GPU needs the CUDA 12.8 image (Blackwell: RTX 5050-5090, RTX PRO 6000, B200 …)."""
    return bool(gpu_name and _BLACKWELL.search(gpu_name))


def image_cuda(image: str) -> str | None:
    """The CUDA version an image's tag names (`…-cu124` -> "12.4"), or None when it names none."""
    match = _CUDA_TAG.search(image.rsplit("/", 1)[-1])
    if not match:
        return None
    digits = match.group(1)
    return f"{digits[:-1]}.{digits[-1]}"


def highest_cuda(*versions: str | None) -> str | None:
    """The highest of some CUDA versions ("12.4" < "12.10"), None if none is given."""
    given = [v for v in versions if v]
    return max(given, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()), default=None)


def image_for_gpu(ui: str, gpu_name: str | None, registry: str = DEFAULT_REGISTRY) -> str:
    """cloudsd's image for `ui` in the CUDA variant this GPU needs (12.8 for Blackwell, else 12.4)."""
    return profile(ui).image(registry, BLACKWELL_CUDA if needs_cuda_12_8(gpu_name) else DEFAULT_CUDA)


def default_image_target(image: str, registry: str = DEFAULT_REGISTRY) -> tuple[str, str] | None:
    """(ui, cuda) when `image` is one of cloudsd's own images under `registry`, else None."""
    for name in PROFILES:
        for cuda in CUDA_VARIANTS:
            if profile(name).image(registry, cuda) == image:
                return name, cuda
    return None
