"""Kaldi-compatible log-mel filter banks in native torch, and the AST feature conventions.

``fbank`` equals ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`` without
torchaudio: snip-edges framing, per-frame DC removal, pre-emphasis 0.97, symmetric Hann window,
zero-padded power-of-two FFT, power spectrum, HTK-mel triangular bank from 20 Hz to Nyquist, log with
a float32-epsilon floor. Batched and vectorised (one ``rfft`` and one matmul over every frame of the
batch), on any device.

Framing and windowing run in float32 exactly as Kaldi/torchaudio do; the FFT runs in float64 so the
spectrum carries no FFT rounding of its own (parity with torchaudio is then limited by the reference's
float32 FFT, visible only near the log floor).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np
import torch

_EPS = float(torch.finfo(torch.float32).eps)


def _mel(f: torch.Tensor | float):
    if isinstance(f, torch.Tensor):
        return 1127.0 * (1.0 + f / 700.0).log()
    return 1127.0 * math.log(1.0 + f / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_mel_bins: int, n_fft: int, sample_rate_hz: float, low_hz: float = 20.0,
              high_hz: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular HTK-mel bank, ``(num_mel_bins, n_fft // 2 + 1)`` float32 (Nyquist column 0)."""
    nyquist = 0.5 * sample_rate_hz
    if high_hz <= 0.0:
        high_hz += nyquist
    fft_bin_hz = sample_rate_hz / n_fft
    mel_lo, mel_hi = _mel(low_hz), _mel(high_hz)
    delta = (mel_hi - mel_lo) / (num_mel_bins + 1)
    b = torch.arange(num_mel_bins).unsqueeze(1)
    left = mel_lo + b * delta
    center = mel_lo + (b + 1.0) * delta
    right = mel_lo + (b + 2.0) * delta
    mel = _mel(fft_bin_hz * torch.arange(n_fft // 2)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    bank = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(bank, (0, 1)).float()


@functools.lru_cache(maxsize=16)
def _hann(length: int) -> torch.Tensor:
    return torch.hann_window(length, periodic=False, dtype=torch.float32)


def fbank(wave, sample_rate_hz: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0) -> torch.Tensor:
    """Log-mel fbank. ``wave`` (samples,) or (batch, samples) -> (frames, mel) or (batch, frames, mel).

    Frames = ``1 + (samples - frame_length) // frame_shift`` (0 when the wave is shorter than a frame).
    """
    x = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
    x = x.to(torch.float32)
    single = x.dim() == 1
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"wave must be (samples,) or (batch, samples), got shape {tuple(x.shape)}")
    win = int(sample_rate_hz * frame_length_ms * 0.001)
    hop = int(sample_rate_hz * frame_shift_ms * 0.001)
    n_fft = 1 << (win - 1).bit_length()
    batch, n = x.shape
    if n < win:
        out = x.new_zeros((batch, 0, num_mel_bins))
        return out[0] if single else out
    frames = x.unfold(-1, win, hop)  # (B, F, win), a view
    frames = frames - frames.mean(-1, keepdim=True)
    frames = frames - 0.97 * torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # pre-emphasis
    frames = frames * _hann(win).to(frames.device)
    spec = torch.fft.rfft(frames.to(torch.float64), n=n_fft)
    power = (spec.real.square() + spec.imag.square()).to(torch.float32)
    bank = mel_banks(num_mel_bins, n_fft, float(sample_rate_hz)).to(power.device)
    mel = power @ bank.T
    out = mel.clamp_min(_EPS).log()
    return out[0] if single else out


def remove_mean(wave):
    """Subtract the waveform mean per row (the official AST pipeline does this before fbank)."""
    if isinstance(wave, torch.Tensor):
        return wave - wave.mean(dim=-1, keepdim=True)
    w = np.asarray(wave, dtype=np.float32)
    return w - w.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)


def pad_or_crop(feats: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad frames at the end, or crop, to ``target_frames``. (T, M) or (B, T, M)."""
    t = feats.shape[-2]
    if t == target_frames:
        return feats
    if t > target_frames:
        return feats[..., :target_frames, :]
    return torch.nn.functional.pad(feats, (0, 0, 0, target_frames - t))


def normalize(feats: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST normalisation ``(x - mean) / (2 * std)``."""
    return (feats - mean) / (2.0 * std)


def dataset_stats(feature_batches: Iterable[torch.Tensor]) -> tuple[float, float]:
    """Mean and std over every value of un-normalised, un-augmented features (float64 accumulation)."""
    n, s, ss = 0, 0.0, 0.0
    for f in feature_batches:
        f = torch.as_tensor(f).to(torch.float64)
        n += f.numel()
        s += float(f.sum())
        ss += float((f * f).sum())
    if n == 0:
        raise ValueError("no features to compute statistics from")
    mean = s / n
    return mean, math.sqrt(max(ss / n - mean * mean, 0.0))
