"""The fit loop: ``fit`` trains one model on the rows of a segment table marked ``train``.

It evaluates on ``val`` every epoch, keeps the best weights and one rolling weight average, stops
early if asked, and returns the chosen weights with their validation (and held-out test) scores,
computed on the training device by ``monitor.infer.Scorer``, the scorer of ``monitor run``
(``evaluate.py``).

Resume at any moment: ``checkpoints/last.pt`` (``checkpoints.py``) is written atomically every
``optim.checkpoint_every_s`` seconds, at epoch ends and on Ctrl-C, so ``resume=True`` continues
with the very same next step (bit-identical on a CPU); ``steps.csv`` is cut back to the checkpoint.
With a frozen backbone only the trained parameters are stored. Epoch orders are a pure function
of (seed, epoch) (``sampling.py``).

Precision follows ``monitor.device`` (bf16 only from compute capability 8.0, fp16 with a gradient
scaler below, fp32 on a CPU). No step syncs the GPU: losses are read back in batches (``optim.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from monitor.config import Preprocess
from monitor.device import autocast_dtype, pick_device
from monitor.errors import MonitorError
from monitor.fileio import atomic_write, atomic_write_text
from monitor.logs import plural, warn
from monitor.train.augment import augment_batch
from monitor.train.checkpoints import (CHECKPOINT_VERSION, history_row_safe, log_size, restore_rng, resume_keys,
                                       rng_state, save_weights, truncate_steps, update_average)
from monitor.train.config import AugmentConfig, TrainConfig, cache_dir_for, warmup_clamped, warmup_steps
from monitor.train.dataset import PlanSampler, SegmentDataset, loader_workers, make_loader, norm_stats_for
from monitor.train.evaluate import cached_embeddings, evaluate_batches, predict, score_head
from monitor.train.losses import make_loss
from monitor.train.metrics import SUMMARY_KEYS, Selection, evaluate_scores
from monitor.train.model_init import apply_freeze, build_model
from monitor.train.optim import StepLosses, lr_factor, make_optimizer, optimizer_step, train_precision
from monitor.train.sampling import batches, epoch_order, sample_weights

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "steps", "train_loss", "val_loss", "lr", *SUMMARY_KEYS, "seconds"]


@dataclass
class FitResult:
    """What ``fit`` returns: the chosen weights and the scores they were chosen by."""

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


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per epoch (``HISTORY_COLUMNS``)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(row)


def _augment_warning(cfg: TrainConfig) -> None:
    """Cached embeddings see no augmentation: say so when the recipe asks for some."""
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
    if warmup_clamped(o, steps_per_epoch):
        warn(f"optim.warmup_steps {o.warmup_steps} is not shorter than the run ({o.epochs} epochs x {steps_per_epoch} "
             f"steps = {o.epochs * steps_per_epoch} optimiser steps), so the LR would never reach optim.lr and the "
             f"{o.scheduler} schedule never start: clamped to {plural(warm, 'step')} (a tenth of the run); set "
             "optim.warmup_fraction (e.g. 0.1) to size it with the run")
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
        restore_rng(st["rng"], aug_rng)
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
    losses = StepLosses(steps_file, step_losses, epoch_loss, precision)

    def save_last(epoch: int, batches_done: int, rng: dict[str, Any] | None = None) -> None:
        sd = model.state_dict()
        state = dict(version=CHECKPOINT_VERSION, model={k: sd[k].detach().cpu() for k in keys},
                     optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                     rng=rng or rng_state(aug_rng), epoch=epoch, batches_done=batches_done, global_step=global_step,
                     history=[history_row_safe(h) for h in history], step_losses=list(losses.step_losses),
                     best_value=None if best_value is None else float(best_value), best_epoch=best_epoch,
                     bad_epochs=bad_epochs, metric=metric, epoch_loss=[float(x) for x in losses.epoch_loss],
                     average=avg, average_epochs=avg_epochs, labels=labels, log_bytes=log_size(out_dir))
        atomic_write(last_pt, lambda tmp: torch.save(state, tmp))
        side = dict(global_step=global_step, epoch=epoch, batches_done=batches_done, log_bytes=state["log_bytes"],
                    saved=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_text(ck_dir / "last.json", json.dumps(side) + "\n")

    # --- what a training batch is: features through the model, or cached embeddings through the head
    emb: torch.Tensor | None = None
    emb_row = np.full(len(table), -1, dtype=np.int64)
    loader = sampler = None
    if head_only:
        _augment_warning(cfg)
        rows = np.concatenate([train_idx, val_idx])
        emb = cached_embeddings(model, ds, rows, pre, device, precision, cfg.eval.batch_size, workers, ck_dir)
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
        out = evaluate_batches(model, val_loader, pre, task, device, cfg.eval.batch_size, precision, loss_fn,
                               len(labels))
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
        snap = rng_state(aug_rng, cuda=False)  # at the last step boundary (numpy + torch CPU: no device sync)
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
                snap = rng_state(aug_rng, cuda=False)
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
        # the LR of the epoch's last optimiser step (the optimiser now holds the next step's)
        lr_epoch = opt.param_groups[0]["initial_lr"] * lr_factor(max(global_step - 1, 0), steps_per_epoch, o)
        row: dict[str, Any] = dict(epoch=epoch + 1, steps=global_step, train_loss=train_loss, lr=lr_epoch)
        if len(val_idx):
            yv, sv, vloss = validate()
            summ = evaluate_scores(yv, sv, labels, task, cfg.eval.threshold)["summary"]
            row.update(val_loss=vloss, **{k: summ[k] for k in SUMMARY_KEYS})
        row["seconds"] = round(time.time() - t0, 2)
        history.append(history_row_safe(row))
        log.info("epoch %d/%d: %s (%.0f s)", epoch + 1, o.epochs, ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds"), row["seconds"])
        if len(val_idx) and select:
            sel = Selection(metric, best_value, best_epoch, bad_epochs)
            improved, stop = sel.update(epoch + 1, row, cfg.eval.patience)
            metric, best_value, best_epoch, bad_epochs = sel.metric, sel.best_value, sel.best_epoch, sel.bad_epochs
            if improved:
                save_weights(model, ck_dir / "best.safetensors")
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
