"""The per-byte data path of a sync: bytes from an `ssh` process's pipe go into a file without passing through
Python where the OS allows it (and by read and write where it does not), and the sha256 of a big range is
taken from the file behind the writes, by a thread of its own."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudsd.openssh import ProcessStream
from cloudsd.sync.digest import CHUNK, TrailingDigest
from cloudsd.sync.streams import StreamReader
from tests.sync_helpers import frame, install_agent, parse_frames


def producer(data: bytes) -> ProcessStream:
    """A process that writes `data` to its stdout, as an `ssh` stream does, and reads nothing."""
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)
    stream = ProcessStream(process)
    stream.sendall(data)
    stream.shutdown_write()
    return stream


def drain_into(stream: ProcessStream, fd: int, offset: int) -> int:
    moved = 0
    while n := stream.recv_into_file(fd, offset + moved, 1 << 20):
        moved += n
    return moved


@pytest.mark.parametrize("append", [False, True], ids=["splice", "append-mode-file-refuses-splice"])
def test_a_process_stream_moves_its_output_into_a_file_at_an_offset(tmp_path: Path, append: bool) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    target = tmp_path / "f"
    target.write_bytes(b"x" * 10)
    fd = os.open(target, os.O_WRONLY | (os.O_APPEND if append else 0))
    stream = producer(data)
    try:
        moved = drain_into(stream, fd, 0 if append else 10)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # like pwrite: the file's position stays
    finally:
        os.close(fd)
        stream.close()
    assert moved == len(data)
    if append:  # splice refuses an O_APPEND file (EINVAL); read and write append, as pwrite does there
        assert stream._splice is False and target.read_bytes() == b"x" * 10 + data
    else:
        assert target.read_bytes() == b"x" * 10 + data


def test_a_closed_process_stream_moves_nothing(tmp_path: Path) -> None:
    stream = producer(b"abc")
    stream.close()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert stream.recv_into_file(fd, 0, 100) == 0
    finally:
        os.close(fd)


def test_write_into_writes_what_was_read_ahead_then_the_rest_from_the_stream(tmp_path: Path) -> None:
    body = os.urandom(2 * (1 << 20) + 7)
    stream = producer(b'{"fid": 1}\n' + body + b'{"sha256": "x"}\n')
    reader = StreamReader(stream)
    assert reader.readline() == b'{"fid": 1}'  # reads ahead into the body
    assert len(reader.buf) > 0
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    pieces: list[int] = []
    try:
        reader.write_into(fd, 5, len(body), pieces.append)
        assert reader.readline() == b'{"sha256": "x"}'  # exactly the body was taken, not a byte more
    finally:
        os.close(fd)
        stream.close()
    assert sum(pieces) == len(body) and len(pieces) > 1
    assert (tmp_path / "f").read_bytes() == bytes(5) + body


def test_the_trailing_digest_hashes_what_was_written_behind_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "f"
    head, body = os.urandom(1000), os.urandom(5 * CHUNK + 321)
    path.write_bytes(head)
    with path.open("r+b", buffering=0) as f, TrailingDigest(path, len(head)) as digest:
        for at in range(0, len(body), 100_000):
            piece = body[at:at + 100_000]
            os.pwrite(f.fileno(), piece, len(head) + at)
            digest.advance(len(piece))
        assert digest.hexdigest() == hashlib.sha256(body).hexdigest()


def test_the_trailing_digest_reports_a_file_shorter_than_written(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * CHUNK))
    with TrailingDigest(path, 0) as digest:
        digest.advance(4 * CHUNK)  # more than the file holds
        with pytest.raises(OSError, match="shorter"):
            digest.hexdigest()


def test_leaving_the_trailing_digest_without_a_digest_stops_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(10))
    with pytest.raises(RuntimeError), TrailingDigest(path, 0) as digest:
        digest.advance(10)
        raise RuntimeError("the writer failed")
    assert not digest._thread.is_alive()


# The agent's side: `recv` splices a block's bytes from its stdin pipe into the partial file, `send` hands a file's
# pages to its stdout with sendfile. Where the kernel refuses (stdin a regular file; stdout opened to append),
# both read and write instead, with the same bytes.

def run_agent(agent_path: Path, job: str, data: bytes, *, stdin_file: Path | None = None,
              stdout_file: Path | None = None) -> tuple[int, bytes]:
    argv = [sys.executable, "-I", str(agent_path), job]
    out = stdout_file.open("ab") if stdout_file is not None else None
    try:
        if stdin_file is None:
            proc = subprocess.run(argv, input=data, stdout=out or subprocess.PIPE, timeout=60)
        else:
            stdin_file.write_bytes(data)
            with stdin_file.open("rb") as given:
                proc = subprocess.run(argv, stdin=given, stdout=out or subprocess.PIPE, timeout=60)
    finally:
        if out is not None:
            out.close()
    return proc.returncode, stdout_file.read_bytes() if stdout_file is not None else proc.stdout


@pytest.mark.parametrize("stdin", ["pipe", "file"])
def test_recv_writes_blocks_bigger_than_its_buffer_from_a_pipe_or_a_file(tmp_path: Path, stdin: str) -> None:
    agent_path = install_agent(tmp_path / "state")
    data = os.urandom(3 * (1 << 20) + 999)
    partial = tmp_path / ".big.partial"
    partial.write_bytes(bytes(len(data)))
    cut = (1 << 20) + 5
    frames = (frame({"op": "data", "fid": 1, "path": str(partial), "off": cut, "len": len(data) - cut}, data[cut:])
              + frame({"op": "data", "fid": 1, "path": str(partial), "off": 0, "len": cut}, data[:cut]))
    code, out = run_agent(agent_path, "recv", frames, stdin_file=tmp_path / "in" if stdin == "file" else None)
    assert code == 0 and [json.loads(x)["off"] for x in out.splitlines()] == [cut, 0]
    assert partial.read_bytes() == data


@pytest.mark.parametrize("stdout", ["pipe", "append-mode-file"])
def test_send_frames_a_file_through_a_pipe_or_a_file_that_refuses_sendfile(tmp_path: Path, stdout: str) -> None:
    agent_path = install_agent(tmp_path / "state")
    source = tmp_path / "a.png"
    data = os.urandom(2 * (1 << 20) + 77)
    source.write_bytes(data)
    item = {"fid": 1, "path": str(source), "size": len(data), "mtime_ns": source.stat().st_mtime_ns,
            "off": 10, "len": len(data) - 20}
    code, out = run_agent(agent_path, "send", json.dumps({"items": [item]}).encode() + b"\n",
                          stdout_file=tmp_path / "out" if stdout != "pipe" else None)
    assert code == 0
    (head, body, trailer), end = list(parse_frames(out))
    assert head == {"fid": 1, "off": 10, "len": len(data) - 20} and body == data[10:-10]
    assert trailer == {"sha256": hashlib.sha256(body).hexdigest(), "short": False} and end[0] == {"end": True}
