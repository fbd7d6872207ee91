"""Scoring a model during training, always by ``monitor.infer.Scorer``, the scorer of ``monitor run``:
``evaluate_batches`` / ``predict`` (targets, scores, mean loss), ``embeddings`` (the pooled backbone
output the head sees, ``Scorer.embed``), ``score_head`` (the head alone on cached embeddings) and
``cached_embeddings`` (a frozen backbone's embeddings, computed once per run)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from monitor.config import Preprocess
from monitor.features import normalize
from monitor.fileio import atomic_write
from monitor.infer import Scorer, to_scores
from monitor.train.dataset import make_loader

log = logging.getLogger(__name__)


def evaluate_batches(model, batches: Iterable, pre: Preprocess, task: str, device: str = "cpu", batch_size: int = 16,
                     precision: str = "fp32", loss_fn=None,
                     n_labels: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets, scores, mean loss) of un-normalised feature batches ``(x, y, n_real)``, scored by
    ``monitor.infer.Scorer.for_model``: normalised as ``monitor run`` normalises, zero-padded to
    ``batch_size``, the one sigmoid/softmax rule (``infer.to_scores``)."""
    model.eval()
    scorer = Scorer.for_model(model, task, device, precision, batch_size)
    ys, ss, total, count = [], [], 0.0, 0
    for x, y, _ in batches:
        feats = normalize(x, pre.fbank.norm_mean, pre.fbank.norm_std).numpy()
        for k in range(0, len(feats), batch_size):
            (logits,) = scorer.logits(feats[k:k + batch_size])
            yk = y[k:k + batch_size]
            if loss_fn is not None:
                total += float(loss_fn(logits, yk)) * len(yk)
                count += len(yk)
            ss.append(to_scores(logits, task).numpy())
            ys.append(yk.numpy())
    if not ys:
        L = n_labels or 0
        return np.zeros((0, L), np.float32), np.zeros((0, L), np.float32), float("nan")
    return np.concatenate(ys), np.concatenate(ss), (total / count if count else float("nan"))


def predict(model, ds, indices, pre: Preprocess, task: str, device: str = "cpu", batch_size: int = 16,
            precision: str = "fp32", loss_fn=None, workers: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets (n, L), scores (n, L), mean loss) over ``ds[indices]``, exactly as ``monitor run`` scores."""
    idx = [int(i) for i in indices]
    plan = [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    batches = make_loader(ds, plan, workers, device) if plan else []
    return evaluate_batches(model, batches, pre, task, device, batch_size, precision, loss_fn, len(ds.labels))


def embeddings(model, batches: Iterable, pre: Preprocess, device: str, precision: str, batch_size: int) -> torch.Tensor:
    """(n, width) float32 CPU: what the frozen backbone hands the head (``forward_head(..., pre_logits=True)``),
    computed by ``Scorer.embed``, the scorer of ``monitor run``, in eval mode, without augmentation."""
    model.eval()
    scorer = Scorer.for_model(model, "multilabel", device, precision, batch_size)
    out = []
    for x, _, _ in batches:
        feats = normalize(x, pre.fbank.norm_mean, pre.fbank.norm_std).numpy()
        out.append(scorer.embed(feats)[0])
    return torch.cat(out) if out else torch.zeros((0, model.mlp_head[0].normalized_shape[0]))


def score_head(head, emb: torch.Tensor, y: np.ndarray, task: str, device: str, batch_size: int, loss_fn=None,
               amp=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets, scores, mean loss) of the head alone on cached embeddings."""
    head.eval()
    ss, total = [], 0.0
    with torch.inference_mode():
        for k in range(0, len(emb), batch_size):
            with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
                logits = head(emb[k:k + batch_size].to(device)).float().cpu()
            if loss_fn is not None:
                total += float(loss_fn(logits, torch.from_numpy(y[k:k + batch_size]))) * len(logits)
            ss.append(to_scores(logits, task).numpy())
    head.train()
    if not ss:
        return y[:0], np.zeros((0, y.shape[1]), np.float32), float("nan")
    return y, np.concatenate(ss), (total / len(emb) if loss_fn is not None else float("nan"))


def cached_embeddings(model, ds, rows: np.ndarray, pre: Preprocess, device: str, precision: str, batch_size: int,
                      workers: int, ck_dir: Path) -> torch.Tensor:
    """The frozen backbone's embeddings of ``rows``: computed once, kept in ``checkpoints/embeddings.safetensors``
    (reused on resume when it holds the same rows)."""
    from safetensors.torch import load_file, save_file

    path = ck_dir / "embeddings.safetensors"
    if path.is_file():
        got = load_file(str(path))
        if got["rows"].numpy().tolist() == rows.tolist():
            return got["emb"]
    t0 = time.time()
    plan = [rows[k:k + batch_size].tolist() for k in range(0, len(rows), batch_size)]
    emb = embeddings(model, make_loader(ds, plan, workers, device), pre, device, precision, batch_size)
    atomic_write(path, lambda tmp: save_file({"emb": emb.contiguous(), "rows": torch.from_numpy(rows.copy())},
                                             str(tmp)))
    log.info("backbone embeddings of %d segments computed once in %.1f s", len(rows), time.time() - t0)
    return emb
