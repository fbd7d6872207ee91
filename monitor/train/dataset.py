"""A torch Dataset of labelled segments through the shared front end (``monitor.frontend``).

Items are un-normalised, un-augmented log-mel features ``(target_frames, mel)`` float32, the label
vector ``(n_labels,)`` (1 present, 0 absent, NaN unknown) and the number of real (un-padded) frames.
Normalisation and augmentation happen per batch in the fit loop, so the on-disk cache holds exactly
what the front end made, keyed by file path + size + mtime + region + a hash of the preprocessing.
Audio is decoded by ``monitor.audio.read_frames``, the reader ``monitor run`` uses. Also here: the
DataLoader over planned batches (``make_loader``) and a run's normalisation stats (``norm_stats_for``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from monitor.audio import probe, read_frames
from monitor.config import ConfigError, Preprocess
from monitor.decode import default_workers
from monitor.features import dataset_stats
from monitor.fileio import atomic_path
from monitor.frontend import front_end, prepare_wave
from monitor.model.bundle import load_bundle
from monitor.train.config import TrainConfig
from monitor.train.table import target_matrix

log = logging.getLogger(__name__)


def preprocess_hash(pre: Preprocess) -> str:
    """Hash of what shapes un-normalised features (normalisation stats and block size excluded)."""
    d = pre.to_dict()
    d["fbank"] = {k: v for k, v in d["fbank"].items() if k not in ("norm_mean", "norm_std")}
    d["segment"] = {k: v for k, v in d["segment"].items() if k != "block_s"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def read_region(path: str, start_s: float, end_s: float, sample_rate_hz: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``[start_s, end_s)`` of a file -> ((frames, channels) float32, sr), by seeking, with
    ``monitor.audio.read_frames`` (the reader of ``monitor run``). Table times are exact frame counts
    over the rate, so ``round(t * sr)`` gives back the very frames inference reads."""
    sr = int(sample_rate_hz or probe(path).sample_rate_hz)
    return read_frames(path, int(round(start_s * sr)), int(round(end_s * sr))), sr


def region_features(path: str, start_s: float, end_s: float, pre: Preprocess,
                    sample_rate_hz: int | None = None) -> tuple[np.ndarray, int]:
    """One segment -> (un-normalised features (target_frames, mel) float32, real frames)."""
    x, sr = read_region(path, start_s, end_s, sample_rate_hz)
    if x.shape[0] == 0:
        raise ValueError(f"{path}: no audio at {start_s:.2f}-{end_s:.2f} s")
    wave, _ = prepare_wave(x, sr, pre)
    front = front_end(pre)
    feats = front(wave[None], normalize=False)[0].numpy()
    return feats.astype(np.float32, copy=False), min(front.fbank.frames(len(wave)), pre.fbank.target_frames)


class FbankCache:
    """``<dir>/<preprocess hash>/<key>.npy``; the key covers file identity and region."""

    def __init__(self, folder: str | Path, pre: Preprocess):
        self.dir = Path(folder) / preprocess_hash(pre)
        self.dir.mkdir(parents=True, exist_ok=True)

    def key(self, path: str, start_s: float, end_s: float) -> str:
        st = os.stat(path)
        ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{start_s:.6f}|{end_s:.6f}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        p = self.dir / f"{key}.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                return z["feats"], int(z["n"])
        except Exception:  # a torn write: recompute
            return None

    def put(self, key: str, feats: np.ndarray, n: int) -> None:
        """Store one segment (renamed into place; not flushed to disk: a torn entry is recomputed)."""
        with atomic_path(self.dir / f"{key}.npz", fsync=False) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, feats=feats, n=np.int64(n))


class SegmentDataset:
    """``table`` rows -> ``(feats (T, F) tensor, target (L,) tensor, n_real int)``; targets NaN where unknown."""

    def __init__(self, table, labels: list[str], pre: Preprocess, cache_dir: str | Path | None = None,
                 multiclass: bool = False):
        self.files = [str(f) for f in table["file"]]
        self.start_s = [float(x) for x in table["start_s"]]
        self.end_s = [float(x) for x in table["end_s"]]
        self.labels = list(labels)
        self.targets = target_matrix(table, self.labels)
        self.pre = pre
        self.cache_dir = cache_dir
        self._cache: FbankCache | None = None
        self._rates: dict[str, int] = {}
        self.multiclass = multiclass

    def sample_rate_hz(self, path: str) -> int:
        """Each file's rate, read once per process."""
        if path not in self._rates:
            self._rates[path] = probe(path).sample_rate_hz
        return self._rates[path]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def cache(self) -> FbankCache | None:
        if self.cache_dir is not None and self._cache is None:
            self._cache = FbankCache(self.cache_dir, self.pre)
        return self._cache

    def features(self, i: int) -> tuple[np.ndarray, int]:
        cache = self.cache
        if cache is not None:
            key = cache.key(self.files[i], self.start_s[i], self.end_s[i])
            hit = cache.get(key)
            if hit is not None:
                return hit
        f = self.files[i]
        feats, n = region_features(f, self.start_s[i], self.end_s[i], self.pre, self.sample_rate_hz(f))
        if cache is not None:
            cache.put(key, feats, n)
        return feats, n

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        import torch

        feats, n = self.features(i)
        return torch.from_numpy(np.array(feats, dtype=np.float32)), torch.from_numpy(self.targets[i]), int(n)


def collate(items):
    import torch

    x = torch.stack([a for a, _, _ in items])
    y = torch.stack([b for _, b, _ in items])
    n = torch.tensor([c for _, _, c in items], dtype=torch.long)
    return x, y, n


def worker_init(_: int) -> None:
    """DataLoader workers: one torch thread each (the front end is many small ops)."""
    import torch

    torch.set_num_threads(1)


class PlanSampler:
    """A batch sampler whose batches are set per epoch, so one persistent DataLoader serves every epoch."""

    def __init__(self) -> None:
        self.plan: list[list[int]] = []

    def __iter__(self):
        return iter(list(self.plan))

    def __len__(self) -> int:
        return len(self.plan)


def compute_stats(ds: SegmentDataset, indices) -> tuple[float, float]:
    """Mean/std of the un-augmented, un-normalised (padded) features over ``indices`` (training split)."""
    return dataset_stats(ds.features(int(i))[0] for i in indices)


def norm_stats_for(cfg: TrainConfig, ds, train_idx, out_dir: Path, resume: bool,
                   given: tuple[float, float] | None = None) -> tuple[float, float]:
    """Normalisation (mean, std) of a run, saved in ``norm_stats.json`` and reloaded on resume.

    ``data.norm_stats``: ``auto`` (the bundle's for ``init: bundle``, else ``train``); ``train``: the
    training split's (``given``: shared by all folds); ``config``: ``fbank.norm_mean/std``; ``bundle``.
    """
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


def loader_workers(setting: int | str, device: str) -> int:
    """``data.num_workers``: a number, or ``auto`` (``monitor.infer.default_workers``: up to 4 beside a
    GPU, none on a small CPU whose cores the model already uses)."""
    if setting != "auto":
        return int(setting)
    return default_workers(device)


def make_loader(ds, batches, workers: int, device: str, persistent: bool = False):
    """A DataLoader over ``batches`` (a list, or a ``PlanSampler`` set per epoch); pinned memory on
    CUDA; its own RNG, so creating it never moves the global torch RNG (resume stays exact)."""
    import torch

    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        pin_memory=str(device).startswith("cuda"), persistent_workers=persistent and workers > 0,
        worker_init_fn=worker_init if workers else None, generator=torch.Generator().manual_seed(0))
