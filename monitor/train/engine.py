"""The training loop: fit / evaluate / resume.

``fit`` trains one model on the rows of a segment table marked ``train``, evaluates on ``val``
every epoch, keeps the best weights and one rolling weight average, stops early if asked, and
returns the chosen weights with their validation (and held-out test) scores, computed on the
training device by ``monitor.infer.Scorer``, the scorer of ``monitor run``.

Resume at any moment: ``checkpoints/last.pt`` (model, optimiser, scheduler, gradient scaler, epoch
position, every RNG state, the rolling average) is written atomically every
``optim.checkpoint_every_s`` seconds, at epoch ends and on Ctrl-C, so ``resume=True`` continues
with the very same next step (bit-identical on a CPU); ``steps.csv`` is cut back to the checkpoint.
With a frozen backbone only the trained parameters are stored. Epoch orders are a pure function
of (seed, epoch) (``sampling.py``).

Precision follows ``monitor.device`` (bf16 only from compute capability 8.0, fp16 with a gradient
scaler below, fp32 on a CPU). No step syncs the GPU: losses are read back in batches.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from monitor.config import Preprocess
from monitor.device import pick_device
from monitor.errors import MonitorError
from monitor.train.config import TrainConfig

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("mAP", "mAUC", "d_prime", "accuracy", "exact_match", "macro_f1")
HISTORY_COLUMNS = ["epoch", "steps", "train_loss", "val_loss", "lr", *SUMMARY_KEYS, "seconds"]
MAXIMISE = {"mAP": True, "mAUC": True, "d_prime": True, "accuracy": True, "exact_match": True, "macro_f1": True,
            "val_loss": False}
FLUSH_STEPS = 20  # losses are read back from the device every this many optimiser steps (or 2 s)
CHECKPOINT_VERSION = 2


@dataclass
class FitResult:
    model: Any  # the chosen weights (best / last / averaged), eval mode, CPU
    labels: list[str]
    preprocess: Preprocess  # with the normalisation stats used
    history: list[dict[str, Any]]
    step_losses: list[float]  # training loss of every optimiser step, from step 0 (resumed runs included)
    val_targets: np.ndarray | None = None
    val_scores: np.ndarray | None = None
    chosen: str = "last"
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    test_targets: np.ndarray | None = None
    test_scores: np.ndarray | None = None


# --- model -------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, labels: list[str]):
    """The AST for ``cfg.model`` with ``len(labels)`` outputs, initialised as ``model.init`` says, with
    ``model.drop_path_rate`` whatever the start (stochastic depth has no weights of its own)."""
    from monitor.model.ast import AST

    m, fb = cfg.model, cfg.fbank
    geom = dict(fstride=m.fstride, tstride=m.tstride, input_fdim=fb.num_mel_bins, input_tdim=fb.target_frames,
                model_size=m.size, depth=m.depth)
    n = len(labels)
    if m.init == "scratch":
        return AST(n, **geom, drop_path_rate=m.drop_path_rate)
    if m.init == "imagenet":
        return AST(n, **geom, drop_path_rate=m.drop_path_rate, imagenet_pretrain=True, pretrained_file=m.checkpoint)
    if m.init == "audioset":
        from monitor.model.checkpoints import from_official_checkpoint, pull

        src = m.checkpoint or "audioset-10-10"
        path = Path(src) if Path(src).is_file() else pull(src)
        model = from_official_checkpoint(path, label_dim=n, **geom)
    elif m.init == "hf":
        from monitor.model.checkpoints import from_hf_checkpoint

        if not m.checkpoint:
            raise MonitorError("model.init: hf needs model.checkpoint (a saved ASTForAudioClassification folder)")
        model = from_hf_checkpoint(m.checkpoint, label_dim=n, input_tdim=fb.target_frames)
        got = {k: getattr(model.geometry, k) for k in ("fstride", "tstride", "input_fdim", "model_size")}
        want = {k: geom[k] for k in got}
        if got != want:
            raise MonitorError(f"the Hugging Face checkpoint has geometry {got}; set model/fbank to match ({want})")
    else:
        model = from_bundle(m.checkpoint, labels, geom, cfg.preprocess)
    return with_drop_path(model, m.drop_path_rate).train()


def with_drop_path(model, rate: float):
    """The same weights in an AST built with stochastic depth ``rate`` (a no-op when it already has it)."""
    from monitor.model.ast import AST

    if model.drop_path_rate == float(rate):
        return model
    new = AST.from_geometry(model.geometry, drop_path_rate=rate)
    new.load_state_dict(model.state_dict())
    return new


PREPROCESS_CHECKED = {"segment": ("window_s", "hop_s", "min_segment_s"), "band": ("low_hz", "high_hz", "order"),
                      "resample": ("sample_rate_hz", "method"),
                      "fbank": ("num_mel_bins", "frame_length_ms", "frame_shift_ms", "remove_wave_mean",
                                "target_frames")}


def check_bundle_preprocess(name: str, theirs: Preprocess, ours: Preprocess) -> None:
    """A bundle's model only works on audio prepared as in its training: every front-end setting
    (window, band, rate, fbank; not the normalisation stats) must match the recipe's."""
    for sec, keys in PREPROCESS_CHECKED.items():
        for k in keys:
            a, b = getattr(getattr(theirs, sec), k), getattr(getattr(ours, sec), k)
            if a != b:
                raise MonitorError(f"model.init: bundle {name} was trained with {sec}.{k}={a!r}, this recipe has "
                                   f"{b!r}; set {sec}.{k}: {a} in the recipe (or start from audioset)")


def from_bundle(path: str | None, labels: list[str], geom: dict[str, Any], pre: Preprocess | None = None):
    """Start from a monitor bundle; labels it already knows keep their head rows ("add a species").
    ``pre``: the recipe's front end, checked against the bundle's."""
    from monitor.model.bundle import load_bundle

    if not path:
        raise MonitorError("model.init: bundle needs model.checkpoint (a bundle folder or name)")
    b = load_bundle(path)
    a = b.architecture
    for k in ("fstride", "tstride", "input_fdim", "input_tdim", "model_size", "depth"):
        if geom[k] is not None and getattr(a, k) != geom[k]:
            raise MonitorError(f"model/fbank {k}={geom[k]} differs from bundle {b.name}'s {getattr(a, k)}; "
                               "set them as in the bundle")
    if pre is not None:
        check_bundle_preprocess(b.name, b.preprocessing, pre)
    old = b.build_model()
    if list(b.labels) == list(labels):
        return old.train()
    from monitor.model.ast import AST

    new = AST.from_geometry(a.replace(label_dim=len(labels)))
    sd = {k: v for k, v in old.state_dict().items() if not k.startswith("mlp_head.1.")}
    new.load_state_dict(sd, strict=False)
    with torch.no_grad():
        for j, lab in enumerate(labels):
            if lab in b.labels:
                i = b.labels.index(lab)
                new.mlp_head[1].weight[j] = old.mlp_head[1].weight[i]
                new.mlp_head[1].bias[j] = old.mlp_head[1].bias[i]
    kept = [x for x in labels if x in b.labels]
    log.info("from bundle %s: kept head rows of %s; new labels %s", b.name, kept, [x for x in labels if x not in kept])
    return new.train()


def apply_freeze(model, policy: str, last_n: int = 2) -> int:
    """``full`` | ``head`` (mlp_head only) | ``last_n`` (head, final norm and the last N blocks). Returns trainable count."""
    for p in model.parameters():
        p.requires_grad = policy == "full"
    if policy != "full":
        for p in model.mlp_head.parameters():
            p.requires_grad = True
    if policy == "last_n":
        for p in model.v.norm.parameters():
            p.requires_grad = True
        for blk in list(model.v.blocks)[-last_n:] if last_n > 0 else []:
            for p in blk.parameters():
                p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    from monitor.train.config import warmup_steps

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
    from monitor.config import ConfigError
    from monitor.device import resolve_precision

    if amp == "off":
        return "fp32"
    if not str(device).startswith("cuda"):
        if amp != "auto":
            raise ConfigError(f"optim.amp: {amp} needs a CUDA GPU; on {device} use auto or off")
        return "fp32"
    return resolve_precision(amp, device)


def amp_dtype(amp: str, device: str):
    """The autocast dtype of ``train_precision(amp, device)`` (None: fp32)."""
    from monitor.device import autocast_dtype

    return autocast_dtype(train_precision(amp, device))


def loader_workers(setting: int | str, device: str) -> int:
    """``data.num_workers``: a number, or ``auto`` (``monitor.infer.default_workers``: up to 4 beside a
    GPU, none on a small CPU whose cores the model already uses)."""
    if setting != "auto":
        return int(setting)
    from monitor.infer import default_workers

    return default_workers(device)


def make_loader(ds, batches, workers: int, device: str, persistent: bool = False):
    """A DataLoader over ``batches`` (a list, or a ``PlanSampler`` set per epoch); pinned memory on
    CUDA; its own RNG, so creating it never moves the global torch RNG (resume stays exact)."""
    from monitor.train.dataset import collate, worker_init

    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        pin_memory=str(device).startswith("cuda"), persistent_workers=persistent and workers > 0,
        worker_init_fn=worker_init if workers else None, generator=torch.Generator().manual_seed(0))


# --- evaluation: the scorer of ``monitor run`` ---------------------------------------------------------

def score_batches(model, batches: Iterable, pre: Preprocess, task: str, device: str = "cpu", batch_size: int = 16,
                  precision: str = "fp32", loss_fn=None, n_labels: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets, scores, mean loss) of un-normalised feature batches ``(x, y, n_real)``, scored by
    ``monitor.infer.Scorer.for_model``: normalised as ``monitor run`` normalises, zero-padded to
    ``batch_size``, the one sigmoid/softmax rule (``infer.to_scores``)."""
    from monitor.features import normalize
    from monitor.infer import Scorer, to_scores

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
    return score_batches(model, batches, pre, task, device, batch_size, precision, loss_fn, len(ds.labels))


def embeddings(model, batches: Iterable, pre: Preprocess, device: str, precision: str, batch_size: int) -> torch.Tensor:
    """(n, width) float32 CPU: what the frozen backbone hands the head (``mlp_head``'s input), computed by
    the scorer of ``monitor run`` in eval mode, without augmentation."""
    from monitor.features import normalize
    from monitor.infer import Scorer

    model.eval()
    scorer = Scorer.for_model(model, "multilabel", device, precision, batch_size)
    seen: list[torch.Tensor] = []
    hook = model.mlp_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().float().cpu()))
    out = []
    try:
        for x, _, _ in batches:
            feats = normalize(x, pre.fbank.norm_mean, pre.fbank.norm_std).numpy()
            for k in range(0, len(feats), batch_size):
                n = len(feats[k:k + batch_size])
                seen.clear()
                scorer.logits(feats[k:k + batch_size])
                out.append(torch.cat(seen)[:n])
    finally:
        hook.remove()
    return torch.cat(out) if out else torch.zeros((0, model.mlp_head[0].normalized_shape[0]))


def score_head(head, emb: torch.Tensor, y: np.ndarray, task: str, device: str, batch_size: int, loss_fn=None,
               amp=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets, scores, mean loss) of the head alone on cached embeddings."""
    from monitor.infer import to_scores

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


# --- checkpoints ---------------------------------------------------------------------------------------

def _rng_state(aug_rng: np.random.Generator, cuda: bool = True) -> dict[str, Any]:
    """Every RNG a step draws from: augmentation (numpy), torch CPU and (``cuda``) CUDA generators."""
    snap: dict[str, Any] = {"aug": json.dumps(aug_rng.bit_generator.state), "torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def _restore_rng(snap: dict[str, Any], aug_rng: np.random.Generator) -> None:
    aug_rng.bit_generator.state = json.loads(snap["aug"])
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then flush to disk and rename over ``path``: a reader sees the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _save_weights(model_or_state, path: Path) -> None:
    from safetensors.torch import save_file

    sd = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp)))


def resume_keys(model, freeze: str) -> list[str]:
    """The tensors a checkpoint needs: everything, or with a frozen backbone only the trained parameters
    (the frozen ones are rebuilt from the same start). ``state_dict`` names."""
    if freeze == "full":
        return list(model.state_dict())
    return [n for n, p in model.named_parameters() if p.requires_grad] + [n for n, _ in model.named_buffers()]


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight files (the official weight averaging)."""
    from safetensors.torch import load_file

    acc: dict[str, torch.Tensor] = {}
    for p in paths:
        for k, v in load_file(str(p)).items():
            acc[k] = acc[k] + v.double() if k in acc else v.double()
    return {k: (v / len(paths)).float() for k, v in acc.items()}


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
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(keep) + "\n"))


def _history_row_safe(row: dict[str, Any]) -> dict[str, Any]:
    """Plain Python numbers (checkpoints load with ``weights_only=True``)."""
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (np.integer,)) else v)
            for k, v in row.items()}


# --- fit ---------------------------------------------------------------------------------------------

def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(row)


def _better(value: float, best: float | None, maximise: bool) -> bool:
    """An undefined (NaN) value never wins; +-inf (d-prime at AUC 1 or 0) compares as a number."""
    if value is None or math.isnan(value):
        return False
    return best is None or math.isnan(best) or (value > best if maximise else value < best)


def norm_stats_for(cfg: TrainConfig, ds, train_idx, out_dir: Path, resume: bool,
                   given: tuple[float, float] | None = None) -> tuple[float, float]:
    """Normalisation (mean, std) of a run, saved in ``norm_stats.json`` and reloaded on resume.

    ``data.norm_stats``: ``auto`` (the bundle's for ``init: bundle``, else ``train``); ``train``: the
    training split's (``given``: shared by all folds); ``config``: ``fbank.norm_mean/std``; ``bundle``.
    """
    from monitor.config import ConfigError
    from monitor.train.dataset import compute_stats

    stats_file = Path(out_dir) / "norm_stats.json"
    if resume and stats_file.is_file():
        st = json.loads(stats_file.read_text())
        return float(st["mean"]), float(st["std"])
    mode = cfg.data.norm_stats
    if mode == "auto":
        mode = "bundle" if cfg.model.init == "bundle" else "train"
    if mode == "bundle":
        if cfg.model.init != "bundle":
            raise ConfigError("data.norm_stats: bundle needs model.init: bundle")
        from monitor.model.bundle import load_bundle

        fb = load_bundle(cfg.model.checkpoint).preprocessing.fbank
        mean, std, src = fb.norm_mean, fb.norm_std, f"bundle {cfg.model.checkpoint}"
    elif mode == "config":
        mean, std, src = cfg.fbank.norm_mean, cfg.fbank.norm_std, "config"
    elif given is not None:
        (mean, std), src = given, "the training data of all folds"
    else:
        mean, std = compute_stats(ds, train_idx)
        src = f"training split ({len(train_idx)} segments)"
        log.info("normalisation from the training split: mean %.4f std %.4f", mean, std)
    stats_file.write_text(json.dumps({"mean": float(mean), "std": float(std), "from": src}) + "\n")
    return float(mean), float(std)


@dataclass
class Selection:
    """Which epoch's weights are best, and when to stop early.

    ``update`` takes an epoch's history row: an undefined (NaN) ``metric`` at the first validated
    epoch switches the run to ``val_loss``; patience counts as Keras/Lightning do: stop once
    ``patience`` epochs in a row did not improve on the best.
    """

    metric: str
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, row: dict[str, Any], patience: int | None) -> tuple[bool, bool]:
        """(improved, stop) after ``epoch`` (1-based)."""
        value = row.get(self.metric, float("nan"))
        if (math.isnan(value) and self.metric != "val_loss" and self.best_epoch == 0
                and math.isfinite(row.get("val_loss", float("nan")))):
            log.warning("eval.metric %s is undefined on this validation split (a label without positives or "
                        "negatives?); choosing epochs by val_loss instead", self.metric)
            self.metric, value = "val_loss", row["val_loss"]
        improved = _better(value, self.best_value, MAXIMISE[self.metric])
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
        return improved, patience is not None and self.bad_epochs >= patience


class _Losses:
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


def _augment_warning(cfg: TrainConfig) -> None:
    from monitor.train.config import AugmentConfig

    if cfg.augment != AugmentConfig():
        log.warning("model.freeze: head with model.cache_embeddings: the frozen backbone runs once per segment, "
                    "so augment settings are not applied; set model.cache_embeddings: false to augment")


def fit(cfg: TrainConfig, out_dir: Path, *, table, labels: list[str], split, resume: bool = False,
        stop_after_steps: int | None = None, progress: bool = True, norm_stats: tuple[float, float] | None = None,
        select: bool = True, cache_dir: str | None = None) -> FitResult:
    """Train on ``split == 'train'`` rows, validate on ``'val'`` rows every epoch, score ``'test'`` rows
    once at the end; write checkpoints, ``steps.csv`` and ``metrics.csv``.

    ``norm_stats``: shared normalisation (cross-validation folds); ``select=False`` (folds): no best
    epoch and no early stopping, the epoch is chosen on the fold-averaged curve instead;
    ``cache_dir``: the fbank cache (default ``data.cache_dir`` resolved against ``out_dir``).
    """
    from tqdm.auto import tqdm

    from monitor.device import autocast_dtype
    from monitor.train.augment import augment_batch
    from monitor.train.config import cache_dir_for, warmup_steps
    from monitor.train.dataset import PlanSampler, SegmentDataset
    from monitor.train.losses import make_loss
    from monitor.train.metrics import evaluate_scores
    from monitor.train.sampling import batches, epoch_order, sample_weights

    t_start = time.time()
    o = cfg.optim
    out_dir = Path(out_dir)
    ck_dir = out_dir / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    split = np.asarray(split, dtype=object)
    train_idx = np.nonzero(split == "train")[0]
    val_idx = np.nonzero(split == "val")[0]
    test_idx = np.nonzero(split == "test")[0]
    if len(train_idx) == 0:
        raise MonitorError("the training split is empty; add data or lower split.val_fraction")
    task = cfg.task
    device = pick_device(o.device)
    precision = train_precision(o.amp, device)
    amp = autocast_dtype(precision)
    cuda = str(device).startswith("cuda")
    if o.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    pre = cfg.preprocess
    ds = SegmentDataset(table, labels, pre, cache_dir if cache_dir is not None else cache_dir_for(cfg, out_dir),
                        multiclass=task == "multiclass")
    mean, std = norm_stats_for(cfg, ds, train_idx, out_dir, resume, norm_stats)
    pre = dataclasses.replace(pre, fbank=dataclasses.replace(pre.fbank, norm_mean=mean, norm_std=std))
    workers = loader_workers(cfg.data.num_workers, device)

    torch.manual_seed(o.seed)
    model = build_model(cfg, labels)
    n_train = apply_freeze(model, cfg.model.freeze, cfg.model.train_last_n)
    head_only = cfg.model.freeze == "head" and cfg.model.cache_embeddings
    log.info("%d trainable parameters (freeze: %s%s); device %s, precision %s, %d loader workers", n_train,
             cfg.model.freeze, ", backbone embeddings cached" if head_only else "", device, precision, workers)
    model.to(device)
    opt = make_optimizer(model, o)
    n_batches = math.ceil(len(train_idx) / o.batch_size)
    steps_per_epoch = math.ceil(n_batches / o.accum_steps)
    warm = warmup_steps(o, steps_per_epoch)
    if o.scheduler == "multistep" and warm > o.lr_decay_start_epoch * steps_per_epoch:
        peak = lr_factor(warm - 1, steps_per_epoch, o)
        log.warning("warmup (%d steps) lasts past the first LR decay (epoch %d, step %d): the peak LR is %.2f x "
                    "optim.lr; shorten it or use optim.warmup_fraction", warm, o.lr_decay_start_epoch + 1,
                    o.lr_decay_start_epoch * steps_per_epoch, peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, o))
    scaler = torch.amp.GradScaler("cuda" if cuda else "cpu", enabled=precision == "fp16")
    loss_fn = make_loss(cfg.loss.kind, cfg.loss.label_smoothing, cfg.loss.focal_gamma)
    weights = sample_weights(ds.targets[train_idx]) if cfg.loss.balanced_sampling else None
    aug_rng = np.random.default_rng([o.seed, 1])
    keys = resume_keys(model, cfg.model.freeze)

    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    start_epoch, skip_batches, global_step = 0, 0, 0
    best_value, best_epoch, bad_epochs = None, 0, 0
    metric = cfg.eval.metric
    epoch_loss = [0.0, 0]
    avg: dict[str, torch.Tensor] | None = None
    avg_epochs: list[int] = []
    last_pt = ck_dir / "last.pt"
    steps_file = out_dir / "steps.csv"
    if resume and last_pt.is_file():
        st = torch.load(last_pt, map_location="cpu", weights_only=True)
        if st.get("version") != CHECKPOINT_VERSION:
            raise MonitorError(f"--resume: {last_pt} was written by another monitor version; start a new run")
        if st["labels"] != labels:
            raise MonitorError(f"--resume: the run in {out_dir} has labels {st['labels']}, the data now {labels}")
        if sorted(st["model"]) != sorted(keys):
            raise MonitorError(f"--resume: {last_pt} holds other weights than this recipe trains (model.freeze "
                               "changed?); start a new run")
        model.load_state_dict(st["model"], strict=cfg.model.freeze == "full")
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        _restore_rng(st["rng"], aug_rng)
        start_epoch, skip_batches, global_step = st["epoch"], st["batches_done"], st["global_step"]
        history, step_losses = list(st["history"]), list(st["step_losses"])
        best_value, best_epoch, bad_epochs = st["best_value"], st["best_epoch"], st["bad_epochs"]
        metric, epoch_loss = st["metric"], list(st["epoch_loss"])
        avg, avg_epochs = st["average"], list(st["average_epochs"])
        truncate_steps(steps_file, global_step)
        log.info("resumed at epoch %d, batch %d (step %d)", start_epoch + 1, skip_batches, global_step)
    else:
        if resume:
            log.warning("--resume: no checkpoint in %s yet; starting the run from the beginning", ck_dir)
        steps_file.write_text("step,epoch,loss,lr\n")
    losses = _Losses(steps_file, step_losses, epoch_loss, precision)

    def save_last(epoch: int, batches_done: int, rng: dict[str, Any] | None = None) -> None:
        sd = model.state_dict()
        state = dict(version=CHECKPOINT_VERSION, model={k: sd[k].detach().cpu() for k in keys},
                     optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                     rng=rng or _rng_state(aug_rng), epoch=epoch, batches_done=batches_done, global_step=global_step,
                     history=[_history_row_safe(h) for h in history], step_losses=list(losses.step_losses),
                     best_value=None if best_value is None else float(best_value), best_epoch=best_epoch,
                     bad_epochs=bad_epochs, metric=metric, epoch_loss=[float(x) for x in losses.epoch_loss],
                     average=avg, average_epochs=avg_epochs, labels=labels, log_bytes=log_size(out_dir))
        atomic_write(last_pt, lambda tmp: torch.save(state, tmp))
        side = dict(global_step=global_step, epoch=epoch, batches_done=batches_done, log_bytes=state["log_bytes"],
                    saved=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write(ck_dir / "last.json", lambda tmp: tmp.write_text(json.dumps(side) + "\n"))

    # --- what a training batch is: features through the model, or cached embeddings through the head
    emb: torch.Tensor | None = None
    emb_row = np.full(len(table), -1, dtype=np.int64)
    loader = sampler = None
    if head_only:
        _augment_warning(cfg)
        rows = np.concatenate([train_idx, val_idx])
        emb = _cached_embeddings(model, ds, rows, pre, device, precision, cfg.eval.batch_size, workers, ck_dir)
        emb = emb.to(device)  # (segments, width): small; batches are then gathered on the device itself
        emb_row[rows] = np.arange(len(rows))
        forward = model.mlp_head
    else:
        sampler = PlanSampler()
        loader = make_loader(ds, sampler, workers, device, persistent=True)
        forward = model

    def batch_source(plan: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        if head_only:
            for bi in plan:
                yield emb[torch.from_numpy(emb_row[bi]).to(emb.device)], torch.from_numpy(ds.targets[bi]), None
            return
        sampler.plan = plan
        for x, y, n_real in loader:
            x, y = augment_batch(x, y, n_real, cfg.augment, aug_rng, mean, std)
            yield x, y, n_real

    val_loader = None
    if len(val_idx) and not head_only:
        vb = [val_idx[k:k + cfg.eval.batch_size].tolist() for k in range(0, len(val_idx), cfg.eval.batch_size)]
        val_loader = make_loader(ds, vb, workers, device, persistent=True)

    def validate() -> tuple[np.ndarray, np.ndarray, float]:
        if head_only:
            rows = torch.from_numpy(emb_row[val_idx]).to(emb.device)
            return score_head(model.mlp_head, emb[rows], ds.targets[val_idx], task, device, cfg.eval.batch_size,
                              loss_fn, amp)
        out = score_batches(model, val_loader, pre, task, device, cfg.eval.batch_size, precision, loss_fn, len(labels))
        model.train()
        return out

    avg_from, avg_to = cfg.eval.average_from_epoch, cfg.eval.average_to_epoch
    interrupted = False
    last_ck = time.monotonic()
    epoch = start_epoch
    for epoch in range(start_epoch, o.epochs):
        t0 = time.time()
        order = train_idx[epoch_order(len(train_idx), epoch, o.seed, weights)]
        plan = batches(order, o.batch_size)
        done = skip_batches if epoch == start_epoch else 0
        if done == 0:
            losses.epoch_loss[:] = [0.0, 0]
        model.train()
        bar = tqdm(total=len(plan), initial=done, desc=f"epoch {epoch + 1}/{o.epochs}", leave=True, unit="batch",
                   disable=None if progress else True)  # None: off when not a terminal or notebook
        micro, acc_loss, finished = 0, None, done
        snap = _rng_state(aug_rng, cuda=False)  # at the last step boundary (numpy + torch CPU: no device sync)
        try:
            for b, (x, y, _) in enumerate(batch_source(plan[done:]), start=done):
                group = min(o.accum_steps, len(plan) - (b - micro))  # micro-batches in this optimiser step
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
                    logits = forward(x)
                loss = loss_fn(logits, y)
                scaler.scale(loss / group).backward()
                part = loss.detach() / group
                acc_loss = part if acc_loss is None else acc_loss + part
                micro += 1
                if micro < group:
                    continue
                lr_now = opt.param_groups[0]["lr"]
                optimizer_step(model, opt, sched, scaler, o.grad_clip)
                losses.add(global_step, epoch + 1, acc_loss, lr_now)
                global_step += 1
                bar.update(micro)
                micro, acc_loss, finished = 0, None, b + 1
                snap = _rng_state(aug_rng, cuda=False)
                if losses.due():
                    losses.flush()
                    bar.set_postfix(loss=f"{losses.latest:.4f}", lr=f"{lr_now:.2e}")
                if stop_after_steps is not None and global_step >= stop_after_steps:
                    losses.flush()
                    save_last(epoch, b + 1)
                    interrupted = True
                    break
                if time.monotonic() - last_ck >= o.checkpoint_every_s:
                    losses.flush()
                    save_last(epoch, b + 1)
                    last_ck = time.monotonic()
        except KeyboardInterrupt:
            opt.zero_grad(set_to_none=True)
            losses.flush()  # only finished optimiser steps are pending
            if torch.cuda.is_available():  # the CUDA generator as it is now (a GPU resume is not bit-exact anyway)
                snap = {**snap, "cuda": torch.cuda.get_rng_state_all()}
            save_last(epoch, finished, snap)
            bar.close()
            raise MonitorError(f"interrupted; continue with: monitor train ... --out {out_dir} --resume") from None
        bar.close()
        if interrupted:
            break
        losses.flush()
        skip_batches = 0
        train_loss = losses.epoch_loss[0] / max(losses.epoch_loss[1], 1)
        row: dict[str, Any] = dict(epoch=epoch + 1, steps=global_step, train_loss=train_loss,
                                   lr=opt.param_groups[0]["lr"])
        if len(val_idx):
            yv, sv, vloss = validate()
            summ = evaluate_scores(yv, sv, labels, task, cfg.eval.threshold)["summary"]
            row.update(val_loss=vloss, **{k: summ[k] for k in SUMMARY_KEYS})
        row["seconds"] = round(time.time() - t0, 2)
        history.append(_history_row_safe(row))
        log.info("epoch %d/%d: %s (%.0f s)", epoch + 1, o.epochs, ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds"), row["seconds"])
        if len(val_idx) and select:
            sel = Selection(metric, best_value, best_epoch, bad_epochs)
            improved, stop = sel.update(epoch + 1, row, cfg.eval.patience)
            metric, best_value, best_epoch, bad_epochs = sel.metric, sel.best_value, sel.best_epoch, sel.bad_epochs
            if improved:
                _save_weights(model, ck_dir / "best.safetensors")
        else:
            stop = False
        if avg_from is not None and avg_from <= epoch + 1 <= (avg_to or o.epochs):
            avg_epochs.append(epoch + 1)
            avg = update_average(avg, len(avg_epochs), model)
        _write_history(out_dir / "metrics.csv", history)
        save_last(epoch + 1, 0)
        last_ck = time.monotonic()
        if stop:
            log.info("early stop after epoch %d: %d epochs without a better %s (best %.4g at epoch %d)", epoch + 1,
                     bad_epochs, metric, best_value, best_epoch)
            break
    loader = val_loader = None  # ends persistent loader workers

    result = FitResult(model, labels, pre, history, list(losses.step_losses), interrupted=interrupted)
    if interrupted:
        return result
    choice = cfg.export.weights
    if choice == "auto":
        choice = "averaged" if avg is not None else ("best" if select and best_epoch else "last")
    if choice == "averaged":
        if avg is None:
            raise MonitorError("export.weights: averaged needs eval.average_from_epoch within the epochs run")
        model.load_state_dict(avg)
        result.extra["averaged_epochs"] = list(avg_epochs)
    elif choice == "best":
        if not select:
            raise MonitorError("export.weights: best would choose each fold's epoch on its own validation data; "
                               "with --folds use last or averaged (the epoch is chosen on the fold-averaged curve)")
        if not (ck_dir / "best.safetensors").is_file():
            raise MonitorError("export.weights: best needs a validation split")
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ck_dir / "best.safetensors")))
        result.extra["best_epoch"] = best_epoch
    result.chosen = choice
    result.extra.update(selected_by=metric if select else None, device=str(device), precision=precision,
                        epochs_run=len(history))
    model.eval()
    ew = loader_workers(cfg.data.num_workers, device)
    if len(val_idx):  # the final scores: the full model on the training device, as monitor run scores
        result.val_targets, result.val_scores, _ = predict(model, ds, val_idx, pre, task, device, cfg.eval.batch_size,
                                                           precision, workers=ew)
    if len(test_idx):
        result.test_targets, result.test_scores, _ = predict(model, ds, test_idx, pre, task, device,
                                                             cfg.eval.batch_size, precision, workers=ew)
    result.model = model.to("cpu").eval()
    result.extra["val_index"] = val_idx
    result.extra["test_index"] = test_idx
    result.extra["train_wall_s"] = round(time.time() - t_start, 1)
    return result


def _cached_embeddings(model, ds, rows: np.ndarray, pre: Preprocess, device: str, precision: str, batch_size: int,
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
