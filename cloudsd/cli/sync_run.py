"""Bodies of `cloudsd sync …` and the sync part of `up`: progress bars, result tables, JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path
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
from rich.table import Table
from rich.text import Text

from cloudsd import paths
from cloudsd.cli import render
from cloudsd.config import resolve
from cloudsd.core import sync as core_sync
from cloudsd.errors import CloudsdError, SyncError
from cloudsd.ledger import Ledger
from cloudsd.sync.collect import check_sources
from cloudsd.sync.manifest import ModelRequest, from_args, load_manifest
from cloudsd.sync.models import PushSummary
from cloudsd.sync.outputs import PullSummary
from cloudsd.sync.progress import NullProgress, Progress


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


def requests_from(items: list[str], manifest: Path | None, kind: str | None) -> list[ModelRequest]:
    requests = from_args(items, kind) + (load_manifest(manifest) if manifest else [])
    if not requests:
        raise CloudsdError("nothing to sync.", hint="Name files, folders or references, or give --manifest.")
    return requests


def run_models(items: list[str], manifest: Path | None, kind: str | None, as_json: bool) -> None:
    ledger = Ledger()
    try:
        name, rest = core_sync.choose_machine(ledger, items)
        requests = requests_from(rest, manifest, kind)
        check_sources(requests)  # a bad reference or path is refused before connecting
        summary = push_with_progress(lambda progress: core_sync.sync_models(ledger, name, requests, progress),
                                     quiet=as_json)
    finally:
        ledger.close()
    show_push(summary, as_json)


def push_with_progress(push: Any, quiet: bool) -> PushSummary:
    if quiet:
        result: PushSummary = push(NullProgress())
        return result
    with BarProgress(render.console(stderr=True)) as progress:
        result = push(progress)
    return result


def show_push(summary: PushSummary, as_json: bool) -> None:
    if as_json:
        render.print_json({**dataclasses.asdict(summary),
                           "results": [{**dataclasses.asdict(r), "short_hash": r.short_hash} for r in summary.results]})
    else:
        out = render.console(stderr=True)
        if summary.results:
            render.print_table(push_table(summary))
        for result in summary.failed:
            out.print(render.styled(("✗", "red"), f" {result.message}"))
        for note in summary.notes:
            out.print(f"  {note}")
        moved = f"{summary.bytes_sent / 1e9:.2f} GB sent" if summary.bytes_sent else "nothing to send"
        out.print(f"{moved} in {summary.seconds:.1f} s")
    if summary.failed:
        raise SyncError(f"{len(summary.failed)} of {len(summary.results)} models failed.")


def push_table(summary: PushSummary) -> Table:
    table = Table(title="models on the machine")
    for column in ("model", "kind", "", "short hash", "size", "on the machine"):
        table.add_column(column, justify="right" if column == "size" else "left")
    marks: dict[str, str | Text] = {"present": "already there", "sent": "sent ✓", "resumed": "resumed ✓", "fetched": "fetched ✓",
             "failed": Text("failed", "red")}
    for r in summary.results:
        size = "-" if r.size is None else f"{r.size / 1e9:.2f} GB" if r.size >= 10**8 else f"{r.size / 1e6:.1f} MB"
        table.add_row(r.name, r.kind, marks.get(r.outcome, r.outcome), f"[{r.short_hash}]" if r.short_hash else "-",
                      size, r.remote or "-")
    return table


def run_outputs(name: str | None, dest: Path | None, as_json: bool) -> None:
    ledger = Ledger()
    try:
        machine, _ = core_sync.choose_machine(ledger, [name] if name else [])
        target = (paths.expand(dest, "--dest") if dest else
                  core_sync.default_outputs_dir(resolve(), machine))
        if as_json:
            summary = core_sync.sync_outputs(ledger, machine, target, NullProgress())
        else:
            with BarProgress(render.console(stderr=True)) as progress:
                summary = core_sync.sync_outputs(ledger, machine, target, progress)
    finally:
        ledger.close()
    show_pull(summary, as_json)


def show_pull(summary: PullSummary, as_json: bool) -> None:
    if as_json:
        render.print_json({**dataclasses.asdict(summary), "dest": str(summary.dest)})
    else:
        out = render.console(stderr=True)
        for remote, local in summary.renamed:
            out.print(f"  {remote}: a different file has that name here; saved as {local}")
        for problem in summary.problems:
            out.print(render.styled(("✗", "red"), f" {problem}"))
        out.print(f"{len(summary.pulled)} new file(s) in {summary.dest} ({summary.bytes_pulled / 1e6:.1f} MB, "
                  f"{summary.seconds:.1f} s); {summary.already + summary.same} already here")
    if summary.problems:
        raise SyncError(f"{len(summary.problems)} output(s) could not be pulled.")


def push_after_up(session: Any, requests: list[ModelRequest], as_json: bool) -> None:
    """The `--models` part of `up`: push to the fresh machine; on failure say that it keeps running."""
    from cloudsd.sync.models import push_models

    name = session.record.name

    def push(progress: Progress) -> PushSummary:
        return push_models(session.connection, session.profile, requests, progress=progress)

    try:
        summary = push_with_progress(push, quiet=as_json)
        if not as_json:
            show_push(summary, False)
        elif summary.failed:
            raise SyncError(f"{len(summary.failed)} of {len(summary.results)} models failed.")
    except CloudsdError as exc:
        session.close()
        raise SyncError(f"{exc.message} Machine {name} is running.",
                        hint=f"Retry with `cloudsd sync models {name} …`, end it with `cloudsd down {name}`.") from None
