"""A fake RunPod API on 127.0.0.1: REST v2 as RunPod's OpenAPI document describes it, pods that are real
containers.

Every request and every answer is validated against `runpod_v2_schema.json` (see `runpod_rest_v2.py`).
Auth is `Authorization: Bearer <key>` only; anything else is a 401 problem. A pod's own `RUNPOD_API_KEY` may
read, stop and terminate that pod only (403 otherwise). Every answer carries `RateLimit` and
`RateLimit-Policy`; 429s carry `Retry-After`. There is no GraphQL here: a request to `/graphql` (or any
retired route) is recorded in `retired_calls` and answered 404, and the fixtures fail a test that made one.
Pods, billing and faults live in `runpod_cloud.FakeCloud`; this module is the wire.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.machine_api import MACHINE_API_URL, MachineApi
from tests.fakes.runpod_cloud import FakeCloud, FakePod, Faults
from tests.fakes.runpod_rest_v2 import (
    ACCOUNT,
    RestV2,
    check_body,
    check_query,
    check_response,
    find_operation,
    problem,
)

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    b"</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
RATE_QUOTA_PER_MINUTE = 600


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    scope: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # the tests read fake.requests instead
        pass

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")

    def do_PATCH(self) -> None:
        self.server.fake._handle(self, "PATCH")

    def do_PUT(self) -> None:
        self.server.fake._handle(self, "PUT")


class _UnixHandler(_Handler):
    """The same handler on the machines' Unix socket, where TCP options do not apply."""

    disable_nagle_algorithm = False


class FakeRunPod:
    """RunPod's API on 127.0.0.1; `with FakeRunPod() as fake:` or start()/stop().

    `boot_machines=False` keeps pods as records only (no Docker needed); `image` is the container image
    every pod boots, whatever `image` asked for; `machines` injects a FakeMachines.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        pub_key: str = "",
        balance_usd: float = 25.0,
        boot_machines: bool = True,
        image: str | None = None,
        machines: Any = None,
    ) -> None:
        self.api_key = api_key or "rpa_" + secrets.token_hex(20).upper()
        self.machine_api: MachineApi | None = None  # the API as the pods see it (a Unix socket + relay)
        if machines is None and boot_machines:
            from tests.fakes.machines import TEST_IMAGE, FakeMachines

            self.machine_api = MachineApi()
            machines = FakeMachines(f"runpod-{secrets.token_hex(3)}", image=image or TEST_IMAGE,
                                    api_dir=self.machine_api.dir)
        self.cloud = FakeCloud(pub_key=pub_key, balance_usd=balance_usd, machines=machines)
        if self.machine_api is not None:
            self.cloud.machine_api_url = MACHINE_API_URL
        self.requests: list[Any] = []  # every parsed JSON body, in arrival order
        self.calls: list[Call] = []  # every request, in arrival order
        self.retired_calls: list[Call] = []  # requests to GraphQL or REST v1 routes: there must be none
        self.violations: list[str] = []  # answers the fake would have sent off-schema (a bug in the fake)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._proxy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # ssh.proxy: accepts and hangs up
        self._proxy.bind(("127.0.0.1", 0))
        self._proxy.listen(16)
        self.proxy_port = int(self._proxy.getsockname()[1])
        self.v2 = RestV2(self.cloud, self.proxy_port)
        self._window_started = time.monotonic()
        self._window_used = 0

    # -- lifecycle and the test-facing surface ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeRunPod is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def faults(self) -> Faults:
        return self.cloud.faults

    @property
    def pods(self) -> dict[str, FakePod]:
        return self.cloud.pods

    @property
    def machines(self) -> Any:
        return self.cloud.machines

    def billed_usd(self, pod_id: str) -> float:
        return self.cloud.billed_usd(pod_id)

    def spend_total(self) -> float:
        return self.cloud.spend_total()

    def live_pods(self) -> list[FakePod]:
        return self.cloud.live_pods()

    def pod_view(self, pod_id: str) -> dict[str, Any]:
        return self.v2.pod_view(self.cloud.pods[pod_id])

    def start(self) -> FakeRunPod:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        threading.Thread(target=self._serve_proxy, daemon=True).start()
        if self.machine_api is not None:
            self.machine_api.start(_UnixHandler, fake=self)
        return self

    def stop(self) -> None:
        """Stop serving and remove every container this fake started."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._proxy.close()
        self.cloud.close()
        self.v2.remove_all_volumes()
        if self.machine_api is not None:
            self.machine_api.stop()

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve_proxy(self) -> None:
        """RunPod's SSH proxy carries a shell only; this one carries nothing: every connection is closed."""
        while not self._stopping.is_set():
            try:
                connection, _ = self._proxy.accept()
            except OSError:
                return
            connection.close()

    # -- HTTP ----------------------------------------------------------------------------------------
    def _handle(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ...
        if body is not ... and body is not None:
            self.requests.append(body)
        scope = self._scope(handler)
        call = Call(method, url.path, query, None if body is ... else body, scope)
        self.calls.append(call)
        if not url.path.startswith("/v2/"):
            self.retired_calls.append(call)
            return self._send(handler, 404, problem(404, f"{url.path} is not a REST v2 route"))
        if self._gateway_fault(handler):
            return
        if scope is None:
            return self._send(handler, 401, problem(401, "missing or invalid bearer token"))
        status, operation, allowed = find_operation(method, url.path)
        if operation is None:
            headers = {"Allow": ", ".join(allowed)} if status == 405 else {}
            return self._send(handler, status, problem(status, f"no route {method} {url.path}"), headers=headers)
        if body is ...:
            return self._send(handler, 400, problem(400, "the body is not valid JSON"))
        refused = check_query(operation, query) or check_body(operation, body)
        if refused:
            code, detail, errors = refused
            return self._send(handler, code, problem(code, detail, errors))
        if scope == ACCOUNT and (operation.method, operation.path) == ("post", "/v2/pods") \
                and self.faults.create_timeout_once:
            self.faults.create_timeout_once = False
            code, payload = self.v2.handle(operation, scope, query, body)
            self._stopping.wait(self.faults.create_delay_s)
            return self._send(handler, code, payload)
        code, payload = self.v2.handle(operation, scope, query, body)
        errors = [] if code == 500 and self.faults.billing_unavailable else check_response(operation, code, payload)
        if errors:
            self.violations += [f"{method} {url.path} -> {code}: {e}" for e in errors]
            return self._send(handler, 500, problem(500, "the fake answered off-schema: " + errors[0]))
        self._send(handler, code, payload)

    def _rate_headers(self, exhausted: bool = False, reset_s: int | None = None) -> dict[str, str]:
        now = time.monotonic()
        with self.cloud.lock:
            if now - self._window_started >= 60:
                self._window_started, self._window_used = now, 0
            self._window_used += 1
            remaining = max(0, RATE_QUOTA_PER_MINUTE - self._window_used)
            reset = max(1, int(60 - (now - self._window_started)))
            if self.faults.rate_limit_exhausted > 0:
                self.faults.rate_limit_exhausted -= 1
                exhausted, reset = True, 1
        if exhausted:
            remaining = 0
        if reset_s is not None:
            reset = reset_s
        return {"RateLimit": f'"minute";r={remaining};t={reset}',
                "RateLimit-Policy": f'"minute";q={RATE_QUOTA_PER_MINUTE};w=60'}

    def _gateway_fault(self, handler: _Handler) -> bool:
        """429s and HTML 502s come from in front of the API, before auth."""
        faults = self.faults
        with self.cloud.lock:
            fault = 429 if faults.rate_limit_burst > 0 else 502 if faults.html_502 > 0 else None
            if fault == 429:
                faults.rate_limit_burst -= 1
            elif fault == 502:
                faults.html_502 -= 1
        if fault == 429:
            headers = {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
            self._send(handler, 429, problem(429, "rate limit exceeded for the minute window"), headers,
                       exhausted=True, reset_s=int(-(-(faults.retry_after_s or 0) // 1)))
        elif fault == 502:
            self._send_raw(handler, 502, HTML_502, "text/html")
        return fault is not None

    def _scope(self, handler: _Handler) -> str | None:
        auth = handler.headers.get("Authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not key:
            return None
        if secrets.compare_digest(key, self.api_key):
            return ACCOUNT
        pod = self.cloud.pod_for_key(key)
        return pod.id if pod else None

    def _send(self, handler: _Handler, status: int, payload: Any, headers: dict[str, str] | None = None,
              *, exhausted: bool = False, reset_s: int | None = None) -> None:
        every = {**self._rate_headers(exhausted, reset_s), **(headers or {})}
        if payload is None:
            return self._send_raw(handler, status, b"", None, every)
        content_type = "application/problem+json" if status >= 400 else "application/json"
        self._send_raw(handler, status, json.dumps(payload).encode(), content_type, every)

    @staticmethod
    def _send_raw(
        handler: _Handler, status: int, data: bytes, content_type: str | None, headers: dict[str, str] | None = None
    ) -> None:
        try:
            handler.send_response(status)
            if content_type:
                handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up waiting (the timeout fault): nobody to answer
            handler.close_connection = True
