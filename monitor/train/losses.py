"""Losses on logits with (soft) targets: BCE (multilabel), CE (multiclass), label smoothing, focal BCE.

Targets may hold NaN for labels nobody judged (reviewed reports): those entries are masked out of
the BCE mean, so an unknown label is never learnt as a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth(y: torch.Tensor, eps: float, multiclass: bool) -> torch.Tensor:
    """Label smoothing: ``y (1 - eps) + eps / K`` (K = labels for CE, 2 for each BCE output)."""
    if eps <= 0:
        return y
    k = y.shape[-1] if multiclass else 2
    return y * (1 - eps) + eps / k


def bce(logits: torch.Tensor, y: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean BCE over the known (finite) entries of ``y``; ``gamma > 0`` gives focal loss ``(1 - p_t)^gamma * BCE``."""
    known = torch.isfinite(y)
    y0 = torch.where(known, y, torch.zeros_like(y))
    loss = F.binary_cross_entropy_with_logits(logits, y0, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * y0 + (1 - p) * (1 - y0)
        loss = (1 - p_t).pow(gamma) * loss
    k = known.to(loss.dtype)  # no branch on the mask: a data-dependent branch would sync a GPU every step
    return (loss * k).sum() / k.sum().clamp(min=1.0)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with probability targets (mixup soft labels welcome); NaN entries count as 0."""
    y = torch.nan_to_num(y, nan=0.0)
    return -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def make_loss(kind: str, label_smoothing: float = 0.0, focal_gamma: float = 0.0):
    """``(logits, y) -> scalar``; ``kind`` bce or ce."""
    multiclass = kind == "ce"

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = smooth(y.to(torch.float32), label_smoothing, multiclass)
        return ce(logits.float(), y) if multiclass else bce(logits.float(), y, focal_gamma)

    return loss
