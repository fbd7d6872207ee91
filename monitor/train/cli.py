"""``monitor train CONFIG.yaml [--out DIR] [--resume] [--folds K] [--plan] [--set SECTION.KEY=VALUE ...]``.

One run: load data -> grouped split (saved) -> fit -> calibrate thresholds on validation -> score the
held-out test split -> export a bundle. ``--plan`` writes ``plan.csv`` (every training window with
its group, split and per-label target) and prints counts, without training. ``--folds K``: grouped
K-fold cross-validation into ``fold_<k>/``: every fold trains all epochs with shared normalisation
(so the fold bundles form an ensemble ``monitor run`` accepts), one epoch is chosen on the
fold-averaged validation curve (as the official ESC-50 recipe), ``cv_metrics.csv`` holds each fold
at that epoch with mean and std; ``split.final_model`` then trains one model on all the
(non-test) data for that many epochs, with thresholds from the folds' out-of-fold scores.

A finished run is marked by ``train_done.json``; ``--resume`` on it returns its results, and
``--resume`` before any checkpoint exists starts the run (a notebook cell re-run after a disconnect).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError
from monitor.logs import add_log_file, set_console_level
from monitor.train.calibrate import calibrate
from monitor.train.config import cache_dir_for, config_yaml
from monitor.train.dataset import SegmentDataset, compute_stats
from monitor.train.export import export_bundle, json_safe, write_val_scores
from monitor.train.fit import fit
from monitor.train.metrics import MAXIMISE, SUMMARY_KEYS, evaluate_scores
from monitor.train.recipes import load_recipe
from monitor.train.sources import load_source, load_test_folder
from monitor.train.splits import assign_splits, kfold, load_split, save_split, warn_leaks
from monitor.train.table import same_audio, summary, target_matrix

log = logging.getLogger(__name__)

DONE = "train_done.json"


# --- data and splits -----------------------------------------------------------------------------------

def load_data(cfg):
    """(table, labels, fixed): every row of the recipe's data; ``fixed`` marks rows whose split is given
    by the data itself (``val`` from ``data.val_manifest``, ``test`` from ``split.test_folder``), else ''."""
    import numpy as np
    import pandas as pd

    table, labels, fixed_val = load_source(cfg)
    fixed = [""] * len(table)
    if fixed_val is not None:
        table = pd.concat([table, fixed_val], ignore_index=True)
        fixed += ["val"] * len(fixed_val)
    if cfg.split.test_folder:
        test = load_test_folder(cfg, labels)
        test["group"] = ["test:" + g for g in test["group"]]  # never the same group name as a training file's
        canon = same_audio(sorted({Path(f) for f in table["file"]} | {Path(f) for f in test["file"]}))
        ours = {canon[Path(f)] for f in table["file"]}
        both = sorted({str(f) for f in test["file"] if canon[Path(f)] in ours})
        if both:
            raise MonitorError(f"{len(both)} recordings of split.test_folder are also in the training data (e.g. "
                               f"{both[0]}); a test split must be new audio")
        table = pd.concat([table, test], ignore_index=True)
        fixed += ["test"] * len(test)
    return table, labels, np.array(fixed, dtype=object)


def split_rows(cfg, table, labels, fixed, out_dir: Path | None = None, resume: bool = False):
    """``train``/``val``/``test`` per row; saved to ``splits.csv`` and reloaded on resume (it never changes)."""

    path = Path(out_dir) / "splits.csv" if out_dir is not None else None
    if resume and path is not None and path.is_file():
        split = load_split(path)
        if len(split) != len(table):
            raise MonitorError(f"--resume: the data changed since {path} was written ({len(split)} vs {len(table)} "
                               "segments); start a new run")
    else:
        split = assign_splits(table, labels, cfg.split, fixed)
        if cfg.split.warn_clip_names:
            warn_leaks(table, split)
    if path is not None:
        save_split(table, split, path)
    return split


def fold_rows(cfg, table, labels, fixed, k: int, out_dir: Path | None = None, resume: bool = False):
    """Fold 0..k-1 per row (-1: the test split), saved to ``folds.csv`` and reloaded on resume."""
    import dataclasses

    import numpy as np
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


# --- the plan ------------------------------------------------------------------------------------------

def plan_table(table, labels, split):
    """One row per training window: ``file, start_s, end_s, group, split`` and per label 1, 0 or '' (unknown)."""
    import numpy as np
    import pandas as pd

    y = target_matrix(table, labels)
    df = pd.DataFrame({"file": table["file"], "start_s": table["start_s"], "end_s": table["end_s"],
                       "group": table["group"], "split": list(split)})
    for j, lab in enumerate(labels):
        df[lab] = ["" if np.isnan(v) else str(int(v)) for v in y[:, j]]
    return df


def plan_counts(plan, labels) -> str:
    """Counts per label and split as ``positives / negatives / unknown`` (a printable table)."""
    splits = [s for s in ("train", "val", "test") if (plan["split"] == s).any()]
    splits += sorted(s for s in set(plan["split"]) if s not in splits)
    head = ["label"] + [f"{s} (+ / - / ?)" for s in splits]
    rows = []
    for lab in labels:
        row = [lab]
        for s in splits:
            col = plan.loc[plan["split"] == s, lab]
            row.append(f"{(col == '1').sum()} / {(col == '0').sum()} / {(col == '').sum()}")
        rows.append(row)
    rows.append(["segments"] + [str(int((plan["split"] == s).sum())) for s in splits])
    rows.append(["groups"] + [str(plan.loc[plan["split"] == s, "group"].nunique()) for s in splits])
    width = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in [head] + rows)


def plan(cfg, out_dir: Path, folds: int | None = None) -> tuple[Path, str]:
    """``monitor train --plan``: write ``<out_dir>/plan.csv`` without training; returns (path, counts)."""
    import numpy as np

    table, labels, fixed = load_data(cfg)
    if folds:
        fold = fold_rows(cfg, table, labels, fixed, folds)
        split = np.where(fold >= 0, np.char.add("fold_", (fold + 1).astype(str)), "test").astype(object)
    else:
        split = split_rows(cfg, table, labels, fixed)
    df = plan_table(table, labels, split)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "plan.csv"
    df.to_csv(path, index=False)
    return path, plan_counts(df, labels)


# --- one run ---------------------------------------------------------------------------------------------

def _write_rows(path: Path, rows) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def run_one(cfg, out_dir: Path, table, labels, split, *, name: str, resume: bool = False,
            stop_after_steps: int | None = None, progress: bool = True, norm_stats=None, select: bool = True,
            cache_dir: str | None = None, thresholds: dict[str, float] | None = None,
            cv: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, calibrate (on validation, unless ``thresholds`` are given), score the test split, export.

    Returns {"bundle", "metrics" (validation summary), "test_metrics", "result": FitResult, "thresholds"}.
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(config_yaml(cfg), encoding="utf-8")
    data_summary = summary(table, labels)
    (out_dir / "data_summary.json").write_text(json.dumps(data_summary, indent=2) + "\n")
    result = fit(cfg, out_dir, table=table, labels=labels, split=split,
                 resume=resume and (out_dir / "checkpoints" / "last.pt").is_file(),
                 stop_after_steps=stop_after_steps, progress=progress, norm_stats=norm_stats, select=select,
                 cache_dir=cache_dir)
    if result.interrupted:
        return {"bundle": None, "metrics": None, "test_metrics": None, "result": result}
    metrics = test_metrics = None
    rows: list = []
    c = cfg.calibrate
    has_val = result.val_scores is not None and len(result.val_scores)
    if thresholds is not None:
        thr = dict(thresholds)
    elif has_val:
        thr, rows = calibrate(result.val_targets, result.val_scores, labels, c.method, c.precision, c.default)
    else:
        thr = {lab: c.default for lab in labels}
    if has_val:
        metrics = evaluate_scores(result.val_targets, result.val_scores, labels, cfg.task, thr)
        write_val_scores(out_dir / "val_scores.csv", table, result.extra["val_index"], labels, result.val_scores,
                         result.val_targets)
        _write_rows(out_dir / "val_per_label.csv", metrics["per_label"])
    if result.test_scores is not None and len(result.test_scores):
        test_metrics = evaluate_scores(result.test_targets, result.test_scores, labels, cfg.task, thr)
        write_val_scores(out_dir / "test_scores.csv", table, result.extra["test_index"], labels, result.test_scores,
                         result.test_targets)
        _write_rows(out_dir / "test_per_label.csv", test_metrics["per_label"])
    bundle = export_bundle(out_dir, result, cfg, name=name, table=table, split=split, data_summary=data_summary,
                           thresholds=thr, metrics=metrics, calibration=rows, config_dict=cfg.to_dict(),
                           test_metrics=test_metrics, cv=cv)
    for label, m in (("validation", metrics), ("test (held out)", test_metrics)):
        if m:
            s = m["summary"]
            log.info("%s: %s", label, ", ".join(f"{k} {_fmt(s[k])}" for k in SUMMARY_KEYS))
    out = {"bundle": str(bundle.path), "metrics": metrics["summary"] if metrics else None,
           "test_metrics": test_metrics["summary"] if test_metrics else None, "thresholds": thr,
           "history": result.history, "weights": result.chosen}
    (out_dir / DONE).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    if not cfg.export.keep_checkpoint:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # resume state: the bundle holds the weights
    return {**out, "result": result}


# --- cross-validation ----------------------------------------------------------------------------------

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
    import numpy as np

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


def cross_validate(cfg, out_dir: Path, table, labels, fixed, k: int, *, name: str, resume: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Grouped K-fold: fold ``i`` validates on its groups and trains on the rest (test rows: neither)."""
    import dataclasses

    import numpy as np
    import pandas as pd

    fold = fold_rows(cfg, table, labels, fixed, k, out_dir, resume)
    cache_dir = cache_dir_for(cfg, out_dir)
    norm = shared_norm_stats(cfg, table, labels, np.flatnonzero(fold >= 0), out_dir, resume, cache_dir)
    histories, oof = [], np.full((len(table), len(labels)), np.nan, dtype=np.float32)
    for i in range(k):
        fdir = out_dir / f"fold_{i + 1}"
        fdir.mkdir(parents=True, exist_ok=True)
        split = np.where(fold == i, "val", np.where(fold >= 0, "train", "-")).astype(object)
        save_split(table, split, fdir / "splits.csv")
        if (fdir / DONE).is_file():
            res = json.loads((fdir / DONE).read_text())
        else:
            res = run_one(cfg, fdir, table, labels, split, name=f"{name}-fold{i + 1}", resume=resume,
                          progress=progress, norm_stats=norm, select=False, cache_dir=cache_dir)
        histories.append(res["history"])
        val = pd.read_csv(fdir / "val_scores.csv", keep_default_na=False)
        oof[np.flatnonzero(fold == i)] = val[labels].to_numpy(dtype=np.float32)
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
             ", ".join(f"{key} {_fmt(mean[key])} ± {_fmt(std[key])}" for key in SUMMARY_KEYS
                       if not math.isnan(_num(mean[key]))))
    rows_oof = np.flatnonzero(fold >= 0)
    oof_df = table.iloc[rows_oof][["file", "start_s", "end_s"]].copy()
    oof_df["fold"] = fold[rows_oof] + 1
    oof_df[labels] = oof[rows_oof]
    oof_df.to_csv(out_dir / "oof_scores.csv", index=False)
    out: dict[str, Any] = {"folds": rows, "mean": mean, "std": std, "epoch": epoch, "metric": metric,
                           "bundles": [str(out_dir / f"fold_{i + 1}" / "bundle") for i in range(k)], "bundle": None}
    if cfg.split.final_model:
        c = cfg.calibrate
        thr, _ = calibrate(target_matrix(table, labels)[rows_oof], oof[rows_oof], labels, c.method, c.precision,
                           c.default)
        final_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=epoch))
        split = np.where(fold >= 0, "train", "test").astype(object)
        text = (f"{k}-fold grouped cross-validation chose {epoch} epochs on the fold-averaged {metric}: "
                + ", ".join(f"{key} {_fmt(mean[key])} ± {_fmt(std[key])}" for key in SUMMARY_KEYS
                            if not math.isnan(_num(mean[key])))
                + ". This model was then trained on all those data for that many epochs; its thresholds come "
                  "from the folds' out-of-fold validation scores.")
        cv = {"folds": k, "epoch": epoch, "metric": metric, "mean": mean, "std": std, "text": text}
        fdir = out_dir / "final"
        fdir.mkdir(parents=True, exist_ok=True)
        save_split(table, split, fdir / "splits.csv")
        if (fdir / DONE).is_file():
            res = json.loads((fdir / DONE).read_text())
        else:
            res = run_one(final_cfg, fdir, table, labels, split, name=name, resume=resume, progress=progress,
                          norm_stats=norm, select=False, cache_dir=cache_dir, thresholds=thr, cv=cv)
        out.update(bundle=res["bundle"], test_metrics=res["test_metrics"])
    (out_dir / DONE).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    return out


# --- the command -----------------------------------------------------------------------------------------

def _has_checkpoint(out_dir: Path) -> bool:
    return any(out_dir.glob("checkpoints/last.pt")) or any(out_dir.glob("*/checkpoints/last.pt"))


def _cut_log(out_dir: Path) -> None:
    """On resume: cut ``train.log`` back to what it held at the newest checkpoint (what came after is re-done)."""
    sides = sorted(list(out_dir.glob("checkpoints/last.json")) + list(out_dir.glob("*/checkpoints/last.json")),
                   key=lambda p: p.stat().st_mtime)
    logf = out_dir / "train.log"
    if not sides or not logf.is_file():
        return
    side = json.loads(sides[-1].read_text())
    keep = int(side.get("log_bytes", 0))
    if 0 < keep < logf.stat().st_size:
        with open(logf, "r+b") as fh:
            fh.truncate(keep)
        log.info("train.log cut back to the checkpoint at step %d (what followed it is done again)",
                 side.get("global_step", 0))


def train(cfg, out_dir: Path, *, name: str, resume: bool = False, folds: int | None = None,
          progress: bool = True, stop_after_steps: int | None = None) -> dict[str, Any]:
    """The whole ``monitor train``: data -> (split | K folds) -> fit -> calibrate -> export.

    ``resume``: continue from the newest checkpoint; with none yet, start (and say so); on a finished
    run, return its results. Without ``resume``, a folder holding a run is refused (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    if (out_dir / DONE).is_file():
        if resume:
            log.info("%s holds a finished training run; nothing to resume", out_dir)
            return {**json.loads((out_dir / DONE).read_text()), "result": None, "finished": True}
        raise MonitorError(f"{out_dir} holds a finished training run; choose another --out (it is never overwritten)")
    if cfg.data.source == "embeddings":  # a head on stored embeddings: seconds, no checkpoints
        from monitor.train.headfit import train_head

        if folds:
            raise MonitorError("--folds is not for data.source: embeddings (a head trains in seconds: use split.*)")
        return train_head(cfg, out_dir, name=name, progress=progress)
    if _has_checkpoint(out_dir):
        if not resume:
            raise MonitorError(f"{out_dir} already holds a training run; use --resume to continue it or another --out")
        _cut_log(out_dir)
    elif resume:
        log.warning("--resume: no checkpoint in %s yet; starting the run from the beginning", out_dir)
        resume = False
    out_dir.mkdir(parents=True, exist_ok=True)
    table, labels, fixed = load_data(cfg)
    log.info("data: %d segments, %d groups, labels %s", len(table), table["group"].nunique(), labels)
    if folds:
        return cross_validate(cfg, out_dir, table, labels, fixed, folds, name=name, resume=resume, progress=progress)
    split = split_rows(cfg, table, labels, fixed, out_dir, resume)
    return run_one(cfg, out_dir, table, labels, split, name=name, resume=resume, stop_after_steps=stop_after_steps,
                   progress=progress)


def train_command(args) -> int:
    """CLI entry: ``args.config``, ``args.out``, ``args.resume``, ``args.folds``, ``args.plan``, ``args.set``."""

    cfg = load_recipe(args.config, list(getattr(args, "set", None) or []))  # a file, or a packaged recipe's name
    name = cfg.export.name or Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if getattr(args, "plan", False):
        path, counts = plan(cfg, out, args.folds)
        print(counts)
        print(f"plan: {path} (positives / negatives / unknown per label and split; nothing trained)")
        return 0
    if getattr(args, "verbose", 0) <= 0:
        set_console_level(logging.INFO)  # per-epoch metrics on the console, as in a notebook
    out.mkdir(parents=True, exist_ok=True)
    add_log_file(out / "train.log")
    res = train(cfg, out, name=name, resume=bool(args.resume), folds=args.folds)
    if args.folds:
        m, s = res["mean"], res["std"]
        print(f"{args.folds}-fold cross-validation (grouped), epoch {res['epoch']} chosen on the fold-averaged "
              f"{res['metric']}: " + ", ".join(f"{k} {_fmt(m[k])} ± {_fmt(s[k])}" for k in SUMMARY_KEYS
                                              if not math.isnan(_num(m[k]))))
        print(f"per fold: {out / 'cv_metrics.csv'}; fold bundles (an ensemble for monitor run): {out}/fold_*/bundle")
        if res.get("bundle"):
            print(f"final model: {res['bundle']}")
        return 0
    print(f"bundle: {res['bundle']}")
    for label, key in (("validation", "metrics"), ("test (held out)", "test_metrics")):
        if res.get(key):
            print(f"{label}: " + ", ".join(f"{k} {_fmt(res[key].get(k))}" for k in SUMMARY_KEYS))
    return 0


def _fmt(v) -> str:
    """A metric for people: 4 decimals; n/a when undefined (None, NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
