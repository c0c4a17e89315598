from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from cloudsd.errors import CloudsdError, MachineNotFound
from cloudsd.ledger import SCHEMA_VERSION, EventKind, Ledger, Status


def test_reserve_update_and_events(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a", "local", "img")
    ledger.update("a", provider_id="c1", status="booting", event=EventKind.CREATED)
    record = ledger.get("a")
    assert (record.provider_id, record.status, record.image) == ("c1", "booting", "img")
    assert [kind for _, _, kind, _ in ledger.events("a")] == ["reserved", "created"]
    with pytest.raises(CloudsdError, match="already exists"):
        ledger.reserve("a", "local", "img")
    with pytest.raises(MachineNotFound):
        ledger.get("nope")


def test_empty_means_nothing_was_ever_recorded(tmp_path: Path) -> None:
    """`status` answers an empty ledger without its rules: a terminated machine or a deleted volume still counts."""
    machines, volumes = Ledger(tmp_path / "m.db"), Ledger(tmp_path / "v.db")
    assert machines.is_empty() and volumes.is_empty()
    machines.reserve("a", "local", "img")
    machines.update("a", status="terminated", terminated_at=1.0)
    volumes.reserve_volume("v", "runpod", 10, None)
    volumes.update_volume("v", status="deleted", deleted_at=1.0)
    assert not machines.is_empty() and not volumes.is_empty()


def test_name_reused_after_termination_keeps_old_session(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a", "local", "img")
    ledger.update("a", status="terminated", terminated_at=1.0)
    ledger.reserve("a", "vastai", "img2")
    assert ledger.get("a").provider == "vastai"
    assert [r.provider for r in ledger.machines()] == ["local", "vastai"]
    assert [r.provider for r in ledger.machines(active_only=True)] == ["vastai"]


def test_wal_mode(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db")
    mode = sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(path: str, prefix: str, count: int) -> None:
    ledger = Ledger(Path(path))
    for i in range(count):
        name = f"{prefix}-{i}"
        ledger.reserve(name, "local", "img")
        ledger.update(name, provider_id=f"id-{name}", status="booting", event=EventKind.CREATED)
        ledger.event(name, EventKind.WATCHDOG_SEEN, {"i": i})


def test_two_processes_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    Ledger(Path(path)).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, p, 60)) for p in ("x", "y")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    ledger = Ledger(Path(path))
    records = ledger.machines()
    assert len(records) == 120
    assert all(r.provider_id == f"id-{r.name}" for r in records)
    assert len(ledger.events()) == 360
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_processes_cannot_claim_one_name(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    first, second = Ledger(path), Ledger(path)
    first.reserve("same", "local", "img")
    with pytest.raises(CloudsdError, match="already exists"):
        second.reserve("same", "local", "img")


def test_a_full_disk_is_a_ledger_error_not_a_database_traceback(tmp_path: Path) -> None:
    from cloudsd.errors import LedgerError

    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a", "local", "img")
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(LedgerError, match="disk is full"):
        ledger.update("a", event=EventKind.WATCHDOG_SEEN, data={"blob": "x" * 200_000})
    assert ledger.get("a").status == "creating"


def test_unknown_status_is_never_hidden(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a", "local", "img")
    ledger.update("a", status="hibernating")  # written by a newer cloudsd
    assert [r.name for r in ledger.machines(active_only=True)] == ["a"]
    assert ledger.get("a").active
    with pytest.raises(CloudsdError, match="already exists"):
        ledger.reserve("a", "local", "img")


OLD_SCHEMA = """
CREATE TABLE machines (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, provider TEXT NOT NULL,
    provider_id TEXT, image TEXT NOT NULL, gpu TEXT, price_per_hour REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    ready_at REAL, terminated_at REAL, status TEXT NOT NULL, ssh_host TEXT, ssh_port INTEGER, ssh_user TEXT,
    host_key TEXT, key_path TEXT);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, machine TEXT NOT NULL,
    kind TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
INSERT INTO machines (name, provider, provider_id, image, price_per_hour, created_at, status)
    VALUES ('old', 'runpod', 'pod1', 'img', 0.5, 1000.0, 'running');
"""


def test_an_older_ledger_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    ledger = Ledger(path)
    record = ledger.get("old")
    assert (record.provider_id, record.storage_price_per_hour, record.ui, record.detail) == ("pod1", 0.0, None, "")
    ledger.update("old", local_port=7860, ui="forge", event=EventKind.ATTACHED)  # columns it lacked
    assert ledger.get("old").local_port == 7860
    assert ledger._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    ledger.close()
    Ledger(path).close()  # a second open finds it current


def test_a_newer_ledger_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from cloudsd.errors import LedgerError

    path = tmp_path / "l.db"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(LedgerError, match="newer cloudsd"):
        Ledger(path)


def test_damaged_rows_and_events_are_shown_as_needing_attention(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    ledger.reserve("dmg", "runpod", "img")
    ledger.update("dmg", provider_id="pod2", status="running")
    ledger._db.execute("UPDATE machines SET price_per_hour = 'lots', ssh_port = 'x' WHERE name = 'dmg'")
    ledger._db.execute("UPDATE events SET data = '{not json' WHERE machine = 'dmg'")
    record = ledger.get("dmg")
    assert record.price_per_hour == 0.0 and record.ssh_port is None
    assert record.attention and "price_per_hour='lots'" in record.attention
    assert [r.name for r in ledger.machines(active_only=True)] == ["dmg"]
    assert all("unreadable" in data for _, _, _, data in ledger.events("dmg"))


def test_old_ledger_gets_record_ids_on_its_events(tmp_path: Path) -> None:
    """A ledger from before events carried their row's id: opening it adds the column and matches each
    name's events to its sessions (cut at each `reserved`); rows older than any event get none."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE machines (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, provider TEXT NOT NULL,
            provider_id TEXT, image TEXT NOT NULL, gpu TEXT, price_per_hour REAL NOT NULL DEFAULT 0,
            storage_price_per_hour REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL, ready_at REAL,
            terminated_at REAL, status TEXT NOT NULL, ssh_host TEXT, ssh_port INTEGER, ssh_user TEXT,
            host_key TEXT, key_path TEXT, local_port INTEGER, ui TEXT, detail TEXT NOT NULL DEFAULT '');
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, machine TEXT NOT NULL,
            kind TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
        PRAGMA user_version = 1;
    """)
    for name, status in (("a", "terminated"), ("a", "terminated"), ("b", "running"), ("a", "running")):
        db.execute("INSERT INTO machines (name, provider, image, created_at, status) VALUES (?, 'local', 'i', 0, ?)",
                   (name, status))
    for name, kind in (("a", "reserved"), ("a", "created"), ("b", "reserved"), ("a", "reserved"), ("b", "created"),
                       ("a", "created")):
        db.execute("INSERT INTO events (at, machine, kind) VALUES (0, ?, ?)", (name, kind))
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert [(r.id, r.name, [e[2] for e in evs]) for r, evs in ledger.sessions()] == [
        (1, "a", []), (2, "a", ["reserved", "created"]), (3, "b", ["reserved", "created"]),
        (4, "a", ["reserved", "created"])]
    ledger.event("b", EventKind.ATTACHED)
    assert [e[2] for e in ledger.session("b")[1]] == ["reserved", "created", "attached"]
    ledger.close()
    Ledger(path).close()  # a second open finds it current and leaves the ids alone
    assert Ledger(path).session("a")[0].status is Status.RUNNING
