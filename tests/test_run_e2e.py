"""End to end: the real CLI in a subprocess on generated recordings with a tiny bundle made here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav

LABELS = ["frog", "bird"]


def _cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real (random-weight) tiny AST bundle: tiny224 geometry, 1 block, stride 16, 1024 frames."""
    import torch

    from monitor.config import BandConfig, Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    model = AST(label_dim=2, fstride=16, tstride=16, input_fdim=128, input_tdim=1024,
                model_size="tiny224", depth=1)
    pre = Preprocess(band=BandConfig(low_hz=200.0, high_hz=6000.0))
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(out, model, name="tiny-test", version="0.0.1", labels=LABELS, task="multilabel",
                preprocessing=pre, thresholds={"frog": 0.5, "bird": 0.5}, provenance={"test": True})
    return out


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card") / "SDCARD"
    write_wav(root / "dev1" / "20240903_193130.WAV", 25.0, 16000, freq_hz=800, noise=0.05, seed=1)
    write_wav(root / "dev1" / "20240903_200000.WAV", 20.5, 48000, channels=2, freq_hz=2000, noise=0.05, seed=2)
    write_wav(root / "dev2" / "S4A03895_20190522_060000.wav", 5.0, 22050, freq_hz=None, noise=0.1, seed=3)
    write_wav(root / "dev2" / "short.wav", 0.5, 16000)
    (root / "dev1" / "._20240903_193130.WAV").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 100)
    (root / "dev1" / "EMPTY.WAV").write_bytes(b"")
    (root / "notes.txt").write_text("deployed 3 Sept")
    (root / "dev2" / "broken.wav").write_text("this is not audio")
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(card: Path, out: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("run", str(card), "--out", str(out), "--model", str(bundle), "--batch-size", "4", *extra)


@pytest.fixture(scope="module")
def run0(card, tiny_bundle, tmp_path_factory):
    before = _tree_digest(card)
    out = tmp_path_factory.mktemp("out0")
    res = _run(card, out, tiny_bundle, "--workers", "0")
    assert res.returncode == 0, res.stderr
    assert _tree_digest(card) == before, "the input folder must never change"
    return out, res


def test_run_lists_every_file_with_status(run0):
    out, res = run0
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    assert list(rec.columns[:17]) == ["deployment", "file", "status", "reason", "recorder", "device_id",
                                      "deployment_id", "firmware", "start_time", "utc_offset", "temperature_c",
                                      "battery_v", "gain", "sample_rate_hz", "channels", "duration_s", "segments"]
    # no recorder IDs in these files: the deployment is the card's top folder (or the card, at its root)
    assert dict(zip(rec.file, rec.deployment))["dev1/20240903_193130.WAV"] == "dev1"
    assert dict(zip(rec.file, rec.deployment))["notes.txt"] == "SDCARD"
    status = dict(zip(rec.file, rec.status))
    assert status == {
        "dev1/20240903_193130.WAV": "ok",
        "dev1/20240903_200000.WAV": "ok",
        "dev2/S4A03895_20190522_060000.wav": "ok",
        "dev2/short.wav": "skipped",
        "dev1/._20240903_193130.WAV": "skipped",
        "dev1/EMPTY.WAV": "skipped",
        "notes.txt": "skipped",
        "dev2/broken.wav": "failed",
    }
    reasons = dict(zip(rec.file, rec.reason))
    assert "too short" in reasons["dev2/short.wav"]
    assert all(reasons[f] for f, s in status.items() if s != "ok")
    assert "Traceback" not in res.stderr
    assert "8 files: 3 ok, 4 skipped, 1 failed" in res.stdout


def test_segments_counts_times_and_order(run0):
    out, _ = run0
    seg = pd.read_csv(out / "segments.csv", keep_default_na=False)
    assert list(seg.columns) == ["deployment", "file", "segment", "start_s", "end_s", "start_time", *LABELS]
    counts = seg.groupby("file").size().to_dict()
    assert counts == {"dev1/20240903_193130.WAV": 3, "dev1/20240903_200000.WAV": 2,
                      "dev2/S4A03895_20190522_060000.wav": 1}
    a = seg[seg.file == "dev1/20240903_193130.WAV"]
    assert a.segment.tolist() == [0, 1, 2]
    assert a.start_s.tolist() == [0.0, 10.0, 20.0]
    assert a.end_s.tolist() == [10.0, 20.0, 25.0]
    assert seg[LABELS].to_numpy().min() >= 0 and seg[LABELS].to_numpy().max() <= 1
    # different audio gives different scores (the model really ran on each segment)
    assert seg[LABELS].drop_duplicates().shape[0] > 1


def test_detections_match_segments_and_thresholds(run0, tiny_bundle, tmp_path):
    out, _ = run0
    seg = pd.read_csv(out / "segments.csv", keep_default_na=False)
    # pick a threshold that splits the scores, rebuild reports without re-running the model
    thr = float(np.median(seg["frog"]))
    res = _cli("report", str(out), "--threshold", f"frog={thr}", "--threshold", "bird=1.0")
    assert res.returncode == 0, res.stderr
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    assert list(det.columns) == ["deployment", "file", "label", "start_s", "end_s", "start_time", "end_time",
                                 "score_max", "score_mean", "segments", "device_id", "verified", "notes"]
    assert set(det.label) <= {"frog"}
    expected = []
    for f, g in seg.sort_values(["file", "segment"]).groupby("file"):
        run = []
        for _, r in g.iterrows():
            if r.frog >= thr:
                run.append(r)
            elif run:
                expected.append((f, run[0].start_s, run[-1].end_s, len(run)))
                run = []
        if run:
            expected.append((f, run[0].start_s, run[-1].end_s, len(run)))
    got = [(r.file, r.start_s, r.end_s, r.segments) for r in det.itertuples()]
    assert got == expected
    info = json.loads((out / "run.json").read_text())
    assert info["thresholds"] == {"frog": thr, "bird": 1.0}
    # everything positive: one event per file spanning it, merged across segment boundaries
    assert _cli("report", str(out), "--threshold", "frog=0", "--threshold", "bird=1").returncode == 0
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    span = {r.file: (r.start_s, r.end_s, r.segments) for r in det.itertuples()}
    assert span["dev1/20240903_193130.WAV"] == (0.0, 25.0, 3)
    assert span["dev1/20240903_200000.WAV"] == (0.0, 20.0, 2)  # the 0.5 s tail is under min_segment_s


def test_run_json_and_outputs(run0, tiny_bundle):
    out, _ = run0
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["name"] == "tiny-test" and len(info["model"]["sha256"]) == 64
    assert info["labels"] == LABELS
    assert info["counts"]["ok"] == 3 and info["counts"]["failed"] == 1 and info["counts"]["segments"] == 6
    assert info["preprocessing"]["band"]["low_hz"] == 200.0
    for name in ("report.xlsx", "recordings.csv", "segments.csv", "detections.csv", "monitor.log"):
        assert (out / name).is_file(), name


def test_workers_two_gives_identical_outputs(run0, card, tiny_bundle, tmp_path):
    out0, _ = run0
    res = _run(card, tmp_path / "out2", tiny_bundle, "--workers", "2")
    assert res.returncode == 0, res.stderr
    a = pd.read_csv(out0 / "segments.csv", keep_default_na=False)
    b = pd.read_csv(tmp_path / "out2" / "segments.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_resume_after_interruption_equals_full_run(run0, card, tiny_bundle, tmp_path):
    """Simulate an interruption: the store lost the last file; the re-run redoes only that file."""
    import sqlite3

    out0, _ = run0
    out = tmp_path / "resume"
    assert _run(card, out, tiny_bundle, "--workers", "0").returncode == 0
    db = sqlite3.connect(out / "monitor.sqlite")
    with db:
        db.execute("DELETE FROM segments WHERE file='dev2/S4A03895_20190522_060000.wav'")
        db.execute("DELETE FROM files WHERE file='dev2/S4A03895_20190522_060000.wav'")
    db.close()
    res = _run(card, out, tiny_bundle, "--workers", "0")
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["resumed_files"] == 3  # two finished ok files + the too-short one; failed files are retried
    a = pd.read_csv(out0 / "segments.csv", keep_default_na=False)
    b = pd.read_csv(out / "segments.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_output_inside_input_is_refused(card, tiny_bundle):
    before = _tree_digest(card)
    res = _run(card, card / "out", tiny_bundle)
    assert res.returncode == 2
    assert "inside the input folder" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _tree_digest(card) == before and not (card / "out").exists()


def test_missing_input_and_bad_model_fail_in_one_line(tmp_path, card):
    res = _cli("run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "input folder not found" in res.stderr
    bad = tmp_path / "badbundle"
    bad.mkdir()
    (bad / "bundle.json").write_text("{}")
    res = _cli("run", str(card), "--out", str(tmp_path / "o2"), "--model", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
