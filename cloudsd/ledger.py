"""The ledger: every machine cloudsd ever asked for, and what happened to it (stdlib sqlite3, WAL).

Storage only: the statuses and event kinds are the enums below, and the transitions between them are
written by `cloudsd/core/lifecycle.py` alone. Each event carries the id of the ledger row (session) it
belongs to, so a reused name never mixes two sessions' events.

A row is written the moment a provider returns an id, before any waiting, so a crash or Ctrl-C never
loses track of a machine that bills. Two cloudsd processes may use the ledger at once: WAL mode, a busy
timeout and short transactions keep them from corrupting it or losing rows.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path

from cloudsd import paths
from cloudsd.errors import CloudsdError, LedgerError, MachineNotFound

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

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
CREATE TABLE IF NOT EXISTS volumes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    provider        TEXT NOT NULL,
    provider_id     TEXT,
    placement       TEXT,
    region          TEXT,
    size_gb         REAL NOT NULL DEFAULT 0,
    price_per_gb_month REAL NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    deleted_at      REAL,
    status          TEXT NOT NULL,
    attached_to     TEXT
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
    """A ledger row's status. Every one but TERMINATED may still bill (and so may one this version does not
    know, written by a newer cloudsd: such a row keeps its word as a plain string)."""

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
    RESUME_REFUSED = "resume-refused"  # `cloudsd start`: the host could not take the machine back
    GENERATED = "generated"  # a `cloudsd generate` run: pictures, seconds, sampling steps


class VolumeStatus(_Word):
    """A volume row's status. Every one but DELETED may still bill."""

    CREATING = "creating"  # reserved, the create call not answered yet
    READY = "ready"
    DELETED = "deleted"


# Statuses of a ledger row that may still bill.
ACTIVE = tuple(s for s in Status if s is not Status.TERMINATED)
KNOWN_STATUSES = tuple(Status)
# PRAGMA user_version. 0: a ledger from before versions (columns may be missing); 1: SCHEMA without events'
# record_id; 2: SCHEMA as above (each event names its row).
SCHEMA_VERSION = 2
UNREADABLE = "needs attention: "  # the start of `detail` for a row this version could not read whole


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
    status: Status | str
    ssh_host: str | None
    ssh_port: int | None
    ssh_user: str | None
    host_key: str | None
    key_path: str | None
    local_port: int | None
    ui: str | None
    detail: str

    def __post_init__(self) -> None:
        if self.status in KNOWN_STATUSES:  # an unknown word stays a string: shown, never hidden
            object.__setattr__(self, "status", Status(self.status))

    @property
    def attention(self) -> str | None:
        """Why this row needs a look by hand (an unknown status, unreadable values), or None."""
        if self.detail.startswith(UNREADABLE):
            return self.detail
        if self.status not in KNOWN_STATUSES:
            return (f"{UNREADABLE}status {self.status!r} is not one this cloudsd knows (a newer version wrote it?); "
                    f"it may still bill: `cloudsd down {self.name}` ends it")
        return None

    @property
    def active(self) -> bool:
        """May still bill: every status but terminated, including ones this version does not know."""
        return self.status != "terminated"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [f.name for f in fields(MachineRecord)]
_NUMBERS = {"price_per_hour": float, "storage_price_per_hour": float, "created_at": float, "ready_at": float,
            "terminated_at": float, "ssh_port": int, "local_port": int, "id": int}
_REQUIRED = {"price_per_hour", "storage_price_per_hour", "created_at", "id"}


def _record(row: tuple[Any, ...]) -> MachineRecord:
    """A row as a record; a value of the wrong type (a damaged or hand-edited ledger) is replaced by a neutral
    one and named in `detail`, so the machine is listed as needing attention instead of breaking a command."""
    values = dict(zip(_COLUMNS, row, strict=True))
    damaged = []
    for column, value in values.items():
        kind = _NUMBERS.get(column)
        try:
            if kind is not None:
                if value is None:
                    if column in _REQUIRED:
                        raise ValueError
                    continue
                number = kind(value)
                if isinstance(number, float) and number != number:
                    raise ValueError
                values[column] = number
            elif value is not None and not isinstance(value, str):
                values[column] = str(value)
        except (TypeError, ValueError, OverflowError):
            damaged.append(f"{column}={value!r}")
            values[column] = 0.0 if column in _REQUIRED else None
    for column in ("name", "provider", "image", "status"):
        if values[column] is None:
            damaged.append(f"{column}=None")
            values[column] = "unknown" if column == "status" else ""
    values["detail"] = values["detail"] or ""
    if damaged:
        values["detail"] = f"{UNREADABLE}unreadable ledger values {', '.join(damaged)}; " + values["detail"]
    return MachineRecord(**values)
@dataclass(frozen=True)
class VolumeRecord:
    """One volume from the moment it was asked for until the provider confirmed it deleted. `attached_to` is the
    machine that last mounted it (in use while that machine's row is active)."""

    id: int
    name: str
    provider: str
    provider_id: str | None
    placement: str | None
    region: str | None
    size_gb: float
    price_per_gb_month: float
    created_at: float
    deleted_at: float | None
    status: str  # a VolumeStatus
    attached_to: str | None

    @property
    def active(self) -> bool:
        """May still bill: everything but deleted."""
        return self.status != VolumeStatus.DELETED

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_VOLUME_COLUMNS = [f.name for f in fields(VolumeRecord)]
_NEWEST_VOLUME = "id = (SELECT max(id) FROM volumes WHERE name = ?)"


# The newest session of a name: names are reused once a machine is gone, and old sessions stay for the cost report.
_NEWEST = "id = (SELECT max(id) FROM machines WHERE name = ?)"


def _refuse_taken(name: str, row: tuple[Any, ...] | None) -> None:
    if row and row[0] != "terminated":  # an unknown status may still bill: the name stays taken
        raise CloudsdError(
            f"a machine named {name!r} already exists ({row[0]}).",
            hint=f"Use it (`cloudsd tunnel {name}`), end it (`cloudsd down {name}`), or pick another name.",
        )


def _refuse_volume_taken(name: str, row: tuple[Any, ...] | None) -> None:
    if row and row[0] != VolumeStatus.DELETED:
        raise CloudsdError(f"a volume named {name!r} already exists ({row[0]}).",
                           hint="`cloudsd volume ls` lists them; pick another name.")


def _table_columns() -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, declaration)]}, read from SCHEMA so the two never disagree."""
    tables: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in SCHEMA.splitlines():
        words = line.split()
        if line.startswith("CREATE TABLE"):
            current = tables.setdefault(words[5], [])
        elif line.startswith(");"):
            current = None
        elif current is not None and words:
            current.append((words[0], " ".join(words[1:]).rstrip(",")))
    return tables


def _addable(declaration: str) -> str:
    """A declaration that ALTER TABLE ADD COLUMN accepts: NOT NULL needs a default."""
    if "PRIMARY KEY" in declaration:
        raise LedgerError("the ledger is too old to migrate (no id column).",
                          hint="Move it aside; `cloudsd status` then lists strays on your accounts.")
    if "NOT NULL" in declaration and "DEFAULT" not in declaration:
        return declaration + (" DEFAULT 0" if declaration.startswith(("REAL", "INTEGER")) else " DEFAULT ''")
    return declaration


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.ledger_file()
        if path is None:
            paths.ensure_home()
        else:
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

    def _migrate(self) -> None:
        """Bring an older ledger forward to SCHEMA_VERSION; refuse one written by a newer cloudsd."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise LedgerError(f"the ledger at {self.path} was written by a newer cloudsd (schema {version}, this "
                              f"one knows {SCHEMA_VERSION}).", hint="Upgrade cloudsd (`pip install -U cloudsd`).")
        if version == SCHEMA_VERSION:
            return
        with self._tx() as db:
            # 0 -> 1: ledgers from before versions lack the columns added since; add each with its default.
            for table, columns in _table_columns().items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns:
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {_addable(declaration)}")
            if version < 2:
                _give_events_their_rows(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def is_empty(self) -> bool:
        """No machine and no volume was ever recorded here (a new user's ledger)."""
        sql = "SELECT NOT EXISTS (SELECT 1 FROM machines) AND NOT EXISTS (SELECT 1 FROM volumes)"
        return bool(self._db.execute(sql).fetchone()[0])

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
            self._event(db, name, EventKind.HOST_KEY_PINNED, {"host_key": host_key})
            return host_key

    def get(self, name: str) -> MachineRecord:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM machines WHERE {_NEWEST}", (name,)).fetchone()
        if row is None:
            raise MachineNotFound(
                f"no machine named {name!r} in the ledger.", hint="`cloudsd status` lists the machines."
            )
        return _record(row)

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
        return [_record(row) for row in self._db.execute(sql, params).fetchall()]

    # -- volumes ------------------------------------------------------------------------------------
    def check_volume_free(self, name: str) -> None:
        _refuse_volume_taken(name, self._db.execute(f"SELECT status FROM volumes WHERE {_NEWEST_VOLUME}",
                                                    (name,)).fetchone())

    def reserve_volume(self, name: str, provider: str, size_gb: float, region: str | None) -> None:
        """Claim a volume name before asking a provider, so nothing that bills exists without a record."""
        with self._tx() as db:
            _refuse_volume_taken(name, db.execute(f"SELECT status FROM volumes WHERE {_NEWEST_VOLUME}",
                                                  (name,)).fetchone())
            db.execute("INSERT INTO volumes (name, provider, size_gb, region, created_at, status) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (name, provider, size_gb, region, time.time(), VolumeStatus.CREATING))

    def update_volume(self, name: str, **values: Any) -> None:
        unknown = set(values) - set(_VOLUME_COLUMNS) | ({"id", "name"} & set(values))
        if unknown:
            raise ValueError(f"unknown volume columns {unknown}")
        with self._tx() as db:
            assignments = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE volumes SET {assignments} WHERE {_NEWEST_VOLUME}", (*values.values(), name))

    def volume(self, name: str) -> VolumeRecord | None:
        """The newest volume of that name that has not been deleted, or None."""
        row = self._db.execute(f"SELECT {', '.join(_VOLUME_COLUMNS)} FROM volumes WHERE {_NEWEST_VOLUME}",
                               (name,)).fetchone()
        record = VolumeRecord(*row) if row else None
        return record if record and record.active else None

    def volumes(self, *, active_only: bool = False) -> list[VolumeRecord]:
        sql = f"SELECT {', '.join(_VOLUME_COLUMNS)} FROM volumes"
        if active_only:
            sql += f" WHERE status != '{VolumeStatus.DELETED}'"
        return [VolumeRecord(*row) for row in self._db.execute(sql + " ORDER BY id").fetchall()]

    # -- events --------------------------------------------------------------------------------------
    def event(self, name: str, kind: EventKind, data: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            self._event(db, name, kind, data or {})

    @staticmethod
    def _event(db: sqlite3.Connection, name: str, kind: EventKind, data: dict[str, Any]) -> None:
        """An event of the name's newest session, in the same transaction as any change to its row."""
        import json  # here and in _event_row: `status` on an empty ledger reads no event

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
        return [_event_row(at, m, k, d) for at, m, k, d in self._db.execute(sql, params).fetchall()]

    def session(self, name: str) -> tuple[MachineRecord, list[tuple[float, str, str, dict[str, Any]]]]:
        """The newest session of `name`: its row and its own events, in the order they were written."""
        record = self.get(name)
        sql = "SELECT at, machine, kind, data FROM events WHERE record_id = ? ORDER BY id"
        return record, [_event_row(*row) for row in self._db.execute(sql, (record.id,)).fetchall()]

    def sessions(self) -> list[tuple[MachineRecord, list[tuple[float, str, str, dict[str, Any]]]]]:
        """Every session, oldest first, each with its own events."""
        by_id: dict[Any, list[tuple[float, str, str, dict[str, Any]]]] = {}
        for record_id, *row in self._db.execute("SELECT record_id, at, machine, kind, data FROM events ORDER BY id"):
            by_id.setdefault(record_id, []).append(_event_row(*row))
        return [(record, by_id.get(record.id, [])) for record in self.machines()]


def _event_row(at: Any, machine: Any, kind: Any, data: Any) -> tuple[float, str, str, dict[str, Any]]:
    """An event row; damaged data is kept as `{"unreadable": text}`, never a crash of `cost` or `status`."""
    import json

    try:
        value = json.loads(data)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        value = {"unreadable": str(data)[:200]}
    try:
        when = float(at)
    except (TypeError, ValueError):
        when, value = 0.0, {**value, "unreadable_at": str(at)[:50]}
    return when, str(machine), str(kind), value


def _give_events_their_rows(db: sqlite3.Connection) -> None:
    """Events written before they carried their row's id get it, matched the only way such a ledger allows:
    a name's events are cut at each `reserved` (written with the row) and given to its rows in order; rows
    older than any event get none."""
    rows: dict[str, list[int]] = {}
    for record_id, name in db.execute("SELECT id, name FROM machines ORDER BY id"):
        rows.setdefault(name, []).append(record_id)
    chunks: dict[str, list[list[int]]] = {}
    for event_id, name, kind in db.execute("SELECT id, machine, kind FROM events WHERE record_id IS NULL ORDER BY id"):
        named = chunks.setdefault(name, [])
        if kind == EventKind.RESERVED or not named:
            named.append([])
        named[-1].append(event_id)
    for name, ids in rows.items():
        named = chunks.get(name, [])
        offset = max(0, len(ids) - len(named))
        for index, record_id in enumerate(ids):
            if 0 <= index - offset < len(named):
                db.executemany("UPDATE events SET record_id = ? WHERE id = ?",
                               [(record_id, event_id) for event_id in named[index - offset]])
