"""A fake container registry on 127.0.0.1: the OCI distribution API's manifest route behind the Docker
registry token flow, as ghcr.io and Docker Hub serve it (401 with a Bearer challenge, an anonymous token
from the realm for public repositories, the manifest with that token).

    with FakeRegistry(public={"cloudsd/a1111": ["1.10.1-cu124"]}, private={"cloudsd/forge"}) as registry:
        os.environ["CLOUDSD_REGISTRY_API_URL"] = registry.base_url
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

MANIFEST_TYPE = "application/vnd.oci.image.index.v1+json"


class FakeRegistry:
    def __init__(self, public: dict[str, list[str]] | None = None, private: set[str] | None = None) -> None:
        self.public = {repo: set(tags) for repo, tags in (public or {}).items()}
        self.private = set(private or ())
        self.tokens: dict[str, str] = {}  # token -> the repository it may pull
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json" if body is not None else MANIFEST_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                registry.requests.append(("GET", self.path, dict(self.headers)))
                if url.path != "/token":
                    return self._send(404, {"errors": [{"code": "NOT_FOUND"}]})
                query = parse_qs(url.query)
                scope = (query.get("scope") or [""])[0]
                repo = scope.removeprefix("repository:").rsplit(":", 1)[0]
                if query.get("service") != ["fake-registry"] or not scope.endswith(":pull"):
                    return self._send(400, {"errors": [{"code": "UNSUPPORTED"}]})
                if repo in registry.private or repo not in registry.public:
                    return self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]})  # anonymous: no token
                token = secrets.token_hex(8)
                registry.tokens[token] = repo
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_HEAD(self) -> None:  # noqa: N802
                registry.requests.append(("HEAD", self.path, dict(self.headers)))
                parts = urlparse(self.path).path.split("/manifests/")
                if len(parts) != 2 or not parts[0].startswith("/v2/"):
                    return self._send(404)
                repo, tag = parts[0].removeprefix("/v2/"), parts[1]
                auth = self.headers.get("Authorization", "")
                if registry.tokens.get(auth.removeprefix("Bearer ")) != repo:
                    challenge = (f'Bearer realm="{registry.base_url}/token",service="fake-registry",'
                                 f'scope="repository:{repo}:pull"')
                    return self._send(401, headers={"WWW-Authenticate": challenge})
                if "application/vnd.oci.image.index.v1+json" not in self.headers.get("Accept", ""):
                    return self._send(404)
                self._send(200 if tag in registry.public.get(repo, set()) else 404,
                           headers={"Docker-Content-Digest": "sha256:" + "0" * 64})

        return Handler


def cloudsd_images() -> dict[str, list[str]]:
    """cloudsd's own images as its default registry would hold them once published: every UI, both CUDA
    variants, by repository (`cloudsd/a1111`: [`1.10.1-cu124`, `1.10.1-cu128`])."""
    from cloudsd.ui import CUDA_VARIANTS, PROFILES, profile

    published: dict[str, list[str]] = {}
    for name in PROFILES:
        for cuda in CUDA_VARIANTS:
            repo, _, tag = profile(name).image(cuda=cuda).partition("/")[2].rpartition(":")
            published.setdefault(repo, []).append(tag)
    return published


@contextmanager
def serve_cloudsd_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    """A fake registry holding cloudsd's published images, where cloudsd's registry checks go (the fake
    clouds start the testbed whatever image they are asked for, as a real host pulls the named one)."""
    with FakeRegistry(public=cloudsd_images()) as registry:
        monkeypatch.setenv("CLOUDSD_REGISTRY_API_URL", registry.base_url)
        yield registry
