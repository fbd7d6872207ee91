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

from monitor.errors import MonitorError

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


def match_label(name: str, labels: Sequence[str], what: str = "--threshold") -> str:
    """The label ``name`` means: exact, else the one case-insensitive match; a typo fails in one line
    naming the closest labels."""
    import difflib

    if name in labels:
        return name
    folded = [lab for lab in labels if lab.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, list(labels), n=5, cutoff=0.6) or difflib.get_close_matches(
        name.casefold(), [lab.casefold() for lab in labels], n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
        f"; the model's labels are: {', '.join(labels[:20])}" + (f" ... ({len(labels)} in all)" if len(labels) > 20
                                                                 else ""))
    raise MonitorError(f"{what} names unknown label {name!r}{hint}")


def label_filter(names: Sequence[str], labels: Sequence[str] | None) -> list[str] | None:
    """``--labels``: the model's own names of the labels to keep (case-insensitive, typos fail naming the
    closest labels); ``None`` keeps the stored choice, ``["all"]`` keeps every label."""
    if labels is None:
        return None
    wanted = [x.strip() for item in labels for x in str(item).split(",") if x.strip()]
    if not wanted:
        raise MonitorError("--labels needs at least one label name (or 'all')")
    if [w.casefold() for w in wanted] == ["all"]:
        return list(names)
    out = []
    for w in wanted:
        lab = match_label(w, names, "--labels")
        if lab not in out:
            out.append(lab)
    return out


def resolve_thresholds(labels: Sequence[str], base: Mapping[str, float],
                       *overrides: Mapping[str, float] | None) -> dict[str, float]:
    """Per-label thresholds: ``base`` (the bundle's, one per label), then each of ``overrides`` in turn.

    In an override, the key ``all`` sets every label first; other keys name labels (case-insensitive
    when unambiguous; an unknown label fails naming the closest ones).
    """
    missing = [lab for lab in labels if lab not in base]
    if missing:
        raise MonitorError(f"no threshold for label {missing[0]!r}; the model bundle is incomplete")
    out = {lab: float(base[lab]) for lab in labels}
    for ov in overrides:
        ov = dict(ov or {})
        if "all" in ov and "all" not in out:
            x = float(ov.pop("all"))
            out = {lab: x for lab in labels}
        for lab, x in ov.items():
            out[match_label(lab, labels)] = float(x)
    return out


def merge_events(index: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, scores: np.ndarray,
                 positive: np.ndarray, label: str) -> list[Event]:
    """Merge consecutive positive segments of one label in one file.

    ``index``, ``start_s``, ``end_s``, ``scores`` (float), ``positive`` (bool, from
    ``results.apply_thresholds``): ``(n,)`` arrays for one file, any order.
    """
    order = np.argsort(index, kind="stable")
    index, start_s, end_s = index[order], start_s[order], end_s[order]
    scores, positive = scores[order], np.asarray(positive, bool)[order]
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
        if positive[i]:
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


def hms(seconds: float) -> str:
    """Offset into a recording as ``H:MM:SS`` (rounded to the second)."""
    import math

    s = int(math.floor(float(seconds) + 0.5))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def detections_table(segments, positives: np.ndarray, recordings, labels: Sequence[str]):
    """Detection events from a segments table (one score column per label) and its positives mask.

    ``positives`` (n_segments, labels) bool is aligned with ``segments`` rows. Columns: deployment, file,
    label, start_s, end_s, start_time, end_time, score_max, score_mean, segments, device_id; sorted by
    deployment, file, label, start_s.
    """
    import pandas as pd

    cols = ["deployment", "file", "label", "start_s", "end_s", "start_time", "end_time", "score_max", "score_mean",
            "segments", "device_id"]
    info = {}
    if len(recordings):
        info = {(d, f): (parse_iso(t), dev) for d, f, t, dev in zip(recordings["deployment"], recordings["file"],
                                                                    recordings["start_time"], recordings["device_id"])}
    rows = []
    if len(segments):
        pos_all = np.asarray(positives, bool)
        any_pos = pos_all.any(axis=1)
        for (dep, file), g in segments.groupby(["deployment", "file"], sort=True):
            rows_i = g.index.to_numpy()
            if not any_pos[rows_i].any():
                continue
            start, device = info.get((dep, file), (None, ""))
            idx, s0, s1 = g["segment"].to_numpy(), g["start_s"].to_numpy(), g["end_s"].to_numpy()
            for j, label in enumerate(labels):
                pos = pos_all[rows_i, j]
                if not pos.any():
                    continue
                for ev in merge_events(idx, s0, s1, g[label].to_numpy(dtype=np.float64), pos, label):
                    rows.append((dep, file, label, ev.start_s, ev.end_s, iso(wall_clock(start, ev.start_s)),
                                 iso(wall_clock(start, ev.end_s)), ev.score_max, ev.score_mean, ev.segments,
                                 "" if device is None or (isinstance(device, float) and np.isnan(device)) else device))
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["deployment", "file", "label", "start_s"], kind="stable").reset_index(drop=True)
