"""Resume at any moment (issue 16.2): ``monitor train`` killed with SIGKILL mid-epoch and resumed gives
bit-identical weights, ``steps.csv`` without duplicate steps and a ``train.log`` cut back to the
checkpoint; ``--resume`` before any checkpoint starts the run and says so; a finished run is never
trained over. The CLI runs as a subprocess, as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

FROG = ["eastern-cricket-frog__eastern-cricket-frog-1.mp3", "american-bullfrog__american-bullfrog-2.mp3",
        "coastal-plains-leopard-frog__coastal-plains-leopard-frog-1.wav"]


@pytest.fixture(scope="module")
def recipe(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("recover")
    for name in FROG:
        (root / "data" / "frog").mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "data" / "clips" / "frog" / name, root / "data" / "frog" / name)
    for p in sorted((shared / "data" / "clips" / "bird").glob("*.flac"))[:3]:
        (root / "data" / "bird").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "data" / "bird" / p.name)
    cfg = root / "r.yaml"
    cfg.write_text(
        f"data:\n  source: folders\n  root: {root / 'data'}\n  cache_dir: {root / 'cache'}\n  max_per_label: 8\n"
        "split:\n  val_fraction: 0.3\n"
        "model:\n  size: tiny224\n  depth: 1\n  fstride: 16\n  tstride: 16\n  init: scratch\n  drop_path_rate: 0.1\n"
        "augment:\n  freqm: 20\n  timem: 40\n  mixup: 0.5\n  noise: true\n  gain_db: 3.0\n"
        "optim:\n  epochs: 2\n  batch_size: 2\n  lr: 0.0005\n  warmup_fraction: 0.2\n  scheduler: cosine\n"
        "  device: cpu\n  checkpoint_every_s: 0\n"
        "loss:\n  balanced_sampling: true\n"
        "segment:\n  window_s: 5.0\n  hop_s: 5.0\n  min_segment_s: 2.0\nfbank:\n  target_frames: 512\n")
    return cfg


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train(cfg, out, *extra, timeout=300):
    return subprocess.run([sys.executable, "-m", "monitor", "train", str(cfg), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def straight(recipe, tmp_path_factory):
    """An uninterrupted run, started with --resume on an empty folder (a notebook cell's first run)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    res = _train(recipe, out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_resume_without_checkpoint_starts_and_says_so(straight):
    out, res = straight
    assert "no checkpoint" in res.stderr and "starting the run" in res.stderr
    # per-epoch metrics on the console without -v, and a log file free of third-party DEBUG noise
    assert "epoch 1/2:" in res.stderr and "epoch 2/2:" in res.stderr
    log = (out / "train.log").read_text()
    assert "epoch 2/2:" in log and "matplotlib" not in log and "findfont" not in log
    assert (out / "learning_curve.png").is_file()  # matplotlib did run
    assert (out / "bundle" / "bundle.json").is_file() and not (out / "checkpoints").exists()  # resume state dropped


def test_finished_run_is_never_trained_over(recipe, straight):
    out, _ = straight
    again = _train(recipe, out)
    assert again.returncode == 2 and "finished training run" in again.stderr
    resumed = _train(recipe, out, "--resume")
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stderr
    assert resumed.stdout.startswith("bundle: ")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(recipe, straight, tmp_path):
    ref, _ = straight
    n_steps = len(pd.read_csv(ref / "steps.csv"))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "train", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    steps = out / "steps.csv"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill once a few steps of epoch 1 are checkpointed
            if steps.is_file() and len(steps.read_text().splitlines()) - 1 >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = len(steps.read_text().splitlines()) - 1
    assert 3 <= done < n_steps // 2 + 2, done  # killed in epoch 1
    assert (out / "checkpoints" / "last.pt").is_file()
    assert not (out / "bundle").exists()
    refused = _train(recipe, out)  # never overwritten without --resume
    assert refused.returncode == 2 and "--resume" in refused.stderr
    res = _train(recipe, out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed at epoch 1" in res.stderr
    got = pd.read_csv(out / "steps.csv")
    assert got["step"].tolist() == list(range(n_steps))  # no duplicate step ids
    want = pd.read_csv(ref / "steps.csv")
    assert got["loss"].tolist() == want["loss"].tolist()
    w1 = (ref / "bundle" / "model.safetensors").read_bytes()
    w2 = (out / "bundle" / "model.safetensors").read_bytes()
    assert w1 == w2  # bit-identical weights
    log = (out / "train.log").read_text()
    assert log.count("epoch 1/2:") == 1 and log.count("epoch 2/2:") == 1
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2]
