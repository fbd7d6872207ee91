"""A linear baseline for the demo recipe: how much of frog vs bird the pooled spectrum alone gives.

    python scripts/demo_baseline.py [configs/demo.yaml] [--set SECTION.KEY=VALUE ...]

Same data, same segments, same front end and the same grouped validation split as ``monitor train``
(``split.val_files``). Each segment becomes its log-mel mean and std over time (2 x 128 numbers,
padding excluded), standardised on the training split; an L2-regularised logistic regression per
label (torch LBFGS, full batch) is fitted on the training split and scored on validation with the
same metrics as the trained model's card. Prints one line per regularisation strength.
"""

from __future__ import annotations

import sys
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
    """Full-batch L2 logistic regression, one output per label column of ``y``."""
    torch.manual_seed(0)
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


def main(config: str = "configs/demo.yaml", overrides: list[str] | None = None) -> dict[float, dict]:
    """Prints and returns ``{l2: metrics summary}``."""
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
    print(f"{config}: {tr.sum()} train / {va.sum()} validation segments, labels {labels}")
    out = {}
    for l2 in (1e-3, 1e-2, 1e-1):
        lin = fit_logistic(x[tr], y[tr], l2)
        with torch.no_grad():
            scores = torch.sigmoid(lin(torch.from_numpy(x[va]).float())).numpy()
        m = out[l2] = evaluate_scores(y[va], scores, labels, cfg.task)["summary"]
        print(f"pooled log-mel + logistic regression, l2 {l2:g}: mAP {m['mAP']:.3f}, macro AUC {m['mAUC']:.3f}")
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    rest = [a for i, a in enumerate(args) if a != "--set" and (i == 0 or args[i - 1] != "--set")]
    main(*rest[:1], overrides=sets)
