"""The store's plain parts: keys, the connection with its transactions and meta table, the folder lock."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError

STORE_NAME = "monitor.sqlite"
LOCK_NAME = "monitor.lock"


def now_iso() -> str:
    """UTC now, ISO 8601 with microseconds (decision times are compared: ``when``)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def when(text: str | None) -> datetime:
    """An ISO time from the store (any precision; naive = UTC) -> aware datetime; '' or None -> the epoch."""
    if not text:
        return datetime.fromtimestamp(0, timezone.utc)
    d = datetime.fromisoformat(text)
    return d if d.tzinfo is not None else d.replace(tzinfo=timezone.utc)


def start_ms(start_s: float) -> int:
    """A detection's start as whole milliseconds: the review key survives a spreadsheet's rounding."""
    return int(round(float(start_s) * 1000.0))


@dataclass(frozen=True)
class FileKey:
    """What decides whether a finished file can be skipped on resume."""

    deployment: str
    file: str
    size: int
    mtime_ns: int
    model_hash: str
    fingerprint: str = ""  # discover.fingerprint: size + the first and last 64 KiB


@dataclass(frozen=True)
class Review:
    """A reviewer's verdict on one detection (``verified``: yes / no / unsure / '', free ``notes``);
    ``updated_at``: when the reviewer decided (a workbook's save time, or when typed in a notebook)."""

    deployment: str
    file: str
    label: str
    start_s: float
    end_s: float
    verified: str = ""
    notes: str = ""
    updated_at: str = ""
    source: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.deployment, self.file, self.label, start_ms(self.start_s))


class DirLock:
    """An exclusive, non-blocking advisory lock on ``OUT_DIR/monitor.lock``; the file is removed on release
    (a crash leaves it behind, unlocked: the next run takes it over)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fh = None

    def acquire(self) -> "DirLock":
        import fcntl

        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise MonitorError(f"cannot write to the output folder {self.path.parent} ({exc.strerror}); "
                               "choose another --out") from None
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
            try:
                os.unlink(self.path)  # still holding the lock: nobody else can be inside
            except OSError:
                pass
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Db:
    """The connection, its transactions and the meta table (key -> JSON)."""

    db: sqlite3.Connection
    path: Path

    def transaction(self) -> "Transaction":
        return Transaction(self.db)

    def get_meta(self, key: str) -> Any:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:  # pragma: no cover
            pass


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; a full or read-only disk is a one-line ``MonitorError``."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as err:
                self.db.execute("ROLLBACK")
                raise MonitorError(f"could not write the results store: {err} (is the output disk full?)") from None
            return False
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in ("full", "disk", "i/o",
                                                                                              "readonly")):
            raise MonitorError(f"could not write the results store: {exc} (is the output disk full or "
                               "read-only?)") from None
        return False
