"""`cloudsd ssh`: a shell or one command on a machine of the ledger, with its own key and pinned host key."""

from __future__ import annotations

from cloudsd import keys
from cloudsd.core.access import reconnect_record
from cloudsd.core.machines import reachable_record
from cloudsd.ledger import Ledger, MachineRecord, Status

COMMAND_TIMEOUT_S = 3600


def _pinned_record(ledger: Ledger, name: str) -> MachineRecord:
    """The row, with its host key pinned: a row without one (an older cloudsd) gets it on a first connect."""
    record = ledger.get(name)
    if record.status != Status.TERMINATED and record.ssh_host and not record.host_key:
        reconnect_record(record, deadline_s=30, ledger=ledger).close()
    return reachable_record(ledger, name)


def ssh_argv(ledger: Ledger, name: str) -> list[str]:
    """The OpenSSH command line for an interactive shell: the machine's key, its pinned host key only."""
    record = _pinned_record(ledger, name)
    pair = keys.load_key_pair(name)
    assert record.ssh_host and record.host_key
    keys.write_known_hosts(pair, record.ssh_host, record.ssh_port or 22, record.host_key)
    return ["ssh", "-i", str(pair.private_path), "-o", f"UserKnownHostsFile={pair.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-p", str(record.ssh_port),
            f"{record.ssh_user or 'root'}@{record.ssh_host}"]


def run_command(ledger: Ledger, name: str, command: list[str]) -> tuple[int, str, str]:
    """Run one command on the machine over cloudsd's own SSH: (exit code, stdout, stderr)."""
    record = _pinned_record(ledger, name)
    with reconnect_record(record, deadline_s=30, ledger=ledger) as connection:
        return connection.run(" ".join(command), timeout_s=COMMAND_TIMEOUT_S)
