"""Honest evaluation and planning (issue 16.3, 16.5, 16.7): ``--plan``, a held-out test split that
chooses nothing, the undefined-metric fallback and Keras-style patience, the frozen-backbone
embedding cache, and the GPU path where a GPU exists. Small synthetic recordings, tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from monitor.train.config import build_config

SEG = {"window_s": 2.0, "hop_s": 2.0, "min_segment_s": 1.0}


def _data(root, wav_writer, n=4, seconds=4.0, seed=0):
    """frog (1 kHz tone + noise), bird (3 kHz tone + noise), noise (noise only): ``n`` recordings each."""
    for k in range(n):
        wav_writer(root / "frog" / f"f{k}.wav", seconds, freq_hz=1000.0, noise=0.05, seed=seed + k)
        wav_writer(root / "bird" / f"b{k}.wav", seconds, freq_hz=3000.0, noise=0.05, seed=seed + 10 + k)
        wav_writer(root / "noise" / f"n{k}.wav", seconds, freq_hz=None, noise=0.05, seed=seed + 20 + k)
    return root


def _cfg(root, **sections):
    raw = {"data": {"source": "folders", "root": str(root), "negative_class": "noise", "cache_dir": "off",
                    "num_workers": 0},
           "split": {"val_fraction": 0.25, "seed": 0},
           "model": {"size": "tiny224", "depth": 1, "fstride": 16, "tstride": 16, "init": "scratch"},
           "optim": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "device": "cpu", "scheduler": "constant"},
           "eval": {"batch_size": 4}, "segment": SEG, "fbank": {"target_frames": 208},
           "export": {"plots": False}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return build_config(raw)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from conftest import write_wav

    return _data(tmp_path_factory.mktemp("eval") / "data", write_wav)


def test_plan_writes_windows_groups_splits_and_targets(data_root, tmp_path, wav_writer):
    """``monitor train --plan``: plan.csv and counts per label and split, nothing trained (16, Build)."""
    test_dir = _data(tmp_path / "test", wav_writer, n=1, seed=100)
    (tmp_path / "val.txt").write_text("frog/f1.wav\nbird/b1.wav\nnoise/n1.wav\n")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"data:\n  source: folders\n  root: {data_root}\n  negative_class: noise\n"
                   f"split:\n  val_files: {tmp_path / 'val.txt'}\n  test_folder: {test_dir}\n"
                   "segment:\n  window_s: 2.0\n  hop_s: 2.0\n  min_segment_s: 1.0\n")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "monitor", "train", str(cfg), "--out", str(out), "--plan"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    plan = pd.read_csv(out / "plan.csv", keep_default_na=False, dtype=str)
    assert list(plan.columns) == ["file", "start_s", "end_s", "group", "split", "bird", "frog"]
    assert len(plan) == 3 * 4 * 2 + 3 * 2  # 12 recordings + 3 test ones, two 2 s windows each
    assert plan.groupby("group")["split"].nunique().max() == 1
    assert set(plan.loc[plan["split"] == "val", "file"].map(lambda f: f.split("/")[-1])) == {"f1.wav", "b1.wav", "n1.wav"}
    assert (plan["split"] == "test").sum() == 6 and all(g.startswith("test:") for g in plan.loc[plan["split"] == "test", "group"])
    frog = plan[plan["file"].str.contains("/frog/")]
    assert set(frog["frog"]) == {"1"} and set(frog["bird"]) == {"0"}
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    # frog: 3 train recordings x 2 windows positive, the 6 bird + 6 noise windows negative; val: one each
    assert lines["frog"].split()[1:] == ["6", "/", "12", "/", "0", "2", "/", "4", "/", "0", "2", "/", "4", "/", "0"]
    assert "train (+ / - / ?)" in lines["label"] and "plan.csv" in res.stdout
    assert not (out / "checkpoints").exists() and not (out / "bundle").exists()


def test_plan_shows_unknown_labels_from_reviews(tmp_path, wav_writer):
    from monitor.train.cli import plan

    wav_writer(tmp_path / "card" / "r.wav", 6.0)
    reviews = tmp_path / "report.xlsx"
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Detections"
    ws.append(["File", "Label", "Start (s)", "End (s)", "Verified"])
    ws.append(["r.wav", "frog", 0.0, 2.0, "no"])
    ws.append(["r.wav", "bird", 2.0, 6.0, "yes"])
    wb.save(reviews)
    cfg = build_config({"data": {"source": "report", "report": str(reviews), "root": str(tmp_path / "card")},
                        "split": {"val_fraction": 0.0}, "segment": SEG})
    path, counts = plan(cfg, tmp_path / "p")
    df = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert df[["start_s", "bird", "frog"]].values.tolist() == [["0.0", "", "0"], ["2.0", "1", ""], ["4.0", "1", ""]]
    assert "0 / 1 / 2" in counts  # frog: no positive, one negative, two unknown


def test_test_split_chooses_nothing_and_is_reported_apart(data_root, tmp_path, wav_writer):
    """The same run with and without a test folder: identical weights and thresholds (the test split
    picked neither), and the card reports the test numbers in their own section."""
    from monitor.train.cli import train

    torch.set_num_threads(1)
    test_dir = _data(tmp_path / "test", wav_writer, n=1, seed=100)
    a = train(_cfg(data_root), tmp_path / "a", name="t", progress=False)
    b = train(_cfg(data_root, split={"test_folder": str(test_dir)}), tmp_path / "b", name="t", progress=False)
    assert a["thresholds"] == b["thresholds"]
    assert (tmp_path / "a" / "bundle" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "bundle" / "model.safetensors").read_bytes()
    assert a["test_metrics"] is None and b["test_metrics"]["n"] == 6
    card = (tmp_path / "b" / "model_card.md").read_text()
    assert "## Test (held out: never used to choose the epoch or the thresholds)" in card
    assert card.index("## Test") < card.index("## Validation (chose the epoch and the thresholds: optimistic)")
    assert "No held-out test split" in (tmp_path / "a" / "model_card.md").read_text()
    scores = pd.read_csv(tmp_path / "b" / "test_scores.csv", keep_default_na=False)
    assert len(scores) == 6 and all("/test/" in f for f in scores["file"])
    prov = json.loads((tmp_path / "b" / "bundle" / "bundle.json").read_text())["provenance"]
    assert prov["splits"]["counts"]["test"] == 6 and prov["test_metrics"]["summary"]["n"] == 6


def test_undefined_metric_falls_back_to_val_loss_and_patience_counts_like_keras(data_root, tmp_path, caplog):
    """Validation holds only background: mAP is undefined every epoch, so epochs are chosen by val_loss
    (not stuck at epoch 1); patience 1 stops after the first epoch without improvement."""
    from monitor.train.fit import fit
    from monitor.train.sources import from_folders

    torch.set_num_threads(1)
    cfg = _cfg(data_root, optim={"epochs": 6, "lr": 3e-3}, eval={"metric": "mAP", "patience": 1})
    table, labels = from_folders(data_root, cfg.segment, negative_class="noise")
    split = np.where(table["file"].str.contains("/noise/n[01]"), "val", "train").astype(object)
    with caplog.at_level("WARNING"):
        res = fit(cfg, tmp_path, table=table, labels=labels, split=split, progress=False)
    assert "choosing epochs by val_loss" in caplog.text
    hist = pd.read_csv(tmp_path / "metrics.csv")
    assert hist["mAP"].isna().all()
    vl = hist["val_loss"].tolist()
    best = int(np.argmin(vl)) + 1
    assert res.extra["best_epoch"] == best and res.extra["selected_by"] == "val_loss"
    # Keras: stop after `patience` epochs without improvement; the epoch after the best is the last one run
    if len(vl) < 6:
        assert len(vl) == best + 1 and vl[-1] >= vl[best - 1]
    else:
        assert best >= 5


def test_frozen_backbone_trains_the_head_on_cached_embeddings(data_root, tmp_path, caplog):
    """freeze: head: the backbone runs once per segment; per-epoch validation on the cached embeddings
    equals the full model scored as ``monitor run`` scores; the backbone never changes."""
    from monitor.train.dataset import make_loader
    from monitor.train.evaluate import embeddings, score_head
    from monitor.train.fit import fit
    from monitor.train.model_init import build_model
    from monitor.train.sources import from_folders

    torch.set_num_threads(1)
    cfg = _cfg(data_root, model={"freeze": "head"}, optim={"epochs": 3}, augment={"freqm": 10},
               export={"weights": "last"})
    table, labels = from_folders(data_root, cfg.segment, negative_class="noise")
    split = np.array(["val" if "1.wav" in f else "train" for f in table["file"]], dtype=object)
    torch.manual_seed(cfg.optim.seed)
    start = build_model(cfg, labels)
    with caplog.at_level("INFO"):
        res = fit(cfg, tmp_path, table=table, labels=labels, split=split, progress=False)
    assert "augment settings are not applied" in caplog.text and "computed once" in caplog.text
    assert (tmp_path / "checkpoints" / "embeddings.safetensors").is_file()
    m = res.model
    for (n, p), (_, q) in zip(m.v.named_parameters(), start.v.named_parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(m.mlp_head[1].weight, start.mlp_head[1].weight)
    val = np.flatnonzero(split == "val")
    from monitor.train.dataset import SegmentDataset

    ds = SegmentDataset(table, labels, res.preprocess)
    plan = [val[k:k + 4].tolist() for k in range(0, len(val), 4)]
    emb = embeddings(m, make_loader(ds, plan, 0, "cpu"), res.preprocess, "cpu", "fp32", 4)
    _, head_scores, _ = score_head(m.mlp_head, emb, ds.targets[val], cfg.task, "cpu", 4)
    np.testing.assert_allclose(head_scores, res.val_scores, atol=1e-5)  # same numbers as monitor run's scorer
    hist = pd.read_csv(tmp_path / "metrics.csv")
    assert len(hist) == 3 and hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_follows_the_precision_rule(data_root, tmp_path):
    from monitor.device import resolve_precision
    from monitor.train.cli import train

    res = train(_cfg(data_root, optim={"device": "cuda", "amp": "auto", "epochs": 1}, data={"num_workers": 2}),
                tmp_path, name="gpu", progress=False)
    extra = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["provenance"]["extra"]
    assert extra["precision"] == resolve_precision("auto", "cuda") and extra["device"].startswith("cuda")
    assert res["metrics"] is not None and np.isfinite(res["metrics"]["mAUC"])
    fp16 = train(_cfg(data_root, optim={"device": "cuda", "amp": "fp16", "epochs": 1}), tmp_path / "fp16", name="g",
                 progress=False)
    assert all(np.isfinite(v) for v in pd.read_csv(tmp_path / "fp16" / "steps.csv")["loss"])
    assert fp16["bundle"]
