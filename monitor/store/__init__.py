"""The SQLite results store: one ``monitor.sqlite`` per output folder (WAL mode).

It holds everything a rebuild needs and everything a person added: per-file status, recorder
metadata and per-segment scores (committed in one transaction per file, so an interrupted run loses
at most the files in flight), the cards the files came from, the reviewers' verdicts with the time they
were decided, what each workbook was last known to hold, the thresholds set with ``monitor report``,
and the history of runs. One output folder holds many cards of many recorders: rows are keyed by
``(deployment, file)``, and each file belongs to its card. Nothing is deleted without an explicit
request: a file that vanished from a re-scanned card is only marked missing, and ``--prune`` moves
results into an archive that ``monitor report --restore-pruned`` brings back.

Resume key: deployment, relative path, size, mtime and the model's hash; a file whose mtime changed
(a card copied to a NAS) but whose content fingerprint did not is the same file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from monitor.errors import MonitorError
from monitor.store.base import LOCK_NAME, STORE_NAME, DirLock, FileKey, Review, now_iso, start_ms, when
from monitor.store.cards import Card, CardsMixin
from monitor.store.files import FilesMixin
from monitor.store.reviews import ReviewsMixin
from monitor.store.schema import SCHEMA_VERSION, create, upgrade

__all__ = ["LOCK_NAME", "SCHEMA_VERSION", "STORE_NAME", "Card", "DirLock", "FileKey", "ResultsStore", "Review",
           "now_iso", "start_ms", "when"]


class ResultsStore(FilesMixin, ReviewsMixin, CardsMixin):
    """Per-output-folder SQLite store of cards, file statuses, metadata, per-segment scores and reviews."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.get_meta("schema_version")
            if version is not None and int(version) > SCHEMA_VERSION:
                raise MonitorError(f"{self.path} was written by a newer monitor (store schema {version}); "
                                   "upgrade monitor or use a new --out")
            with self.transaction():
                upgrade(self.db, self.path)
                create(self.db)
        except sqlite3.OperationalError as exc:
            raise MonitorError(f"cannot open the results store {self.path} ({exc}); is the output folder "
                               "writable and not full?") from None
        except sqlite3.DatabaseError as exc:
            raise MonitorError(f"results store {self.path} is unreadable ({exc}); use a new --out") from None
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", SCHEMA_VERSION)

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

    def rebind_model(self, model_hash: str, labels: Sequence[str], describe: str) -> None:
        """Tie the store to another model whose scores replaced every stored file's (``monitor report
        --rescore``): each file is then that model's, so a later run with it resumes instead of redoing them."""
        self.db.execute("UPDATE files SET model_hash=?", (model_hash,))
        self.set_meta("model_hash", model_hash)
        self.set_meta("labels", list(labels))
        self.set_meta("model", describe)

    def user_thresholds(self) -> dict[str, float]:
        """Thresholds set with ``monitor report --threshold`` (they persist until new ones are given)."""
        return {k: float(v) for k, v in (self.get_meta("user_thresholds") or {}).items()}

    def set_user_thresholds(self, thresholds: dict[str, float]) -> None:
        self.set_meta("user_thresholds", {k: float(v) for k, v in thresholds.items()})

    # -- runs ---------------------------------------------------------------------------------
    def begin_run(self, input_dir: str, info: dict[str, Any], card: int | None = None) -> int:
        cur = self.db.execute("INSERT INTO runs(started, input_dir, completed, info, card) VALUES (?,?,0,?,?)",
                              (now_iso(), input_dir, json.dumps(info, default=str), card))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, completed: bool, info: dict[str, Any], card: int | None = None) -> None:
        self.db.execute("UPDATE runs SET ended=?, completed=?, info=?, card=COALESCE(?, card) WHERE id=?",
                        (now_iso(), int(bool(completed)), json.dumps(info, default=str), card, run_id))

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, started, ended, input_dir, completed, info, card FROM runs ORDER BY id")
        return [{"id": i, "started": s, "ended": e, "input_dir": d, "completed": bool(c), "info": json.loads(x),
                 "card": k} for i, s, e, d, c, x, k in cur]
