"""When each phase of a sync happened, for benchmarks/sync_client.py: off (one `is None` test per mark) unless
`start()` was called. Marks: ssh connect, agent start, requests and replies, stream opens, first and last data
byte, commit."""

from __future__ import annotations

import threading
import time

_marks: list[tuple[str, float]] | None = None
_lock = threading.Lock()
_origin = 0.0


def start() -> None:
    global _marks, _origin
    _marks, _origin = [], time.perf_counter()


def mark(name: str) -> None:
    if _marks is not None:
        with _lock:
            _marks.append((name, time.perf_counter() - _origin))


def once(name: str) -> None:
    """A mark kept only the first time (the first byte of several streams)."""
    if _marks is not None:
        with _lock:
            if all(n != name for n, _ in _marks):
                _marks.append((name, time.perf_counter() - _origin))


def marks() -> list[tuple[str, float]]:
    return list(_marks or [])


def stop() -> None:
    global _marks
    _marks = None
