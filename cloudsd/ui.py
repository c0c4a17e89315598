"""Web UI profiles: what cloudsd must know about each UI flavour it can run."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudsd.errors import ConfigError


@dataclass(frozen=True)
class UIProfile:
    name: str
    title: str
    internal_port: int  # where the UI listens on 127.0.0.1 inside the machine
    health_path: str  # answers 200 once the UI is really ready
    data_dir: str  # base of the model folders and outputs on the machine
    model_dirs: dict[str, str] = field(default_factory=dict)  # kind -> folder relative to data_dir
    output_dir: str = "outputs"
    refresh_calls: tuple[str, ...] = ()  # POST paths that make the UI rescan its model folders


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
                       "outputs", A1111_REFRESH),
    "forge": UIProfile("forge", "Forge", 7860, "/internal/ping", "/workspace/webui", A1111_MODEL_DIRS,
                       "outputs", A1111_REFRESH),
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
    ),
}


def profile(name: str) -> UIProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown web UI {name!r}.", hint=f"Choose one of: {', '.join(PROFILES)}.") from None
