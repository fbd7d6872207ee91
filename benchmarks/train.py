"""Training benchmarks of ``monitor.train``: throughput, frozen-backbone head training, checkpoint size.

Real clips from ../shared/data/clips (frog MP3/WAV and bird FLAC), cut into 10 s segments.

``throughput`` (segments/s): a few warm steps then ``--steps`` timed optimiser steps with the fit loop's
own pieces (SegmentDataset -> DataLoader -> augment_batch -> AST forward/backward -> AdamW step).
Cache off: every segment is decoded and run through the shared front end each time. Cache on: the
fbank cache is filled first (untimed), as from epoch 2 onwards.

``frozen``: ``train.fit.fit`` with ``model.freeze: head`` for ``--head-epochs`` epochs, with the embedding
cache (the frozen backbone runs once per segment, the head trains on its outputs) and without it
(the whole AST forward every step); both with the fbank cache filled first, so only the model differs.
Wall time of ``fit`` itself (the path ``monitor train`` runs), and the seconds per extra epoch.

``checkpoint``: the size of ``checkpoints/last.pt`` that ``fit`` writes for ``--ckpt-size`` (default
base384, random weights, one optimiser step on one segment): full fine-tuning (model + Adam state, what
resume needs) and a frozen backbone (only the trained head); with the fp32 model size for reference.

    python benchmarks/train.py                                  # all three on the CPU
    python benchmarks/train.py --what throughput --device cuda --size base384 --stride 10 --batch-size 12
    python benchmarks/train.py --what frozen --size base384 --stride 10 --device cuda

Last lines: ``train: <X> segments/s (cache off), <Y> segments/s (cache on)``, ``frozen head: ...`` and
``checkpoint: ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))


def segment_table(n: int):
    """``n`` 10 s segments, alternating frog and bird recordings."""
    from monitor.config import SegmentConfig
    from monitor.train.sources import from_folders

    table, labels = from_folders(SHARED / "data" / "clips", SegmentConfig(10.0, 10.0, 5.0))
    frog = table[table["labels"] == ("frog",)].head(n // 2)
    bird = table[table["labels"] == ("bird",)].head(n - len(frog))
    import pandas as pd

    return pd.concat([frog, bird]).reset_index(drop=True), labels


def measure(table, labels, *, size: str, depth: int, stride: int, frames: int, batch_size: int, steps: int,
            warmup: int, device: str, cache_dir: str | None, workers: int) -> float:
    """Segments/s over ``steps`` optimiser steps after ``warmup`` untimed ones."""
    import numpy as np
    import torch

    from monitor.model.ast import AST
    from monitor.train.augment import augment_batch
    from monitor.train.config import build_config
    from monitor.train.dataset import SegmentDataset, collate
    from monitor.train.optim import amp_dtype, make_optimizer
    from monitor.train.losses import make_loss

    cfg = build_config({"augment": {"freqm": 48, "timem": 192, "mixup": 0.5}, "optim": {"lr": 1e-4},
                        "fbank": {"target_frames": frames}})
    pre = cfg.preprocess
    ds = SegmentDataset(table, labels, pre, cache_dir)
    if cache_dir:
        for i in range(len(ds)):  # fill the cache (epoch 1)
            ds.features(i)
    torch.manual_seed(0)
    model = AST(len(labels), stride, stride, 128, frames, size, depth=depth).to(device).train()
    opt = make_optimizer(model, cfg.optim)
    loss_fn = make_loss("bce")
    amp = amp_dtype("auto", device)
    rng = np.random.default_rng(0)
    n_batches = warmup + steps
    order = np.resize(np.random.default_rng(1).permutation(len(ds)), n_batches * batch_size)
    plan = [order[k * batch_size:(k + 1) * batch_size].tolist() for k in range(n_batches)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=plan, collate_fn=collate, num_workers=workers)
    t0 = None
    for k, (x, y, n) in enumerate(loader):
        if k == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = augment_batch(x, y, n, cfg.augment, rng, -4.27, 4.57)
        x, y = x.to(device), y.to(device)
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def frozen_head(table, labels, *, size: str, depth: int, stride: int, frames: int, epochs: int, device: str,
                tmp: str) -> dict[str, float]:
    """Wall seconds of ``train.fit.fit`` (freeze: head) with and without the embedding cache, and per extra epoch."""
    from monitor.train.config import build_config
    from monitor.train.dataset import SegmentDataset
    from monitor.train.fit import fit

    cache = str(Path(tmp) / "fbank")
    raw = {"model": {"size": size, "depth": depth, "fstride": stride, "tstride": stride, "init": "scratch",
                     "freeze": "head"},
           "optim": {"lr": 1e-3, "epochs": epochs, "batch_size": 8, "device": device, "checkpoint_every_s": 1e9},
           "eval": {"batch_size": 8}, "fbank": {"target_frames": frames}, "data": {"num_workers": 0}}
    cfg0 = build_config(raw)
    ds = SegmentDataset(table, labels, cfg0.preprocess, cache)
    for i in range(len(ds)):  # the fbank cache filled first: both runs read the same cached features
        ds.features(i)
    split = ["train"] * (len(table) - len(table) // 4) + ["val"] * (len(table) // 4)
    out = {}
    for cached in (True, False):
        for n_ep in (1, epochs):
            raw["model"]["cache_embeddings"] = cached
            raw["optim"]["epochs"] = n_ep
            cfg = build_config(raw)
            t0 = time.perf_counter()
            fit(cfg, Path(tmp) / f"run_{cached}_{n_ep}", table=table, labels=labels, split=split, progress=False,
                cache_dir=cache)
            out[(cached, n_ep)] = time.perf_counter() - t0
    return out


def checkpoint_sizes(table, labels, *, size: str, frames: int, device: str, tmp: str) -> dict[str, float]:
    """MB of ``checkpoints/last.pt`` after one optimiser step (full and frozen backbone), and of the fp32 weights."""
    from monitor.model.ast import AST, count_parameters
    from monitor.train.config import build_config
    from monitor.train.fit import fit

    out = {}
    for freeze in ("full", "head"):
        cfg = build_config({"model": {"size": size, "fstride": 10, "tstride": 10, "init": "scratch", "freeze": freeze},
                            "optim": {"epochs": 1, "batch_size": 1, "device": device},
                            "fbank": {"target_frames": frames}, "data": {"num_workers": 0, "norm_stats": "config"},
                            "split": {"val_fraction": 0.0}})
        run = Path(tmp) / f"ckpt_{freeze}"
        fit(cfg, run, table=table.head(1), labels=labels, split=["train"], progress=False, stop_after_steps=1,
            cache_dir=str(Path(tmp) / "fbank"))
        out[freeze] = (run / "checkpoints" / "last.pt").stat().st_size / 1e6
    out["weights"] = count_parameters(AST(len(labels), 10, 10, 128, frames, size)) * 4 / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="tiny224")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--depths", default="2,12", help="comma-separated; the last one is the headline")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--what", default="throughput,frozen,checkpoint", help="comma-separated parts to run")
    ap.add_argument("--head-epochs", type=int, default=5, help="frozen: epochs of head training")
    ap.add_argument("--head-segments", type=int, default=48, help="frozen: segments (a quarter validates)")
    ap.add_argument("--ckpt-size", default="base384", help="checkpoint: model size (random weights)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    what = set(args.what.split(","))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    if "throughput" in what:
        table, labels = segment_table(args.segments)
        print(f"throughput: {len(table)} real 10 s segments ({', '.join(labels)}); {args.size} stride {args.stride}, "
              f"{args.frames} frames, batch {args.batch_size}")
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for depth in [int(d) for d in args.depths.split(",")]:
                for cache in (False, True):
                    sps = measure(table, labels, size=args.size, depth=depth, stride=args.stride, frames=args.frames,
                                  batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                                  device=args.device, cache_dir=tmp if cache else None, workers=args.workers)
                    results[(depth, cache)] = sps
                    print(f"  depth {depth:2d}, cache {'on ' if cache else 'off'}: {sps:7.2f} segments/s", flush=True)
        last = int(args.depths.split(",")[-1])
        print(f"train: {results[(last, False)]:.2f} segments/s (cache off), "
              f"{results[(last, True)]:.2f} segments/s (cache on)")
    if "frozen" in what:
        table, labels = segment_table(args.head_segments)
        depth = int(args.depths.split(",")[-1])
        print(f"frozen: {len(table)} segments, {args.size} depth {depth} stride {args.stride}, {args.frames} frames, "
              f"freeze: head, {args.head_epochs} epochs")
        with tempfile.TemporaryDirectory() as tmp:
            t = frozen_head(table, labels, size=args.size, depth=depth, stride=args.stride, frames=args.frames,
                            epochs=args.head_epochs, device=args.device, tmp=tmp)
        e = args.head_epochs
        for cached in (True, False):
            per = (t[(cached, e)] - t[(cached, 1)]) / max(e - 1, 1)
            print(f"  embedding cache {'on ' if cached else 'off'}: {t[(cached, e)]:7.1f} s for {e} epochs "
                  f"({t[(cached, 1)]:.1f} s for 1; {per:.2f} s per extra epoch)", flush=True)
        print(f"frozen head: {t[(True, e)]:.1f} s with the embedding cache, {t[(False, e)]:.1f} s without "
              f"({t[(False, e)] / t[(True, e)]:.1f}x) for {e} epochs")
    if "checkpoint" in what:
        table, labels = segment_table(2)
        with tempfile.TemporaryDirectory() as tmp:
            mb = checkpoint_sizes(table, labels, size=args.ckpt_size, frames=1024, device=args.device, tmp=tmp)
        print(f"checkpoint: {args.ckpt_size} last.pt {mb['full']:.0f} MB full fine-tuning (model + Adam state), "
              f"{mb['head']:.2f} MB frozen backbone; fp32 weights {mb['weights']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
