"""Per-label decision thresholds from validation scores: maximum F1 (default) or a target precision.

A threshold ``t`` means "detected when score >= t". The chosen cut lies midway between the lowest
score kept and the highest score dropped, so it does not sit exactly on one validation example.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from monitor.config import DEFAULT_THRESHOLD
from monitor.train.metrics import pr_curve

log = logging.getLogger(__name__)


def _cut(s_sorted_desc_distinct: np.ndarray, k: int) -> float:
    """Threshold between distinct score k (kept) and k+1 (dropped)."""
    s = s_sorted_desc_distinct
    if k + 1 < len(s):
        return float(0.5 * (s[k] + s[k + 1]))
    return float(s[k])  # keep everything: the lowest score itself


def max_f1_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1; ties go to the higher threshold. Raises without positives."""
    if not (np.asarray(y) > 0.5).any():
        raise ValueError("no positives")
    p, r, t = pr_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    k = int(np.argmax(f1))
    return _cut(t, k), float(f1[k])


def precision_threshold(y: np.ndarray, s: np.ndarray, target: float) -> tuple[float, float, bool]:
    """(threshold, recall, reached): the lowest threshold whose precision >= ``target`` (most recall).
    When no threshold reaches it, the highest-precision one (reached = False)."""
    if not (np.asarray(y) > 0.5).any():
        raise ValueError("no positives")
    p, r, t = pr_curve(y, s)
    ok = np.nonzero(p >= target - 1e-12)[0]
    if len(ok):
        k = int(ok[-1])
        return _cut(t, k), float(r[k]), True
    k = int(np.argmax(p))
    return _cut(t, k), float(r[k]), False


def calibrate(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str], method: str = "f1",
              precision: float = 0.9, default: float = DEFAULT_THRESHOLD) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Thresholds per label and a report row per label (method, value, note)."""
    y = np.asarray(targets)
    s = np.asarray(scores)
    thr: dict[str, float] = {}
    rows = []
    for j, lab in enumerate(labels):
        note = ""
        k = np.isfinite(y[:, j]) if len(y) else np.zeros(0, dtype=bool)  # unknown entries take no part
        yj, sj = y[k, j], s[k, j]
        if method == "fixed" or len(yj) == 0:
            t, val = default, float("nan")
        elif not (yj > 0.5).any():
            t, val, note = default, float("nan"), "no positives in validation: default threshold"
        elif method == "precision":
            t, val, ok = precision_threshold(yj, sj, precision)
            if not ok:
                note = f"precision {precision} not reachable: highest-precision threshold"
        else:
            t, val = max_f1_threshold(yj, sj)
        t = float(min(max(t, 0.0), 1.0))
        if note:
            log.warning("threshold for %s: %s", lab, note)
        thr[lab] = t
        rows.append(dict(label=lab, method=method, threshold=t, value=val, note=note))
    return thr, rows
