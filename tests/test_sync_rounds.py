"""Round trips of a sync: which requests wait for which replies. The agent runs here (`LocalLink`: the same zip
and streams as on a machine, no SSH), and the sync's timeline says when each request went and each reply came."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloudsd.sync import timeline
from cloudsd.sync.agent import agent_path
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import PushSummary, push_models
from cloudsd.sync.outputs import pull_outputs
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


class _CommitRepliesHeld(LocalLink):
    """A LocalLink whose `serve` channel holds back the agent's answer to each `commit` until a `refresh`
    request has gone out (or 5 s passed): a sync that waits for the commit's answer before it asks for the
    rescan gets it 5 s late. Deterministic where timing the two on a link with no round trip is not."""

    def __init__(self) -> None:
        super().__init__()
        self.refresh_sent = threading.Event()
        self.held_s: list[float] = []

    def open_stream(self, command: str) -> Any:
        stream = super().open_stream(command)
        return _HoldingServe(stream, self) if command.endswith(" serve") else stream


class _HoldingServe:
    def __init__(self, inner: Any, link: _CommitRepliesHeld) -> None:
        self.inner, self.link = inner, link
        self.commits: set[int] = set()
        self.pending = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        for line in bytes(data).splitlines():
            request = json.loads(line)
            if request.get("op") == "commit":
                self.commits.add(request["id"])
            elif request.get("op") == "refresh":
                self.link.refresh_sent.set()
        self.inner.sendall(data)

    def recv(self, size: int) -> bytes:
        data = self.pending + self.inner.recv(size)
        *lines, self.pending = data.split(b"\n")
        for line in lines:
            if line and json.loads(line).get("id") in self.commits:
                started = time.monotonic()
                self.link.refresh_sent.wait(5)
                self.link.held_s.append(time.monotonic() - started)
        return b"".join(line + b"\n" for line in lines) if lines or not data else self.recv(size)


def test_the_ui_refresh_goes_right_behind_the_commit(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                     tmp_path: Path) -> None:
    """The rescan is asked for before the commit's answer comes back (the agent answers them in order: one
    round trip for both, not two), and the UI still sees every verified file in place when it rescans."""
    profile_, seen = ui
    names = [f"l{i}.safetensors" for i in range(5)]
    for name in names:
        path = tmp_path / "src" / "Lora" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(50_000))
    link = _CommitRepliesHeld()
    summary = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert sorted(r.outcome for r in summary.results) == ["sent"] * 5
    assert summary.refresh and set(summary.refresh.values()) == {200}
    assert seen and all(files == names for _, files in seen)
    assert link.held_s and max(link.held_s) < 2.5, link.held_s  # the refresh went while the commit's answer was held


def test_nothing_to_send_is_one_request_and_no_refresh(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                       tmp_path: Path) -> None:
    profile_, seen = ui
    (tmp_path / "src" / "Lora").mkdir(parents=True)
    (tmp_path / "src" / "Lora" / "a.safetensors").write_bytes(b"a" * 1000)
    link = LocalLink()
    first = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    seen.clear()
    # what the ledger tells `cloudsd sync models`: the machine holds what the first sync put there
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))], present=_remotes(first))
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
    first = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert [r.outcome for r in first.results] == ["sent"]
    folder = Path(agent_path(str(state)))
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("agent-")) == [folder.name]
    cached = {p.name.split(".")[0] for p in (folder / "cloudsd_agent" / "__pycache__").glob("*.pyc")}
    assert {"main", "common", "serve", "streams", "web"} <= cached
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))], present=_remotes(first))
    assert again.agent_runs == 1 and [r.outcome for r in again.results] == ["present"]


def _remotes(summary: PushSummary) -> set[str]:
    return {r.remote for r in summary.results}


def test_the_streams_start_while_the_index_is_on_its_way(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                        tmp_path: Path) -> None:
    """Files the machine is not known to hold: their streams' agents start before the index's reply (not a
    round trip and a Python start after it), and they carry the files. Files it is known to hold start none,
    even when one of them turns out missing: the index decides what is sent, and a stream opens for it then."""
    profile_, _ = ui
    names = [f"l{i}.safetensors" for i in range(6)]
    for name in names:
        path = tmp_path / "src" / "Lora" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(3000))
    link = LocalLink()
    push_models(link, profile_, [ModelRequest(str(tmp_path / "src" / "Lora" / names[0]))])  # the agent is there
    timeline.start()
    try:
        summary = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
        marks = [name for name, _ in timeline.marks()]
    finally:
        timeline.stop()
    assert sorted(r.outcome for r in summary.results) == ["present"] + ["sent"] * 5
    index = next(name.split()[1] for name in marks if name.startswith("request") and name.endswith("index"))
    assert marks.index("prestart 2") < marks.index(f"reply {index}"), marks
    assert summary.agent_runs == 3, "serve and the two streams started ahead, no more"
    assert sum(" recv" in c for c in link.commands[-3:]) == 2

    (profile_path := Path(profile_.data_dir) / "models" / "Lora" / names[1]).unlink()
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))], present=_remotes(summary))
    assert sorted(r.outcome for r in again.results) == ["present"] * 5 + ["sent"]
    assert profile_path.read_bytes() == (tmp_path / "src" / "Lora" / names[1]).read_bytes()
    assert again.agent_runs == 2, "serve, and one stream opened once the index said what to send"


def test_streams_started_for_nothing_end_quietly(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                                 tmp_path: Path) -> None:
    """A push the machine needs nothing of, though nothing said so beforehand: the streams started ahead are
    ended unused, each agent exits 0 with nothing on its error output, and no partial file is left."""
    profile_, _ = ui
    (tmp_path / "src" / "Lora").mkdir(parents=True)
    (tmp_path / "src" / "Lora" / "a.safetensors").write_bytes(os.urandom(5000))
    link = _Recording()
    push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    link.streams.clear()
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert [r.outcome for r in again.results] == ["present"] and again.agent_runs == 2
    (stream,) = [s for s in link.streams if " recv" in s.process.args[-1]]
    assert stream.exit_status(10) == 0 and stream.stderr_text() == ""
    assert not list(Path(profile_.data_dir).rglob("*.partial"))


class _Recording(LocalLink):
    """A LocalLink that keeps each stream it opened."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[Any] = []

    def open_stream(self, command: str) -> Any:
        stream = super().open_stream(command)
        self.streams.append(stream)
        return stream


def test_a_pull_starts_its_streams_while_the_listing_is_on_its_way(
        ui: tuple[UIProfile, list[tuple[str, list[str]]]], tmp_path: Path) -> None:
    """Over a link whose round trip is known (an OpenSSH master timed it), a pull starts an evening's worth of
    streams with its listing; it uses what it needs, and the rest, like all of them when nothing is new, end
    unused and quietly."""
    profile_, _ = ui
    outputs = Path(profile_.data_dir) / profile_.output_dir / "txt2img-images"
    outputs.mkdir(parents=True)
    for i in range(3):
        (outputs / f"{i:05d}.png").write_bytes(os.urandom(20_000 + i))
    link = _Recording()
    link.rtt_s = 0.05  # type: ignore[attr-defined]  # what the master measured: 4 streams started ahead
    dest = tmp_path / "home"
    pull_outputs(link, profile_, tmp_path / "warmup")  # the agent is there
    for name in ("00000.png", "00001.png"):
        (Path(profile_.data_dir) / profile_.output_dir / "txt2img-images" / name).touch()  # pulled again: new mtime
    link.streams.clear()
    timeline.start()
    try:
        pulled = pull_outputs(link, profile_, dest)
        marks = [name for name, _ in timeline.marks()]
    finally:
        timeline.stop()
    assert sorted(local for _, local in pulled.pulled) == [f"txt2img-images/{i:05d}.png" for i in range(3)]
    for i in range(3):
        assert (dest / "txt2img-images" / f"{i:05d}.png").read_bytes() == (outputs / f"{i:05d}.png").read_bytes()
    assert pulled.agent_runs == 5 and "streams 3" in marks, (pulled.agent_runs, marks)
    first = [s for s in link.streams if s.process.args[-1].endswith(" send")]
    again = pull_outputs(link, profile_, dest)
    assert again.pulled == [] and again.agent_runs == 5
    unused = [s for s in link.streams if s.process.args[-1].endswith(" send") and s not in first]
    assert len(first) == len(unused) == 4
    assert all(s.exit_status(10) == 0 and s.stderr_text() == "" for s in unused)
    assert all(s.stderr_text() == "" for s in first)


def test_small_files_are_committed_in_batches_while_the_push_goes_on(
        ui: tuple[UIProfile, list[tuple[str, list[str]]]], tmp_path: Path) -> None:
    """The end of a push waits for the last batch of commits, not for all of them: batches go as the machine
    reports files written, before the last acks are in; each file is verified and in place, and the agent's
    index knows every digest (a second sync finds all of them present with one request)."""
    profile_, _ = ui
    src = tmp_path / "src" / "Lora"
    src.mkdir(parents=True)
    for i in range(300):
        (src / f"l{i:03d}.safetensors").write_bytes(os.urandom(2000 + i))
    link = LocalLink()
    timeline.start()
    try:
        summary = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
        marks = [name for name, _ in timeline.marks()]
    finally:
        timeline.stop()
    assert [r.outcome for r in summary.results] == ["sent"] * 300
    commits = [i for i, name in enumerate(marks) if name.startswith("request") and name.endswith("commit")]
    assert len(commits) >= 300 // 64 + 1 and commits[0] < marks.index("data-acked"), marks
    lora = Path(profile_.data_dir) / "models" / "Lora"
    assert sorted(p.name for p in lora.iterdir()) == sorted(p.name for p in src.iterdir())  # no partial left
    assert all((lora / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    again = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))], present=_remotes(summary))
    assert again.agent_runs == 1 and {r.outcome for r in again.results} == {"present"}


def test_a_file_whose_digest_is_cached_is_not_hashed_again_and_a_stale_one_is_caught(
        ui: tuple[UIProfile, list[tuple[str, list[str]]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushed to another machine, a file the hash cache knows (same size and mtime) goes out unread by Python:
    the machine's digest of what it got must equal the cached one. A file changed behind an unchanged mtime
    fails that check, is sent again whole and hashed, and the machine ends up with what the disk holds now."""
    import hashlib

    from cloudsd.sync import push

    profile_, _ = ui
    src = tmp_path / "src" / "Lora"
    src.mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (src / name).write_bytes(os.urandom(4000))
    link = LocalLink()
    push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    lora = Path(profile_.data_dir) / "models" / "Lora"
    for p in lora.iterdir():
        p.unlink()  # another evening's machine
    st = (src / "b.safetensors").stat()
    changed = os.urandom(4000)
    (src / "b.safetensors").write_bytes(changed)
    os.utime(src / "b.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    made: list[str] = []
    monkeypatch.setattr(push, "hashlib", type("H", (), {"sha256": staticmethod(
        lambda *a: made.append("digest") or hashlib.sha256(*a))}))
    summary = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
    assert {r.name: r.outcome for r in summary.results} == {"a.safetensors": "sent", "b.safetensors": "sent"}
    assert made == ["digest"], "only the changed file, on its second sending, was hashed here"
    assert (lora / "a.safetensors").read_bytes() == (src / "a.safetensors").read_bytes()
    assert (lora / "b.safetensors").read_bytes() == changed
    assert {r.name: r.sha256 for r in summary.results}["b.safetensors"] == hashlib.sha256(changed).hexdigest()


def test_an_empty_file_is_pushed_hashed_or_not(ui: tuple[UIProfile, list[tuple[str, list[str]]]],
                                              tmp_path: Path) -> None:
    """A 0-byte file has only its header to send; it arrives (and again to another machine, its digest known)."""
    profile_, _ = ui
    src = tmp_path / "src" / "Lora"
    src.mkdir(parents=True)
    (src / "empty.safetensors").write_bytes(b"")
    link = LocalLink()
    lora = Path(profile_.data_dir) / "models" / "Lora"
    for _ in range(2):  # the second time, as to another evening's machine, with the digest cached
        summary = push_models(link, profile_, [ModelRequest(str(tmp_path / "src"))])
        assert [(r.outcome, r.sha256) for r in summary.results] == [
            ("sent", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")], summary.results
        assert (lora / "empty.safetensors").read_bytes() == b""
        (lora / "empty.safetensors").unlink()


def test_a_pull_places_each_file_as_it_is_verified_with_few_files_open(
        ui: tuple[UIProfile, list[tuple[str, list[str]]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An evening's outputs are placed while the rest still arrive (not all at the end), each already whole
    where it lands, and the pull holds a file open only while its bytes arrive: 400 outputs pull under an
    open-files limit of 64 more than the test holds (macOS gives a process 256)."""
    import resource

    from cloudsd.sync import outputs as outputs_module
    from cloudsd.sync.progress import RecordingProgress

    profile_, _ = ui
    folder = Path(profile_.data_dir) / profile_.output_dir / "txt2img-images"
    folder.mkdir(parents=True)
    made = {f"txt2img-images/{i:05d}.png": os.urandom(2_000 + i) for i in range(400)}
    for rel, data in made.items():
        (Path(profile_.data_dir) / profile_.output_dir / rel).write_bytes(data)
    dest = tmp_path / "home"
    pull_outputs(LocalLink(), profile_, tmp_path / "warmup")  # the agent is unpacked: its files are not counted

    class Watching(RecordingProgress):
        def __init__(self) -> None:
            super().__init__()
            self.early: list[str] = []  # placed before the last bytes came

        def finish(self, key: str, outcome: str) -> None:
            assert outcome == "verified" and (dest / key).read_bytes() == made[key]
            if "data-received" not in [name for name, _ in timeline.marks()]:
                self.early.append(key)
            super().finish(key, outcome)

    progress = Watching()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    timeline.start()
    resource.setrlimit(resource.RLIMIT_NOFILE, (held + 64, hard))
    try:
        pulled = pull_outputs(LocalLink(), profile_, dest, progress=progress)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        timeline.stop()
    assert pulled.problems == [] and len(pulled.pulled) == 400
    assert len(progress.outcomes) == 400 and progress.early, "every file was placed after the last byte"

    # a pull that fails after files were placed keeps them, and records them: the next pull fetches nothing
    for i in range(400, 410):
        made[f"txt2img-images/{i:05d}.png"] = os.urandom(3_000)
        (folder / f"{i:05d}.png").write_bytes(made[f"txt2img-images/{i:05d}.png"])
    real_pull = outputs_module.Puller.pull

    def pull_then_drop(self: Any, jobs: list[Any]) -> None:
        real_pull(self, jobs)
        raise outputs_module.SyncError("the connection dropped")

    monkeypatch.setattr(outputs_module.Puller, "pull", pull_then_drop)
    with pytest.raises(outputs_module.SyncError, match="dropped"):
        pull_outputs(LocalLink(), profile_, dest)
    monkeypatch.undo()
    for i in range(400, 410):
        assert (dest / "txt2img-images" / f"{i:05d}.png").read_bytes() == made[f"txt2img-images/{i:05d}.png"]
    assert pull_outputs(LocalLink(), profile_, dest).pulled == []
