"""The SQLite results store: one ``monitor.sqlite`` per output folder (WAL mode).

It holds everything a rebuild needs and everything a person added: per-file status, recorder
metadata and per-segment scores (committed in one transaction per file, so an interrupted run loses
at most the files in flight), the reviewers' verdicts, the thresholds set with ``monitor report``,
and the history of runs. One output folder holds many cards: rows are keyed by
``(deployment, file)``, so two recorders that write the same file names never collide. Nothing is
deleted without an explicit request (``prune``): a file that vanished from a re-run card is only
marked missing. A lock file keeps a second run out of the folder.

Resume key: deployment, relative path, size, mtime and the model's hash; a file whose mtime changed
(a card copied to a NAS) but whose content fingerprint did not is the same file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from monitor.deployments import default_deployment
from monitor.errors import MonitorError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
STORE_NAME = "monitor.sqlite"
LOCK_NAME = "monitor.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    deployment TEXT NOT NULL, file TEXT NOT NULL,
    size INTEGER, mtime_ns INTEGER, model_hash TEXT,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    n_segments INTEGER NOT NULL DEFAULT 0,
    nonfinite INTEGER NOT NULL DEFAULT 0,
    done_at TEXT,
    input_dir TEXT NOT NULL DEFAULT '',
    missing_since TEXT,
    fingerprint TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment, file)
);
CREATE TABLE IF NOT EXISTS segments (
    deployment TEXT NOT NULL, file TEXT NOT NULL, segment INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL,
    scores BLOB NOT NULL,
    PRIMARY KEY (deployment, file, segment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reviews (
    deployment TEXT NOT NULL, file TEXT NOT NULL, label TEXT NOT NULL, start_ms INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL,
    verified TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment, file, label, start_ms)
);
CREATE TABLE IF NOT EXISTS review_dates (
    deployment TEXT NOT NULL, file TEXT NOT NULL, label TEXT NOT NULL,
    review_date TEXT NOT NULL, updated_at TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment, file, label)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL, ended TEXT, input_dir TEXT NOT NULL DEFAULT '',
    completed INTEGER NOT NULL DEFAULT 0, info TEXT NOT NULL DEFAULT '{}'
);
"""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    """A reviewer's verdict on one detection (``verified``: yes / no / unsure / '', free ``notes``)."""

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


class ResultsStore:
    """Per-output-folder SQLite store of file statuses, metadata, per-segment scores and reviews."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            old = self._old_schema()
            if old:
                self._migrate_v1()
            for stmt in _statements(_SCHEMA):
                self.db.execute(stmt)
        except sqlite3.OperationalError as exc:
            raise MonitorError(f"cannot open the results store {self.path} ({exc}); is the output folder "
                               "writable and not full?") from None
        except sqlite3.DatabaseError as exc:
            raise MonitorError(f"results store {self.path} is unreadable ({exc}); use a new --out") from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif int(version) != SCHEMA_VERSION:
            raise MonitorError(f"{self.path} was written by another monitor version (store schema {version}); "
                               "use a new --out or upgrade monitor")

    # -- schema migration ---------------------------------------------------------------------
    def _old_schema(self) -> bool:
        cols = [r[1] for r in self.db.execute("PRAGMA table_info(files)")]
        return bool(cols) and "deployment" not in cols

    def _migrate_v1(self) -> None:
        """Schema 1 (one card per folder, keyed by file) -> 2: every row gets its deployment by the
        rule of ``monitor.deployments``; nothing is dropped."""
        info = self.get_meta("run_info") or {}
        input_dir = str(info.get("input_dir") or "")
        card = Path(input_dir).name if input_dir else ""
        log.info("upgrading the results store %s to schema %d", self.path, SCHEMA_VERSION)
        with self.transaction():
            self.db.execute("ALTER TABLE files RENAME TO files_v1")
            self.db.execute("ALTER TABLE segments RENAME TO segments_v1")
            for stmt in _statements(_SCHEMA):
                self.db.execute(stmt)
            dep_of = {}
            for file, meta in self.db.execute("SELECT file, metadata FROM files_v1").fetchall():
                device = (json.loads(meta or "{}") or {}).get("device_id") or ""
                dep_of[file] = default_deployment(file, device, card)
            rows = self.db.execute("SELECT file, size, mtime_ns, model_hash, status, reason, metadata, n_segments, "
                                   "nonfinite, done_at FROM files_v1").fetchall()
            self.db.executemany("INSERT INTO files(deployment, file, size, mtime_ns, model_hash, status, reason, "
                                "metadata, n_segments, nonfinite, done_at, input_dir) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                [(dep_of[r[0]], *r, input_dir) for r in rows])
            for f, dep in dep_of.items():
                self.db.execute("INSERT INTO segments SELECT ?, file, segment, start_s, end_s, scores FROM segments_v1 "
                                "WHERE file=?", (dep, f))
            self.db.execute("DROP TABLE files_v1")
            self.db.execute("DROP TABLE segments_v1")
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                            (json.dumps(SCHEMA_VERSION),))

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def bind_model(self, model_hash: str, labels: Sequence[str], describe: str) -> None:
        """Tie the store to one model; a different model's results are never mixed in."""
        old = self.get_meta("model_hash")
        if old is not None and old != model_hash and self.count_files() > 0:
            raise MonitorError(
                f"{self.path.parent} holds results of another model ({self.get_meta('model')}); "
                "use a new --out for this model"
            )
        self.set_meta("model_hash", model_hash)
        self.set_meta("labels", list(labels))
        self.set_meta("model", describe)

    def user_thresholds(self) -> dict[str, float]:
        """Thresholds set with ``monitor report --threshold`` (they persist until new ones are given)."""
        return {k: float(v) for k, v in (self.get_meta("user_thresholds") or {}).items()}

    def set_user_thresholds(self, thresholds: dict[str, float]) -> None:
        self.set_meta("user_thresholds", {k: float(v) for k, v in thresholds.items()})

    # -- files --------------------------------------------------------------------------------
    def transaction(self):
        return _Transaction(self.db)

    def count_files(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def is_done(self, key: FileKey) -> bool:
        """True when ``key`` was finished (ok or skipped) by the same model with the same size/mtime."""
        row = self.db.execute(
            "SELECT size, mtime_ns, model_hash, status FROM files WHERE deployment=? AND file=?",
            (key.deployment, key.file)).fetchone()
        return row is not None and tuple(row[:3]) == (key.size, key.mtime_ns, key.model_hash) and row[3] != "failed"

    def same_file(self, key: FileKey) -> bool:
        """True when a finished file of this deployment and path has the same size and content fingerprint
        (only its mtime differs: a copy of the card); its mtime is then updated so the next run is quick."""
        if not key.fingerprint:
            return False
        row = self.db.execute(
            "SELECT size, model_hash, status, fingerprint FROM files WHERE deployment=? AND file=?",
            (key.deployment, key.file)).fetchone()
        if row is None or row[2] == "failed" or (row[0], row[1], row[3]) != (key.size, key.model_hash,
                                                                             key.fingerprint):
            return False
        self.db.execute("UPDATE files SET mtime_ns=? WHERE deployment=? AND file=?",
                        (key.mtime_ns, key.deployment, key.file))
        return True

    def changed(self, key: FileKey) -> bool:
        """True when the store holds analysed results for this deployment and path from a file with other
        contents (another card under the same name, or a file that changed on the card)."""
        row = self.db.execute(
            "SELECT size, mtime_ns, status, n_segments, fingerprint FROM files WHERE deployment=? AND file=?",
            (key.deployment, key.file)).fetchone()
        if row is None or row[2] != "ok" or row[3] == 0:
            return False
        if (row[0], row[1]) == (key.size, key.mtime_ns):
            return False
        return not (row[0] == key.size and row[4] and row[4] == key.fingerprint)

    def restore(self, key: FileKey) -> None:
        """A file marked missing is back on the card unchanged: it is present again."""
        self.db.execute("UPDATE files SET missing_since=NULL WHERE deployment=? AND file=?",
                        (key.deployment, key.file))

    def put_file(
        self,
        key: FileKey,
        status: str,
        reason: str,
        metadata: dict[str, Any],
        segments: Iterable[tuple[int, float, float, np.ndarray]] = (),
        nonfinite: int = 0,
        input_dir: str = "",
    ) -> None:
        """Replace everything about one file in a single transaction."""
        dep = key.deployment
        seg_rows = [(dep, key.file, int(i), float(a), float(b), np.asarray(s, dtype=np.float32).tobytes())
                    for i, a, b, s in segments]
        with self.transaction():
            self.db.execute("DELETE FROM segments WHERE deployment=? AND file=?", (dep, key.file))
            self.db.execute(
                "INSERT OR REPLACE INTO files(deployment, file, size, mtime_ns, model_hash, status, reason, metadata, "
                "n_segments, nonfinite, done_at, input_dir, missing_since, fingerprint) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL,?)",
                (dep, key.file, key.size, key.mtime_ns, key.model_hash, status, reason,
                 json.dumps(metadata, default=str), len(seg_rows), int(nonfinite), now_iso(), input_dir,
                 key.fingerprint),
            )
            self.db.executemany("INSERT INTO segments VALUES (?,?,?,?,?,?)", seg_rows)

    def mark_missing(self, deployments: Iterable[str], present: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Files of ``deployments`` that are not in ``present`` ({(deployment, file)}) are marked missing
        (their results are kept). Returns the newly missing ones."""
        deps = sorted(set(deployments))
        gone: list[tuple[str, str]] = []
        for dep in deps:
            for (f,) in self.db.execute("SELECT file FROM files WHERE deployment=? AND missing_since IS NULL",
                                        (dep,)).fetchall():
                if (dep, f) not in present:
                    gone.append((dep, f))
        if gone:
            when = now_iso()
            with self.transaction():
                self.db.executemany("UPDATE files SET missing_since=? WHERE deployment=? AND file=?",
                                    [(when, d, f) for d, f in gone])
        return gone

    def prune(self, deployments: Iterable[str] | None = None) -> int:
        """Delete the results of files marked missing (of ``deployments``, or all): ``--prune`` only."""
        where, args = "missing_since IS NOT NULL", []
        if deployments is not None:
            deps = sorted(set(deployments))
            where += f" AND deployment IN ({','.join('?' * len(deps))})"
            args = deps
        rows = self.db.execute(f"SELECT deployment, file FROM files WHERE {where}", args).fetchall()
        with self.transaction():
            for d, f in rows:
                self.db.execute("DELETE FROM segments WHERE deployment=? AND file=?", (d, f))
                self.db.execute("DELETE FROM files WHERE deployment=? AND file=?", (d, f))
        return len(rows)

    def clear_files(self, deployments: Iterable[str]) -> int:
        """Forget the results of every file of ``deployments`` (``--no-resume``: re-score them); reviews stay."""
        deps = sorted(set(deployments))
        with self.transaction():
            n = 0
            for d in deps:
                n += self.db.execute("DELETE FROM segments WHERE deployment=?", (d,)).rowcount or 0
                self.db.execute("DELETE FROM files WHERE deployment=?", (d,))
        return n

    # -- reviews ------------------------------------------------------------------------------
    def reviews(self) -> list[Review]:
        cur = self.db.execute("SELECT deployment, file, label, start_s, end_s, verified, notes, updated_at, source "
                              "FROM reviews ORDER BY deployment, file, label, start_ms")
        return [Review(*r) for r in cur]

    def put_reviews(self, reviews: Iterable[Review], source: str) -> int:
        """Upsert verdicts; one with neither a verdict nor notes deletes that review. Returns rows changed."""
        when, n = now_iso(), 0
        with self.transaction():
            for r in reviews:
                d, f, lab, ms = r.key
                if not r.verified and not r.notes:
                    n += self.db.execute("DELETE FROM reviews WHERE deployment=? AND file=? AND label=? AND start_ms=?",
                                         (d, f, lab, ms)).rowcount or 0
                    continue
                old = self.db.execute("SELECT verified, notes FROM reviews WHERE deployment=? AND file=? AND label=? "
                                      "AND start_ms=?", (d, f, lab, ms)).fetchone()
                if old is not None and tuple(old) == (r.verified, r.notes):
                    continue
                self.db.execute("INSERT OR REPLACE INTO reviews VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (d, f, lab, ms, float(r.start_s), float(r.end_s), r.verified, r.notes,
                                 r.updated_at or when, r.source or source))
                n += 1
        return n

    def review_dates(self) -> dict[tuple[str, str, str], str]:
        """The Summary sheet's Review Date per (deployment, file, label), as typed by a reviewer (ISO date)."""
        cur = self.db.execute("SELECT deployment, file, label, review_date FROM review_dates")
        return {(d, f, lab): v for d, f, lab, v in cur}

    def put_review_dates(self, dates: Iterable[tuple[str, str, str, str]], source: str) -> int:
        """Upsert (deployment, file, label, ISO date); an empty date deletes. Returns rows changed."""
        when, n = now_iso(), 0
        with self.transaction():
            for d, f, lab, v in dates:
                if not v:
                    n += self.db.execute("DELETE FROM review_dates WHERE deployment=? AND file=? AND label=?",
                                         (d, f, lab)).rowcount or 0
                    continue
                old = self.db.execute("SELECT review_date FROM review_dates WHERE deployment=? AND file=? AND "
                                      "label=?", (d, f, lab)).fetchone()
                if old is not None and old[0] == v:
                    continue
                self.db.execute("INSERT OR REPLACE INTO review_dates VALUES (?,?,?,?,?,?)", (d, f, lab, v, when, source))
                n += 1
        return n

    # -- runs ---------------------------------------------------------------------------------
    def begin_run(self, input_dir: str, info: dict[str, Any]) -> int:
        cur = self.db.execute("INSERT INTO runs(started, input_dir, completed, info) VALUES (?,?,0,?)",
                              (now_iso(), input_dir, json.dumps(info, default=str)))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, completed: bool, info: dict[str, Any]) -> None:
        self.db.execute("UPDATE runs SET ended=?, completed=?, info=? WHERE id=?",
                        (now_iso(), int(bool(completed)), json.dumps(info, default=str), run_id))

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, started, ended, input_dir, completed, info FROM runs ORDER BY id")
        return [{"id": i, "started": s, "ended": e, "input_dir": d, "completed": bool(c), "info": json.loads(x)}
                for i, s, e, d, c, x in cur]

    # -- reading ------------------------------------------------------------------------------
    def files(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT deployment, file, status, reason, metadata, n_segments, nonfinite, input_dir, missing_since, "
            "size, mtime_ns FROM files ORDER BY deployment, file")
        return [
            {"deployment": d, "file": f, "status": st, "reason": r, "metadata": json.loads(m), "segments": n,
             "nonfinite": nf, "input_dir": idir, "missing_since": miss, "size": size, "mtime_ns": mt}
            for d, f, st, r, m, n, nf, idir, miss, size, mt in cur
        ]

    def segments(self) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All segments ordered by (deployment, file, segment): deployments, files, index (n,), start_s, end_s,
        scores (n, labels)."""
        labels = self.get_meta("labels") or []
        cur = self.db.execute("SELECT deployment, file, segment, start_s, end_s, scores FROM segments "
                              "ORDER BY deployment, file, segment")
        deps, files, idx, s0, s1, sc = [], [], [], [], [], []
        for d, f, i, a, b, blob in cur:
            deps.append(d)
            files.append(f)
            idx.append(i)
            s0.append(a)
            s1.append(b)
            sc.append(np.frombuffer(blob, dtype=np.float32))
        scores = np.vstack(sc) if sc else np.zeros((0, len(labels)), np.float32)
        return deps, files, np.asarray(idx, np.int64), np.asarray(s0, float), np.asarray(s1, float), scores

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
