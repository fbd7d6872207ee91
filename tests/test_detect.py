"""Event merging and thresholds: consecutive positive segments merge by index, never by row order.

Thresholds are applied once (``results.apply_thresholds``); merging takes the positives mask."""

import numpy as np
import pandas as pd
import pytest

from monitor.detect import detections_table, match_label, merge_events, resolve_thresholds
from monitor.errors import MonitorError
from monitor.results import apply_thresholds


def test_merge_consecutive_and_split_on_gap():
    idx = np.arange(8)
    s0 = idx * 10.0
    s1 = s0 + 10.0
    sc = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.95, 0.6, 0.1])
    ev = merge_events(idx, s0, s1, sc, sc >= 0.5, "frog")
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
    ev = merge_events(idx[perm], (idx * 10.0)[perm], (idx * 10.0 + 10)[perm], sc[perm], sc[perm] >= 0.5, "x")
    assert [(e.first, e.last) for e in ev] == [(0, 1), (3, 5)]


def test_missing_index_breaks_an_event():
    # segment 2 absent (e.g. dropped); 1 and 3 are not consecutive
    idx = np.array([0, 1, 3])
    ev = merge_events(idx, idx * 10.0, idx * 10.0 + 10, np.array([0.9, 0.9, 0.9]), np.ones(3, bool), "x")
    assert [(e.first, e.last) for e in ev] == [(0, 1), (3, 3)]


def test_threshold_is_inclusive_and_final_partial_end_kept():
    idx = np.arange(3)
    sc = np.array([0.5, 0.49, 0.5])
    pos = apply_thresholds(sc[:, None], ["x"], {"x": 0.5})[:, 0]
    ev = merge_events(idx, np.array([0.0, 10.0, 20.0]), np.array([10.0, 20.0, 25.0]), sc, pos, "x")
    assert [(e.start_s, e.end_s) for e in ev] == [(0.0, 10.0), (20.0, 25.0)]


def test_resolve_thresholds_overrides_and_rejects_unknown():
    thr = resolve_thresholds(["frog", "bird"], {"frog": 0.3, "bird": 0.6}, {"bird": 0.8})
    assert thr == {"frog": 0.3, "bird": 0.8}
    with pytest.raises(MonitorError, match="unknown label 'owl'"):
        resolve_thresholds(["frog"], {"frog": 0.5}, {"owl": 0.2})
    # later overrides win; `all` sets every label before the named ones
    thr = resolve_thresholds(["frog", "bird", "owl"], {"frog": 0.3, "bird": 0.6, "owl": 0.1}, {"frog": 0.9},
                             {"all": 0.4, "owl": 0.7})
    assert thr == {"frog": 0.4, "bird": 0.4, "owl": 0.7}
    with pytest.raises(MonitorError, match="no threshold for label 'bird'"):
        resolve_thresholds(["frog", "bird"], {"frog": 0.5})


def test_label_names_case_insensitive_and_typos_name_close_matches():
    labels = ["Frog", "Bird", "Bird vocalization, bird call, bird song", "Croak"]
    assert match_label("frog", labels) == "Frog" and match_label("Frog", labels) == "Frog"
    with pytest.raises(MonitorError, match="did you mean 'Frog'"):
        match_label("Frgo", labels)
    with pytest.raises(MonitorError, match="the model's labels are"):
        match_label("zzzz", labels)


def test_detections_table_wall_clock_device_and_deployments():
    seg = pd.DataFrame({
        "deployment": ["D1"] * 3 + ["D1"] * 2 + ["D2"] * 2,
        "file": ["b.wav"] * 3 + ["a.wav"] * 2 + ["a.wav"] * 2,
        "segment": [0, 1, 2, 0, 1, 0, 1],
        "start_s": [0.0, 10.0, 20.0, 0.0, 10.0, 0.0, 10.0],
        "end_s": [10.0, 20.0, 30.0, 10.0, 20.0, 10.0, 20.0],
        "frog": [0.2, 0.9, 0.8, 0.7, 0.1, 0.1, 0.6],
    })
    rec = pd.DataFrame({"deployment": ["D1", "D1", "D2"], "file": ["a.wav", "b.wav", "a.wav"],
                        "start_time": ["", "2023-04-05T19:02:00-07:00", "2023-04-06T20:00:00+00:00"],
                        "device_id": ["", "24E144055E080032", "X"]})
    det = detections_table(seg, apply_thresholds(seg[["frog"]].to_numpy(), ["frog"], {"frog": 0.5}), rec, ["frog"])
    assert list(det.columns) == ["deployment", "file", "label", "start_s", "end_s", "start_time", "end_time",
                                 "score_max", "score_mean", "segments", "device_id"]
    assert list(zip(det["deployment"], det["file"])) == [("D1", "a.wav"), ("D1", "b.wav"), ("D2", "a.wav")]
    b = det.iloc[1]
    assert (b.start_s, b.end_s, b.segments) == (10.0, 30.0, 2)
    assert b.start_time == "2023-04-05T19:02:10-07:00"
    assert b.end_time == "2023-04-05T19:02:30-07:00"
    assert b.device_id == "24E144055E080032"
    assert det.iloc[0].start_time == ""  # unknown start: no guessed wall clock
    # the same file name in another deployment is another recording, with its own clock
    d2 = det.iloc[2]
    assert (d2.start_s, d2.device_id, d2.start_time) == (10.0, "X", "2023-04-06T20:00:10+00:00")
