"""``monitor train CONFIG.yaml [--out DIR] [--resume] [--folds K] [--set SECTION.KEY=VALUE ...]``.

One run: load data -> grouped split (saved) -> fit -> calibrate thresholds on validation -> export a
bundle. ``--folds K``: grouped K-fold cross-validation into ``fold_<k>/`` with a bundle per fold
(usable together as an ensemble) and ``cv_metrics.csv`` (per fold, mean and std).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("mAP", "mAUC", "d_prime", "accuracy", "macro_f1")


def _split_for(cfg, table, labels, out_dir: Path, resume: bool, fixed_val=None):
    """(table, split) for one run; the split is reloaded on resume so it can never change."""
    import numpy as np
    import pandas as pd

    from monitor.train.splits import check_disjoint, load_split, save_split, train_val_split

    path = out_dir / "splits.csv"
    if fixed_val is not None:
        table = pd.concat([table, fixed_val], ignore_index=True)
        split = np.array(["train"] * (len(table) - len(fixed_val)) + ["val"] * len(fixed_val), dtype=object)
    elif resume and path.is_file():
        split = load_split(path)
        if len(split) != len(table):
            raise MonitorError(f"--resume: the data changed since {path} was written ({len(split)} vs {len(table)} "
                               "segments); start a new run")
    else:
        val_files = None
        if cfg.split.val_files:
            val_files = Path(cfg.split.val_files).read_text(encoding="utf-8").splitlines()
        split = train_val_split(table, labels, cfg.split.val_fraction, cfg.split.seed, val_files)
    if fixed_val is None and not cfg.split.val_files:
        check_disjoint(table, split)
    save_split(table, split, path)
    return table, split


def run_one(cfg, out_dir: Path, table, labels, split, *, name: str, resume: bool = False,
            stop_after_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit, calibrate, evaluate, export. Returns {"bundle": path, "metrics": summary or None, "result": FitResult}."""

    from monitor.train.calibrate import calibrate
    from monitor.train.config import config_yaml
    from monitor.train.data import summary
    from monitor.train.engine import fit
    from monitor.train.export import export_bundle, write_val_scores
    from monitor.train.metrics import evaluate_scores

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(config_yaml(cfg), encoding="utf-8")
    data_summary = summary(table, labels)
    (out_dir / "data_summary.json").write_text(json.dumps(data_summary, indent=2) + "\n")
    result = fit(cfg, out_dir, table=table, labels=labels, split=split, resume=resume,
                 stop_after_steps=stop_after_steps, progress=progress)
    if result.interrupted:
        return {"bundle": None, "metrics": None, "result": result}
    metrics, rows = None, []
    c = cfg.calibrate
    if result.val_scores is not None and len(result.val_scores):
        thr, rows = calibrate(result.val_targets, result.val_scores, labels, c.method, c.precision, c.default)
        metrics = evaluate_scores(result.val_targets, result.val_scores, labels, cfg.task, thr)
        write_val_scores(out_dir / "val_scores.csv", table, result.extra["val_index"], labels, result.val_scores,
                         result.val_targets)
        _write_per_label(out_dir / "val_per_label.csv", metrics["per_label"])
    else:
        thr = {lab: c.default for lab in labels}
    bundle = export_bundle(out_dir, result, cfg, name=name, table=table, split=split, data_summary=data_summary,
                           thresholds=thr, metrics=metrics, calibration=rows, config_dict=cfg.to_dict())
    if metrics:
        s = metrics["summary"]
        log.info("validation: %s", ", ".join(f"{k} {s[k]:.4f}" for k in SUMMARY_KEYS))
    return {"bundle": bundle.path, "metrics": metrics["summary"] if metrics else None, "result": result,
            "thresholds": thr}


def _write_per_label(path: Path, rows) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cross_validate(cfg, out_dir: Path, table, labels, k: int, *, name: str, resume: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Grouped K-fold: fold ``i`` validates on its groups and trains on the rest."""
    import numpy as np
    import pandas as pd

    from monitor.train.splits import kfold, save_split

    folds_file = out_dir / "folds.csv"
    if resume and folds_file.is_file():
        fold = pd.read_csv(folds_file)["fold"].to_numpy()
    else:
        fold = kfold(table, labels, k, cfg.split.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        df = table.copy()
        df["labels"] = [";".join(t) for t in df["labels"]]
        df["fold"] = fold
        df.to_csv(folds_file, index=False)
    rows = []
    for i in range(k):
        fdir = out_dir / f"fold_{i + 1}"
        fdir.mkdir(parents=True, exist_ok=True)
        split = np.where(fold == i, "val", "train").astype(object)
        save_split(table, split, fdir / "splits.csv")
        done = (fdir / "bundle" / "bundle.json").is_file()
        if resume and done:
            res = json.loads((fdir / "bundle" / "bundle.json").read_text())["provenance"]["metrics"]["summary"]
        else:
            res = run_one(cfg, fdir, table, labels, split, name=f"{name}-fold{i + 1}",
                          resume=resume and (fdir / "checkpoints" / "last.pt").is_file(), progress=progress)["metrics"]
        rows.append({"fold": i + 1, **{key: (res or {}).get(key) for key in SUMMARY_KEYS}})
        log.info("fold %d/%d: %s", i + 1, k, rows[-1])
    df = pd.DataFrame(rows)
    mean = {"fold": "mean", **{key: df[key].astype(float).mean() for key in SUMMARY_KEYS}}
    std = {"fold": "std", **{key: df[key].astype(float).std(ddof=1) if k > 1 else 0.0 for key in SUMMARY_KEYS}}
    out = pd.DataFrame(rows + [mean, std])
    out.to_csv(out_dir / "cv_metrics.csv", index=False)
    return {"folds": rows, "mean": mean, "std": std}


def train(cfg, out_dir: Path, *, name: str, resume: bool = False, folds: int | None = None,
          progress: bool = True, stop_after_steps: int | None = None) -> dict[str, Any]:
    """The whole ``monitor train``: data -> (split | K folds) -> fit -> calibrate -> export."""
    from monitor.train.data import load_source

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume and (out_dir / "checkpoints").exists():
        raise MonitorError(f"{out_dir} already holds a training run; use --resume to continue it or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    table, labels, fixed_val = load_source(cfg)
    log.info("data: %d segments, %d groups, labels %s", len(table), table["group"].nunique(), labels)
    if folds:
        if folds < 2:
            raise MonitorError("--folds needs K >= 2")
        return cross_validate(cfg, out_dir, table, labels, folds, name=name, resume=resume, progress=progress)
    table, split = _split_for(cfg, table, labels, out_dir, resume, fixed_val)
    return run_one(cfg, out_dir, table, labels, split, name=name, resume=resume, stop_after_steps=stop_after_steps,
                   progress=progress)


def train_command(args) -> int:
    """CLI entry: ``args.config``, ``args.out``, ``args.resume``, ``args.folds``, ``args.set``."""
    import math

    from monitor.logs import add_log_file
    from monitor.resources import load_recipe

    cfg = load_recipe(args.config, list(getattr(args, "set", None) or []))  # a file, or a packaged recipe's name
    name = cfg.export.name or Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    out.mkdir(parents=True, exist_ok=True)
    add_log_file(out / "train.log")
    res = train(cfg, out, name=name, resume=bool(args.resume), folds=args.folds)
    if args.folds:
        m, s = res["mean"], res["std"]
        print(f"{args.folds}-fold cross-validation (grouped): " + ", ".join(
            f"{k} {m[k]:.4f} ± {s[k]:.4f}" for k in SUMMARY_KEYS if not math.isnan(m[k])))
        print(f"per fold: {out / 'cv_metrics.csv'}; bundles: {out}/fold_*/bundle")
        return 0
    print(f"bundle: {res['bundle']}")
    if res["metrics"]:
        print("validation: " + ", ".join(f"{k} {res['metrics'][k]:.4f}" for k in SUMMARY_KEYS))
    return 0
