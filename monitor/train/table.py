"""The labelled-segment table every data source makes: ``file, start_s, end_s, labels, group, unknown``.

``file`` is an absolute path; ``labels`` the tuple of labels present (positive); ``unknown`` the
tuple of labels nobody judged for that segment (masked out of loss and metrics); every other label
is a negative. ``group`` is the unit that splits keep together: the recording (the same audio in
several label folders is one recording), or what ``data.group_regex`` extracts from its relative
path (device, site, day). Every source cuts audio into the same ``segment`` windows as
``monitor run`` (``windows``), so a training segment is exactly an inference segment.

Short clips (call libraries are full of them): a recording shorter than ``segment.min_segment_s``
(which ``monitor run`` skips) becomes one window of all its audio, padded to the segment length by
the front end like any short window, when it holds at least ``data.min_clip_s`` (default 0.25 s,
``MIN_CLIP_S``); shorter or unreadable recordings are left out and counted by reason (``LeftOut``:
``plan.csv``, ``data_summary.json`` and one console line), never dropped without a word.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from monitor.audio import AudioError, plan_segments, probe
from monitor.config import SegmentConfig
from monitor.fileio import sha256_file
from monitor.train.config import MIN_CLIP_S  # re-exported: table.MIN_CLIP_S

log = logging.getLogger(__name__)

COLUMNS = ["file", "start_s", "end_s", "labels", "group", "unknown"]
TOO_SHORT = "shorter than data.min_clip_s"
UNREADABLE = "unreadable"
NOT_AUDIO = "not a recording"
DUPLICATE = "duplicate"


@dataclass
class LeftOut:
    """Recordings a data source could not use: ``(file, reason, detail)`` rows, counted by reason."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, file: str | Path, reason: str, detail: str = "") -> None:
        self.rows.append((str(file), reason, detail))
        log.debug("left out %s: %s%s", file, reason, f" ({detail})" if detail else "")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, reason, _ in self.rows:
            out[reason] = out.get(reason, 0) + 1
        return out

    def text(self, min_clip_s: float | None = None) -> str:
        """``3 recordings left out: 2 shorter than data.min_clip_s (0.25 s; e.g. a.wav 0.12 s), 1 unreadable (...)``."""
        parts = []
        for reason, n in self.counts().items():
            f, _, detail = next(r for r in self.rows if r[1] == reason)
            limit = f"{min_clip_s:g} s; " if reason == TOO_SHORT and min_clip_s is not None else ""
            parts.append(f"{n} {reason} ({limit}e.g. {Path(f).name}" + (f": {detail}" if detail else "") + ")")
        n = len(self.rows)
        return f"{n} recording{'s' if n != 1 else ''} left out: " + ", ".join(parts)


def make_table(rows: Iterable[dict[str, Any]]):
    """A pandas DataFrame with the table columns (``labels`` and ``unknown`` as tuples; ``unknown``
    defaults to none: every label not present is a negative)."""
    import pandas as pd

    rows = [r if "unknown" in r else {**r, "unknown": ()} for r in rows]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["labels"] = [tuple(x) for x in df["labels"]]
    df["unknown"] = [tuple(x) for x in df["unknown"]]
    return df.reset_index(drop=True)


def target_matrix(table, labels: list[str]):
    """(rows, labels) float32 targets: 1 present, 0 absent, NaN unknown (masked from loss and metrics)."""
    import numpy as np

    col = {n: j for j, n in enumerate(labels)}
    y = np.zeros((len(table), len(labels)), dtype=np.float32)
    unknown = table["unknown"] if "unknown" in table else [()] * len(table)
    for i, (lab, unk) in enumerate(zip(table["labels"], unknown)):
        for x in unk:
            if x in col:
                y[i, col[x]] = np.nan
        for x in lab:
            if x in col:
                y[i, col[x]] = 1.0
    return y


def group_of(rel: str, group_regex: str | None) -> str:
    """The split group of a file: the relative path, or the first match group of ``group_regex`` on it."""
    if not group_regex:
        return rel
    m = re.search(group_regex, rel)
    if not m:
        return rel
    return m.group(1) if m.groups() else m.group(0)


def windows(duration_s: float, sample_rate_hz: int, n_frames: int, seg: SegmentConfig,
            offset_s: float = 0.0) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of the inference segments of a region (``plan_segments``, exact in frames)."""
    base = int(round(offset_s * sample_rate_hz))
    return [((base + a) / sample_rate_hz, (base + b) / sample_rate_hz)
            for _, a, b in plan_segments(n_frames, sample_rate_hz, seg)]


def probe_or_skip(path: Path, left_out: LeftOut | None = None):
    """``monitor.audio.probe(path)``, or None for a file that does not decode (counted in ``left_out``, else
    a warning)."""
    try:
        return probe(path)
    except AudioError as exc:
        if left_out is None:
            log.warning("skipping %s: %s", path, exc)
        else:
            left_out.add(path, UNREADABLE, str(exc))
        return None


def clip_windows(path: Path, info, seg: SegmentConfig, min_clip_s: float = MIN_CLIP_S,
                 left_out: LeftOut | None = None) -> list[tuple[float, float]]:
    """A recording's training windows: its inference segments (``windows``); all its audio as one window
    (padded by the front end) when it is shorter than ``seg.min_segment_s`` but holds ``min_clip_s``;
    none when shorter than ``min_clip_s`` (counted in ``left_out``)."""
    sr = info.sample_rate_hz
    if info.frames < max(1, math.ceil(min_clip_s * sr - 1e-9)):
        if left_out is not None:
            left_out.add(path, TOO_SHORT, f"{info.frames / sr:.2f} s" if sr else "no audio")
        return []
    return windows(info.duration_s, sr, info.frames, seg) or [(0.0, info.frames / sr)]


def same_audio(paths: list[Path]) -> dict[Path, Path]:
    """Map every path to the first (sorted) path holding the very same bytes. Only files that share
    a size with another one are hashed, so this costs little."""
    by_size: dict[int, list[Path]] = {}
    for p in paths:
        try:
            by_size.setdefault(os.stat(p).st_size, []).append(p)
        except OSError:
            continue
    canon = {p: p for p in paths}
    for group in by_size.values():
        if len(group) < 2:
            continue
        by_hash: dict[str, list[Path]] = {}
        for p in group:
            by_hash.setdefault(sha256_file(p), []).append(p)
        for same in by_hash.values():
            first = min(same)
            for p in same:
                canon[p] = first
    return canon


def cap_per_label(table, n: int, seed: int):
    """Keep at most ``n`` segments per label set, taking one segment per group in turn (seeded order),
    so a small cap still spans many recordings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for _, sub in table.groupby(table["labels"].map(lambda t: ";".join(t)), sort=True):
        groups = list(dict.fromkeys(sub["group"]))
        queues = [sub.index[sub["group"] == groups[g]].tolist() for g in rng.permutation(len(groups))]
        taken = 0
        while taken < n and any(queues):
            for q in queues:
                if q and taken < n:
                    keep.append(q.pop(0))
                    taken += 1
    return table.loc[sorted(keep)].reset_index(drop=True)


def summary(table, labels: list[str], left_out: LeftOut | None = None) -> dict[str, Any]:
    """Counts for provenance and the model card (``per_label``: positives; ``unknown_per_label``:
    segments where the label was not judged; ``left_out``: recordings not used, by reason)."""
    per = {lab: int(sum(lab in t for t in table["labels"])) for lab in labels}
    unk = {lab: int(sum(lab in t for t in table["unknown"])) for lab in labels} if "unknown" in table else {}
    out = dict(segments=int(len(table)), recordings=int(table["file"].nunique()), groups=int(table["group"].nunique()),
               negatives=int(sum(len(t) == 0 for t in table["labels"])), per_label=per,
               hours=round(float((table["end_s"] - table["start_s"]).sum()) / 3600.0, 4))
    if any(unk.values()):
        out["unknown_per_label"] = unk
    if left_out is not None and left_out.rows:
        out["left_out"] = left_out.counts()
    return out
