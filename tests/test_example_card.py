"""The README's main job: `monitor run examples/sdcard` with the bundled default model, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

CARD = REPO / "examples" / "sdcard"
FROG = "AM-POND/20240412_211500.WAV"
BIRD = "AM-POND/20240413_060000.WAV"


def _monitor(*args, timeout=600):
    env = dict(os.environ, MONITOR_CACHE="/nonexistent-cache")  # nothing but the repo: offline, bundled model
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "example"
    res = _monitor("run", "examples/sdcard", "--out", str(out))  # the README's command, output in tmp
    assert res.returncode == 0, res.stderr
    return out


def test_default_model_is_bundled_and_listed():
    res = _monitor("models", "list")
    assert res.returncode == 0 and "demo-frog-bird (default)" in res.stdout
    card = (REPO / "models" / "demo-frog-bird" / "model_card.md").read_text()
    for must in ("demonstration", "non-commercial", "monitor models pull audioset-10-10", "mAP"):
        assert must.lower() in card.lower(), must
    size = sum(p.stat().st_size for p in (REPO / "models" / "demo-frog-bird").iterdir())
    assert size < 12e6


def test_every_file_listed_and_report_written(example_run):
    rec = pd.read_csv(example_run / "recordings.csv", keep_default_na=False)
    on_card = sorted(p.relative_to(CARD).as_posix() for p in CARD.rglob("*") if p.is_file())
    assert sorted(rec.file) == on_card
    status = dict(zip(rec.file, rec.status))
    assert status["AM-POND/CONFIG.TXT"] == "skipped" and status["SM4-MEADOW/S4A03895_20190522_100000.wav"] == "skipped"
    assert status["AM-POND/._20240412_211500.WAV"] == "skipped"
    assert sum(s == "ok" for s in status.values()) == 6
    for name in ("report.xlsx", "detections.csv", "segments.csv", "run.json"):
        assert (example_run / name).is_file()
    info = json.loads((example_run / "run.json").read_text())
    assert info["model"]["name"] == "demo-frog-bird"


def test_frog_and_bird_recordings_detected_at_bundle_thresholds(example_run):
    det = pd.read_csv(example_run / "detections.csv", keep_default_na=False)
    assert "frog" in set(det[det.file == FROG].label)
    assert "bird" in set(det[det.file == BIRD].label)
    frog = det[(det.file == FROG) & (det.label == "frog")].iloc[0]
    assert frog.start_time.startswith("2024-04-12T21:15") and frog.start_time.endswith("-04:00")
    assert frog.device_id == "24E144055E080032"
    summary = pd.read_excel(example_run / "report.xlsx", sheet_name="Summary")
    row = summary[(summary["File Name"] == FROG) & (summary["Label"] == "frog")].iloc[0]
    assert row["Prediction"] == "Positive" and row["Times Heard"].startswith("21:15")


@pytest.mark.slow
def test_demo_recipe_trains_shortened(tmp_path):
    res = _monitor("train", "configs/demo.yaml", "--out", str(tmp_path / "demo"), "--set", "optim.epochs=1",
                   "--set", "data.max_per_label=6", "--set", "data.cache_dir=null", "--set", "model.depth=1",
                   "--set", "optim.warmup_steps=0", timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    bundle = json.loads((tmp_path / "demo" / "bundle" / "bundle.json").read_text())
    assert bundle["labels"] == ["bird", "frog"] and bundle["name"] == "demo-frog-bird"
    assert (tmp_path / "demo" / "bundle" / "model_card.md").is_file()


def test_demo_model_benchmark_scores_bundle_and_baseline_on_the_recipe_split():
    """benchmarks/demo_model.py: the bundled model and the linear baseline on the recipe's own split."""
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_model.py"), "configs/demo.yaml",
                          "--set", "data.max_per_label=20", "--set", "data.cache_dir=null"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "29 train / 11 validation segments" in res.stdout
    rows = {ln.split("|")[1].strip(): float(ln.split("|")[3]) for ln in res.stdout.splitlines()
            if ln.startswith("| ") and "scorer" not in ln}
    assert len(rows) == 4 and "demo-frog-bird" in rows, res.stdout
    assert all(0.8 <= auc <= 1.0 for name, auc in rows.items() if name != "demo-frog-bird"), rows  # easy subset
    assert res.stdout.strip().splitlines()[-1].startswith("demo: demo-frog-bird mAP ")
