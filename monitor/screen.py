"""Screen thresholds for a distilled student (``monitor distill``), from held-out recordings; numpy only.

A *teacher positive* is a segment whose teacher score reaches the teacher's threshold for that label. A
label's screen threshold is the highest student score cut that still keeps at least ``target`` (0.99) of the
held-out teacher positives of that label: with ``n`` positives, at most ``floor((1 - target) * n)`` may fall
below it (none below 100 positives), so the cut is the lowest kept positive's student score, less a small
margin, and never above the teacher's own threshold less that margin (``caps``). A segment escalates to the
teacher when any label reaches its cut.

The recall reported is not the one the thresholds were fitted on: the held-out recordings are split in two
halves by recording, thresholds chosen on one half are measured on the other and the other way round, and
the two halves' counts are pooled (``cross_check``). The thresholds kept are chosen on all held-out
recordings.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MARGIN = 0.9  # the cut is this fraction of the lowest kept positive's score: a little room for unseen audio
FLOOR = 1e-4  # a cut is never below this (a threshold of 0 would escalate every segment)


def label_cut(student: np.ndarray, positive: np.ndarray, target: float) -> float | None:
    """One label's screen threshold: keeps >= ``target`` of the positives (``None``: no positives)."""
    s = np.sort(np.asarray(student, dtype=np.float64)[np.asarray(positive, dtype=bool)])
    if not len(s):
        return None
    miss = int(math.floor((1.0 - float(target)) * len(s) + 1e-9))
    return float(max(FLOOR, min(1.0, s[miss] * MARGIN)))


def teacher_positives(teacher: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(n, labels) bool: teacher score >= the teacher's threshold."""
    return np.asarray(teacher, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def escalated(student: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """(n,) bool: any label's student score reaches its cut (as ``cascade.escalate``)."""
    return (np.asarray(student, dtype=np.float64) >= np.asarray(cuts, dtype=np.float64)[None, :]).any(axis=1)


def fit_cuts(student: np.ndarray, positives: np.ndarray, target: float, fallback: Sequence[float],
             cap: Sequence[float] | None = None) -> list[float]:
    """Per label the cut from these rows, or ``fallback[j]`` for a label without positives here; never above
    ``cap[j]`` (``caps``: the teacher's own threshold less the margin)."""
    out = []
    for j in range(positives.shape[1]):
        c = label_cut(student[:, j], positives[:, j], target)
        c = float(fallback[j]) if c is None else c
        out.append(c if cap is None else float(max(FLOOR, min(c, cap[j]))))
    return out


def caps(teacher_thresholds: Sequence[float]) -> list[float]:
    """The highest cut per label: ``MARGIN`` times the teacher's threshold. The student learns the teacher's
    probabilities, so a cut above the teacher's own threshold would drop the teacher's weakest positives on new
    audio while keeping the target on the held-out recordings (measured: ``benchmarks/cascade.py``)."""
    return [float(t) * MARGIN for t in teacher_thresholds]


def halves(groups: Sequence[str], seed: int = 0) -> np.ndarray:
    """(n,) 0/1: which half of the held-out recordings each row's recording falls in (seeded, by recording)."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    half = {uniq[i]: k % 2 for k, i in enumerate(order)}
    return np.array([half[g] for g in groups], dtype=int)


def cross_check(student: np.ndarray, positives: np.ndarray, groups: Sequence[str], target: float,
                fallback: Sequence[float], seed: int = 0, cap: Sequence[float] | None = None) -> dict[str, Any]:
    """Recall and escalation with cuts chosen on the other half of the recordings, pooled over both halves.

    Returns ``recall`` (label -> fraction of its teacher positives escalated, None without positives),
    ``recall_any`` (segments with any teacher positive that escalated), ``escalation`` (fraction of all rows),
    and the counts behind them."""
    h = halves(groups, seed)
    n_lab = positives.shape[1]
    kept, pos = np.zeros(n_lab), np.zeros(n_lab)
    esc_n, any_kept, any_pos = 0, 0, 0
    for part in (0, 1):
        fit, test = h != part, h == part
        if not test.any():
            continue
        cuts = fit_cuts(student[fit], positives[fit], target, fallback, cap)
        esc = escalated(student[test], cuts)
        p = positives[test]
        kept += (p & esc[:, None]).sum(0)
        pos += p.sum(0)
        esc_n += int(esc.sum())
        anyp = p.any(1)
        any_kept += int((anyp & esc).sum())
        any_pos += int(anyp.sum())
    return {"recall": [float(k / p) if p else None for k, p in zip(kept, pos)],
            "recall_any": float(any_kept / any_pos) if any_pos else None,
            "escalation": float(esc_n / len(student)) if len(student) else 0.0,
            "positives": [int(p) for p in pos], "kept": [int(k) for k in kept]}


def screen_section(student: np.ndarray, teacher: np.ndarray, labels: Sequence[str], teacher_thresholds: Sequence[float],
                   groups: Sequence[str], target: float, teacher_ref: dict[str, str],
                   train_student: np.ndarray | None = None, train_teacher: np.ndarray | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """The bundle's ``screen`` section from held-out scores (``student``, ``teacher``: (n, labels)), and warnings.

    A label without held-out teacher positives takes its cut from the training recordings' positives (flagged:
    its recall is not measured), or, without any, ``FLOOR`` (every segment where the student gives it any score
    escalates: safe, slow)."""
    pos = teacher_positives(teacher, teacher_thresholds)
    warnings: list[str] = []
    fallback = []
    for j, lab in enumerate(labels):
        c = None
        if not pos[:, j].any() and train_student is not None and train_teacher is not None:
            c = label_cut(train_student[:, j], teacher_positives(train_teacher, teacher_thresholds)[:, j], target)
            if c is not None:
                warnings.append(f"{lab}: no teacher positives in the held-out recordings; its screen threshold comes "
                                "from the training recordings and its recall is not measured")
        if c is None and not pos[:, j].any():
            warnings.append(f"{lab}: the teacher found it nowhere in this audio; the screen escalates almost any "
                            "segment the student gives it a score (safe, but slow): distil on audio that holds it")
            c = FLOOR
        fallback.append(c if c is not None else FLOOR)
    cap = caps(teacher_thresholds)
    cuts = fit_cuts(student, pos, target, fallback, cap)
    check = cross_check(student, pos, groups, target, fallback, cap=cap)
    in_sample = escalated(student, cuts)
    section = {
        "teacher": dict(teacher_ref),
        "thresholds": {lab: float(c) for lab, c in zip(labels, cuts)},
        "target_recall": float(target),
        "recall": {lab: r for lab, r in zip(labels, check["recall"])},
        "escalation": float(check["escalation"]),
        "validation": {
            "files": len(set(groups)), "segments": int(len(student)),
            "teacher_positives": {lab: int(n) for lab, n in zip(labels, pos.sum(0))},
            "recall_any_label": check["recall_any"],
            "recall_with_final_thresholds": {lab: (float((pos[:, j] & in_sample).sum() / pos[:, j].sum())
                                                   if pos[:, j].any() else None) for j, lab in enumerate(labels)},
            "escalation_with_final_thresholds": float(in_sample.mean()) if len(in_sample) else 0.0,
            "how": "recall and escalation: thresholds chosen on one half of the held-out recordings, measured on "
                   "the other, both ways, pooled; the thresholds kept are chosen on all held-out recordings",
        },
    }
    return section, warnings
