"""Lists of segments to listen to (search results, what to review next) as ``OUT/search/<name>.csv`` and
``<name>.xlsx``.

The workbook has the report's review columns (Deployment, File, Label, Start (s), End (s), a link to the
audio through its card's folder cell in Run info, Verified, Notes) on a sheet named ``Segments``; it is
registered with the results store when written, so every later harvest (``monitor report``, ``monitor
run``, training) reads the verdicts a reviewer changes in it, dated by its save time, into the same review
store as the report's. A row whose Label is empty carries no verdict (type a label there, or give
``--label``). Verdicts already in the store are filled in, so the workbook shows what is known.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from monitor.detect import iso, wall_clock
from monitor.errors import MonitorError
from monitor.fileio import atomic_path
from monitor.logs import warn
from monitor.outdir import remember_side_workbook
from monitor.report.review_io import lock_files
from monitor.report.safe import safe_text
from monitor.report.sheet import DATETIME, SCORE, Col, start_sheet, write_table
from monitor.report.workbook import Files, local
from monitor.results import VERIFIED_CHOICES, load_recordings
from monitor.store import Review, start_ms

log = logging.getLogger(__name__)

FOLDER = "search"
SHEET = "Segments"
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def sheet_name(text: str) -> str:
    """A safe file stem from a label or example name (``Rana draytonii`` -> ``Rana_draytonii``)."""
    name = _NAME.sub("_", str(text)).strip("._") or "search"
    return name[:80]


def _verified_validation(ws: Any, col: str, n: int) -> None:
    from openpyxl.worksheet.datavalidation import DataValidation

    dv = DataValidation(type="list", formula1='"' + ",".join(VERIFIED_CHOICES) + '"', allow_blank=True,
                        showErrorMessage=True, errorTitle="Verified", error="Choose yes, no or unsure")
    dv.add(f"{col}2:{col}{max(n, 1) + 1}")
    ws.data_validations.append(dv)


def write_list(store, out_dir: Path, name: str, picks, label: str | None, value: str,
               about: Sequence[tuple[str, Any]], extra: Sequence[str] = ()) -> tuple[Path, Path]:
    """``picks`` (DataFrame: deployment, file, start_s, end_s, ``value`` and the ``extra`` columns, best first)
    -> ``OUT/search/<name>.csv`` and ``.xlsx`` (registered for the review harvest). Returns both paths."""
    import pandas as pd
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    folder = Path(out_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    recordings, _ = load_recordings(store)
    files = Files.from_results(SimpleNamespace(recordings=recordings, cards=store.cards()))
    cells = files.base_cells()
    keys = list(zip(picks["deployment"], picks["file"]))
    starts = [wall_clock(files.start.get(k), float(a)) for k, a in zip(keys, picks["start_s"])]
    csv = pd.DataFrame({"rank": np.arange(1, len(picks) + 1), "deployment": [safe_text(d) for d, _ in keys],
                        "file": [safe_text(f) for _, f in keys], "start_s": picks["start_s"].to_numpy(float),
                        "end_s": picks["end_s"].to_numpy(float), "start_time": [iso(t) for t in starts]})
    csv[value] = picks[value].to_numpy(float)
    for c in extra:
        csv[c] = picks[c].to_numpy()
    if label is not None:
        csv["label"] = label
    csv_path = folder / f"{name}.csv"
    with atomic_path(csv_path) as tmp:
        csv.to_csv(tmp, index=False, float_format="%.6g")

    known = {r.key: r for r in store.reviews()}
    rows, written = [], []
    for i, ((d, f), a, b, t) in enumerate(zip(keys, picks["start_s"], picks["end_s"], starts)):
        r = known.get((d, f, label, start_ms(a))) if label else None
        if r is not None:
            written.append(r)
        rows.append([i + 1, d, f, label or None, float(a), float(b), local(t), files.offset.get((d, f)) or None,
                     float(picks[value].iloc[i]), *[picks[c].iloc[i] for c in extra], files.link((d, f), cells),
                     r.verified if r else None, r.notes if r else None])
    cols = [Col("Rank", width=6, raw=True), Col("Deployment"), Col("File"), Col("Label"), Col("Start (s)", "0.0"),
            Col("End (s)", "0.0"), Col("Start Time", DATETIME), Col("UTC Offset", width=11),
            Col(value.replace("_", " ").title(), SCORE), *[Col(c.replace("_", " ").title()) for c in extra],
            Col("Link", link=True), Col("Verified", width=10), Col("Notes", width=40)]
    path = folder / f"{name}.xlsx"
    if lock_files(path):
        side = folder / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.xlsx"
        warn(f"{FOLDER}/{path.name} is open in a spreadsheet program; the new list is {FOLDER}/{side.name}")
        path = side
    wb = Workbook(write_only=True)
    wb.properties.title = f"Segments to review: {name}"
    ws = start_sheet(wb, SHEET)
    n = write_table(ws, cols, rows, freeze="D2")
    _verified_validation(ws, get_column_letter(len(cols) - 1), n)
    ws = start_sheet(wb, "Run info", landscape=False)
    info = [["list", f"{name}: {len(rows)} segments" + (f" for {label}" if label else " (type a Label to keep a "
                                                                                       "verdict)")]]
    info += [[lab, base] for _, lab, base in files.folders] + [[k, str(v)] for k, v in about]
    write_table(ws, [Col("Key", width=32), Col("Value", width=90)], info, autofilter=False)
    try:
        with atomic_path(path) as tmp:
            wb.save(tmp)
    except OSError as exc:
        raise MonitorError(f"could not write {path} ({exc.strerror or exc})") from None
    remember_side_workbook(store, out_dir, path, written, {c: base for c, _, base in files.folders})
    return csv_path, path


def review_rows(store, label: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(deployment, file) -> spans someone gave a verdict (yes / no / unsure) for ``label``."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in store.reviews():
        if r.label == label and r.verified:
            out.setdefault((r.deployment, r.file), []).append((float(r.start_s), float(r.end_s)))
    return out


def reviewed_mask(deployments: Sequence[str], files: Sequence[str], start_s: np.ndarray, store, label: str) -> np.ndarray:
    """True for segments inside a span with a verdict on ``label`` (they need no second look)."""
    spans = review_rows(store, label)
    mask = np.zeros(len(start_s), bool)
    if not spans:
        return mask
    for i, (d, f, a) in enumerate(zip(deployments, files, start_s)):
        for s0, s1 in spans.get((d, f), ()):
            if s0 - 1e-6 <= a < max(s1, s0 + 1e-3) - 1e-6:
                mask[i] = True
                break
    return mask


def verdict_count(reviews: Sequence[Review], label: str) -> int:
    return sum(1 for r in reviews if r.label == label and r.verified)
