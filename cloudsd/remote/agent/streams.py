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

import hashlib
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
    inp = open(0, "rb", buffering=1 << 18, closefd=False)
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
                offset = int(head["off"])
                for part in _parts(inp, view, length):
                    _pwrite_all(fds[path], part, offset)
                    offset += len(part)
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


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def run_send() -> int:
    widen_pipe(1)
    request = json.loads(sys.stdin.buffer.readline())
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
                write_all(1, view[:n])
                pos += n
            emit({"sha256": digest.hexdigest(), "short": short})
        finally:
            os.close(fd)
    emit({"end": True})
    return 0

