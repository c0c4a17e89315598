"""How sync code reports bytes as they move; the CLI draws it with rich, tests record it."""

from __future__ import annotations

import threading
from typing import Protocol


class Progress(Protocol):
    """Called from several threads at once: implementations must be thread-safe."""

    def begin(self, files: int, total_bytes: int) -> None: ...

    def file(self, key: str, name: str, size: int, done: int = 0) -> None:
        """A file starts moving (`done` bytes are already there: a resume)."""

    def advance(self, key: str, nbytes: int) -> None: ...

    def finish(self, key: str, outcome: str) -> None: ...

    def note(self, message: str) -> None: ...


class NullProgress:
    def begin(self, files: int, total_bytes: int) -> None:
        pass

    def file(self, key: str, name: str, size: int, done: int = 0) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def finish(self, key: str, outcome: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class RecordingProgress(NullProgress):
    """Keeps what it was told: bytes moved per file, outcomes and notes (for tests and benchmarks)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.moved: dict[str, int] = {}
        self.outcomes: dict[str, str] = {}
        self.notes: list[str] = []
        self.total_bytes = 0

    def begin(self, files: int, total_bytes: int) -> None:
        self.total_bytes += total_bytes

    def advance(self, key: str, nbytes: int) -> None:
        with self.lock:
            self.moved[key] = self.moved.get(key, 0) + nbytes

    def finish(self, key: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[key] = outcome

    def note(self, message: str) -> None:
        with self.lock:
            self.notes.append(message)

    @property
    def bytes_moved(self) -> int:
        return sum(self.moved.values())
