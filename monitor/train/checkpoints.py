"""What a training run keeps on disk to resume exactly: ``checkpoints/last.pt`` (format
``CHECKPOINT_VERSION``) holds the trained tensors (``resume_keys``), optimiser, scheduler, scaler,
epoch position, every RNG state (``rng_state``), the rolling weight average (``update_average``) and
the history; ``steps.csv`` and ``train.log`` are cut back to it. Every file is written atomically
(``monitor.fileio``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2


def rng_state(aug_rng: np.random.Generator, cuda: bool = True) -> dict[str, Any]:
    """Every RNG a step draws from: augmentation (numpy), torch CPU and (``cuda``) CUDA generators."""
    snap: dict[str, Any] = {"aug": json.dumps(aug_rng.bit_generator.state), "torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap: dict[str, Any], aug_rng: np.random.Generator) -> None:
    """Set every RNG back to ``snap`` (a ``rng_state``); ``aug_rng`` in place."""
    aug_rng.bit_generator.state = json.loads(snap["aug"])
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def save_weights(model_or_state, path: Path) -> None:
    """A model's (or a state dict's) tensors as safetensors at ``path``, atomically."""
    from safetensors.torch import save_file

    sd = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp)))


def resume_keys(model, freeze: str) -> list[str]:
    """The tensors a checkpoint needs: everything, or with a frozen backbone only the trained parameters
    (the frozen ones are rebuilt from the same start). ``state_dict`` names."""
    if freeze == "full":
        return list(model.state_dict())
    return [n for n, p in model.named_parameters() if p.requires_grad] + [n for n, _ in model.named_buffers()]


def update_average(avg: dict[str, torch.Tensor] | None, n: int, model) -> dict[str, torch.Tensor]:
    """Rolling mean: the ``n``-th weights folded into the mean of the first ``n - 1`` (CPU, float32)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", torch.float64)
        out[k] = v.float() if avg is None or n == 1 else (avg[k].double() + (v - avg[k].double()) / n).float()
    return out


def log_size(out_dir: Path) -> int:
    """Bytes in ``<out_dir>/train.log`` now (its handler flushes every record)."""
    p = Path(out_dir) / "train.log"
    return p.stat().st_size if p.is_file() else 0


def truncate_steps(path: Path, steps: int) -> None:
    """Keep the header and the first ``steps`` optimiser steps of ``steps.csv`` (what the checkpoint holds)."""
    if not path.is_file():
        path.write_text("step,epoch,loss,lr\n")
        return
    lines = path.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",", 1)[0]) < steps]
    atomic_write_text(path, "\n".join(keep) + "\n")


def history_row_safe(row: dict[str, Any]) -> dict[str, Any]:
    """Plain Python numbers (checkpoints load with ``weights_only=True``)."""
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (np.integer,)) else v)
            for k, v in row.items()}
