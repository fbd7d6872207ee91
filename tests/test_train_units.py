"""monitor.train building blocks on tiny generated inputs: config, data sources, splits, augmentation,
sampling, losses, metrics, calibration, LR schedule, freezing, adding labels to a bundle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monitor.config import ConfigError, SegmentConfig
from monitor.train import augment, calibrate, metrics, sampling, splits
from monitor.train.annotations import Annotation, from_annotations, label_windows
from monitor.train.config import TrainConfig, build_config, load_config
from monitor.train.model_init import apply_freeze
from monitor.train.optim import lr_factor
from monitor.train.reviews import from_report, targets_from_reviews
from monitor.train.sources import from_folders, from_manifest, load_source
from monitor.train.table import cap_per_label, make_table, target_matrix

SEG = SegmentConfig(window_s=2.0, hop_s=2.0, min_segment_s=1.0)


# --- config ------------------------------------------------------------------------------------------

def test_config_unknown_key_names_it(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: 0.001\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"optim\.epochz"):
        load_config(p)
    p.write_text("optimiser:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"data\.sauce"):
        build_config({}, tmp_path, ["data.sauce=folders"])


def test_config_paths_relative_to_yaml_and_sections(tmp_path):
    (tmp_path / "recipes").mkdir()
    p = tmp_path / "recipes" / "r.yaml"
    p.write_text("data:\n  root: ../clips\nfbank:\n  target_frames: 256\nband:\n  high_hz: 3000\n"
                 "model:\n  checkpoint: audioset-10-10\n")
    cfg = load_config(p, ["optim.epochs=3", "loss.kind=ce"])
    assert cfg.data.root == str((tmp_path / "clips").resolve())
    assert cfg.model.checkpoint == "audioset-10-10"  # a pull name, not a path
    assert cfg.preprocess.fbank.target_frames == 256 and cfg.preprocess.band.high_hz == 3000
    assert cfg.optim.epochs == 3 and cfg.task == "multiclass"
    with pytest.raises(ConfigError, match="loss.kind"):
        build_config({"loss": {"kind": "hinge"}})


@pytest.mark.parametrize("name", ["rana_draytonii", "clips_cpu", "esc50", "speechcommands", "demo", "accent"])
def test_shipped_recipes_parse_and_match_their_sources(name):
    """Each recipe says where it comes from and holds its source's settings (issue 16.6)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    text = path.read_text()
    if name == "esc50":  # egs/esc50/run_esc.sh
        assert "run_esc.sh" in text
        assert (cfg.fbank.target_frames, cfg.augment.freqm, cfg.augment.timem, cfg.augment.mixup) == (512, 24, 96, 0)
        assert cfg.fbank.norm_mean == pytest.approx(-6.6268077) and cfg.optim.lr == pytest.approx(1e-5)
        assert cfg.loss.kind == "ce" and cfg.task == "multiclass" and cfg.eval.metric == "accuracy"
        assert cfg.eval.average_from_epoch is None and cfg.export.weights == "last"  # wa False
        assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr_decay_start_epoch, cfg.optim.lr_decay) == \
            (25, 48, 5, 0.85) and cfg.optim.warmup_steps == 0 and not cfg.loss.balanced_sampling
    if name == "speechcommands":  # egs/speechcommands/run_sc.sh + prep_sc.py
        assert "run_sc.sh" in text
        assert cfg.split.val_files.endswith("validation_list.txt") and cfg.split.test_files.endswith("testing_list.txt")
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.batch_size, cfg.augment.mixup) == (2.5e-4, 30, 128, 0.6)
        assert cfg.augment.noise and cfg.loss.kind == "bce" and cfg.eval.metric == "accuracy"
        assert cfg.model.init == "imagenet" and cfg.eval.average_from_epoch is None
    if name == "rana_draytonii":
        assert cfg.band.high_hz == 3000 and cfg.augment.freqm == 48 and cfg.augment.timem == 200
        assert cfg.augment.mixup == 0.5 and cfg.model.init == "audioset" and cfg.loss.kind == "bce"
        assert cfg.optim.warmup_steps == 0 and cfg.optim.warmup_fraction == 0.1
        for n_segments in (120, 300, 3000):  # the configured peak LR is reached whatever the data size
            spe = -(-n_segments // cfg.optim.batch_size)
            assert max(lr_factor(s, spe, cfg.optim) for s in range(cfg.optim.epochs * spe)) == pytest.approx(1.0)
    if name == "accent":
        assert cfg.task == "multiclass" and cfg.band.low_hz is None and cfg.band.high_hz is None
        assert cfg.data.group_regex and cfg.augment.mixup == 0 and cfg.split.test_fraction > 0


# --- data sources ------------------------------------------------------------------------------------

def test_folders_source_cuts_inference_segments(tmp_path, wav_writer):
    wav_writer(tmp_path / "frog" / "a.wav", 5.0, 16000)  # 2 + 2 + 1 s: three segments
    wav_writer(tmp_path / "bird" / "b.wav", 2.5, 22050)  # 2 + 0.5 s (< min_segment_s): one
    wav_writer(tmp_path / "noise" / "c.wav", 2.0, 8000)
    (tmp_path / "bird" / "notes.txt").write_text("not audio")
    table, labels = from_folders(tmp_path, SEG, negative_class="noise")
    assert labels == ["bird", "frog"]
    rows = [(r.file.split("/")[-1], r.start_s, r.end_s, r.labels) for r in table.itertuples()]
    assert rows == [("b.wav", 0.0, 2.0, ("bird",)), ("a.wav", 0.0, 2.0, ("frog",)), ("a.wav", 2.0, 4.0, ("frog",)),
                    ("a.wav", 4.0, 5.0, ("frog",)), ("c.wav", 0.0, 2.0, ())]
    assert table["group"].tolist() == ["bird/b.wav", "frog/a.wav", "frog/a.wav", "frog/a.wav", "noise/c.wav"]
    mc, mlabels = from_folders(tmp_path, SEG, negative_class="noise", multiclass=True)
    assert mlabels == ["bird", "frog", "noise"] and mc["labels"].iloc[-1] == ("noise",)
    g = from_folders(tmp_path, SEG, group_regex=r"^(\w+)/")[0]["group"]
    assert set(g) == {"bird", "frog", "noise"}


def test_annotation_tables_raven_audacity_csv(tmp_path, wav_writer):
    rec = tmp_path / "audio"
    wav_writer(rec / "site1" / "r1.wav", 8.0)
    wav_writer(rec / "r2.wav", 6.0)
    wav_writer(rec / "r3.wav", 4.0)
    ann = tmp_path / "ann"
    ann.mkdir()
    # Raven: two rows per selection (Waveform + Spectrogram views); one per selection counts
    (ann / "r1.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
        "1\tWaveform 1\t1\t0.5\t1.5\tfrog\n1\tSpectrogram 1\t1\t0.5\t1.5\tfrog\n"
        "2\tSpectrogram 1\t1\t3.8\t4.3\tbird\n"  # 0.2 s in window 1 (< 0.5 s and < 50 %): grazes it -> dropped
    )
    (ann / "r2.txt").write_text("2.5\t3.5\tbird\n\\\t100\t2000\n")  # Audacity, with a frequency line
    (ann / "more.csv").write_text("file,start_s,end_s,label\nr3.wav,0.0,4.0,frog\n")
    table, labels = from_annotations(ann, rec, SEG, min_overlap_s=0.5, min_overlap_frac=0.5)
    assert labels == ["bird", "frog"]
    got = {(r.file.split("/")[-1], r.start_s): r.labels for r in table.itertuples()}
    assert got == {("r1.wav", 0.0): ("frog",), ("r1.wav", 4.0): ("bird",), ("r1.wav", 6.0): (),
                   ("r2.wav", 0.0): (), ("r2.wav", 2.0): ("bird",), ("r2.wav", 4.0): (),
                   ("r3.wav", 0.0): ("frog",), ("r3.wav", 2.0): ("frog",)}
    assert ("r1.wav", 2.0) not in got  # ambiguous window dropped
    only_pos, _ = from_annotations(ann, rec, SEG, unannotated_negative=False)
    assert all(r for r in only_pos["labels"])


def test_label_windows_overlap_rule():
    ann = [Annotation(1.0, 1.3, "x")]  # a 0.3 s call
    # 0.3 s inside window 0: 100 % of the call -> positive; the next window untouched -> negative
    assert label_windows([(0, 2), (2, 4)], ann, 0.5, 0.5, True) == [(0, 2, ("x",)), (2, 4, ())]
    # split 0.05 / 0.25 s across windows: the first only grazes (17 %): dropped; the second positive
    ann = [Annotation(1.95, 2.25, "x")]
    assert label_windows([(0, 2), (2, 4)], ann, 0.5, 0.5, True) == [(2, 4, ("x",))]


def test_official_manifest_source(tmp_path, wav_writer):
    wav_writer(tmp_path / "w" / "a.wav", 3.0)
    wav_writer(tmp_path / "w" / "b.wav", 1.5)
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n1,/m/02,Dog\n0,/m/01,Rain\n")
    (tmp_path / "train.json").write_text(json.dumps({"data": [
        {"wav": "w/a.wav", "labels": "/m/01,/m/02"}, {"wav": str(tmp_path / "w" / "b.wav"), "labels": "/m/02"}]}))
    table, labels = from_manifest(tmp_path / "train.json", tmp_path / "labels.csv", SEG)
    assert labels == ["Rain", "Dog"]  # index order
    assert table["labels"].tolist() == [("Rain", "Dog"), ("Dog",)]
    assert table["end_s"].tolist() == [2.0, 1.5]  # the first window, as the official loader crops
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"wav": "w/a.wav", "labels": "/m/99"}]}))
    from monitor.errors import MonitorError

    with pytest.raises(MonitorError, match="/m/99"):
        from_manifest(tmp_path / "bad.json", tmp_path / "labels.csv", SEG)


def test_cap_per_label_spans_groups():
    table = make_table([dict(file=f"f{g}", start_s=float(k), end_s=k + 1.0, labels=("a",), group=f"f{g}")
                             for g in range(4) for k in range(5)])
    capped = cap_per_label(table, 4, seed=1)
    assert len(capped) == 4 and capped["group"].nunique() == 4


# --- splits ------------------------------------------------------------------------------------------

def _toy_table(n_groups=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        lab = ("rare",) if g % 10 == 0 else (("common",) if g % 2 else ())
        for k in range(int(rng.integers(1, 6))):
            rows.append(dict(file=f"rec{g}.wav", start_s=k * 10.0, end_s=k * 10.0 + 10, labels=lab, group=f"rec{g}"))
    return make_table(rows)


def test_grouped_split_disjoint_stratified_seeded():
    table = _toy_table()
    s1 = splits.train_val_split(table, ["common", "rare"], 0.25, seed=3)
    splits.check_disjoint(table, s1)
    assert set(table["group"][s1 == "val"]).isdisjoint(set(table["group"][s1 == "train"]))
    for lab in ("common", "rare"):  # stratified: every label in both splits
        has = np.array([lab in t for t in table["labels"]])
        assert (has & (s1 == "val")).any() and (has & (s1 == "train")).any()
    frac = (s1 == "val").mean()
    assert 0.1 < frac < 0.4
    assert (splits.train_val_split(table, ["common", "rare"], 0.25, seed=3) == s1).all()
    assert not (splits.train_val_split(table, ["common", "rare"], 0.25, seed=4) == s1).all()
    fold = splits.kfold(table, ["common", "rare"], 3, seed=0)
    assert set(fold) == {0, 1, 2}
    for g, sub in table.groupby("group"):
        assert len(set(fold[sub.index])) == 1
    rare_folds = set(fold[[("rare",) == t for t in table["labels"]]])
    assert rare_folds == {0, 1, 2}  # 3 rare groups spread over 3 folds


def test_val_files_split():
    table = _toy_table(5)
    s = splits.train_val_split(table, ["common"], 0.2, val_files=["# a comment", "rec1.wav", "rec3.wav", ""])
    assert set(table["file"][s == "val"]) == {"rec1.wav", "rec3.wav"}


# --- augmentation ------------------------------------------------------------------------------------

def _batch(b=4, t=100, f=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, f, generator=g) * 3 - 5
    y = torch.eye(b, 3)[:, :3]
    n = torch.tensor([100, 80, 60, 100])
    return x, y, n


def test_specaugment_masks_bands_and_spans():
    x, _, _ = _batch()
    out = augment.spec_mask(x, np.random.default_rng(0), freqm=10, timem=30, value=0.0)
    assert out.shape == x.shape and not torch.equal(out, x)
    for i in range(4):
        zero_cols = (out[i] == 0).all(0).sum().item()
        zero_rows = (out[i] == 0).all(1).sum().item()
        assert zero_cols < 10 and zero_rows < 30
        changed = out[i] != x[i]
        assert torch.equal(out[i][changed], torch.zeros(int(changed.sum())))  # only zeros written
    assert torch.equal(augment.spec_mask(x, np.random.default_rng(0), 0, 0), x)


def test_mixup_soft_labels_beta10():
    x, y, n = _batch(b=64)
    y = torch.zeros(64, 2)
    y[:32, 0] = 1
    y[32:, 1] = 1
    rng = np.random.default_rng(0)
    xm, ym, _ = augment.mixup(x, y, n.repeat(16), rng, rate=1.0, alpha=10.0)
    assert xm.shape == x.shape and ym.shape == y.shape
    assert torch.allclose(ym.sum(1), torch.ones(64))  # a convex mix of one-hot labels
    lam = ym.max(1).values[(ym[:, 0] > 0) & (ym[:, 1] > 0)]
    assert len(lam) > 20 and 0.5 <= lam.min() and lam.max() < 0.85  # Beta(10,10): near 0.5
    # as the waveform mix lam*w1 + (1-lam)*w2 of uncorrelated sounds: powers lam^2 P1 + (1-lam)^2 P2
    same = x[:1].repeat(2, 1, 1)
    xs, ys, _ = augment.mixup(same, torch.eye(2), torch.tensor([100, 100]), np.random.default_rng(1), 1.0)
    for i in range(2):
        lam = float(ys[i, i])
        assert torch.allclose(xs[i], same[i] + math.log(lam ** 2 + (1 - lam) ** 2), atol=1e-5)
    xr, yr, _ = augment.mixup(x, y, n.repeat(16), rng, rate=0.0)
    assert xr is x and yr is y


def test_mixup_never_mixes_in_padding():
    """A short clip's padding (log-mel 0, i.e. loud) never overwrites its partner's real frames (issue 16.4)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 100, 8, generator=g) - 8.0  # real log-mel, well below 0
    x[1, 30:] = 0.0  # clip 1 has 30 real frames, then padding
    n = torch.tensor([100, 30])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    xm, ym, nm = augment.mixup(x, y, n, np.random.default_rng(3), rate=1.0)  # 0 mixes with 1 and 1 with 0
    lam0, lam1 = float(ym[0, 0]), float(ym[1, 1])
    # clip 0 over its partner's padding: its own frames at lam^2 power, never near the padding's 0
    assert torch.allclose(xm[0, 30:], x[0, 30:] + 2 * math.log(lam0), atol=1e-5)
    assert float(xm[0, 30:].max()) < -2.0
    # both real: a power mix
    both = torch.logaddexp(x[0, :30] + 2 * math.log(lam0), x[1, :30] + 2 * math.log(1 - lam0))
    assert torch.allclose(xm[0, :30], both, atol=1e-5)
    # clip 1 gets its partner's real audio where it had padding, and the mix is as long as the longer clip
    assert torch.allclose(xm[1, 30:], x[0, 30:] + 2 * math.log(1 - lam1), atol=1e-5)
    assert nm.tolist() == [100, 100]
    # frames that are padding in both stay padding
    short = torch.zeros(2, 50, 4)
    short[:, :10] = -5.0
    xs, _, _ = augment.mixup(short, y, torch.tensor([10, 10]), np.random.default_rng(0), rate=1.0)
    assert torch.equal(xs[:, 10:], torch.zeros(2, 40, 4))
    # unknown targets stay unknown through a mix
    yu = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    _, ymu, _ = augment.mixup(x, yu, n, np.random.default_rng(3), rate=1.0)
    assert torch.isnan(ymu[0, 1]) and torch.isnan(ymu[1, 1]) and torch.isfinite(ymu[:, 0]).all()


def test_gain_noise_shift_effects():
    x, _, n = _batch()
    g = augment.gain(x, n, np.random.default_rng(0), 6.0)
    d = (g - x)[:, :, 0]
    for i in range(4):
        k = int(n[i])
        assert torch.allclose(d[i, :k], d[i, 0].expand(k))  # one constant per sample on real frames
        assert abs(float(d[i, 0])) <= 0.6 * math.log(10) + 1e-6
        assert torch.all(d[i, k:] == 0)  # padding untouched
    z = torch.zeros(3, 50, 8)
    z[:, 0] = 1.0
    rolled = augment.noise_and_shift(z, np.random.default_rng(0), scale=0.0, max_shift=10)
    for i in range(3):  # only a roll: the marker frame moved by -10..9 frames
        (pos,) = torch.nonzero(rolled[i, :, 0]).flatten().tolist()
        assert pos < 10 or pos >= 40
    noisy = augment.noise_and_shift(z, np.random.default_rng(0), scale=0.1, max_shift=0)
    d = noisy - z
    assert float(d.min()) >= 0 and float(d.max()) <= 0.1 and float(d.abs().sum()) > 0


def test_augment_batch_training_only_normalises():
    from monitor.train.config import AugmentConfig

    x, y, n = _batch()
    plain, yp = augment.augment_batch(x, y, n, AugmentConfig(), np.random.default_rng(0), -5.0, 3.0)
    assert torch.allclose(plain, (x + 5.0) / 6.0) and torch.equal(yp, y)
    full = AugmentConfig(freqm=8, timem=20, mixup=0.5, noise=True, gain_db=3.0)
    a, ya = augment.augment_batch(x, y, n, full, np.random.default_rng(0), -5.0, 3.0)
    b, yb = augment.augment_batch(x, y, n, full, np.random.default_rng(0), -5.0, 3.0)
    assert torch.equal(a, b) and torch.equal(ya, yb)  # seeded: reproducible
    assert not torch.allclose(a, plain)


# --- sampling and losses -----------------------------------------------------------------------------

def test_balanced_weights_like_gen_weight_file():
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]])
    w = sampling.sample_weights(y)
    assert w[0] == pytest.approx(1000 / 3.01) and w[3] == pytest.approx(1000 / 1.01) and w[4] == pytest.approx(1000 / 1.01)
    order = sampling.epoch_order(5, 0, 0, w)
    assert len(order) == 5
    draws = np.concatenate([sampling.epoch_order(5, e, 0, w) for e in range(400)])
    counts = np.bincount(draws, minlength=5)
    assert counts[:3].sum() == pytest.approx(counts[3], rel=0.15)  # the rare label drawn as often as the common one
    assert (sampling.epoch_order(5, 3, 7) == sampling.epoch_order(5, 3, 7)).all()


def test_losses():
    from monitor.train.losses import make_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bce = make_loss("bce")(logits, y)
    assert float(bce) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y)))
    ce = make_loss("ce")(logits, y)
    assert float(ce) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y.argmax(1))))
    ls = make_loss("ce", label_smoothing=0.1)(logits, y)
    assert float(ls) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y.argmax(1), label_smoothing=0.1)))
    focal = make_loss("bce", focal_gamma=2.0)(logits, y)
    assert 0 < float(focal) < float(bce)


# --- metrics and calibration -------------------------------------------------------------------------

def test_metrics_known_values():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    assert metrics.average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.roc_auc(y, s) == pytest.approx(5 / 6)
    assert metrics.roc_auc([1, 0], [0.5, 0.5]) == 0.5  # ties count half
    assert metrics.d_prime(0.5) == 0.0
    assert metrics.d_prime(0.76025) == pytest.approx(math.sqrt(2) * 0.7071, abs=1e-3)
    p, r, f1, tp, fp, fn = metrics.prf(y, s, 0.75)
    assert (p, r, tp, fp, fn) == (0.5, 0.5, 1, 1, 1) and f1 == pytest.approx(0.5)


def test_evaluate_scores_label_without_positives_and_confusion():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    s = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1]])
    out = metrics.evaluate_scores(y, s, ["a", "b", "c"], "multiclass")
    per = {r["label"]: r for r in out["per_label"]}
    assert math.isnan(per["c"]["AP"]) and per["c"]["note"] == "no positives in this split"
    assert out["summary"]["accuracy"] == 0.75
    assert out["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert out["summary"]["mAP"] == pytest.approx(np.mean([per["a"]["AP"], per["b"]["AP"]]))
    empty = metrics.evaluate_scores(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])
    assert math.isnan(empty["summary"]["mAP"])


def test_calibration_known_answers():
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    t, f1 = calibrate.max_f1_threshold(y, s)
    assert t == pytest.approx(0.65) and f1 == 1.0  # midway between the lowest positive and the top negative
    y2 = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    s2 = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.3])
    # precision at cuts: 1, .5, .67, .75, .6, .67, .57, .5 ; F1 max 0.8 at the 0.5 cut (6 kept: 4 tp)
    t, f1 = calibrate.max_f1_threshold(y2, s2)
    assert t == pytest.approx(0.45) and f1 == pytest.approx(0.8)
    t, rec, ok = calibrate.precision_threshold(y2, s2, 0.75)
    assert ok and t == pytest.approx(0.7) and rec == pytest.approx(0.75)
    t, rec, ok = calibrate.precision_threshold(y2, s2, 0.99)
    assert ok and t == pytest.approx(0.925) and rec == pytest.approx(0.25)
    thr, rows = calibrate.calibrate(np.c_[y2, np.zeros(8)], np.c_[s2, s2], ["a", "b"], "f1", default=0.3)
    assert thr == {"a": pytest.approx(0.45), "b": 0.3} and "no positives" in rows[1]["note"]


# --- optimisation pieces -----------------------------------------------------------------------------

def test_warmup_fraction_of_the_run():
    from monitor.train.config import OptimConfig

    o = OptimConfig(warmup_fraction=0.1, scheduler="multistep", lr_decay_start_epoch=2, epochs=10)
    f = [lr_factor(s, 10, o) for s in range(100)]  # 100 steps: 10 of warmup
    assert f[9] == 1.0 and f[8] < 1.0 and f[19] == 1.0 and f[20] == 0.5
    with pytest.raises(ConfigError, match="warmup"):
        build_config({"optim": {"warmup_steps": 10, "warmup_fraction": 0.1}})


def test_warmup_reaches_base_lr_and_schedules():
    from monitor.train.config import OptimConfig

    o = OptimConfig(warmup_steps=4, scheduler="multistep", lr_decay_start_epoch=2, lr_decay_every=1, lr_decay=0.5,
                    epochs=5)
    f = [lr_factor(s, 3, o) for s in range(15)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]  # warmup reaches the base LR
    assert f[4:6] == [1.0, 1.0] and f[6:9] == [0.5] * 3 and f[9:12] == [0.25] * 3
    c = OptimConfig(warmup_steps=2, scheduler="cosine", epochs=2, min_lr_frac=0.1)
    g = [lr_factor(s, 5, c) for s in range(10)]
    assert g[1] == g[2] == 1.0 and g[3] < 1.0 and all(a >= b for a, b in zip(g[1:], g[2:]))
    assert lr_factor(1000, 5, c) == pytest.approx(0.1)


def test_freeze_policies_and_head_lr():
    from monitor.model.ast import AST
    from monitor.train.config import OptimConfig
    from monitor.train.optim import make_optimizer

    m = AST(3, 16, 16, 128, 64, "tiny224", depth=3)
    head = sum(p.numel() for p in m.mlp_head.parameters())
    assert apply_freeze(m, "head") == head
    blk = sum(p.numel() for p in m.v.blocks[-1].parameters()) + sum(p.numel() for p in m.v.norm.parameters())
    assert apply_freeze(m, "last_n", 1) == head + blk
    assert apply_freeze(m, "full") == sum(p.numel() for p in m.parameters())
    opt = make_optimizer(m, OptimConfig(lr=1e-4, head_lr_mult=10.0))
    assert [g["lr"] for g in opt.param_groups] == [1e-4, pytest.approx(1e-3)]


def test_add_labels_to_bundle_keeps_old_head_rows(tmp_path):
    from monitor.config import Preprocess, FbankConfig
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle
    from monitor.train.model_init import from_bundle

    torch.manual_seed(0)
    old = AST(2, 16, 16, 128, 64, "tiny224", depth=2)
    pre = Preprocess(fbank=FbankConfig(target_frames=64))
    save_bundle(tmp_path / "b", old, name="b", version="1", labels=["frog", "bird"], task="multilabel",
                preprocessing=pre, thresholds={"frog": 0.5, "bird": 0.5})
    geom = dict(fstride=16, tstride=16, input_fdim=128, input_tdim=64, model_size="tiny224", depth=2)
    new = from_bundle(str(tmp_path / "b"), ["bird", "toad", "frog"], geom)
    w_old, w_new = old.mlp_head[1].weight, new.mlp_head[1].weight
    assert torch.equal(w_new[0], w_old[1]) and torch.equal(w_new[2], w_old[0])
    assert torch.equal(new.v.pos_embed, old.v.pos_embed)
    x = torch.randn(2, 64, 128)
    old.eval(), new.eval()
    with torch.no_grad():
        assert torch.allclose(new(x)[:, [2, 0]], old(x), atol=1e-6)  # old labels score exactly as before
    with pytest.raises(Exception, match="input_tdim"):
        from_bundle(str(tmp_path / "b"), ["frog"], dict(geom, input_tdim=128))


def test_init_from_official_checkpoint_file(tmp_path, shared):
    """model.init: audioset with a local official-format file (here the golden tiny one): body weights
    loaded, pos embed adapted to the recipe's frames, a new head for the recipe's labels."""
    from monitor.train.model_init import build_model

    case = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
    torch.save(case["state_dict"], tmp_path / "official.pth")
    cfg = build_config({"model": {"init": "audioset", "checkpoint": str(tmp_path / "official.pth"), "size": "tiny224",
                                  "fstride": 16, "tstride": 16, "depth": 2}, "fbank": {"target_frames": 200}})
    m = build_model(cfg, ["frog", "bird"])
    sd = case["state_dict"]
    assert torch.equal(m.v.blocks[1].attn.qkv.weight, sd["module.v.blocks.1.attn.qkv.weight"])
    assert torch.equal(m.v.pos_embed, sd["module.v.pos_embed"])
    assert m.mlp_head[1].weight.shape == (2, 192) and m.training
    shorter = build_model(build_config({"model": dict(cfg.model.__dict__), "fbank": {"target_frames": 120}}), ["x"])
    assert shorter.v.pos_embed.shape[1] == 2 + 8 * 7


# --- per-label targets: positive, negative or unknown ----------------------------------------------

def test_reviews_give_per_label_targets(tmp_path, wav_writer):
    """A "no" for frog is a frog negative only: the unreviewed bird stays unknown, never a negative (16.1)."""
    import pandas as pd

    wav_writer(tmp_path / "card" / "d1" / "r.wav", 10.0)
    reviews = pd.DataFrame([
        # the results store's shape: deployment, file relative to the card, absolute path
        dict(deployment="site1", file="d1/r.wav", path=str(tmp_path / "card" / "d1" / "r.wav"), label="frog",
             start_s=0.0, end_s=2.0, verified="no", notes=""),
        dict(deployment="site1", file="d1/r.wav", path="", label="bird", start_s=4.0, end_s=6.0, verified="yes",
             notes=""),
        dict(deployment="site1", file="d1/r.wav", path="", label="frog", start_s=4.0, end_s=6.0, verified="unsure",
             notes=""),
        dict(deployment="site1", file="d1/r.wav", path="", label="bird", start_s=8.0, end_s=10.0, verified="yes",
             notes=""),
        dict(deployment="site1", file="d1/r.wav", path="", label="bird", start_s=8.0, end_s=10.0, verified="no",
             notes=""),
    ])
    table, labels = targets_from_reviews(reviews, tmp_path / "card", SEG, labels=["frog", "bird"])
    got = {(r.start_s, r.end_s): (r.labels, r.unknown) for r in table.itertuples()}
    assert got == {(0.0, 2.0): ((), ("bird",)),  # frog no: frog negative, bird unknown
                   (4.0, 6.0): (("bird",), ("frog",))}  # bird yes; frog unsure: unknown; 8-10 conflicting: dropped
    y = target_matrix(table, labels)
    assert y[0, 0] == 0.0 and np.isnan(y[0, 1]) and y[1, 1] == 1.0 and np.isnan(y[1, 0])
    assert set(table["group"]) == {"d1/r.wav"}
    with pytest.raises(Exception, match="verified"):
        targets_from_reviews(reviews.drop(columns=["verified"]), tmp_path / "card", SEG)


def test_report_verified_column(tmp_path, wav_writer):
    from openpyxl import Workbook

    wav_writer(tmp_path / "card" / "d1" / "r.wav", 10.0)
    wb = Workbook()
    wb.active.title = "Summary"
    ws = wb.create_sheet("Detections")
    ws.append(["Detections reviewed by JB"])  # a title row above the header
    ws.append(["File", "Label", "Start (s)", "End (s)", "Score max", "Verified"])
    ws.append(["d1/r.wav", "frog", 0.0, 4.0, 0.9, "Yes"])  # two 2-s windows
    ws.append(["d1/r.wav", "bird", 2.0, 4.0, 0.7, "no"])
    ws.append(["d1/r.wav", "bird", 6.0, 8.0, 0.6, "no"])
    ws.append(["d1/r.wav", "frog", 8.0, 10.0, 0.55, "unsure"])
    ws.append(["d1/r.wav", "frog", 4.0, 6.0, 0.52, None])
    wb.save(tmp_path / "report.xlsx")
    table, labels = from_report(tmp_path / "report.xlsx", tmp_path / "card", SEG, labels=["frog", "bird"])
    got = [(r.start_s, r.end_s, r.labels, r.unknown) for r in table.itertuples()]
    assert got == [(0.0, 2.0, ("frog",), ("bird",)), (2.0, 4.0, ("frog",), ()), (6.0, 8.0, (), ("frog",))]
    assert labels == ["frog", "bird"]
    folder, _ = from_report(tmp_path, tmp_path / "card", SEG, labels=["frog", "bird"])  # a run's output folder
    assert folder.equals(table)
    cfg = build_config({"data": {"source": "reviews", "report": str(tmp_path / "report.xlsx"),
                                 "root": str(tmp_path / "card"), "labels": ["frog", "bird"]},
                        "segment": {"window_s": 2.0, "hop_s": 2.0, "min_segment_s": 1.0}})
    assert cfg.data.source == "report"  # an alias; the names folders/annotations/manifest/report stay
    assert len(load_source(cfg)[0]) == 3


def test_masked_loss_metrics_and_calibration():
    from monitor.train.losses import make_loss

    nan = float("nan")
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    y = torch.tensor([[1.0, nan], [0.0, 1.0]])
    loss = make_loss("bce")(logits, y)
    known = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 1, 1], [0, 0, 1]], y[[0, 1, 1], [0, 0, 1]])
    assert float(loss.detach()) == pytest.approx(float(known.detach()))
    loss.backward()
    assert logits.grad[0, 1] == 0  # an unknown label is never pushed towards 0
    # metrics: unknown rows take no part; AP of label b only over its two known rows
    yv = np.array([[1, nan], [0, 1], [0, 0], [1, nan]])
    sv = np.array([[0.9, 0.99], [0.2, 0.8], [0.3, 0.1], [0.7, 0.95]])
    out = metrics.evaluate_scores(yv, sv, ["a", "b"])
    per = {r["label"]: r for r in out["per_label"]}
    assert per["b"]["AP"] == 1.0 and per["b"]["unknown"] == 2 and per["b"]["negatives"] == 1
    assert per["a"]["AP"] == 1.0 and "unknown" not in per["a"]
    thr, _ = calibrate.calibrate(yv, sv, ["a", "b"], "f1")
    assert thr["b"] == pytest.approx(0.45)  # between 0.8 (pos) and 0.1 (neg); the unknown 0.99/0.95 ignored
    # sampling weights count only present labels
    assert np.isfinite(sampling.sample_weights(yv)).all()


def test_accuracy_is_argmax_as_official_and_exact_match_apart():
    """Official AST accuracy is argmax accuracy whatever the loss; exact match is a stricter, separate number."""
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    s = np.array([[0.4, 0.1, 0.1], [0.2, 0.3, 0.1], [0.1, 0.2, 0.35], [0.45, 0.3, 0.2]])  # all argmax right, all < 0.5
    m = metrics.evaluate_scores(y, s, ["a", "b", "c"], "multilabel", 0.5)["summary"]
    assert m["accuracy"] == 1.0 and m["exact_match"] == 0.0
    mc = metrics.evaluate_scores(y, s, ["a", "b", "c"], "multiclass")["summary"]
    assert mc["accuracy"] == 1.0


def test_same_audio_in_two_folders_is_one_multilabel_row(tmp_path, wav_writer):
    """The same recording in frog/ and bird/ is one row per window with both labels, in one group (16.3)."""
    import shutil

    from monitor.errors import MonitorError

    wav_writer(tmp_path / "frog" / "both.wav", 4.0, noise=0.1, seed=1)
    (tmp_path / "bird").mkdir()
    shutil.copy(tmp_path / "frog" / "both.wav", tmp_path / "bird" / "copy_of_both.wav")
    wav_writer(tmp_path / "bird" / "b.wav", 4.0, noise=0.1, seed=2)  # same size, other bytes: its own recording
    table, labels = from_folders(tmp_path, SEG)
    rows = {(r.file.split("/")[-1], r.start_s): r.labels for r in table.itertuples()}
    assert rows == {("b.wav", 0.0): ("bird",), ("b.wav", 2.0): ("bird",),
                    ("copy_of_both.wav", 0.0): ("bird", "frog"), ("copy_of_both.wav", 2.0): ("bird", "frog")}
    assert table["group"].nunique() == 2
    with pytest.raises(MonitorError, match="same recording"):
        from_folders(tmp_path, SEG, multiclass=True)


def test_clip_names_warn_when_groups_would_leak(caplog):
    assert splits.clip_base("site/rec_03.wav") == "rec"
    assert splits.clip_base("1-100032-A-0.wav") == "1-100032"
    assert splits.clip_base("left/0a7c2a8d_nohash_2.wav") == "0a7c2a8d_nohash"
    assert splits.clip_base("rec_10.5s.wav") == "rec" and splits.clip_base("xc110303.flac") is None
    assert splits.clip_base("20190522_000000.WAV") is None  # a time stamp, not a clip counter
    rows = [dict(file=f"/d/frog/rec_{k:02d}.wav", start_s=0.0, end_s=2.0, labels=("frog",), group=f"frog/rec_{k:02d}.wav")
            for k in range(4)] + [dict(file="/d/bird/other.wav", start_s=0.0, end_s=2.0, labels=("bird",),
                                       group="bird/other.wav")]
    table = make_table(rows)
    split = np.array(["train", "train", "val", "train", "val"], dtype=object)
    with caplog.at_level("WARNING"):
        fams = splits.warn_leaks(table, split)
    assert fams == [["rec_00.wav", "rec_01.wav", "rec_02.wav", "rec_03.wav"]]
    assert "group_regex" in caplog.text and "rec_00.wav" in caplog.text
    import re

    groups = {re.search(splits.GROUP_REGEX_HINT, f).group(1) for f in table["file"][:4]}
    assert groups == {"rec"}  # the suggested group_regex puts them together
    assert splits.leaking_families(table, np.array(["train"] * 4 + ["val"], dtype=object)) == []


def test_test_split_and_file_lists(tmp_path):
    from monitor.errors import MonitorError
    from monitor.train.config import SplitConfig

    table = _toy_table(40)
    sc = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    s = splits.assign_splits(table, ["common", "rare"], sc)
    assert set(s) == {"train", "val", "test"}
    splits.check_disjoint(table, s)
    for part in ("val", "test"):
        assert 0.08 < (s == part).mean() < 0.35
    assert (splits.assign_splits(table, ["common", "rare"], sc) == s).all()  # seeded
    (tmp_path / "test.txt").write_text("rec1.wav\nrec2.wav\n")
    (tmp_path / "val.txt").write_text("rec3.wav\n")
    s2 = splits.assign_splits(table, ["common"], SplitConfig(test_files=str(tmp_path / "test.txt"),
                                                               val_files=str(tmp_path / "val.txt")))
    assert set(table["file"][s2 == "test"]) == {"rec1.wav", "rec2.wav"} and set(table["file"][s2 == "val"]) == {"rec3.wav"}
    # a list naming part of a group is refused (the check ran even with val_files)
    t2 = table.copy()
    t2["group"] = ["g" + str(int(f[3:-4]) // 2) for f in t2["file"]]  # rec2 and rec3 share a group
    with pytest.raises(MonitorError, match="both"):
        splits.assign_splits(t2, ["common"], SplitConfig(val_files=str(tmp_path / "val.txt")))
    # matching is by path suffix, linear in the number of files
    files = [f"/data/word{k % 30}/{k:05d}_nohash_0.wav" for k in range(20000)]
    want = [f"word{k % 30}/{k:05d}_nohash_0.wav" for k in range(0, 20000, 7)]
    assert splits.match_files(files, want).sum() == len(want)


def test_optimizer_step_through_a_gradient_scaler():
    """The fp16 path: gradients unscaled before clipping, an overflowing step skipped (scale lowered),
    a finite step equal to a plain one. Run on the CPU with torch's CPU GradScaler (same logic as CUDA's)."""
    from monitor.train.config import OptimConfig
    from monitor.train.optim import make_optimizer, optimizer_step

    def setup(enabled):
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 2)
        opt = make_optimizer(_Wrap(m), OptimConfig(lr=0.1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return m, opt, sched, torch.amp.GradScaler("cpu", enabled=enabled, init_scale=1024.0)

    x, y = torch.randn(8, 4), torch.randn(8, 2)
    ref, opt, sched, sc = setup(False)
    sc.scale(((ref(x) - y) ** 2).mean()).backward()
    optimizer_step(_Wrap(ref), opt, sched, sc, grad_clip=0.5)
    m, opt, sched, sc = setup(True)
    sc.scale(((m(x) - y) ** 2).mean()).backward()
    optimizer_step(_Wrap(m), opt, sched, sc, grad_clip=0.5)
    assert torch.allclose(m.weight, ref.weight, atol=1e-6)  # clipping saw unscaled gradients
    before = m.weight.detach().clone()
    sc.scale((m(x) * float("inf")).mean()).backward()
    optimizer_step(_Wrap(m), opt, sched, sc)
    assert torch.equal(m.weight, before) and sc.get_scale() == 512.0  # skipped, scale halved


class _Wrap(torch.nn.Module):
    """make_optimizer expects named parameters of an AST-like model; a bare layer is the body."""

    def __init__(self, m):
        super().__init__()
        self.m = m


def test_nan_loss_stops_with_a_fix_it_message(tmp_path):
    from monitor.errors import MonitorError
    from monitor.train.optim import StepLosses

    ls = StepLosses(tmp_path / "steps.csv", [], [0.0, 0], "fp32")
    ls.add(0, 1, torch.tensor(0.7), 1e-3)
    ls.add(1, 1, torch.tensor(float("nan")), 1e-3)
    with pytest.raises(MonitorError, match="diverged.*optim.lr"):
        ls.flush()
    fp16 = StepLosses(tmp_path / "s16.csv", [], [0.0, 0], "fp16")  # the scaler skips a few overflowing steps
    fp16.add(0, 1, torch.tensor(float("inf")), 1e-3)
    fp16.flush()
    assert fp16.step_losses == [float("inf")]


def test_patience_counts_like_keras_and_undefined_metric_falls_back():
    from monitor.train.metrics import Selection

    sel = Selection("mAP")
    runs = [sel.update(e, {"mAP": v, "val_loss": 1.0}, patience=2) for e, v in enumerate([0.5, 0.6, 0.55, 0.58], 1)]
    assert runs == [(True, False), (True, False), (False, False), (False, True)]  # 2 epochs without improvement
    assert sel.best_epoch == 2
    sel = Selection("mAP")
    runs = [sel.update(e, {"mAP": float("nan"), "val_loss": v}, patience=1) for e, v in enumerate([0.9, 0.7, 0.8], 1)]
    assert sel.metric == "val_loss" and sel.best_epoch == 2 and runs[-1] == (False, True)  # not stuck at epoch 1
    sel = Selection("d_prime")
    assert sel.update(1, {"d_prime": 1.0}, None) == (True, False)
    assert sel.update(2, {"d_prime": float("inf")}, None) == (True, False)  # AUC 1: the best, not undefined


def test_better_and_epoch_from_the_fold_averaged_curve():
    from monitor.train.metrics import _better

    assert _better(float("inf"), 3.0, True)  # d' at AUC 1 is a value, not "undefined"
    assert not _better(float("nan"), None, True)
    assert _better(0.5, None, False)
    from monitor.train.cli import choose_epoch

    hist = [[{"mAP": None, "val_loss": v} for v in (0.9, 0.5, 0.7)], [{"mAP": None, "val_loss": v} for v in (0.8, 0.6, 0.4)]]
    assert choose_epoch(hist, "mAP") == (2, "val_loss")  # mean val_loss 0.85, 0.55, 0.55: first minimum
    hist = [[{"accuracy": a} for a in (0.5, 0.9, 0.8)], [{"accuracy": a} for a in (0.6, 0.7, 0.95)]]
    assert choose_epoch(hist, "accuracy") == (3, "accuracy")  # fold-averaged, not each fold's own best


def test_drop_path_for_every_start_and_bundle_front_end_checked(tmp_path, shared):
    from monitor.config import FbankConfig, Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle
    from monitor.train.model_init import build_model, from_bundle

    case = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
    torch.save(case["state_dict"], tmp_path / "official.pth")
    cfg = build_config({"model": {"init": "audioset", "checkpoint": str(tmp_path / "official.pth"), "size": "tiny224",
                                  "fstride": 16, "tstride": 16, "depth": 2, "drop_path_rate": 0.2},
                        "fbank": {"target_frames": 200}})
    m = build_model(cfg, ["frog"])
    assert m.v.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)  # was ignored for audioset starts
    assert torch.equal(m.v.blocks[1].attn.qkv.weight, case["state_dict"]["module.v.blocks.1.attn.qkv.weight"])
    old = AST(1, 16, 16, 128, 64, "tiny224", depth=1)
    pre = Preprocess(fbank=FbankConfig(target_frames=64, norm_mean=-3.0, norm_std=2.0))
    pre = type(pre)(pre.segment, type(pre.band)(high_hz=3000.0), pre.resample, pre.fbank)
    save_bundle(tmp_path / "b", old, name="b", version="1", labels=["frog"], task="multilabel", preprocessing=pre,
                thresholds={"frog": 0.5})
    geom = dict(fstride=16, tstride=16, input_fdim=128, input_tdim=64, model_size="tiny224", depth=1)
    with pytest.raises(Exception, match=r"band.high_hz=3000.0.*set band.high_hz"):
        from_bundle(str(tmp_path / "b"), ["frog"], geom, Preprocess(fbank=FbankConfig(target_frames=64)))
    from_bundle(str(tmp_path / "b"), ["frog"], geom, pre)  # the same front end: fine
    # norm stats: the bundle's, not recomputed
    from monitor.train.dataset import norm_stats_for

    bcfg = build_config({"model": {"init": "bundle", "checkpoint": str(tmp_path / "b")}})
    assert norm_stats_for(bcfg, None, [], tmp_path, False) == (-3.0, 2.0)


def test_bundle_folder_readable_by_colleagues(tmp_path):
    import os
    import stat

    from monitor.train.export import share_permissions

    folder = tmp_path / "bundle"
    folder.mkdir(mode=0o700)
    (folder / "model.safetensors").write_bytes(b"x")
    os.chmod(folder / "model.safetensors", 0o600)
    old = os.umask(0o022)
    try:
        share_permissions(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644


def test_training_reads_and_prepares_segments_as_monitor_run(tmp_path, wav_writer):
    """One reader and one front end: a training segment's features equal monitor run's (infer.decode_task)."""
    from monitor.config import FbankConfig, Preprocess
    from monitor.features import normalize
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches
    from monitor.train.dataset import SegmentDataset

    path = wav_writer(tmp_path / "frog" / "r.wav", 5.3, 22050, channels=2, noise=0.1)
    pre = Preprocess(segment=SEG, fbank=FbankConfig(target_frames=208))
    table, labels = from_folders(tmp_path, pre.segment)
    ds = SegmentDataset(table, labels, pre)
    (task,) = plan_batches([job_from_path(path, "frog/r.wav")], pre, batch_size=8).tasks
    want = decode_task(task, pre).data
    assert len(table) == len(want) == 3
    for i in range(len(table)):
        feats, n = ds.features(i)
        got = normalize(torch.from_numpy(feats), pre.fbank.norm_mean, pre.fbank.norm_std).numpy()
        np.testing.assert_array_equal(got, want[i])
    assert ds.features(2)[1] < 208  # the short last segment: its real frames before the padding
