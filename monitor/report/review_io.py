"""Reading a reviewer's work back out of ``report.xlsx`` before a new one replaces it.

Rows of the Detections and "Reviewed below threshold" sheets are keyed by what they show (deployment,
file, label, start in seconds), so sorting, filtering or hiding rows in Excel changes nothing. A
workbook written before deployments existed has no Deployment column: its rows come back with an
empty deployment for the caller to resolve. Excel's and LibreOffice's lock files tell whether the
workbook is open right now.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from monitor.store import Review
from monitor.verdicts import normalize_verdict  # the one vocabulary (re-exported: review_io.normalize_verdict)

log = logging.getLogger(__name__)

SHEETS = ("Detections", "Reviewed below threshold", "Segments")  # Segments: the search / review-next workbooks


class WorkbookUnreadable(Exception):
    """The file is not a workbook openpyxl can read (damaged, or another format under the name)."""


@dataclass
class WorkbookReviews:
    """The reviews a workbook holds (every row with its Verified/Notes, empty ones included), the Summary's
    Review Dates ((deployment, file, label, ISO date or '') per row), the build id monitor wrote into it, and
    the card-folder cells of Run info (card id -> folder)."""

    build: str
    reviews: list[Review]
    dates: list[tuple[str, str, str, str]]
    folders: dict[int, str] = field(default_factory=dict)


_CARD_ROW = re.compile(r"^card folder: card (\d+)\b")


def lock_files(path: Path) -> list[Path]:
    """Lock files of Excel (``~$report.xlsx``) and LibreOffice (``.~lock.report.xlsx#``) beside ``path``."""
    path = Path(path)
    names = (f"~${path.name}", f"~${path.name[2:]}" if len(path.name) > 2 else "", f".~lock.{path.name}#")
    return [path.with_name(n) for n in names if n and path.with_name(n).exists()]


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def read_workbook_reviews(path: Path) -> WorkbookReviews:
    """Every review row of ``path`` (Detections and "Reviewed below threshold" sheets) and its build id."""
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, XML or format errors alike
        raise WorkbookUnreadable(f"{type(exc).__name__}: {str(exc)[:120]}") from None
    try:
        build = _text(getattr(wb.properties, "identifier", None))
        folders: dict[int, str] = {}
        if "Run info" in wb.sheetnames:
            for row in wb["Run info"].iter_rows(min_row=2, max_col=2, values_only=True):
                m = _CARD_ROW.match(_text(row[0])) if row else None
                if m:
                    folders[int(m.group(1))] = _text(row[1] if len(row) > 1 else None)
                elif row and row[0] == "report_build":
                    build = _text(row[1]) or build
        reviews: list[Review] = []
        for name in SHEETS:
            if name in wb.sheetnames:
                reviews += _sheet_reviews(wb[name])
        dates = _review_dates(wb["Summary"]) if "Summary" in wb.sheetnames else []
    except Exception as exc:  # noqa: BLE001
        raise WorkbookUnreadable(f"{type(exc).__name__}: {str(exc)[:120]}") from None
    finally:
        wb.close()
    return WorkbookReviews(build, reviews, dates, folders)


def _sheet_reviews(ws) -> list[Review]:
    rows = ws.iter_rows(values_only=True)
    header = next(rows, None)
    if not header:
        return []
    col = {str(h).strip().lower(): j for j, h in enumerate(header) if h is not None}
    need = ("file", "label", "start (s)", "end (s)", "verified")
    if any(k not in col for k in need):
        return []
    dep, fj, lj, aj, bj, vj = (col.get("deployment"), col["file"], col["label"], col["start (s)"], col["end (s)"],
                               col["verified"])
    nj = col.get("notes")
    out = []
    for r in rows:
        if r is None or fj >= len(r) or r[fj] is None:
            continue
        try:
            a, b = float(r[aj]), float(r[bj])
        except (TypeError, ValueError):
            continue
        if lj >= len(r) or not _text(r[lj]):
            continue  # a search row nobody named a label for: no verdict can be kept
        out.append(Review(_text(r[dep]) if dep is not None and dep < len(r) else "", _text(r[fj]), _text(r[lj]),
                          a, b, normalize_verdict(r[vj] if vj < len(r) else None),
                          _text(r[nj]) if nj is not None and nj < len(r) else ""))
    return out


def _date_text(v) -> str:
    """A Review Date cell -> ISO date ('' when empty); text that is not a date is kept as typed."""
    from datetime import date, datetime

    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.date().isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return str(v).strip()


def _review_dates(ws) -> list[tuple[str, str, str, str]]:
    rows = ws.iter_rows(values_only=True)
    header = next(rows, None)
    if not header:
        return []
    col = {str(h).strip().lower(): j for j, h in enumerate(header) if h is not None}
    if not {"file name", "label", "review date"} <= set(col):
        return []
    dj, fj, lj, rj = col.get("deployment"), col["file name"], col["label"], col["review date"]
    out = []
    for r in rows:
        if r is None or fj >= len(r) or r[fj] is None:
            continue
        out.append((_text(r[dj]) if dj is not None and dj < len(r) else "", _text(r[fj]), _text(r[lj]),
                    _date_text(r[rj] if rj < len(r) else None)))
    return out
