"""Training on a small subset of the real labelled clips (../shared/data/clips) with a tiny AST:
loss goes down, metrics computed, grouped splits disjoint, --resume continues exactly, and the
exported bundle gives the trainer's own validation scores through ``monitor run``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from monitor.train.cli import train
from monitor.train.config import build_config

FROG = ["coastal-plains-leopard-frog__coastal-plains-leopard-frog-1.wav",  # WAV
        "eastern-cricket-frog__eastern-cricket-frog-1.mp3",
        "green-treefrog__green-treefrog-2.mpga",  # MP3 with an unusual extension
        "squirrel-treefrog__squirrel-treefrog-5.mp3",
        "eastern-narrowmouth-toad__eastern-narrowmouth-toad-3.mp3",
        "american-bullfrog__american-bullfrog-2.mp3"]
N_BIRD = 6


@pytest.fixture(scope="module")
def clips(shared, tmp_path_factory):
    """6 frog + 6 bird clips copied into data/<label>/, and a shared fbank cache."""
    root = tmp_path_factory.mktemp("clips")
    for name in FROG:
        (root / "data" / "frog").mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "data" / "clips" / "frog" / name, root / "data" / "frog" / name)
    for p in sorted((shared / "data" / "clips" / "bird").glob("*.flac"))[:N_BIRD]:
        (root / "data" / "bird").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "data" / "bird" / p.name)
    return root


def recipe(clips, **sections):
    raw = {
        "data": {"source": "folders", "root": str(clips / "data"), "cache_dir": str(clips / "cache")},
        "split": {"val_fraction": 0.34, "seed": 0},
        "model": {"size": "tiny224", "depth": 2, "fstride": 16, "tstride": 16, "init": "scratch"},
        "augment": {"freqm": 24, "timem": 60, "mixup": 0.5, "noise": True, "gain_db": 3.0},
        "optim": {"lr": 5e-4, "epochs": 2, "batch_size": 2, "accum_steps": 2, "warmup_steps": 2,
                  "scheduler": "cosine", "device": "cpu"},
        "loss": {"kind": "bce", "balanced_sampling": True},
        "eval": {"batch_size": 8},
        "segment": {"window_s": 5.0, "hop_s": 5.0, "min_segment_s": 2.0},
        "fbank": {"target_frames": 512},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return build_config(raw)


@pytest.fixture(scope="module")
def run_a(clips, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run_a")
    res = train(recipe(clips), out, name="clips-test", progress=False)
    return out, res


def test_loss_goes_down_when_overfitting(clips, tmp_path):
    from monitor.train.fit import fit
    from monitor.train.sources import from_folders

    torch.set_num_threads(1)
    cfg = recipe(clips, augment={"freqm": 0, "timem": 0, "mixup": 0.0, "noise": False, "gain_db": 0.0},
                 optim={"lr": 1e-3, "epochs": 10, "batch_size": 8, "accum_steps": 1, "warmup_steps": 0,
                        "scheduler": "constant"}, loss={"balanced_sampling": False})
    table, labels = from_folders(clips / "data", cfg.segment)
    table = pd.concat([table[table["labels"] == ("frog",)].head(4), table[table["labels"] == ("bird",)].head(4)])
    table = table.reset_index(drop=True)
    res = fit(cfg, tmp_path, table=table, labels=labels, split=["train"] * 8, progress=False)
    losses = res.step_losses
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


def test_metrics_splits_and_run_outputs(run_a):
    out, res = run_a
    hist = pd.read_csv(out / "metrics.csv")
    assert hist["epoch"].tolist() == [1, 2]
    for col in ("train_loss", "val_loss", "mAP", "mAUC", "d_prime", "accuracy", "exact_match", "macro_f1"):
        assert np.isfinite(hist[col]).all(), col
    sp = pd.read_csv(out / "splits.csv", keep_default_na=False)
    by_group = sp.groupby("group")["split"].nunique()
    assert (by_group == 1).all()  # a recording never in two splits
    assert set(sp["split"]) == {"train", "val"}
    val_labels = set(sp.loc[sp["split"] == "val", "labels"])
    assert {"frog", "bird"} <= val_labels  # stratified: both classes validated
    steps = pd.read_csv(out / "steps.csv")
    n_train = int((sp["split"] == "train").sum())
    assert len(steps) == len(res["result"].step_losses) == 2 * -(-n_train // 4)  # 2 epochs of (2 x 2)-segment steps
    assert steps["lr"].iloc[1] == pytest.approx(5e-4)  # warmup reaches the base LR
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    prov = meta["provenance"]
    assert prov["data"]["per_label"] == {"bird": 16, "frog": 9}
    assert prov["splits"]["counts"]["train"] + prov["splits"]["counts"]["val"] == 25
    assert 0 <= prov["metrics"]["summary"]["mAP"] <= 1 and prov["config"]["optim"]["epochs"] == 2
    assert meta["preprocessing"]["fbank"]["norm_mean"] == json.loads((out / "norm_stats.json").read_text())["mean"]
    assert set(meta["thresholds"]) == {"bird", "frog"}
    card = (out / "bundle" / "model_card.md").read_text()
    assert "frog" in card and "Intended use" in card
    for f in ("learning_curve.png", "pr_curve.png", "config.yaml", "val_scores.csv", "val_per_label.csv"):
        assert (out / f).stat().st_size > 0, f


def test_resume_continues_exactly(clips, run_a, tmp_path):
    out_a, res_a = run_a
    torch.set_num_threads(1)
    cfg = recipe(clips)
    part = train(cfg, tmp_path, name="clips-test", progress=False, stop_after_steps=3)  # mid-epoch 1
    assert part["result"].interrupted and len(part["result"].step_losses) == 3
    res_b = train(cfg, tmp_path, name="clips-test", progress=False, resume=True)
    a, b = res_a["result"].step_losses, res_b["result"].step_losses
    assert len(a) == len(b) == 8
    assert b[3] == pytest.approx(a[3], abs=1e-6)  # the very next step after the interruption
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res_b["result"].val_scores, res_a["result"].val_scores, atol=1e-6)
    assert pd.read_csv(tmp_path / "steps.csv")["step"].tolist() == list(range(8))


def test_exported_bundle_scores_match_through_monitor_run(run_a, tmp_path):
    out, _ = run_a
    val = pd.read_csv(out / "val_scores.csv", keep_default_na=False)
    card = tmp_path / "card"
    card.mkdir()
    for f in sorted(set(val["file"])):
        shutil.copy(f, card)
    proc = subprocess.run([sys.executable, "-m", "monitor", "run", str(card), "--out", str(tmp_path / "o"),
                           "--model", str(out / "bundle"), "--device", "cpu", "--workers", "0",
                           "--batch-size", "8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seg = pd.read_csv(tmp_path / "o" / "segments.csv")
    seg["key"] = [f"{f}|{s:.3f}" for f, s in zip(seg["file"], seg["start_s"])]
    seg = seg.set_index("key")
    val["key"] = [f"{f.split('/')[-1]}|{s:.3f}" for f, s in zip(val["file"], val["start_s"])]
    assert set(val["key"]) <= set(seg.index)
    for lab in ("bird", "frog"):
        np.testing.assert_allclose(seg.loc[val["key"], lab].to_numpy(), val[lab].to_numpy(), atol=2e-5, rtol=0)


def test_cli_cross_validation(clips, tmp_path):
    """--folds: one epoch chosen on the fold-averaged curve, mean ± std, shared normalisation so the fold
    bundles form an ensemble monitor run accepts, then a final model on all data (16.5)."""
    cfg_path = tmp_path / "cv.yaml"
    cfg_path.write_text(
        f"data:\n  source: folders\n  root: {clips / 'data'}\n  cache_dir: {clips / 'cache'}\n  max_per_label: 6\n"
        "split:\n  final_model: true\n"
        "model:\n  size: tiny224\n  depth: 1\n  fstride: 16\n  tstride: 16\n  init: scratch\n"
        "optim:\n  epochs: 2\n  batch_size: 4\n  lr: 0.0005\n  device: cpu\n"
        "segment:\n  window_s: 5.0\n  hop_s: 5.0\n  min_segment_s: 2.0\nfbank:\n  target_frames: 512\n"
        "export:\n  plots: false\n")
    out = tmp_path / "cv"
    proc = subprocess.run([sys.executable, "-m", "monitor", "train", str(cfg_path), "--out", str(out), "--folds", "2",
                           "--set", "split.seed=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2-fold cross-validation" in proc.stdout and "±" in proc.stdout and "final model:" in proc.stdout
    with open(out / "cv_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fold"] for r in rows] == ["1", "2", "mean", "std"]
    assert len({r["epoch"] for r in rows}) == 1  # one epoch for every fold
    assert float(rows[2]["mAP"]) == pytest.approx((float(rows[0]["mAP"]) + float(rows[1]["mAP"])) / 2)
    curve = pd.read_csv(out / "cv_curve.csv")
    epoch = int(rows[0]["epoch"])
    assert curve["mean"].idxmax() + 1 == epoch  # the best epoch of the fold-averaged curve
    folds = pd.read_csv(out / "folds.csv", keep_default_na=False)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    metas = [json.loads((out / f"fold_{k}" / "bundle" / "bundle.json").read_text()) for k in (1, 2)]
    assert metas[0]["preprocessing"] == metas[1]["preprocessing"]  # shared normalisation
    assert all(m["provenance"]["weights"] == "last" for m in metas)  # never each fold's own best epoch
    final = json.loads((out / "final" / "bundle" / "bundle.json").read_text())
    assert final["provenance"]["config"]["optim"]["epochs"] == epoch
    assert "Cross-validation" in (out / "final" / "model_card.md").read_text()
    oof = pd.read_csv(out / "oof_scores.csv")
    assert len(oof) == len(folds) and oof[["bird", "frog"]].notna().all().all()
    card = tmp_path / "card"
    card.mkdir()
    shutil.copy(folds["file"].iloc[0], card)
    ens = subprocess.run([sys.executable, "-m", "monitor", "run", str(card), "--out", str(tmp_path / "o"),
                          "--model", str(out / "fold_1" / "bundle"), "--model", str(out / "fold_2" / "bundle"),
                          "--device", "cpu", "--workers", "0"], capture_output=True, text=True, timeout=120)
    assert ens.returncode == 0, ens.stderr  # the folds as an ensemble
    bad = subprocess.run([sys.executable, "-m", "monitor", "train", str(cfg_path), "--set", "optim.lr_x=1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "optim.lr_x" in bad.stderr
