"""Reviewers' verdicts and review dates, and what each workbook was last known to hold.

A verdict carries the time it was decided (``updated_at``: the save time of the workbook it was typed
into, or when a notebook recorded it). ``put_reviews(..., newer_only=True)`` applies one only where it is
at least as new as the stored decision, so re-reading an old workbook never undoes a newer verdict.
"""

from __future__ import annotations

from typing import Iterable

from monitor.store.base import Db, Review, now_iso, start_ms, when

DateRow = tuple[str, str, str, str]  # deployment, file, label, ISO date ('' clears)
ReviewKey = tuple[str, str, str, int]


class ReviewsMixin(Db):
    def reviews(self) -> list[Review]:
        cur = self.db.execute("SELECT deployment, file, label, start_s, end_s, verified, notes, updated_at, source "
                              "FROM reviews ORDER BY deployment, file, label, start_ms")
        return [Review(*r) for r in cur]

    def review(self, key: ReviewKey) -> Review | None:
        row = self.db.execute("SELECT deployment, file, label, start_s, end_s, verified, notes, updated_at, source "
                              "FROM reviews WHERE deployment=? AND file=? AND label=? AND start_ms=?", key).fetchone()
        return None if row is None else Review(*row)

    def put_reviews(self, reviews: Iterable[Review], source: str, newer_only: bool = False) -> int:
        """Upsert verdicts; one with neither a verdict nor notes deletes that review. ``updated_at`` defaults to
        now. ``newer_only``: a review older than the stored decision is left out. Returns rows changed."""
        stamp, n = now_iso(), 0
        with self.transaction():
            for r in reviews:
                d, f, lab, ms = r.key
                old = self.db.execute("SELECT verified, notes, updated_at FROM reviews WHERE deployment=? AND "
                                      "file=? AND label=? AND start_ms=?", (d, f, lab, ms)).fetchone()
                at = r.updated_at or stamp
                if old is not None and newer_only and when(at) < when(old[2]):
                    continue
                if not r.verified and not r.notes:
                    n += self.db.execute("DELETE FROM reviews WHERE deployment=? AND file=? AND label=? AND start_ms=?",
                                         (d, f, lab, ms)).rowcount or 0
                    continue
                if old is not None and tuple(old[:2]) == (r.verified, r.notes):
                    continue
                self.db.execute("INSERT OR REPLACE INTO reviews VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (d, f, lab, ms, float(r.start_s), float(r.end_s), r.verified, r.notes, at,
                                 r.source or source))
                n += 1
        return n

    def review_dates(self) -> dict[tuple[str, str, str], str]:
        """The Summary sheet's Review Date per (deployment, file, label), as typed by a reviewer (ISO date)."""
        cur = self.db.execute("SELECT deployment, file, label, review_date FROM review_dates")
        return {(d, f, lab): v for d, f, lab, v in cur}

    def review_date_times(self) -> dict[tuple[str, str, str], str]:
        """When each stored Review Date was decided."""
        cur = self.db.execute("SELECT deployment, file, label, updated_at FROM review_dates")
        return {(d, f, lab): t for d, f, lab, t in cur}

    def put_review_dates(self, dates: Iterable[DateRow], source: str, at: str = "", newer_only: bool = False) -> int:
        """Upsert (deployment, file, label, ISO date) decided ``at`` (default now); an empty date deletes.
        ``newer_only``: dates older than the stored decision are left out. Returns rows changed."""
        at, n = at or now_iso(), 0
        with self.transaction():
            for d, f, lab, v in dates:
                old = self.db.execute("SELECT review_date, updated_at FROM review_dates WHERE deployment=? AND "
                                      "file=? AND label=?", (d, f, lab)).fetchone()
                if old is not None and newer_only and when(at) < when(old[1]):
                    continue
                if not v:
                    n += self.db.execute("DELETE FROM review_dates WHERE deployment=? AND file=? AND label=?",
                                         (d, f, lab)).rowcount or 0
                    continue
                if old is not None and old[0] == v:
                    continue
                self.db.execute("INSERT OR REPLACE INTO review_dates VALUES (?,?,?,?,?,?)", (d, f, lab, v, at, source))
                n += 1
        return n

    # -- what each workbook holds -------------------------------------------------------------------------
    def workbook_reviews(self, workbook: str) -> dict[ReviewKey, tuple[str, str]]:
        """(verified, notes) per review key, as ``workbook`` was last written or read (rows not listed: empty)."""
        cur = self.db.execute("SELECT deployment, file, label, start_ms, verified, notes FROM workbook_reviews "
                              "WHERE workbook=?", (workbook,))
        return {(d, f, lab, ms): (v, n) for d, f, lab, ms, v, n in cur}

    def workbook_dates(self, workbook: str) -> dict[tuple[str, str, str], str]:
        cur = self.db.execute("SELECT deployment, file, label, review_date FROM workbook_dates WHERE workbook=?",
                              (workbook,))
        return {(d, f, lab): v for d, f, lab, v in cur}

    def set_workbook_contents(self, workbook: str, reviews: Iterable[Review], dates: Iterable[DateRow]) -> None:
        """Remember what ``workbook`` now holds (its non-empty verdicts, notes and review dates)."""
        with self.transaction():
            self.db.execute("DELETE FROM workbook_reviews WHERE workbook=?", (workbook,))
            self.db.execute("DELETE FROM workbook_dates WHERE workbook=?", (workbook,))
            self.db.executemany("INSERT OR REPLACE INTO workbook_reviews VALUES (?,?,?,?,?,?,?)",
                                [(workbook, r.deployment, r.file, r.label, start_ms(r.start_s), r.verified, r.notes)
                                 for r in reviews if r.verified or r.notes])
            self.db.executemany("INSERT OR REPLACE INTO workbook_dates VALUES (?,?,?,?,?)",
                                [(workbook, d, f, lab, v) for d, f, lab, v in dates if v])

    def forget_workbook(self, workbook: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM workbook_reviews WHERE workbook=?", (workbook,))
            self.db.execute("DELETE FROM workbook_dates WHERE workbook=?", (workbook,))
