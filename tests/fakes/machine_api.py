"""How a fake cloud's machines reach the fake's API: a Unix socket on the host and a relay in each machine.

The watchdog on a machine ends it through the provider's API, as on the real cloud. The test machines sit on
the `cloudsd-test` network with outbound NAT off and must not reach the host through the bridge gateway's
address. So a fake also serves its API on a Unix socket in a temp dir (`MachineApi`); FakeMachines
bind-mounts that dir into every container at `MOUNT_DIR` and, each time a container starts, runs
`machine_relay.py` inside it (`docker exec -d`: fake-cloud plumbing, not part of the image). The relay listens
on 127.0.0.1:`RELAY_PORT` in the machine and forwards each connection to the socket. The fake puts
`http://127.0.0.1:RELAY_PORT` into the machine's API base variable (RUNPOD_API_BASE_URL, VAST_URL), so the
watchdog runs the same code as against api.runpod.io or console.vast.ai.
"""

from __future__ import annotations

import os
import shutil
import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any

RELAY_PORT = 18088
MOUNT_DIR = "/run/cloudsd-fake"
SOCKET_NAME = "api.sock"
RELAY_NAME = "machine_relay.py"
MACHINE_API_URL = f"http://127.0.0.1:{RELAY_PORT}"


def relay_command() -> list[str]:
    return ["python3", f"{MOUNT_DIR}/{RELAY_NAME}", str(RELAY_PORT), f"{MOUNT_DIR}/{SOCKET_NAME}"]


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


class MachineApi:
    """The fake's API on a Unix socket in a temp dir (with the relay script beside it, for the machines)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cloudsd-fake-api-")
        os.chmod(self.dir, 0o755)
        shutil.copy(Path(__file__).with_name(RELAY_NAME), Path(self.dir) / RELAY_NAME)
        self._server: _UnixServer | None = None

    @property
    def socket_path(self) -> str:
        return str(Path(self.dir) / SOCKET_NAME)

    def start(self, handler: type, **attributes: Any) -> None:
        """Serve `handler` (a BaseHTTPRequestHandler that needs no TCP options) with `attributes` on the server."""
        server = _UnixServer(self.socket_path, handler)
        for name, value in attributes.items():
            setattr(server, name, value)
        os.chmod(self.socket_path, 0o777)  # root in the container connects; the test may run as anyone
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-api-unix", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.dir, ignore_errors=True)
