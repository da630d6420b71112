"""What batch runs remember between runs: which version of each document was fully processed, which bags
went to which store, and the lock that keeps two runs off one state directory.

Kept apart from the capture ledger (its own SQLite file beside it): the ledger is evidence of what was
captured; this is bookkeeping that only saves work. Losing a row here costs a re-check, never a capture.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    settings TEXT NOT NULL,
    run_id TEXT NOT NULL,
    processed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    bag TEXT NOT NULL,
    store TEXT NOT NULL,
    run_id TEXT NOT NULL,
    uploaded TEXT NOT NULL,
    PRIMARY KEY (bag, store)
);
"""


class RunLocked(Exception):
    """Another run holds the state directory; the message names its PID."""


@contextmanager
def run_lock(state_dir: Path) -> Iterator[Path]:
    """Hold `<state_dir>/run.lock` for the length of a run. The kernel drops the lock when its holder dies,
    so a killed run never leaves a stale lock behind; the file only tells who holds it."""
    make_private_dir(state_dir)
    path = state_dir / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise RunLocked(f"{path}: another run (PID {holder}) is using this state directory; not starting") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """State holds the ledger and locks: readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


@dataclass(frozen=True)
class DocumentState:
    source: str
    sha256: str
    settings: str
    run_id: str
    processed: str


class RunState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def document(self, source: str) -> DocumentState | None:
        row = self._db.execute(
            "SELECT source, sha256, settings, run_id, processed FROM documents WHERE source = ?", (source,)
        ).fetchone()
        return DocumentState(*row) if row else None

    def mark_processed(self, source: str, sha256: str, settings: str, run_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO documents (source, sha256, settings, run_id, processed) VALUES (?, ?, ?, ?, ?)",
            (source, sha256, settings, run_id, _now()),
        )

    def uploaded(self, store: str) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT bag FROM uploads WHERE store = ?", (store,))}

    def stores_of(self, bag: str) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT store FROM uploads WHERE bag = ? ORDER BY store", (bag,))]

    def mark_uploaded(self, bag: str, store: str, run_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO uploads (bag, store, run_id, uploaded) VALUES (?, ?, ?, ?)",
            (bag, store, run_id, _now()),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()
