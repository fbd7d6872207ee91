"""Export a trained model: the bundle ``monitor run`` uses, a model card, validation scores and plots.

Plots need matplotlib (the ``train`` extra); without it they are skipped with a note.
"""

from __future__ import annotations

import csv
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.3f}"
    return str(x)


def write_val_scores(path: Path, table, val_index: Sequence[int], labels: Sequence[str], scores: np.ndarray,
                     targets: np.ndarray) -> None:
    """``file, start_s, end_s, true_labels, <label scores>`` for every validation segment."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "start_s", "end_s", "true_labels", *labels])
        for k, i in enumerate(val_index):
            r = table.iloc[int(i)]
            w.writerow([r["file"], f"{r['start_s']:.6f}", f"{r['end_s']:.6f}", ";".join(r["labels"]),
                        *[f"{v:.7g}" for v in scores[k]]])


def model_card(name: str, version: str, labels: Sequence[str], task: str, data_summary: Mapping[str, Any],
               split_counts: Mapping[str, int], metrics: Mapping[str, Any] | None, thresholds: Mapping[str, float],
               init: str, intended_use: str, chosen: str) -> str:
    """A short Markdown card: labels, data counts, validation metrics, thresholds, intended use."""
    lines = [f"# {name} {version}", "", f"Task: {task}. Labels: {', '.join(labels)}.",
             f"Initialised from: {init}. Exported weights: {chosen}.", "", "## Data", "",
             f"{data_summary.get('segments')} segments from {data_summary.get('recordings')} recordings "
             f"({data_summary.get('groups')} groups, {data_summary.get('hours')} h); "
             f"{data_summary.get('negatives')} negative segments.",
             "Split (segments): " + ", ".join(f"{k} {v}" for k, v in split_counts.items()) + ".", "",
             "| label | segments | val positives | AP | AUC | threshold | precision | recall | F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    per = {r["label"]: r for r in (metrics or {}).get("per_label", [])}
    for lab in labels:
        r = per.get(lab, {})
        lines.append(f"| {lab} | {data_summary.get('per_label', {}).get(lab, '')} | {r.get('positives', '')} | "
                     f"{_fmt(r.get('AP', float('nan')))} | {_fmt(r.get('AUC', float('nan')))} | "
                     f"{thresholds[lab]:.3f} | {_fmt(r.get('precision', float('nan')))} | "
                     f"{_fmt(r.get('recall', float('nan')))} | {_fmt(r.get('f1', float('nan')))} |")
    if metrics:
        s = metrics["summary"]
        lines += ["", "## Validation", "", f"mAP {_fmt(s['mAP'])}, macro AUC {_fmt(s['mAUC'])}, "
                  f"d' {_fmt(s['d_prime'])}, accuracy {_fmt(s['accuracy'])}, macro F1 {_fmt(s['macro_f1'])} "
                  f"on {s['n']} segments (thresholds as calibrated)."]
        notes = [f"{r['label']}: {r['note']}" for r in metrics["per_label"] if r.get("note")]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
    else:
        lines += ["", "## Validation", "", "No validation split: metrics not measured."]
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
    from monitor.train.metrics import pr_curve, prf

    fig, ax = plt.subplots(figsize=(5, 5))
    for j, lab in enumerate(labels):
        if not (targets[:, j] > 0.5).any():
            continue
        p, r, _ = pr_curve(targets[:, j], scores[:, j])
        line, = ax.plot(np.r_[0, r], np.r_[1, p], label=lab)
        pp, rr, *_ = prf(targets[:, j], scores[:, j], thresholds[lab])
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
                  config_dict: Mapping[str, Any]):
    """Write ``<out_dir>/bundle`` (+ model card) and run-level files; returns the loaded ``Bundle``."""
    from monitor import __version__
    from monitor.model.bundle import save_bundle

    split = np.asarray(split, dtype=object)
    counts = {s: int((split == s).sum()) for s in ("train", "val") if (split == s).any()}
    val_groups = sorted(set(table["group"][split == "val"]))
    summary_metrics = None
    if metrics:
        summary_metrics = dict(summary=metrics["summary"],
                               per_label=[{k: v for k, v in r.items()} for r in metrics["per_label"]],
                               confusion=metrics.get("confusion"))
    init = cfg.model.init + (f" ({cfg.model.checkpoint})" if cfg.model.checkpoint else "")
    provenance = dict(
        trained_with=f"monitor {__version__} train", created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        init=init, weights=result.chosen, extra={k: v for k, v in result.extra.items() if k != "val_index"},
        data=dict(data_summary), splits=dict(counts=counts, val_groups=val_groups[:500], seed=cfg.split.seed),
        metrics=_json_safe(summary_metrics), calibration=_json_safe(calibration), config=_json_safe(config_dict),
        history=_json_safe(result.history),
    )
    bundle_dir = Path(out_dir) / "bundle"
    bundle = save_bundle(bundle_dir, result.model, name=name, version=cfg.export.version, labels=result.labels,
                         task=cfg.task, preprocessing=result.preprocess, thresholds=thresholds,
                         provenance=provenance, fp16=cfg.export.fp16)
    card = model_card(name, cfg.export.version, result.labels, cfg.task, data_summary, counts, metrics, thresholds,
                      init, cfg.export.intended_use, result.chosen)
    (bundle_dir / "model_card.md").write_text(card, encoding="utf-8")
    (Path(out_dir) / "model_card.md").write_text(card, encoding="utf-8")
    if cfg.export.plots:
        plot_learning_curve(result.history, Path(out_dir) / "steps.csv", Path(out_dir) / "learning_curve.png")
        if result.val_scores is not None and len(result.val_scores):
            plot_pr_curves(result.val_targets, result.val_scores, result.labels, thresholds,
                           Path(out_dir) / "pr_curve.png")
    return bundle


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy -> python, recursively (bundle.json is strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
