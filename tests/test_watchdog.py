"""The on-machine watchdog as a real process, against the fake APIs (records only: no Docker needed).

It must end a machine with the credential scoped to that machine, act at a deadline rather than a poll
later, count web UI activity, retry a failed call with backoff, and install idempotently.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsd.core import watchdog as laptop_side
from cloudsd.providers import runpod, vastai

SCRIPT = Path(laptop_side.__file__).resolve().parents[1] / "remote" / "watchdog.py"


def wait_for(check: Callable[[], Any], deadline_s: float, what: str) -> Any:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {deadline_s} s")


class Machine:
    """A temp dir standing in for the machine's /etc/cloudsd, /run/cloudsd and /var/log/cloudsd."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env_file = root / "env"
        self.activity = root / "ui-activity"
        self.procs: list[subprocess.Popen[bytes]] = []

    def config(self, provider: str, **extra: Any) -> Path:
        """The config as cloudsd writes it, with the provider's own end calls (as `core/guard.py` builds them)."""
        build = {"runpod": runpod.self_stop_call, "vastai": vastai.self_stop_call}.get(provider)
        calls = {a: build(a).to_dict() for a in ("stop", "terminate")} if build else {}
        config = {"provider": provider, "end_calls": calls, "env_file": str(self.env_file), "activity_file": str(self.activity),
                  "state_file": str(self.root / "state.json"), "lock_file": str(self.root / "watchdog.lock"),
                  "log_file": str(self.root / "watchdog.log"), "poll_s": 60, **extra}
        path = self.root / "watchdog.json"
        path.write_text(json.dumps(config))
        return path

    def env(self, **values: str) -> None:
        self.env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()))

    def start(self, config: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config)])
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        path = self.root / "watchdog.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(tmp_path / "machine")
    m.root.mkdir()
    yield m
    m.stop()


def _pod(fake: Any) -> Any:
    return fake.cloud.create_pod(name="cloudsd-w", image="img", gpu_type_id="NVIDIA GeForce RTX 4090", gpu_count=1,
                                 cloud_type="ALL", bid_per_gpu=None, env={})


def test_runpod_deadline_terminates_with_the_pod_key_at_the_deadline(fake_runpod_api: Any, machine: Machine) -> None:
    pod = _pod(fake_runpod_api)
    machine.env(RUNPOD_API_KEY=pod.scoped_key, RUNPOD_POD_ID=pod.id, RUNPOD_API_BASE_URL=fake_runpod_api.base_url)
    deadline = time.time() + 2.0
    machine.start(machine.config("runpod", deadlines=[{"at": deadline, "reason": "time budget 2s reached"}]))
    wait_for(lambda: pod.status == "TERMINATED", 20, "the terminate")
    assert pod.status_changed_at - deadline < 8, "it sleeps until the deadline, not a 60 s poll later"
    assert fake_runpod_api.cloud.actions == [(pod.id, "terminate", pod.id)], "the pod's own key, not the account's"
    assert "time budget 2s reached" in machine.log()


def test_idle_counts_web_ui_requests_then_stops(fake_runpod_api: Any, machine: Machine) -> None:
    pod = _pod(fake_runpod_api)
    machine.env(RUNPOD_API_KEY=pod.scoped_key, RUNPOD_POD_ID=pod.id, RUNPOD_API_BASE_URL=fake_runpod_api.base_url)
    machine.activity.write_text(f"{time.time():.3f}\n")
    config = machine.config("runpod", idle_s=3, idle_action="stop", idle_reason="idle for 3s")
    machine.start(config)
    busy_until = time.monotonic() + 6
    while time.monotonic() < busy_until:  # a request every half second, as the UI records them
        machine.activity.write_text(f"{time.time():.3f}\n")
        time.sleep(0.5)
        assert pod.status == "RUNNING", "stopped although the web UI was in use"
    state = json.loads(subprocess.run([sys.executable, str(SCRIPT), "--status", "--config", str(config)],
                                      capture_output=True, text=True, check=True).stdout)
    assert state["running"] is True and state["state"]["activity_source"] == "web UI request"
    assert state["state"]["idle_deadline"] > state["now"]
    wait_for(lambda: pod.status == "EXITED", 20, "the idle stop")
    assert fake_runpod_api.cloud.actions == [(pod.id, "stop", pod.id)]


def test_status_carries_the_web_uis_restarts(machine: Machine) -> None:
    """--status (what `cloudsd status` runs over SSH) adds the boot layer's restart count, if there is one."""
    restarts = machine.root / "ui-restarts"
    config = machine.config("local", ui_restarts_file=str(restarts))

    def status() -> Any:
        return json.loads(subprocess.run([sys.executable, str(SCRIPT), "--status", "--config", str(config)],
                                         capture_output=True, text=True, check=True).stdout)

    assert status()["ui_restarts"] is None  # the UI never restarted
    restarts.write_text("2 1796600000\n")
    assert status()["ui_restarts"] == [2, 1796600000.0]


def test_vast_destroys_with_the_container_key(fake_vast: Any, machine: Machine) -> None:
    (instance,) = fake_vast.seed_instances(1, label_prefix="cloudsd-w")
    machine.env(CONTAINER_API_KEY=fake_vast.container_api_key(instance), CONTAINER_ID=str(instance),
                VAST_URL=fake_vast.base_url)
    machine.start(machine.config("vastai", deadlines=[{"at": time.time() + 1.0, "reason": "spend budget $1.00 reached"}]))
    wait_for(lambda: instance not in fake_vast.live_instances(), 20, "the destroy")
    (call,) = [r for r in fake_vast.requests if r.method == "DELETE"]
    assert call.auth == f"container:{instance}"


def test_a_failed_call_is_retried_with_backoff(fake_vast: Any, machine: Machine) -> None:
    (instance,) = fake_vast.seed_instances(1, label_prefix="cloudsd-w")
    machine.env(CONTAINER_ID=str(instance), VAST_URL=fake_vast.base_url)  # no key yet: the call cannot work
    machine.start(machine.config("vastai", deadlines=[{"at": time.time(), "reason": "time budget 1s reached"}]))
    wait_for(lambda: "failed (attempt 2" in machine.log(), 20, "two failed attempts")
    assert instance in fake_vast.live_instances()
    machine.env(CONTAINER_API_KEY=fake_vast.container_api_key(instance), CONTAINER_ID=str(instance),
                VAST_URL=fake_vast.base_url)
    wait_for(lambda: instance not in fake_vast.live_instances(), 30, "the destroy after the key appeared")


def test_install_is_idempotent_and_starts_one_watchdog(machine: Machine) -> None:
    config = {"provider": "runpod", "env_file": str(machine.env_file), "activity_file": str(machine.activity),
              "state_file": str(machine.root / "state.json"), "lock_file": str(machine.root / "watchdog.lock"),
              "log_file": str(machine.root / "watchdog.log"), "poll_s": 60}
    text = laptop_side.source()
    payload = {"source": text, "sha256": hashlib.sha256(text.encode()).hexdigest(), "config": config,
               "config_path": str(machine.root / "etc" / "watchdog.json"), "image_path": "/nonexistent/watchdog.py",
               "install_path": str(machine.root / "lib" / "watchdog.py")}

    def run_install() -> dict[str, Any]:
        out = subprocess.run(["/bin/sh", "-c", laptop_side.BOOTSTRAP], input=json.dumps(payload), text=True,
                             capture_output=True, check=True, timeout=60).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    first = run_install()
    try:
        assert first["started"] is True and first["running"] is True
        assert Path(first["script"]).read_text() == text
        second = run_install()
        assert second["started"] is False and second["running"] is True, "a second install starts no second one"
        assert second["state"]["pid"] == first["pid"]
    finally:
        os.kill(first["pid"], signal.SIGTERM)


class _Answer(http.server.BaseHTTPRequestHandler):
    """A stand-in API that answers every request with `server.answer` (status, headers, body)."""

    def _any(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _api(status: int, body: bytes = b"", **headers: str) -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.answer, server.seen = (status, headers, body), []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(machine: Machine) -> None:
    with _api(200, b'{"id": "pod1"}') as elsewhere, _api(200) as api:
        api.answer = (307, {"Location": f"http://127.0.0.1:{elsewhere.server_address[1]}/steal"}, b"")
        machine.env(RUNPOD_API_KEY="rpa_POD_SCOPED_KEY", RUNPOD_POD_ID="pod1",
                    RUNPOD_API_BASE_URL=f"http://127.0.0.1:{api.server_address[1]}")
        machine.start(machine.config("runpod", deadlines=[{"at": time.time(), "reason": "time budget 1s reached"}]))
        wait_for(lambda: "failed (attempt 2" in machine.log(), 20, "two refused attempts")
        assert elsewhere.seen == [], "the redirect target never saw the request, nor the key"
        assert api.seen[0] == ("POST", "/v2/pods/pod1/action", "Bearer rpa_POD_SCOPED_KEY")
        assert "HTTP 307" in machine.log()


def test_success_counts_only_on_the_documented_answer(machine: Machine) -> None:
    with _api(200, b'{"detail": "maintenance page"}', **{"Content-Type": "application/json"}) as api:
        machine.env(RUNPOD_API_KEY="rpa_K", RUNPOD_POD_ID="pod1",
                    RUNPOD_API_BASE_URL=f"http://127.0.0.1:{api.server_address[1]}")
        machine.start(machine.config("runpod", idle_s=0.5, idle_action="stop"))
        wait_for(lambda: "failed (attempt 2" in machine.log(), 20, "two unaccepted attempts")
        assert "without the expected answer" in machine.log() and "stop accepted" not in machine.log()
        api.answer = (200, {}, b'{"id": "pod1", "status": "EXITED"}')
        wait_for(lambda: "stop accepted" in machine.log(), 30, "the stop once the documented answer came")
