"""The training loop: fit / evaluate / resume.

``fit`` trains one model on the rows of a segment table marked ``train``, evaluates on ``val``
every epoch, keeps best and last checkpoints (plus per-epoch weights for averaging), stops early
if asked, and returns the chosen weights and the final validation scores. ``checkpoints/last.pt``
holds model, optimiser, scheduler, AMP scaler, epoch position and every RNG state, written at
epoch ends and on interruption, so ``resume=True`` continues with the very same next step.
Epoch orders are a pure function of (seed, epoch) (``sampling.py``).
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
from typing import Any

import numpy as np
import torch

from monitor.config import Preprocess
from monitor.errors import MonitorError
from monitor.device import pick_device
from monitor.train.config import TrainConfig

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "steps", "train_loss", "val_loss", "lr", "mAP", "mAUC", "d_prime", "accuracy",
                   "macro_f1", "seconds"]
MAXIMISE = {"mAP": True, "mAUC": True, "d_prime": True, "accuracy": True, "macro_f1": True, "val_loss": False}


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


# --- model -------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, labels: list[str]):
    """The AST for ``cfg.model`` with ``len(labels)`` outputs, initialised as ``model.init`` says."""
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
        return from_official_checkpoint(path, label_dim=n, **geom).train()
    if m.init == "hf":
        from monitor.model.checkpoints import from_hf_checkpoint

        if not m.checkpoint:
            raise MonitorError("model.init: hf needs model.checkpoint (a saved ASTForAudioClassification folder)")
        model = from_hf_checkpoint(m.checkpoint, label_dim=n, input_tdim=fb.target_frames)
        got = {k: getattr(model.geometry, k) for k in ("fstride", "tstride", "input_fdim", "model_size")}
        want = {k: geom[k] for k in got}
        if got != want:
            raise MonitorError(f"the Hugging Face checkpoint has geometry {got}; set model/fbank to match ({want})")
        return model.train()
    return from_bundle(m.checkpoint, labels, geom)


def from_bundle(path: str | None, labels: list[str], geom: dict[str, Any]):
    """Start from a monitor bundle; labels it already knows keep their head rows ("add a species")."""
    from monitor.model.bundle import load_bundle

    if not path:
        raise MonitorError("model.init: bundle needs model.checkpoint (a bundle folder or name)")
    b = load_bundle(path)
    a = b.architecture
    for k in ("fstride", "tstride", "input_fdim", "input_tdim", "model_size", "depth"):
        if geom[k] is not None and getattr(a, k) != geom[k]:
            raise MonitorError(f"model/fbank {k}={geom[k]} differs from bundle {b.name}'s {getattr(a, k)}; "
                               "set them as in the bundle")
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
    """LR multiplier at optimiser step ``step`` (0-based). Warmup is linear and reaches 1.0 at step
    ``warmup_steps - 1``; multistep decays by ``lr_decay`` at epochs start, start+every, ... (official
    MultiStepLR); cosine anneals from the end of warmup to ``min_lr_frac`` at the last step."""
    w = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    epoch = step // max(steps_per_epoch, 1)
    if o.scheduler == "multistep":
        k = (epoch - o.lr_decay_start_epoch) // max(o.lr_decay_every, 1) + 1 if epoch >= o.lr_decay_start_epoch else 0
        d = o.lr_decay ** k
    elif o.scheduler == "cosine":
        total = max(o.epochs * steps_per_epoch - o.warmup_steps, 1)
        prog = min(max(step - o.warmup_steps, 0) / total, 1.0)
        d = o.min_lr_frac + (1 - o.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog))
    else:
        d = 1.0
    return w * d


def amp_dtype(amp: str, device: str):
    """None (fp32) on CPU or with ``off``; on CUDA ``auto`` follows ``monitor.device``'s rule (bf16 from
    compute capability 8.0, fp16 below), ``bf16``/``fp16`` as asked."""
    from monitor.device import autocast_dtype, resolve_precision

    if not str(device).startswith("cuda") or amp == "off":
        return None
    return autocast_dtype(resolve_precision(amp, device))


# --- evaluation --------------------------------------------------------------------------------------

def predict(model, ds, indices, pre: Preprocess, task: str, device: str = "cpu", batch_size: int = 16,
            amp=None, loss_fn=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets (n, L), scores (n, L), mean loss) over ``indices``; batches are zero-padded to
    ``batch_size`` exactly as ``monitor run`` scores them."""
    from monitor.features import normalize
    from monitor.train.dataset import collate

    model.eval()
    ys, ss, losses = [], [], []
    idx = [int(i) for i in indices]
    with torch.inference_mode():
        for k in range(0, len(idx), batch_size):
            x, y, _ = collate([ds[i] for i in idx[k:k + batch_size]])
            n = x.shape[0]
            xb = torch.zeros((batch_size, *x.shape[1:]), dtype=torch.float32)
            xb[:n] = normalize(x, pre.fbank.norm_mean, pre.fbank.norm_std)
            xb = xb.to(device)
            if amp is not None:
                with torch.autocast("cuda", dtype=amp):
                    logits = model(xb)
            else:
                logits = model(xb)
            logits = logits.float()[:n].cpu()
            if loss_fn is not None:
                losses.append(float(loss_fn(logits, y)) * n)
            ss.append((torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, -1)).numpy())
            ys.append(y.numpy())
    L = len(ds.labels)
    if not ys:
        return np.zeros((0, L)), np.zeros((0, L)), float("nan")
    return np.concatenate(ys), np.concatenate(ss), (sum(losses) / len(idx) if losses else float("nan"))


# --- checkpoints -------------------------------------------------------------------------------------

def _rng_snapshot(aug_rng: np.random.Generator) -> dict[str, Any]:
    snap = {"aug": json.dumps(aug_rng.bit_generator.state), "torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        snap["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return snap


def _restore_rng(snap: dict[str, Any], aug_rng: np.random.Generator) -> None:
    aug_rng.bit_generator.state = json.loads(snap["aug"])
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight files (the official weight averaging)."""
    from safetensors.torch import load_file

    acc: dict[str, torch.Tensor] = {}
    for p in paths:
        for k, v in load_file(str(p)).items():
            acc[k] = acc[k] + v.double() if k in acc else v.double()
    return {k: (v / len(paths)).float() for k, v in acc.items()}


# --- fit ---------------------------------------------------------------------------------------------

def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(row)


def _better(value: float, best: float | None, maximise: bool) -> bool:
    if not np.isfinite(value):
        return best is None
    return best is None or not np.isfinite(best) or (value > best if maximise else value < best)


def fit(cfg: TrainConfig, out_dir: Path, *, table, labels: list[str], split, resume: bool = False,
        stop_after_steps: int | None = None, progress: bool = True) -> FitResult:
    """Train on ``split == 'train'`` rows, validate on ``'val'`` rows; write checkpoints and metrics.csv."""
    from monitor.train.augment import augment_batch
    from monitor.train.dataset import SegmentDataset, collate, compute_stats
    from monitor.train.losses import make_loss
    from monitor.train.metrics import evaluate_scores
    from monitor.train.sampling import batches, epoch_order, sample_weights

    o = cfg.optim
    out_dir = Path(out_dir)
    ck_dir = out_dir / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    split = np.asarray(split, dtype=object)
    train_idx = np.nonzero(split == "train")[0]
    val_idx = np.nonzero(split == "val")[0]
    if len(train_idx) == 0:
        raise MonitorError("the training split is empty; add data or lower split.val_fraction")
    task = cfg.task
    device = pick_device(o.device)
    amp = amp_dtype(o.amp, device)
    if o.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    pre = cfg.preprocess
    ds = SegmentDataset(table, labels, pre, cfg.data.cache_dir, multiclass=task == "multiclass")

    stats_file = out_dir / "norm_stats.json"
    if resume and stats_file.is_file():
        st = json.loads(stats_file.read_text())
        mean, std = st["mean"], st["std"]
    elif cfg.data.norm_stats == "train":
        mean, std = compute_stats(ds, train_idx)
        stats_file.write_text(json.dumps({"mean": mean, "std": std, "segments": int(len(train_idx))}) + "\n")
        log.info("normalisation from the training split: mean %.4f std %.4f", mean, std)
    else:
        mean, std = pre.fbank.norm_mean, pre.fbank.norm_std
        stats_file.write_text(json.dumps({"mean": mean, "std": std, "from": "config"}) + "\n")
    pre = dataclasses.replace(pre, fbank=dataclasses.replace(pre.fbank, norm_mean=float(mean), norm_std=float(std)))

    torch.manual_seed(o.seed)
    model = build_model(cfg, labels)
    n_train = apply_freeze(model, cfg.model.freeze, cfg.model.train_last_n)
    log.info("%d trainable parameters (freeze: %s)", n_train, cfg.model.freeze)
    model.to(device)
    opt = make_optimizer(model, o)
    n_batches = math.ceil(len(train_idx) / o.batch_size)
    steps_per_epoch = math.ceil(n_batches / o.accum_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, o))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    loss_fn = make_loss(cfg.loss.kind, cfg.loss.label_smoothing, cfg.loss.focal_gamma)
    weights = sample_weights(ds.targets[train_idx]) if cfg.loss.balanced_sampling else None
    aug_rng = np.random.default_rng([o.seed, 1])

    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    start_epoch, skip_batches, global_step = 0, 0, 0
    best_value, best_epoch, bad_epochs = None, 0, 0
    epoch_loss = [0.0, 0]
    last_pt = ck_dir / "last.pt"
    if resume:
        if not last_pt.is_file():
            raise MonitorError(f"--resume: no checkpoint at {last_pt}; start without --resume")
        st = torch.load(last_pt, map_location="cpu", weights_only=True)
        if st["labels"] != labels:
            raise MonitorError(f"--resume: the run in {out_dir} has labels {st['labels']}, the data now {labels}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        _restore_rng(st["rng"], aug_rng)
        start_epoch, skip_batches, global_step = st["epoch"], st["batches_done"], st["global_step"]
        history, step_losses = list(st["history"]), list(st["step_losses"])
        best_value, best_epoch, bad_epochs = st["best_value"], st["best_epoch"], st["bad_epochs"]
        epoch_loss = list(st["epoch_loss"])
        log.info("resumed at epoch %d, batch %d (step %d)", start_epoch + 1, skip_batches, global_step)

    def save_last(epoch: int, batches_done: int, rng_snap: dict[str, Any]) -> None:
        state = dict(model={k: v.detach().cpu() for k, v in model.state_dict().items()}, optimizer=opt.state_dict(),
                     scheduler=sched.state_dict(), scaler=scaler.state_dict(), rng=rng_snap, epoch=epoch,
                     batches_done=batches_done, global_step=global_step, history=history, step_losses=step_losses,
                     best_value=best_value, best_epoch=best_epoch, bad_epochs=bad_epochs, epoch_loss=epoch_loss,
                     labels=labels)
        tmp = last_pt.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(last_pt)

    metric = cfg.eval.metric
    maximise = MAXIMISE[metric]
    avg_from, avg_to = cfg.eval.average_from_epoch, cfg.eval.average_to_epoch
    interrupted = False
    steps_file = out_dir / "steps.csv"
    if not resume or not steps_file.is_file():
        steps_file.write_text("step,epoch,loss,lr\n")
    from tqdm.auto import tqdm  # a widget in Jupyter / Colab, text on a terminal

    epoch = start_epoch
    for epoch in range(start_epoch, o.epochs):
        t0 = time.time()
        order = train_idx[epoch_order(len(train_idx), epoch, o.seed, weights)]
        plan = batches(order, o.batch_size)
        done = skip_batches if epoch == start_epoch else 0
        if done == 0:
            epoch_loss = [0.0, 0]
        model.train()
        loader = torch.utils.data.DataLoader(ds, batch_sampler=plan[done:], collate_fn=collate,
                                             num_workers=cfg.data.num_workers)
        snap = _rng_snapshot(aug_rng)
        bar = tqdm(total=len(plan), initial=done, desc=f"epoch {epoch + 1}/{o.epochs}", leave=False,
                   disable=None if progress else True)  # None: only on a terminal
        micro, acc_loss, finished = 0, 0.0, done
        try:
            for b, (x, y, n_real) in enumerate(loader, start=done):
                group = min(o.accum_steps, len(plan) - (b - micro))  # micro-batches in this optimiser step
                x, y = augment_batch(x, y, n_real, cfg.augment, aug_rng, mean, std)
                x, y = x.to(device), y.to(device)
                if amp is not None:
                    with torch.autocast("cuda", dtype=amp):
                        logits = model(x)
                else:
                    logits = model(x)
                loss = loss_fn(logits, y)
                scaler.scale(loss / group).backward()
                acc_loss += float(loss.detach()) / group
                micro += 1
                if micro < group:
                    continue
                if o.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                lr_now = opt.param_groups[0]["lr"]
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                step_losses.append(acc_loss)
                epoch_loss[0] += acc_loss
                epoch_loss[1] += 1
                with open(steps_file, "a") as fh:
                    fh.write(f"{global_step},{epoch + 1},{acc_loss:.6g},{lr_now:.6g}\n")
                global_step += 1
                bar.update(micro)
                bar.set_postfix(loss=f"{acc_loss:.4f}", lr=f"{lr_now:.2e}")
                micro, acc_loss, finished = 0, 0.0, b + 1
                snap = _rng_snapshot(aug_rng)
                if stop_after_steps is not None and global_step >= stop_after_steps:
                    save_last(epoch, b + 1, snap)
                    interrupted = True
                    break
        except KeyboardInterrupt:
            opt.zero_grad(set_to_none=True)
            save_last(epoch, finished, snap)  # up to the last finished optimiser step
            bar.close()
            raise MonitorError(f"interrupted; continue with: monitor train ... --out {out_dir} --resume") from None
        bar.close()
        if interrupted:
            break
        skip_batches = 0
        train_loss = epoch_loss[0] / max(epoch_loss[1], 1)
        row: dict[str, Any] = dict(epoch=epoch + 1, steps=global_step, train_loss=train_loss,
                                   lr=opt.param_groups[0]["lr"])
        if len(val_idx):
            yv, sv, vloss = predict(model, ds, val_idx, pre, task, device, cfg.eval.batch_size, amp, loss_fn)
            summ = evaluate_scores(yv, sv, labels, task, cfg.eval.threshold)["summary"]
            row.update(val_loss=vloss, **{k: summ[k] for k in ("mAP", "mAUC", "d_prime", "accuracy", "macro_f1")})
        row["seconds"] = round(time.time() - t0, 2)
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                   if isinstance(v, float) and k != "seconds"))
        value = row.get(metric, float("nan"))
        if len(val_idx) and _better(value, best_value, maximise):
            best_value, best_epoch, bad_epochs = value, epoch + 1, 0
            _save_weights(model, ck_dir / "best.safetensors")
        else:
            bad_epochs += 1
        if avg_from is not None and avg_from <= epoch + 1 <= (avg_to or o.epochs):
            _save_weights(model, ck_dir / f"epoch_{epoch + 1:03d}.safetensors")
        _write_history(out_dir / "metrics.csv", history)
        save_last(epoch + 1, 0, _rng_snapshot(aug_rng))
        if cfg.eval.patience is not None and len(val_idx) and bad_epochs > cfg.eval.patience:
            log.info("early stop after epoch %d (best %s %.4g at epoch %d)", epoch + 1, metric, best_value, best_epoch)
            break

    result = FitResult(model, labels, pre, history, step_losses, interrupted=interrupted)
    if interrupted:
        return result
    choice = cfg.export.weights
    avg_files = sorted(ck_dir.glob("epoch_*.safetensors"))
    if choice == "auto":
        choice = "averaged" if avg_from is not None and avg_files else ("best" if best_epoch else "last")
    if choice == "averaged":
        if not avg_files:
            raise MonitorError("export.weights: averaged needs eval.average_from_epoch within the epochs run")
        model.load_state_dict(average_weights(avg_files))
        result.extra["averaged_epochs"] = [int(p.stem.split("_")[1]) for p in avg_files]
    elif choice == "best":
        if not (ck_dir / "best.safetensors").is_file():
            raise MonitorError("export.weights: best needs a validation split")
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ck_dir / "best.safetensors")))
        result.extra["best_epoch"] = best_epoch
    result.chosen = choice
    model = model.to("cpu").eval()
    result.model = model
    if len(val_idx):
        yv, sv, _ = predict(model, ds, val_idx, pre, task, "cpu", cfg.eval.batch_size)
        result.val_targets, result.val_scores = yv, sv
    result.extra["val_index"] = val_idx
    return result
