"""sha256 of files, with a persistent cache so unchanged files are never read twice."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """Remembers a file's sha256 by (path, size, mtime, inode, ctime); a change to any re-hashes it."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " ino INTEGER, ctime_ns INTEGER, sha256 TEXT)"
        )
        self._lock = threading.Lock()

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ino, ctime_ns, sha256 FROM hashes WHERE path = ?", (str(path),)
            ).fetchone()
        if row and tuple(row[:4]) == self._key(st):
            return str(row[4])
        return None

    def lookup_many(self, items: list[tuple[Path, os.stat_result]]) -> list[str | None]:
        """One query for many files (a folder of thousands of files costs milliseconds)."""
        wanted = {str(p): self._key(st) for p, st in items}
        found: dict[str, str] = {}
        names = list(wanted)
        with self._lock:
            for i in range(0, len(names), 500):
                part = names[i : i + 500]
                marks = ",".join("?" * len(part))
                query = (
                    f"SELECT path, size, mtime_ns, ino, ctime_ns, sha256 FROM hashes WHERE path IN ({marks})"
                )
                rows = self._db.execute(query, part).fetchall()
                for path, *key, sha in rows:
                    if tuple(key) == wanted[path]:
                        found[path] = sha
        return [found.get(str(p)) for p, _ in items]

    def store(self, path: Path, st: os.stat_result, sha256: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", (str(path), *self._key(st), sha256)
            )

    def hash(self, path: Path, st: os.stat_result | None = None) -> str:
        st = st or path.stat()
        cached = self.lookup(path, st)
        if cached:
            return cached
        digest = sha256_file(path)
        self.store(path, st, digest)
        return digest

    def close(self) -> None:
        self._db.close()
