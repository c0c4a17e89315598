"""Every change of a machine's state in the ledger, in one place: what status a row moves to, with which event.

The ledger stores rows and events; this module is the only writer of a status. Each function is one
transition and writes the row and its event in one transaction. `reconcile` records what cloudsd found when
it did not end or stop a machine itself (usually the watchdog, for a budget or idleness).
"""

from __future__ import annotations

import time
from typing import Any

from cloudsd.core.guard import attribute, plan_of
from cloudsd.ledger import EventKind, Ledger, MachineRecord, Status
from cloudsd.machine import MachineStatus, Offer, SSHEndpoint
from cloudsd.providers import Provider


def priced(ledger: Ledger, name: str, offer: Offer, key_path: str) -> None:
    """A reserved row learns the offer it will be created from (before the create call)."""
    ledger.update(name, gpu=offer.gpu_name, price_per_hour=offer.price_per_hour,
                  storage_price_per_hour=offer.storage_price_per_hour, key_path=key_path)


def created(ledger: Ledger, name: str, provider_id: str, offer: Offer, deadline_at: float | None) -> None:
    """The provider gave an id: from here the machine bills."""
    ledger.update(name, provider_id=provider_id, status=Status.BOOTING, event=EventKind.CREATED,
                  data={"provider_id": provider_id, "offer": offer.offer_id,
                        "price_per_hour": offer.price_per_hour, "deadline_at": deadline_at,
                        "download_usd_per_gb": offer.download_usd_per_gb,
                        "upload_usd_per_gb": offer.upload_usd_per_gb})


def not_created(ledger: Ledger, name: str, reason: str) -> None:
    ledger.update(name, status=Status.TERMINATED, terminated_at=time.time(), detail=reason,
                  event=EventKind.NOT_CREATED, data={"reason": reason})


def running(ledger: Ledger, name: str, ssh: SSHEndpoint) -> None:
    ledger.update(name, status=Status.RUNNING, ssh_host=ssh.host, ssh_port=ssh.port, ssh_user=ssh.user,
                  event=EventKind.RUNNING, data={"ssh": str(ssh)})


def host_key_pinned(ledger: Ledger, name: str, host_key: str) -> None:
    ledger.update(name, host_key=host_key, event=EventKind.HOST_KEY_PINNED, data={"host_key": host_key})


def ready(ledger: Ledger, name: str, local_port: int, url: str) -> None:
    ledger.update(name, ready_at=time.time(), local_port=local_port, event=EventKind.READY, data={"url": url})


def attached(ledger: Ledger, name: str, local_port: int, url: str) -> None:
    ledger.update(name, local_port=local_port, event=EventKind.ATTACHED, data={"url": url})


def ssh_moved(ledger: Ledger, name: str, ssh: SSHEndpoint) -> None:
    ledger.update(name, ssh_host=ssh.host, ssh_port=ssh.port, event=EventKind.SSH_MOVED, data={"ssh": str(ssh)})


def destroying(ledger: Ledger, name: str, reason: str) -> None:
    """The destroy call is about to be made: billing ends here."""
    ledger.update(name, status=Status.DESTROYING, event=EventKind.DESTROYING, data={"reason": reason})


def terminated(ledger: Ledger, name: str, reason: str) -> None:
    """The provider confirmed the machine is gone."""
    ledger.update(name, status=Status.TERMINATED, terminated_at=time.time(), detail=reason,
                  event=EventKind.TERMINATED, data={"reason": reason})


def gone(ledger: Ledger, name: str, detail: str, *, at: float | None = None,
         data: dict[str, Any] | None = None) -> None:
    """The provider no longer knows the machine, and cloudsd did not end it."""
    ledger.update(name, status=Status.TERMINATED, terminated_at=time.time() if at is None else at, detail=detail,
                  event=EventKind.GONE, data=data)


def resumed(ledger: Ledger, record: MachineRecord) -> None:
    """A machine the ledger has as stopped runs again (resumed in the provider's console)."""
    ledger.update(record.name, status=Status.RUNNING, detail="resumed outside cloudsd", event=EventKind.RESUMED)


def stopped(ledger: Ledger, name: str) -> None:
    """`cloudsd stop` stopped it; from here it bills storage only."""
    ledger.update(name, status=Status.STOPPED, detail="stopped with `cloudsd stop`", event=EventKind.STOPPED,
                  data={"reason": "cloudsd stop"})


def started(ledger: Ledger, name: str, ssh: SSHEndpoint) -> None:
    """`cloudsd start` resumed it (SSH may have moved); from here it bills the running rate again."""
    ledger.update(name, status=Status.RUNNING, detail="", ssh_host=ssh.host, ssh_port=ssh.port, ssh_user=ssh.user,
                  event=EventKind.RESUMED, data={"ssh": str(ssh), "by": "cloudsd start"})


def resume_refused(ledger: Ledger, name: str, reason: str) -> None:
    """The provider could not resume it; it stays stopped, with its disk."""
    ledger.event(name, EventKind.RESUME_REFUSED, {"reason": reason})


def budget_reached(ledger: Ledger, name: str, reason: str, at: float) -> None:
    """The attached CLI is about to end the machine for its budget (the reason the cost report shows)."""
    ledger.event(name, EventKind.BUDGET_REACHED, {"reason": reason, "at": at})


def reconcile(ledger: Ledger, record: MachineRecord, status: MachineStatus | None, provider: Provider, *,
              now: float | None = None) -> str:
    """Record a machine that cloudsd found gone (`status` None) or stopped without having done it itself.

    Returns the note to show: who ended or stopped it, and why.
    """
    now = time.time() if now is None else now
    record, events = ledger.session(record.name)
    if record.status is Status.DESTROYING:  # cloudsd itself was ending it; billing already stopped at that call
        gone(ledger, record.name, "gone (destroyed)", at=now)
        return "gone (destroyed)"
    found = "gone" if status is None else "stopped"
    estimate = attribute(plan_of(events), events, found, now, self_terminates=provider.supports_self_stop)
    if found == "gone":
        note = f"ended by the watchdog: {estimate['reason']}" if estimate else "gone (ended outside cloudsd)"
        if estimate:
            ledger.event(record.name, EventKind.WATCHDOG_ENDED, estimate)
        gone(ledger, record.name, note, at=estimate["at"] if estimate else now, data={"noticed_at": now})
        return note
    if estimate:
        note = f"stopped by the watchdog: {estimate['reason']}"
        ledger.update(record.name, status=Status.STOPPED, detail=note, event=EventKind.WATCHDOG_ENDED, data=estimate)
    else:
        note = "stopped outside cloudsd (by the provider, or in its console)"
        ledger.update(record.name, status=Status.STOPPED, detail=note, event=EventKind.STOPPED,
                      data={"reason": note})
    return note
