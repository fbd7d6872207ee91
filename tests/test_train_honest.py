"""Issue 24, training and ensembles honest in every mode: a k-fold run is one ensemble bundle whose detections
do not depend on the order of ``--model`` and whose test split is scored; short clips train (padded) and
every clip left out is counted; warm-up clamped; an empty label folder is an error; one verdict
vocabulary; the smaller points. Real clips (../shared/data/clips), tiny models, the CLI as a subprocess."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from monitor.errors import MonitorError

FROG = ["coastal-plains-leopard-frog__coastal-plains-leopard-frog-1.wav",
        "eastern-cricket-frog__eastern-cricket-frog-1.mp3", "green-treefrog__green-treefrog-2.mpga",
        "squirrel-treefrog__squirrel-treefrog-5.mp3",
        "eastern-narrowmouth-toad__eastern-narrowmouth-toad-3.mp3", "american-bullfrog__american-bullfrog-2.mp3"]
SEG = "segment:\n  window_s: 5.0\n  hop_s: 5.0\n  min_segment_s: 2.0\nfbank:\n  target_frames: 512\n"
TINY = "model:\n  size: tiny224\n  depth: 1\n  fstride: 16\n  tstride: 16\n  init: scratch\n"


def monitor(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def clips(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for name in FROG:
        (root / "data" / "frog").mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "data" / "clips" / "frog" / name, root / "data" / "frog" / name)
    for p in sorted((shared / "data" / "clips" / "bird").glob("*.flac"))[:6]:
        (root / "data" / "bird").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "data" / "bird" / p.name)
    return root


@pytest.fixture(scope="module")
def cv_run(clips, tmp_path_factory):
    """``monitor train --folds 2`` with a held-out test split, as a user runs it."""
    tmp = tmp_path_factory.mktemp("cv")
    recipe = tmp / "lab.yaml"
    recipe.write_text(f"data:\n  source: folders\n  root: {clips / 'data'}\n  cache_dir: {clips / 'cache'}\n"
                      "  max_per_label: 6\nsplit:\n  test_fraction: 0.25\n  seed: 3\n" + TINY +
                      "optim:\n  epochs: 2\n  batch_size: 4\n  lr: 0.001\n  device: cpu\n" + SEG +
                      "export:\n  plots: false\n")
    out = tmp / "runs" / "labcv"
    proc = monitor("train", recipe, "--out", out, "--folds", 2, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_kfold_writes_one_ensemble_bundle_and_scores_the_test_split(cv_run):
    out, proc = cv_run
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    ens = meta["ensemble"]
    assert [m["path"] for m in ens["members"]] == ["../fold_1/bundle", "../fold_2/bundle"]
    for k, m in enumerate(ens["members"], 1):  # members by path and sha256 (the members' own identity)
        from monitor.model.bundle import load_bundle

        assert m["sha256"] == load_bundle(out / f"fold_{k}" / "bundle").sha256
    assert ens["thresholds"] == "out-of-fold" and "out-of-fold" in ens["thresholds_note"]
    assert "weights" not in meta and "architecture" not in meta and set(meta["thresholds"]) == {"bird", "frog"}
    assert not (out / "bundle" / "model.safetensors").exists()
    # the thresholds are calibrated on the out-of-fold scores
    from monitor.train.calibrate import calibrate
    from monitor.train.table import target_matrix

    folds = pd.read_csv(out / "folds.csv", keep_default_na=False)
    oof = pd.read_csv(out / "oof_scores.csv")
    cv_rows = folds[folds["fold"] >= 0].reset_index(drop=True)
    y = target_matrix(cv_rows.assign(labels=[tuple(x.split(";")) if x else () for x in cv_rows["labels"]],
                                     unknown=[()] * len(cv_rows)), ["bird", "frog"])
    thr, _ = calibrate(y, oof[["bird", "frog"]].to_numpy(np.float32), ["bird", "frog"])
    assert meta["thresholds"] == pytest.approx(thr)
    # the held-out test split: never in a fold, scored by each fold and by the ensemble
    test_files = sorted(set(folds.loc[folds["fold"] == -1, "file"]))
    n_test = int((folds["fold"] == -1).sum())
    assert n_test > 0 and len(test_files) >= 1
    tm = pd.read_csv(out / "test_metrics.csv")
    assert tm["model"].tolist() == ["fold_1", "fold_2", "ensemble"] and (tm["n"] == n_test).all()
    scores = {k: pd.read_csv(out / f"fold_{k}" / "test_scores.csv") for k in (1, 2)}
    ens_scores = pd.read_csv(out / "test_scores.csv")
    assert len(ens_scores) == n_test
    np.testing.assert_allclose(ens_scores[["bird", "frog"]], (scores[1][["bird", "frog"]] + scores[2][["bird", "frog"]])
                               / 2, atol=1e-6)
    done = json.loads((out / "train_done.json").read_text())
    assert done["bundle"] == str(out / "bundle") and done["test_metrics"]["n"] == n_test
    assert done["test_metrics"]["mAP"] == pytest.approx(float(tm.loc[2, "mAP"]))
    assert meta["provenance"]["test_metrics"]["summary"]["n"] == n_test
    card = (out / "bundle" / "model_card.md").read_text()
    assert "## Test (held out" in card and "ensemble of the 2 fold models" in card
    assert "test (held out), the ensemble: mAP" in proc.stdout and "monitor run --model" in proc.stdout
    info = monitor("models", "info", out)
    assert info.returncode == 0, info.stderr
    assert "2 members" in info.stdout and "../fold_1/bundle" in info.stdout and "geometry" in info.stdout


def _segments(path: Path):
    seg = pd.read_csv(path / "segments.csv")
    return seg.set_index([seg["file"], seg["start_s"].round(3)])


def test_ensemble_detections_do_not_depend_on_the_order_of_model(cv_run, tmp_path):
    out, _ = cv_run
    folds = pd.read_csv(out / "folds.csv", keep_default_na=False)
    card = tmp_path / "card"
    card.mkdir()
    for f in sorted(set(folds["file"]))[::2]:  # test and cross-validated clips alike
        shutil.copy(f, card)
    for f in sorted(set(folds.loc[folds["fold"] == -1, "file"])):
        shutil.copy(f, card)
    a, b = out / "fold_1" / "bundle", out / "fold_2" / "bundle"
    runs = {}
    for name, models in (("ab", [a, b]), ("ba", [b, a]), ("ens", [out]), ("single", [out / "fold_1"])):
        args = [x for m in models for x in ("--model", m)]
        proc = monitor("run", card, "--out", tmp_path / name, *args, "--device", "cpu", "--workers", "0",
                       "--batch-size", "4")
        assert proc.returncode == 0, proc.stderr
        runs[name] = proc
    # both orders: byte-identical detections and scores, the same thresholds and model identity
    for f in ("detections.csv", "segments.csv"):
        assert (tmp_path / "ab" / f).read_bytes() == (tmp_path / "ba" / f).read_bytes(), f
    ja, jb = (json.loads((tmp_path / n / "run.json").read_text()) for n in ("ab", "ba"))
    assert ja["thresholds"] == jb["thresholds"] and ja["model"] == jb["model"] and ja["models"] == jb["models"]
    ta, tb = (json.loads((x / "bundle.json").read_text())["thresholds"] for x in (a, b))
    assert ja["thresholds"] == pytest.approx({k: (ta[k] + tb[k]) / 2 for k in ta})  # the median of two: their mean
    assert "median" in ja["thresholds_from"] and "not calibrated" in ja["thresholds_from"]
    assert "monitor: warning:" in runs["ab"].stdout and "not calibrated for their averaged score" in runs["ab"].stdout
    # --model RUN_FOLDER: the ensemble bundle, calibrated thresholds, no warning; scores as the hand-given ensemble
    je = json.loads((tmp_path / "ens" / "run.json").read_text())
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    assert je["thresholds"] == pytest.approx(meta["thresholds"]) and "out-of-fold" in je["thresholds_from"]
    assert je["model"]["name"] == meta["name"] and len(je["members"]) == 2
    assert "not calibrated" not in runs["ens"].stdout
    seg_ab, seg_e = _segments(tmp_path / "ab"), _segments(tmp_path / "ens")
    np.testing.assert_array_equal(seg_ab[["bird", "frog"]].to_numpy(), seg_e.loc[seg_ab.index, ["bird", "frog"]])
    # the ensemble scores the test split as training's ensemble test scores say
    ts = pd.read_csv(out / "test_scores.csv")
    keys = list(zip([Path(f).name for f in ts["file"]], ts["start_s"].round(3)))
    np.testing.assert_allclose(seg_e.loc[keys, ["bird", "frog"]].to_numpy(), ts[["bird", "frog"]].to_numpy(),
                               atol=2e-6, rtol=0)
    # a run folder of one model stands for its bundle
    js = json.loads((tmp_path / "single" / "run.json").read_text())
    assert js["model"]["path"] == str(out / "fold_1" / "bundle")
    # a store bound to the ensemble refuses another model
    other = monitor("run", card, "--out", tmp_path / "ens", "--model", a, "--device", "cpu", "--workers", "0")
    assert other.returncode == 2 and "another model" in other.stderr


def test_a_changed_or_missing_member_is_refused_in_one_line(cv_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(cv_run[0] / "bundle", run / "bundle")
    shutil.copytree(cv_run[0] / "fold_1" / "bundle", run / "fold_1" / "bundle")
    proc = monitor("models", "info", run)
    assert proc.returncode == 2 and "member ../fold_2/bundle is missing" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    shutil.copytree(cv_run[0] / "fold_1" / "bundle", run / "fold_2" / "bundle")  # the wrong model in its place
    proc = monitor("models", "info", run)
    assert proc.returncode == 2 and "not the bundle the ensemble was made with" in proc.stderr


# --- short clips -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_clips(shared, tmp_path_factory):
    """Call-library clips: 0.4-0.9 s cut from real frog and bird clips, two 0.1 s ones and one broken file."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("short") / "data"
    frogs = shared / "data" / "clips" / "frog"
    srcs = {"frog": [frogs / "eastern-spadefoot__eastern-spadefoot-1.wav",
                     frogs / "spring-peeper__spring-peeper-3.wav"],
            "bird": sorted((shared / "data" / "clips" / "bird").glob("*.flac"))[:2]}
    lengths = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for label, files in srcs.items():
        (root / label).mkdir(parents=True)
        for k, length in enumerate(lengths):
            x, sr = sf.read(str(files[k % len(files)]), dtype="float32", always_2d=True)
            start = int((1.0 + k) * sr)
            sf.write(str(root / label / f"{label}{k}.wav"), x[start:start + int(length * sr)], sr)
        x, sr = sf.read(str(files[0]), dtype="float32", always_2d=True)
        sf.write(str(root / label / f"{label}_tiny.wav"), x[sr:sr + int(0.1 * sr)], sr)
    (root / "bird" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    shutil.copy(root / "frog" / "frog2.wav", root / "frog" / "frog2_copy.wav")  # the same clip twice
    (root / "frog" / "calls.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")  # not audio soundfile decodes
    return root


def test_short_clips_train_padded_and_every_clip_left_out_is_counted(short_clips, tmp_path):
    recipe = tmp_path / "calls.yaml"
    recipe.write_text(f"data:\n  source: folders\n  root: {short_clips}\n  cache_dir: off\n"
                      "split:\n  val_fraction: 0.34\n" + TINY +
                      "optim:\n  epochs: 2\n  batch_size: 4\n  lr: 0.001\n  device: cpu\n  warmup_steps: 20\n"
                      "  scheduler: cosine\n" + SEG + "export:\n  plots: false\n")
    plan = monitor("train", recipe, "--out", tmp_path / "plan", "--plan")
    assert plan.returncode == 0, plan.stderr
    df = pd.read_csv(tmp_path / "plan" / "plan.csv", keep_default_na=False, dtype=str)
    used = df[~df["split"].str.startswith("left out")]
    assert len(used) == 12 and set(used["split"]) == {"train", "val"}  # every 0.4-0.9 s clip: one window
    assert sorted(round(float(e) - float(s), 2) for s, e in zip(used["start_s"], used["end_s"])) == \
        sorted([0.4, 0.5, 0.6, 0.7, 0.8, 0.9] * 2)
    gone = df[df["split"].str.startswith("left out")]
    assert sorted(Path(f).name for f in gone["file"]) == ["bird_tiny.wav", "broken.wav", "calls.m4a", "frog2_copy.wav",
                                                          "frog_tiny.wav"]
    why = gone["split"].str.extract(r"^left out: ([^(]+?) \(")[0].value_counts().to_dict()
    assert why == {"shorter than data.min_clip_s": 2, "unreadable": 1, "not a recording": 1, "duplicate": 1}
    assert "left out: 5 recordings (2 shorter than data.min_clip_s, 1" in plan.stdout
    out = tmp_path / "run"
    proc = monitor("train", recipe, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "monitor: warning: 5 recordings left out: " in proc.stderr
    assert "2 shorter than data.min_clip_s (0.25 s; e.g. bird_tiny.wav: 0.10 s)" in proc.stderr
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["left_out"] == why and summary["segments"] == 12
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    assert meta["provenance"]["data"]["left_out"]["shorter than data.min_clip_s"] == 2
    gone = next(ln for ln in (out / "model_card.md").read_text().splitlines() if ln.startswith("Recordings left out"))
    assert "2 shorter than data.min_clip_s" in gone and "1 unreadable" in gone and "1 duplicate" in gone
    # warm-up longer than the run (2 epochs x 2 steps): clamped with a warning, the peak LR reached
    assert "optim.warmup_steps 20 is not shorter than the run" in proc.stderr
    assert "clamped to 1 step (a tenth of the run)" in proc.stderr
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 4 and steps["lr"].iloc[0] == pytest.approx(0.001) and steps["lr"].iloc[-1] < 0.001
    hist = pd.read_csv(out / "metrics.csv")  # the epoch's lr: the rate of its last step, not the next one's
    assert hist["lr"].tolist() == pytest.approx([steps["lr"].iloc[1], steps["lr"].iloc[3]])
    # a larger minimum leaves them all out, and the error names the cause
    bad = monitor("train", recipe, "--out", tmp_path / "bad", "--plan", "--set", "data.min_clip_s=1.0")
    assert bad.returncode == 2 and "no usable audio" in bad.stderr and "shorter than data.min_clip_s" in bad.stderr
    assert "no readable audio" not in bad.stderr


def test_clip_windows_rule(tmp_path, wav_writer):
    from monitor.audio import probe
    from monitor.config import SegmentConfig
    from monitor.train.table import LeftOut, clip_windows

    seg = SegmentConfig(window_s=2.0, hop_s=2.0, min_segment_s=1.0)
    left = LeftOut()
    got = {}
    for d in (0.2, 0.25, 0.9, 1.0, 3.5):
        p = wav_writer(tmp_path / f"{d}.wav", d, 16000)
        got[d] = clip_windows(p, probe(p), seg, 0.25, left)
    assert got == {0.2: [], 0.25: [(0.0, 0.25)], 0.9: [(0.0, 0.9)], 1.0: [(0.0, 1.0)], 3.5: [(0.0, 2.0), (2.0, 3.5)]}
    assert left.counts() == {"shorter than data.min_clip_s": 1} and "0.20 s" in left.rows[0][2]
    from monitor.config import ConfigError
    from monitor.train.config import build_config

    with pytest.raises(ConfigError, match="min_clip_s"):
        build_config({"data": {"min_clip_s": 0}})


# --- warm-up, labels, verdicts, recipes --------------------------------------------------------------------

def test_warmup_longer_than_the_run_is_clamped_and_recipes_fit_their_runs():
    from monitor.train.config import OptimConfig, load_config, warmup_clamped, warmup_steps
    from monitor.train.optim import lr_factor

    o = OptimConfig(warmup_steps=20, scheduler="cosine", epochs=8)  # clips_cpu as it was: 20 clips -> 16 steps
    assert warmup_clamped(o, 2) and warmup_steps(o, 2) == 2
    f = [lr_factor(s, 2, o) for s in range(16)]
    assert f[0] == 0.5 and f[1] == f[2] == 1.0 and f[3] < 1.0 and f[-1] < 0.05  # the peak reached, the cosine runs
    long_enough = OptimConfig(warmup_steps=20, epochs=8)  # 24 steps: left as it is
    assert not warmup_clamped(long_enough, 3) and warmup_steps(long_enough, 3) == 20
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "clips_cpu.yaml")
    assert cfg.optim.warmup_steps == 0 and cfg.optim.warmup_fraction == pytest.approx(0.1)
    assert max(lr_factor(s, 2, cfg.optim) for s in range(cfg.optim.epochs * 2)) == pytest.approx(1.0)


def test_empty_label_folder_is_an_error(tmp_path, wav_writer):
    from monitor.config import SegmentConfig
    from monitor.train.sources import from_folders

    wav_writer(tmp_path / "data" / "frog" / "a.wav", 3.0)
    wav_writer(tmp_path / "data" / "frog" / "b.wav", 3.0)
    (tmp_path / "data" / "toad").mkdir()
    with pytest.raises(MonitorError, match="toad .* hold no usable recording"):
        from_folders(tmp_path / "data", SegmentConfig(2.0, 2.0, 1.0))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  root: {tmp_path / 'data'}\n")
    proc = monitor("train", recipe, "--out", tmp_path / "p", "--plan")
    assert proc.returncode == 2 and "toad" in proc.stderr and "never seen positive" in proc.stderr


def test_dropped_base_model_labels_are_named(tmp_path, caplog):
    from monitor.config import FbankConfig, Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle
    from monitor.train.model_init import from_bundle

    torch.manual_seed(0)
    save_bundle(tmp_path / "b", AST(3, 16, 16, 128, 64, "tiny224", depth=1), name="base", version="1",
                labels=["frog", "bird", "cricket"], task="multilabel", preprocessing=Preprocess(
                    fbank=FbankConfig(target_frames=64)), thresholds={"frog": 0.5, "bird": 0.5, "cricket": 0.5})
    geom = dict(fstride=16, tstride=16, input_fdim=128, input_tdim=64, model_size="tiny224", depth=1)
    with caplog.at_level(logging.WARNING):
        from_bundle(str(tmp_path / "b"), ["frog", "toad"], geom)
    assert "2 of bundle base's 3 labels are not in this run's data and are dropped" in caplog.text
    assert "bird, cricket" in caplog.text


def test_one_verdict_vocabulary_for_every_reader(tmp_path, wav_writer, caplog):
    from openpyxl import Workbook

    from monitor.config import SegmentConfig
    from monitor.report.review_io import normalize_verdict
    from monitor.train.reviews import from_report, group_name, verdict

    for typed, want in (("x", "yes"), ("Y", "yes"), ("TRUE", "yes"), ("n", "no"), (0, "no"), ("?", "unsure"),
                        ("maybe", "unsure"), (None, ""), ("nope", "nope")):
        assert normalize_verdict(typed) == want, typed  # the workbook reader
        assert verdict(typed) == (want if want in ("yes", "no") else ""), typed  # training
    wav_writer(tmp_path / "card" / "r.wav", 8.0)
    wb = Workbook()
    ws = wb.active
    ws.title = "Detections"
    ws.append(["File", "Label", "Start (s)", "End (s)", "Verified"])
    ws.append(["r.wav", "frog", 0.0, 2.0, "x"])
    ws.append(["r.wav", "frog", 2.0, 4.0, "nope"])
    ws.append(["r.wav", "frog", 4.0, 6.0, "n"])
    wb.save(tmp_path / "report.xlsx")
    with caplog.at_level(logging.WARNING):
        table, _ = from_report(tmp_path / "report.xlsx", tmp_path / "card", SegmentConfig(2.0, 2.0, 1.0), ["frog"])
    assert [(r.start_s, r.labels) for r in table.itertuples()] == [(0.0, ("frog",)), (4.0, ())]  # x: yes, like Excel
    assert "'nope' (1x, e.g. r.wav frog at 2 s)" in caplog.text and "not yes, no or unsure" in caplog.text
    assert group_name("KNOLL", "KNOLL/2024/a.wav") == "KNOLL/2024/a.wav"  # not KNOLL/KNOLL/...
    from monitor.train.reviews import targets_from_reviews

    store_shape = pd.DataFrame([dict(deployment="KNOLL", file="KNOLL/r.wav", path=str(tmp_path / "card" / "r.wav"),
                                     label="frog", start_s=0.0, end_s=2.0, verified="yes", notes="")])
    table, _ = targets_from_reviews(store_shape, None, SegmentConfig(2.0, 2.0, 1.0), ["frog"])
    assert table["group"].tolist() == ["KNOLL/r.wav"]
    assert group_name("site1", "d1/r.wav") == "site1/d1/r.wav" and group_name("", "r.wav") == "r.wav"


def test_recipes_list_keeps_a_colon_inside_parentheses():
    from monitor.train.recipes import first_clause, list_recipes

    accent = next(r for r in list_recipes() if r["name"] == "accent")
    assert accent["summary"] == "Accent (or another speaker trait: dialect, age band, sex, language) from folders of " \
        "utterances"
    assert first_clause("A. B") == "A" and first_clause("Label x: then") == "Label x"


def test_ensemble_bundle_format_identity_and_refusals(tmp_path):
    from monitor.config import FbankConfig, Preprocess
    from monitor.errors import BundleError
    from monitor.model.ast import AST
    from monitor.model.bundle import load_bundle, save_bundle
    from monitor.model.ensemble import ensemble_hash, load_ensemble, save_ensemble

    pre = Preprocess(fbank=FbankConfig(target_frames=64))
    members = []
    for k in (1, 2):
        torch.manual_seed(k)
        net = AST(2, 16, 16, 128, 64, "tiny224", depth=1)
        members.append(save_bundle(tmp_path / "run" / f"fold_{k}" / "bundle", net, name=f"m{k}", version="1",
                                   labels=["frog", "bird"], task="multilabel", preprocessing=pre,
                                   thresholds={"frog": 0.2 * k, "bird": 0.9 - 0.2 * k}))
    outside = save_bundle(tmp_path / "elsewhere", AST(2, 16, 16, 128, 64, "tiny224", depth=1), name="m3", version="1",
                          labels=["frog", "bird"], task="multilabel", preprocessing=pre,
                          thresholds={"frog": 0.5, "bird": 0.5})
    ens = save_ensemble(tmp_path / "run" / "bundle", [*members, outside], name="cv", version="2",
                        thresholds={"frog": 0.3, "bird": 0.6}, rule="out-of-fold", note="calibrated")
    data = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert [m["path"] for m in data["ensemble"]["members"]] == ["../fold_1/bundle", "../fold_2/bundle",
                                                               str(tmp_path / "elsewhere")]  # outside the run: absolute
    assert ens.is_ensemble and [m.name for m in ens.members] == ["m1", "m2", "m3"] and ens.architecture is None
    assert ens.to_json() == data
    data["ensemble"]["members"].reverse()  # the members' order changes nothing about its identity
    (tmp_path / "run" / "bundle" / "bundle.json").write_text(json.dumps(data))
    assert load_bundle(tmp_path / "run").sha256 == ens.sha256
    with pytest.raises(BundleError, match="no weights of its own"):
        ens.build_model()
    bad = dict(data, weights={"file": "model.safetensors", "dtype": "float32"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bundle.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="no weights of its own"):
        load_bundle(tmp_path / "bad")
    nested = dict(data, ensemble={**data["ensemble"], "members": [{"path": str(tmp_path / "run" / "bundle"),
                                                                    "sha256": ens.sha256}]})
    (tmp_path / "bad" / "bundle.json").write_text(json.dumps(nested))
    with pytest.raises(BundleError, match="itself an ensemble"):
        load_bundle(tmp_path / "bad")
    # by hand: one identity and one set of thresholds whatever the order
    a, b = str(members[0].path), str(members[1].path)
    ab, ba = load_ensemble([a, b]), load_ensemble([b, a])
    assert ab.sha256 == ba.sha256 == ensemble_hash([members[1], members[0]]) and ab.thresholds == ba.thresholds
    assert ab.thresholds == pytest.approx({"frog": 0.3, "bird": 0.6}) and not ab.calibrated
    assert [m.sha256 for m in ab.members] == [m.sha256 for m in ba.members]
    one = load_ensemble([str(tmp_path / "run")])
    assert one.calibrated and one.sha256 == ens.sha256 and len(one.members) == 3 and "calibrated" in one.thresholds_from
