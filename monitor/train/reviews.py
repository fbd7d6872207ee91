"""Reviewer verdicts as training targets: the Verified column of a reviewed ``report.xlsx``, or the
results store of a ``monitor run`` output folder; a ``yes`` or ``no`` speaks for its label only. Cells
are read with the one verdict vocabulary (``monitor.verdicts``: x is yes, ? unsure); a word outside it
is no verdict, and a warning names it and where it is."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monitor.config import SegmentConfig
from monitor.errors import MonitorError
from monitor.logs import warn
from monitor.outdir import load_reviews as store_reviews
from monitor.train.table import LeftOut, group_of, make_table, probe_or_skip, windows
from monitor.verdicts import normalize_verdict, unknown_text, unknown_words

log = logging.getLogger(__name__)

_REPORT_COLS = {
    "file": ("file", "recording", "path", "file name"),
    "label": ("label", "species", "class"),
    "start": ("start (s)", "start_s", "start", "begin (s)", "begin time (s)"),
    "end": ("end (s)", "end_s", "end", "end time (s)"),
    "verified": ("verified", "verified?", "review", "reviewed"),
}


def read_report(path: Path, sheet: str = "Detections") -> list[dict[str, Any]]:
    """Rows of a reviewed workbook: {file, label, start_s, end_s, verified}, verified as typed (trimmed).

    The header is the first row (of the first 20) holding a 'Verified' cell; columns are matched
    case-insensitively by the names in ``_REPORT_COLS``.
    """
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise MonitorError(f"cannot read {path} as a workbook ({type(exc).__name__})") from None
    names = {n.lower(): n for n in wb.sheetnames}
    if sheet.lower() not in names:
        raise MonitorError(f"{path} has no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})")
    rows = list(wb[names[sheet.lower()]].iter_rows(values_only=True))
    wb.close()
    for h, header in enumerate(rows[:20]):
        cells = [str(c).strip().lower() if c is not None else "" for c in header]
        if any(c in _REPORT_COLS["verified"] for c in cells):
            break
    else:
        raise MonitorError(f"{path}: sheet {sheet!r} has no 'Verified' column; review the detections first")
    col = {}
    for key, options in _REPORT_COLS.items():
        idx = next((cells.index(o) for o in options if o in cells), None)
        if idx is None:
            raise MonitorError(f"{path}: sheet {sheet!r} has no {key!r} column (looked for {', '.join(options)})")
        col[key] = idx
    out = []
    for r in rows[h + 1:]:
        if r is None or all(c is None for c in r):
            continue
        try:
            item = dict(file=str(r[col["file"]]), label=str(r[col["label"]]).strip(),
                        start_s=float(r[col["start"]]), end_s=float(r[col["end"]]))
        except (TypeError, ValueError, IndexError):
            continue
        v = r[col["verified"]]
        item["verified"] = "" if v is None else str(v).strip()
        out.append(item)
    return out


REVIEW_COLUMNS = ("file", "label", "start_s", "end_s", "verified")


def verdict(value: Any) -> str:
    """A Verified cell -> ``yes``, ``no`` or ``''`` (unsure, blank, a word outside the vocabulary: no
    information), by the one vocabulary of ``monitor.verdicts``."""
    v = normalize_verdict(value)
    return v if v in ("yes", "no") else ""


def group_name(deployment: str, file: str) -> str:
    """``deployment/file``, without repeating the deployment when the file's path already starts with it."""
    if not deployment or file.split("/", 1)[0] == deployment:
        return file
    return f"{deployment}/{file}"


def targets_from_reviews(reviews, audio_root: Path | None, seg: SegmentConfig, labels: list[str] | None = None,
                         group_regex: str | None = None, where: str = "the reviews", left_out: LeftOut | None = None):
    """Reviewer verdicts -> per-label targets.

    ``reviews``: a DataFrame with ``file`` (absolute, or relative to ``audio_root``), ``label``,
    ``start_s``, ``end_s``, ``verified`` (yes / no / unsure / blank) and optionally ``path`` (the
    absolute audio path, preferred) and ``deployment`` (the results store's shape). A detection's span
    is cut into ``seg.window_s`` windows from its start (as inference segmented it). In a window, a
    ``yes`` makes its label positive and a ``no`` makes only *its* label negative: every label that
    nobody judged there is unknown (masked from loss and metrics), never a negative. ``yes`` and
    ``no`` for one label in one window cancel to unknown. Windows with no verdict are dropped.
    Returns (table, labels).
    """
    import pandas as pd

    df = pd.DataFrame(reviews).copy()
    missing = [c for c in REVIEW_COLUMNS if c not in df.columns]
    if missing:
        raise MonitorError(f"{where}: no {missing[0]!r} column (need {', '.join(REVIEW_COLUMNS)})")
    odd = unknown_words(df["verified"], [f"{f} {lab} at {float(a):g} s" for f, lab, a in
                                         zip(df["file"], df["label"], df["start_s"])])
    if odd:
        warn(unknown_text(odd, where))
    df["v"] = [verdict(v) for v in df["verified"]]
    df = df[df["v"] != ""]
    if df.empty:
        raise MonitorError(f"{where}: no detections marked yes or no (Verified); review some first")
    df["label"] = [str(x).strip() for x in df["label"]]
    labels = list(labels) if labels is not None else sorted(set(df["label"]))
    root = Path(audio_root) if audio_root else None
    verdicts: dict[tuple[str, float, float], dict[str, set[str]]] = {}
    rel_of: dict[str, str] = {}
    probed: dict[str, Any] = {}
    for r in df.itertuples(index=False):
        if r.label not in labels:
            continue
        path = _review_path(r, root, where)
        if path is None:
            continue
        key = str(path)
        if key not in probed:
            probed[key] = probe_or_skip(path, left_out)
        info = probed[key]
        if info is None:
            continue
        if key not in rel_of:
            dep = str(getattr(r, "deployment", "") or "")
            rel_of[key] = (path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root)
                           else group_name(dep, str(r.file)))
        sr = info.sample_rate_hz
        start_f = int(round(float(r.start_s) * sr))
        end_f = min(int(round(float(r.end_s) * sr)), info.frames)
        cut = SegmentConfig(seg.window_s, seg.window_s, seg.min_segment_s, seg.block_s)
        for a, b in windows(0, sr, end_f - start_f, cut, offset_s=start_f / sr):
            verdicts.setdefault((key, a, b), {}).setdefault(r.label, set()).add(r.v)
    rows, conflicts = [], 0
    for (f, a, b), per in sorted(verdicts.items()):
        pos = {lab for lab, v in per.items() if v == {"yes"}}
        neg = {lab for lab, v in per.items() if v == {"no"}}
        conflicts += sum(len(v) > 1 for v in per.values())
        if not pos and not neg:
            continue
        unknown = tuple(lab for lab in labels if lab not in pos and lab not in neg)
        rows.append(dict(file=f, start_s=a, end_s=b, labels=tuple(sorted(pos)), group=group_of(rel_of[f], group_regex),
                         unknown=unknown))
    if conflicts:
        log.warning("%s: %d label windows were marked both yes and no; they are left unknown", where, conflicts)
    if not rows:
        raise MonitorError(f"{where}: no verified rows point at readable recordings"
                           + (f" under {root}" if root else ""))
    return make_table(rows), labels


def _review_path(r, root: Path | None, where: str) -> Path | None:
    path = str(getattr(r, "path", "") or "")
    if path and path.lower() != "nan":
        return Path(path)
    f = Path(str(r.file))
    if f.is_absolute():
        return f
    if root is None:
        raise MonitorError(f"{where} name recordings relative to their card ({f}); set data.root to that folder")
    return root / f


def load_reviews(report: Path):
    """Reviewer verdicts as a DataFrame: from a reviewed ``report.xlsx`` (``read_report``), or from a
    ``monitor run`` output folder's results store (``monitor.outdir.load_reviews``)."""
    import pandas as pd

    report = Path(report)
    if report.is_dir():
        if (report / "monitor.sqlite").is_file():  # a results store: its reviewer verdicts
            return store_reviews(report)
        if (report / "report.xlsx").is_file():
            report = report / "report.xlsx"
        else:
            raise MonitorError(f"data.report {report} is a folder without report.xlsx; point it at a reviewed "
                               "report.xlsx or a monitor run output folder")
    if not report.is_file():
        raise MonitorError(f"data.report {report} does not exist; point it at a reviewed report.xlsx")
    return pd.DataFrame(read_report(report), columns=list(REVIEW_COLUMNS))


def from_report(report: Path, audio_root: Path | None, seg: SegmentConfig, labels: list[str] | None = None,
                group_regex: str | None = None, left_out: LeftOut | None = None):
    """A reviewed workbook (or run folder) -> per-label targets (``targets_from_reviews``). Returns (table, labels)."""
    return targets_from_reviews(load_reviews(Path(report)), audio_root, seg, labels, group_regex, where=str(report),
                                left_out=left_out)
