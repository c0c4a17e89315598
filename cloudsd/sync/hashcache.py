"""sha256 digests of local files, kept in $CLOUDSD_HOME/hashes.sqlite3 and trusted while a file's path, size,
mtime_ns and inode are unchanged, so a re-sync never re-reads gigabytes to learn what it already knew."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from cloudsd import paths

CHUNK = 1 << 20


class HashCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.home() / "hashes.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                         " inode INTEGER, sha256 TEXT)")

        self._loaded: dict[str, tuple[int, int, int, str]] = {}  # rows read ahead by `load_under`
        self._loaded_under: list[str] = []

    def close(self) -> None:
        self._db.close()

    def load_under(self, folder: Path) -> None:
        """Read every cached digest below `folder` in one query, for the `get`s that follow."""
        prefix = os.path.join(str(folder), "")
        # paths that start with the prefix: those >= it and < the prefix with its last character raised by one
        rows = self._db.execute("SELECT path, size, mtime_ns, inode, sha256 FROM hashes WHERE path >= ? AND path < ?",
                                (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).fetchall()
        self._loaded.update((row[0], tuple(row[1:])) for row in rows)
        self._loaded_under.append(prefix)

    def get(self, path: Path, st: os.stat_result) -> str | None:
        key = str(path)
        if any(key.startswith(prefix) for prefix in self._loaded_under):
            row = self._loaded.get(key)
        else:
            row = self._db.execute("SELECT size, mtime_ns, inode, sha256 FROM hashes WHERE path = ?",
                                   (key,)).fetchone()
        if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            return str(row[3])
        return None

    def put(self, path: Path, st: os.stat_result, sha256: str) -> None:
        self.put_many([(path, st, sha256)])

    def put_many(self, entries: list[tuple[Path, os.stat_result, str]]) -> None:
        """Several digests in one transaction (one sync of the journal, not one per file)."""
        with self._db:
            self._db.execute("BEGIN")
            rows = [(str(p), st.st_size, st.st_mtime_ns, st.st_ino, sha) for p, st, sha in entries]
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", rows)
        self._loaded.update((row[0], row[1:]) for row in rows
                            if any(row[0].startswith(prefix) for prefix in self._loaded_under))

    def sha256(self, path: Path) -> str:
        """The file's digest, from the cache or read now (and then cached)."""
        st = path.stat()
        cached = self.get(path, st)
        if cached:
            return cached
        digest = hashlib.sha256()
        with path.open("rb", buffering=0) as f:
            view = memoryview(bytearray(CHUNK))
            while n := f.readinto(view):
                digest.update(view[:n])
        if path.stat().st_mtime_ns == st.st_mtime_ns:
            self.put(path, st, digest.hexdigest())
        return digest.hexdigest()
