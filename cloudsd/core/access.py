"""Getting into a machine of the ledger: SSH back in with its own key and pinned host key, the web UI tunnel,
and the wait for the web UI to answer through it; a `Session` is a ready machine with both open.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudsd import keys
from cloudsd.errors import CloudsdError, HostKeyMismatch, ProvisioningError, SSHError
from cloudsd.ledger import Ledger, MachineRecord
from cloudsd.machine import SSHEndpoint
from cloudsd.openssh import Master, Target, end_master
from cloudsd.ssh import Connection, connect
from cloudsd.tunnel import LocalForward
from cloudsd.ui import UIProfile, profile

POLL_S = 0.25  # how often the web UI is probed through the tunnel while it starts: one small GET


@dataclass
class Session:
    """A ready machine with its SSH connection and web UI tunnel open. Close it to detach."""

    record: MachineRecord
    connection: Connection
    forward: LocalForward
    profile: UIProfile

    @property
    def url(self) -> str:
        return self.forward.url

    def close(self) -> None:
        self.forward.close()
        self.connection.close()


def reconnect_record(record: MachineRecord, *, deadline_s: float, ledger: Ledger | None = None) -> Connection:
    """SSH to a machine in the ledger, checking its pinned host key. A row without one (an older cloudsd,
    a crash right after the first connect) gets the key seen now pinned, so no later connect trusts blindly."""
    if not (record.ssh_host and record.ssh_port and record.key_path):
        raise SSHError(f"machine {record.name!r} has no SSH endpoint yet.",
                       hint="`cloudsd status` shows its state.")
    endpoint = SSHEndpoint(record.ssh_host, record.ssh_port, record.ssh_user or "root")
    if record.host_key:
        return connect(endpoint, Path(record.key_path), record.host_key, deadline_s=deadline_s)
    if ledger is None:
        own = Ledger()
        try:
            return reconnect_record(record, deadline_s=deadline_s, ledger=own)
        finally:
            own.close()
    pinned = ledger.get(record.name).host_key  # another process may have pinned it since `record` was read
    connection = connect(endpoint, Path(record.key_path), pinned, deadline_s=deadline_s)
    if pinned is None:
        try:
            pinned = ledger.pin_host_key(record.name, connection.host_key.text)
            if pinned != connection.host_key.text:
                raise HostKeyMismatch(f"the machine at {endpoint} presented another SSH host key than the one "
                                      "pinned meanwhile; refusing to connect.",
                                      hint=f"If it was rebuilt on purpose, end it with `cloudsd down {record.name}`.")
            keys.write_known_hosts(keys.load_key_pair(record.name), endpoint.host, endpoint.port, pinned)
        except BaseException:
            connection.close()
            raise
    return connection


def _target(record: MachineRecord) -> Target | None:
    if not (record.ssh_host and record.ssh_port and record.key_path and record.host_key):
        return None
    return Target(SSHEndpoint(record.ssh_host, record.ssh_port, record.ssh_user or "root"), Path(record.key_path),
                  record.host_key)


def open_master(record: MachineRecord, *, timeout_s: float = 30.0) -> Master | None:
    """The machine's OpenSSH master, running (left by an earlier command, or started now), for bulk streams;
    None when the system `ssh` cannot be used (not found, CLOUDSD_SSH_CLIENT=paramiko, no host key pinned
    yet, or it failed to connect: paramiko's own retries and messages then take over). A host key other than
    the pinned one raises HostKeyMismatch, as paramiko's path does."""
    target = _target(record)
    master = Master.for_target(target) if target is not None else None
    if master is None:
        return None
    try:
        master.ensure(timeout_s=timeout_s)
    except HostKeyMismatch:
        raise
    except SSHError:
        return None
    return master


def warm_master(record: MachineRecord, *, timeout_s: float = 30.0) -> Callable[[], None]:
    """Start the machine's OpenSSH master in the background (`up`, `start`: as soon as SSH answers, while the
    web UI starts), so that every later command finds it up; returns what waits for it (call it before this
    process may exit: the master's start reads ssh's log, and ssh would die writing to a closed pipe). Quiet:
    a command that needs the master and finds none starts one and says why it could not."""
    def start() -> None:
        try:
            open_master(record, timeout_s=timeout_s)
        except CloudsdError:
            pass  # a host key mismatch: the sync that needs the master reports it

    thread = threading.Thread(target=start, name="cloudsd-warm-master", daemon=True)
    thread.start()
    return lambda: thread.join(timeout_s + 5)


def end_master_of(record: MachineRecord) -> None:
    """End the machine's OpenSSH master, if one runs (`down`, `stop`)."""
    target = _target(record)
    if target is not None:
        end_master(target)


def open_tunnel(record: MachineRecord, connection: Connection, port: int) -> LocalForward:
    """The web UI's port on 127.0.0.1:`port`; a dropped SSH connection is reopened on the next request."""
    ui = profile(record.ui or "a1111")

    def reconnect() -> Connection:
        return reconnect_record(record, deadline_s=30)

    forward = LocalForward(connection, ui.internal_port, port, reconnect=reconnect)
    forward.start()
    return forward


def tunnel_to_ready_ui(record: MachineRecord, connection: Connection, ui: UIProfile, port: int, *,
                       deadline_s: float, phase: Callable[[str, str], None],
                       prepare: Callable[[], object] | None = None, verb: str = "waiting for") -> LocalForward:
    """`prepare` (a UI installed on boot), then the web UI tunnelled to 127.0.0.1:`port` and waited for until it
    answers, each step reported through `phase`. On any failure the connection is closed before it propagates."""
    try:
        if prepare is not None:
            prepare()
        forward = open_tunnel(record, connection, port)
        phase("web UI", f"{verb} {ui.title} at {forward.url}")
        wait_for_ui(forward.local_port, ui, deadline_s=deadline_s, on_wait=lambda why: phase("web UI", why))
    except BaseException:
        connection.close()
        raise
    return forward


def ui_healthy(local_port: int, ui: UIProfile, timeout_s: float = 5.0) -> tuple[bool, str]:
    """One health probe through the tunnel: (ready, why not)."""
    conn = http.client.HTTPConnection("127.0.0.1", local_port, timeout=timeout_s)
    try:
        conn.request("GET", ui.health_path, headers={"User-Agent": "cloudsd-health"})  # not UI use (idle stop)
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            return True, "ready"
        return False, f"{ui.health_path} answered HTTP {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"not answering yet ({type(exc).__name__})"
    finally:
        conn.close()


def wait_for_ui(local_port: int, ui: UIProfile, *, deadline_s: float,
                on_wait: Callable[[str], None] | None = None) -> None:
    """Probe the web UI through the tunnel until it answers; ProvisioningError after `deadline_s`."""
    started = time.monotonic()
    while True:
        ok, why = ui_healthy(local_port, ui)
        if ok:
            return
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise ProvisioningError(f"the {ui.title} web UI did not become ready within {deadline_s:.0f} s ({why}).")
        if on_wait:
            on_wait(f"{why}, {elapsed:.0f} s")
        time.sleep(POLL_S)
