"""Files and their segments: resume decisions, per-file transactions, missing files, the ``--prune`` archive,
moves between deployments."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np

from monitor.store.base import FileKey, now_iso
from monitor.store.embeddings import EmbeddingsMixin
from monitor.store.schema import FILE_COLUMNS, SEGMENT_COLUMNS


class FilesMixin(EmbeddingsMixin):
    """Per-file results. Rows are keyed by (deployment, file); every file belongs to a card (``cards``)."""

    def count_files(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def file_row(self, deployment: str, file: str) -> dict[str, Any] | None:
        """``size, mtime_ns, status, n_segments, fingerprint, card, missing_since`` of a stored file, or None."""
        row = self.db.execute("SELECT size, mtime_ns, status, n_segments, fingerprint, card, missing_since FROM files "
                              "WHERE deployment=? AND file=?", (deployment, file)).fetchone()
        keys = ("size", "mtime_ns", "status", "n_segments", "fingerprint", "card", "missing_since")
        return None if row is None else dict(zip(keys, row))

    def deployments_of(self, file: str) -> list[tuple[str, dict[str, Any]]]:
        """Every stored file with this path on its card, as ``(deployment, file_row)``."""
        out = []
        for (dep,) in self.db.execute("SELECT deployment FROM files WHERE file=? ORDER BY deployment", (file,)):
            out.append((dep, self.file_row(dep, file)))
        return out

    def is_done(self, key: FileKey) -> bool:
        """True when ``key`` was finished (ok or skipped) by the same model with the same size/mtime."""
        row = self.db.execute(
            "SELECT size, mtime_ns, model_hash, status, n_segments FROM files WHERE deployment=? AND file=?",
            (key.deployment, key.file)).fetchone()
        return row is not None and tuple(row[:3]) == (key.size, key.mtime_ns, key.model_hash) and row[3] != "failed" \
            and not self._embeddings_needed(key.deployment, key.file, row[3], row[4])

    def same_file(self, key: FileKey) -> bool:
        """True when a finished file of this deployment and path has the same size and content fingerprint
        (only its mtime differs: a copy of the card); its mtime is then updated so the next run is quick."""
        if not key.fingerprint:
            return False
        row = self.db.execute(
            "SELECT size, model_hash, status, fingerprint, n_segments FROM files WHERE deployment=? AND file=?",
            (key.deployment, key.file)).fetchone()
        if row is None or row[2] == "failed" or (row[0], row[1], row[3]) != (key.size, key.model_hash,
                                                                             key.fingerprint):
            return False
        if self._embeddings_needed(key.deployment, key.file, row[2], row[4]):
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

    def restore(self, key: FileKey, card: int | None = None) -> None:
        """A file marked missing is back on the card unchanged: it is present again (of ``card`` if it had none)."""
        self.db.execute("UPDATE files SET missing_since=NULL, card=COALESCE(card, ?) WHERE deployment=? AND file=?",
                        (card, key.deployment, key.file))

    def put_file(self, key: FileKey, status: str, reason: str, metadata: dict[str, Any],
                 segments: Iterable[tuple[int, float, float, np.ndarray]] = (), nonfinite: int = 0,
                 input_dir: str = "", card: int | None = None, embeddings: np.ndarray | None = None,
                 backbone: str = "", bundle: str = "", scored_by: Sequence[str] = ()) -> None:
        """Replace everything about one file in a single transaction (``embeddings``: its segments' float16
        embeddings in segment order, of ``backbone``, made by ``bundle``; ``scored_by``: per segment, '' (the
        run's model) or the name of the screen that alone scored it; empty: every segment by the run's model)."""
        dep = key.deployment
        seg_rows = [(dep, key.file, int(i), float(a), float(b), np.asarray(s, dtype=np.float32).tobytes())
                    for i, a, b, s in segments]
        by = list(scored_by) or [""] * len(seg_rows)
        if len(by) != len(seg_rows):
            raise ValueError(f"scored_by has {len(by)} entries for {len(seg_rows)} segments")
        with self.transaction():
            self.db.execute("DELETE FROM segments WHERE deployment=? AND file=?", (dep, key.file))
            self.db.execute(
                f"INSERT OR REPLACE INTO files({FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL,?,?)",
                (dep, key.file, key.size, key.mtime_ns, key.model_hash, status, reason,
                 json.dumps(metadata, default=str), len(seg_rows), int(nonfinite), now_iso(), input_dir,
                 key.fingerprint, card),
            )
            self.db.executemany(f"INSERT INTO segments({SEGMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                                [(*r, str(b)) for r, b in zip(seg_rows, by)])
            self._put_embeddings(dep, key.file, np.array([r[2] for r in seg_rows], np.int64), embeddings, backbone,
                                 bundle)

    def mark_missing(self, card: int, present: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Files of ``card`` that are not in ``present`` ({(deployment, file)}) are marked missing (their results
        are kept). Other cards' files are never touched. Returns the newly missing ones."""
        gone = [(d, f) for d, f in self.db.execute(
            "SELECT deployment, file FROM files WHERE card=? AND missing_since IS NULL ORDER BY deployment, file",
            (card,)).fetchall() if (d, f) not in present]
        if gone:
            stamp = now_iso()
            with self.transaction():
                self.db.executemany("UPDATE files SET missing_since=? WHERE deployment=? AND file=?",
                                    [(stamp, d, f) for d, f in gone])
        return gone

    def missing(self, card: int) -> list[tuple[str, str]]:
        """Files of ``card`` marked missing, sorted."""
        return [tuple(r) for r in self.db.execute(
            "SELECT deployment, file FROM files WHERE card=? AND missing_since IS NOT NULL ORDER BY deployment, file",
            (card,)).fetchall()]

    def archive(self, files: Iterable[tuple[str, str]], why: str) -> int:
        """Move files' results (the file row and its segments) into the prune archive, in one transaction.
        ``restore_pruned`` puts them back. Returns the files moved."""
        files = list(files)
        stamp = now_iso()
        with self.transaction():
            for d, f in files:
                self.db.execute(f"INSERT INTO pruned_files({FILE_COLUMNS}, pruned_at, why) SELECT {FILE_COLUMNS}, ?, ? "
                                "FROM files WHERE deployment=? AND file=?", (stamp, why, d, f))
                self.db.execute(f"INSERT INTO pruned_segments({SEGMENT_COLUMNS}, pruned_at) SELECT {SEGMENT_COLUMNS}, "
                                "? FROM segments WHERE deployment=? AND file=?", (stamp, d, f))
                self.db.execute("DELETE FROM segments WHERE deployment=? AND file=?", (d, f))
                self.db.execute("DELETE FROM files WHERE deployment=? AND file=?", (d, f))
                self._archive_embeddings(d, f, stamp)
        return len(files)

    def pruned(self) -> list[dict[str, Any]]:
        """The archive: ``deployment, file, pruned_at, why`` per archived file version, oldest first."""
        cur = self.db.execute("SELECT deployment, file, pruned_at, why FROM pruned_files ORDER BY pruned_at, "
                              "deployment, file")
        return [dict(zip(("deployment", "file", "pruned_at", "why"), r)) for r in cur]

    def restore_pruned(self) -> list[tuple[str, str]]:
        """Put archived results back where no file of that deployment and path is stored now (the latest archived
        version of each); they are restored as missing. Returns the files restored."""
        rows = self.db.execute("SELECT deployment, file, MAX(pruned_at) FROM pruned_files GROUP BY deployment, file "
                               "ORDER BY deployment, file").fetchall()
        back = []
        with self.transaction():
            for d, f, at in rows:
                if self.db.execute("SELECT 1 FROM files WHERE deployment=? AND file=?", (d, f)).fetchone():
                    continue
                self.db.execute(f"INSERT INTO files({FILE_COLUMNS}) SELECT {FILE_COLUMNS} FROM pruned_files "
                                "WHERE deployment=? AND file=? AND pruned_at=?", (d, f, at))
                self.db.execute("UPDATE files SET missing_since=COALESCE(missing_since, ?) WHERE deployment=? AND "
                                "file=?", (at, d, f))
                self.db.execute(f"INSERT INTO segments({SEGMENT_COLUMNS}) SELECT {SEGMENT_COLUMNS} FROM "
                                "pruned_segments WHERE deployment=? AND file=? AND pruned_at=?", (d, f, at))
                self.db.execute("DELETE FROM pruned_segments WHERE deployment=? AND file=? AND pruned_at=?", (d, f, at))
                self._restore_embeddings(d, f, at)
                self.db.execute("DELETE FROM pruned_files WHERE deployment=? AND file=? AND pruned_at=?", (d, f, at))
                back.append((d, f))
        return back

    def clear_card(self, card: int) -> int:
        """Forget the results of every file of ``card`` (``--no-resume``: re-score them); reviews and other
        cards' files stay. Returns the files forgotten."""
        files = self.db.execute("SELECT deployment, file FROM files WHERE card=?", (card,)).fetchall()
        with self.transaction():
            for d, f in files:
                self.db.execute("DELETE FROM segments WHERE deployment=? AND file=?", (d, f))
                self.db.execute("DELETE FROM files WHERE deployment=? AND file=?", (d, f))
                self.db.execute("DELETE FROM embeddings WHERE deployment=? AND file=?", (d, f))
        return len(files)

    def move_files(self, moves: Iterable[tuple[str, str, str]]) -> int:
        """Re-file ``(from deployment, file, to deployment)``: results, verdicts, review dates and what the
        workbooks were known to hold move together (the move is recorded). Returns files moved."""
        moves = list(moves)
        stamp = now_iso()
        with self.transaction():
            for src, f, dst in moves:
                for table in ("files", "segments", "embeddings", "reviews", "review_dates", "workbook_reviews",
                              "workbook_dates"):
                    self.db.execute(f"UPDATE OR REPLACE {table} SET deployment=? WHERE deployment=? AND file=?",
                                    (dst, src, f))
                self.db.execute("INSERT INTO moves VALUES (?,?,?,?)", (src, f, dst, stamp))
        return len(moves)

    def moved(self) -> dict[tuple[str, str], str]:
        """(old deployment, file) -> the deployment it was moved to (the latest move)."""
        return {(a, f): b for a, f, b in self.db.execute(
            "SELECT deployment_from, file, deployment_to FROM moves ORDER BY moved_at")}

    def files(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT deployment, file, status, reason, metadata, n_segments, nonfinite, input_dir, missing_since, "
            "size, mtime_ns, card FROM files ORDER BY deployment, file")
        return [
            {"deployment": d, "file": f, "status": st, "reason": r, "metadata": json.loads(m), "segments": n,
             "nonfinite": nf, "input_dir": idir, "missing_since": miss, "size": size, "mtime_ns": mt, "card": card}
            for d, f, st, r, m, n, nf, idir, miss, size, mt, card in cur
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

    def segment_scorers(self) -> list[str]:
        """Per segment, in ``segments()``'s order: '' (the run's model scored it) or the screen that alone did."""
        return [b for (b,) in self.db.execute("SELECT scored_by FROM segments ORDER BY deployment, file, segment")]
