"""A head in seconds: ``monitor train`` with ``data.source: embeddings`` trains only the Linear layer of
``mlp_head`` on stored embeddings (``train.embedded``), keeps the source bundle's backbone and head LayerNorm
untouched (so ``backbone_sha256`` stays, and ``monitor report --rescore`` and ``monitor run`` both accept the
result), and exports a normal bundle through the usual path: grouped split, best epoch on validation,
thresholds calibrated on validation, held-out test, model card (``train.export``).

The features are the stored float16 embeddings through the frozen LayerNorm; validation, test and the
calibration score exactly as inference will (``model.head.Head``: float64 from the float16 embedding).
Optimiser settings come from ``optim`` (``lr``, ``weight_decay``, ``epochs``, ``batch_size`` (larger when an epoch
would take more than ``MAX_STEPS_PER_EPOCH`` steps), ``seed``;
the packaged ``head_from_embeddings`` recipe sets values that suit a linear head). ``data.extend_head``: the source
model's labels keep their head rows and thresholds unless verdicts retrain them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from monitor.decode import one_torch_thread
from monitor.errors import MonitorError
from monitor.train.calibrate import calibrate
from monitor.train.config import config_yaml
from monitor.train.embedded import Embedded, load_embedded
from monitor.train.export import export_bundle, json_safe, write_val_scores
from monitor.train.metrics import MAXIMISE, SUMMARY_KEYS, evaluate_scores
from monitor.train.splits import assign_splits, save_split
from monitor.train.table import summary, target_matrix

log = logging.getLogger(__name__)

DONE = "train_done.json"
MAX_STEPS_PER_EPOCH = 16  # a linear head on tens of thousands of rows: larger batches keep an epoch to this many steps


def _init_rows(data: Embedded, head) -> tuple[Any, Any, np.ndarray]:
    """Start weights: the source head's row for a label it knows, else zero; and which labels it knew."""
    import torch

    L, D = len(data.labels), head.width
    w = torch.zeros((L, D), dtype=torch.float32)
    b = torch.zeros(L, dtype=torch.float32)
    known = np.zeros(L, bool)
    for j, lab in enumerate(data.labels):
        if lab in data.bundle.labels:
            i = data.bundle.labels.index(lab)
            w[j], b[j], known[j] = head.weight[i].float(), head.bias[i].float(), True
    return w, b, known


def fit_linear(x, y: np.ndarray, weight: np.ndarray, w0, b0, cfg, rows: np.ndarray, validate, progress: bool = False):
    """Train ``logits = x @ w.T + b`` on ``rows`` with masked, weighted BCE (Adam, ``optim`` settings); after each
    epoch ``validate(w, b)`` -> (metric value or NaN, summary dict). Returns (w, b, history, chosen epoch)."""
    import torch

    o, metric = cfg.optim, cfg.eval.metric
    g = torch.Generator().manual_seed(int(o.seed))
    batch = max(int(o.batch_size), -(-len(rows) // MAX_STEPS_PER_EPOCH))  # many rows: larger batches, not more steps
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w, b], lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    xt = x[torch.from_numpy(rows)]
    yt = torch.from_numpy(y[rows])
    mask = ~torch.isnan(yt)
    yt = torch.nan_to_num(yt, nan=0.0)
    wt = torch.from_numpy(weight[rows].astype(np.float32))[:, None] * mask
    best, best_state, best_epoch, history = None, None, 0, []
    steps = 0
    for epoch in range(1, o.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(rows), generator=g)
        total = 0.0
        for k in range(0, len(rows), batch):
            i = perm[k:k + batch]
            z = xt[i] @ w.T + b
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt[i], reduction="none") * wt[i]).sum() \
                / wt[i].sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(i)
            steps += 1
        value, summ = validate(w.detach(), b.detach())
        row = {"epoch": epoch, "steps": steps, "train_loss": total / max(1, len(rows)), **summ,
               "seconds": round(time.perf_counter() - t0, 4)}
        history.append(row)
        if progress and (epoch % 10 == 0 or epoch == o.epochs):
            log.info("epoch %d: train loss %.4f%s", epoch, row["train_loss"],
                     f", val {metric} {value:.4f}" if np.isfinite(value) else "")
        better = np.isfinite(value) and (best is None or (value > best if MAXIMISE.get(metric, True) else value < best))
        if better:
            best, best_state, best_epoch = value, (w.detach().clone(), b.detach().clone()), epoch
    if best_state is None:
        return w.detach(), b.detach(), history, len(history)
    return best_state[0], best_state[1], history, best_epoch


def train_head(cfg, out_dir: Path, *, name: str, progress: bool = True) -> dict[str, Any]:
    """The whole ``monitor train`` for ``data.source: embeddings``; see the module docstring."""
    import torch

    from monitor.train.fit import FitResult

    out_dir = Path(out_dir)
    if (out_dir / DONE).is_file():
        raise MonitorError(f"{out_dir} holds a finished training run; choose another --out (it is never overwritten)")
    if cfg.task != "multilabel":
        raise MonitorError("data.source: embeddings trains a multilabel head (loss.kind: bce): verdicts judge one "
                           "label at a time")
    t_start = time.perf_counter()
    data = load_embedded(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(config_yaml(cfg), encoding="utf-8")
    src = data.bundle
    head = src.head()
    labels, table = data.labels, data.table
    split = np.full(len(table), "train", dtype=object)
    judged = ~data.weak
    split[judged] = assign_splits(table[judged].reset_index(drop=True), labels, cfg.split)
    save_split(table, split, out_dir / "splits.csv")
    y = target_matrix(table, labels)
    emb16 = torch.from_numpy(np.ascontiguousarray(data.vectors))
    x = torch.nn.functional.layer_norm(emb16.float(), (head.width,), head.ln_weight.float(), head.ln_bias.float(),
                                       head.eps)
    w0, b0, known = _init_rows(data, head)
    trained = np.array([np.isfinite(y[:, j]).any() for j in range(len(labels))])
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    if not np.isfinite(y[tr[~data.weak[tr]]]).any():
        raise MonitorError("the training split holds no verdict; review segments of more recordings or lower "
                           "split.val_fraction")

    def scores_of(w, b, rows):
        h = dataclasses.replace(head, weight=w.double(), bias=b.double())
        return h.scores(emb16[torch.from_numpy(rows)], "multilabel").numpy()

    def validate(w, b):
        if not len(va):
            return float("nan"), {}
        m = evaluate_scores(y[va], scores_of(w, b, va), labels, "multilabel", cfg.eval.threshold)["summary"]
        return float(m.get(cfg.eval.metric, float("nan"))), {k: m[k] for k in SUMMARY_KEYS}

    with one_torch_thread():  # tiny ops: threads only stall behind other work on a busy CPU (60 s -> 7 s)
        w, b, history, chosen = fit_linear(x, y, data.weight, w0, b0, cfg, tr, validate, progress)
    for j in np.flatnonzero(known & ~trained):  # an extended head: labels nobody judged keep their rows exactly
        w[j], b[j] = w0[j], b0[j]
    fit_s = time.perf_counter() - t_start
    c = cfg.calibrate
    val_scores = scores_of(w, b, va) if len(va) else None
    if val_scores is not None:
        thr, rows = calibrate(y[va], val_scores, labels, c.method, c.precision, c.default)
    else:
        thr, rows = {lab: c.default for lab in labels}, []
        log.warning("no validation split: every threshold is calibrate.default %g", c.default)
    for j in np.flatnonzero(known & ~trained):
        thr[labels[j]] = float(src.thresholds[labels[j]])
    metrics = evaluate_scores(y[va], val_scores, labels, "multilabel", thr) if val_scores is not None else None
    test_scores = scores_of(w, b, te) if len(te) else None
    test_metrics = evaluate_scores(y[te], test_scores, labels, "multilabel", thr) if test_scores is not None else None
    if val_scores is not None:
        write_val_scores(out_dir / "val_scores.csv", table, va, labels, val_scores, y[va])
    if test_scores is not None:
        write_val_scores(out_dir / "test_scores.csv", table, te, labels, test_scores, y[te])
    model = _model(src, labels, w, b)
    result = FitResult(model, labels, src.preprocessing, history, [], y[va] if len(va) else None, val_scores,
                       chosen=f"epoch {chosen}" if len(va) else "last", test_targets=y[te] if len(te) else None,
                       test_scores=test_scores,
                       extra={"val_index": va.tolist(), "test_index": te.tolist(), "source": "embeddings",
                              "out": str(data.out), "backbone_sha256": src.backbone(), "from_bundle": src.sha256,
                              "weak_negatives": int(data.weak.sum()), "fit_seconds": round(fit_s, 3)})
    ecfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init="bundle", checkpoint=str(src.path),
                                                              freeze="head"),
                               export=dataclasses.replace(cfg.export, fp16=src.weights_dtype == "float16"))
    bundle = export_bundle(out_dir, result, ecfg, name=name, table=table, split=split,
                           data_summary=summary(table, labels), thresholds=thr, metrics=metrics, calibration=rows,
                           config_dict=cfg.to_dict(), test_metrics=test_metrics)
    if bundle.backbone() != src.backbone():
        raise MonitorError("internal: the exported head changed the backbone")  # never expected: say it loudly
    out = {"bundle": str(bundle.path), "metrics": metrics["summary"] if metrics else None,
           "test_metrics": test_metrics["summary"] if test_metrics else None, "thresholds": thr, "history": history,
           "weights": result.chosen, "seconds": round(time.perf_counter() - t_start, 3), "fit_seconds": round(fit_s, 3)}
    (out_dir / DONE).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    log.info("head trained from %d stored embeddings in %.1f s (bundle %s)", len(table), fit_s, bundle.path)
    return {**out, "result": result}


def _model(src, labels: list[str], w, b):
    """The source bundle's model with a new Linear head (rows ``w``, biases ``b``); backbone and LayerNorm kept."""
    import torch

    from monitor.model.ast import AST

    old = src.build_model()
    if list(labels) == list(src.labels):
        new = old
    else:
        new = AST.from_geometry(src.architecture.replace(label_dim=len(labels)))
        new.load_state_dict({k: v for k, v in old.state_dict().items() if not k.startswith("mlp_head.1.")},
                            strict=False)
    with torch.no_grad():
        new.mlp_head[1].weight.copy_(w)
        new.mlp_head[1].bias.copy_(b)
    return new.eval()
