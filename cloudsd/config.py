"""Settings: one resolver for flag > environment > file > default, that also says where each value came from.

The file is YAML with sections (`timeouts:`, `local:` …); a setting's key is its dotted path
(`timeouts.boot`). Errors point at `file:line` and suggest the closest valid key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cloudsd import paths, values
from cloudsd.durations import parse_duration
from cloudsd.errors import ConfigError
from cloudsd.providers import provider_names
from cloudsd.ui import DEFAULT_REGISTRY

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


def _to_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("expected a duration above zero, e.g. 30m")
    return seconds


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _to_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected a single value")
    return str(value)


def _to_port(value: Any) -> int:
    return values.whole(value, low=1, high=65535, what="a port")


def _to_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    raise ValueError("expected a list")


def _to_fraction(value: Any) -> float:
    return values.number(value, low=0, high=1, low_open=True, what="a share above 0 and at most 1, e.g. 0.8,")


def _choice(*choices: str) -> Callable[[Any], str]:
    return _choice_of(lambda: choices)


def _choice_of(choices: Callable[[], Sequence[str]]) -> Callable[[Any], str]:
    """A converter to one of `choices()`, asked when a value is read (the provider names come from the registry)."""

    def convert(value: Any) -> str:
        text = _to_str(value)
        allowed = choices()
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return convert


def provider_choices() -> list[str]:
    """What `provider` may be: each provider a user may name, or auto (the cheapest of the clouds)."""
    return [*provider_names(), "auto"]


@dataclass(frozen=True)
class Setting:
    """One setting: its default, how a value from a flag, env or file is checked, and where it is read."""

    key: str
    default: Any
    convert: Callable[[Any], Any]
    env: str | None
    help: str
    optional: bool = False  # None is a valid value ("no limit")


SETTINGS: tuple[Setting, ...] = (
    Setting("provider", "local", _choice_of(provider_choices), "CLOUDSD_PROVIDER",
            "where machines run: local (your Docker engine), runpod, vastai, or auto (cheapest of the configured)"),
    Setting("image", None, _to_str, "CLOUDSD_IMAGE",
            "container image with sshd and python3 (none: cloudsd's image for the UI, CUDA 12.8 on Blackwell GPUs)",
            optional=True),
    Setting("registry", DEFAULT_REGISTRY, _to_str, "CLOUDSD_REGISTRY",
            "where cloudsd's own images are pulled from and `cloudsd image push` sends them"),
    Setting("image_pull", "auto", _choice("auto", "never"), "CLOUDSD_IMAGE_PULL",
            "pull a missing image onto the local engine: auto (names with a registry host only) or never"),
    Setting("image_source", "auto", _choice("auto", "prebuilt", "install"), "CLOUDSD_IMAGE_SOURCE",
            "how a cloud machine gets the web UI: prebuilt (cloudsd's image, refused if it cannot be pulled), "
            "install (on first boot of a stock CUDA + PyTorch image, into /workspace) or auto (prebuilt when pullable)"),
    Setting("stock_image", None, _to_str, "CLOUDSD_STOCK_IMAGE",
            "the stock CUDA + PyTorch image a UI is installed into (none: runpod/pytorch for the CUDA the GPU needs)",
            optional=True),
    Setting("ui", "a1111", _choice("a1111", "forge", "comfyui"), "CLOUDSD_UI", "which web UI the image runs"),
    Setting("port", 7860, _to_port, "CLOUDSD_PORT", "local port for the web UI (the next free one if busy)"),
    Setting("disk_gb", 40, values.disk_gb, "CLOUDSD_DISK_GB", "disk for the machine, GB"),
    Setting("gpu", (), _to_str_list, "CLOUDSD_GPU", "GPU names to accept, e.g. [RTX 4090, RTX 3090]"),
    Setting("max_price", None, values.price, "CLOUDSD_MAX_PRICE", "most $/h to pay for a machine", optional=True),
    Setting("max_time", None, _to_positive_duration, "CLOUDSD_MAX_TIME",
            "end a machine this long after it was created, e.g. 45m or 2h (none: no limit)", optional=True),
    Setting("max_spend", None, values.spend, "CLOUDSD_MAX_SPEND",
            "end a machine once it has cost this many USD (none: no limit)", optional=True),
    Setting("idle_stop", None, _to_positive_duration, "CLOUDSD_IDLE_STOP",
            "stop a machine after this long without web UI requests, shells or GPU use (none: never)",
            optional=True),
    Setting("idle_action", "stop", _choice("stop", "terminate"), "CLOUDSD_IDLE_ACTION",
            "what idle does: stop (keeps the disk, which still bills storage) or terminate (ends every charge)"),
    Setting("warn_at", 0.8, _to_fraction, "CLOUDSD_WARN_AT", "warn when this share of a budget is used (0-1)"),
    Setting("watchdog.poll", 20.0, _to_positive_duration, "CLOUDSD_WATCHDOG_POLL",
            "how often the on-machine watchdog looks for activity"),
    Setting("watchdog.gpu_busy_percent", 10.0, values.percent, "CLOUDSD_WATCHDOG_GPU_BUSY",
            "GPU utilisation (%) at or above which a machine counts as busy, where nvidia-smi exists"),
    Setting("outputs_dir", "~/cloudsd-outputs", _to_str, "CLOUDSD_OUTPUTS_DIR",
            "where `down` and `sync outputs` save each machine's outputs (in a folder per machine, NAME/)"),
    Setting("keep_on_failure", False, _to_bool, "CLOUDSD_KEEP_ON_FAILURE",
            "keep a machine that failed to start (it keeps billing) instead of destroying it"),
    Setting("timeouts.boot", 600.0, _to_positive_duration, "CLOUDSD_BOOT_TIMEOUT",
            "how long the provider may take to start the machine (image pull included)"),
    Setting("timeouts.ssh", 120.0, _to_positive_duration, "CLOUDSD_SSH_TIMEOUT", "how long sshd may take to answer"),
    Setting("timeouts.resume", 90.0, _to_positive_duration, "CLOUDSD_RESUME_TIMEOUT",
            "how long `cloudsd start` waits for the host to give a stopped machine its GPU back"),
    Setting("timeouts.ui", 600.0, _to_positive_duration, "CLOUDSD_UI_TIMEOUT", "how long the web UI may take to answer"),
    Setting("timeouts.install", 5400.0, _to_positive_duration, "CLOUDSD_INSTALL_TIMEOUT",
            "how long installing the web UI on first boot may take (PyTorch and the UI's packages: several GB)"),
    # `cloudsd generate` defaults, so a user's usual settings are one line (flags override them).
    Setting("generate.negative", "", _to_str, None, "negative prompt"),
    Setting("generate.checkpoint", None, _to_str, None, "checkpoint by name or A1111 short hash (none: the loaded one)",
            optional=True),
    Setting("generate.loras", (), _to_str_list, None, "LoRAs as NAME:WEIGHT, e.g. [Ashe2-8:0.9]"),
    Setting("generate.steps", 20, lambda v: values.whole(v, low=1, high=150), None, "sampling steps"),
    Setting("generate.cfg", 7.0, lambda v: values.number(v, low=0, high=30), None, "CFG scale"),
    Setting("generate.sampler", "DPM++ 2M", _to_str, None, "sampler, as A1111 names it (ComfyUI names work too)"),
    Setting("generate.scheduler", None, _to_str, None, "scheduler, e.g. Karras (none: the sampler's default)",
            optional=True),
    Setting("generate.size", "512x512", _to_str, None, "picture size WIDTHxHEIGHT"),
    Setting("generate.batch_size", 1, lambda v: values.whole(v, low=1, high=64), None, "pictures per job on the GPU"),
    Setting("generate.hires", None, lambda v: values.number(v, low=1, high=4, low_open=True), None, "hires fix scale, e.g. 2 (none: no hires fix)", optional=True),
    Setting("generate.hires_steps", 0, lambda v: values.whole(v, low=0, high=150), None, "hires fix steps (0: as many as steps)"),
    Setting("generate.denoise", None, lambda v: values.number(v, low=0, high=1), None,
            "denoising strength for hires fix and img2img (none: 0.5 hires, 0.75 img2img)", optional=True),
    Setting("generate.upscaler", "Latent", _to_str, None, "hires fix upscaler: Latent or an upscaler model's name"),
    Setting("local.network", None, _to_str, "CLOUDSD_LOCAL_NETWORK",
            "Docker network for local machines (default: the engine's bridge)", optional=True),
    Setting("local.gpus", "auto", _choice("auto", "all", "none"), "CLOUDSD_LOCAL_GPUS",
            "give local machines the GPUs: auto (when the engine has an NVIDIA runtime), all, none"),
    Setting("runpod.base_url", None, values.http_url, "RUNPOD_API_BASE_URL", "RunPod API base URL", optional=True),
    Setting("vastai.base_url", None, values.http_url, "VAST_URL", "Vast.ai API base URL", optional=True),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Resolved:
    """A setting's value and where it came from."""

    value: Any
    source: str  # "flag --port", "env CLOUDSD_PORT", "/home/u/.cloudsd/config.yaml:4", "default"


class Settings(Mapping["str", "Any"]):  # quoted: Any is a name for the type checker only
    """The resolved settings; `settings["port"]` is the value, `settings.source("port")` where it came from."""

    def __init__(self, resolved: dict[str, Resolved], file: Path) -> None:
        self._resolved = resolved
        self.file = file

    def __getitem__(self, key: str) -> Any:
        return self._resolved[key].value

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._resolved)

    def __len__(self) -> int:
        return len(self._resolved)

    def source(self, key: str) -> str:
        return self._resolved[key].source

    def section(self, prefix: str) -> dict[str, Any]:
        """Settings under `prefix.`, without the prefix, None values left out (for provider constructors)."""
        out = {}
        for key, item in self._resolved.items():
            if key.startswith(prefix + ".") and item.value is not None:
                out[key[len(prefix) + 1:]] = item.value
        return out


def suggest(key: str) -> str:
    import difflib  # only a mistake needs it; every command resolves the settings

    close = difflib.get_close_matches(key, list(BY_KEY), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(BY_KEY)}."


def _convert(setting: Setting, raw: Any, where: str) -> Any:
    if raw is None and setting.optional:
        return None
    try:
        return setting.convert(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {setting.key}: {exc}, got {raw!r}") from None


def read_file(path: Path) -> dict[str, tuple[Any, int]]:
    """The file's settings as {dotted key: (raw value, line)}; raises ConfigError with file:line.

    Every command resolves the settings and most users have no file: without one, the YAML library is not
    even loaded (it is a good part of `cloudsd status`'s start-up)."""
    try:
        path.stat()
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        if path.parent == paths.home():  # said as the commands that write there say it, not "cannot read"
            raise paths.home_is_a_file(path.parent) from None
    except OSError:
        pass  # compose_file says what is wrong with it, in its words
    import yaml

    from cloudsd.yamlfile import compose_file

    root = compose_file(path, missing_ok=True)
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected `key: value` lines at the top level")
    out: dict[str, tuple[Any, int]] = {}
    _walk(path, root, "", out)
    return out


def _walk(path: Path, node: Any, prefix: str, out: dict[str, tuple[Any, int]]) -> None:
    import yaml  # loaded by read_file already: a name lookup

    from cloudsd.yamlfile import construct

    sections = {k.split(".")[0] for k in BY_KEY if "." in k}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = f"{prefix}{key_node.value}"
        if key in BY_KEY:
            value = construct(value_node)
            out[key] = (value, line)
        elif not prefix and key in sections and isinstance(value_node, yaml.MappingNode):
            _walk(path, value_node, key + ".", out)
        elif not prefix and key in sections and isinstance(value_node, yaml.ScalarNode) and not value_node.value:
            continue  # an empty section
        else:
            raise ConfigError(f"{path}:{line}: unknown setting {key!r}.{suggest(key)}")


def resolve(flags: Mapping[str, Any] | None = None, *, file: Path | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from flag > environment > file > default, with its source."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    file = file or paths.config_file()
    from_file = read_file(file)
    resolved: dict[str, Resolved] = {}
    for setting in SETTINGS:
        if flags.get(setting.key) is not None:
            flag = "--" + setting.key.replace("_", "-").replace(".", "-")
            resolved[setting.key] = Resolved(_convert(setting, flags[setting.key], f"flag {flag}"), f"flag {flag}")
        elif setting.env and environ.get(setting.env, "") != "":
            where = f"env {setting.env}"
            resolved[setting.key] = Resolved(_convert(setting, environ[setting.env], where), where)
        elif setting.key in from_file:
            raw, line = from_file[setting.key]
            where = f"{file}:{line}"
            resolved[setting.key] = Resolved(_convert(setting, raw, where), where)
        else:
            resolved[setting.key] = Resolved(setting.default, "default")
    return Settings(resolved, file)


def template_text() -> str:
    from importlib import resources

    return resources.files("cloudsd").joinpath("templates/config.yaml").read_text()


def init_file(force: bool = False) -> Path:
    """Write the commented template into the config dir; refuse to overwrite unless `force`."""
    path = paths.config_file()
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists.", hint="Edit it, or run `cloudsd init --force` to start over.")
    paths.ensure_home()
    path.write_text(template_text())
    return path
