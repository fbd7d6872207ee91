"""The store's tables and the upgrades from older schemas (nothing is ever dropped on the way).

Schema 5 (this one) adds ``segments.scored_by``: '' where the run's model scored a segment, else the name of
the screen (a distilled student, ``monitor run --screen``) that alone scored it; such rows are never
detections. Schema 4 added segment embeddings (``store.embeddings``: ``embeddings``, ``pruned_embeddings``).
Schema 3 added cards: every file belongs to the card (SD card) it was read from, so the next
card of a recorder adds to its deployment and only a re-scanned card can have missing files; an archive
of what ``--prune`` removed; what each workbook was last known to hold (so an older workbook never undoes
a newer verdict); the card-folder cells a reviewer edited; and files moved between deployments.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path, PurePosixPath

from monitor.deployments import default_deployment
from monitor.store.base import now_iso
from monitor.store.embeddings import TABLES as EMBEDDING_TABLES

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5

FILE_COLUMNS = ("deployment, file, size, mtime_ns, model_hash, status, reason, metadata, n_segments, nonfinite, "
                "done_at, input_dir, missing_since, fingerprint, card")

SEGMENT_COLUMNS = "deployment, file, segment, start_s, end_s, scores, scored_by"

_FILE_FIELDS = """  -- a file's row, in files and in the prune archive
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
    card INTEGER,
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
{files}    PRIMARY KEY (deployment, file)
);
CREATE TABLE IF NOT EXISTS segments (
    deployment TEXT NOT NULL, file TEXT NOT NULL, segment INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL,
    scores BLOB NOT NULL,
    scored_by TEXT NOT NULL DEFAULT '',
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
    completed INTEGER NOT NULL DEFAULT 0, info TEXT NOT NULL DEFAULT '{}',
    card INTEGER
);
CREATE TABLE IF NOT EXISTS cards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, input_dir TEXT NOT NULL DEFAULT '',
    folder TEXT NOT NULL DEFAULT '', folder_set_at TEXT NOT NULL DEFAULT '',
    first_scan TEXT NOT NULL, last_scan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pruned_files (
{files}    pruned_at TEXT NOT NULL, why TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pruned_segments (
    deployment TEXT NOT NULL, file TEXT NOT NULL, segment INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL, scores BLOB NOT NULL, pruned_at TEXT NOT NULL,
    scored_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS workbook_reviews (
    workbook TEXT NOT NULL, deployment TEXT NOT NULL, file TEXT NOT NULL, label TEXT NOT NULL,
    start_ms INTEGER NOT NULL, verified TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (workbook, deployment, file, label, start_ms)
);
CREATE TABLE IF NOT EXISTS workbook_dates (
    workbook TEXT NOT NULL, deployment TEXT NOT NULL, file TEXT NOT NULL, label TEXT NOT NULL,
    review_date TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (workbook, deployment, file, label)
);
CREATE INDEX IF NOT EXISTS files_by_name ON files(file);
CREATE INDEX IF NOT EXISTS files_by_card ON files(card);
CREATE TABLE IF NOT EXISTS moves (
    deployment_from TEXT NOT NULL, file TEXT NOT NULL, deployment_to TEXT NOT NULL, moved_at TEXT NOT NULL
);
""".replace("{files}", _FILE_FIELDS)


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def create(db: sqlite3.Connection) -> None:
    for stmt in statements(SCHEMA) + statements(EMBEDDING_TABLES):
        db.execute(stmt)


def upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Bring an older store to schema 5 in one transaction (called with the tables as they are; ``create`` then
    adds the tables that are new since: schema 4's embeddings)."""
    cols = columns(db, "files")
    if not cols:
        return  # a new store
    if "deployment" not in cols:
        log.info("upgrading the results store %s from schema 1", path)
        _v1_to_v2(db)
        cols = columns(db, "files")
    if "card" not in cols:
        log.info("upgrading the results store %s to schema 3 (cards)", path)
        _v2_to_v3(db)
    if not columns(db, "embeddings"):
        log.info("upgrading the results store %s to schema 4 (embeddings)", path)
    for table in ("segments", "pruned_segments"):
        if columns(db, table) and "scored_by" not in columns(db, table):
            if table == "segments":
                log.info("upgrading the results store %s to schema %d (which model scored each segment)", path,
                         SCHEMA_VERSION)
            db.execute(f"ALTER TABLE {table} ADD COLUMN scored_by TEXT NOT NULL DEFAULT ''")
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))


def _meta(db: sqlite3.Connection, key: str):
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Schema 1 (one card per folder, keyed by file) -> 2: every row gets its deployment by the rule of
    ``monitor.deployments``."""
    info = _meta(db, "run_info") or {}
    input_dir = str(info.get("input_dir") or "")
    card = Path(input_dir).name if input_dir else ""
    db.execute("ALTER TABLE files RENAME TO files_v1")
    db.execute("ALTER TABLE segments RENAME TO segments_v1")
    db.execute("""CREATE TABLE files (deployment TEXT NOT NULL, file TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
        model_hash TEXT, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}',
        n_segments INTEGER NOT NULL DEFAULT 0, nonfinite INTEGER NOT NULL DEFAULT 0, done_at TEXT,
        input_dir TEXT NOT NULL DEFAULT '', missing_since TEXT, fingerprint TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (deployment, file))""")
    db.execute("""CREATE TABLE segments (deployment TEXT NOT NULL, file TEXT NOT NULL, segment INTEGER NOT NULL,
        start_s REAL NOT NULL, end_s REAL NOT NULL, scores BLOB NOT NULL, PRIMARY KEY (deployment, file, segment))
        WITHOUT ROWID""")
    dep_of = {}
    for file, meta in db.execute("SELECT file, metadata FROM files_v1").fetchall():
        device = (json.loads(meta or "{}") or {}).get("device_id") or ""
        dep_of[file] = default_deployment(file, device, card)
    rows = db.execute("SELECT file, size, mtime_ns, model_hash, status, reason, metadata, n_segments, nonfinite, "
                      "done_at FROM files_v1").fetchall()
    db.executemany("INSERT INTO files(deployment, file, size, mtime_ns, model_hash, status, reason, metadata, "
                   "n_segments, nonfinite, done_at, input_dir) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   [(dep_of[r[0]], *r, input_dir) for r in rows])
    for f, dep in dep_of.items():
        db.execute("INSERT INTO segments SELECT ?, file, segment, start_s, end_s, scores FROM segments_v1 WHERE file=?",
                   (dep, f))
    db.execute("DROP TABLE files_v1")
    db.execute("DROP TABLE segments_v1")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Schema 2 -> 3: files get their card. Schema 2 did not record cards: the files read from one input
    folder become one card (two cards mounted at the same path share it; their later re-scans tell them
    apart by their own files)."""
    db.execute("ALTER TABLE files ADD COLUMN card INTEGER")
    if columns(db, "runs") and "card" not in columns(db, "runs"):
        db.execute("ALTER TABLE runs ADD COLUMN card INTEGER")
    create(db)
    when = now_iso()
    for (input_dir,) in db.execute("SELECT DISTINCT input_dir FROM files ORDER BY input_dir").fetchall():
        name = PurePosixPath(str(input_dir).rstrip("/")).name or "card"
        cur = db.execute("INSERT INTO cards(name, input_dir, first_scan, last_scan) VALUES (?,?,?,?)",
                         (name, input_dir, when, when))
        db.execute("UPDATE files SET card=? WHERE input_dir=?", (cur.lastrowid, input_dir))
