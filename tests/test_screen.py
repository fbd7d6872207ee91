"""Screen thresholds (``monitor.screen``): numbers on hand-made scores (no model)."""

from __future__ import annotations

import numpy as np

from monitor.screen import FLOOR, MARGIN, cross_check, label_cut, screen_section


def test_the_cut_keeps_the_target_share_of_positives():
    rng = np.random.default_rng(0)
    student = rng.uniform(0.3, 1.0, 200)
    pos = np.ones(200, bool)
    cut = label_cut(student, pos, 0.99)
    kept = (student >= cut).mean()
    assert kept >= 0.99 and abs(cut - np.sort(student)[2] * MARGIN) < 1e-12  # 2 of 200 may fall below
    assert label_cut(student[:50], pos[:50], 0.99) == np.sort(student[:50])[0] * MARGIN  # < 100: none below
    assert label_cut(student, np.zeros(200, bool), 0.99) is None


def test_a_cut_never_exceeds_the_teachers_threshold_less_the_margin():
    """Held-out positives the student scores high would put the cut above the teacher's own threshold (0.3);
    new audio's weakest teacher positives (teacher 0.3-0.4, the student near them) would then be lost."""
    n = 120
    teacher = np.r_[np.full(60, 0.9), np.full(60, 0.05)][:, None]
    student = np.r_[np.full(60, 0.8), np.full(60, 0.04)][:, None]
    groups = [f"r{i % 6}" for i in range(n)]
    sec, _ = screen_section(student, teacher, ["frog"], [0.3], groups, 0.99, {"name": "t", "sha256": "x"})
    assert abs(sec["thresholds"]["frog"] - 0.3 * MARGIN) < 1e-12
    assert sec["recall"]["frog"] == 1.0 and sec["escalation"] == 0.5
    tiny, _ = screen_section(student, teacher, ["frog"], [1e-6], groups, 0.99, {"name": "t", "sha256": "x"})
    assert tiny["thresholds"]["frog"] == FLOOR


def test_recall_is_measured_on_the_other_half():
    """Thresholds fitted on one half of the recordings and measured on the other: a half whose positives the
    student scores lower than the other half's shows up as recall below 1."""
    student = np.r_[np.full(10, 0.9), np.full(10, 0.5)][:, None]
    pos = np.ones((20, 1), bool)
    groups = ["a"] * 10 + ["b"] * 10
    check = cross_check(student, pos, groups, 0.99, [FLOOR])
    assert check["recall"][0] == 0.5 and check["positives"] == [20] and check["kept"] == [10]
    capped = cross_check(student, pos, groups, 0.99, [FLOOR], cap=[0.4])
    assert capped["recall"][0] == 1.0
