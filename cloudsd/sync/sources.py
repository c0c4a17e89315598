"""Model references the machine fetches itself: `civitai:<modelVersionId>`, `hf:<org>/<repo>/<path>[@rev]`
and `https://` URLs (a `#sha256=<hex>` fragment pins the file).

Each token goes only with its own origin: CIVITAI_TOKEN to the Civitai base URL (CLOUDSD_CIVITAI_BASE_URL,
default https://civitai.com), HF_TOKEN to the Hugging Face endpoint (HF_ENDPOINT, default
https://huggingface.co). A URL on one of those origins gets that origin's token; any other URL gets none.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudsd.errors import ConfigError
from cloudsd.redact import display_url
from cloudsd.remote.agent.common import origin  # the agent compares the same string
from cloudsd.values import http_url

CIVITAI_DEFAULT = "https://civitai.com"
HF_DEFAULT = "https://huggingface.co"
CIVITAI_TOKEN_ENV = "CIVITAI_TOKEN"
HF_TOKEN_ENV = "HF_TOKEN"
REF_FORMS = "civitai:<modelVersionId>, hf:<org>/<repo>/<path>[@rev] or an https:// URL"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Endpoints:
    """Where Civitai and Hugging Face are, and the tokens for each (from the environment)."""

    civitai: str = CIVITAI_DEFAULT
    hf: str = HF_DEFAULT
    civitai_token: str | None = None
    hf_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Endpoints:
        env = os.environ if environ is None else environ
        for var in ("CLOUDSD_CIVITAI_BASE_URL", "HF_ENDPOINT"):
            if env.get(var):
                try:
                    http_url(env[var])
                except ValueError as exc:
                    raise ConfigError(f"env {var}: {exc}.") from None
        return cls(civitai=(env.get("CLOUDSD_CIVITAI_BASE_URL") or CIVITAI_DEFAULT).rstrip("/"),
                   hf=(env.get("HF_ENDPOINT") or HF_DEFAULT).rstrip("/"),
                   civitai_token=env.get(CIVITAI_TOKEN_ENV) or None, hf_token=env.get(HF_TOKEN_ENV) or None)


@dataclass(frozen=True)
class Ref:
    """A parsed reference. `text` is safe to print (a URL's query string is left out)."""

    text: str
    type: str  # civitai | hf | url
    version_id: str = ""
    repo: str = ""
    path: str = ""
    rev: str = "main"
    url: str = ""
    sha256: str | None = None

    def service(self, endpoints: Endpoints) -> str:
        """civitai, hf, or the URL's host: who answers, for messages."""
        if self.type != "url":
            return self.type
        for name, base in (("civitai", endpoints.civitai), ("hf", endpoints.hf)):
            if origin(self.url) == origin(base):
                return name
        return urllib.parse.urlsplit(self.url).hostname or "?"

    def token_env(self, endpoints: Endpoints) -> str | None:
        return {"civitai": CIVITAI_TOKEN_ENV, "hf": HF_TOKEN_ENV}.get(self.service(endpoints))

    def token(self, endpoints: Endpoints) -> dict[str, str] | None:
        """The token for this reference and the one origin it may be sent to (None: no token applies)."""
        service = self.service(endpoints)
        value = {"civitai": endpoints.civitai_token, "hf": endpoints.hf_token}.get(service)
        base = {"civitai": endpoints.civitai, "hf": endpoints.hf}.get(service)
        return {"value": value, "origin": origin(base)} if value and base else None

    def source(self, endpoints: Endpoints) -> dict[str, Any]:
        """What the agent's `resolve` needs."""
        if self.type == "civitai":
            return {"type": "civitai", "base": endpoints.civitai, "version_id": self.version_id}
        if self.type == "hf":
            return {"type": "hf", "endpoint": endpoints.hf, "repo": self.repo, "path": self.path, "rev": self.rev}
        return {"type": "url", "url": self.url}


def looks_like_ref(text: str) -> bool:
    """A `scheme:` prefix (not a one-letter Windows drive) means a reference, not a path."""
    match = _SCHEME.match(text)
    return match is not None and len(match.group(0)) > 2


def parse_ref(text: str) -> Ref:
    """Parse a reference; ConfigError with the accepted forms if it is none of them."""
    lower = text.lower()
    if lower.startswith("civitai:"):
        version = text.split(":", 1)[1].strip()
        if not version.isdigit():
            raise ConfigError(f"{text!r}: a Civitai reference is civitai:<modelVersionId>, a number "
                              "(the ?modelVersionId= of the model page's URL).")
        return Ref(text, "civitai", version_id=version)
    if lower.startswith("hf:"):
        body, rev = text[3:], "main"
        if "@" in body.rsplit("/", 1)[-1]:
            body, rev = body.rsplit("@", 1)
        parts = [p for p in body.split("/") if p]
        if len(parts) < 3 or not rev or any(p in (".", "..") for p in parts):
            raise ConfigError(f"{text!r}: a Hugging Face reference is hf:<org>/<repo>/<path>[@rev].")
        return Ref(text, "hf", repo=f"{parts[0]}/{parts[1]}", path="/".join(parts[2:]), rev=rev)
    if lower.startswith(("https://", "http://")):
        try:
            http_url(text)
        except ValueError as exc:
            raise ConfigError(f"{_redact(text)!r} is not a URL cloudsd can fetch ({exc}).") from None
        split = urllib.parse.urlsplit(text)
        sha = None
        if split.fragment.startswith("sha256="):
            sha = split.fragment.split("=", 1)[1].lower()
            if not _SHA256.match(sha):
                raise ConfigError(f"{_redact(text)!r}: #sha256= needs the 64 hex digits of the file's sha256.")
        url = urllib.parse.urlunsplit(split._replace(fragment=""))
        return Ref(_redact(text), "url", url=url, sha256=sha)
    raise ConfigError(f"unknown model reference {_redact(text)!r}.", hint=f"Use a local path, {REF_FORMS}.")


def _redact(text: str) -> str:
    return display_url(text)
