"""What `generate` does before its first job, kept short: A1111's lists are read all at once (one round trip
through the tunnel, not seven: a web UI on 127.0.0.1 that answers none of them until all are asked shows it
without timing anything), and the SSH module is imported without paramiko's optional `invoke`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudsd.core.generate_a1111 import LISTS, A1111Backend
from cloudsd.core.generate_common import Silent
from cloudsd.generate.request import GenerateRequest
from cloudsd.ui import profile

# Shapes as A1111's /sdapi/v1 answers them (modules/api/models.py), cut to the fields read.
ANSWERS = {
    "/sdapi/v1/options": {"sd_model_checkpoint": "dreamshaper_8.safetensors [879db523c3]"},
    "/sdapi/v1/sd-models": [{"title": "dreamshaper_8.safetensors [879db523c3]", "model_name": "dreamshaper_8",
                             "hash": "879db523c3", "sha256": None, "filename": "/m/dreamshaper_8.safetensors",
                             "config": None}],
    "/sdapi/v1/loras": [],
    "/sdapi/v1/samplers": [{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {}}],
    "/sdapi/v1/schedulers": [{"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                              "need_inner_model": False}],
    "/sdapi/v1/upscalers": [{"name": "None", "model_name": None, "model_path": None, "model_url": None,
                             "scale": 4}],
    "/sdapi/v1/latent-upscale-modes": [{"name": "Latent"}],
}


@pytest.fixture
def all_at_once() -> Iterator[tuple[int, list[str]]]:
    """A UI that answers its lists only once every one of them has been asked (or 503 after 10 s)."""
    barrier = threading.Barrier(len(ANSWERS), timeout=10)
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            try:
                barrier.wait()
                status, body = 200, json.dumps(ANSWERS[self.path]).encode()
            except threading.BrokenBarrierError:
                status, body = 503, b'{"detail": "asked one at a time"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()


def test_a1111_lists_are_asked_all_at_once(all_at_once: tuple[int, list[str]], tmp_path: Path) -> None:
    port, asked = all_at_once
    backend = A1111Backend(port, tmp_path, profile("a1111"))
    try:
        backend.prepare([GenerateRequest(prompt="x", sampler="DPM++ 2M", scheduler="Karras")], Silent())
    finally:
        backend.close()
    assert sorted(asked) == sorted(["/sdapi/v1/options", *LISTS])
    assert backend.catalog is not None
    assert backend.catalog.current_checkpoint == "dreamshaper_8.safetensors [879db523c3]"
    assert backend.catalog.upscalers == ["None", "Latent"]


def test_ssh_is_imported_without_invoke_which_stays_importable() -> None:
    code = ("import sys, cloudsd.ssh, paramiko.config\n"
            "print(sorted(m for m in ('invoke', 'unittest.mock') if m in sys.modules))\n"
            "import invoke\n"
            "print(paramiko.config.invoke is None, invoke.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True invoke"]
