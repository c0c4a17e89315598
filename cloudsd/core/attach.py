"""`tunnel`: SSH and the web UI tunnel back to a machine that runs, and its watchdog if it stopped running."""

from __future__ import annotations

from cloudsd.core import lifecycle
from cloudsd.core.access import Session, reconnect_record, tunnel_to_ready_ui
from cloudsd.core.guard import ensure_watchdog
from cloudsd.core.machines import Providers
from cloudsd.core.reporter import Reporter
from cloudsd.core.watchdog import WatchdogSettings
from cloudsd.errors import CloudsdError
from cloudsd.images import resume_installed_ui
from cloudsd.ledger import Ledger, Status
from cloudsd.ui import profile


def attach(name: str, port: int | None, ledger: Ledger, providers: Providers, reporter: Reporter,
           *, ssh_timeout_s: float = 60.0) -> Session:
    """Reopen SSH and the web UI tunnel to a machine that runs."""
    record = ledger.get(name)
    if not record.active or record.status is Status.TERMINATED:
        raise CloudsdError(f"machine {name!r} is {record.status}.", hint="Start a new one with `cloudsd up`.")
    provider = providers.get(record.provider)
    if record.provider_id:
        info = provider.get(record.provider_id)
        if info is None:
            lifecycle.gone(ledger, name, "gone (found by tunnel)")
            raise CloudsdError(f"machine {name!r} no longer exists at {provider.name}.",
                               hint="Start a new one with `cloudsd up`.")
        if info.ssh and (info.ssh.host, info.ssh.port) != (record.ssh_host, record.ssh_port):
            lifecycle.ssh_moved(ledger, name, info.ssh)
            record = ledger.get(name)
    ui = profile(record.ui or "a1111")
    reporter.phase("ssh", f"connecting to {record.ssh_user}@{record.ssh_host}:{record.ssh_port}")
    connection = reconnect_record(record, deadline_s=ssh_timeout_s, ledger=ledger)
    forward = tunnel_to_ready_ui(
        record, connection, ui, port or record.local_port or 7860, deadline_s=60, phase=reporter.phase,
        prepare=lambda: resume_installed_ui(connection, ui.name,
                                            on_progress=lambda text: reporter.phase("install", text)),
        verb="checking")
    lifecycle.attached(ledger, name, forward.local_port, forward.url)
    return Session(ledger.get(name), connection, forward, ui)


def rearm(ledger: Ledger, providers: Providers, session: Session, watchdog: WatchdogSettings) -> str | None:
    """A machine with a budget whose watchdog no longer runs (a restart, a resume) gets it back; a note or None."""
    return ensure_watchdog(ledger, session.record, session.connection, providers.get(session.record.provider),
                           watchdog)
