"""Per-segment scores -> detection events: thresholds and merging, as pure functions.

An event is a run of positive segments of one label in one file with consecutive segment
indices (ordered by index, never by file listing). This is the "Times Heard" of the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One merged detection: segments ``first..last`` (inclusive) of one label in one file."""

    label: str
    first: int
    last: int
    start_s: float
    end_s: float
    score_max: float
    score_mean: float
    segments: int


def resolve_thresholds(
    labels: Sequence[str], bundle_thresholds: Mapping[str, float], overrides: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Per-label thresholds: the bundle's, replaced by ``overrides``; unknown override labels fail."""
    from monitor.errors import MonitorError

    out = {lab: float(bundle_thresholds.get(lab, 0.5)) for lab in labels}
    for lab, x in (overrides or {}).items():
        if lab not in out:
            raise MonitorError(f"--threshold names unknown label {lab!r}; the model's labels are: {', '.join(labels)}")
        out[lab] = float(x)
    return out


def merge_events(
    index: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, scores: np.ndarray, threshold: float, label: str
) -> list[Event]:
    """Merge consecutive positive segments of one label in one file.

    ``index``, ``start_s``, ``end_s``, ``scores``: ``(n,)`` arrays for one file, any order.
    A segment is positive when ``score >= threshold``.
    """
    order = np.argsort(index, kind="stable")
    index, start_s, end_s, scores = index[order], start_s[order], end_s[order], scores[order]
    events: list[Event] = []
    run: list[int] = []

    def close() -> None:
        if run:
            s = scores[run]
            events.append(
                Event(label, int(index[run[0]]), int(index[run[-1]]), float(start_s[run[0]]),
                      float(end_s[run[-1]]), float(s.max()), float(s.mean()), len(run))
            )

    for i in range(len(index)):
        if scores[i] >= threshold:
            if run and index[i] != index[run[-1]] + 1:
                close()
                run = []
            run.append(i)
        else:
            close()
            run = []
    close()
    return events


def wall_clock(start_time: datetime | None, offset_s: float) -> datetime | None:
    """Absolute time ``offset_s`` into a recording that started at ``start_time`` (None if unknown)."""
    if start_time is None:
        return None
    return start_time + timedelta(seconds=float(offset_s))


def parse_iso(text: str | None) -> datetime | None:
    """ISO 8601 text (with or without offset) -> datetime; '' / None / junk -> None."""
    if not text or not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def iso(dt: datetime | None) -> str:
    """datetime -> ISO 8601 seconds precision (offset kept if aware); None -> ''."""
    if dt is None:
        return ""
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


def detections_table(segments, recordings, labels: Sequence[str], thresholds: Mapping[str, float]):
    """Detections DataFrame from a segments table (one score column per label) and recordings.

    Columns: file, label, start_s, end_s, start_time, end_time, score_max, score_mean, segments,
    device_id; sorted by file, label, start_s.
    """
    import pandas as pd

    cols = ["file", "label", "start_s", "end_s", "start_time", "end_time", "score_max", "score_mean",
            "segments", "device_id"]
    rec = recordings.set_index("file") if len(recordings) else None
    rows = []
    for file, g in segments.groupby("file", sort=True):
        start = parse_iso(rec.at[file, "start_time"]) if rec is not None and file in rec.index else None
        device = rec.at[file, "device_id"] if rec is not None and file in rec.index else ""
        idx, s0, s1 = g["segment"].to_numpy(), g["start_s"].to_numpy(), g["end_s"].to_numpy()
        for label in labels:
            for ev in merge_events(idx, s0, s1, g[label].to_numpy(dtype=np.float64), thresholds[label], label):
                rows.append((file, label, ev.start_s, ev.end_s, iso(wall_clock(start, ev.start_s)),
                             iso(wall_clock(start, ev.end_s)), ev.score_max, ev.score_mean, ev.segments,
                             "" if device is None or (isinstance(device, float) and np.isnan(device)) else device))
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["file", "label", "start_s"], kind="stable").reset_index(drop=True)
