"""The bundled demo model against a linear baseline, on the demo recipe's held-out recordings.

    python benchmarks/demo_model.py [configs/demo.yaml] [--model demo-frog-bird] [--set SECTION.KEY=VALUE ...]

Same data, segments, front end and grouped validation split as ``monitor train`` (``split.val_files``).
- the bundle scores the validation segments exactly as training's validation does (``engine.predict``);
- the baseline: each segment's log-mel mean and std over time (2 x 128 numbers, padding excluded),
  standardised on the training split, and an L2-regularised logistic regression per label (torch
  LBFGS, full batch) fitted on the training split, at three regularisation strengths.
Prints a table; the last line reads ``demo: <model> mAP <a>, AUC <b>; linear baseline mAP <c>-<d>, ...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from monitor.train.cli import _split_for
from monitor.train.config import load_config
from monitor.train.data import load_source
from monitor.train.dataset import SegmentDataset
from monitor.train.metrics import evaluate_scores


def pooled(ds: SegmentDataset) -> np.ndarray:
    """(segments, 256): mean and std over the real (unpadded) frames of each segment's log-mel."""
    rows = []
    for i in range(len(ds)):
        feats, n = ds.features(i)
        f = np.asarray(feats, dtype=np.float64)[: max(int(n), 1)]
        rows.append(np.concatenate([f.mean(0), f.std(0)]))
    return np.stack(rows)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> torch.nn.Linear:
    """Full-batch L2 logistic regression, one output per label column of ``y`` (zero start: deterministic)."""
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    lin = torch.nn.Linear(x.shape[1], y.shape[1])
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(xt), yt) + l2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def score_bundle(model: str, ds: SegmentDataset, indices: np.ndarray) -> np.ndarray:
    """(n, labels) scores of the bundle on ``ds[indices]``, in the bundle's label order."""
    from monitor.model.bundle import load_bundle
    from monitor.train.dataset import preprocess_hash
    from monitor.train.engine import predict

    b = load_bundle(model)
    if list(b.labels) != ds.labels:
        raise SystemExit(f"{model}: labels {b.labels} differ from the recipe's {ds.labels}")
    if preprocess_hash(b.preprocessing) != preprocess_hash(ds.pre):
        raise SystemExit(f"{model}: its features differ from the recipe's; pass the recipe it was trained by")
    _, scores, _ = predict(b.build_model(), ds, indices, b.preprocessing, b.task)  # the bundle's own norm stats
    return scores


def main(config: str = "configs/demo.yaml", overrides: list[str] | None = None,
         model: str | None = "demo-frog-bird") -> dict[str, dict]:
    """Prints the table and returns ``{row name: metrics summary}``."""
    import tempfile

    cfg = load_config(config, overrides)
    table, labels, fixed_val = load_source(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        table, split = _split_for(cfg, table, labels, Path(tmp), False, fixed_val)
    ds = SegmentDataset(table, labels, cfg.preprocess, cache_dir=cfg.data.cache_dir)
    x, y = pooled(ds), ds.targets
    tr, va = split == "train", split == "val"
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = (x - mu) / sd
    print(f"{config}: {tr.sum()} train / {va.sum()} validation segments ({table[va]['group'].nunique()} "
          f"recordings), labels {labels}")
    rows = {}
    if model:
        rows[model] = evaluate_scores(y[va], score_bundle(model, ds, np.flatnonzero(va)), labels, cfg.task)
    for l2 in (1e-3, 1e-2, 1e-1):
        lin = fit_logistic(x[tr], y[tr], l2)
        with torch.no_grad():
            scores = torch.sigmoid(lin(torch.from_numpy(x[va]).float())).numpy()
        rows[f"pooled log-mel + logistic, l2 {l2:g}"] = evaluate_scores(y[va], scores, labels, cfg.task)
    print(f"\n| {'scorer':<36} | mAP   | macro AUC | " + " | ".join(f"AP {lab:<6}" for lab in labels) + " |")
    print("|" + "-" * 38 + "|------:|----------:|" + "|".join("-" * 10 + ":" for _ in labels) + "|")
    for name, m in rows.items():
        aps = " | ".join(f"{r['AP']:9.3f}" for r in m["per_label"])
        print(f"| {name:<36} | {m['summary']['mAP']:.3f} | {m['summary']['mAUC']:9.3f} | {aps} |")
    base = [m["summary"] for name, m in rows.items() if name != model]

    def span(key: str) -> str:
        return f"{min(b[key] for b in base):.3f}-{max(b[key] for b in base):.3f}"

    head = ""
    if model:
        head = f"{model} mAP {rows[model]['summary']['mAP']:.3f}, AUC {rows[model]['summary']['mAUC']:.3f}; "
    print(f"demo: {head}linear baseline mAP {span('mAP')}, AUC {span('mAUC')} on {va.sum()} held-out segments")
    return {name: m["summary"] for name, m in rows.items()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/demo.yaml")
    ap.add_argument("--model", default="demo-frog-bird", help="bundle name or folder ('' = baseline only)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    main(a.config, a.set, a.model or None)
