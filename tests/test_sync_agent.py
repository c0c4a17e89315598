"""The agent that runs on the machine, run here as the machine runs it (the same zip, python3 -I), against
temp folders: index and its digest cache, receiving, verifying and renaming, sending, listing outputs."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudsd.remote.agent.common import partial_path
from cloudsd.sync.agent import build_agent
from tests.sync_helpers import LocalAgent, frame, install_agent, parse_frames, run_stream


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def agent(tmp_path: Path) -> LocalAgent:
    running = LocalAgent(tmp_path / "state")
    yield running  # type: ignore[misc]
    running.close()


def test_agent_zip_is_deterministic_and_python38_syntax() -> None:
    data, name = build_agent()
    assert build_agent.__wrapped__() == (data, name)  # type: ignore[attr-defined]
    assert name == f"agent-{sha(data)[:16]}.pyz"
    from importlib import resources

    for entry in resources.files("cloudsd.remote.agent").iterdir():
        if entry.name.endswith(".py"):
            ast.parse(entry.read_text(), feature_version=(3, 8))  # GPU images may ship an older python3


def test_index_reports_sizes_digests_partials_and_disks(agent: LocalAgent, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.safetensors").write_bytes(b"a" * 1000)
    (models / "b.safetensors").write_bytes(b"b" * 10)
    Path(partial_path(str(models / "c.safetensors"))).write_bytes(b"c" * 5)
    Path(partial_path(str(models / "c.safetensors")) + ".json").write_text('{"identity": {"size": 9}, "prefix": 4}')
    reply = agent.request("index", free=[str(models)], files=[
        {"path": str(models / "a.safetensors"), "size": 1000},
        {"path": str(models / "b.safetensors"), "size": 11},  # another size: not hashed
        {"path": str(models / "c.safetensors"), "size": 9}])
    a, b, c = reply["files"]
    assert a["size"] == 1000 and a["sha256"] == sha(b"a" * 1000)
    assert b["size"] == 10 and "sha256" not in b
    assert "size" not in c and c["partial"] == {"size": 5, "note": {"identity": {"size": 9}, "prefix": 4}}
    disk = reply["free"][str(models)]
    assert disk["free"] > 0 and disk["dev"] == os.stat(models).st_dev


def test_index_does_not_rehash_an_unchanged_file(agent: LocalAgent, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x" * 4096)
    first = agent.request("index", files=[{"path": str(path), "size": 4096}])["files"][0]["sha256"]
    st = path.stat()
    path.write_bytes(b"y" * 4096)  # same size; then the old mtime back: the cache cannot tell
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = agent.request("index", files=[{"path": str(path), "size": 4096}])["files"][0]["sha256"]
    assert again == first == sha(b"x" * 4096)  # served from the index, not read again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # any change of mtime: read again
    third = agent.request("index", files=[{"path": str(path), "size": 4096}])["files"][0]["sha256"]
    assert third == sha(b"y" * 4096)
    saved = json.loads((agent.path.parent / "index.json").read_text())
    assert saved["files"][str(path)][2] == third


def test_small_file_frames_then_commit_renames_with_mtime(agent: LocalAgent, tmp_path: Path) -> None:
    final = tmp_path / "webui" / "models" / "Lora" / "sub" / "x.safetensors"
    data = os.urandom(300_000)
    code, out = run_stream(agent.path, "recv", frame({"op": "file", "fid": 7, "path": partial_path(str(final)),
                                                      "len": len(data)}, data) + b'{"op":"end"}\n')
    assert code == 0
    wrote = json.loads(out.splitlines()[0])
    assert wrote == {"wrote": 7, "sha256": sha(data), "len": len(data)}
    assert not final.exists()  # nothing is in place before it is verified
    reply = agent.request("commit", files=[{"path": str(final), "size": len(data), "sha256": sha(data),
                                            "mtime_ns": 1_600_000_000_123_456_789, "written_sha256": sha(data)}])
    assert reply["files"][0]["ok"] and final.read_bytes() == data
    assert final.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert not Path(partial_path(str(final))).exists()


def test_commit_refuses_a_wrong_digest_and_removes_the_partial(agent: LocalAgent, tmp_path: Path) -> None:
    final = tmp_path / "y.safetensors"
    Path(partial_path(str(final))).write_bytes(b"corrupt")
    reply = agent.request("commit", files=[{"path": str(final), "size": 7, "sha256": sha(b"correct")}])
    result = reply["files"][0]
    assert not result["ok"] and result["kind"] == "hash-mismatch" and result["got"] == sha(b"corrupt")
    assert not final.exists() and not Path(partial_path(str(final))).exists()


def test_big_file_blocks_followed_and_resumed(agent: LocalAgent, tmp_path: Path) -> None:
    final = tmp_path / "big.safetensors"
    data = os.urandom(3 << 20)
    block = 1 << 20
    partial = partial_path(str(final))
    identity = {"size": len(data), "mtime_ns": 1}
    agent.request("prepare", files=[{"path": str(final), "keep": 0}])
    agent.send({"op": "follow", "path": str(final), "size": len(data), "identity": identity, "ready": 0})
    # blocks 2 and 0 arrive (out of order); block 1 never does: the run breaks here
    code, out = run_stream(agent.path, "recv", frame({"op": "data", "fid": 1, "path": partial, "off": 2 * block,
                                                      "len": block}, data[2 * block:]) +
                           frame({"op": "data", "fid": 1, "path": partial, "off": 0, "len": block}, data[:block]))
    assert code == 0 and [json.loads(x)["off"] for x in out.splitlines()] == [2 * block, 0]
    agent.send({"op": "ready", "path": str(final), "upto": block})  # the contiguous prefix
    agent.close()  # the connection drops
    note = json.loads(Path(partial + ".json").read_text())
    assert note == {"identity": identity, "prefix": block}

    # the next run: the index shows the note, the laptop keeps the verified prefix and sends the rest
    again = LocalAgent(agent.path.parent)
    try:
        entry = again.request("index", files=[{"path": str(final), "size": len(data)}])["files"][0]
        assert entry["partial"]["note"]["prefix"] == block
        again.request("prepare", files=[{"path": str(final), "keep": block}])
        assert os.path.getsize(partial) == block
        again.send({"op": "follow", "path": str(final), "size": len(data), "identity": identity, "ready": block})
        rest = frame({"op": "data", "fid": 1, "path": partial, "off": block, "len": 2 * block}, data[block:])
        assert run_stream(again.path, "recv", rest)[0] == 0
        again.send({"op": "ready", "path": str(final), "upto": len(data)})
        reply = again.request("commit", files=[{"path": str(final), "size": len(data), "sha256": sha(data)}])
        assert reply["files"][0] == {"path": str(final), "ok": True, "sha256": sha(data)}
        assert final.read_bytes() == data and not Path(partial + ".json").exists()
    finally:
        again.close()


def test_recv_reports_a_write_error_as_one_line(tmp_path: Path) -> None:
    path = install_agent(tmp_path / "state")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where a folder should be")
    code, out = run_stream(path, "recv", frame({"op": "file", "fid": 1, "path": str(blocked / "x" / ".y.partial"),
                                                "len": 3}, b"abc"))
    assert code == 3
    error = json.loads(out.splitlines()[-1])
    assert error["error"] == "os" and "not-a-folder" in error["message"]


def test_send_frames_carry_digests_and_notice_changed_files(tmp_path: Path) -> None:
    path = install_agent(tmp_path / "state")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(os.urandom(5000))
    b.write_bytes(b"bbbb")
    items = [{"fid": 1, "path": str(a), "size": 5000, "mtime_ns": a.stat().st_mtime_ns, "off": 1000, "len": 3000},
             {"fid": 2, "path": str(b), "size": 99, "mtime_ns": b.stat().st_mtime_ns},
             {"fid": 3, "path": str(tmp_path / "gone.png"), "size": 1, "mtime_ns": 1}]
    code, out = run_stream(path, "send", json.dumps({"items": items}).encode() + b"\n")
    assert code == 0
    frames = list(parse_frames(out))
    head, body, trailer = frames[0]
    assert head == {"fid": 1, "off": 1000, "len": 3000} and body == a.read_bytes()[1000:4000]
    assert trailer == {"sha256": sha(body), "short": False}
    assert frames[1][0] == {"fid": 2, "changed": True}
    assert frames[2][0]["fid"] == 3 and "missing" in frames[2][0]
    assert frames[3][0] == {"end": True}


def test_outputs_lists_regular_visible_files_and_hashes_only_namesakes(agent: LocalAgent, tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    (root / "txt2img-images" / "2026-01-01").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "txt2img-images" / "2026-01-01" / "00001-1.png").write_bytes(b"one")
    (root / "txt2img-images" / "2026-01-01" / "00002-2.png").write_bytes(b"two!")
    (root / "txt2img-images" / "2026-01-01" / ".00003-3.png.tmp").write_bytes(b"half")
    (root / ".hidden" / "x.png").write_bytes(b"x")
    (root / "link.png").symlink_to("/etc/passwd")
    reply = agent.request("outputs", root=str(root), known={}, local={"txt2img-images/2026-01-01/00001-1.png": 3,
                                                                       "txt2img-images/2026-01-01/00002-2.png": 1})
    files = {f["rel"]: f for f in reply["files"]}
    assert set(files) == {"txt2img-images/2026-01-01/00001-1.png", "txt2img-images/2026-01-01/00002-2.png"}
    assert files["txt2img-images/2026-01-01/00001-1.png"]["sha256"] == sha(b"one")  # same size here: compare
    assert "sha256" not in files["txt2img-images/2026-01-01/00002-2.png"]  # another size: differs anyway
    assert agent.request("outputs", root=str(tmp_path / "none"))["files"] == []


def test_refresh_posts_to_the_ui(agent: LocalAgent) -> None:
    seen: list[str] = []

    class UI(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"null")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), UI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reply = agent.request("refresh", port=server.server_address[1],
                              paths=["/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras"])
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras"]
    assert reply["statuses"] == {"/sdapi/v1/refresh-checkpoints": 200, "/sdapi/v1/refresh-loras": 200}


def test_unknown_request_is_a_reply_not_a_crash(agent: LocalAgent) -> None:
    reply = agent.request("launch-missiles")
    assert reply["ok"] is False and reply["kind"] == "protocol"
    assert agent.request("hash", paths=[])["sha256"] == {}


def test_a_nul_byte_in_a_name_is_a_reply_not_a_crash(agent: LocalAgent, tmp_path: Path) -> None:
    """A name with a NUL byte (from a model source's Content-Disposition, or a listing) is refused in one
    line; the agent goes on answering."""
    bad = str(tmp_path / "model\x00.safetensors")
    reply = agent.request("index", free=[str(tmp_path)], files=[{"path": bad, "size": 1}])
    assert reply["ok"] is False and reply["kind"] == "bad-name" and "null byte" in reply["message"]
    (commit,) = agent.request("commit", files=[{"path": bad, "size": 1, "sha256": "0" * 64}])["files"]
    assert commit["ok"] is False and commit["kind"] == "bad-name"
    assert agent.request("hash", paths=[])["sha256"] == {}  # still serving

    path = install_agent(tmp_path / "state2")
    code, out = run_stream(path, "send", json.dumps({"items": [{"fid": 1, "path": bad, "size": 1, "mtime_ns": 1}]})
                           .encode() + b"\n")
    assert code == 0 and [f[0] for f in parse_frames(out)][1] == {"end": True}
    assert "null byte" in list(parse_frames(out))[0][0]["missing"]
    code, out = run_stream(path, "recv", frame({"op": "file", "fid": 1, "path": bad, "len": 3}, b"abc"))
    assert code == 3 and json.loads(out.splitlines()[-1])["error"] == "bad-name"


@pytest.mark.parametrize(("job", "stdin"), [("recv", b'{"op": "end"}\n'), ("send", b'{"items": []}\n'),
                                            ("serve", b'{"op": "index", "id": 1, "files": []}\n{"op": "quit"}\n')])
def test_a_job_starts_without_the_web_or_typing(tmp_path: Path, job: str, stdin: bytes) -> None:
    """Each data stream and each sync starts a Python on the machine: what it imports is paid per stream (http.client
    with ssl and email, urllib and typing were most of a stream's start). Only fetch, resolve and refresh need them."""
    import subprocess
    import sys

    path = install_agent(tmp_path / "state")
    # -S: without site, whose imports (this venv's editable finder) would hide the agent's own
    proc = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", str(path), job], input=stdin,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert "cloudsd_agent.main" in imported
    heavy = {"http.client", "ssl", "email.parser", "urllib.parse", "urllib.request", "typing", "cloudsd_agent.web"}
    assert not heavy & imported, sorted(heavy & imported)
    if job != "serve":
        assert "cloudsd_agent.serve" not in imported
