"""`recv` and `send`: the data channels. Several run at once, each on its own SSH channel, because one SSH
channel carries at most a window per round trip (sshd's is 2 MiB for uploads).

A frame is a JSON header line, then exactly `len` bytes:
- in (`recv`): `{"op": "data", "fid", "path", "off", "len"}` writes at an offset of a partial file and is
  acked with `{"ack": fid, "off", "len"}`; `{"op": "file", "fid", "path", "len"}` writes a whole small file,
  hashed as it is written, answered with `{"wrote": fid, "sha256", "len"}`; `{"op": "end"}` ends.
- out (`send`): for each requested item, `{"fid", "off", "len"}`, the bytes, then `{"sha256", "short"}`
  (the digest of the bytes sent); `{"fid", "changed": true}` or `{"fid", "missing": …}` instead when the
  file is not what the listing said; `{"end": true}` last.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys

from .common import CHUNK, Fail, bad_name, emit, os_failure, read_exact_into, widen_pipe, write_all

TYPE_CHECKING = False  # typing costs a stream's start a few ms; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO


def run_recv() -> int:
    widen_pipe(0)
    inp = io.BufferedReader(io.FileIO(0, "rb", closefd=False), 1 << 18)
    view = memoryview(bytearray(CHUNK))
    fds: dict[str, int] = {}
    try:
        while True:
            line = inp.readline()
            head = json.loads(line) if line.strip() else {"op": "end"}
            if head["op"] == "end":
                return 0
            length, path = int(head["len"]), head["path"]
            if head["op"] == "file":
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                digest = hashlib.sha256()
                for part in _parts(inp, view, length):
                    digest.update(part)
                    write_all(fd, part)
                os.close(fd)
                emit({"wrote": head["fid"], "sha256": digest.hexdigest(), "len": length})
            else:
                if path not in fds:
                    fds[path] = os.open(path, os.O_WRONLY)
                _write_block(inp, view, fds[path], int(head["off"]), length)
                emit({"ack": head["fid"], "off": head["off"], "len": length})
    except OSError as exc:
        _report(os_failure(exc))
    except Fail as fail:
        _report(fail)
    except json.JSONDecodeError:
        _report(Fail("protocol", "a frame header that is not JSON"))
    except ValueError as exc:
        _report(bad_name(exc))
    return 3


def _report(fail: Fail) -> None:
    emit({"error": fail.kind, "message": fail.message})


def _parts(inp: BinaryIO, view: memoryview, length: int) -> Iterator[memoryview]:
    """The next `length` bytes of the stream, a buffer at a time (the same buffer, refilled)."""
    left = length
    while left:
        part = view[:min(CHUNK, left)]
        read_exact_into(inp, part)
        yield part
        left -= len(part)


def _write_block(inp: io.BufferedReader[io.FileIO], view: memoryview, fd: int, offset: int, length: int) -> None:
    """The next `length` bytes of the stream into file `fd` at `offset`. What `inp` has buffered is written
    from there; the kernel moves the rest from the pipe into the file (splice, Python 3.10+ on Linux), so the
    bytes never pass through Python. The follower in `serve` hashes them from the file, as it always did."""
    ahead = inp.peek(1)[:length] if length else b""  # buffered bytes (one read if none): the header's read-ahead
    if ahead:
        _pwrite_all(fd, memoryview(inp.read(len(ahead))), offset)
        offset, length = offset + len(ahead), length - len(ahead)
    while length and _splice[0]:
        try:
            n = os.splice(0, fd, min(length, CHUNK), offset_dst=offset)  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            _splice[0] = False  # this file system takes no splice: read and write
            break
        if not n:
            raise Fail("eof", "the stream from cloudsd ended in the middle of a file")
        offset, length = offset + n, length - n
    for part in _parts(inp, view, length):
        _pwrite_all(fd, part, offset)
        offset += len(part)


_splice = [hasattr(os, "splice")]  # os.splice: Python 3.10+ on Linux


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def run_send() -> int:
    widen_pipe(1)
    line = sys.stdin.buffer.readline()
    if not line.strip():  # started ahead and not needed: nothing asked
        return 0
    request = json.loads(line)
    view = memoryview(bytearray(CHUNK))
    for item in request["items"]:
        fid = item["fid"]
        try:
            fd = os.open(item["path"], os.O_RDONLY)
        except OSError as exc:
            emit({"fid": fid, "missing": os_failure(exc).message})
            continue
        except ValueError as exc:
            emit({"fid": fid, "missing": bad_name(exc).message})
            continue
        try:
            st = os.fstat(fd)
            if st.st_size != item["size"] or st.st_mtime_ns != item["mtime_ns"]:
                emit({"fid": fid, "changed": True})
                continue
            offset, length = item.get("off", 0), item.get("len", st.st_size)
            emit({"fid": fid, "off": offset, "len": length})
            digest, pos, end, short = hashlib.sha256(), offset, offset + length, False
            while pos < end:
                n = os.preadv(fd, [view[:min(CHUNK, end - pos)]], pos)
                if not n:  # the file shrank while it was sent: pad the frame, and say so in the trailer
                    n, short = min(CHUNK, end - pos), True
                    view[:n] = bytes(n)
                digest.update(view[:n])
                _send_piece(fd, pos, view[:n])
                pos += n
            emit({"sha256": digest.hexdigest(), "short": short})
        finally:
            os.close(fd)
    emit({"end": True})
    return 0


def _send_piece(fd: int, pos: int, piece: memoryview) -> None:
    """Send the bytes of file `fd` at `pos` that `piece` holds (read and hashed already). The kernel hands the
    file's cached pages to the pipe (sendfile): one copy fewer than writing `piece`. If the file shrank since
    it was read, the rest comes from `piece`, so the frame keeps its length; if it changed, the digest in the
    trailer no longer matches and the laptop refuses the bytes, as before."""
    sent = 0
    while _sendfile[0] and sent < len(piece):
        try:
            n = os.sendfile(1, fd, pos + sent, len(piece) - sent)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK):
                raise
            _sendfile[0] = False  # stdout is not a pipe or socket this kernel sends files to
            break
        if not n:
            break
        sent += n
    write_all(1, piece[sent:])


_sendfile = [hasattr(os, "sendfile")]
