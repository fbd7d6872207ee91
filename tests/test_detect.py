"""Event merging and thresholds: consecutive positive segments merge by index, never by row order."""

import numpy as np
import pandas as pd
import pytest

from monitor.detect import detections_table, merge_events, resolve_thresholds
from monitor.errors import MonitorError


def test_merge_consecutive_and_split_on_gap():
    idx = np.arange(8)
    s0 = idx * 10.0
    s1 = s0 + 10.0
    sc = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.95, 0.6, 0.1])
    ev = merge_events(idx, s0, s1, sc, 0.5, "frog")
    assert [(e.first, e.last, e.start_s, e.end_s, e.segments) for e in ev] == [
        (1, 2, 10.0, 30.0, 2),
        (4, 6, 40.0, 70.0, 3),
    ]
    assert ev[0].score_max == pytest.approx(0.9)
    assert ev[1].score_mean == pytest.approx((0.7 + 0.95 + 0.6) / 3)


def test_merge_orders_by_index_not_by_row_order():
    rng = np.random.default_rng(0)
    idx = np.arange(6)
    sc = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    perm = rng.permutation(6)
    ev = merge_events(idx[perm], (idx * 10.0)[perm], (idx * 10.0 + 10)[perm], sc[perm], 0.5, "x")
    assert [(e.first, e.last) for e in ev] == [(0, 1), (3, 5)]


def test_missing_index_breaks_an_event():
    # segment 2 absent (e.g. dropped); 1 and 3 are not consecutive
    idx = np.array([0, 1, 3])
    ev = merge_events(idx, idx * 10.0, idx * 10.0 + 10, np.array([0.9, 0.9, 0.9]), 0.5, "x")
    assert [(e.first, e.last) for e in ev] == [(0, 1), (3, 3)]


def test_threshold_is_inclusive_and_final_partial_end_kept():
    idx = np.arange(3)
    ev = merge_events(idx, np.array([0.0, 10.0, 20.0]), np.array([10.0, 20.0, 25.0]),
                      np.array([0.5, 0.49, 0.5]), 0.5, "x")
    assert [(e.start_s, e.end_s) for e in ev] == [(0.0, 10.0), (20.0, 25.0)]


def test_resolve_thresholds_overrides_and_rejects_unknown():
    thr = resolve_thresholds(["frog", "bird"], {"frog": 0.3, "bird": 0.6}, {"bird": 0.8})
    assert thr == {"frog": 0.3, "bird": 0.8}
    with pytest.raises(MonitorError, match="unknown label 'owl'"):
        resolve_thresholds(["frog"], {"frog": 0.5}, {"owl": 0.2})


def test_detections_table_wall_clock_and_device():
    seg = pd.DataFrame({
        "file": ["b.wav"] * 3 + ["a.wav"] * 2,
        "segment": [0, 1, 2, 0, 1],
        "start_s": [0.0, 10.0, 20.0, 0.0, 10.0],
        "end_s": [10.0, 20.0, 30.0, 10.0, 20.0],
        "frog": [0.2, 0.9, 0.8, 0.7, 0.1],
    })
    rec = pd.DataFrame({"file": ["a.wav", "b.wav"], "start_time": ["", "2023-04-05T19:02:00-07:00"],
                        "device_id": ["", "24E144055E080032"]})
    det = detections_table(seg, rec, ["frog"], {"frog": 0.5})
    assert list(det.columns) == ["file", "label", "start_s", "end_s", "start_time", "end_time", "score_max",
                                 "score_mean", "segments", "device_id"]
    assert det["file"].tolist() == ["a.wav", "b.wav"]
    b = det.iloc[1]
    assert (b.start_s, b.end_s, b.segments) == (10.0, 30.0, 2)
    assert b.start_time == "2023-04-05T19:02:10-07:00"
    assert b.end_time == "2023-04-05T19:02:30-07:00"
    assert b.device_id == "24E144055E080032"
    assert det.iloc[0].start_time == ""  # unknown start: no guessed wall clock
