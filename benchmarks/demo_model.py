"""Demo models (e.g. the demo recipe before and after a change) against a linear baseline, on the demo
recipe's held-out recordings.

    python benchmarks/demo_model.py [configs/demo.yaml] [--model demo-frog-bird] [--model runs/demo/bundle ...]
                                    [--set SECTION.KEY=VALUE ...]

Same data, segments, front end and grouped validation split as ``monitor train`` (``split.val_files``).
- each bundle scores the validation segments exactly as ``monitor run`` does (``train.evaluate.predict``, which
  uses ``monitor.infer.Scorer``), with its own normalisation stats; its training wall time comes from
  the bundle's provenance (``train_wall_s``; older bundles: the sum of epoch times, marked ``*``);
- the baseline: each segment's log-mel mean and std over time (2 x 128 numbers, padding excluded),
  standardised on the training split, and an L2-regularised logistic regression per label (torch
  LBFGS, full batch) fitted on the training split, at three regularisation strengths.
Prints a table; the last line reads ``demo: <model> mAP <a>, AUC <b>; linear baseline mAP <c>-<d>, ...``.
"""

from __future__ import annotations

import numpy as np
import torch

from monitor.train.cli import load_data, split_rows
from monitor.train.config import load_config
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


def wall_time(model: str) -> str:
    """The bundle's training wall time from its provenance (``*``: epochs only, an older bundle)."""
    from monitor.model.bundle import load_bundle

    prov = load_bundle(model).provenance
    if prov.get("extra", {}).get("train_wall_s"):
        return f"{prov['extra']['train_wall_s']:.0f} s"
    secs = sum(float(h.get("seconds") or 0) for h in prov.get("history", []))
    return f"{secs:.0f} s*" if secs else "?"


def score_bundle(model: str, ds: SegmentDataset, indices: np.ndarray) -> np.ndarray:
    """(n, labels) scores of the bundle on ``ds[indices]``, in the bundle's label order."""
    from monitor.model.bundle import load_bundle
    from monitor.train.dataset import preprocess_hash
    from monitor.train.evaluate import predict

    b = load_bundle(model)
    if list(b.labels) != ds.labels:
        raise SystemExit(f"{model}: labels {b.labels} differ from the recipe's {ds.labels}")
    if preprocess_hash(b.preprocessing) != preprocess_hash(ds.pre):
        raise SystemExit(f"{model}: its features differ from the recipe's; pass the recipe it was trained by")
    _, scores, _ = predict(b.build_model(), ds, indices, b.preprocessing, b.task)  # the bundle's own norm stats
    return scores


def main(config: str = "configs/demo.yaml", overrides: list[str] | None = None,
         models: list[str] | None = None) -> dict[str, dict]:
    """Prints the table and returns ``{row name: metrics summary}``."""
    cfg = load_config(config, overrides)
    table, labels, fixed = load_data(cfg)
    split = split_rows(cfg, table, labels, fixed)
    ds = SegmentDataset(table, labels, cfg.preprocess, cache_dir=None if cfg.data.cache_dir in ("auto", "off")
                        else cfg.data.cache_dir)
    x, y = pooled(ds), ds.targets
    tr, va = split == "train", split == "val"
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = (x - mu) / sd
    print(f"{config}: {tr.sum()} train / {va.sum()} validation segments ({table[va]['group'].nunique()} "
          f"recordings), labels {labels}")
    rows, walls = {}, {}
    for model in models or []:
        rows[model] = evaluate_scores(y[va], score_bundle(model, ds, np.flatnonzero(va)), labels, cfg.task)
        walls[model] = wall_time(model)
    for l2 in (1e-3, 1e-2, 1e-1):
        lin = fit_logistic(x[tr], y[tr], l2)
        with torch.no_grad():
            scores = torch.sigmoid(lin(torch.from_numpy(x[va]).float())).numpy()
        rows[f"pooled log-mel + logistic, l2 {l2:g}"] = evaluate_scores(y[va], scores, labels, cfg.task)
    w = max(36, *(len(n) for n in rows))
    print(f"\n| {'scorer':<{w}} | mAP   | macro AUC | " + " | ".join(f"AP {lab:<6}" for lab in labels)
          + " | train wall time |")
    print("|" + "-" * (w + 2) + "|------:|----------:|" + "|".join("-" * 10 + ":" for _ in labels) + "|----------------:|")
    for name, m in rows.items():
        aps = " | ".join(f"{r['AP']:9.3f}" for r in m["per_label"])
        print(f"| {name:<{w}} | {m['summary']['mAP']:.3f} | {m['summary']['mAUC']:9.3f} | {aps} | "
              f"{walls.get(name, ''):>15} |")
    base = [m["summary"] for name, m in rows.items() if name not in walls]

    def span(key: str) -> str:
        return f"{min(b[key] for b in base):.3f}-{max(b[key] for b in base):.3f}"

    head = "".join(f"{m} mAP {rows[m]['summary']['mAP']:.3f}, AUC {rows[m]['summary']['mAUC']:.3f} ({walls[m]}); "
                   for m in models or [])
    print(f"demo: {head}linear baseline mAP {span('mAP')}, AUC {span('mAUC')} on {va.sum()} held-out segments")
    return {name: m["summary"] for name, m in rows.items()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/demo.yaml")
    ap.add_argument("--model", action="append", default=None,
                    help="bundle name or folder, repeatable (default: demo-frog-bird; '' = baseline only)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    main(a.config, a.set, [m for m in (a.model or ["demo-frog-bird"]) if m])
