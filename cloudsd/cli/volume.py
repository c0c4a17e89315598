"""`cloudsd volume create/ls/rm`: storage that outlives a machine, mounted at /workspace by `up --volume`.

Only click is imported at the top, so registering this group keeps `cloudsd --help` fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import click

from cloudsd.cli.app import App, pass_app
from cloudsd.cli.params import DISK_GB, MACHINE_NAME, ProviderChoice


@click.group()
def volume() -> None:
    """Volumes keep models between machines: the second evening starts without re-sending them.

    \b
    cloudsd volume create models --provider vastai --size 50    bills per GB-month until removed
    cloudsd up --volume models                                  placed where the volume lives
    cloudsd volume ls                                           size, $/month, month to date, user
    cloudsd volume rm models                                    refused while a machine uses it
    """


def volumes_table(rows: Iterable[dict[str, Any]]) -> Any:
    """Pure: the `volume ls` table from `VolumeRow.to_dict()` rows."""
    from rich.table import Table

    from cloudsd.cli.render import money

    table = Table("name", "provider", "region", "size GB", "$/month", "month to date", "used by", "note")
    for row in rows:
        table.add_row(row["name"] or row["provider_id"], row["provider"], row["region"] or "-",
                      f"{row['size_gb']:g}" if row["size_gb"] is not None else "-",
                      money(row["per_month_usd"]), money(row["month_to_date_usd"], 4), row["used_by"] or "-",
                      row["note"])
    return table


@volume.command("create")
@click.argument("name", type=MACHINE_NAME)
@click.option("--provider", type=ProviderChoice(), required=True, help="Where the volume lives.")
@click.option("--size", "size_gb", type=DISK_GB, required=True, help="Size in GB.")
@click.option("--region", help="Data center or country to place it in (the provider's choice without it).")
@click.option("--gpu", multiple=True, help="Where a volume is tied to one host (Vast.ai): a host with an offer "
                                          "of this GPU now, e.g. 'RTX 4090' (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def create_cmd(app: App, name: str, provider: str, size_gb: int, region: str | None, gpu: tuple[str, ...],
               as_json: bool) -> None:
    """Create a volume. It bills per GB-month from now until `cloudsd volume rm NAME`, used or not.

    On Vast.ai a volume lives on one host and every machine using it runs there: `--gpu` picks a host that
    has that GPU. Example: `cloudsd volume create models --provider vastai --size 40 --gpu 'RTX 4090'`.
    """
    from cloudsd.cli import render
    from cloudsd.core import volumes
    from cloudsd.core.up import spec_from
    from cloudsd.volumes import VolumeRequest

    spec = spec_from(app.configure({"gpu": list(gpu) or None}))  # a host-bound volume goes where the image fits
    request = VolumeRequest(name, size_gb, region, cuda=spec.cuda, machine_disk_gb=spec.disk_gb)
    record = volumes.create(app.ledger, app.providers, request, provider, spec if gpu else None)
    if as_json:
        render.print_json(record.to_dict())
        return
    cost = volumes.volume_cost(record, time.time())
    bills = (f"; it bills {render.money(cost.per_month_usd)}/month until `cloudsd volume rm {name}`"
             if cost.per_month_usd else "")
    render.console().print(f"volume {name} created on {provider} ({record.region or record.placement}){bills}. "
                           f"Use it with `cloudsd up --volume {name}`.")


@volume.command("ls")
@click.option("--provider", type=ProviderChoice(), multiple=True,
              help="Also look for stray volumes here (default: the providers in the ledger).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def ls_cmd(app: App, provider: tuple[str, ...], as_json: bool) -> None:
    """Volumes with provider, region, size, $/month, month to date and the machine using each; strays too."""
    from cloudsd.cli import render
    from cloudsd.core import volumes

    rows = [r.to_dict() for r in volumes.listing(app.ledger, app.providers, time.time(), sweep=provider)]
    if as_json:
        render.print_json(rows)
    elif not rows:
        render.console().print("No volumes. Create one with `cloudsd volume create NAME --provider P --size GB`.")
    else:
        render.print_table(volumes_table(rows))


@volume.command("rm")
@click.argument("name")
@click.option("--provider", type=ProviderChoice(), help="For a stray volume: the provider it is on.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm_cmd(app: App, name: str, provider: str | None, yes: bool) -> None:
    """Delete a volume and everything on it. Refused while a machine uses it."""
    from cloudsd.cli import render
    from cloudsd.core import volumes

    def confirm(question: str) -> bool:
        return yes or click.confirm(question, default=False, err=True)

    done = volumes.remove(app.ledger, app.providers, name, confirm, provider_name=provider)
    render.console().print(done)
