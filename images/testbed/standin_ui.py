#!/usr/bin/env python3
"""A stand-in for the Stable Diffusion web UIs cloudsd runs, for tests and benchmarks. Stdlib only.

    standin_ui.py [--host 127.0.0.1] [--port N] [--flavor a1111|comfyui] [--data-dir DIR]

It answers the routes cloudsd relies on with the shapes the real UIs use (A1111/Forge: /internal/ping,
/sdapi/v1/*; ComfyUI: /system_stats, /object_info, /models, /prompt, /history, /view), keeps their model
listing rules (A1111 scans at start and after refresh-*, a checkpoint's hash taken from cache.json only and
computed when the checkpoint is loaded; ComfyUI rescans a folder when its mtime changes), and renders small
deterministic PNGs instead of images. /bench/* routes serve bytes for tunnel benchmarks. The time of the last request (and of the start) goes to
/run/cloudsd/ui-activity, at most once a second, for the idle watchdog: with the UI's app folder (the
testbed), written by cloudsd's own code in the real UIs, through the same hooks: for A1111/Forge the built-in
extension (images/ui/extension/scripts/cloudsd_ui_activity.py, on_app_started), for ComfyUI the custom node
(images/ui/comfyui/cloudsd_custom_nodes/cloudsd_ui_activity, an aiohttp middleware, an on_prompt handler
and the prompt queue); without an app folder, by the stand-in itself.

Runs from its own directory: standin_common.py, standin_a1111.py and standin_comfyui.py sit beside it
(in the testbed image, all four are in /opt/cloudsd/ui/). In the image it is started through stand-ins for
the real entry points (/opt/cloudsd/app/launch.py and main.py), which check the real UIs' flags and pass
what they parsed in CLOUDSD_STANDIN_CMD_FLAGS, CLOUDSD_STANDIN_API and CLOUDSD_STANDIN_ARGV.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standin_a1111 import A1111App
from standin_comfyui import ComfyApp
from standin_common import (
    A1111_DATA_DIR,
    A1111_PORT,
    ACTIVITY_FILE,
    COMFYUI_BASE_DIR,
    COMFYUI_PORT,
    HTTPError,
    json_reply,
)

MAX_BODY_BYTES = 64 << 20
BENCH_CHUNK = memoryview(bytes(range(256)) * 256)  # 64 KiB


# -- activity and logging ---------------------------------------------------------------------------------


class ActivityFile:
    """Writes the last request's time (epoch seconds) to a file, at most once a second, off the
    request threads. The start counts as activity, so a file left by an earlier boot never reads as idle."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.last_request = time.time()
        self._event = threading.Event()
        if path:
            self._event.set()
            threading.Thread(target=self._run, name="activity", daemon=True).start()

    def touch(self) -> None:
        self.last_request = time.time()
        self._event.set()

    def _run(self) -> None:
        assert self.path
        target = Path(self.path)
        while True:
            self._event.wait()
            self._event.clear()
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_text(f"{self.last_request:.3f}\n")
                os.replace(tmp, target)
            except OSError:
                pass
            time.sleep(1.0)


class LineLog:
    """One line per request to stderr from a background thread; lines are dropped, never waited on."""

    def __init__(self, enabled: bool) -> None:
        self._lines: queue.Queue[str] = queue.Queue(maxsize=10000)
        if enabled:
            threading.Thread(target=self._run, name="log", daemon=True).start()
        self.enabled = enabled

    def write(self, line: str) -> None:
        if self.enabled:
            try:
                self._lines.put_nowait(line)
            except queue.Full:
                pass

    def _run(self) -> None:
        while True:
            line = self._lines.get()
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


# -- HTTP -------------------------------------------------------------------------------------------------


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], app: A1111App | ComfyApp, activity: ActivityFile, log: LineLog
    ) -> None:
        self.app = app
        self.activity = activity
        self.log = log
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "cloudsd-standin/1"
    sys_version = ""
    disable_nagle_algorithm = True  # as uvicorn and aiohttp (asyncio sets TCP_NODELAY)
    server: StandinServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET", head=True)

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.write(f"{self.address_string()} - {format % args}")

    def _dispatch(self, method: str, head: bool = False) -> None:
        self.server.activity.touch()
        url = urlsplit(self.path)
        asgi = getattr(self.server.app, "asgi", None)  # A1111/Forge: extensions' hooks on every request
        if asgi is not None:
            asgi.request(method, url.path, [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                            for k, v in self.headers.items()])
        aiohttp_app = getattr(self.server.app, "aiohttp_app", None)  # ComfyUI: custom nodes' middlewares
        if aiohttp_app is not None:
            aiohttp_app.request(method, url.path, self.headers)
        query = parse_qs(url.query)
        try:
            body = self._read_body()
            if url.path == "/bench/bytes" and method == "GET":
                return self._bench_bytes(query, head)
            if url.path == "/bench/small" and method == "GET":
                return self._bench_small(head)
            if url.path == "/ws" and "websocket" in self.headers.get("Upgrade", "").lower():
                websocket = getattr(self.server.app, "websocket", None)  # ComfyUI's /ws
                if websocket is not None:
                    return websocket(self, query)
            reply = self.server.app.handle(method, url.path, query, body)
            if reply is None:
                reply = json_reply({"detail": "Not Found"}, 404)
        except HTTPError as exc:
            reply = json_reply(exc.payload, exc.status)
        except Exception as exc:  # a stand-in should answer, not drop the connection
            reply = json_reply({"error": type(exc).__name__, "detail": str(exc)}, 500)
        self._reply(*reply, head=head)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, {"detail": "send a Content-Length"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HTTPError(413, {"detail": "body too large"})
        return self.rfile.read(length) if length > 0 else b""

    def _reply(self, status: int, body: bytes, ctype: str, head: bool = False) -> None:
        """Status line, headers and body in one write, so ordinary replies never wait on Nagle."""
        self.log_request(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))

    def _bench_bytes(self, query: dict[str, list[str]], head: bool) -> None:
        try:
            remaining = max(0, int(query.get("n", ["0"])[0]))
        except ValueError:
            return self._reply(*json_reply({"detail": "n must be an integer"}, 422))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(remaining))
        self.end_headers()
        while remaining > 0 and not head:
            n = min(remaining, len(BENCH_CHUNK))
            self.wfile.write(BENCH_CHUNK[:n])
            remaining -= n

    def _bench_small(self, head: bool) -> None:
        """4 KiB with the headers flushed in one write and the body in a second, as uvicorn does."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "4096")
        self.end_headers()
        if not head:
            self.wfile.write(bytes(BENCH_CHUNK[:4096]))


def make_server(
    flavor: str = "a1111",
    host: str = "127.0.0.1",
    port: int | None = None,
    data_dir: str | Path | None = None,
    activity_file: str | None = ACTIVITY_FILE,
    log: bool = True,
    app_dir: str | Path | None = None,
    api: bool = True,
    cmd_flags: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> StandinServer:
    """Build (not start) a stand-in server; `port=0` picks a free port.

    `app_dir` is where the real UI would be installed (A1111/Forge load the always-on scripts of its
    extensions-builtin/ folder, ComfyUI the custom nodes its extra_model_paths.yaml names, and the activity
    file is then cloudsd's extension's or custom node's to write, through their hooks, as in the real UI); `api=False` leaves out /sdapi/v1 as A1111 without --api does;
    `cmd_flags` is what /sdapi/v1/cmd-flags answers, `argv` what ComfyUI's /system_stats reports."""
    if app_dir:  # cloudsd's extension or custom node records activity (its own file), as in the real UI
        os.environ["CLOUDSD_UI_ACTIVITY_FILE"] = activity_file or ""
        activity_file = None
    if flavor == "comfyui":
        app: A1111App | ComfyApp = ComfyApp(Path(data_dir or COMFYUI_BASE_DIR), argv,
                                            Path(app_dir) if app_dir else None)
        default_port = COMFYUI_PORT
    elif flavor in ("a1111", "forge"):
        app = A1111App(Path(data_dir or A1111_DATA_DIR), Path(app_dir) if app_dir else None, api, cmd_flags)
        default_port = A1111_PORT
    else:
        raise ValueError(f"unknown flavor {flavor!r}: use a1111 or comfyui")
    address = (host, default_port if port is None else port)
    return StandinServer(address, app, ActivityFile(activity_file), LineLog(log))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (keep 127.0.0.1: reach it over SSH)"
    )
    parser.add_argument("--port", type=int, default=None, help="default 7860 (a1111) or 8188 (comfyui)")
    parser.add_argument("--flavor", choices=("a1111", "forge", "comfyui"), default="a1111")
    parser.add_argument("--data-dir", default=None, help=f"default {A1111_DATA_DIR} or {COMFYUI_BASE_DIR}")
    parser.add_argument("--activity-file", default=ACTIVITY_FILE, help="'' to disable")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument("--app-dir", default=None, help="where the real UI would be (extensions-builtin/, extra_model_paths.yaml)")
    args = parser.parse_args(argv)
    # Set by the stand-in entry points (/opt/cloudsd/app/launch.py, main.py) from the flags they parsed.
    cmd_flags = json.loads(os.environ.get("CLOUDSD_STANDIN_CMD_FLAGS") or "{}")
    argv_env = os.environ.get("CLOUDSD_STANDIN_ARGV")
    server = make_server(
        args.flavor, args.host, args.port, args.data_dir, args.activity_file or None, not args.quiet,
        args.app_dir, os.environ.get("CLOUDSD_STANDIN_API", "1") != "0", cmd_flags,
        json.loads(argv_env) if argv_env else None,
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"stand-in {args.flavor} UI on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
