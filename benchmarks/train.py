"""Training throughput (segments/s) of ``monitor.train``, with the fbank cache off and on.

Real clips from ../shared/data/clips (frog MP3/WAV and bird FLAC), cut into 10 s segments; each
configuration trains a few warm steps then ``--steps`` timed optimiser steps with the engine's
own pieces (SegmentDataset -> DataLoader -> augment_batch -> AST forward/backward -> AdamW step).
Cache off: every segment is decoded and run through the shared front end each time. Cache on: the
fbank cache is filled first (untimed), as from epoch 2 onwards.

    python benchmarks/train.py                      # CPU: tiny224 depth 2 and full depth 12, stride 16, 1024 frames
    python benchmarks/train.py --device cuda --size base384 --stride 10 --batch-size 12

Last line: ``train: <X> segments/s (cache off), <Y> segments/s (cache on)`` for the full-depth model.
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
    from monitor.train.data import from_folders

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
    from monitor.train.engine import amp_dtype, make_optimizer
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
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    table, labels = segment_table(args.segments)
    print(f"{len(table)} real 10 s segments ({', '.join(labels)}); {args.size} stride {args.stride}, "
          f"{args.frames} frames, batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for depth in [int(d) for d in args.depths.split(",")]:
            for cache in (False, True):
                sps = measure(table, labels, size=args.size, depth=depth, stride=args.stride, frames=args.frames,
                              batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                              cache_dir=tmp if cache else None, workers=args.workers)
                results[(depth, cache)] = sps
                print(f"  depth {depth:2d}, cache {'on ' if cache else 'off'}: {sps:7.2f} segments/s", flush=True)
    last = int(args.depths.split(",")[-1])
    print(f"train: {results[(last, False)]:.2f} segments/s (cache off), {results[(last, True)]:.2f} segments/s (cache on)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
