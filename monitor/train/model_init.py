"""The model a training run starts from: ``build_model`` (scratch, ImageNet, AudioSet, Hugging Face or a
monitor bundle, with stochastic depth), ``from_bundle`` ("add a species": known labels keep their head
rows) and ``apply_freeze`` (which parameters train)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from monitor.config import Preprocess
from monitor.errors import MonitorError
from monitor.logs import listing, warn
from monitor.model.ast import AST
from monitor.model.bundle import load_bundle
from monitor.model.checkpoints import from_hf_checkpoint, from_official_checkpoint, pull
from monitor.train.config import TrainConfig

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig, labels: list[str]):
    """The AST for ``cfg.model`` with ``len(labels)`` outputs, initialised as ``model.init`` says, with
    ``model.drop_path_rate`` whatever the start (stochastic depth has no weights of its own)."""
    m, fb = cfg.model, cfg.fbank
    geom = dict(fstride=m.fstride, tstride=m.tstride, input_fdim=fb.num_mel_bins, input_tdim=fb.target_frames,
                model_size=m.size, depth=m.depth)
    n = len(labels)
    if m.init == "scratch":
        return AST(n, **geom, drop_path_rate=m.drop_path_rate)
    if m.init == "imagenet":
        return AST(n, **geom, drop_path_rate=m.drop_path_rate, imagenet_pretrain=True, pretrained_file=m.checkpoint)
    if m.init == "audioset":
        src = m.checkpoint or "audioset-10-10"
        path = Path(src) if Path(src).is_file() else pull(src)
        model = from_official_checkpoint(path, label_dim=n, **geom)
    elif m.init == "hf":
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
    if not path:
        raise MonitorError("model.init: bundle needs model.checkpoint (a bundle folder or name)")
    b = load_bundle(path)
    if b.is_ensemble:
        raise MonitorError(f"model.init: bundle {b.name} is an ensemble of {len(b.members)} models with no weights of "
                           f"its own; start from one of its members (e.g. {b.members[0].path})")
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
    dropped = [x for x in b.labels if x not in labels]
    if dropped:
        warn(f"model.init: {len(dropped)} of bundle {b.name}'s {len(b.labels)} labels are not in this run's data and "
             f"are dropped (the new model will not detect them): {listing(dropped, 10)}; add them to data.labels "
             "with data for them to keep them")
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
