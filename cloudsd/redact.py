"""Keeping secrets out of what cloudsd prints and stores: one place, pure functions, stdlib only.

- `scrub(text)` is applied by the CLI to every error line it prints. It removes each known secret (the
  provider keys and model-source tokens in the environment, and any value a module `remember`s) in every
  form it may appear in: raw, repr- or JSON-escaped (a key with CR/LF or non-ASCII), URL-encoded; plus
  anything after `Bearer ` or in a `token=`/`key=` query parameter, whoever echoed it.
- `display_url(url)` is a URL safe to print: no userinfo, no query (`?…` says there was one), no fragment.
- `url_digest(url)` identifies a URL (a resumable download's identity) without storing it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_SECRET = 6  # shorter values (a "1" in some *_TOKEN variable) would mask ordinary text
_SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|_KEY)$", re.IGNORECASE)
_KNOWN_ENV = ("RUNPOD_API_KEY", "VAST_API_KEY", "CIVITAI_TOKEN", "HF_TOKEN")
_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)([?&](?:token|api_key|apikey|key|access_token|sig|signature)=)[^&\s\"'#]+"),
    re.compile(r"(?i)((?:api[_-]?key|token)\s*[=:]\s*[\"']?)[^\s\"',;&]{6,}"),
    re.compile(r"\b(rpa_)[A-Za-z0-9]{8,}"),  # RunPod's key format
)
_remembered: set[str] = set()


def remember(secret: str | None) -> None:
    """Have `scrub` mask this value from now on (a key read from a file, a token from a config)."""
    if secret and len(secret) >= MIN_SECRET:
        _remembered.add(secret)


def secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if (k in _KNOWN_ENV or _SECRET_ENV.search(k)) and len(v) >= MIN_SECRET}
    return found | _remembered


def forms(secret: str) -> list[str]:
    """The ways `secret` can show up in text: as is, escaped by repr or JSON, URL-encoded; longest first."""
    out = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
           urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
           secret.encode("unicode_escape").decode("ascii")}
    for part in re.split(r"[\r\n\x00]+", secret):  # each line of a key that holds a line break
        if len(part) >= MIN_SECRET:
            out.add(part)
    return sorted(out, key=len, reverse=True)


def scrub(text: str, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """`text` with every known secret masked, in any of its forms, and bearer tokens and token parameters."""
    for secret in sorted(secrets(environ) | {s for s in extra if len(s) >= MIN_SECRET}, key=len, reverse=True):
        for form in forms(secret):
            text = text.replace(form, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def display_url(url: str) -> str:
    """scheme://host[:port]/path, with `?…` when there was a query; never userinfo, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url.split("://", 1)[0] + "://…" if "://" in url else "…"
    if not host:
        return url.split("?", 1)[0].split("#", 1)[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}{'?…' if parts.query else ''}"


def url_digest(url: str) -> str:
    """A stable name for a URL that reveals nothing of it (for state kept on a machine)."""
    import hashlib  # OpenSSL's loading is felt in start-up, and only a resumable download needs this

    return "url-sha256:" + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
