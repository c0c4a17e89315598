"""What the user asked `generate` for, as plain data, and the parsers for the option forms and prompts files.

A request is UI-neutral: A1111-style names (sampler "DPM++ 2M", scheduler "Karras"), sizes in pixels.
`<lora:NAME:WEIGHT>` in a prompt is the same as `--lora NAME:WEIGHT`; both families get every LoRA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudsd.errors import ConfigError

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-+]?[0-9]*\.?[0-9]+))?(?::[^>]*)?>")
SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Lora:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt and how to render it. `seed` None: a random one (printed). `count` pictures in total,
    `batch_size` at a time on the GPU."""

    prompt: str
    negative: str = ""
    checkpoint: str | None = None
    loras: tuple[Lora, ...] = ()
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "DPM++ 2M"
    scheduler: str | None = None  # "Karras"; None: the sampler's default
    width: int = 512
    height: int = 512
    seed: int | None = None
    count: int = 1
    batch_size: int = 1
    hires_scale: float | None = None  # a hires-fix pass upscales by this much and samples again
    hires_steps: int = 0  # 0: as many as `steps`
    denoise: float | None = None  # hires or img2img denoising strength; None: 0.5 hires, 0.75 img2img
    upscaler: str = "Latent"
    init_image: Path | None = None  # img2img from this picture

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["loras"] = [{"name": lora.name, "weight": lora.weight} for lora in self.loras]
        data["init_image"] = str(self.init_image) if self.init_image else None
        return data

    @property
    def all_loras(self) -> tuple[Lora, ...]:
        """The `--lora` ones and those written `<lora:…>` in the prompt, first mention wins."""
        found: dict[str, Lora] = {}
        for lora in (*self.loras, *prompt_loras(self.prompt)):
            found.setdefault(lora.name, lora)
        return tuple(found.values())

    @property
    def denoise_value(self) -> float:
        if self.denoise is not None:
            return self.denoise
        return 0.75 if self.init_image else 0.5

    @property
    def hires_size(self) -> tuple[int, int] | None:
        if not self.hires_scale:
            return None
        return _multiple_of_8(self.width * self.hires_scale), _multiple_of_8(self.height * self.hires_scale)

    def batches(self) -> list[int]:
        """How many pictures each job makes: `count` split into `batch_size` pieces."""
        full, rest = divmod(self.count, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])


def _multiple_of_8(value: float) -> int:
    return max(8, int(value) // 8 * 8)


def prompt_loras(prompt: str) -> list[Lora]:
    return [Lora(m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in LORA_TAG.finditer(prompt)]


def strip_lora_tags(prompt: str) -> str:
    """The prompt without `<lora:…>` tags (ComfyUI applies LoRAs as loader nodes, not as text)."""
    return " ".join(LORA_TAG.sub(" ", prompt).split()).strip(" ,")


def parse_lora(text: str) -> Lora:
    """`NAME` or `NAME:WEIGHT` (`<lora:NAME:WEIGHT>` too)."""
    text = text.strip()
    match = LORA_TAG.fullmatch(text)
    if match:
        return prompt_loras(text)[0]
    name, sep, weight = text.rpartition(":")
    if not sep:
        name, weight = text, ""
    if not name:
        raise ConfigError(f"--lora {text!r}: no name.", hint="Write NAME or NAME:WEIGHT, e.g. Ashe2-8:0.9.")
    try:
        return Lora(name, float(weight) if weight else 1.0)
    except ValueError:
        raise ConfigError(f"--lora {text!r}: the weight {weight!r} is not a number.",
                          hint="Write NAME or NAME:WEIGHT, e.g. Ashe2-8:0.9.") from None


def parse_size(text: str) -> tuple[int, int]:
    match = SIZE.match(str(text))
    if not match:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT.", hint="Write it like 512x768.")
    width, height = int(match.group(1)), int(match.group(2))
    if not (64 <= width <= 8192 and 64 <= height <= 8192) or width % 8 or height % 8:
        raise ConfigError(f"size {text!r}: each side must be a multiple of 8 between 64 and 8192.",
                          hint="Try 512x512, 512x768 or 1024x1024.")
    return width, height


def check(request: GenerateRequest) -> GenerateRequest:
    """Refuse values no UI accepts, each in one line with what to write instead."""
    problems = []
    if not request.prompt.strip():
        problems.append(("the prompt is empty", "Give a prompt, e.g. 'a lighthouse at dusk'."))
    if not 1 <= request.steps <= 150:
        problems.append((f"--steps {request.steps} is outside 1-150", "Most pictures need 20-40 steps."))
    if not 1 <= request.count <= 10000 or not 1 <= request.batch_size <= 64:
        problems.append(("--count must be 1 or more and --batch-size 1-64", "e.g. --count 8 --batch-size 2."))
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        problems.append((f"--seed {request.seed} is outside 0-{MAX_SEED}", "Leave it out for a random seed."))
    if request.hires_scale is not None and not 1.0 < request.hires_scale <= 4.0:
        problems.append((f"--hires {request.hires_scale:g} is outside 1-4", "A hires fix of 1.5 or 2 is usual."))
    if request.denoise is not None and not 0.0 <= request.denoise <= 1.0:
        problems.append((f"--denoise {request.denoise:g} is outside 0-1", "0.4-0.6 keeps the composition."))
    if request.init_image is not None and not request.init_image.is_file():
        problems.append((f"--init-image {request.init_image} is not a file", "Give the path of a PNG or JPEG."))
    if not 0.0 <= request.cfg <= 30.0:
        problems.append((f"--cfg {request.cfg:g} is outside 0-30", "5-8 is usual."))
    if problems:
        what, hint = problems[0]
        raise ConfigError(what + ".", hint=hint)
    return request


# -- prompts files -------------------------------------------------------------------------------------------
OVERRIDES = {"negative": str, "checkpoint": str, "steps": int, "cfg": float, "sampler": str, "scheduler": str,
             "seed": int, "count": int, "batch_size": int, "hires": float, "hires_steps": int, "denoise": float,
             "upscaler": str, "size": str, "lora": list}


def load_prompts(path: Path, base: GenerateRequest) -> list[GenerateRequest]:
    """One prompt a line (blank lines and `#` comments skipped), or YAML: a list whose items are a prompt
    string or a mapping with `prompt` and any of the per-item overrides (`steps`, `size`, `lora`, …)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the prompts file {path} ({exc.strerror}).") from None
    stripped = text.lstrip()
    if stripped.startswith("-") or stripped.startswith("prompts:"):
        return _yaml_prompts(path, text, base)
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"the prompts file {path} has no prompts.", hint="Write one prompt a line.")
    return [check(replace(base, prompt=p)) for p in prompts]


def _yaml_prompts(path: Path, text: str, base: GenerateRequest) -> list[GenerateRequest]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a list of prompts.", hint="Each item: a string, or {prompt: …, steps: …}.")
    out = []
    for number, item in enumerate(items, start=1):
        where = f"{path} item {number}"
        if isinstance(item, str):
            out.append(check(replace(base, prompt=item)))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ConfigError(f"{where}: needs a `prompt`.", hint="Write `- prompt: a lighthouse at dusk`.")
        out.append(check(apply_overrides(base, item, where)))
    return out


def apply_overrides(base: GenerateRequest, item: dict[str, Any], where: str) -> GenerateRequest:
    import difflib

    changes: dict[str, Any] = {"prompt": item["prompt"]}
    for key, value in item.items():
        if key == "prompt":
            continue
        if key not in OVERRIDES:
            close = difflib.get_close_matches(key, list(OVERRIDES), n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"Known keys: prompt, {', '.join(OVERRIDES)}."
            raise ConfigError(f"{where}: unknown key {key!r}.", hint=hint)
        try:
            if key == "size":
                changes["width"], changes["height"] = parse_size(str(value))
            elif key == "lora":
                values = value if isinstance(value, list) else [value]
                changes["loras"] = tuple(parse_lora(str(v)) for v in values)
            elif key == "hires":
                changes["hires_scale"] = float(value)
            else:
                changes[key] = OVERRIDES[key](value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}: {value!r} is not a {OVERRIDES[key].__name__}.") from None
    return replace(base, **changes)


@dataclass
class Picture:
    """One picture that arrived: where it is here and on the machine, and how it was made."""

    path: Path
    seed: int
    prompt: str
    job: int
    index_in_job: int
    remote_rel: str | None = None  # its name under the UI's outputs folder, once known
    parameters: str = ""  # the UI's own text (A1111 infotext), as embedded in the PNG
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "seed": self.seed, "prompt": self.prompt, "remote": self.remote_rel,
                "parameters": self.parameters}
