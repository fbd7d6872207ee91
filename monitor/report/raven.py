"""Raven Pro selection tables: one tab-separated ``<stem>.selections.txt`` per recording with detections."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path, PurePosixPath

from monitor.report.safe import atomic_path

COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
           "Species", "Score", "Begin File", "File Offset (s)"]
SUFFIX = ".selections.txt"

log = logging.getLogger(__name__)


def table_name(rel: str, stems_seen: dict[str, int]) -> str:
    """``<stem>.selections.txt``; a stem shared by files in different folders gets a short path hash.

    ``stems_seen`` counts case-folded stems (case-insensitive file systems would collide too); the
    hash is of the relative path, so the name is the same on every rebuild.
    """
    stem = PurePosixPath(rel).stem
    if stems_seen.get(stem.casefold(), 0) > 1:
        stem = f"{stem}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
    return stem + SUFFIX


def _clean(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_raven(out_dir: Path, detections, low_hz: float, high_hz: float) -> list[Path]:
    """Write the tables into ``out_dir/raven``; stale tables from earlier writes are removed.

    ``low_hz``/``high_hz``: the model's band, the same for every selection. Returns the paths written.
    """
    folder = out_dir / "raven"
    folder.mkdir(parents=True, exist_ok=True)
    stems: dict[str, int] = {}
    for rel in detections["file"].unique():
        stem = PurePosixPath(rel).stem.casefold()
        stems[stem] = stems.get(stem, 0) + 1
    written = []
    for rel, g in detections.groupby("file", sort=True):
        path = folder / table_name(rel, stems)
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
