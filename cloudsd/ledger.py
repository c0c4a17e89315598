"""The ledger: every machine cloudsd ever asked for, and what happened to it (stdlib sqlite3, WAL).

Storage only: the statuses and event kinds are the enums below, and the transitions between them are
written by `cloudsd/core/lifecycle.py` alone. Each event carries the id of the ledger row (session) it
belongs to, so a reused name never mixes two sessions' events.

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
from enum import Enum
from pathlib import Path
from typing import Any

from cloudsd import paths
from cloudsd.errors import CloudsdError, MachineNotFound

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
    data      TEXT NOT NULL DEFAULT '{}',
    record_id INTEGER
);
CREATE INDEX IF NOT EXISTS events_machine ON events(machine, at);
CREATE INDEX IF NOT EXISTS machines_name ON machines(name, id);
"""


class _Word(str, Enum):
    """An enum whose members are their words: equal to, stored as and printed as the plain string
    (`enum.StrEnum` from Python 3.11 on; cloudsd still runs on 3.10)."""

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]


class Status(_Word):
    """A ledger row's status. Every one but TERMINATED may still bill."""

    CREATING = "creating"  # reserved, the create call not answered yet
    BOOTING = "booting"
    RUNNING = "running"
    STOPPED = "stopped"  # the disk is kept and bills storage
    FAILED = "failed"
    UNKNOWN = "unknown"
    DESTROYING = "destroying"
    TERMINATED = "terminated"


class EventKind(_Word):
    """What happened to a session; `core/cost.py` reads billing from these."""

    RESERVED = "reserved"
    CREATED = "created"  # the provider returned an id: billing starts
    NOT_CREATED = "not-created"
    RUNNING = "running"
    HOST_KEY_PINNED = "host-key-pinned"
    READY = "ready"
    ATTACHED = "attached"
    SSH_MOVED = "ssh-moved"
    DESTROYING = "destroying"  # the destroy call: billing ends
    TERMINATED = "terminated"
    GONE = "gone"
    STOPPED = "stopped"
    RESUMED = "resumed"
    BUDGET = "budget"
    BUDGET_REACHED = "budget-reached"
    WATCHDOG_INSTALLED = "watchdog-installed"
    WATCHDOG_SEEN = "watchdog-seen"
    WATCHDOG_ENDED = "watchdog-ended"
    MODELS_SYNCED = "models-synced"
    OUTPUTS_PULLED = "outputs-pulled"


# Statuses of a ledger row that may still bill.
ACTIVE = tuple(s for s in Status if s is not Status.TERMINATED)


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
    status: Status
    ssh_host: str | None
    ssh_port: int | None
    ssh_user: str | None
    host_key: str | None
    key_path: str | None
    local_port: int | None
    ui: str | None
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [f.name for f in fields(MachineRecord)]
# The newest session of a name: names are reused once a machine is gone, and old sessions stay for the cost report.
_NEWEST = "id = (SELECT max(id) FROM machines WHERE name = ?)"


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
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise CloudsdError(
                f"the ledger at {self.path} cannot be opened ({exc}).",
                hint="Move it aside and run `cloudsd status` to list strays on your accounts.",
            ) from None

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Ledgers written before events carried their row's id get it, matched the only way they allow:
        a name's events are cut at each `reserved` (written with the row) and given to its rows in order."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(events)")]
        if "record_id" in columns:
            return
        with self._tx() as db:
            db.execute("ALTER TABLE events ADD COLUMN record_id INTEGER")
            rows: dict[str, list[int]] = {}
            for record_id, name in db.execute("SELECT id, name FROM machines ORDER BY id"):
                rows.setdefault(name, []).append(record_id)
            chunks: dict[str, list[list[int]]] = {}
            for event_id, name, kind in db.execute("SELECT id, machine, kind FROM events ORDER BY id"):
                named = chunks.setdefault(name, [])
                if kind == EventKind.RESERVED or not named:
                    named.append([])
                named[-1].append(event_id)
            for name, ids in rows.items():
                named = chunks.get(name, [])
                offset = max(0, len(ids) - len(named))  # rows older than any event get none
                for index, record_id in enumerate(ids):
                    if 0 <= index - offset < len(named):
                        db.executemany("UPDATE events SET record_id = ? WHERE id = ?",
                                       [(record_id, event_id) for event_id in named[index - offset]])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # -- machines ------------------------------------------------------------------------------------
    def reserve(self, name: str, provider: str, image: str, *, ui: str | None = None) -> None:
        """Claim `name` before asking a provider, so two terminals cannot create the same machine."""
        with self._tx() as db:
            row = db.execute(f"SELECT status FROM machines WHERE {_NEWEST}", (name,)).fetchone()
            if row and row[0] in ACTIVE:
                raise CloudsdError(
                    f"a machine named {name!r} already exists ({row[0]}).",
                    hint=f"Use it (`cloudsd tunnel {name}`), end it (`cloudsd down {name}`), or pick another name.",
                )
            db.execute(
                "INSERT INTO machines (name, provider, image, created_at, status, ui) VALUES (?, ?, ?, ?, ?, ?)",
                (name, provider, image, time.time(), Status.CREATING, ui),
            )
            self._event(db, name, EventKind.RESERVED, {"provider": provider, "image": image})

    def update(self, name: str, *, event: EventKind | None = None, data: dict[str, Any] | None = None,
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
        if active_only:
            sql += f" WHERE status IN ({', '.join('?' * len(ACTIVE))})"
            params = ACTIVE
        sql += " ORDER BY id"
        return [MachineRecord(*row) for row in self._db.execute(sql, params).fetchall()]

    # -- events --------------------------------------------------------------------------------------
    def event(self, name: str, kind: EventKind, data: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            self._event(db, name, kind, data or {})

    @staticmethod
    def _event(db: sqlite3.Connection, name: str, kind: EventKind, data: dict[str, Any]) -> None:
        """An event of the name's newest session, in the same transaction as any change to its row."""
        db.execute(
            "INSERT INTO events (at, machine, kind, data, record_id) "
            "VALUES (?, ?, ?, ?, (SELECT max(id) FROM machines WHERE name = ?))",
            (time.time(), name, EventKind(kind), json.dumps(data, default=str), name),
        )

    def events(self, name: str | None = None) -> list[tuple[float, str, str, dict[str, Any]]]:
        sql = "SELECT at, machine, kind, data FROM events"
        params: tuple[Any, ...] = ()
        if name:
            sql += " WHERE machine = ?"
            params = (name,)
        sql += " ORDER BY id"
        return [(at, m, k, json.loads(d)) for at, m, k, d in self._db.execute(sql, params).fetchall()]

    def session(self, name: str) -> tuple[MachineRecord, list[tuple[float, str, str, dict[str, Any]]]]:
        """The newest session of `name`: its row and its own events, in the order they were written."""
        record = self.get(name)
        return record, self._events_where("record_id = ?", (record.id,))

    def sessions(self) -> list[tuple[MachineRecord, list[tuple[float, str, str, dict[str, Any]]]]]:
        """Every session, oldest first, each with its own events."""
        by_id: dict[int, list[tuple[float, str, str, dict[str, Any]]]] = {}
        for row in self._db.execute("SELECT record_id, at, machine, kind, data FROM events ORDER BY id"):
            by_id.setdefault(row[0], []).append((row[1], row[2], row[3], json.loads(row[4])))
        return [(record, by_id.get(record.id, [])) for record in self.machines()]

    def _events_where(self, where: str, params: tuple[Any, ...]) -> list[tuple[float, str, str, dict[str, Any]]]:
        sql = f"SELECT at, machine, kind, data FROM events WHERE {where} ORDER BY id"
        return [(at, m, k, json.loads(d)) for at, m, k, d in self._db.execute(sql, params).fetchall()]
