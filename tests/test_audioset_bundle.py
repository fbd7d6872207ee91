"""The published AudioSet checkpoints as runnable bundles, with no network: a checkpoint of the real key
layout (``ast_audioset_base384_keys.json``: random tensors of those shapes) is pulled through ``--url file://``,
made into a bundle, described, listed, run on a real recording, and used to start a fine-tune. (`models import`
of an AudioSet checkpoint is tested on a small one in test_models_cli.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from monitor.config import AUDIOSET_MEAN, AUDIOSET_STD
from monitor.model import audioset
from monitor.model.bundle import load_bundle

torch.set_num_threads(1)
NAME = "audioset-10-10"
FILENAME = "audioset_10_10_0.4593.pth"


def _cli(env_root, *args, timeout=600):
    env = dict(os.environ, MONITOR_CACHE=str(env_root / "cache"), MONITOR_MODELS=str(env_root / "models"),
               OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def official_pth(shared, tmp_path_factory):
    """An official-format AudioSet checkpoint (``module.`` keys, base384, 10/10, 527 labels), random tensors.

    LayerNorm weights are ones and the head's bias is spread (logit mean -3, sd 1.5), so scores differ between
    labels and the default threshold keeps a few percent of them (a small report).
    """
    keys = json.loads((shared / "golden" / "ast_audioset_base384_keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in keys.items():
        if k.endswith(("norm1.weight", "norm2.weight", "v.norm.weight", "mlp_head.0.weight")):
            sd[k] = torch.ones(*shape)
        elif k == "module.mlp_head.1.bias":
            sd[k] = torch.randn(*shape, generator=g) * 1.5 - 3.0
        else:
            sd[k] = torch.randn(*shape, generator=g) * 0.02
    path = tmp_path_factory.mktemp("server") / FILENAME
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def pulled(official_pth, tmp_path_factory):
    root = tmp_path_factory.mktemp("home")
    r = _cli(root, "models", "pull", NAME, "--url", official_pth.as_uri())
    assert r.returncode == 0, r.stderr
    return root, r


@pytest.mark.slow
def test_pull_makes_a_runnable_bundle_with_official_preprocessing(pulled, official_pth):
    root, r = pulled
    ckpt = root / "cache" / "checkpoints" / FILENAME
    folder = root / "cache" / "models" / NAME
    assert f"checkpoint {ckpt}" in r.stdout and f"bundle {folder} (made now): 527 AudioSet labels" in r.stdout
    assert f"--model {NAME}" in r.stdout and "0.3 for every label" in r.stdout
    assert _sha(ckpt) == _sha(official_pth)  # the checkpoint stays for fine-tuning (model.init: audioset)
    b = load_bundle(folder)
    assert (b.name, b.version, b.task) == (NAME, "audioset_10_10_0.4593", "multilabel")
    assert b.labels == audioset.labels() and len(b.labels) == 527
    assert b.labels[:3] == ["Speech", "Male speech, man speaking", "Female speech, woman speaking"]
    assert b.labels[-1] == "Field recording" and b.thresholds == {k: 0.3 for k in b.labels}
    g = b.architecture
    assert (g.model_size, g.depth, g.fstride, g.tstride, g.input_fdim, g.input_tdim, g.label_dim) == \
        ("base384", 12, 10, 10, 128, 1024, 527)
    assert (g.norm_eps, g.head_norm_eps) == (1e-6, 1e-5)
    p = b.preprocessing  # the official AudioSet recipe, written out
    assert (p.band.low_hz, p.band.high_hz, p.resample.sample_rate_hz) == (None, None, 16000)
    assert (p.fbank.norm_mean, p.fbank.norm_std) == (-4.2677393, 4.5689974) == (AUDIOSET_MEAN, AUDIOSET_STD)
    assert (p.fbank.num_mel_bins, p.fbank.target_frames, p.fbank.remove_wave_mean) == (128, 1024, True)
    assert (p.segment.window_s, p.segment.hop_s) == (10.0, 10.0)
    assert b.provenance["pretrained"] == NAME and b.provenance["source_sha256"] == _sha(official_pth)
    assert "CC BY-SA 4.0" in b.provenance["labels_source"]
    # the weights are the checkpoint's, unchanged (the timm DeiT heads it also holds are not used by AST)
    from safetensors.torch import load_file

    sd = torch.load(official_pth, weights_only=True)
    w = load_file(str(folder / "model.safetensors"))
    assert set(w) == {k.removeprefix("module.") for k in sd if ".head." not in k and ".head_dist." not in k}
    assert all(torch.equal(w[k.removeprefix("module.")], v) for k, v in sd.items() if k.removeprefix("module.") in w)

    # pulling again neither downloads nor remakes (the source is gone; the bundle file is untouched)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    r2 = _cli(root, "models", "pull", NAME, "--url", (official_pth.parent / "gone.pth").as_uri())
    assert r2.returncode == 0, r2.stderr
    assert "(up to date)" in r2.stdout and (folder / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_info_and_list_of_the_pulled_bundle(pulled):
    root, _ = pulled
    r = _cli(root, "models", "info", NAME)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "527: Speech; Male speech, man speaking; Female speech, woman speaking;" in out
    assert "... and 517 more (--labels lists them all)" in out and "Field recording" not in out
    assert "0.3 for every label" in out and "base384, depth 12, strides 10/10, input 1024 frames x 128 mel" in out
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["band"] == "off" and fields["normalise"] == "mean -4.26774, std 4.569"
    assert fields["resample"] == "16000 Hz (poly)" and fields["segments"] == "10 s every 10 s (min 1 s)"
    assert len(out.splitlines()) < 40
    r = _cli(root, "models", "info", NAME, "--labels")
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["INDEX", "LABEL", "THRESHOLD"] and len(table) == 1 + 527
    assert table[1].split() == ["0", "Speech", "0.3"] and table[-1].split() == ["526", "Field", "recording", "0.3"]
    r = _cli(root, "models", "list")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:5] == ["NAME", "KIND", "VERSION", "CACHED", "LABELS"]
    assert [NAME, "bundle", "audioset_10_10_0.4593", "yes", "527:"] in [x[:5] for x in rows]
    ck = [line for line in r.stdout.splitlines() if line.startswith(f"{NAME} ") and " checkpoint " in line]
    assert len(ck) == 1 and " yes " in ck[0] and ck[0].rstrip().endswith(FILENAME)
    other = [line for line in r.stdout.splitlines() if line.startswith("audioset-12-12 ")]
    assert " no " in other[0] and "(not downloaded: monitor models pull audioset-12-12)" in other[0]


@pytest.mark.slow
def test_run_with_the_pulled_model_scores_as_the_official_recipe(pulled, official_pth, shared, tmp_path):
    """`monitor run --model audioset-10-10` on a real 10 s recording: its 527 scores are what the official
    recipe computes from the raw checkpoint, and detections follow the default thresholds."""
    import shutil

    import soundfile as sf

    from monitor.audio import resample
    from monitor.features import KaldiFbank

    root, _ = pulled
    src = shared / "data" / "recordings" / "opensoundscape" / "birds_10s.wav"  # 32 kHz, 10.1 s: one segment
    card = tmp_path / "card"
    card.mkdir()
    shutil.copy(src, card / src.name)
    out = tmp_path / "out"
    r = _cli(root, "run", card, "--out", out, "--model", NAME, "--workers", "0", "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    seg = pd.read_csv(out / "segments.csv")
    labels = audioset.labels()
    assert len(seg) == 1 and list(seg.columns[-527:]) == labels
    got = seg[labels].to_numpy(dtype=np.float64)[0]
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["name"] == NAME
    assert run["model"]["sha256"] == load_bundle(root / "cache" / "models" / NAME).sha256

    # the official recipe by hand: 16 kHz, wave mean removed, Kaldi fbank, 1024 frames, (x - mean) / (2 std)
    x, sr = sf.read(str(src), dtype="float32")
    wave = resample(x, sr, 16000)[:160000]
    wave = torch.from_numpy(wave - wave.mean())
    feats = KaldiFbank(16000, 128)(wave[None])[0]
    feats = torch.nn.functional.pad(feats, (0, 0, 0, 1024 - feats.shape[0]))
    feats = (feats - (-4.2677393)) / (4.5689974 * 2)
    model = load_bundle(root / "cache" / "models" / NAME).build_model()  # its weights are the .pth's (tested above)
    with torch.no_grad():
        want = torch.sigmoid(model(feats[None])).numpy()[0].astype(np.float64)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()  # 6e-7 seen
    assert 5 < (want >= 0.3).sum() < 100  # the scores straddle the default threshold
    det = pd.read_csv(out / "detections.csv")
    detected = {lab for lab, s in zip(labels, got) if s >= 0.3}
    assert set(det["label"]) == detected

    # 527 labels, a readable workbook: the Summary lists positives only (and says so), Presence the detected labels
    import openpyxl

    wb = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    summary = [[c.value for c in r] for r in wb["Summary"].iter_rows()]
    assert "Prediction (positives only: 527 labels)" in summary[0]
    pred = summary[0].index("Prediction (positives only: 527 labels)")
    assert len(summary) - 1 == len(detected) and {r[pred] for r in summary[1:]} == {"Positive"}
    presence = [[c.value for c in r] for r in wb["Presence"].iter_rows()]
    listed = {r[2] for r in presence if len(r) > 2 and r[1] in ("detections", "positive segments")}
    assert listed == detected
    # (all deployments + 1 deployment) x 2 measures x detected labels, by night and by hour, plus a few notes
    assert len(presence) <= 2 * (2 * 2 * len(detected) + 1) + 12, len(presence)
    assert any(f"{527 - len(detected)} labels that were never detected are not listed" in str(r[0])
               for r in presence if r)

    # one threshold for every label, then only the labels asked for (case-insensitive), without the model
    r = _cli(root, "report", out, "--threshold", "all=0.5", "--labels", "frog,SPEECH")
    assert r.returncode == 0, r.stderr
    det = pd.read_csv(out / "detections.csv")
    kept = {"Frog": got[labels.index("Frog")], "Speech": got[labels.index("Speech")]}
    assert set(det["label"]) == {lab for lab, s in kept.items() if s >= 0.5}
    seg = pd.read_csv(out / "segments.csv")
    assert sorted(c for c in seg.columns if c in labels) == ["Frog", "Speech"]
    r = _cli(root, "report", out, "--labels", "Frgo")
    assert r.returncode == 2 and "Frog" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_fine_tuning_starts_from_the_pulled_checkpoint(pulled, official_pth, monkeypatch):
    """model.init: audioset with the pull name uses the cached raw checkpoint (no network), new head."""
    from monitor.train.config import build_config
    from monitor.train.model_init import build_model

    root, _ = pulled
    monkeypatch.setenv("MONITOR_CACHE", str(root / "cache"))
    cfg = build_config({"model": {"init": "audioset", "checkpoint": NAME, "size": "base384", "fstride": 10,
                                  "tstride": 10}})
    m = build_model(cfg, ["frog", "bird"])
    sd = torch.load(official_pth, weights_only=True)
    assert torch.equal(m.v.blocks[11].mlp.fc2.weight, sd["module.v.blocks.11.mlp.fc2.weight"])
    assert torch.equal(m.v.pos_embed, sd["module.v.pos_embed"]) and m.mlp_head[1].weight.shape == (2, 768)
    assert m.training and m.geometry.label_dim == 2


def test_pull_never_replaces_a_folder_it_did_not_make(tmp_path):
    """The bundle folder in the cache is replaced only when `pull` made it (for another download)."""
    from monitor.errors import MonitorError
    from monitor.model.audioset import _existing

    out = tmp_path / "models" / NAME
    assert _existing(out, NAME, "abc") is None  # nothing there yet: make it
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MonitorError, match="exists and is not a model bundle"):
        _existing(out, NAME, "abc")
    (out / "bundle.json").write_text(json.dumps({"provenance": {"trained_with": "monitor train"}}))
    with pytest.raises(MonitorError, match="not made by `monitor models pull audioset-10-10`.*not replaced"):
        _existing(out, NAME, "abc")
    # made by pull from another download: remade (None), without reading the weights
    (out / "bundle.json").write_text(json.dumps({"provenance": {"pretrained": NAME, "source_sha256": "old"}}))
    assert _existing(out, NAME, "new") is None
    # made by pull from this download but damaged: remade
    (out / "bundle.json").write_text(json.dumps({"provenance": {"pretrained": NAME, "source_sha256": "abc"}}))
    assert _existing(out, NAME, "abc") is None and (out / "notes.txt").read_text() == "mine"
