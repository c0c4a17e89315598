"""`cloudsd sync models|outputs`. Only click is imported here; the bodies live in cloudsd.cli.sync_run."""

from __future__ import annotations

from pathlib import Path

import click

KINDS = ("checkpoint", "lora", "vae", "embedding", "controlnet", "upscaler")


@click.group()
def sync() -> None:
    """Models up to a machine, outputs down from it. NAME may be left out while one machine runs."""


@sync.command("models")
@click.argument("items", nargs=-1, metavar="[NAME] [PATH|REF]...")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A models.yaml: kind, source and sha256 of each model (see templates/models.yaml).")
@click.option("--kind", type=click.Choice(KINDS), help="The kind of every PATH and REF, instead of inferring it.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def models(items: tuple[str, ...], manifest: Path | None, kind: str | None, as_json: bool) -> None:
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
    from cloudsd.cli import sync_run

    sync_run.run_models(list(items), manifest, kind, as_json)


@sync.command("outputs")
@click.argument("name", required=False)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Where to put them (default: the outputs_dir setting, ~/cloudsd-outputs, then NAME/).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def outputs(name: str | None, dest: Path | None, as_json: bool) -> None:
    """Pull new and changed images home, keeping the UI's subfolders, verified by sha256.

    A file comes down once; a local file that differs is never overwritten (the new one becomes
    `name (1).png`). Example: `cloudsd sync outputs mybox --dest ~/Pictures/sd`.
    """
    from cloudsd.cli import sync_run

    sync_run.run_outputs(name, dest, as_json)
