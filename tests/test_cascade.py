"""Screening (issue 28): ``monitor distill`` makes a student with a screen section, ``monitor run --screen`` lets
it screen for its teacher. The real CLI in subprocesses, a tiny random teacher (thresholds put at its own score
quantiles so it has positives) and the student distilled from it.

The cascade's positive segments are a subset of the teacher-only run's, its teacher scores equal the teacher's
bit for bit, student-only rows are never detections (whatever the thresholds), the screen is named in
``run.json``, a student of another teacher is refused in one line, the Ray engine gives the local engine's
results, and a run killed midway and resumed equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav
from test_hardening import _wait_for_ok_files
from test_run_e2e import _cli

LABELS = ["frog", "bird"]


def _card(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        tone = None if i % 3 == 0 else float(rng.uniform(300, 5000))
        write_wav(root / f"2024050{1 + i // 10}_{19 + i % 5:02d}{i:02d}00.WAV", 30.0, 16000, freq_hz=tone,
                  amplitude=float(rng.uniform(0.05, 0.4)), noise=float(rng.uniform(0.01, 0.2)), seed=seed * 100 + i)
    return root


def _segment_features(card: Path, pre) -> np.ndarray:
    from monitor.decode import decode_task
    from monitor.discover import discover
    from monitor.plan import job_from_path, plan_batches

    jobs = [job_from_path(f.path, f.rel) for f in discover(card).recordings]
    plan = plan_batches(jobs, pre, 8)
    return np.concatenate([decode_task(t, pre).data for t in plan.tasks])


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cards")
    return _card(root / "AUDIO", 10, 1), _card(root / "CARD", 6, 2)


@pytest.fixture(scope="module")
def teacher(cards, tmp_path_factory) -> Path:
    """A random tiny AST whose thresholds sit at its own 60th score percentile on the distillation audio."""
    import torch

    from monitor.config import Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(3)
    model = AST(label_dim=2, fstride=16, tstride=16, input_fdim=128, input_tdim=1024, model_size="tiny224",
                depth=1).eval()
    pre = Preprocess()
    with torch.inference_mode():
        p = torch.sigmoid(model(torch.from_numpy(_segment_features(cards[0], pre)))).numpy()
    thr = {lab: float(np.quantile(p[:, j], 0.6)) for j, lab in enumerate(LABELS)}
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    save_bundle(out, model, name="tiny-teacher", version="1.0.0", labels=LABELS, task="multilabel",
                preprocessing=pre, thresholds=thr)
    return out


@pytest.fixture(scope="module")
def distilled(cards, teacher, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("distill") / "RUN"
    res = _cli("distill", str(teacher), "--audio", str(cards[0]), "--out", str(run), "--depth", "1", "--epochs", "3",
               "--batch-size", "4", "--held-out", "0.4")
    assert res.returncode == 0, res.stderr
    return run, res


@pytest.fixture(scope="module")
def screen(distilled, cards, tmp_path_factory) -> Path:
    """The distilled student with its screen thresholds at its own median on the card: about half the segments
    escalate, so both kinds of row are there (the distilled thresholds may escalate all or none of a tiny card)."""
    import torch

    from monitor.cascade import screen_precision
    from monitor.infer import Scorer, prepare_models
    from monitor.model.bundle import load_bundle

    b = load_bundle(distilled[0] / "bundle")
    prec = screen_precision("auto", "cpu")
    nets, prec = prepare_models([b], "cpu", prec)
    feats = _segment_features(cards[1], b.preprocessing)
    with torch.inference_mode():
        s = Scorer([b], nets, "cpu", prec, 4)(feats)
    out = tmp_path_factory.mktemp("screen") / "half"
    shutil.copytree(b.path, out)
    data = json.loads((out / "bundle.json").read_text())
    data["screen"]["thresholds"] = {lab: float(np.median(s[:, j])) for j, lab in enumerate(b.labels)}
    (out / "bundle.json").write_text(json.dumps(data, indent=2))
    return out


def _run(card: Path, out: Path, teacher: Path, *extra: str) -> subprocess.CompletedProcess:
    res = _cli("run", str(card), "--out", str(out), "--model", str(teacher), "--batch-size", "4", "--workers", "0",
               *extra)
    assert res.returncode == 0, res.stderr
    return res


def _scores(out: Path) -> dict[tuple[str, int], tuple[bytes, str]]:
    con = sqlite3.connect(out / "monitor.sqlite")
    try:
        return {(f, i): (blob, by) for f, i, blob, by in
                con.execute("SELECT file, segment, scores, scored_by FROM segments ORDER BY file, segment")}
    finally:
        con.close()


@pytest.fixture(scope="module")
def runs(cards, teacher, screen, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    _run(cards[1], root / "teacher", teacher)
    _run(cards[1], root / "cascade", teacher, "--screen", str(screen))
    return root / "teacher", root / "cascade"


def test_distill_writes_a_student_bundle_with_a_screen(distilled, teacher):
    from monitor.model.bundle import load_bundle

    run, res = distilled
    t, b = load_bundle(teacher), load_bundle(run / "bundle")
    sc = b.screen
    assert sc["teacher"] == {"name": "tiny-teacher", "version": "1.0.0", "sha256": t.sha256}
    assert b.labels == LABELS and b.preprocessing == t.preprocessing and sc["target_recall"] == 0.99
    assert b.architecture.depth == 1 and (b.architecture.fstride, b.architecture.tstride) == (16, 16)
    assert set(sc["thresholds"]) == set(LABELS) and all(0 < v <= 1 for v in sc["thresholds"].values())
    assert 0 < sc["escalation"] <= 1 and sc["validation"]["files"] == 4  # 40 % of 10 recordings held out
    assert (run / "teacher" / "monitor.sqlite").is_file() and (run / "distill.json").is_file()
    assert "screen thresholds" in res.stderr and "--screen" in res.stderr
    info = _cli("models", "info", str(run / "bundle"))
    assert info.returncode == 0 and "screen for teacher tiny-teacher" in info.stdout


def test_screen_recall_is_measured_on_held_out_recordings(distilled, teacher):
    """Recomputed from the held-out scores the run wrote: the final thresholds keep >= 99 % of the teacher's
    positive held-out segments, on the student's fp32 scores and on its int8 ones (thresholds fit both), and the
    escalation recorded is at least what either path escalates."""
    from monitor.model.bundle import load_bundle

    run, _ = distilled
    b, t = load_bundle(run / "bundle"), load_bundle(teacher)
    sc = b.screen
    df = pd.read_csv(run / "heldout_scores.csv")
    assert df.recording.nunique() == sc["validation"]["files"] and len(df) == sc["validation"]["segments"]
    cols = [c for c in ("student", "student_int8") if f"{c}_frog" in df]
    assert cols[0] == "student"
    for col in cols:
        esc = np.zeros(len(df), bool)
        for lab in LABELS:
            pos = (df[f"teacher_{lab}"] >= t.thresholds[lab]).to_numpy()
            kept = (df[f"{col}_{lab}"] >= sc["thresholds"][lab]).to_numpy()
            esc |= kept
            assert int(pos.sum()) == sc["validation"]["teacher_positives"][lab]
            if pos.any():  # thresholds were fit on min(fp32, int8): each path keeps at least that much
                assert kept[pos].mean() >= max(0.99, sc["validation"]["recall_with_final_thresholds"][lab]) - 1e-9
        assert esc.mean() <= sc["escalation"] + 1e-9  # the escalation recorded is the larger path's
    # the recall recorded was measured with thresholds chosen on the other half of the held-out recordings
    assert set(sc["recall"]) == set(LABELS) and "other" in sc["validation"]["how"]


def test_distill_resumes_from_its_cache(distilled, teacher, cards):
    run, _ = distilled
    res = _cli("distill", str(teacher), "--audio", str(cards[0]), "--out", str(run), "--depth", "1", "--epochs", "3",
               "--batch-size", "4", "--held-out", "0.4")
    assert res.returncode == 0, res.stderr
    assert "teacher scores of 10 files already cached" in res.stderr
    assert "the teacher scores" not in res.stderr


def test_cascade_detections_are_a_subset_of_the_teachers(runs, teacher):
    full, cas = runs
    a, b = _scores(full), _scores(cas)
    assert a.keys() == b.keys()
    by = {k: v[1] for k, v in b.items()}
    escalated = [k for k, v in by.items() if v == ""]
    assert 0 < len(escalated) < len(by)  # both kinds of row
    for k in escalated:
        assert b[k][0] == a[k][0], k  # the teacher's scores, bit for bit
    info = json.loads((cas / "run.json").read_text())
    thr = info["thresholds"]
    seg_t, seg_c = pd.read_csv(full / "segments.csv"), pd.read_csv(cas / "segments.csv")
    assert "scored_by" not in seg_t and set(seg_c.scored_by) == {"tiny-teacher", "tiny-teacher-screen"}
    pos_t = {(r.file, r.segment, lab) for r in seg_t.itertuples() for lab in LABELS if getattr(r, lab) >= thr[lab]}
    pos_c = {(r.file, r.segment, lab) for r in seg_c.itertuples() for lab in LABELS
             if getattr(r, lab) >= thr[lab] and r.scored_by == "tiny-teacher"}
    assert pos_c <= pos_t and pos_c
    det_t, det_c = pd.read_csv(full / "detections.csv"), pd.read_csv(cas / "detections.csv")
    for r in det_c.itertuples():  # every cascade event lies inside an event of the teacher alone
        same = det_t[(det_t.file == r.file) & (det_t.label == r.label)]
        assert ((same.start_s <= r.start_s + 1e-6) & (same.end_s >= r.end_s - 1e-6)).any()
    sc = info["screen"]
    assert sc["name"] == "tiny-teacher-screen" and set(sc["thresholds"]) == set(LABELS)
    assert sc["segments_screened"] == len(by) and sc["segments_escalated"] == len(escalated)
    assert sc["escalated_fraction"] == pytest.approx(len(escalated) / len(by), abs=1e-6)
    assert "recall" in sc and sc["target_recall"] == 0.99
    ri = pd.read_excel(cas / "report.xlsx", sheet_name="Run info")
    assert any(str(k).startswith("screen") for k in ri.Key)


def test_student_only_rows_are_never_detections(runs, tmp_path):
    _, cas = runs
    out = tmp_path / "copy"
    shutil.copytree(cas, out)
    res = _cli("report", str(out), "--threshold", "all=0")
    assert res.returncode == 0, res.stderr
    seg = pd.read_csv(out / "segments.csv")
    det = pd.read_csv(out / "detections.csv")
    teacher_rows = seg[seg.scored_by == "tiny-teacher"]
    covered = {(r.file, s) for r in det.itertuples() for s in seg[(seg.file == r.file) & (seg.start_s >= r.start_s)
                                                                   & (seg.end_s <= r.end_s + 1e-6)].segment}
    assert covered == {(r.file, r.segment) for r in teacher_rows.itertuples()}


def test_a_student_of_another_teacher_is_refused(cards, screen, tmp_path):
    res = _cli("run", str(cards[1]), "--out", str(tmp_path / "out"), "--screen", str(screen))  # the demo model
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()
    assert len(line) == 1 and "was distilled from tiny-teacher" in line[0] and "monitor distill" in line[0]
    assert not (tmp_path / "out").exists()


def test_killed_and_resumed_equals_uninterrupted(runs, cards, teacher, screen, tmp_path):
    _, cas = runs
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MONITOR_SCREEN_CHUNK_SEGMENTS="3")  # one file per chunk
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(cards[1]), "--out", str(out), "--model",
                             str(teacher), "--screen", str(screen), "--batch-size", "4", "--workers", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = _wait_for_ok_files(proc, out, 2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= done < 6
    _run(cards[1], out, teacher, "--screen", str(screen))
    assert _scores(out) == _scores(cas)
    for name in ("segments.csv", "detections.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(cas / name), check_exact=True)


def test_ray_engine_equals_local(runs, cards, teacher, screen, tmp_path):
    pytest.importorskip("ray", reason="the Ray engine needs ray")
    _, cas = runs
    out = tmp_path / "ray"
    res = _cli("run", str(cards[1]), "--out", str(out), "--model", str(teacher), "--screen", str(screen),
               "--batch-size", "4", "--engine", "ray", timeout=600)
    assert res.returncode == 0, res.stderr
    assert _scores(out) == _scores(cas)
    pd.testing.assert_frame_equal(pd.read_csv(out / "segments.csv"), pd.read_csv(cas / "segments.csv"),
                                  check_exact=True)


def test_a_screen_for_an_ensemble_teacher(teacher, screen, tmp_path):
    """Several --model (or an ensemble bundle) are one teacher: a screen records the ensemble's identity, so it
    serves that ensemble, in any order, and no single member of it."""
    from monitor.cascade import load_screen
    from monitor.errors import MonitorError
    from monitor.model.ensemble import load_ensemble

    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    data = json.loads((other / "bundle.json").read_text())
    data["name"] = "tiny-teacher-2"
    (other / "bundle.json").write_text(json.dumps(data))
    both = load_ensemble([str(teacher), str(other)])
    ens = tmp_path / "ens-screen"
    shutil.copytree(screen, ens)
    data = json.loads((ens / "bundle.json").read_text())
    data["screen"]["teacher"] = {"name": "tiny-teacher + tiny-teacher-2", "version": "1.0.0", "sha256": both.sha256}
    (ens / "bundle.json").write_text(json.dumps(data))
    assert load_screen(str(ens), load_ensemble([str(other), str(teacher)])).screen["teacher"]["sha256"] == both.sha256
    with pytest.raises(MonitorError, match="was distilled from tiny-teacher \\+ tiny-teacher-2"):
        load_screen(str(ens), load_ensemble([str(teacher)]))
    with pytest.raises(MonitorError, match="is not a screen"):
        load_screen(str(teacher), load_ensemble([str(teacher)]))
