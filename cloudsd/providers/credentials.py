"""API keys for the providers, found in one way: the argument (a flag), then the environment, then the vendor's
own file, each time saying which source won. Used by every provider and, through them, by `doctor`.

Where each cloud keeps its key (`KEY_SOURCES`) is written here rather than in the vendor's module, so that
`status` and `--provider auto` can learn that no key is set without importing a vendor module (and httpx):
this module stays stdlib-only. Every key found is handed to `cloudsd.redact.remember`, so an error that
carries it, whoever built the message, prints it masked.

A key is checked before it is used: a CR/LF, a non-ASCII character or whitespace inside it would either break
the HTTP header or be an accident of copy and paste, so it is refused with one line that names the SOURCE
(the flag, the variable, the file's path), never the key. Only the last four characters are ever shown.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from cloudsd.errors import CloudsdError, ConfigError, CredentialsError

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

ARGUMENT = "argument"


@dataclass(frozen=True)
class KeyFile:
    """A vendor's key file and how to read the key out of its text (None when it holds none)."""

    path: Path
    read: Callable[[str, Path], str | None]


@dataclass(frozen=True)
class Credential:
    """A provider's API key and where it was found (the key itself is never in its repr)."""

    key: str = field(repr=False)
    source: str  # "argument", "env RUNPOD_API_KEY", "/home/me/.runpod/config.toml"

    @property
    def last4(self) -> str:
        return self.key[-4:]

    def describe(self) -> str:
        """`env RUNPOD_API_KEY (…abcd)`: what `doctor` and key hints show."""
        return f"{self.source} (…{self.last4})"


def resolve(
    *,
    provider_label: str,
    env_var: str,
    files: Sequence[KeyFile],
    hint: str,
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credential:
    """The first key found: `explicit`, then `env_var`, then each file in order. Blank values are skipped
    (an empty variable does not hide the file); a malformed key is refused, naming where it came from."""
    environ = os.environ if environ is None else environ
    candidates: list[tuple[str | None, str]] = [(explicit, ARGUMENT), (environ.get(env_var), f"env {env_var}")]
    for raw, source in candidates:
        if raw is not None and raw.strip():
            return _found(check_key(raw, source, provider_label), source)
    for key_file in files:
        try:
            text = key_file.path.read_text(encoding="utf-8", errors="surrogateescape")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {key_file.path}: {exc.strerror}", hint=hint) from None
        found = key_file.read(text, key_file.path)
        if found is not None and found.strip():
            return _found(check_key(found, str(key_file.path), provider_label), str(key_file.path))
    raise CredentialsError(f"no {provider_label} API key found.", hint=hint)


def _found(key: str, source: str) -> Credential:
    from cloudsd.redact import remember  # only once a key is found: `status` without keys starts without it

    remember(key)  # from here on every error line masks it, wherever the key came from
    return Credential(key, source)


_BAD_INSIDE = re.compile(r"\s")


def check_key(raw: str, source: str, provider_label: str) -> str:
    """The key with surrounding whitespace removed; CredentialsError naming `source` when it cannot be one."""
    key = raw.strip()
    if "\r" in key or "\n" in key:
        problem = "contains a line break"
    elif _BAD_INSIDE.search(key):
        problem = "contains whitespace"
    elif not key.isascii() or not key.isprintable():
        problem = "contains a character that is not printable ASCII"
    else:
        return key
    raise CredentialsError(
        f"the {provider_label} API key from {source} {problem}, so it cannot be a key.",
        hint=f"Copy the key again into {source}; it is one line of letters, digits and punctuation.",
    )


def plain_file(text: str, path: Path) -> str | None:
    """A file that holds the key alone (vast-cli's `vast_api_key`): its first line."""
    lines = text.strip().splitlines()
    return lines[0] if lines else None


def toml_key(*paths: tuple[str, ...]) -> Callable[[str, Path], str | None]:
    """A reader of a TOML file that takes the first string found at one of `paths` (("default", "api_key"))."""

    def read(text: str, path: Path) -> str | None:
        try:
            data = parse_toml(text)
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}).") from None
        for keys in paths:
            node: Any = data
            for name in keys:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, str) and node.strip():
                return node
        return None

    return read


def parse_toml(text: str) -> dict[str, Any]:
    """TOML via tomllib on Python 3.11+; on 3.10 a tiny reader of `[section]` and `key = "string"` lines."""
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(str(exc)) from None
    return parse_simple_toml(text)


_SECTION = re.compile(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]$")
_PAIR = re.compile(r"""^([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s#"']+))\s*(?:#.*)?$""")


def parse_simple_toml(text: str) -> dict[str, Any]:
    """Tables and string values only: enough for a vendor's key file. Other lines are skipped."""
    data: dict[str, Any] = {}
    table = data
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if section := _SECTION.match(line):
            table = data.setdefault(section.group(1), {})
            continue
        pair = _PAIR.match(line)
        if pair is None:
            if line.startswith("[") or "=" not in line:
                raise ValueError(f"line {number}: cannot read {line[:40]!r}")
            continue
        basic, literal, bare = pair.group(2), pair.group(3), pair.group(4)
        if basic is not None:
            value = basic.replace('\\"', '"').replace("\\\\", "\\")
        else:
            value = literal if literal is not None else bare
        table[pair.group(1)] = value
    return data


# -- where each cloud keeps its key ------------------------------------------------------------------------
@dataclass(frozen=True)
class KeySource:
    """One provider's key: its variable, then the vendor's own files (given the environment and the home
    directory), and what to tell a user who has none (`{file}` is the first file)."""

    provider_label: str
    env_var: str
    files: Callable[[Mapping[str, str], Path], list[KeyFile]]
    hint: str

    def resolve(self, explicit: str | None = None, environ: Mapping[str, str] | None = None,
                home: Path | None = None) -> Credential:
        """The key and where it came from; CredentialsError saying what to do when there is none."""
        environ = os.environ if environ is None else environ
        home = Path(environ.get("HOME") or Path.home()) if home is None else home
        files = self.files(environ, home)
        return resolve(provider_label=self.provider_label, env_var=self.env_var, files=files,
                       hint=self.hint.format(file=files[0].path if files else self.env_var),
                       explicit=explicit, environ=environ)


def _runpod_files(environ: Mapping[str, str], home: Path) -> list[KeyFile]:
    """runpodctl's config: `[default] api_key = "…"`, or its older top-level `apikey`."""
    return [KeyFile(home / ".runpod" / "config.toml", toml_key(("default", "api_key"), ("apikey",)))]


def _vast_files(environ: Mapping[str, str], home: Path) -> list[KeyFile]:
    """Where vast-cli keeps the key, in the order cloudsd reads them."""
    config_home = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else home / ".config"
    return [KeyFile(config_home / "vastai" / "vast_api_key", plain_file), KeyFile(home / ".vast_api_key", plain_file)]


RUNPOD_KEY = KeySource(
    "RunPod", "RUNPOD_API_KEY", _runpod_files,
    "Set RUNPOD_API_KEY, or put `api_key = \"…\"` under [default] in ~/.runpod/config.toml "
    "(create a key at https://www.runpod.io/console/user/settings).",
)
VAST_KEY = KeySource(
    "Vast.ai", "VAST_API_KEY", _vast_files,
    "Set VAST_API_KEY, or write the key to {file} (copy it from https://cloud.vast.ai/manage-keys/).",
)
KEY_SOURCES: dict[str, KeySource] = {"runpod": RUNPOD_KEY, "vastai": VAST_KEY}  # by registry name


def has_key(provider: str, explicit: str | None = None) -> bool:
    """Whether `provider` would find a usable key, asked without importing its module (no network library).
    A provider that keeps no key here is not known to lack one: True."""
    source = KEY_SOURCES.get(provider)
    if source is None:
        return True
    try:
        source.resolve(explicit)
    except CloudsdError:  # none, malformed, or an unreadable file: building the provider would fail the same way
        return False
    return True


def redact(text: str, key: str) -> str:
    """`text` with the key replaced, also where it appears escaped (JSON `\\r\\n`, repr, percent-encoded)."""
    if not key:
        return text
    forms = {key, key.encode("unicode_escape").decode("ascii"), repr(key)[1:-1], quote(key, safe="")}
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, "****")
    return text
