"""A lock that holds across processes: pytest-xdist workers, and other checkouts that share this Docker engine.

    with engine_lock("testbed-image"):
        ...  # check, then build: only one process at a time

The lock is an `flock` on a file in the system's temp dir, so it is released when the holder exits, however it
exits (a killed worker never leaves a stale lock).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "cloudsd-test-locks"


@contextmanager
def engine_lock(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(LOCK_DIR / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
