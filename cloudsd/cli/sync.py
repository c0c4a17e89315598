"""`cloudsd sync models|outputs`, and how a push or a pull is shown (also after `up --models`).

Only click is imported at the top (rich and the sync machinery inside the commands), so `cloudsd --help`
stays fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cloudsd.cli.app import App, pass_app
from cloudsd.sync.kinds import KINDS

if TYPE_CHECKING:
    from rich.table import Table

    from cloudsd.sync.manifest import ModelRequest
    from cloudsd.sync.models import PushSummary
    from cloudsd.sync.outputs import PullSummary


@click.group()
def sync() -> None:
    """Models up to a machine, outputs down from it. NAME may be left out while one machine runs."""


@sync.command("models")
@click.argument("items", nargs=-1, metavar="[NAME] [PATH|REF]...")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A models.yaml: kind, source and sha256 of each model (see templates/models.yaml).")
@click.option("--kind", type=click.Choice(KINDS), help="The kind of every PATH and REF, instead of inferring it.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def models(app: App, items: tuple[str, ...], manifest: Path | None, kind: str | None, as_json: bool) -> None:
    """Put models into the web UI's folders on the machine, each verified by sha256.

    \b
    PATH  a local file or folder, sent over SSH; the kind comes from the folder
          (Lora/, Stable-diffusion/, checkpoints/, …), the name and the size
    REF   fetched by the machine itself: civitai:<modelVersionId>,
          hf:<org>/<repo>/<path>[@rev], or an https:// URL (#sha256=<hex> pins it);
          tokens from CIVITAI_TOKEN and HF_TOKEN go only to their own site

    Files already there with the same sha256 are skipped, a broken transfer resumes on the next run,
    and the UI is told to rescan its model lists. Example:
    `cloudsd sync models mybox ~/sd/models civitai:128713 --manifest models.yaml`.
    """
    from cloudsd.cli import render
    from cloudsd.cli.progress import BarProgress
    from cloudsd.core import sync as core_sync
    from cloudsd.sync.collect import check_sources
    from cloudsd.sync.progress import NullProgress

    name, rest = core_sync.choose_machine(app.ledger, list(items))
    requests = _requests_from(rest, manifest, kind)
    check_sources(requests)  # a bad reference or path is refused before connecting
    if as_json:
        summary = core_sync.sync_models(app.ledger, name, requests, NullProgress())
    else:
        with BarProgress(render.console(stderr=True)) as progress:
            summary = core_sync.sync_models(app.ledger, name, requests, progress)
    show_push(summary, as_json)


@sync.command("outputs")
@click.argument("name", required=False)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Where to put them (default: the outputs_dir setting, ~/cloudsd-outputs, then NAME/).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def outputs(app: App, name: str | None, dest: Path | None, as_json: bool) -> None:
    """Pull new and changed images home, keeping the UI's subfolders, verified by sha256.

    A file comes down once; a local file that differs is never overwritten (the new one becomes
    `name (1).png`). Example: `cloudsd sync outputs mybox --dest ~/Pictures/sd`.
    """
    from cloudsd.cli import render
    from cloudsd.cli.progress import BarProgress
    from cloudsd.core import sync as core_sync
    from cloudsd.sync.progress import NullProgress

    machine, _ = core_sync.choose_machine(app.ledger, [name] if name else [])
    from cloudsd import paths

    target = paths.expand(dest, "--dest") if dest else core_sync.default_outputs_dir(app.settings, machine)
    if as_json:
        summary = core_sync.sync_outputs(app.ledger, machine, target, NullProgress())
    else:
        with BarProgress(render.console(stderr=True)) as progress:
            summary = core_sync.sync_outputs(app.ledger, machine, target, progress)
    show_pull(summary, as_json)


def _requests_from(items: list[str], manifest: Path | None, kind: str | None) -> list[ModelRequest]:
    from cloudsd.errors import CloudsdError
    from cloudsd.sync.manifest import from_args, load_manifest

    requests = from_args(items, kind) + (load_manifest(manifest) if manifest else [])
    if not requests:
        raise CloudsdError("nothing to sync.", hint="Name files, folders or references, or give --manifest.")
    return requests


def model_requests(models: list[str], manifest: str | None) -> list[ModelRequest]:
    """The models `up --models/--manifest` names, checked before anything is rented (none: [])."""
    if not models and not manifest:
        return []
    from cloudsd.sync.collect import check_sources
    from cloudsd.sync.manifest import from_args, load_manifest

    requests = from_args(models, None) + (load_manifest(Path(manifest)) if manifest else [])
    check_sources(requests)
    return requests


def show_push(summary: PushSummary, as_json: bool, *, table: bool | None = None) -> None:
    """The results (a table, or JSON); SyncError if any model failed. `up --json` passes table=False: its
    JSON is the machine record."""
    from cloudsd.cli import render
    from cloudsd.errors import SyncError

    if table is False:
        pass
    elif as_json:
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
    from rich.table import Table
    from rich.text import Text

    from cloudsd.cli.render import size_text

    table = Table(title="models on the machine")
    for column in ("model", "kind", "", "short hash", "size", "on the machine"):
        table.add_column(column, justify="right" if column == "size" else "left")
    marks: dict[str, str | Text] = {"present": "already there", "sent": "sent ✓", "resumed": "resumed ✓",
                                    "fetched": "fetched ✓", "failed": Text("failed", "red")}
    for r in summary.results:
        table.add_row(r.name, r.kind, marks.get(r.outcome, r.outcome), f"[{r.short_hash}]" if r.short_hash else "-",
                      size_text(r.size), r.remote or "-")
    return table


def show_pull(summary: PullSummary, as_json: bool) -> None:
    from cloudsd.cli import render
    from cloudsd.errors import SyncError

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


