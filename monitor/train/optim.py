"""One optimiser step and what it depends on: Adam/AdamW with a faster head, the LR schedule (warmup,
multistep, cosine), the gradient scaler, the precision of a run (``monitor.device``'s one rule), and the
step losses, read back from the device in batches (no step syncs the GPU) into ``steps.csv``."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from monitor.config import ConfigError
from monitor.device import autocast_dtype, resolve_precision
from monitor.errors import MonitorError
from monitor.train.config import warmup_steps

log = logging.getLogger(__name__)

FLUSH_STEPS = 20  # losses are read back from the device every this many optimiser steps (or 2 s)


def make_optimizer(model, o) -> torch.optim.Optimizer:
    """Adam/AdamW; the head's parameters at ``lr * head_lr_mult``."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("mlp_head.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("mlp_head.")]
    groups = [g for g in ({"params": body, "lr": o.lr}, {"params": head, "lr": o.lr * o.head_lr_mult}) if g["params"]]
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


def lr_factor(step: int, steps_per_epoch: int, o) -> float:
    """LR multiplier at optimiser step ``step`` (0-based). Warmup (``warmup_steps``, or
    ``warmup_fraction`` of all steps) is linear and reaches 1.0 at its last step; multistep decays by
    ``lr_decay`` at epochs start, start+every, ... (official MultiStepLR); cosine anneals from the end
    of warmup to ``min_lr_frac`` at the last step."""
    warm = warmup_steps(o, steps_per_epoch)
    w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    epoch = step // max(steps_per_epoch, 1)
    if o.scheduler == "multistep":
        k = (epoch - o.lr_decay_start_epoch) // max(o.lr_decay_every, 1) + 1 if epoch >= o.lr_decay_start_epoch else 0
        d = o.lr_decay ** k
    elif o.scheduler == "cosine":
        total = max(o.epochs * steps_per_epoch - warm, 1)
        prog = min(max(step - warm, 0) / total, 1.0)
        d = o.min_lr_frac + (1 - o.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog))
    else:
        d = 1.0
    return w * d


def train_precision(amp: str, device: str) -> str:
    """``optim.amp`` -> the precision of a run, by ``monitor.device``'s one rule: ``auto`` is bf16 only
    on CUDA compute capability >= 8.0, fp16 (with a gradient scaler) below, fp32 on a CPU."""
    if amp == "off":
        return "fp32"
    if not str(device).startswith("cuda"):
        if amp != "auto":
            raise ConfigError(f"optim.amp: {amp} needs a CUDA GPU; on {device} use auto or off")
        return "fp32"
    return resolve_precision(amp, device)


def amp_dtype(amp: str, device: str):
    """The autocast dtype of ``train_precision(amp, device)`` (None: fp32)."""
    return autocast_dtype(train_precision(amp, device))


def optimizer_step(model, opt, sched, scaler, grad_clip: float | None = None) -> None:
    """One optimiser step through the gradient scaler (fp16: gradients unscaled before clipping, a step
    with inf/NaN gradients skipped and the scale lowered; disabled scaler: a plain step), then the LR schedule."""
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()


class StepLosses:
    """Optimiser-step losses kept on the device and read back every ``FLUSH_STEPS`` steps (one sync),
    written to ``steps.csv``, checked for NaN/inf."""

    def __init__(self, path: Path, step_losses: list[float], epoch_loss: list, precision: str):
        self.path, self.step_losses, self.epoch_loss, self.precision = path, step_losses, epoch_loss, precision
        self.pending: list[tuple[int, int, torch.Tensor, float]] = []
        self.last = time.monotonic()
        self.bad_run = 0
        self.latest = float("nan")

    def add(self, step: int, epoch: int, loss: torch.Tensor, lr: float) -> None:
        self.pending.append((step, epoch, loss, lr))

    def due(self) -> bool:
        return len(self.pending) >= FLUSH_STEPS or time.monotonic() - self.last > 2.0

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        values = torch.stack([p[2].float() for p in self.pending]).cpu().tolist()
        with open(self.path, "a") as fh:
            for (step, epoch, _, lr), v in zip(self.pending, values):
                fh.write(f"{step},{epoch},{v:.6g},{lr:.6g}\n")
        rows = self.pending
        self.pending = []
        for (step, _, _, lr), v in zip(rows, values):
            self.step_losses.append(v)
            self.epoch_loss[0] += v
            self.epoch_loss[1] += 1
            self.latest = v
            if math.isfinite(v):
                self.bad_run = 0
                continue
            self.bad_run += 1
            # fp16: the gradient scaler skips overflowing steps; only a long run of them is a failure
            if self.precision != "fp16" or self.bad_run >= 50:
                raise MonitorError(f"training diverged: the loss became {v} at step {step} (lr {lr:.3g}); lower "
                                   "optim.lr or set optim.grad_clip, then start again (the last checkpoint is "
                                   "from before this)")
