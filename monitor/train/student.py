"""The student of ``monitor distill``: a small AST trained on its teacher's scores (soft targets).

``build_student``: a small geometry (default tiny224, 2 blocks, stride 16) over the teacher's input; when the
teacher is one bundle of the same size, strides and input, the student starts from the teacher's patch
embedding, positional embedding, first blocks, final norm and head (``init: teacher``), else from scratch.
``train_student``: AdamW on the soft targets (teacher probabilities; a reviewer's yes / no replaces them for
its label), segments with a teacher positive drawn more often (``POSITIVE_SHARE`` of each epoch at least),
the held-out loss checked every epoch, the best weights kept, early stopping, and a checkpoint after every
epoch so ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
import time
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from monitor.fileio import atomic_path
from monitor.model.ast import AST
from monitor.model.geometry import MODEL_SIZES, Geometry

log = logging.getLogger(__name__)

POSITIVE_SHARE = 0.25  # at least this share of each epoch's draws hold a teacher positive
CHECKPOINT = "student_last.pt"


@dataclass
class StudentPlan:
    """How the student is made and trained (``monitor distill``'s options)."""

    model_size: str = "tiny224"
    depth: int = 2
    stride: int = 16
    init: str = "auto"  # auto (teacher's blocks when the geometry allows, else scratch), teacher, scratch
    epochs: int = 30
    patience: int = 6
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    seed: int = 0


@dataclass
class Trained:
    """The best student (by held-out loss) and its history."""

    model: Any
    init: str
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _loss(task: str):
    if task == "multiclass":
        return lambda logits, y: -(y * torch.log_softmax(logits, -1)).sum(-1).mean()
    return lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits, y)


def build_student(teacher_bundles: list, plan: StudentPlan) -> tuple[AST, str]:
    """The student AST and how it was initialised (``teacher`` or ``scratch``)."""
    t = teacher_bundles[0]
    g = t.architecture
    if plan.model_size not in MODEL_SIZES:
        raise ValueError(f"unknown student size {plan.model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
    geom = Geometry(plan.model_size, int(plan.depth), int(plan.stride), int(plan.stride), g.input_fdim, g.input_tdim,
                    g.label_dim, g.norm_eps, g.head_norm_eps)
    torch.manual_seed(plan.seed)
    model = AST.from_geometry(geom)
    same = (len(teacher_bundles) == 1 and g.model_size == geom.model_size and (g.fstride, g.tstride) ==
            (geom.fstride, geom.tstride) and g.depth >= geom.depth)
    if plan.init == "teacher" and not same:
        raise ValueError("init teacher needs one teacher bundle of the student's size and strides, at least as deep")
    if plan.init == "scratch" or not same:
        return model, "scratch"
    sd = t.build_model("cpu").state_dict()
    keep = {k: v for k, v in sd.items() if not (k.startswith("v.blocks.") and int(k.split(".")[2]) >= geom.depth)}
    model.load_state_dict(keep)
    return model, "teacher"


def draw_epoch(n_rows: int, positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's draws (``n_rows`` of them): rows with a teacher positive at least ``POSITIVE_SHARE`` of them."""
    pos = np.flatnonzero(positive)
    neg = np.flatnonzero(~positive)
    if not len(pos) or not len(neg) or len(pos) >= POSITIVE_SHARE * n_rows:
        return rng.permutation(n_rows)
    n_pos = int(round(POSITIVE_SHARE * n_rows))
    draws = np.concatenate([rng.choice(pos, n_pos, replace=True), rng.choice(neg, n_rows - n_pos, replace=False)])
    return rng.permutation(draws)


def predict(model, feats, rows: np.ndarray, task: str, batch_size: int = 32) -> np.ndarray:
    """Probabilities (len(rows), labels) of ``model`` (fp32, on its device) on ``feats[rows]`` (float16 features)."""
    out = []
    model.eval()
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for k in range(0, len(rows), batch_size):
            x = torch.from_numpy(np.asarray(feats[rows[k:k + batch_size]], dtype=np.float32)).to(dev)
            lg = model(x).float()
            out.append((torch.sigmoid(lg) if task == "multilabel" else torch.softmax(lg, -1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.label_dim), np.float32)


def train_student(model, init: str, feats, targets: np.ndarray, positive: np.ndarray, train_rows: np.ndarray,
                  val_rows: np.ndarray, task: str, plan: StudentPlan, out_dir: Path, resume: bool = True,
                  stop: Callable[[], bool] | None = None, device: str = "cpu") -> Trained:
    """Fit ``model`` to ``targets`` (soft, (n, labels)) on ``train_rows`` of ``feats`` on ``device`` (fp32); the best
    held-out loss wins. Returns the model on the CPU."""
    loss_fn = _loss(task)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    rng = np.random.default_rng(plan.seed)
    ckpt = out_dir / CHECKPOINT
    start, best, best_loss, history, bad = 0, None, float("inf"), [], 0
    ident = {"plan": asdict(plan), "init": init, "train": _digest(train_rows), "val": _digest(val_rows),
             "targets": _digest(np.asarray(targets, np.float32))}
    state = torch.load(ckpt, map_location=device, weights_only=False) if resume and ckpt.is_file() else None
    if state is not None and state.get("ident") != ident:
        log.warning("student: %s is from other options or data; training from the start", ckpt)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        start, best, best_loss, history, bad = (state["epoch"], state["best"], state["best_loss"], state["history"],
                                                state["bad"])
        log.info("student: resumed after epoch %d", start)
    steps = max(1, -(-len(train_rows) // plan.batch_size)) * plan.epochs
    y_all = torch.from_numpy(np.asarray(targets, dtype=np.float32)).to(device)
    for epoch in range(start, plan.epochs):
        if bad >= plan.patience:
            break
        t0 = time.perf_counter()
        model.train()
        order = train_rows[draw_epoch(len(train_rows), positive[train_rows], rng)]
        total = 0.0
        for k in range(0, len(order), plan.batch_size):
            idx = np.sort(order[k:k + plan.batch_size])
            step = epoch * -(-len(order) // plan.batch_size) + k // plan.batch_size
            for grp in opt.param_groups:  # linear warm-up over the first 5 % of steps, then cosine
                warm = max(1, steps // 20)
                grp["lr"] = plan.lr * (min(1.0, (step + 1) / warm) if step < warm else
                                       0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, steps - warm))))
            x = torch.from_numpy(np.asarray(feats[idx], dtype=np.float32)).to(device)
            loss = loss_fn(model(x), y_all[torch.from_numpy(idx).to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(idx)
            if stop is not None and stop():
                raise KeyboardInterrupt
        val = predict(model, feats, val_rows, task)
        with torch.no_grad():
            v = torch.from_numpy(val).to(device)
            vl = float(loss_fn(torch.logit(v.clamp(1e-6, 1 - 1e-6)) if task == "multilabel" else
                               torch.log(v.clamp_min(1e-9)), y_all[torch.from_numpy(val_rows).to(device)]))
        row = {"epoch": epoch + 1, "train_loss": total / max(1, len(order)), "val_loss": vl,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        if vl < best_loss - 1e-6:
            best_loss, bad = vl, 0
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        log.info("student epoch %d: train loss %.4f, held-out loss %.4f (%.0f s)", epoch + 1, row["train_loss"], vl,
                 row["seconds"])
        with atomic_path(ckpt) as tmp:
            torch.save({"ident": ident, "model": model.state_dict(), "opt": opt.state_dict(),
                        "rng": rng.bit_generator.state,
                        "epoch": epoch + 1, "best": best, "best_loss": best_loss, "history": history, "bad": bad},
                       tmp)
    if best is not None:
        model.load_state_dict(best)
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"] if history else 0
    return Trained(model.cpu().eval(), init, best_epoch, history)
