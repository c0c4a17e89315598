"""Round trips of a sync: which requests wait for which replies. The agent runs here (`LocalLink`: the same zip
and streams as on a machine, no SSH), and the sync's timeline says when each request went and each reply came."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudsd.sync import timeline
from cloudsd.sync.agent import agent_path
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import push_models
from cloudsd.ui import UIProfile, profile
from tests.sync_helpers import LocalLink


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[UIProfile, list[tuple[str, list[str]]]]]:
    """An A1111 profile whose data folder is under tmp_path and whose UI (a local HTTP server) notes each
    refresh call with the LoRA files present at that moment."""
    data = tmp_path / "machine" / "webui"
    seen: list[tuple[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            lora = data / "models" / "Lora"
            seen.append((self.path, sorted(p.name for p in lora.rglob("*.safetensors")) if lora.exists() else []))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield replace(profile("a1111"), data_dir=str(data), internal_port=server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_ui_refresh_goes_right_behind_the_commit(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                     tmp_path: Path) -> None:
    """The rescan is sent before the commit's reply comes back (the agent answers them in order: one round
    trip for both, not two), and the UI still sees every verified file in place when it rescans."""
    profile_, seen = ui
    names = [f"l{i}.safetensors" for i in range(5)]
    for name in names:
        path = tmp_path / "src" / "Lora" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(50_000))
    timeline.start()
    try:
        summary = push_models(LocalLink(), profile_, [ModelRequest(str(tmp_path / "src"))])
        marks = timeline.marks()
    finally:
        timeline.stop()
    assert sorted(r.outcome for r in summary.results) == ["sent"] * 5
    assert summary.refresh and set(summary.refresh.values()) == {200}
    assert seen and all(files == names for _, files in seen)
    at = {name: t for name, t in marks}
    commit = next(name.split()[1] for name, _ in marks if name.startswith("request") and name.endswith("commit"))
    refresh = next(name for name, _ in marks if name.startswith("request") and name.endswith("refresh"))
    assert at[refresh] < at[f"reply {commit}"], marks


def test_nothing_to_send_is_one_request_and_no_refresh(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                       tmp_path: Path) -> None:
    profile_, seen = ui
    (tmp_path / "src" / "Lora").mkdir(parents=True)
    (tmp_path / "src" / "Lora" / "a.safetensors").write_bytes(b"a" * 1000)
    link = LocalLink()
    push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    seen.clear()
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert again.agent_runs == 1 and again.refresh == {} and seen == []
    assert [r.outcome for r in again.results] == ["present"]


def test_the_agent_is_unpacked_with_its_bytecode_compiled_once(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                              tmp_path: Path) -> None:
    """A zip cannot hold Python's bytecode cache, so every start of the agent (each sync, each stream) compiled
    its modules again; unpacked, it is compiled by the machine's python3 at upload, once, and another version's
    copy is removed."""
    profile_, _ = ui
    state = tmp_path / "machine" / ".cloudsd"
    (state / "agent-0000000000000000.pyz").parent.mkdir(parents=True)
    (state / "agent-0000000000000000.pyz").write_bytes(b"an older agent")
    (tmp_path / "src" / "Lora").mkdir(parents=True)
    (tmp_path / "src" / "Lora" / "a.safetensors").write_bytes(os.urandom(5000))
    link = LocalLink()
    assert [r.outcome for r in push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))]).results] == ["sent"]
    folder = Path(agent_path(str(state)))
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("agent-")) == [folder.name]
    cached = {p.name.split(".")[0] for p in (folder / "cloudsd_agent" / "__pycache__").glob("*.pyc")}
    assert {"main", "common", "serve", "streams", "web"} <= cached
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert again.agent_runs == 1 and [r.outcome for r in again.results] == ["present"]
