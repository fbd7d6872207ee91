"""Evaluation metrics in numpy: mAP, macro AUC, d-prime, accuracy, per-label P/R/F1, confusion matrix.

Targets are 1 (present), 0 (absent) or NaN (unknown: not judged); each label is scored only on the
segments where it is known. A label with no positives (or no negatives) in the evaluation set gets
NaN AP/AUC and a note, and is left out of the macro means; it never raises.

``accuracy`` is argmax accuracy as the official AST reports it (``accuracy_score(argmax target,
argmax output)``), over the segments with exactly one label present and none unknown; for a
multilabel model ``exact_match`` also counts whether every known label is right at its threshold.
``Selection`` chooses the best epoch by one of them (and stops early).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from monitor.config import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("mAP", "mAUC", "d_prime", "accuracy", "exact_match", "macro_f1")  # of evaluate_scores' summary
MAXIMISE = {"mAP": True, "mAUC": True, "d_prime": True, "accuracy": True, "exact_match": True, "macro_f1": True,
            "val_loss": False}


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """AP = sum over distinct thresholds of (R_k - R_{k-1}) P_k (as scikit-learn). NaN without positives."""
    y = np.asarray(y) > 0.5
    s = np.asarray(s, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half). NaN without both classes."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def d_prime(auc: float) -> float:
    """``sqrt(2) * Phi^-1(AUC)`` (official AST); NaN for NaN, +-inf at 1/0."""
    if not np.isfinite(auc):
        return float("nan")
    if auc >= 1.0:
        return float("inf")
    if auc <= 0.0:
        return float("-inf")
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def prf(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float, int, int, int]:
    """(precision, recall, f1, tp, fp, fn) of ``s >= threshold``; precision is NaN with no predictions."""
    y = np.asarray(y) > 0.5
    pred = np.asarray(s) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return p, r, f1, tp, fp, fn


def confusion_matrix(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Multiclass: (labels, labels) counts, rows = true (argmax of y), columns = predicted (argmax of s)."""
    k = y.shape[1]
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.argmax(np.nan_to_num(y, nan=0.0), 1), np.argmax(s, 1)), 1)
    return m


def argmax_accuracy(y: np.ndarray, s: np.ndarray) -> float:
    """Official AST accuracy: argmax of scores == the one present label, over fully known single-label rows."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y).all(1) & ((y > 0.5).sum(1) == 1)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.argmax(y[ok], 1) == np.argmax(np.asarray(s)[ok], 1)))


def _nanmean(v: Sequence[float]) -> float:
    v = [x for x in v if np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate_scores(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str], task: str = "multilabel",
                    thresholds: Mapping[str, float] | float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """All metrics of one evaluation. ``targets`` (n, L) 0/1 (soft > 0.5 counts) or NaN (unknown: left
    out for that label), ``scores`` (n, L) in 0..1.

    Returns ``{"summary": {mAP, mAUC, d_prime, accuracy, exact_match, macro_f1, n}, "per_label": [..],
    "confusion": (L, L) list or None}``.
    """
    y = np.asarray(targets, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2 or y.shape[1] != len(labels):
        raise ValueError(f"targets {y.shape} and scores {s.shape} must both be (n, {len(labels)})")
    thr = {lab: float(thresholds) for lab in labels} if isinstance(thresholds, (int, float)) else dict(thresholds)
    known = np.isfinite(y)
    per = []
    for j, lab in enumerate(labels):
        k = known[:, j]
        yj, sj = y[k, j], s[k, j]
        ap, auc = average_precision(yj, sj), roc_auc(yj, sj)
        p, r, f1, tp, fp, fn = prf(yj, sj, thr[lab])
        pos = int((yj > 0.5).sum())
        note = "no positives in this split" if pos == 0 else ("no negatives in this split" if pos == len(yj) else "")
        if note:
            log.debug("label %s: %s (AP/AUC undefined)", lab, note)
        row = dict(label=lab, positives=pos, negatives=int(len(yj) - pos), AP=ap, AUC=auc, d_prime=d_prime(auc),
                   threshold=thr[lab], precision=p, recall=r, f1=f1, tp=tp, fp=fp, fn=fn, note=note)
        if not k.all():
            row["unknown"] = int((~k).sum())
        per.append(row)
    if task == "multiclass":
        acc = float(np.mean(np.argmax(np.nan_to_num(y, nan=0.0), 1) == np.argmax(s, 1))) if len(y) else float("nan")
        exact = acc
    else:
        acc = argmax_accuracy(y, s)
        t = np.array([thr[lab] for lab in labels])
        rows = known.any(1)
        right = ((s >= t[None, :]) == (y > 0.5)) | ~known
        exact = float(np.mean(np.all(right, axis=1)[rows])) if rows.any() else float("nan")
    mauc = _nanmean([r["AUC"] for r in per])
    summary = dict(n=int(len(y)), mAP=_nanmean([r["AP"] for r in per]), mAUC=mauc, d_prime=d_prime(mauc),
                   accuracy=acc, exact_match=exact,
                   macro_f1=_nanmean([r["f1"] if r["positives"] else float("nan") for r in per]))
    conf = confusion_matrix(y, s).tolist() if task == "multiclass" and len(y) else None
    return dict(summary=summary, per_label=per, confusion=conf)


def pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at each distinct score, from high to low threshold."""
    y = np.asarray(y) > 0.5
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    if len(s) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last].astype(float)
    fp = (last + 1) - tp
    n_pos = max(int(y.sum()), 1)
    return tp / (tp + fp), tp / n_pos, s[last]


# --- choosing the epoch ---------------------------------------------------------------------------------

def _better(value: float, best: float | None, maximise: bool) -> bool:
    """An undefined (NaN) value never wins; +-inf (d-prime at AUC 1 or 0) compares as a number."""
    if value is None or math.isnan(value):
        return False
    return best is None or math.isnan(best) or (value > best if maximise else value < best)


@dataclass
class Selection:
    """Which epoch's weights are best, and when to stop early.

    ``update`` takes an epoch's history row: an undefined (NaN) ``metric`` at the first validated
    epoch switches the run to ``val_loss``; patience counts as Keras/Lightning do: stop once
    ``patience`` epochs in a row did not improve on the best.
    """

    metric: str
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, row: dict[str, Any], patience: int | None) -> tuple[bool, bool]:
        """(improved, stop) after ``epoch`` (1-based)."""
        value = row.get(self.metric, float("nan"))
        if (math.isnan(value) and self.metric != "val_loss" and self.best_epoch == 0
                and math.isfinite(row.get("val_loss", float("nan")))):
            log.warning("eval.metric %s is undefined on this validation split (a label without positives or "
                        "negatives?); choosing epochs by val_loss instead", self.metric)
            self.metric, value = "val_loss", row["val_loss"]
        improved = _better(value, self.best_value, MAXIMISE[self.metric])
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
        return improved, patience is not None and self.bad_epochs >= patience
