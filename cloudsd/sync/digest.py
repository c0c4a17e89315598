"""The sha256 of a local file's bytes as they are written, hashed by a thread of its own just behind the writer.

Used where the bytes reach the file without passing through Python (the kernel splices them from the SSH
pipe), so there is nothing in hand to hash: the thread reads back what was written, a chunk at a time, while
the writer goes on. The writer never waits on the hash, and both hashlib and the reads run without the GIL, so
on two cores the hash costs no wall time of its own.
"""

from __future__ import annotations

import errno
import hashlib
import threading
from pathlib import Path
from types import TracebackType

CHUNK = 1 << 20


class TrailingDigest:
    """sha256 of `path`'s bytes from `start` on, as far as `advance` says they were written.

    Use as a `with` block: `advance(n)` after each write, `hexdigest()` once all is written (it waits for the
    hash to catch up and raises what reading the file raised). Leaving the block stops the thread, so an
    error in the writer never leaves it waiting.
    """

    def __init__(self, path: Path, start: int) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115  # closed by the thread when it ends
        self._file.seek(start)
        self._written = self._hashed = start
        self._end = False  # no more writes: hash the rest, then stop
        self._stop = False  # give up (the writer failed)
        self._cond = threading.Condition()
        self._hash = hashlib.sha256()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="cloudsd-digest", daemon=True)
        self._thread.start()

    def __enter__(self) -> TrailingDigest:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def advance(self, nbytes: int) -> None:
        with self._cond:
            self._written += nbytes
            if self._written - self._hashed >= CHUNK:
                self._cond.notify()

    def hexdigest(self) -> str:
        with self._cond:
            self._end = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def _run(self) -> None:
        view = memoryview(bytearray(CHUNK))
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._end and self._written - self._hashed < CHUNK:
                        self._cond.wait()
                    if self._stop or self._hashed == self._written:
                        return
                    upto = self._written
                while self._hashed < upto:
                    n = self._file.readinto(view[:min(CHUNK, upto - self._hashed)])
                    if not n:
                        raise OSError(errno.EIO, "the file is shorter than what was written to it", self._file.name)
                    self._hash.update(view[:n])
                    with self._cond:
                        self._hashed += n
        except OSError as exc:
            self._error = exc
        finally:
            self._file.close()
