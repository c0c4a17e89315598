"""`status`: the ledger joined with each provider's live view, plus strays on the accounts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from cloudsd.core.machines import Providers
from cloudsd.errors import CloudsdError
from cloudsd.ledger import Ledger, MachineRecord


@dataclass(frozen=True)
class StatusRow:
    name: str
    provider: str
    provider_id: str | None
    status: str  # the ledger's
    live: str  # the provider's word now: running, booting, stopped, gone, or "unreachable: why"
    gpu: str | None
    price_per_hour: float
    uptime_s: float
    cost_usd: float  # estimate from the locked rate since create
    url: str | None
    ssh: str | None
    stray: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _row(record: MachineRecord, live: str, now: float) -> StatusRow:
    uptime = now - record.created_at
    return StatusRow(
        name=record.name, provider=record.provider, provider_id=record.provider_id, status=record.status,
        live=live, gpu=record.gpu, price_per_hour=record.price_per_hour, uptime_s=uptime,
        cost_usd=record.price_per_hour * uptime / 3600.0,
        url=f"http://127.0.0.1:{record.local_port}" if record.local_port else None,
        ssh=f"{record.ssh_user}@{record.ssh_host}:{record.ssh_port}" if record.ssh_host else None,
    )


def status(ledger: Ledger, providers: Providers, *, sweep: tuple[str, ...] = ()) -> list[StatusRow]:
    """Active machines with their live state; machines the provider says are gone are marked terminated.

    `sweep` names providers whose whole account is searched for `cloudsd-` machines the ledger does not know.
    """
    now = time.time()
    rows: list[StatusRow] = []
    records = ledger.machines(active_only=True)
    for record in records:
        live = "unknown"
        try:
            provider = providers.get(record.provider)
            info = provider.get(record.provider_id) if record.provider_id else None
            if record.provider_id and info is None:
                ledger.update(record.name, status="terminated", terminated_at=now, detail="gone (seen by status)",
                              event="gone")
                live = "gone"
                record = ledger.get(record.name)
            elif info is not None:
                live = info.status.value + (f" ({info.detail})" if info.detail and info.detail != info.status.value
                                            else "")
            else:
                live = "not created"
        except CloudsdError as exc:
            live = f"unreachable: {exc.message}"
        rows.append(_row(record, live, now))
    known = {(r.provider, r.provider_id) for r in ledger.machines() if r.provider_id}
    for provider_name in sweep:
        try:
            machines = providers.get(provider_name).list_machines()
        except CloudsdError:
            continue
        for machine in machines:
            if (provider_name, machine.provider_id) in known:
                continue
            rows.append(StatusRow(
                name=machine.name or machine.label or machine.provider_id, provider=provider_name,
                provider_id=machine.provider_id, status="stray", live=machine.status.value,
                gpu=machine.gpu_name, price_per_hour=machine.price_per_hour or 0.0, uptime_s=0.0, cost_usd=0.0,
                url=None, ssh=str(machine.ssh) if machine.ssh else None, stray=True,
            ))
    return rows
