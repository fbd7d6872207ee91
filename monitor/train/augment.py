"""Training-only batch augmentation on log-mel features, with a numpy ``Generator`` (state saved on resume).

Order (as the official AST loader): gain and mixup on un-normalised log-mel, SpecAugment masks
(masked values = 0 before normalisation, as torchaudio's masking in the official code), normalise,
then additive noise and a time roll.

Mixup works on cached features as the official waveform mix ``lam * w1 + (1 - lam) * w2`` does
on average (cross terms average out): mel powers add as ``lam^2 P1 + (1 - lam)^2 P2``. Padding
frames (beyond a clip's real frames; log-mel 0 after ``pad_or_crop``, i.e. power 1, loud) carry
no sound: where a partner is padding, the clip keeps its own frames (scaled by ``lam^2``, as a
waveform mixed with silence), and frames that are padding in both stay padding. So a short clip
never overwrites real audio with its padding. Targets mix as ``lam * y1 + (1 - lam) * y2``; an
unknown (NaN) target stays unknown.

Shapes: ``x`` (batch, frames, mel), ``y`` (batch, labels), ``n_real`` (batch,) real frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from monitor.features import normalize


def gain(x: torch.Tensor, n_real: torch.Tensor, rng: np.random.Generator, max_db: float) -> torch.Tensor:
    """Random gain in ``[-max_db, max_db]`` dB per sample: + g/10 * ln 10 on real (un-padded) log-power frames."""
    if max_db <= 0:
        return x
    g_db = rng.uniform(-max_db, max_db, size=x.shape[0])
    add = torch.as_tensor(g_db / 10.0 * math.log(10.0), dtype=x.dtype)
    real = (torch.arange(x.shape[1])[None, :] < n_real[:, None]).to(x.dtype)
    return x + add[:, None, None] * real[:, :, None]


def mixup(x: torch.Tensor, y: torch.Tensor, n_real: torch.Tensor, rng: np.random.Generator, rate: float,
          alpha: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample, with probability ``rate``, mixed with a random other one of the batch:
    lam ~ Beta(alpha, alpha); real frames mixed as powers (see the module docstring), padding never
    mixed in; labels ``lam * y1 + (1 - lam) * y2`` (soft)."""
    if rate <= 0 or x.shape[0] < 2:
        return x, y, n_real
    b, t = x.shape[0], x.shape[1]
    do = rng.random(b) < rate
    partner = (np.arange(b) + rng.integers(1, b, size=b)) % b  # never itself
    lam = rng.beta(alpha, alpha, size=b)
    lam = np.where(do, lam, 1.0)
    lt = torch.as_tensor(lam, dtype=x.dtype)
    p = torch.as_tensor(partner)
    dot = torch.as_tensor(do)
    with torch.no_grad():
        frames = torch.arange(t)[None, :]
        real1 = (frames < n_real[:, None])[:, :, None]  # (b, t, 1)
        real2 = real1[p]
        w1 = 2 * torch.log(lt)[:, None, None]
        w2 = 2 * torch.log1p(-lt.clamp(max=1 - 1e-7))[:, None, None]
        x2 = x[p]
        both = torch.logaddexp(x + w1, x2 + w2)
        mixed = torch.where(real1 & real2, both, torch.where(real1, x + w1, torch.where(real2, x2 + w2, x)))
        x = torch.where(dot[:, None, None], mixed, x)
    y = torch.where(dot[:, None], lt[:, None] * y + (1 - lt[:, None]) * y[p], y)
    n_real = torch.where(dot, torch.maximum(n_real, n_real[p]), n_real)
    return x, y, n_real


def spec_mask(x: torch.Tensor, rng: np.random.Generator, freqm: int, timem: int, value: float = 0.0) -> torch.Tensor:
    """SpecAugment: one frequency band of width U[0, freqm) and one time span of width U[0, timem) per sample."""
    if freqm <= 0 and timem <= 0:
        return x
    x = x.clone()
    b, t, f = x.shape
    for i in range(b):
        if freqm > 0:
            w = int(rng.integers(0, min(freqm, f)))
            s = int(rng.integers(0, f - w + 1))
            x[i, :, s:s + w] = value
        if timem > 0:
            w = int(rng.integers(0, min(timem, t)))
            s = int(rng.integers(0, t - w + 1))
            x[i, s:s + w, :] = value
    return x


def noise_and_shift(x: torch.Tensor, rng: np.random.Generator, scale: float = 0.1, max_shift: int = 10) -> torch.Tensor:
    """Official noise augmentation on normalised features: ``x + U(0,1) * u * scale`` (u ~ U(0,1) per
    sample), then roll in time by U[-max_shift, max_shift) frames."""
    b, t, f = x.shape
    u = torch.as_tensor(rng.random((b, t, f)), dtype=x.dtype)
    amp = torch.as_tensor(rng.random(b) * scale, dtype=x.dtype)
    x = x + u * amp[:, None, None]
    if max_shift > 0:
        shifts = rng.integers(-max_shift, max_shift, size=b)
        x = torch.stack([torch.roll(x[i], int(shifts[i]), 0) for i in range(b)])
    return x


def augment_batch(x: torch.Tensor, y: torch.Tensor, n_real: torch.Tensor, cfg, rng: np.random.Generator,
                  norm_mean: float, norm_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised batch -> augmented, normalised batch and (soft) targets. ``cfg``: ``AugmentConfig``."""
    x = gain(x, n_real, rng, cfg.gain_db)
    x, y, n_real = mixup(x, y, n_real, rng, cfg.mixup, cfg.mixup_alpha)
    x = spec_mask(x, rng, cfg.freqm, cfg.timem)
    x = normalize(x, norm_mean, norm_std)
    if cfg.noise:
        x = noise_and_shift(x, rng, cfg.noise_scale, cfg.time_shift_frames)
    return x, y
