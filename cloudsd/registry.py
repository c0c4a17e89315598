"""Can anyone pull this image? An anonymous manifest request to its registry, before anything is rented.

The OCI distribution API: `HEAD /v2/<repository>/manifests/<tag or digest>` answers 200 when the image
exists. A registry that wants a token answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`;
an anonymous GET of the realm with that service and scope gives a token (`token` or `access_token`) when
the repository is public, and the request is repeated with it (the Docker registry token specification).
A provider's host pulls anonymously too, so an image this check cannot see cannot be started there.

CLOUDSD_REGISTRY_API_URL sends every request to another base URL (tests point it at a fake registry on
127.0.0.1, as RUNPOD_API_BASE_URL does for RunPod). Registries on localhost and 127.0.0.0/8 are spoken to
over plain HTTP, as Docker does by default; every other one over HTTPS.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import httpx

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
DOCKER_HUB = "registry-1.docker.io"
TIMEOUT_S = 10.0
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class ImageReference:
    host: str  # the registry host, e.g. ghcr.io or 127.0.0.1:5000 (Docker Hub: registry-1.docker.io)
    repository: str  # e.g. cloudsd/a1111 (Docker Hub's official images: library/ubuntu)
    reference: str  # a tag or a sha256 digest


@dataclass(frozen=True)
class Availability:
    image: str
    pullable: bool
    reason: str  # one line: why it can or cannot be pulled


def parse_reference(image: str) -> ImageReference:
    """`ghcr.io/cloudsd/a1111:1.10.1-cu124` -> (ghcr.io, cloudsd/a1111, 1.10.1-cu124); a name without a registry
    host is Docker Hub's, as Docker reads it."""
    name, at, digest = image.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    if host == "docker.io":
        host = DOCKER_HUB
    repository, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        repository, tag = path, "latest"
    return ImageReference(host, repository, digest if at else tag)


def base_url(host: str) -> str:
    override = os.environ.get("CLOUDSD_REGISTRY_API_URL")
    if override:
        return override.rstrip("/")
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    plain = bare == "localhost" or bare.startswith("127.")
    return f"{'http' if plain else 'https'}://{host}"


def parse_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a `Bearer realm="…",service="…",scope="…"` challenge; None for another scheme."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return dict(_CHALLENGE_PARAM.findall(params))


def check_pullable(image: str, *, client: httpx.Client | None = None, timeout_s: float = TIMEOUT_S) -> Availability:
    """Whether `image` can be pulled without credentials, and why (never raises for a registry's answer)."""
    ref = parse_reference(image)
    url = f"{base_url(ref.host)}/v2/{ref.repository}/manifests/{ref.reference}"
    own = client is None
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=True)
    try:
        answer = http.head(url, headers={"Accept": MANIFEST_TYPES})
        if answer.status_code == 401:
            challenge = parse_challenge(answer.headers.get("www-authenticate", ""))
            if challenge is None or not challenge.get("realm"):
                return Availability(image, False, f"{ref.host} allows no anonymous pull of {ref.repository}")
            scope = challenge.get("scope") or f"repository:{ref.repository}:pull"
            params = {"scope": scope, **({"service": challenge["service"]} if challenge.get("service") else {})}
            token_answer = http.get(challenge["realm"], params=params)
            if token_answer.status_code != 200:
                return Availability(image, False, f"{ref.host} gives no anonymous token for {ref.repository} "
                                                  f"(HTTP {token_answer.status_code}): private or missing")
            body = token_answer.json()
            token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
            if not token:
                return Availability(image, False, f"{ref.host} answered its token request without a token")
            answer = http.head(url, headers={"Accept": MANIFEST_TYPES, "Authorization": f"Bearer {token}"})
    except (httpx.HTTPError, ValueError) as exc:
        return Availability(image, False, f"{ref.host} could not be asked ({type(exc).__name__}: "
                                          f"{' '.join(str(exc).split())[:160]})")
    finally:
        if own:
            http.close()
    if answer.status_code == 200:
        return Availability(image, True, f"found in {ref.host}, pullable without credentials")
    if answer.status_code == 404:
        return Availability(image, False, f"{ref.host} has no {ref.repository}:{ref.reference} (not published)")
    if answer.status_code in (401, 403):
        return Availability(image, False, f"{ref.host} refuses an anonymous pull of {ref.repository} "
                                          f"(HTTP {answer.status_code}): private or missing")
    return Availability(image, False, f"{ref.host} answered HTTP {answer.status_code} for {ref.repository}")
