#!/usr/bin/env python3
"""A stand-in for Civitai, Hugging Face and a CDN behind them. Stdlib only, so it also runs in a container.

Each listener (or each Host name) plays one role:
- civitai: GET /api/v1/model-versions/<id> (metadata with the file's SHA256), GET /api/download/models/<id>
  answers 307 to the CDN with a presigned-looking query, HEAD answers 401 (as the real one does);
- hf: HEAD/GET /<org>/<repo>/resolve/<rev>/<path> answers 302 to the CDN with X-Linked-Etag (the sha256)
  and X-Linked-Size;
- cdn: GET /files/<name> with Range support, and the failure modes a test asks for.
Gated files need `Authorization: Bearer <token>`: none gives 401, a wrong one 403. Every request is logged
(host, path, and the Authorization header it carried) to a list and, if configured, a JSON-lines file.

    python3 model_sources.py --config sources.json     # {"listen": [[host, port, role]], "public": {role: url},
                                                       #  "token": …, "log": path, "files": [...]}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeFile:
    name: str
    data: bytes = b""
    path: str = ""  # serve this file from disk instead (benchmarks)
    version_id: str = ""  # Civitai
    model_type: str = "Checkpoint"
    repo: str = ""  # Hugging Face
    hf_path: str = ""
    gated: bool = False
    mode: str = "ok"  # ok | html | error-json | flaky | wrong | no-range
    advertised_sha256: str = ""  # what the metadata says, if not the real digest

    @property
    def size(self) -> int:
        return os.path.getsize(self.path) if self.path else len(self.data)

    @property
    def sha256(self) -> str:
        if self.advertised_sha256:
            return self.advertised_sha256
        if self.path:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
        return hashlib.sha256(self.data).hexdigest()


def content(seed: str, size: int) -> bytes:
    """Deterministic bytes that look like nothing in particular (not an error page)."""
    out, counter = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(b"\x00\x01safetensors" + out[: max(0, size - 13)])[:size]


class Sources:
    def __init__(self, files: list[FakeFile], public: dict[str, str], token: str = "", log_path: str = "") -> None:
        self.files = files
        self.public = public  # role -> base URL the clients use
        self.token = token
        self.log_path = log_path
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.flaky_done: set[str] = set()
        self.servers: list[ThreadingHTTPServer] = []
        self.roles_by_host: dict[str, str] = {}

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.log.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    def listen(self, host: str, port: int, role: str) -> int:
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        server.sources = self  # type: ignore[attr-defined]
        server.role = role  # type: ignore[attr-defined]
        self.servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return int(server.server_address[1])

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def sources(self) -> Sources:
        return self.server.sources  # type: ignore[attr-defined,no-any-return]

    def role(self) -> str:
        host = (self.headers.get("Host") or "").lower()
        return self.sources.roles_by_host.get(host.split(":")[0]) or self.server.role  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self.handle_request("HEAD")

    def do_GET(self) -> None:
        self.handle_request("GET")

    def handle_request(self, method: str) -> None:
        role = self.role()
        url = urllib.parse.urlsplit(self.path)
        auth = self.headers.get("Authorization")
        self.sources.record({"role": role, "method": method, "host": self.headers.get("Host"), "path": url.path,
                             "query": url.query, "auth": auth, "range": self.headers.get("Range")})
        if url.path == "/_log":
            return self.reply(200, json.dumps(self.sources.log).encode(), "application/json")
        handler = {"civitai": self.civitai, "hf": self.hf, "cdn": self.cdn}[role]
        handler(method, url.path, auth)

    def reply(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def refuse(self, fake: FakeFile, auth: str | None, head: bool = False) -> bool:
        if not fake.gated:
            return False
        if auth is None:
            self.reply(401, b'{"error":"Unauthorized"}', head=head)
            return True
        if auth != f"Bearer {self.sources.token}":
            self.reply(403, b'{"error":"Forbidden: accept the licence"}', head=head)
            return True
        return False

    def civitai(self, method: str, path: str, auth: str | None) -> None:
        parts = path.strip("/").split("/")
        fake = next((f for f in self.sources.files if f.version_id and f.version_id == parts[-1]), None)
        if fake is None:
            return self.reply(404, b'{"error":"No model with id"}')
        base, cdn = self.sources.public["civitai"], self.sources.public["cdn"]
        if parts[:3] == ["api", "v1", "model-versions"]:
            if self.refuse(fake, auth):
                return
            meta = {"id": int(fake.version_id), "model": {"name": fake.name, "type": fake.model_type},
                    "files": [{"name": fake.name, "sizeKB": fake.size / 1024, "type": "Model", "primary": True,
                               "hashes": {"SHA256": fake.sha256.upper(), "AutoV2": fake.sha256[:10].upper()},
                               "downloadUrl": f"{base}/api/download/models/{fake.version_id}"}]}
            return self.reply(200, json.dumps(meta).encode())
        if parts[:3] == ["api", "download", "models"]:
            if method == "HEAD":
                return self.reply(401, b"", head=True)  # as the real one: probe with a ranged GET instead
            if self.refuse(fake, auth):
                return
            location = f"{cdn}/files/{urllib.parse.quote(fake.name)}?X-Amz-Signature=presigned&token=cdn-secret"
            return self.reply(307, b"", headers={"Location": location})
        self.reply(404, b'{"error":"not found"}')

    def hf(self, method: str, path: str, auth: str | None) -> None:
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self.reply(404, b'{"error":"Entry not found"}', head=method == "HEAD")
        repo, file_path = "/".join(parts[:2]), "/".join(parts[4:])
        fake = next((f for f in self.sources.files if f.repo == repo and f.hf_path == file_path), None)
        if fake is None:
            return self.reply(404, b'{"error":"Entry not found"}', head=method == "HEAD")
        if self.refuse(fake, auth, head=method == "HEAD"):
            return
        location = f"{self.sources.public['cdn']}/files/{urllib.parse.quote(fake.name)}?signed=1"
        self.reply(302, b"", headers={"Location": location, "X-Linked-Etag": f'"{fake.sha256}"',
                                      "X-Linked-Size": str(fake.size), "ETag": '"not-the-sha"'},
                   head=method == "HEAD")

    def cdn(self, method: str, path: str, auth: str | None) -> None:
        name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        fake = next((f for f in self.sources.files if f.name == name), None)
        if fake is None or not path.startswith("/files/"):
            return self.reply(404, b"<html><body>Not found</body></html>", "text/html")
        if fake.mode == "html":
            return self.reply(200, b"<!DOCTYPE html><html><body>Please log in</body></html>", "text/html")
        if fake.mode == "error-json":
            body = b'{"error": "early access"}' + b" " * 2000
            return self.reply(200, body, "application/octet-stream")
        size = fake.size
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and fake.mode != "no-range":
            start = int(ranged[6:].split("-")[0] or 0)
            if start >= size:
                return self.reply(416, b"", headers={"Content-Range": f"bytes */{size}"})
        end = size - 1
        if ranged.endswith("-0") and ranged.startswith("bytes=0-"):
            end = 0
        self.send_response(206 if ranged and fake.mode != "no-range" else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Disposition", f'attachment; filename="{fake.name}"')
        if ranged and fake.mode != "no-range":
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if method == "HEAD":
            return
        stop = end + 1
        if fake.mode == "flaky" and name not in self.sources.flaky_done:
            self.sources.flaky_done.add(name)
            stop = start + (end + 1 - start) // 2  # the connection drops halfway, the first time
        self.send_body(fake, start, stop)
        if stop != end + 1:
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)

    def send_body(self, fake: FakeFile, start: int, stop: int) -> None:
        if fake.path:
            with open(fake.path, "rb") as f:
                self.wfile.flush()
                self.connection.sendfile(f, start, stop - start)
            return
        data = fake.data
        if fake.mode == "wrong":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        self.wfile.write(data[start:stop])


def from_config(config: dict[str, Any]) -> Sources:
    files = [FakeFile(**f) for f in config["files"]]
    for f in files:
        if f.data:
            f.data = f.data.encode() if isinstance(f.data, str) else f.data
    sources = Sources(files, config["public"], config.get("token", ""), config.get("log", ""))
    sources.roles_by_host = config.get("roles_by_host", {})
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    for f in config["files"]:
        if "seed" in f:
            f["data"] = content(f.pop("seed"), f.pop("size"))
    sources = from_config(config)
    for host, port, role in config["listen"]:
        sources.listen(host, port, role)
    print("serving", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
