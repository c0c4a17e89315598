"""Pieces every part of the agent uses: failures as JSON, output lines, hashing, the digest index."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading

TYPE_CHECKING = False  # typing costs a stream's start a few ms; only the type checker needs it
if TYPE_CHECKING:
    from typing import Any

CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"


class Fail(Exception):
    """A failure reported to cloudsd as one JSON line: a kind it can act on and a message for the user."""

    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        Exception.__init__(self, message)
        self.kind, self.message, self.extra = kind, message, extra

    def reply(self, **more: Any) -> dict[str, Any]:
        return dict(self.extra, ok=False, kind=self.kind, message=self.message, **more)


F_SETPIPE_SZ = 1031  # Linux; fcntl names it only from Python 3.10


def widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let the pipe to or from sshd hold a whole chunk: one wake-up per MiB instead of one per 64 KiB."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        pass  # not a pipe, or above /proc/sys/fs/pipe-max-size: the default works too


def bad_name(exc: ValueError) -> Fail:
    """A path the OS cannot take (a NUL byte in a name a model source or a listing supplied): one reply, not a
    crash of the agent."""
    return Fail("bad-name", f"a file name that cannot be used on the machine ({exc})")


def partial_path(final: str) -> str:
    """Where a file is written before it is verified: hidden, beside its final place, on the same disk."""
    head, tail = os.path.split(final)
    return os.path.join(head, "." + tail + PARTIAL_SUFFIX)


def os_failure(exc: OSError) -> Fail:
    kind = "disk-full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "os"
    where = f": {exc.filename}" if exc.filename else ""
    return Fail(kind, f"{exc.strerror or exc}{where}")


_out_lock = threading.Lock()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, whole, even when several threads report at once."""
    line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    with _out_lock:
        write_all(1, line)


def read_exact_into(inp: Any, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = inp.readinto(view[got:])
        if not n:
            raise Fail("eof", "the stream from cloudsd ended in the middle of a file")
        got += n


def sha256_of(path: str, upto: int | None = None) -> Any:
    """The running sha256 of a file (or of its first `upto` bytes)."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    left = upto
    with open(path, "rb", buffering=0) as f:
        while left is None or left > 0:
            n = f.readinto(view if left is None else view[:min(CHUNK, left)])
            if not n:
                break
            digest.update(view[:n])
            left = None if left is None else left - n
    return digest


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def remove_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _existing(path: str) -> str:
    while path not in ("", "/") and not os.path.isdir(path):
        path = os.path.dirname(path.rstrip("/"))
    return path or "/"


def free_bytes(path: str) -> int:
    """Bytes free for this user on the disk that holds `path` (or its nearest existing parent)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def disk_of(path: str) -> dict[str, int]:
    """Free bytes and device number of the disk that holds `path`: folders on one disk share its space."""
    return {"free": free_bytes(path), "dev": os.stat(_existing(path)).st_dev}


class Index:
    """sha256 digests of files on the machine, valid while a file's size and mtime_ns are unchanged."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "index.json")
        self.entries: dict[str, Any] = self._load()
        self.changed: dict[str, Any] = {}
        self.lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        data = read_json(self.path)
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def record(self, path: str, st: os.stat_result, digest: str) -> None:
        with self.lock:
            self.entries[path] = self.changed[path] = [st.st_size, st.st_mtime_ns, digest]

    def sha256(self, path: str, st: os.stat_result | None = None) -> str:
        """The file's digest, from the index while its size and mtime are those of `st` (the caller's stat,
        else one made now), else read now and recorded."""
        st = st or os.stat(path)
        entry = self.entries.get(path)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return str(entry[2])
        digest: str = sha256_of(path).hexdigest()
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:  # not changed while it was read
            self.record(path, st, digest)
        return digest

    def save(self) -> None:
        with self.lock:
            changed, self.changed = self.changed, {}
        if not changed:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        with open(os.path.join(self.state_dir, "index.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another sync may save at the same moment
            entries = self._load()
            entries.update(changed)
            write_json(self.path, {"version": 1, "files": {p: e for p, e in entries.items() if os.path.exists(p)}})


def origin(url: str) -> str:
    """scheme://host:port, the unit a token belongs to: the laptop (`cloudsd.sync.sources`) pairs a token with
    its origin and the agent sends it only where the origin is equal, so both compute it here."""
    import urllib.parse  # only fetches need it: a data stream starts without it
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
