"""How the CLI draws what core reports: phases on one updating line, transfers as bars (rich, on stderr)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar
from rich.text import Text

from cloudsd.cli import render
from cloudsd.redact import scrub
from cloudsd.sync.progress import NullProgress, Progress


class LiveReporter:
    """Draws each phase of `up` on one updating line, keeping finished phases above it with their times."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = render.console(stderr=True)
        self.quiet = quiet
        self._status: Any = None
        self._phase: str | None = None
        self._phase_started = time.monotonic()

    def __enter__(self) -> LiveReporter:
        if not self.quiet:
            self._status = self.console.status("starting")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self._finish_phase()

    def _finish_phase(self) -> None:
        if self._phase and self._phase != "ready" and not self.quiet:
            self.console.print(render.styled("  ", ("✓", "green"),
                                             f" {self._phase} ({time.monotonic() - self._phase_started:.1f} s)"))
        self._phase = None

    def phase(self, name: str, detail: str = "") -> None:
        if name != self._phase:
            self._finish_phase()
            self._phase = name
            self._phase_started = time.monotonic()
        if self._status is not None:
            self._status.update(Text(scrub(f"{name}: {detail}")))  # literal: details carry provider text

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"  {scrub(message)}")  # notes carry provider errors (a skipped provider)

    @contextmanager
    def transfer(self) -> Iterator[Progress]:
        """Bars for a transfer; the phase line is put away while they are drawn (one live display at a time)."""
        if self.quiet:
            yield NullProgress()
            return
        if self._status is not None:
            self._status.stop()
            self._status = None
        self._finish_phase()
        with BarProgress(self.console) as progress:
            yield progress


class BarProgress:
    """Per-file bars (bytes, speed, ETA) under a total bar, drawn on stderr; thread-safe like rich."""

    def __init__(self, console: Console) -> None:
        self.bar = RichBar(TextColumn("{task.description}", table_column=None, markup=False), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.tasks: dict[str, TaskID] = {}
        self.total: TaskID | None = None

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def begin(self, files: int, total_bytes: int) -> None:
        if self.total is None:
            self.total = self.bar.add_task(f"total ({files} files)", total=total_bytes)
        else:
            task = self.bar.tasks[self.total]
            self.bar.update(self.total, total=(task.total or 0) + total_bytes)

    def file(self, key: str, name: str, size: int, done: int = 0) -> None:
        label = name if len(name) <= 48 else "…" + name[-47:]
        self.tasks[key] = self.bar.add_task(label, total=size, completed=done)

    def advance(self, key: str, nbytes: int) -> None:
        if key in self.tasks:
            self.bar.advance(self.tasks[key], nbytes)
        if self.total is not None:
            self.bar.advance(self.total, nbytes)

    def finish(self, key: str, outcome: str) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            self.bar.remove_task(task)

    def note(self, message: str) -> None:
        self.bar.console.print(f"  {message}")
