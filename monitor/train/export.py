"""Export a trained model: the bundle ``monitor run`` uses, a model card, validation scores and plots.

The card keeps apart what the validation split chose (epoch, thresholds: its numbers are
optimistic) and what the held-out test split measured (never used to choose anything).
Plots need matplotlib (the ``train`` extra); without it they are skipped with a note. The bundle
folder and its files get the permissions the user's umask gives new files (readable by colleagues
on a shared server unless the umask says otherwise).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from monitor import __version__
from monitor.model.bundle import save_bundle
from monitor.train.metrics import pr_curve, prf

log = logging.getLogger(__name__)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.3f}"
    return str(x)


def write_val_scores(path: Path, table, val_index: Sequence[int], labels: Sequence[str], scores: np.ndarray,
                     targets: np.ndarray) -> None:
    """``file, start_s, end_s, true_labels, unknown_labels, <label scores>`` for every scored segment."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "start_s", "end_s", "true_labels", "unknown_labels", *labels])
        for k, i in enumerate(val_index):
            r = table.iloc[int(i)]
            unk = r["unknown"] if "unknown" in r else ()
            w.writerow([r["file"], f"{r['start_s']:.6f}", f"{r['end_s']:.6f}", ";".join(r["labels"]), ";".join(unk),
                        *[f"{v:.7g}" for v in scores[k]]])


def share_permissions(folder: Path) -> None:
    """Give ``folder`` and its files the modes the umask gives new ones (``mkdtemp`` makes 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~mask)


def _metrics_line(s: Mapping[str, Any], task: str) -> str:
    line = (f"mAP {_fmt(s['mAP'])}, macro AUC {_fmt(s['mAUC'])}, d' {_fmt(s['d_prime'])}, "
            f"accuracy (argmax) {_fmt(s['accuracy'])}")
    if task == "multilabel":
        line += f", exact match {_fmt(s.get('exact_match', float('nan')))}"
    return line + f", macro F1 {_fmt(s['macro_f1'])} on {s['n']} segments"


def _label_table(labels, data_summary, metrics, thresholds) -> list[str]:
    lines = ["| label | segments | positives here | AP | AUC | threshold | precision | recall | F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    per = {r["label"]: r for r in (metrics or {}).get("per_label", [])}
    for lab in labels:
        r = per.get(lab, {})
        lines.append(f"| {lab} | {data_summary.get('per_label', {}).get(lab, '')} | {r.get('positives', '')} | "
                     f"{_fmt(r.get('AP', float('nan')))} | {_fmt(r.get('AUC', float('nan')))} | "
                     f"{thresholds[lab]:.3f} | {_fmt(r.get('precision', float('nan')))} | "
                     f"{_fmt(r.get('recall', float('nan')))} | {_fmt(r.get('f1', float('nan')))} |")
    return lines


def model_card(name: str, version: str, labels: Sequence[str], task: str, data_summary: Mapping[str, Any],
               split_counts: Mapping[str, int], metrics: Mapping[str, Any] | None, thresholds: Mapping[str, float],
               init: str, intended_use: str, chosen: str, test_metrics: Mapping[str, Any] | None = None,
               selection: str = "", cv: Mapping[str, Any] | None = None) -> str:
    """A short Markdown card: labels, data counts, test metrics (held out), validation metrics (used to
    choose epoch and thresholds), cross-validation, thresholds, intended use."""
    lines = [f"# {name} {version}", "", f"Task: {task}. Labels: {', '.join(labels)}.",
             f"Initialised from: {init}. Exported weights: {chosen}{selection}.", "", "## Data", "",
             f"{data_summary.get('segments')} segments from {data_summary.get('recordings')} recordings "
             f"({data_summary.get('groups')} groups, {data_summary.get('hours')} h); "
             f"{data_summary.get('negatives')} segments with no label present.",
             "Split (segments): " + ", ".join(f"{k} {v}" for k, v in split_counts.items()) + "."]
    gone = data_summary.get("left_out")
    if gone:
        lines.append("Recordings left out (not in any split): " + ", ".join(f"{v} {k}" for k, v in gone.items()) + ".")
    unk = data_summary.get("unknown_per_label")
    if unk:
        lines.append("Not judged (unknown, left out of loss and metrics): "
                     + ", ".join(f"{k} {v}" for k, v in unk.items()) + " segments.")
    if test_metrics:
        lines += ["", "## Test (held out: never used to choose the epoch or the thresholds)", "",
                  _metrics_line(test_metrics["summary"], task) + ", at the thresholds chosen on validation.", ""]
        lines += _label_table(labels, data_summary, test_metrics, thresholds)
    if cv:
        lines += ["", "## Cross-validation", "", cv["text"]]
    if metrics:
        lines += ["", "## Validation (chose the epoch and the thresholds: optimistic)", "",
                  _metrics_line(metrics["summary"], task) + " (thresholds as calibrated on these segments).", ""]
        lines += _label_table(labels, data_summary, metrics, thresholds)
        notes = [f"{r['label']}: {r['note']}" for r in metrics["per_label"] if r.get("note")]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
    elif not test_metrics and not cv:
        lines += ["", "## Validation", "", "No validation or test split: metrics not measured."]
    if not test_metrics:
        lines += ["", "No held-out test split: set split.test_fraction, split.test_files or split.test_folder for "
                  "numbers that nothing was tuned on."]
    lines += ["", "## Intended use", "", intended_use,
              "Scores are per segment; check the detections of a new site before relying on them. "
              "Training data licences apply to this model (see the data's attribution).", "",
              f"Created {datetime.now(timezone.utc).isoformat(timespec='seconds')} by monitor train."]
    return "\n".join(lines) + "\n"


def plot_learning_curve(history: Sequence[Mapping[str, Any]], steps_csv: Path, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed (pip install monitor[train]): no learning-curve plot")
        return False
    import pandas as pd

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if steps_csv.is_file():
        st = pd.read_csv(steps_csv)
        a.plot(st["step"], st["loss"], lw=0.8, label="train loss (step)")
    ep = [h["epoch"] for h in history]
    if any("val_loss" in h for h in history):
        a.plot([h["steps"] for h in history], [h.get("val_loss", np.nan) for h in history], "o-", color="C1",
               label="val loss (end of epoch)")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.legend(loc="upper left")
    for key in ("mAP", "mAUC", "accuracy"):
        b.plot(ep, [h.get(key, np.nan) for h in history], "o-", label=key)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.02)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_pr_curves(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float],
                   path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed (pip install monitor[train]): no PR-curve plot")
        return False
    fig, ax = plt.subplots(figsize=(5, 5))
    for j, lab in enumerate(labels):
        k = np.isfinite(targets[:, j])  # unknown entries take no part
        yj, sj = targets[k, j], scores[k, j]
        if not (yj > 0.5).any():
            continue
        p, r, _ = pr_curve(yj, sj)
        line, = ax.plot(np.r_[0, r], np.r_[1, p], label=lab)
        pp, rr, *_ = prf(yj, sj, thresholds[lab])
        if np.isfinite(pp):
            ax.plot([rr], [pp], "o", color=line.get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("validation PR curves (dot: threshold)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def export_bundle(out_dir: Path, result, cfg, *, name: str, table, split, data_summary: Mapping[str, Any],
                  thresholds: Mapping[str, float], metrics: Mapping[str, Any] | None, calibration: list,
                  config_dict: Mapping[str, Any], test_metrics: Mapping[str, Any] | None = None,
                  cv: Mapping[str, Any] | None = None):
    """Write ``<out_dir>/bundle`` (+ model card) and run-level files; returns the loaded ``Bundle``."""
    split = np.asarray(split, dtype=object)
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test") if (split == s).any()}
    val_groups = sorted(set(table["group"][split == "val"]))
    test_groups = sorted(set(table["group"][split == "test"]))

    def pack(m):
        return None if not m else dict(summary=m["summary"], per_label=[dict(r) for r in m["per_label"]],
                                       confusion=m.get("confusion"))

    init = cfg.model.init + (f" ({cfg.model.checkpoint})" if cfg.model.checkpoint else "")
    extra = {k: v for k, v in result.extra.items() if k not in ("val_index", "test_index")}
    provenance = dict(
        trained_with=f"monitor {__version__} train", created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        init=init, weights=result.chosen, extra=extra, data=dict(data_summary),
        splits=dict(counts=counts, val_groups=val_groups[:500], test_groups=test_groups[:500], seed=cfg.split.seed),
        metrics=json_safe(pack(metrics)), test_metrics=json_safe(pack(test_metrics)),
        cross_validation=json_safe({k: v for k, v in (cv or {}).items() if k != "text"}) or None,
        calibration=json_safe(calibration), config=json_safe(config_dict), history=json_safe(result.history),
    )
    selection = ""
    if result.extra.get("best_epoch"):
        selection = f" (epoch {result.extra['best_epoch']}, best validation {result.extra.get('selected_by')})"
    elif result.extra.get("averaged_epochs"):
        ep = result.extra["averaged_epochs"]
        selection = f" (mean of epochs {ep[0]}-{ep[-1]})"
    bundle_dir = Path(out_dir) / "bundle"
    bundle = save_bundle(bundle_dir, result.model, name=name, version=cfg.export.version, labels=result.labels,
                         task=cfg.task, preprocessing=result.preprocess, thresholds=thresholds,
                         provenance=provenance, fp16=cfg.export.fp16)
    card = model_card(name, cfg.export.version, result.labels, cfg.task, data_summary, counts, metrics, thresholds,
                      init, cfg.export.intended_use, result.chosen, test_metrics, selection, cv)
    (bundle_dir / "model_card.md").write_text(card, encoding="utf-8")
    (Path(out_dir) / "model_card.md").write_text(card, encoding="utf-8")
    share_permissions(bundle_dir)
    if cfg.export.plots:
        plot_learning_curve(result.history, Path(out_dir) / "steps.csv", Path(out_dir) / "learning_curve.png")
        if result.val_scores is not None and len(result.val_scores):
            plot_pr_curves(result.val_targets, result.val_scores, result.labels, thresholds,
                           Path(out_dir) / "pr_curve.png")
    return bundle


def json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy -> python, recursively (bundle.json is strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
