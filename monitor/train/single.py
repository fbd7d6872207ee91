"""One training run: fit -> calibrate thresholds on validation (unless given) -> score the held-out test
split -> export the bundle, with the run-level files (``val_scores.csv``, ``test_scores.csv``, per-label
tables, ``data_summary.json``) and ``train_done.json``, which marks the run finished."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from monitor.train.calibrate import calibrate
from monitor.train.config import config_yaml
from monitor.train.export import export_bundle, json_safe, write_val_scores
from monitor.train.fit import fit
from monitor.train.metrics import SUMMARY_KEYS, evaluate_scores
from monitor.train.table import summary

log = logging.getLogger(__name__)

DONE = "train_done.json"


def fmt(v) -> str:
    """A metric for people: 4 decimals; n/a when undefined (None, NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def metrics_text(s) -> str:
    """``mAP 0.9000, mAUC ...`` of a metrics summary."""
    return ", ".join(f"{k} {fmt(s.get(k))}" for k in SUMMARY_KEYS)


def write_rows(path: Path, rows) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def run_one(cfg, out_dir: Path, table, labels, split, *, name: str, resume: bool = False,
            stop_after_steps: int | None = None, progress: bool = True, norm_stats=None, select: bool = True,
            cache_dir: str | None = None, thresholds: dict[str, float] | None = None,
            cv: dict[str, Any] | None = None, data_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, calibrate (on validation, unless ``thresholds`` are given), score the test split, export.

    Returns {"bundle", "metrics" (validation summary), "test_metrics", "result": FitResult, "thresholds"}.
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(config_yaml(cfg), encoding="utf-8")
    data_summary = data_summary or summary(table, labels)
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
        write_rows(out_dir / "val_per_label.csv", metrics["per_label"])
    if result.test_scores is not None and len(result.test_scores):
        test_metrics = evaluate_scores(result.test_targets, result.test_scores, labels, cfg.task, thr)
        write_val_scores(out_dir / "test_scores.csv", table, result.extra["test_index"], labels, result.test_scores,
                         result.test_targets)
        write_rows(out_dir / "test_per_label.csv", test_metrics["per_label"])
    bundle = export_bundle(out_dir, result, cfg, name=name, table=table, split=split, data_summary=data_summary,
                           thresholds=thr, metrics=metrics, calibration=rows, config_dict=cfg.to_dict(),
                           test_metrics=test_metrics, cv=cv)
    for label, m in (("validation", metrics), ("test (held out)", test_metrics)):
        if m:
            log.info("%s: %s", label, metrics_text(m["summary"]))
    out = {"bundle": str(bundle.path), "metrics": metrics["summary"] if metrics else None,
           "test_metrics": test_metrics["summary"] if test_metrics else None, "thresholds": thr,
           "history": result.history, "weights": result.chosen}
    (out_dir / DONE).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    if not cfg.export.keep_checkpoint:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # resume state: the bundle holds the weights
    return {**out, "result": result}
