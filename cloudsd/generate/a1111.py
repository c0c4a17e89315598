"""The A1111 / Forge API (`/sdapi/v1`): request bodies, name resolution and error text. Pure functions.

Field names and defaults follow modules/api/models.py and modules/processing.py of A1111 v1.10.1:
`StableDiffusionProcessingTxt2Img` fields plus `send_images` (default true) and `save_images` (default false;
cloudsd sets it so every picture is also on the machine). The response is
`{"images": [base64 PNG], "parameters": {...}, "info": "<JSON: seed, all_seeds, infotexts, ...>"}`.
Errors come back as `{"error": type, "detail": ..., "body": ..., "errors": str(exc)}` (api_middleware).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cloudsd.errors import ConfigError
from cloudsd.generate.names import unknown
from cloudsd.generate.request import GenerateRequest, Lora, prompt_loras


@dataclass(frozen=True)
class Catalog:
    """What the machine's UI offers, from its list endpoints."""

    checkpoints: list[dict[str, Any]]  # /sdapi/v1/sd-models
    loras: list[dict[str, Any]]  # /sdapi/v1/loras
    samplers: list[dict[str, Any]]  # /sdapi/v1/samplers
    schedulers: list[dict[str, Any]]  # /sdapi/v1/schedulers
    upscalers: list[str]  # /sdapi/v1/upscalers names + /sdapi/v1/latent-upscale-modes names
    current_checkpoint: str | None  # /sdapi/v1/options sd_model_checkpoint


@dataclass(frozen=True)
class Resolved:
    """The request in the machine's own names."""

    checkpoint_title: str | None  # switch to this one first when not loaded
    loras: tuple[Lora, ...]
    sampler: str
    scheduler: str | None
    upscaler: str | None


def with_synced_hashes(checkpoints: list[dict[str, Any]], synced: dict[str, str]) -> list[dict[str, Any]]:
    """The UI's checkpoints, each one it has not hashed yet (A1111 hashes a checkpoint when it first loads it:
    until then `hash` and `sha256` are null and the title has no ` [hash]`) given the short hash cloudsd
    verified when it put that file on the machine, so `--checkpoint <hash>` finds it."""
    return [{**m, "hash": synced[str(m.get("filename"))]} if not m.get("hash") and str(m.get("filename")) in synced
            else m for m in checkpoints]


def checkpoint_names(model: dict[str, Any]) -> set[str]:
    title = str(model.get("title") or "")
    filename = str(model.get("filename") or "").replace("\\", "/").rsplit("/", 1)[-1]
    names = {title, title.rsplit(" [", 1)[0], str(model.get("model_name") or ""), filename,
             filename.rsplit(".", 1)[0], str(model.get("hash") or ""), str(model.get("sha256") or "")}
    return {n.lower() for n in names if n}


def resolve(request: GenerateRequest, catalog: Catalog) -> Resolved:
    """Every name in the request matched to the machine's, or ConfigError with the closest ones."""
    title = None
    if request.checkpoint:
        wanted = request.checkpoint.lower()
        match = next((m for m in catalog.checkpoints if wanted in checkpoint_names(m)), None)
        if match is None:
            raise unknown("checkpoint", request.checkpoint,
                          [str(m.get("model_name") or m.get("title")) for m in catalog.checkpoints], "--checkpoint")
        title = str(match["title"])
    elif not catalog.checkpoints:
        raise ConfigError("the machine has no checkpoint; nothing was generated.",
                          hint="Sync one first: `cloudsd sync models NAME model.safetensors`.")
    loras = []
    by_name: dict[str, str] = {}
    for item in catalog.loras:
        for key in ("name", "alias"):
            if item.get(key):
                by_name.setdefault(str(item[key]).lower(), str(item["name"]))
    for lora in request.all_loras:
        name = by_name.get(lora.name.lower())
        if name is None:
            raise unknown("LoRA", lora.name, [str(i["name"]) for i in catalog.loras], "--lora")
        loras.append(Lora(name, lora.weight))
    sampler = _pick("sampler", request.sampler, catalog.samplers, "--sampler")
    scheduler = (_pick("scheduler", request.scheduler, catalog.schedulers, "--scheduler", also=("label",))
                 if request.scheduler else None)
    upscaler = None
    if request.hires_scale:
        lowered = {u.lower(): u for u in catalog.upscalers}
        upscaler = lowered.get(request.upscaler.lower())
        if upscaler is None:
            raise unknown("upscaler", request.upscaler, catalog.upscalers, "--upscaler")
    return Resolved(title, tuple(loras), sampler, scheduler, upscaler)


def _pick(kind: str, wanted: str, items: list[dict[str, Any]], flag: str, also: tuple[str, ...] = ()) -> str:
    lowered = wanted.lower()
    for item in items:
        names = [item.get("name"), *(item.get("aliases") or []), *(item.get(k) for k in also)]
        if lowered in {str(n).lower() for n in names if n}:
            return str(item["name"])
    raise unknown(kind, wanted, [str(i["name"]) for i in items], flag)


def prompt_with_loras(prompt: str, loras: tuple[Lora, ...]) -> str:
    """The prompt with a `<lora:NAME:WEIGHT>` tag for every LoRA not already written in it."""
    present = {lora.name.lower() for lora in prompt_loras(prompt)}
    tags = [f"<lora:{lora.name}:{lora.weight:g}>" for lora in loras if lora.name.lower() not in present]
    return ", ".join([prompt, *tags]) if tags else prompt


def payload(request: GenerateRequest, resolved: Resolved, *, seed: int, batch_size: int,
            init_image: bytes | None = None) -> dict[str, Any]:
    """The body of one POST /sdapi/v1/txt2img (or img2img with `init_image`): `batch_size` pictures,
    seeds `seed`, `seed+1`, …, saved on the machine too."""
    body: dict[str, Any] = {
        "prompt": prompt_with_loras(request.prompt, resolved.loras),
        "negative_prompt": request.negative,
        "seed": seed,
        "steps": request.steps,
        "cfg_scale": request.cfg,
        "width": request.width,
        "height": request.height,
        "sampler_name": resolved.sampler,
        "batch_size": batch_size,
        "n_iter": 1,
        "save_images": True,
        "send_images": True,
    }
    if resolved.scheduler:
        body["scheduler"] = resolved.scheduler
    if init_image is not None:
        body["init_images"] = [base64.b64encode(init_image).decode()]
        body["denoising_strength"] = request.denoise_value
    elif request.hires_scale:
        body.update({"enable_hr": True, "hr_scale": request.hires_scale, "hr_upscaler": resolved.upscaler,
                     "hr_second_pass_steps": request.hires_steps, "denoising_strength": request.denoise_value})
    return body


def parse_response(body: Any) -> tuple[list[bytes], list[int], list[str]]:
    """(PNG bytes, seeds, infotexts) of a txt2img/img2img answer."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise ValueError(f"unexpected answer: {str(body)[:200]}")
    images = [base64.b64decode(str(i).split(",", 1)[-1]) for i in body["images"]]
    try:
        info = json.loads(body.get("info") or "{}")
    except ValueError:
        info = {}
    seeds = [int(s) for s in info.get("all_seeds") or []]
    texts = [str(t) for t in info.get("infotexts") or []]
    return images, seeds, texts


def error_text(status: int, body: Any) -> str:
    """The UI's own words for a failed request, one line."""
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("errors", "detail", "error") if body.get(k)]
        text = parts[0] if parts else json.dumps(body)[:300]
    else:
        text = str(body)[:300]
    return f"HTTP {status}: {' '.join(text.split())}"
