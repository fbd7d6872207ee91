"""The SQLite results store: one ``monitor.sqlite`` per output folder (WAL mode).

Every file's status and segments are committed in one transaction when that file is done, so an
interrupted run loses at most the file in flight. A lock file keeps a second run out of the folder.
Resume key: relative path, size, mtime and the model's hash.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STORE_NAME = "monitor.sqlite"
LOCK_NAME = "monitor.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file TEXT PRIMARY KEY,
    size INTEGER, mtime_ns INTEGER, model_hash TEXT,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    n_segments INTEGER NOT NULL DEFAULT 0,
    nonfinite INTEGER NOT NULL DEFAULT 0,
    done_at TEXT
);
CREATE TABLE IF NOT EXISTS segments (
    file TEXT NOT NULL, segment INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL,
    scores BLOB NOT NULL,
    PRIMARY KEY (file, segment)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class FileKey:
    """What decides whether a finished file can be skipped on resume."""

    file: str
    size: int
    mtime_ns: int
    model_hash: str


class DirLock:
    """An exclusive, non-blocking advisory lock on ``OUT_DIR/monitor.lock`` (released on exit or crash)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self._fh = None

    def acquire(self) -> "DirLock":
        import fcntl

        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise MonitorError(
                f"{self.path.parent} is in use by another monitor run ({holder}); wait for it or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ResultsStore:
    """Per-output-folder SQLite store of file statuses, metadata and per-segment scores."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise MonitorError(f"results store {self.path} is unreadable ({exc}); use a new --out") from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif int(version) != SCHEMA_VERSION:
            raise MonitorError(f"{self.path} was written by another monitor version; use a new --out")

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def bind_model(self, model_hash: str, labels: Sequence[str], describe: str) -> None:
        """Tie the store to one model; a different model's results are never mixed in."""
        old = self.get_meta("model_hash")
        if old is not None and old != model_hash:
            raise MonitorError(
                f"{self.path.parent} holds results of another model ({self.get_meta('model')}); "
                "use a new --out, or --no-resume to start over"
            )
        self.set_meta("model_hash", model_hash)
        self.set_meta("labels", list(labels))
        self.set_meta("model", describe)

    def clear(self) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM segments")
            self.db.execute("DELETE FROM files")
            self.db.execute("DELETE FROM meta WHERE key IN ('model_hash', 'labels', 'model')")

    # -- files --------------------------------------------------------------------------------
    def transaction(self):
        return _Transaction(self.db)

    def is_done(self, key: FileKey) -> bool:
        """True when ``key`` was finished (ok or skipped) by the same model with the same size/mtime."""
        row = self.db.execute(
            "SELECT size, mtime_ns, model_hash, status FROM files WHERE file=?", (key.file,)
        ).fetchone()
        return row is not None and tuple(row[:3]) == (key.size, key.mtime_ns, key.model_hash) and row[3] != "failed"

    def put_file(
        self,
        key: FileKey,
        status: str,
        reason: str,
        metadata: dict[str, Any],
        segments: Iterable[tuple[int, float, float, np.ndarray]] = (),
        nonfinite: int = 0,
    ) -> None:
        """Replace everything about one file in a single transaction."""
        seg_rows = [(key.file, int(i), float(a), float(b), np.asarray(s, dtype=np.float32).tobytes())
                    for i, a, b, s in segments]
        from datetime import datetime, timezone

        with self.transaction():
            self.db.execute("DELETE FROM segments WHERE file=?", (key.file,))
            self.db.execute(
                "INSERT OR REPLACE INTO files(file, size, mtime_ns, model_hash, status, reason, metadata, "
                "n_segments, nonfinite, done_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (key.file, key.size, key.mtime_ns, key.model_hash, status, reason,
                 json.dumps(metadata, default=str), len(seg_rows), int(nonfinite),
                 datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
            self.db.executemany("INSERT INTO segments VALUES (?,?,?,?,?)", seg_rows)

    def forget_missing(self, present: set[str]) -> int:
        """Drop files no longer on the card (renamed/removed) so reports match the folder."""
        gone = [f for (f,) in self.db.execute("SELECT file FROM files") if f not in present]
        with self.transaction():
            for f in gone:
                self.db.execute("DELETE FROM segments WHERE file=?", (f,))
                self.db.execute("DELETE FROM files WHERE file=?", (f,))
        return len(gone)

    # -- reading ------------------------------------------------------------------------------
    def files(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT file, status, reason, metadata, n_segments, nonfinite FROM files ORDER BY file"
        )
        return [
            {"file": f, "status": st, "reason": r, "metadata": json.loads(m), "segments": n, "nonfinite": nf}
            for f, st, r, m, n, nf in cur
        ]

    def segments(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All segments ordered by (file, segment): files, index (n,), start_s, end_s, scores (n, labels)."""
        labels = self.get_meta("labels") or []
        cur = self.db.execute("SELECT file, segment, start_s, end_s, scores FROM segments ORDER BY file, segment")
        files, idx, s0, s1, sc = [], [], [], [], []
        for f, i, a, b, blob in cur:
            files.append(f)
            idx.append(i)
            s0.append(a)
            s1.append(b)
            sc.append(np.frombuffer(blob, dtype=np.float32))
        scores = np.vstack(sc) if sc else np.zeros((0, len(labels)), np.float32)
        return files, np.asarray(idx, np.int64), np.asarray(s0), np.asarray(s1), scores

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:  # pragma: no cover
            pass


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as err:
                self.db.execute("ROLLBACK")
                raise MonitorError(f"could not write the results store: {err} (is the output disk full?)") from None
        else:
            self.db.execute("ROLLBACK")
