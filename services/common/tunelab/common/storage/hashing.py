"""sha256 of files, with a persistent cache so unchanged files are never read twice."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1024 * 1024
StrPath = str | Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as src:
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

    def lookup_many(self, items: Sequence[tuple[StrPath, os.stat_result]]) -> list[str | None]:
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

    def store_many(self, items: list[tuple[StrPath, os.stat_result, str]]) -> None:
        rows = [(str(p), *self._key(st), sha) for p, st, sha in items]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def hash_files(
        self,
        items: Sequence[tuple[StrPath, os.stat_result]],
        workers: int = 4,
        on_hashed: Callable[[StrPath], None] | None = None,
    ) -> list[str]:
        """sha256 of every file: cached ones without reading them, the rest in parallel."""
        digests = self.lookup_many(items)
        todo = [i for i, d in enumerate(digests) if d is None]

        def hash_one(i: int) -> None:
            digests[i] = sha256_file(items[i][0])
            if on_hashed:
                on_hashed(items[i][0])

        if todo:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(hash_one, todo))
            self.store_many([(items[i][0], items[i][1], str(digests[i])) for i in todo])
        return [str(d) for d in digests]

    def close(self) -> None:
        self._db.close()
