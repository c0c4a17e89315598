"""A small JSON client for the web UI at 127.0.0.1:PORT (the SSH tunnel's local end). Stdlib http.client,
one keep-alive connection per client; use one client per thread."""

from __future__ import annotations

import http.client
import json
from typing import Any

from cloudsd.errors import CloudsdError


class UIUnreachable(CloudsdError):
    """The tunnel or the UI stopped answering."""

    exit_code = 7


class UIClient:
    def __init__(self, port: int, *, timeout_s: float = 3600.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": content_type} if data is not None else {}
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile gets one fresh retry
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2 or method == "POST" and path.endswith(("txt2img", "img2img", "/prompt")):
                    raise UIUnreachable(f"the web UI closed the connection ({type(exc).__name__}).",
                                        hint="`cloudsd status` shows the machine; `cloudsd tunnel NAME` checks "
                                             "the UI.") from None
            except OSError as exc:
                self.close()
                raise UIUnreachable(f"the web UI does not answer through the tunnel ({exc}).",
                                    hint="`cloudsd status` shows the machine.") from None
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload = self.request(method, path, body)
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def get_json(self, path: str) -> Any:
        status, body = self.json("GET", path)
        if status != 200:
            raise CloudsdError(f"the web UI answered HTTP {status} to GET {path}: {str(body)[:200]}")
        return body
