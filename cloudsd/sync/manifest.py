"""Model lists: what to sync, from the command line (`PATH|REF …`, `--kind`) and from manifest files.

A manifest is YAML, a list under `models:` (or a bare list). Each entry:

    - name: DreamShaper 8              # for messages (optional)
      kind: checkpoint                 # optional: inferred as for paths
      source: civitai:128713           # a path (relative to the manifest), civitai:, hf: or an https:// URL
      sha256: 879db523c30d…            # optional: the file must have it
      short_hash: 879db523c3           # optional: A1111's 10-digit short hash, when the full one is unknown
      size: 2132625894                 # optional: bytes, to size a machine's disk before renting it
      file: dreamshaper_8.safetensors  # optional: the name on the machine
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudsd import paths
from cloudsd.errors import ConfigError
from cloudsd.redact import display_url
from cloudsd.sync.kinds import KINDS
from cloudsd.sync.sources import looks_like_ref
from cloudsd.yamlfile import load_file

_HEX = re.compile(r"^[0-9a-f]+$")
FIELDS = ("name", "kind", "source", "sha256", "short_hash", "size", "file")


@dataclass(frozen=True)
class ModelRequest:
    """One thing to put on the machine: a local file or folder, or a reference the machine fetches."""

    source: str
    kind: str | None = None
    sha256: str | None = None
    short_hash: str | None = None
    size: int | None = None
    save_as: str | None = None
    name: str | None = None

    @property
    def is_ref(self) -> bool:
        return looks_like_ref(self.source) and not Path(self.source).exists()

    @property
    def label(self) -> str:
        """For messages: a URL without its query or userinfo (a Civitai link carries a token there)."""
        return self.name or (display_url(self.source) if looks_like_ref(self.source) else self.source)


def from_args(items: list[str], kind: str | None) -> list[ModelRequest]:
    return [ModelRequest(item, kind=kind) for item in items]


def load_manifest(path: Path) -> list[ModelRequest]:
    """The manifest's entries; ConfigError naming the file and entry for anything malformed."""
    data = load_file(path)
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of models under `models:`.")
    return [_entry(path, i, e) for i, e in enumerate(entries, start=1)]


def _entry(path: Path, number: int, entry: Any) -> ModelRequest:
    where = f"{path}: model {number}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected `source:` and other fields, got {entry!r}.")
    unknown = set(entry) - set(FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}.", hint=f"Fields: {', '.join(FIELDS)}.")
    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}: needs a `source:` (a path, civitai:<id>, hf:<org>/<repo>/<path> or a URL).")
    if not looks_like_ref(source):
        source = str((path.parent / paths.expand(source, where)).resolve())
    kind = entry.get("kind")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}.", hint=f"Use one of: {', '.join(KINDS)}.")
    sha256 = _hex(where, "sha256", entry.get("sha256"), 64)
    short = _hex(where, "short_hash", entry.get("short_hash"), 10)
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ConfigError(f"{where}: size must be a number of bytes, got {size!r}.")
    save_as = entry.get("file")
    if save_as is not None and (not isinstance(save_as, str) or "/" in save_as or save_as.startswith(".")):
        raise ConfigError(f"{where}: file must be a plain file name, got {save_as!r}.")
    return ModelRequest(source, kind, sha256, short, size, save_as, entry.get("name"))


def _hex(where: str, key: str, value: Any, length: int) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if len(text) != length or not _HEX.match(text):
        raise ConfigError(f"{where}: {key} must be {length} hex digits, got {value!r}.")
    return text
