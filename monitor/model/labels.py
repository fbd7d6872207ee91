"""Label lists: reading a labels file (``class_labels_indices.csv`` and friends), summarising long lists."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from monitor.errors import BundleError


def read_labels(path: Path) -> list[str]:
    """Labels, in output order, from ``class_labels_indices.csv`` (index,mid,display_name), a CSV with a
    display_name/label/name column (ordered by ``index`` if there is one), or one label per line."""
    if not path.is_file():
        raise BundleError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    header = [h.strip().lower() for h in rows[0]] if rows else []
    col = next((header.index(c) for c in ("display_name", "label", "name") if c in header), None)
    if col is None:
        if path.suffix.lower() == ".csv" and len(header) > 1:
            raise BundleError(f"{path}: CSV needs a display_name or label column (like class_labels_indices.csv)")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        body = rows[1:]
        if "index" in header:
            i = header.index("index")
            try:
                body = sorted(body, key=lambda r: int(r[i]))
            except (ValueError, IndexError):
                raise BundleError(f"{path}: the index column must hold whole numbers") from None
            if [int(r[i]) for r in body] != list(range(len(body))):
                raise BundleError(f"{path}: the index column must run 0..{len(body) - 1} without gaps")
        labels = [r[col].strip() if len(r) > col else "" for r in body]
    if not labels or not all(labels):
        raise BundleError(f"{path}: no labels, or an empty label")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise BundleError(f"{path}: label {dupes[0]!r} appears more than once")
    return labels


def summarise(labels: Sequence[str], first: int = 10) -> str:
    """``"527: Speech; Male speech, man speaking; ... and 517 more"``: count, the first few, how many more.

    Separated by "; " when a label holds a comma (AudioSet's do), else ", ".
    """
    sep = "; " if any("," in x for x in labels) else ", "
    shown = sep.join(labels[:first])
    more = len(labels) - first
    return f"{len(labels)}: {shown}" + (f" ... and {more} more" if more > 0 else "")
