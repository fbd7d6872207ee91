"""Kaldi-compatible log-mel filter banks in native torch, and the AST feature conventions.

``fbank`` equals ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`` without
torchaudio: snip-edges framing, per-frame DC removal, pre-emphasis 0.97, symmetric Hann window,
zero-padded power-of-two FFT, power spectrum, HTK-mel triangular bank from 20 Hz to Nyquist, log with
a float32-epsilon floor. Batched and vectorised (one ``rfft`` and a few banded matmuls per chunk of
frames, never a loop over frames), on any device; the mel bank and window are cached per device.

Framing, windowing and the mel bank run in float32 exactly as Kaldi/torchaudio do; the FFT runs in
float64 so the spectrum carries no FFT rounding of its own. Parity with torchaudio is then a few ulps
near a frame's peak and limited further down by the reference's own float32 FFT noise (~2 eps of the
frame's peak amplitude: 5e-4 in log power 80 dB down). On CPU the FFT is scipy's pocketfft
(single-threaded, same speed as torch's on one thread, immune to OpenMP stalls on a loaded machine).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np
import torch

_EPS = float(torch.finfo(torch.float32).eps)


def _mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_mel_bins: int, n_fft: int, sample_rate_hz: float, low_hz: float = 20.0,
              high_hz: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular HTK-mel bank, ``(num_mel_bins, n_fft // 2 + 1)`` float32 (Nyquist column 0).

    torchaudio's ``get_mel_banks`` step for step in float32, each step correctly rounded (the log is
    taken in float64 and rounded): a vectorised float32 log differs by an ulp on some inputs, which moves
    a weight near a triangle's apex by ~1e-5 and a whole mel bin's output with it.
    """
    f32 = np.float32
    nyquist = 0.5 * sample_rate_hz
    if high_hz <= 0.0:
        high_hz += nyquist
    mel_lo, mel_hi = _mel(low_hz), _mel(high_hz)
    delta = f32((mel_hi - mel_lo) / (num_mel_bins + 1))
    b = np.arange(num_mel_bins, dtype=f32)[:, None]
    left = f32(mel_lo) + b * delta
    center = f32(mel_lo) + (b + f32(1.0)) * delta
    right = f32(mel_lo) + (b + f32(2.0)) * delta
    hz = f32(sample_rate_hz / n_fft) * np.arange(n_fft // 2, dtype=f32)
    mel = (f32(1127.0) * np.log((f32(1.0) + hz / f32(700.0)).astype(np.float64)).astype(f32))[None, :]
    bank = np.maximum(f32(0.0), np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return torch.from_numpy(np.pad(bank.astype(f32), ((0, 0), (0, 1))))


@functools.lru_cache(maxsize=16)
def _hann(length: int, device: str = "cpu") -> torch.Tensor:
    """Symmetric Hann window, float32, cached per device (no host-to-device copy per call)."""
    return torch.hann_window(length, periodic=False, dtype=torch.float32).to(device)


_GROUP = 16  # mel bins per matmul: each group touches only the FFT bins under its triangles
_CHUNK_FRAMES = 1024  # frames per CPU call: keeps float64 intermediates in cache (one huge batch is ~3x slower)


@functools.lru_cache(maxsize=16)
def _mel_groups(num_mel_bins: int, n_fft: int, sample_rate_hz: float, device: str) -> tuple:
    """The mel bank as ``(mel_lo, mel_hi, bin_lo, bin_hi, weights (bins, mels))`` blocks on ``device``.

    The bank is banded (a triangle covers a few FFT bins), so per-group products skip the zeros:
    the same sums as the dense ``power @ bank.T``, ~4x fewer multiplications.
    """
    bank = mel_banks(num_mel_bins, n_fft, sample_rate_hz)
    out = []
    for g0 in range(0, num_mel_bins, _GROUP):
        g1 = min(g0 + _GROUP, num_mel_bins)
        cols = (bank[g0:g1] != 0).any(0).nonzero().flatten()
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        out.append((g0, g1, lo, hi, bank[g0:g1, lo:hi].T.contiguous().to(device)))
    return tuple(out)


def fbank(wave, sample_rate_hz: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, backend: str = "auto") -> torch.Tensor:
    """Log-mel fbank. ``wave`` (samples,) or (batch, samples) -> (frames, mel) or (batch, frames, mel).

    Frames = ``1 + (samples - frame_length) // frame_shift`` (0 when the wave is shorter than a frame).
    Runs on ``wave``'s device; float32 out. On the CPU, frames are processed in chunks of
    ``_CHUNK_FRAMES`` (a loop over chunks, not frames): one huge batched FFT is memory-bound and ~3x
    slower per frame; elsewhere the whole batch is one call. ``backend``: ``auto`` (scipy's pocketfft
    on the CPU, torch elsewhere) or ``torch`` (the GPU's code, also on the CPU: tests run it there).
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
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
    n_frames = 0 if n < win else 1 + (n - win) // hop
    out = x.new_empty((batch, n_frames, num_mel_bins))
    if n_frames:
        window = _hann(win, str(x.device))
        groups = _mel_groups(num_mel_bins, n_fft, float(sample_rate_hz), str(x.device))
        frames_all = x.unfold(-1, win, hop)  # (B, F, win), a view
        use_np = backend == "auto" and x.device.type == "cpu"
        if x.device.type != "cpu":
            out = _log_mel(frames_all, window, n_fft, groups, use_np)
        elif n_frames >= _CHUNK_FRAMES:  # long waves: one row at a time, in chunks of frames
            for b in range(batch):
                for c in range(0, n_frames, _CHUNK_FRAMES):
                    out[b, c:c + _CHUNK_FRAMES] = _log_mel(frames_all[b, c:c + _CHUNK_FRAMES], window, n_fft, groups,
                                                           use_np)
        else:  # short waves: several rows per call
            rows = max(1, _CHUNK_FRAMES // n_frames)
            for b in range(0, batch, rows):
                out[b:b + rows] = _log_mel(frames_all[b:b + rows], window, n_fft, groups, use_np)
    return out[0] if single else out


def _log_mel(frames: torch.Tensor, window: torch.Tensor, n_fft: int, groups: tuple, use_np: bool) -> torch.Tensor:
    """(..., frames, win) float32 -> (..., frames, mel): DC removal, pre-emphasis, window, |rfft|^2, mel, log."""
    frames = frames - frames.mean(-1, keepdim=True)
    if use_np:  # pocketfft, single-threaded: torch's threaded CPU FFT stalls on busy machines
        import scipy.fft

        f = frames.numpy()
        win = f.shape[-1]
        w = window.numpy()
        y = np.multiply(f[..., :-1], np.float32(0.97))  # pre-emphasis and window: float32 steps, as torchaudio
        np.subtract(f[..., 1:], y, out=y)
        np.multiply(y, w[1:], out=y)
        x = np.empty(f.shape[:-1] + (n_fft,), dtype=np.float64)  # written straight into the FFT's buffer
        x[..., 1:win] = y
        x[..., 0] = (f[..., 0] - np.float32(0.97) * f[..., 0]) * w[0]
        x[..., win:] = 0.0
        spec = scipy.fft.rfft(x, axis=-1, overwrite_x=True).view(np.float64)  # (..., bins * 2): re, im
        np.square(spec, out=spec)
        power = torch.from_numpy((spec[..., 0::2] + spec[..., 1::2]).astype(np.float32))
    else:
        frames = frames - 0.97 * torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # pre-emphasis
        spec = torch.fft.rfft((frames * window).to(torch.float64), n=n_fft)
        power = (spec.real.square() + spec.imag.square()).to(torch.float32)
    mel = power.new_empty(power.shape[:-1] + (groups[-1][1],))
    for g0, g1, lo, hi, w in groups:
        mel[..., g0:g1] = power[..., lo:hi] @ w
    return mel.clamp_min_(_EPS).log_()


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


def normalize(feats: torch.Tensor, mean: float, std: float, inplace: bool = False) -> torch.Tensor:
    """AST normalisation ``(x - mean) / (2 * std)``; ``inplace`` overwrites ``feats`` (same values)."""
    if inplace:
        return feats.sub_(mean).div_(2.0 * std)
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
