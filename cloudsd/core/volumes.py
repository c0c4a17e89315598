"""Volumes: create, list, remove, place machines on them, and what they cost.

Rules, all pure except the three commands at the end:
- A volume bills `size_gb × price_per_gb_month` per month from its create until its delete, whether or not a
  machine uses it, per second at `HOURS_PER_MONTH` hours a month (the vendors' own examples use 720).
- It is in use while the machine that last mounted it (`attached_to`) is active in the ledger, or while the
  provider says a machine uses it; it is never deleted then.
- A volume labelled `cloudsd-…` that the ledger does not know is a stray: listed, deleted only with `--yes`.
- A machine using a volume is placed where the volume lives (`Provider.volume_offers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from cloudsd.core.machines import Providers
from cloudsd.errors import CloudsdError, ConfigError, NoCapacity
from cloudsd.ledger import Ledger, VolumeRecord, VolumeStatus
from cloudsd.providers import Provider, provider_class, provider_names

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from cloudsd.machine import Offer, OfferSpec
    from cloudsd.volumes import VolumeInfo, VolumeRequest

# `status` lists volumes on every run: what only a volume's cost, its live view or `volume create` needs
# (core.cost, cloudsd.volumes, core.offers, cloudsd.names: dataclasses made at import) is imported where it is
# used, so an empty list costs little.


@dataclass(frozen=True)
class VolumeCost:
    """What a volume costs a month, has cost since it was created, and this month."""

    per_month_usd: float
    total_usd: float  # since it was created
    month_to_date_usd: float  # since the first of this month (UTC)


def volume_cost(record: VolumeRecord, now: float) -> VolumeCost:
    """What a volume has cost, from its create until its delete (or `now`)."""
    from cloudsd.core.cost import month_start
    from cloudsd.volumes import HOURS_PER_MONTH

    per_month = record.size_gb * record.price_per_gb_month
    end = min(record.deleted_at or now, now)

    def between(start: float) -> float:
        return per_month * max(0.0, end - start) / 3600.0 / HOURS_PER_MONTH

    return VolumeCost(per_month, between(record.created_at), between(max(record.created_at, month_start(now))))


def in_use_by(record: VolumeRecord, ledger: Ledger, live: VolumeInfo | None = None) -> str | None:
    """The machine (ledger name, or the provider's id) that uses the volume now, or None."""
    if record.attached_to:
        machine = ledger.find(record.attached_to)
        if machine is not None and machine.active:
            return record.attached_to
    if live is not None and live.used_by:
        names = {m.provider_id: m.name for m in ledger.machines(active_only=True) if m.provider == live.provider}
        return names.get(live.used_by[0]) or live.used_by[0]
    return None


def strays(live: Iterable[VolumeInfo], records: Sequence[VolumeRecord]) -> list[VolumeInfo]:
    """Volumes labelled `cloudsd-…` on the accounts that no active ledger row knows."""
    known = {(r.provider, r.provider_id) for r in records if r.active}
    return [v for v in live if v.name is not None and (v.provider, v.provider_id) not in known]


def volume_provider(providers: Providers, name: str) -> Provider:
    """The provider, or one line saying it has no volumes in this cloudsd."""
    if not provider_class(name).supports_volumes:  # said before a key or an engine is needed
        others = ", ".join(n for n in provider_names() if n != name and provider_class(n).supports_volumes)
        raise ConfigError(f"{name} has no volumes in cloudsd.",
                          hint=f"Use a volume on {others}, or `up` without --volume (models are sent again).")
    return providers.get(name)


def volume_clouds(clouds: Iterable[str]) -> list[str]:
    """Of these providers, those with volumes (swept for stray volumes by `status`)."""
    return [name for name in clouds if provider_class(name).supports_volumes]


def needed(ledger: Ledger, name: str) -> VolumeRecord:
    record = ledger.volume(name)
    if record is None or record.provider_id is None:
        raise CloudsdError(f"no volume named {name!r}.",
                           hint=f"`cloudsd volume ls` lists them; create it with `cloudsd volume create {name} "
                                f"--provider P --size GB`.")
    return record


def as_info(record: VolumeRecord) -> VolumeInfo:
    from cloudsd.volumes import VolumeInfo

    return VolumeInfo(provider=record.provider, provider_id=record.provider_id or "", label=None,
                      size_gb=record.size_gb, placement=record.placement or "",
                      price_per_gb_month=record.price_per_gb_month, region=record.region)


def placed_offers(providers: Providers, record: VolumeRecord, spec: OfferSpec) -> list[Offer]:
    """Offers a machine using the volume can start from; NoCapacity naming the volume's place when none."""
    found = volume_provider(providers, record.provider).volume_offers(spec, as_info(record))
    if not found:
        raise NoCapacity(f"no {record.provider} offer fits the filters where volume {record.name!r} lives "
                         f"({record.region or record.placement}).",
                         hint="Loosen the filters (GPU, price), or try later: a machine using a volume must be "
                              "placed where the volume is.")
    return found


# -- commands -------------------------------------------------------------------------------------------
def create(ledger: Ledger, providers: Providers, request: VolumeRequest, provider_name: str,
           spec: OfferSpec | None = None) -> VolumeRecord:
    """Create a volume; the ledger has its row before the provider is asked. With `spec` (the user named a GPU),
    a volume tied to one host goes on a host with an offer that fits it now."""
    from cloudsd.core import offers as offer_choice
    from cloudsd.names import name_problem

    problem = name_problem(request.name)
    if problem:
        raise ConfigError(f"{problem}.")
    provider = volume_provider(providers, provider_name)
    ledger.check_volume_free(request.name)
    if spec is not None:
        fits = offer_choice.select(provider.offers(spec), spec)  # says which filter emptied the list
        hosts = tuple(sorted({o.host_id for o in fits if o.host_id}))
        if hosts:
            request = replace(request, hosts=hosts)
    ledger.reserve_volume(request.name, provider.name, request.size_gb, request.region)
    try:
        info = provider.create_volume(request)
    except BaseException:
        ledger.update_volume(request.name, status=VolumeStatus.DELETED, deleted_at=time.time())
        raise
    ledger.update_volume(request.name, provider_id=info.provider_id, placement=info.placement,
                         region=info.region, size_gb=info.size_gb, price_per_gb_month=info.price_per_gb_month,
                         status=VolumeStatus.READY)
    return needed(ledger, request.name)


@dataclass(frozen=True)
class VolumeRow:
    """One volume as `volume ls` and `status` show it: the ledger's record and the provider's view."""

    record: VolumeRecord | None  # None for a stray
    live: VolumeInfo | None
    cost: VolumeCost | None
    used_by: str | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        record = self.record
        live = self.live
        return {
            "name": record.name if record else (live.name if live else None),
            "provider": record.provider if record else (live.provider if live else None),
            "provider_id": record.provider_id if record else (live.provider_id if live else None),
            "region": (record.region or record.placement) if record else (live.region if live else None),
            "size_gb": record.size_gb if record else (live.size_gb if live else None),
            "per_month_usd": self.cost.per_month_usd if self.cost else (live.price_per_month if live else None),
            "month_to_date_usd": self.cost.month_to_date_usd if self.cost else None,
            "total_usd": self.cost.total_usd if self.cost else None,
            "used_by": self.used_by, "stray": record is None, "note": self.note,
        }


def listing(ledger: Ledger, providers: Providers, now: float, sweep: Iterable[str] = ()) -> list[VolumeRow]:
    """Every volume in the ledger with its live view and cost, then strays on its providers and those in
    `sweep` (the configured ones with volumes)."""
    records = ledger.volumes(active_only=True)
    rows: list[VolumeRow] = []
    live: list[VolumeInfo] = []
    notes: dict[str, str] = {}
    for provider_name in sorted({r.provider for r in records} | set(sweep)):
        try:
            live.extend(volume_provider(providers, provider_name).list_volumes())
        except CloudsdError as exc:
            notes[provider_name] = f"live view unavailable: {exc}"
    by_id = {(v.provider, v.provider_id): v for v in live}
    for record in records:
        info = by_id.get((record.provider, record.provider_id or ""))
        note = notes.get(record.provider, "")
        if not note and info is None and record.status == VolumeStatus.READY:
            note = f"{record.provider} no longer lists it"
        rows.append(VolumeRow(record, info, volume_cost(record, now), in_use_by(record, ledger, info), note))
    for stray in strays(live, records):
        rows.append(VolumeRow(None, stray, None, stray.used_by[0] if stray.used_by else None,
                              f"stray: not in the ledger; `cloudsd volume rm {stray.name} --provider "
                              f"{stray.provider} --yes` deletes it"))
    return rows


def remove(ledger: Ledger, providers: Providers, name: str, confirm: Callable[[str], bool],
           provider_name: str | None = None) -> str:
    """Delete a volume and its data; refused while a machine uses it. Returns what was done."""
    record = ledger.volume(name)
    if record is None and provider_name:  # a stray, by its label
        provider = volume_provider(providers, provider_name)
        found = [v for v in strays(provider.list_volumes(), ledger.volumes()) if v.name == name]
        if not found:
            raise CloudsdError(f"no volume named {name!r} on {provider_name}.", hint="`cloudsd volume ls` lists them.")
        if found[0].used_by:
            raise CloudsdError(f"volume {name!r} is in use by {provider_name} machine {found[0].used_by[0]}.",
                               hint="End that machine first.")
        if not confirm(f"Delete stray volume {name!r} on {provider_name} and everything on it?"):
            raise CloudsdError("nothing was deleted.")
        provider.delete_volume(found[0].provider_id)
        return f"deleted stray volume {name} ({provider_name} {found[0].provider_id})"
    record = needed(ledger, name)
    provider = volume_provider(providers, record.provider)
    live = {v.provider_id: v for v in provider.list_volumes()}.get(record.provider_id or "")
    user = in_use_by(record, ledger, live)
    if user:
        raise CloudsdError(f"volume {name!r} is in use by machine {user}.",
                           hint=f"End the machine first (`cloudsd down {user}`), then `cloudsd volume rm {name}`.")
    if not confirm(f"Delete volume {name!r} ({record.size_gb:g} GB on {record.provider}) and everything on it?"):
        raise CloudsdError("nothing was deleted.")
    provider.delete_volume(record.provider_id or "")
    ledger.update_volume(name, status=VolumeStatus.DELETED, deleted_at=time.time())
    return f"deleted volume {name} ({record.provider} {record.provider_id})"


def provider_for(ledger: Ledger, name: str, chosen: str | None) -> str:
    """The provider a machine using volume `name` must run on; a one-line refusal when `chosen` differs."""
    record = needed(ledger, name)
    if chosen not in (None, "auto", "all", record.provider):
        raise ConfigError(f"volume {name!r} is on {record.provider}, not {chosen}.",
                          hint=f"Drop --provider, or use --provider {record.provider}.")
    return record.provider


def offers_for(ledger: Ledger, providers: Providers, name: str, spec: OfferSpec) -> list[Offer]:
    """`offers --volume NAME` and `up --volume NAME`: only the offers placed where the volume can be attached."""
    return placed_offers(providers, needed(ledger, name), spec)


def check_unused(ledger: Ledger, name: str) -> None:
    """`up --volume`: one machine at a time on a volume (its models and hash index are that machine's)."""
    user = in_use_by(needed(ledger, name), ledger)
    if user:
        raise CloudsdError(f"volume {name!r} is in use by machine {user}.",
                           hint=f"Use that machine (`cloudsd tunnel {user}`) or end it first (`cloudsd down {user}`).")


def attach(ledger: Ledger, name: str, machine: str) -> None:
    """Record that `machine` mounts the volume (it is in use while that machine is active)."""
    ledger.update_volume(name, attached_to=machine)


def reminders(ledger: Ledger, machines: Iterable[str], now: float) -> list[str]:
    """For `down`: each volume those machines used keeps billing; how to remove it."""
    lines = []
    names = set(machines)
    for record in ledger.volumes(active_only=True):
        if record.attached_to in names:
            cost = volume_cost(record, now)
            bills = f"keeps billing ${cost.per_month_usd:.2f}/month" if cost.per_month_usd else "is kept"
            lines.append(f"volume {record.name} {bills} with its models; remove it with "
                         f"`cloudsd volume rm {record.name}`")
    return lines


@dataclass(frozen=True)
class VolumeLine:
    """One volume in `cost`: cloudsd's estimate in the window and this month, and what the provider billed."""

    record: VolumeRecord
    cost: VolumeCost
    window_usd: float
    billed_usd: float | None  # None where the provider does not report storage billing

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.record.name, "provider": self.record.provider, "provider_id": self.record.provider_id,
                "size_gb": self.record.size_gb, "per_month_usd": round(self.cost.per_month_usd, 6),
                "window_usd": round(self.window_usd, 6), "month_to_date_usd": round(self.cost.month_to_date_usd, 6),
                "billed_usd": None if self.billed_usd is None else round(self.billed_usd, 6),
                "deleted": not self.record.active}


def window_cost(record: VolumeRecord, since: float | None, until: float | None, now: float) -> float:
    from cloudsd.volumes import HOURS_PER_MONTH

    start = max(record.created_at, since if since is not None else record.created_at)
    end = min(record.deleted_at or now, until if until is not None else now, now)
    return record.size_gb * record.price_per_gb_month * max(0.0, end - start) / 3600.0 / HOURS_PER_MONTH


def cost_lines(ledger: Ledger, providers: Providers | None, *, since: float | None, until: float | None,
               now: float) -> list[VolumeLine]:
    """Every volume that billed in [since, until], with the provider's own figure where it reports one."""
    records = [r for r in ledger.volumes() if r.provider_id and window_cost(r, since, until, now) > 0]
    billed: dict[tuple[str, str], float] = {}
    reporting: set[str] = set()
    for name in sorted({r.provider for r in records}):
        if providers is None:
            break
        try:
            provider = providers.get(name)
            if not provider.reports_volume_billing:
                continue
            first = min(r.created_at for r in records if r.provider == name)
            amounts = provider.volume_billing(since if since is not None else first,
                                              until if until is not None else now)
        except CloudsdError:
            continue
        reporting.add(name)
        for volume_id, amount in amounts.items():
            billed[(name, volume_id)] = billed.get((name, volume_id), 0.0) + amount
    return [VolumeLine(r, volume_cost(r, now), window_cost(r, since, until, now),
                       billed.get((r.provider, r.provider_id or ""), 0.0) if r.provider in reporting else None)
            for r in records]
