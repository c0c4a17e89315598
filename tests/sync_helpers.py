"""Running cloudsd's agent (the same zip the machine runs) locally, and the model-source stand-in in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudsd.sync.agent import build_agent
from tests.fakes.model_sources import FakeFile, Sources, content


def install_agent(state_dir: Path) -> Path:
    data, name = build_agent()
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / name
    path.write_bytes(data)
    return path


class LocalAgent:
    """`python3 -I agent.pyz serve` as a child process; `request` sends one request and returns its reply."""

    def __init__(self, state_dir: Path) -> None:
        self.path = install_agent(state_dir)
        self.proc = subprocess.Popen([sys.executable, "-I", str(self.path), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ids = 0
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []  # everything the agent printed, to check nothing secret leaks

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        self.send({"op": op, "id": self.ids, **fields})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"agent exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            self.lines.append(line.decode())
            message = json.loads(line)
            if message.get("id") == self.ids:
                return dict(message)
            self.events.append(message)

    def close(self) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.send({"op": "quit"})
            self.proc.stdin.close()
        return self.proc.wait(timeout=30)


def run_stream(agent_path: Path, job: str, data: bytes) -> tuple[int, bytes]:
    proc = subprocess.run([sys.executable, "-I", str(agent_path), job], input=data, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout


def frame(head: dict[str, Any], body: bytes = b"") -> bytes:
    return json.dumps(head).encode() + b"\n" + body


def parse_frames(out: bytes) -> Iterator[tuple[dict[str, Any], bytes, dict[str, Any] | None]]:
    """(header, bytes, trailer) for each frame `send` wrote."""
    pos = 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        head = json.loads(out[pos:end])
        pos = end + 1
        if "len" not in head:
            yield head, b"", None
            continue
        body = out[pos:pos + head["len"]]
        pos += head["len"]
        end = out.index(b"\n", pos)
        yield head, body, json.loads(out[pos:end])
        pos = end + 1


TOKEN = "secret-civitai-token-1234"


def start_sources(files: list[FakeFile], log_path: str = "") -> tuple[Sources, dict[str, str]]:
    """Civitai on 127.0.0.1:A, Hugging Face on 127.0.0.1:B, the CDN on localhost:C: three origins."""
    sources = Sources(files, {}, token=TOKEN, log_path=log_path)
    ports = {role: sources.listen("127.0.0.1", 0, role) for role in ("civitai", "hf", "cdn")}
    sources.public = {"civitai": f"http://127.0.0.1:{ports['civitai']}", "hf": f"http://127.0.0.1:{ports['hf']}",
                      "cdn": f"http://localhost:{ports['cdn']}"}
    return sources, sources.public


__all__ = ["FakeFile", "LocalAgent", "content", "frame", "install_agent", "parse_frames", "run_stream",
           "start_sources", "TOKEN"]


class LocalLink:
    """A `Link` whose commands run on this computer (`sh -c`), each stream an `openssh.ProcessStream`: the whole
    sync (agent, streams, verification) with no SSH in between, for tests of what is sent when."""

    receive_window_bytes = send_window_bytes = 2 * 1024 * 1024

    def __init__(self) -> None:
        from cloudsd.machine import SSHEndpoint

        self.endpoint = SSHEndpoint("127.0.0.1", 22)
        self.commands: list[str] = []

    @property
    def active(self) -> bool:
        return True

    def open_stream(self, command: str) -> Any:
        from cloudsd.openssh import ProcessStream

        self.commands.append(command)
        return ProcessStream(subprocess.Popen(["sh", "-c", command.replace("exec python3 ", f"exec {sys.executable} ")],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              bufsize=0))

    def run(self, command: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
        self.commands.append(command)
        proc = subprocess.run(["sh", "-c", command], input=stdin or b"", capture_output=True, timeout=timeout_s)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
