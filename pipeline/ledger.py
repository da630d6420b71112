"""The ledger: SQLite state of every capture attempt, so a run killed at any moment resumes.

A capture counts only once its files are complete (written under a temporary name, fsynced, renamed)
and its row is committed here, in that order. Files on disk that no committed row names are leftovers of
an interrupted capture: `sweep` removes them before a run, so nothing half-done is ever counted.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.records import Capture, capture_from_json, to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY,
    canonical TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    fetcher TEXT NOT NULL,
    outcome TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT NOT NULL,
    http_status INTEGER,
    error TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_canonical ON captures (canonical, fetcher, outcome);
CREATE TABLE IF NOT EXISTS files (
    capture_id INTEGER NOT NULL REFERENCES captures (id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_path ON files (path);
CREATE TABLE IF NOT EXISTS bag_files (
    path TEXT PRIMARY KEY,
    bag TEXT NOT NULL
);
"""


class Ledger:
    """One SQLite file (WAL mode, full sync) in the state directory; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # evidence: a committed row survives power loss
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, capture: Capture) -> int:
        """Commit one capture attempt and the files it produced, in one transaction."""
        return self.record_many([capture])[0]

    def record_many(self, captures: list[Capture]) -> list[int]:
        """Commit several capture attempts in one transaction (one disk sync for all of them)."""
        if not captures:
            return []
        rows = []
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                for capture in captures:
                    rows.append(self._insert(cursor, capture))
                cursor.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    cursor.execute("ROLLBACK")
                raise
        return rows

    def _insert(self, cursor: sqlite3.Cursor, capture: Capture) -> int:
        data = json.dumps(to_json(capture), ensure_ascii=False)
        cursor.execute(
            "INSERT INTO captures (canonical, url, kind, fetcher, outcome, started, ended, http_status, "
            "error, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                capture.canonical,
                capture.url,
                capture.kind,
                capture.fetcher,
                capture.outcome,
                capture.started,
                capture.ended,
                capture.http_status,
                capture.error,
                data,
            ),
        )
        row_id = int(cursor.lastrowid or 0)
        cursor.executemany(
            "INSERT INTO files (capture_id, path, sha256, size) VALUES (?, ?, ?, ?)",
            [(row_id, f.path, f.sha256, f.size) for f in capture.files],
        )
        return row_id

    def held(self, canonical: str, fetcher: str, recapture_after: float | None = None) -> Capture | None:
        """The newest successful capture of a target by a fetcher, unless it is older than the policy allows."""
        with self._lock:
            row = self._db.execute(
                "SELECT record, ended FROM captures WHERE canonical = ? AND fetcher = ? AND outcome = 'ok' "
                "ORDER BY id DESC LIMIT 1",
                (canonical, fetcher),
            ).fetchone()
        if row is None:
            return None
        if recapture_after is not None:
            ended = datetime.fromisoformat(row[1])
            if datetime.now(UTC) - ended > timedelta(seconds=recapture_after):
                return None
        return capture_from_json(json.loads(row[0]))

    def held_keys(self) -> set[tuple[str, str]]:
        """Every (canonical, fetcher) with a successful capture: one query, so a run asks `held` only for
        those instead of twice per target."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT canonical, fetcher FROM captures WHERE outcome = 'ok'").fetchall()
        return {(str(row[0]), str(row[1])) for row in rows}

    def attempts(self, canonical: str | None = None) -> list[Capture]:
        """Every recorded attempt, oldest first (for one target when `canonical` is given)."""
        query = "SELECT record FROM captures"
        args: tuple[str, ...] = ()
        if canonical is not None:
            query += " WHERE canonical = ?"
            args = (canonical,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [capture_from_json(json.loads(row[0])) for row in rows]

    def bags_holding(self, paths: list[str]) -> dict[str, str]:
        """Which bag already holds each of these captured files (absent: none yet)."""
        found: dict[str, str] = {}
        with self._lock:
            for path in paths:
                row = self._db.execute("SELECT bag FROM bag_files WHERE path = ?", (path,)).fetchone()
                if row is not None:
                    found[path] = row[0]
        return found

    def assign_bag(self, paths: list[str], bag: str) -> None:
        """Record that a published bag holds these captured files (stored bags are immutable)."""
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.executemany("INSERT INTO bag_files (path, bag) VALUES (?, ?)", [(p, bag) for p in paths])
                cursor.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    cursor.execute("ROLLBACK")
                raise

    def unassign_bags(self, bags: set[str]) -> None:
        """Forget assignments to bags that were never published (a crash between assigning and publishing)."""
        with self._lock:
            self._db.executemany("DELETE FROM bag_files WHERE bag = ?", [(b,) for b in sorted(bags)])

    def referenced_paths(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT path FROM files")}

    def sweep(self, out_dir: Path) -> list[str]:
        """Remove what an interrupted capture left under `out_dir`: temporary files and directories
        (`*.part`), and finished-looking files that no committed capture names. Returns what was removed."""
        removed: list[str] = []
        referenced = self.referenced_paths()
        referenced_dirs = {str(Path(p).parent) for p in referenced}
        for sub in ("warc", "media"):
            base = out_dir / sub
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                rel = entry.relative_to(out_dir).as_posix()
                unfinished = entry.name.endswith(".part")
                unreferenced = rel not in (referenced_dirs if entry.is_dir() else referenced)
                if unfinished or unreferenced:
                    _remove(entry)
                    removed.append(rel)
        return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
