"""The ledger: every machine cloudsd ever asked for, and what happened to it (stdlib sqlite3, WAL).

A row is written the moment a provider returns an id, before any waiting, so a crash or Ctrl-C never
loses track of a machine that bills. Two cloudsd processes may use the ledger at once: WAL mode, a busy
timeout and short transactions keep them from corrupting it or losing rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cloudsd import paths
from cloudsd.errors import CloudsdError, LedgerError, MachineNotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    provider        TEXT NOT NULL,
    provider_id     TEXT,
    image           TEXT NOT NULL,
    gpu             TEXT,
    price_per_hour  REAL NOT NULL DEFAULT 0,
    storage_price_per_hour REAL NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    ready_at        REAL,
    terminated_at   REAL,
    status          TEXT NOT NULL,
    ssh_host        TEXT,
    ssh_port        INTEGER,
    ssh_user        TEXT,
    host_key        TEXT,
    key_path        TEXT,
    local_port      INTEGER,
    ui              TEXT,
    detail          TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    machine   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    data      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_machine ON events(machine, at);
CREATE INDEX IF NOT EXISTS machines_name ON machines(name, id);
"""

# Statuses of a ledger row. "active" ones may still bill.
ACTIVE = ("creating", "booting", "running", "stopped", "failed", "unknown", "destroying")


@dataclass(frozen=True)
class MachineRecord:
    """One session: a machine from the moment it was asked for until the provider confirmed it gone."""

    id: int
    name: str
    provider: str
    provider_id: str | None
    image: str
    gpu: str | None
    price_per_hour: float
    storage_price_per_hour: float
    created_at: float
    ready_at: float | None
    terminated_at: float | None
    status: str
    ssh_host: str | None
    ssh_port: int | None
    ssh_user: str | None
    host_key: str | None
    key_path: str | None
    local_port: int | None
    ui: str | None
    detail: str

    @property
    def active(self) -> bool:
        """May still bill: every status but terminated, including ones this version does not know."""
        return self.status != "terminated"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [f.name for f in fields(MachineRecord)]
# The newest session of a name: names are reused once a machine is gone, and old sessions stay for the cost report.
_NEWEST = "id = (SELECT max(id) FROM machines WHERE name = ?)"


def _refuse_taken(name: str, row: tuple[Any, ...] | None) -> None:
    if row and row[0] != "terminated":  # an unknown status may still bill: the name stays taken
        raise CloudsdError(
            f"a machine named {name!r} already exists ({row[0]}).",
            hint=f"Use it (`cloudsd tunnel {name}`), end it (`cloudsd down {name}`), or pick another name.",
        )


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.ledger_file()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CloudsdError(
                f"the ledger at {self.path} cannot be opened ({exc}).",
                hint="Move it aside and run `cloudsd status` to list strays on your accounts.",
            ) from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # a full disk, a read-only or locked file
            raise LedgerError(f"cannot write the ledger at {self.path} ({exc}).",
                              hint="Free some disk space (or fix the folder's permissions) and try again.") from exc

    # -- machines ------------------------------------------------------------------------------------
    def check_free(self, name: str) -> None:
        """CloudsdError if a machine of that name may still exist (anything but terminated)."""
        row = self._db.execute(f"SELECT status FROM machines WHERE {_NEWEST}", (name,)).fetchone()
        _refuse_taken(name, row)

    def reserve(self, name: str, provider: str, image: str, *, ui: str | None = None) -> None:
        """Claim `name` before asking a provider, so two terminals cannot create the same machine."""
        with self._tx() as db:
            row = db.execute(f"SELECT status FROM machines WHERE {_NEWEST}", (name,)).fetchone()
            _refuse_taken(name, row)
            db.execute(
                "INSERT INTO machines (name, provider, image, created_at, status, ui) VALUES (?, ?, ?, ?, ?, ?)",
                (name, provider, image, time.time(), "creating", ui),
            )
            self._event(db, name, "reserved", {"provider": provider, "image": image})

    def update(self, name: str, *, event: str | None = None, data: dict[str, Any] | None = None,
               **values: Any) -> None:
        unknown = set(values) - set(_COLUMNS) | ({"id", "name"} & set(values))
        if unknown:
            raise ValueError(f"unknown ledger columns {unknown}")
        with self._tx() as db:
            if values:
                assignments = ", ".join(f"{k} = ?" for k in values)
                cur = db.execute(f"UPDATE machines SET {assignments} WHERE {_NEWEST}", (*values.values(), name))
                if cur.rowcount == 0:
                    raise MachineNotFound(f"no machine named {name!r} in the ledger.")
            if event:
                self._event(db, name, event, data or values)

    def pin_host_key(self, name: str, host_key: str) -> str:
        """Pin `host_key` for the machine unless one is pinned already; returns the key that is pinned now
        (another process may have pinned first: the caller compares)."""
        with self._tx() as db:
            row = db.execute(f"SELECT host_key FROM machines WHERE {_NEWEST}", (name,)).fetchone()
            if row is None:
                raise MachineNotFound(f"no machine named {name!r} in the ledger.")
            if row[0]:
                return str(row[0])
            db.execute(f"UPDATE machines SET host_key = ? WHERE {_NEWEST}", (host_key, name))
            self._event(db, name, "host-key-pinned", {"host_key": host_key})
            return host_key

    def get(self, name: str) -> MachineRecord:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM machines WHERE {_NEWEST}", (name,)).fetchone()
        if row is None:
            raise MachineNotFound(
                f"no machine named {name!r} in the ledger.", hint="`cloudsd status` lists the machines."
            )
        return MachineRecord(*row)

    def find(self, name: str) -> MachineRecord | None:
        try:
            return self.get(name)
        except MachineNotFound:
            return None

    def machines(self, *, active_only: bool = False) -> list[MachineRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM machines"
        params: tuple[Any, ...] = ()
        if active_only:  # a status this version does not know may still bill: it is listed, never hidden
            sql += " WHERE status IS NOT 'terminated'"
        sql += " ORDER BY id"
        return [MachineRecord(*row) for row in self._db.execute(sql, params).fetchall()]

    # -- events --------------------------------------------------------------------------------------
    def event(self, name: str, kind: str, data: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            self._event(db, name, kind, data or {})

    @staticmethod
    def _event(db: sqlite3.Connection, name: str, kind: str, data: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO events (at, machine, kind, data) VALUES (?, ?, ?, ?)",
            (time.time(), name, kind, json.dumps(data, default=str)),
        )

    def events(self, name: str | None = None) -> list[tuple[float, str, str, dict[str, Any]]]:
        sql = "SELECT at, machine, kind, data FROM events"
        params: tuple[Any, ...] = ()
        if name:
            sql += " WHERE machine = ?"
            params = (name,)
        sql += " ORDER BY id"
        return [(at, m, k, json.loads(d)) for at, m, k, d in self._db.execute(sql, params).fetchall()]
