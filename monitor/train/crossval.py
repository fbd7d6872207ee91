"""``monitor train --folds K``: grouped K-fold cross-validation into ``fold_<k>/``, and the ensemble it makes.

Every fold trains all epochs with shared normalisation, validates on its own groups and scores the
held-out test split (``fold == -1``) at the end. One epoch is chosen on the fold-averaged validation
curve (as the official ESC-50 recipe); ``cv_metrics.csv`` holds each fold at that epoch with mean and
std. The fold bundles form one *ensemble bundle* in ``<out>/bundle`` (``monitor run --model <out>``):
its members are the fold bundles (by path and sha256), its score the mean of their probabilities,
its thresholds calibrated on the out-of-fold scores (each cross-validated segment scored by the one
fold model that never trained on it; the averaged score on those segments would be optimistic,
since every other member trained on them). The test split is scored by the ensemble (the mean of the
folds' test scores, as ``monitor run`` averages them) and by each fold: ``test_metrics.csv``,
``test_scores.csv``, the model card. ``split.final_model`` then also trains one model on all the
(non-test) data for the chosen number of epochs, with the same thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monitor import __version__
from monitor.errors import MonitorError
from monitor.logs import plural
from monitor.model.bundle import load_bundle
from monitor.model.ensemble import OUT_OF_FOLD, save_ensemble
from monitor.train.calibrate import calibrate
from monitor.train.config import cache_dir_for
from monitor.train.dataset import SegmentDataset, compute_stats
from monitor.train.export import json_safe, model_card, share_permissions, write_val_scores
from monitor.train.metrics import MAXIMISE, SUMMARY_KEYS, evaluate_scores
from monitor.train.single import DONE, fmt, metrics_text, run_one, write_rows
from monitor.train.splits import assign_splits, kfold, save_split, warn_leaks
from monitor.train.table import summary, target_matrix

log = logging.getLogger(__name__)


def fold_rows(cfg, table, labels, fixed, k: int, out_dir: Path | None = None, resume: bool = False):
    """Fold 0..k-1 per row (-1: the test split), saved to ``folds.csv`` and reloaded on resume."""
    import pandas as pd

    if k < 2:
        raise MonitorError("--folds needs K >= 2")
    if (np.asarray(fixed) == "val").any():
        raise MonitorError("--folds makes its own validation folds; drop data.val_manifest")
    path = Path(out_dir) / "folds.csv" if out_dir is not None else None
    if resume and path is not None and path.is_file():
        fold = pd.read_csv(path, keep_default_na=False)["fold"].to_numpy(dtype=int)
        if len(fold) != len(table):
            raise MonitorError(f"--resume: the data changed since {path} was written; start a new run")
        return fold
    split = assign_splits(table, labels, dataclasses.replace(cfg.split, val_fraction=0.0, val_files=None), fixed)
    fold = kfold(table, labels, k, cfg.split.seed, exclude=split == "test")
    if cfg.split.warn_clip_names:
        warn_leaks(table, np.where(fold >= 0, fold.astype(str), "test"))
    if path is not None:
        df = table.copy()
        df["labels"] = [";".join(t) for t in df["labels"]]
        df["unknown"] = [";".join(t) for t in df["unknown"]]
        df["fold"] = fold
        df.to_csv(path, index=False)
    return fold


def shared_norm_stats(cfg, table, labels, rows, out_dir: Path, resume: bool, cache_dir: str | None):
    """One normalisation for every fold (so fold bundles share preprocessing): the training data of all folds."""

    mode = cfg.data.norm_stats
    if mode == "auto":
        mode = "bundle" if cfg.model.init == "bundle" else "train"
    if mode != "train":
        return None  # config / bundle stats are shared already
    path = out_dir / "norm_stats.json"
    if resume and path.is_file():
        st = json.loads(path.read_text())
        return float(st["mean"]), float(st["std"])
    ds = SegmentDataset(table, labels, cfg.preprocess, cache_dir)
    mean, std = compute_stats(ds, rows)
    path.write_text(json.dumps({"mean": mean, "std": std, "from": f"all folds ({len(rows)} segments)"}) + "\n")
    log.info("normalisation shared by all folds: mean %.4f std %.4f", mean, std)
    return float(mean), float(std)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def choose_epoch(histories: list[list[dict[str, Any]]], metric: str) -> tuple[int, str]:
    """(1-based epoch, metric) maximising (minimising for val_loss) the fold-averaged curve; an
    undefined metric falls back to val_loss."""
    n = min(len(h) for h in histories)

    def curve(key):
        return np.array([[_num(h[e].get(key)) for e in range(n)] for h in histories]).mean(0)

    c = curve(metric)
    if np.isnan(c).all() and metric != "val_loss":
        log.warning("eval.metric %s is undefined on the folds; choosing the epoch by val_loss", metric)
        metric, c = "val_loss", curve("val_loss")
    if np.isnan(c).all():
        return n, metric
    c = np.where(np.isnan(c), -np.inf if MAXIMISE[metric] else np.inf, c)
    return int(np.argmax(c) if MAXIMISE[metric] else np.argmin(c)) + 1, metric


def mean_std_text(mean, std) -> str:
    return ", ".join(f"{key} {fmt(mean[key])} ± {fmt(std[key])}" for key in SUMMARY_KEYS
                     if not math.isnan(_num(mean[key])))


def cross_validate(cfg, out_dir: Path, table, labels, fixed, k: int, *, name: str, resume: bool = False,
                   progress: bool = True, data_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grouped K-fold: fold ``i`` validates on its groups, trains on the rest and scores the test rows."""
    import pandas as pd

    fold = fold_rows(cfg, table, labels, fixed, k, out_dir, resume)
    cache_dir = cache_dir_for(cfg, out_dir)
    norm = shared_norm_stats(cfg, table, labels, np.flatnonzero(fold >= 0), out_dir, resume, cache_dir)
    test_rows = np.flatnonzero(fold < 0)
    histories, oof = [], np.full((len(table), len(labels)), np.nan, dtype=np.float32)
    fold_test: list[np.ndarray] = []
    test_rows_out: list[dict[str, Any]] = []
    for i in range(k):
        fdir = out_dir / f"fold_{i + 1}"
        fdir.mkdir(parents=True, exist_ok=True)
        split = np.where(fold == i, "val", np.where(fold >= 0, "train", "test")).astype(object)
        save_split(table, split, fdir / "splits.csv")
        if (fdir / DONE).is_file():
            res = json.loads((fdir / DONE).read_text())
        else:
            res = run_one(cfg, fdir, table, labels, split, name=f"{name}-fold{i + 1}", resume=resume,
                          progress=progress, norm_stats=norm, select=False, cache_dir=cache_dir,
                          data_summary=data_summary)
        histories.append(res["history"])
        val = pd.read_csv(fdir / "val_scores.csv", keep_default_na=False)
        oof[np.flatnonzero(fold == i)] = val[labels].to_numpy(dtype=np.float32)
        if len(test_rows):
            fold_test.append(pd.read_csv(fdir / "test_scores.csv", keep_default_na=False)[labels].to_numpy(np.float64))
            test_rows_out.append({"model": f"fold_{i + 1}", "thresholds": "this fold's validation",
                                  **(res.get("test_metrics") or {})})
        log.info("fold %d/%d done", i + 1, k)
    epoch, metric = choose_epoch(histories, cfg.eval.metric)
    keys = ["val_loss", *SUMMARY_KEYS]
    rows = [{"fold": i + 1, "epoch": epoch, **{key: h[epoch - 1].get(key) for key in keys}}
            for i, h in enumerate(histories)]
    df = pd.DataFrame(rows)
    mean = {"fold": "mean", "epoch": epoch, **{key: df[key].astype(float).mean() for key in keys}}
    std = {"fold": "std", "epoch": epoch, **{key: df[key].astype(float).std(ddof=1) for key in keys}}
    pd.DataFrame(rows + [mean, std]).to_csv(out_dir / "cv_metrics.csv", index=False)
    n = min(len(h) for h in histories)
    curve = pd.DataFrame({"epoch": range(1, n + 1)})
    for i, h in enumerate(histories):
        curve[f"fold_{i + 1}"] = [h[e].get(metric) for e in range(n)]
    vals = curve[[f"fold_{i + 1}" for i in range(k)]].astype(float)
    curve["mean"], curve["std"] = vals.mean(1), vals.std(1, ddof=1)
    curve.to_csv(out_dir / "cv_curve.csv", index=False)
    log.info("%d-fold cross-validation: epoch %d chosen on the fold-averaged %s; %s", k, epoch, metric,
             mean_std_text(mean, std))
    rows_oof = np.flatnonzero(fold >= 0)
    oof_df = table.iloc[rows_oof][["file", "start_s", "end_s"]].copy()
    oof_df["fold"] = fold[rows_oof] + 1
    oof_df[labels] = oof[rows_oof]
    oof_df.to_csv(out_dir / "oof_scores.csv", index=False)
    c = cfg.calibrate
    y = target_matrix(table, labels)
    thr, cal = calibrate(y[rows_oof], oof[rows_oof], labels, c.method, c.precision, c.default)
    oof_metrics = evaluate_scores(y[rows_oof], oof[rows_oof], labels, cfg.task, thr)
    write_rows(out_dir / "oof_per_label.csv", oof_metrics["per_label"])
    text = (f"{k}-fold grouped cross-validation chose {plural(epoch, 'epoch')} on the fold-averaged {metric}: "
            + mean_std_text(mean, std) + ".")
    cv = {"folds": k, "epoch": epoch, "metric": metric, "mean": mean, "std": std}
    test_metrics = None
    if len(test_rows):  # the ensemble's score is the mean of its members' probabilities, as monitor run averages
        ens = np.mean(np.stack(fold_test), axis=0).astype(np.float32)
        test_metrics = evaluate_scores(y[test_rows], ens, labels, cfg.task, thr)
        write_val_scores(out_dir / "test_scores.csv", table, test_rows, labels, ens, y[test_rows])
        write_rows(out_dir / "test_per_label.csv", test_metrics["per_label"])
        test_rows_out.append({"model": "ensemble", "thresholds": "out-of-fold", **test_metrics["summary"]})
        log.info("test (held out), the ensemble of %d folds: %s", k, metrics_text(test_metrics["summary"]))
    bundle = export_ensemble(cfg, out_dir, k, name=name, table=table, fold=fold, thresholds=thr, calibration=cal,
                             oof_metrics=oof_metrics, test_metrics=test_metrics, cv={**cv, "text": text},
                             data_summary=data_summary or summary(table, labels), test_per_fold=test_rows_out)
    out: dict[str, Any] = {"folds": rows, "mean": mean, "std": std, "epoch": epoch, "metric": metric,
                           "bundles": [str(out_dir / f"fold_{i + 1}" / "bundle") for i in range(k)],
                           "bundle": str(bundle.path), "thresholds": thr,
                           "test_metrics": test_metrics["summary"] if test_metrics else None, "final_bundle": None}
    if cfg.split.final_model:
        final_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=epoch))
        split = np.where(fold >= 0, "train", "test").astype(object)
        final_text = text + (" This model was then trained on all those data for that many epochs; its thresholds "
                             "come from the folds' out-of-fold validation scores.")
        fdir = out_dir / "final"
        fdir.mkdir(parents=True, exist_ok=True)
        save_split(table, split, fdir / "splits.csv")
        if (fdir / DONE).is_file():
            res = json.loads((fdir / DONE).read_text())
        else:
            res = run_one(final_cfg, fdir, table, labels, split, name=name, resume=resume, progress=progress,
                          norm_stats=norm, select=False, cache_dir=cache_dir, thresholds=thr,
                          cv={**cv, "text": final_text}, data_summary=data_summary)
        out.update(final_bundle=res["bundle"], final_test_metrics=res["test_metrics"])
        if res["test_metrics"]:
            test_rows_out.append({"model": "final", "thresholds": "out-of-fold", **res["test_metrics"]})
    if test_rows_out:
        pd.DataFrame(test_rows_out).to_csv(out_dir / "test_metrics.csv", index=False)
    (out_dir / DONE).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    return out


def export_ensemble(cfg, out_dir: Path, k: int, *, name: str, table, fold, thresholds, calibration, oof_metrics,
                    test_metrics, cv, data_summary, test_per_fold):
    """``<out_dir>/bundle``: the fold bundles as one ensemble bundle, with its model card."""

    def pack(m):
        return None if not m else dict(summary=m["summary"], per_label=[dict(r) for r in m["per_label"]],
                                       confusion=m.get("confusion"))

    members = [load_bundle(out_dir / f"fold_{i + 1}" / "bundle") for i in range(k)]
    counts = {"cross-validated": int((fold >= 0).sum()), "test": int((fold < 0).sum())}
    counts = {key: v for key, v in counts.items() if v}
    init = cfg.model.init + (f" ({cfg.model.checkpoint})" if cfg.model.checkpoint else "")
    provenance = dict(
        trained_with=f"monitor {__version__} train --folds {k}",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), init=init, data=dict(data_summary),
        splits=dict(counts=counts, seed=cfg.split.seed,
                    test_groups=sorted(set(table["group"][fold < 0]))[:500]),
        metrics=json_safe(pack(oof_metrics)), test_metrics=json_safe(pack(test_metrics)),
        test_per_model=json_safe(test_per_fold),
        cross_validation=json_safe({x: v for x, v in cv.items() if x != "text"}),
        calibration=json_safe(calibration), config=json_safe(cfg.to_dict()),
    )
    note = (f"calibrated ({cfg.calibrate.method}) on the out-of-fold scores: each of the {counts['cross-validated']} "
            f"cross-validated segments scored by the one fold model that did not train on it")
    bundle = save_ensemble(out_dir / "bundle", members, name=name, version=cfg.export.version, thresholds=thresholds,
                           rule=OUT_OF_FOLD, note=note, provenance=provenance)
    text = cv["text"] + (f" The {k} fold models (each with its {members[0].provenance.get('weights', 'last')} "
                         "weights, as scored on its validation fold) form this ensemble (the mean of their "
                         f"probabilities); its thresholds are {note}.")
    if test_metrics:
        text += " Test split per model: " + "; ".join(
            f"{r['model']} mAP {fmt(r.get('mAP'))}" for r in test_per_fold) + " (test_metrics.csv)."
    card = model_card(name, cfg.export.version, list(bundle.labels), cfg.task, data_summary, counts, oof_metrics,
                      thresholds, init, cfg.export.intended_use, f"an ensemble of the {k} fold models", test_metrics,
                      "", {"text": text})
    card = card.replace("## Validation (chose the epoch and the thresholds: optimistic)",
                        "## Out-of-fold validation (chose the thresholds: optimistic)")
    card = card.replace("at the thresholds chosen on validation.", "at the thresholds chosen on the out-of-fold scores.")
    (Path(bundle.path) / "model_card.md").write_text(card, encoding="utf-8")
    (out_dir / "model_card.md").write_text(card, encoding="utf-8")
    share_permissions(Path(bundle.path))
    return bundle
