"""Epoch orders that are a pure function of (seed, epoch): nothing to save, exact on resume.

Class-balanced sampling follows the official ``gen_weight_file``: a label's weight is
``1000 / (count + 0.01)`` and a sample's weight is the sum over its labels (negatives get the
weight of a label seen as often as the negatives); an epoch draws ``len(dataset)`` samples with
replacement in proportion to the weights.
"""

from __future__ import annotations

import numpy as np


def sample_weights(targets: np.ndarray) -> np.ndarray:
    """(n, labels) 0/1 targets (NaN: unknown, not present) -> (n,) sampling weights (official gen_weight_file)."""
    t = np.nan_to_num(np.asarray(targets, dtype=np.float64), nan=0.0) > 0
    counts = t.sum(0)
    label_w = 1000.0 / (counts + 0.01)
    w = (t * label_w[None, :]).sum(1)
    neg = ~t.any(1)
    if neg.any():
        w[neg] = 1000.0 / (neg.sum() + 0.01)
    return w


def epoch_order(n: int, epoch: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Indices for one epoch: a seeded permutation, or a weighted draw with replacement."""
    rng = np.random.default_rng([int(seed), int(epoch), 7919])
    if weights is None:
        return rng.permutation(n)
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(n, size=n, replace=True, p=p / p.sum())


def batches(order: np.ndarray, batch_size: int) -> list[list[int]]:
    """Consecutive batches (the last one may be short)."""
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
