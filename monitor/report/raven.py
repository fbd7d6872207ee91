"""Raven Pro selection tables: one tab-separated ``<stem>.selections.txt`` per recording with detections."""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath

from monitor.fileio import atomic_path

COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
           "Species", "Score", "Begin File", "File Offset (s)"]
SUFFIX = ".selections.txt"

log = logging.getLogger(__name__)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def table_name(deployment: str, rel: str, taken: set[str]) -> str:
    """``<deployment>__<path in the card>.selections.txt`` (``/`` -> ``__``, extension dropped), so a table
    says which deployment and recording it belongs to. If two names fold to the same case-insensitive
    name (``a.WAV`` beside ``a.wav``), the extension is kept to tell them apart. ``taken`` holds the
    case-folded names given so far."""
    p = PurePosixPath(rel)
    stem = "__".join([*p.parent.parts, p.stem]) if str(p.parent) != "." else p.stem
    base = f"{_UNSAFE.sub('_', deployment) or 'card'}__{_UNSAFE.sub('_', stem)}"
    name = base + SUFFIX
    if name.casefold() in taken:
        name = f"{base}{_UNSAFE.sub('_', p.suffix)}{SUFFIX}"
        k = 2
        while name.casefold() in taken:
            name = f"{base}{_UNSAFE.sub('_', p.suffix)}_{k}{SUFFIX}"
            k += 1
    taken.add(name.casefold())
    return name


def _clean(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_raven(out_dir: Path, detections, low_hz: float, high_hz: float) -> list[Path]:
    """Write the tables into ``out_dir/raven``; stale tables from earlier writes are removed.

    ``low_hz``/``high_hz``: the model's band, the same for every selection. Returns the paths written.
    """
    folder = out_dir / "raven"
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for (dep, rel), g in detections.groupby(["deployment", "file"], sort=True):
        path = folder / table_name(dep, rel, taken)
        lines = ["\t".join(COLUMNS)]
        for i, r in enumerate(g.sort_values(["start_s", "label"]).itertuples(), start=1):
            lines.append("\t".join([str(i), "Spectrogram 1", "1", f"{r.start_s:.3f}", f"{r.end_s:.3f}",
                                    f"{low_hz:.1f}", f"{high_hz:.1f}", _clean(r.label), f"{r.score_max:.4f}",
                                    _clean(PurePosixPath(rel).name), f"{r.start_s:.3f}"]))
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    keep = {p.name for p in written}
    for p in folder.glob("*" + SUFFIX):
        if p.name not in keep:
            p.unlink()
    return written
