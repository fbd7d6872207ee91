"""Losses on logits with (soft) targets: BCE (multilabel), CE (multiclass), label smoothing, focal BCE."""

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
    """Mean BCE over batch and labels; ``gamma > 0`` gives focal loss ``(1 - p_t)^gamma * BCE``."""
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = (1 - p_t).pow(gamma) * loss
    return loss.mean()


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with probability targets (mixup soft labels welcome)."""
    return -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def make_loss(kind: str, label_smoothing: float = 0.0, focal_gamma: float = 0.0):
    """``(logits, y) -> scalar``; ``kind`` bce or ce."""
    multiclass = kind == "ce"

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = smooth(y.to(logits.dtype), label_smoothing, multiclass)
        return ce(logits.float(), y.float()) if multiclass else bce(logits.float(), y.float(), focal_gamma)

    return loss
