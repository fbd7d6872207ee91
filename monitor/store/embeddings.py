"""Segment embeddings (``monitor run --embeddings``): one row per file, beside its segments.

A file's embeddings are one float16 matrix ``(segments, width)`` in segment order (``vectors``) with the
segments' indices (``segments``, int32) and each vector's length (``norms``, float32: a search needs no pass over
the matrix to normalise it), tied to the backbone that made them (``backbone``: the bundle's
``backbone_sha256``) and to the bundle itself (``bundle``: its sha256, for provenance). They are written in the
file's own transaction (``FilesMixin.put_file``), so they are always exactly the stored segments' embeddings:
``--no-resume`` and a re-scored file replace them, ``--prune`` archives them with the file and
``--restore-pruned`` brings them back, ``--move`` re-files them.

One row per file, not per segment: a season of 1 M segments is a few thousand rows, read back in seconds
(``benchmarks/agile.py``: 1 M x 768 in 5 s on 2 idle cores, 16 s on busy ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import MonitorError
from monitor.store.base import Db

TABLES = """
CREATE TABLE IF NOT EXISTS embeddings (
    deployment TEXT NOT NULL, file TEXT NOT NULL,
    backbone TEXT NOT NULL, bundle TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL, n INTEGER NOT NULL,
    segments BLOB NOT NULL, vectors BLOB NOT NULL, norms BLOB NOT NULL,
    PRIMARY KEY (deployment, file)
);
CREATE TABLE IF NOT EXISTS pruned_embeddings (
    deployment TEXT NOT NULL, file TEXT NOT NULL,
    backbone TEXT NOT NULL, bundle TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL, n INTEGER NOT NULL,
    segments BLOB NOT NULL, vectors BLOB NOT NULL, norms BLOB NOT NULL,
    pruned_at TEXT NOT NULL
)
"""
COLUMNS = "deployment, file, backbone, bundle, width, n, segments, vectors, norms"


@dataclass
class Embeddings:
    """Stored embeddings in (deployment, file, segment) order: ``vectors`` (n, width) float16, and per row its
    ``deployment``, ``file``, ``segment`` index, ``start_s``/``end_s``, ``norms`` (each vector's length, float32);
    ``backbone``: the one backbone they share."""

    deployment: np.ndarray
    file: np.ndarray
    segment: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    vectors: np.ndarray
    backbone: str = ""
    norms: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


class EmbeddingsMixin(Db):
    """What the store keeps of ``--embeddings``; the per-file writes are ``FilesMixin``'s."""

    embeddings_backbone: str | None = None  # set by a run that keeps embeddings: files without them are not done

    def _put_embeddings(self, deployment: str, file: str, index: np.ndarray, vectors: np.ndarray | None,
                        backbone: str, bundle: str) -> None:
        """Inside the caller's transaction: replace a file's embeddings (none when ``vectors`` is None)."""
        self.db.execute("DELETE FROM embeddings WHERE deployment=? AND file=?", (deployment, file))
        if vectors is None or not len(vectors):
            return
        v = np.ascontiguousarray(vectors, dtype=np.float16)
        idx = np.ascontiguousarray(index, dtype=np.int32)
        norms = np.sqrt((v.astype(np.float32) ** 2).sum(axis=1)).astype(np.float32)
        self.db.execute(f"INSERT INTO embeddings({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                        (deployment, file, backbone, bundle, int(v.shape[1]), int(v.shape[0]), idx.tobytes(),
                         v.tobytes(), norms.tobytes()))

    def has_embeddings(self, deployment: str, file: str, backbone: str) -> bool:
        row = self.db.execute("SELECT backbone, n FROM embeddings WHERE deployment=? AND file=?",
                              (deployment, file)).fetchone()
        return row is not None and row[0] == backbone

    def embedding_backbones(self) -> dict[str, int]:
        """backbone -> files whose embeddings it made."""
        return {b: int(n) for b, n in self.db.execute("SELECT backbone, COUNT(*) FROM embeddings GROUP BY backbone")}

    def count_embeddings(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(n), 0) FROM embeddings").fetchone()[0])

    def files_without_embeddings(self, backbone: str) -> list[tuple[str, str]]:
        """Analysed files (ok, with segments) that have no embeddings of ``backbone``."""
        return [tuple(r) for r in self.db.execute(
            "SELECT f.deployment, f.file FROM files f LEFT JOIN embeddings e ON e.deployment=f.deployment AND "
            "e.file=f.file AND e.backbone=? WHERE f.status='ok' AND f.n_segments>0 AND e.file IS NULL "
            "ORDER BY f.deployment, f.file", (backbone,))]

    def load_embeddings(self, backbone: str | None = None) -> Embeddings:
        """Every stored embedding (of ``backbone``; default: the only one there is) with its segment's times."""
        backbones = self.embedding_backbones()
        if backbone is None:
            backbone = next(iter(backbones), "")
        rows = self.db.execute("SELECT deployment, file, n, width, segments, vectors, norms FROM embeddings WHERE "
                               "backbone=? ORDER BY deployment, file", (backbone,)).fetchall()
        total = sum(r[2] for r in rows)
        width = rows[0][3] if rows else 0
        vec = np.empty((total, width), np.float16)
        norms = np.empty(total, np.float32)
        seg = np.empty(total, np.int64)
        dep = np.empty(total, object)
        fil = np.empty(total, object)
        k = 0
        for d, f, n, w, idx, blob, nb in rows:
            vec[k:k + n] = np.frombuffer(blob, np.float16).reshape(n, w)
            norms[k:k + n] = np.frombuffer(nb, np.float32)
            seg[k:k + n] = np.frombuffer(idx, np.int32)
            dep[k:k + n] = d
            fil[k:k + n] = f
            k += n
        # a file's embeddings are its segments in segment order (written together): one ordered query aligns them
        t = np.array(self.db.execute("SELECT s.segment, s.start_s, s.end_s FROM segments s JOIN embeddings e ON "
                                     "e.deployment=s.deployment AND e.file=s.file WHERE e.backbone=? ORDER BY "
                                     "s.deployment, s.file, s.segment", (backbone,)).fetchall(),
                     dtype=np.float64).reshape(-1, 3)
        if len(t) != total or not np.array_equal(t[:, 0].astype(np.int64), seg):  # never expected: say so
            raise MonitorError(f"{self.path}: stored embeddings and segments disagree; run the cards again with "
                               "--embeddings --no-resume")
        return Embeddings(dep, fil, seg, t[:, 1], t[:, 2], vec, backbone, norms)

    def embedding_files(self, backbone: str) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.db.execute("SELECT deployment, file FROM embeddings WHERE backbone=? "
                                                  "ORDER BY deployment, file", (backbone,))]

    def file_embeddings(self, deployment: str, file: str) -> tuple[np.ndarray, np.ndarray]:
        """(segment indices, float16 vectors) of one file."""
        n, w, idx, blob = self.db.execute("SELECT n, width, segments, vectors FROM embeddings WHERE deployment=? AND "
                                          "file=?", (deployment, file)).fetchone()
        return np.frombuffer(idx, np.int32).astype(np.int64), np.frombuffer(blob, np.float16).reshape(n, w)

    def put_scores(self, deployment: str, file: str, index: np.ndarray, scores: np.ndarray) -> None:
        """Inside the caller's transaction: new scores for a file's stored segments (``--rescore``)."""
        s = np.ascontiguousarray(scores, dtype=np.float32)
        self.db.executemany("UPDATE segments SET scores=? WHERE deployment=? AND file=? AND segment=?",
                            [(s[k].tobytes(), deployment, file, int(i)) for k, i in enumerate(index)])

    # -- kept consistent with the file rows (called inside FilesMixin's transactions) -------------------
    def _archive_embeddings(self, deployment: str, file: str, stamp: str) -> None:
        self.db.execute(f"INSERT INTO pruned_embeddings({COLUMNS}, pruned_at) SELECT {COLUMNS}, ? FROM embeddings "
                        "WHERE deployment=? AND file=?", (stamp, deployment, file))
        self.db.execute("DELETE FROM embeddings WHERE deployment=? AND file=?", (deployment, file))

    def _restore_embeddings(self, deployment: str, file: str, stamp: str) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO embeddings({COLUMNS}) SELECT {COLUMNS} FROM pruned_embeddings "
                        "WHERE deployment=? AND file=? AND pruned_at=?", (deployment, file, stamp))
        self.db.execute("DELETE FROM pruned_embeddings WHERE deployment=? AND file=? AND pruned_at=?",
                        (deployment, file, stamp))

    def _embeddings_needed(self, deployment: str, file: str, status: Any, n_segments: Any) -> bool:
        """A run keeping embeddings must redo an analysed file that has none of its backbone."""
        return bool(self.embeddings_backbone) and status == "ok" and bool(n_segments) and \
            not self.has_embeddings(deployment, file, str(self.embeddings_backbone))
