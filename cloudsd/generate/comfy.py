"""The ComfyUI API: the workflow graph cloudsd builds, name resolution, and reading /history. Pure functions.

The graph is ComfyUI's API format (`POST /prompt {"prompt": {id: {"class_type", "inputs"}}, "client_id"}`),
with node inputs as nodes.py declares them (ComfyUI v0.3.77): CheckpointLoaderSimple → LoraLoader per LoRA
(model and clip chained) → CLIPTextEncode (positive, negative) → EmptyLatentImage (or LoadImage + VAEEncode
for img2img) → KSampler → [hires fix: LatentUpscaleBy, or VAEDecode + UpscaleModelLoader +
ImageUpscaleWithModel + ImageScale + VAEEncode, then a second KSampler] → VAEDecode → SaveImage.
A link is `[node_id, output_index]`. Names are A1111-style on the way in and ComfyUI's own on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudsd.errors import ConfigError
from cloudsd.generate.names import unknown
from cloudsd.generate.request import GenerateRequest, Lora, strip_lora_tags

# A1111 sampler and scheduler names as ComfyUI spells them (comfy/samplers.py KSAMPLER_NAMES, SCHEDULER_NAMES).
SAMPLERS = {
    "euler": "euler", "euler a": "euler_ancestral", "heun": "heun", "lms": "lms", "dpm2": "dpm_2",
    "dpm2 a": "dpm_2_ancestral", "dpm++ 2s a": "dpmpp_2s_ancestral", "dpm++ 2m": "dpmpp_2m",
    "dpm++ sde": "dpmpp_sde", "dpm++ 2m sde": "dpmpp_2m_sde", "dpm++ 3m sde": "dpmpp_3m_sde",
    "dpm fast": "dpm_fast", "dpm adaptive": "dpm_adaptive", "ddim": "ddim", "unipc": "uni_pc", "lcm": "lcm",
    "ddpm": "ddpm", "deis": "deis", "ipndm": "ipndm",
}
SCHEDULERS = {"automatic": "normal", "uniform": "normal", "karras": "karras", "exponential": "exponential",
              "sgm uniform": "sgm_uniform", "simple": "simple", "ddim": "ddim_uniform", "beta": "beta",
              "normal": "normal"}
LATENT_UPSCALE = {"latent": "nearest-exact", "latent (nearest-exact)": "nearest-exact",
                  "latent (bilinear)": "bilinear", "latent (area)": "area", "latent (bicubic)": "bicubic",
                  "latent (bislerp)": "bislerp"}
SAVE_PREFIX = "cloudsd"


@dataclass(frozen=True)
class Catalog:
    """The choices ComfyUI offers, from GET /object_info."""

    checkpoints: list[str]
    loras: list[str]
    samplers: list[str]
    schedulers: list[str]
    upscale_models: list[str]
    latent_methods: list[str]

    @classmethod
    def from_object_info(cls, info: dict[str, Any]) -> Catalog:
        def choices(node: str, field: str) -> list[str]:
            try:
                value = info[node]["input"]["required"][field][0]
            except (KeyError, IndexError, TypeError):
                return []
            return [str(v) for v in value] if isinstance(value, list) else []

        return cls(choices("CheckpointLoaderSimple", "ckpt_name"), choices("LoraLoader", "lora_name"),
                   choices("KSampler", "sampler_name"), choices("KSampler", "scheduler"),
                   choices("UpscaleModelLoader", "model_name"), choices("LatentUpscaleBy", "upscale_method"))


@dataclass(frozen=True)
class Resolved:
    checkpoint: str
    loras: tuple[Lora, ...]
    sampler: str
    scheduler: str
    upscale_model: str | None  # hires fix through an upscale model
    latent_method: str | None  # hires fix in latent space


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _file(wanted: str, files: list[str]) -> str | None:
    lowered = wanted.lower()
    for name in files:
        if lowered in (name.lower(), _stem(name).lower(), name.lower().rsplit(".", 1)[0]):
            return name
    return None


def resolve(request: GenerateRequest, catalog: Catalog) -> Resolved:
    if request.checkpoint:
        checkpoint = _file(request.checkpoint, catalog.checkpoints)
        if checkpoint is None:
            error = unknown("checkpoint", request.checkpoint, [_stem(c) for c in catalog.checkpoints],
                            "--checkpoint")
            if len(request.checkpoint) == 10 and all(c in "0123456789abcdef" for c in request.checkpoint.lower()):
                error.hint = (error.hint or "") + " ComfyUI lists no hashes: give the file name."
            raise error
    elif catalog.checkpoints:
        checkpoint = catalog.checkpoints[0]
    else:
        raise ConfigError("the machine has no checkpoint; nothing was generated.",
                          hint="Sync one first: `cloudsd sync models NAME model.safetensors`.")
    loras = []
    for lora in request.all_loras:
        found = _file(lora.name, catalog.loras)
        if found is None:
            raise unknown("LoRA", lora.name, [_stem(name) for name in catalog.loras], "--lora")
        loras.append(Lora(found, lora.weight))
    sampler = _choice(SAMPLERS, request.sampler, catalog.samplers, "sampler", "--sampler")
    scheduler = _choice(SCHEDULERS, request.scheduler or "normal", catalog.schedulers, "scheduler", "--scheduler")
    upscale_model = latent = None
    if request.hires_scale and not request.init_image:
        latent = LATENT_UPSCALE.get(request.upscaler.lower())
        if latent is None and request.upscaler in catalog.latent_methods:
            latent = request.upscaler
        if latent is None:
            upscale_model = _file(request.upscaler, catalog.upscale_models)
            if upscale_model is None:
                raise unknown("upscaler", request.upscaler,
                              ["Latent", *(_stem(m) for m in catalog.upscale_models)], "--upscaler")
        elif catalog.latent_methods and latent not in catalog.latent_methods:
            raise unknown("latent upscale method", request.upscaler, catalog.latent_methods, "--upscaler")
    return Resolved(checkpoint, tuple(loras), sampler, scheduler, upscale_model, latent)


def _choice(aliases: dict[str, str], wanted: str, choices: list[str], kind: str, flag: str) -> str:
    name = aliases.get(wanted.lower(), wanted)
    if name in choices or not choices:
        return name
    lowered = {c.lower(): c for c in choices}
    if wanted.lower() in lowered:
        return lowered[wanted.lower()]
    known = [alias for alias, name in aliases.items() if name in choices]  # A1111 names it would accept
    raise unknown(kind, wanted, [*choices, *known], flag)


def workflow(request: GenerateRequest, resolved: Resolved, *, seed: int, batch_size: int,
             init_image: str | None = None) -> dict[str, Any]:
    """The API-format graph for one job of `batch_size` pictures. `init_image` is the name ComfyUI gave the
    uploaded picture (POST /upload/image)."""
    graph: dict[str, Any] = {}

    def add(class_type: str, **inputs: Any) -> str:
        node_id = str(len(graph) + 1)
        graph[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    checkpoint = add("CheckpointLoaderSimple", ckpt_name=resolved.checkpoint)
    model, clip, vae = [checkpoint, 0], [checkpoint, 1], [checkpoint, 2]
    for lora in resolved.loras:
        node = add("LoraLoader", model=model, clip=clip, lora_name=lora.name, strength_model=lora.weight,
                   strength_clip=lora.weight)
        model, clip = [node, 0], [node, 1]
    positive = add("CLIPTextEncode", text=strip_lora_tags(request.prompt), clip=clip)
    negative = add("CLIPTextEncode", text=request.negative, clip=clip)
    if init_image is not None:
        loaded = add("LoadImage", image=init_image)
        pixels: list[Any] = [loaded, 0]
        if batch_size > 1:
            pixels = [add("RepeatImageBatch", image=pixels, amount=batch_size), 0]
        latent = [add("VAEEncode", pixels=pixels, vae=vae), 0]
        denoise = request.denoise_value
    else:
        latent = [add("EmptyLatentImage", width=request.width, height=request.height, batch_size=batch_size), 0]
        denoise = 1.0
    sampled = add("KSampler", model=[model[0], model[1]], seed=seed, steps=request.steps, cfg=request.cfg,
                  sampler_name=resolved.sampler, scheduler=resolved.scheduler, positive=[positive, 0],
                  negative=[negative, 0], latent_image=latent, denoise=denoise)
    samples = [sampled, 0]
    size = request.hires_size
    if size is not None and init_image is None:
        if resolved.latent_method:
            upscaled = add("LatentUpscaleBy", samples=samples, upscale_method=resolved.latent_method,
                           scale_by=request.hires_scale)
            hires_latent = [upscaled, 0]
        else:
            decoded = add("VAEDecode", samples=samples, vae=vae)
            loader = add("UpscaleModelLoader", model_name=resolved.upscale_model)
            by_model = add("ImageUpscaleWithModel", upscale_model=[loader, 0], image=[decoded, 0])
            scaled = add("ImageScale", image=[by_model, 0], upscale_method="lanczos", width=size[0],
                         height=size[1], crop="disabled")
            hires_latent = [add("VAEEncode", pixels=[scaled, 0], vae=vae), 0]
        second = add("KSampler", model=[model[0], model[1]], seed=seed, steps=request.hires_steps or request.steps,
                     cfg=request.cfg, sampler_name=resolved.sampler, scheduler=resolved.scheduler,
                     positive=[positive, 0], negative=[negative, 0], latent_image=hires_latent,
                     denoise=request.denoise_value)
        samples = [second, 0]
    image = add("VAEDecode", samples=samples, vae=vae)
    add("SaveImage", images=[image, 0], filename_prefix=SAVE_PREFIX)
    return graph


def prompt_error(body: Any) -> str:
    """ComfyUI's words for a refused /prompt (`error` plus each node's errors), one line."""
    if not isinstance(body, dict):
        return str(body)[:300]
    error = body.get("error") or {}
    parts = [str(error.get("message") or error) if isinstance(error, dict) else str(error)]
    if isinstance(error, dict) and error.get("details"):
        parts.append(str(error["details"]))
    nodes = body.get("node_errors") or {}
    if isinstance(nodes, dict):
        for node_id, node in nodes.items():
            for item in node.get("errors") or []:
                parts.append(f"node {node_id} {node.get('class_type', '')}: {item.get('message')}: "
                             f"{item.get('details', '')}")
    return " ".join("; ".join(p for p in parts if p).split())[:600]


@dataclass(frozen=True)
class Outcome:
    """A finished prompt from /history/{id}: its saved images, or why it failed."""

    done: bool
    images: list[dict[str, str]]  # {"filename", "subfolder", "type"}
    error: str | None = None
    error_type: str | None = None
    interrupted: bool = False


def outcome(entry: dict[str, Any] | None) -> Outcome:
    if not entry:
        return Outcome(False, [])
    images = [img for out in (entry.get("outputs") or {}).values() for img in (out.get("images") or [])
              if img.get("type", "output") == "output"]
    status = entry.get("status") or {}
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return Outcome(True, images, str(data.get("exception_message") or "").strip(),
                           str(data.get("exception_type") or ""))
        if kind == "execution_interrupted":
            return Outcome(True, images, interrupted=True)
    done = bool(status.get("completed")) or status.get("status_str") in ("success", "error")
    return Outcome(done, images)
