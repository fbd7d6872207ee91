"""The Kaldi log-mel filter bank as a torch layer (``KaldiFbank``), and the AST feature conventions.

``KaldiFbank`` equals ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`` without
torchaudio, row by row of a batch: snip-edges framing, per-frame DC removal, pre-emphasis 0.97,
symmetric Hann window, zero-padded power-of-two FFT, power spectrum, HTK-mel triangular bank from 20 Hz
to Nyquist, log with a float32-epsilon floor. Vectorised (one ``rfft`` and a few banded matmuls per
chunk of frames, never a loop over frames), on any device. It is lhotse's ``Wav2LogFilterBank`` pattern:
the window and the mel bank are the layer's buffers, moved with ``.to(device)``.

Framing, windowing and the mel bank run in float32 exactly as Kaldi/torchaudio do; the FFT runs in
float64 so the spectrum carries no FFT rounding of its own. Parity with torchaudio is then a few ulps
near a frame's peak and limited further down by the reference's own float32 FFT noise (~2 eps of the
frame's peak amplitude: 5e-4 in log power 80 dB down). On CPU the FFT is scipy's pocketfft
(single-threaded, same speed as torch's on one thread, immune to OpenMP stalls on a loaded machine);
elsewhere, or with ``backend="torch"``, torch's FFT: on the CPU both give the same numbers (tested).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np
import torch

from monitor.config import MODEL_RATE_HZ

_EPS = float(torch.finfo(torch.float32).eps)
BACKENDS = ("auto", "torch")
_GROUP = 16  # mel bins per matmul: each group touches only the FFT bins under its triangles
_CHUNK_FRAMES = 1024  # frames per CPU call: keeps float64 intermediates in cache (one huge batch is ~3x slower)


def check_backend(backend: str) -> str:
    """``auto`` (each stage's fastest kernel for the tensor's device) or ``torch`` (the GPU's kernels everywhere)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    return backend


def frame_sizes(sample_rate_hz: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """(frame length, frame shift) in samples, as Kaldi rounds them (down)."""
    return int(sample_rate_hz * frame_length_ms * 0.001), int(sample_rate_hz * frame_shift_ms * 0.001)


def frame_count(samples: int, sample_rate_hz: int = MODEL_RATE_HZ, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0) -> int:
    """Kaldi's (snip-edges) frame count of ``samples`` samples: ``1 + (samples - length) // shift``, 0 when
    shorter than one frame. The one place it is computed (fbank's output, training's real-frame count)."""
    win, hop = frame_sizes(sample_rate_hz, frame_length_ms, frame_shift_ms)
    return 0 if samples < win else 1 + (samples - win) // hop


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


class KaldiFbank(torch.nn.Module):
    """Kaldi fbank as a layer: ``(B, samples)`` float32 at ``sample_rate_hz`` -> ``(B, frames, num_mel_bins)``
    float32 log-mel on the input's device, ``frames = frame_count(samples, ...)``.

    Buffers: ``window`` (the symmetric Hann window, ``(frame_length,)``) and ``mel_<k>``, the mel bank in
    blocks of 16 bins, each ``(fft_bins, 16)`` over only the FFT bins under its triangles (the bank is
    banded: the same sums as the dense ``power @ bank.T``, ~4x fewer multiplications). On the CPU frames
    go in chunks of ``_CHUNK_FRAMES`` (a loop over chunks, not frames): one huge batched FFT is
    memory-bound and ~3x slower per frame; elsewhere the whole batch is one call. ``backend``: ``auto``
    (pocketfft on the CPU, torch elsewhere) or ``torch`` (the GPU's code, also on the CPU).
    """

    def __init__(self, sample_rate_hz: int = MODEL_RATE_HZ, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, backend: str = "auto"):
        super().__init__()
        self.sample_rate_hz, self.num_mel_bins = int(sample_rate_hz), int(num_mel_bins)
        self.frame_length_ms, self.frame_shift_ms = float(frame_length_ms), float(frame_shift_ms)
        self.backend = check_backend(backend)
        self.win, self.hop = frame_sizes(self.sample_rate_hz, frame_length_ms, frame_shift_ms)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.register_buffer("window", torch.hann_window(self.win, periodic=False, dtype=torch.float32),
                             persistent=False)
        bank = mel_banks(self.num_mel_bins, self.n_fft, float(self.sample_rate_hz))
        self.blocks: list[tuple[int, int, int, int]] = []  # (mel_lo, mel_hi, bin_lo, bin_hi) of buffer mel_<k>
        for k, g0 in enumerate(range(0, self.num_mel_bins, _GROUP)):
            g1 = min(g0 + _GROUP, self.num_mel_bins)
            cols = (bank[g0:g1] != 0).any(0).nonzero().flatten()
            lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
            self.register_buffer(f"mel_{k}", bank[g0:g1, lo:hi].T.contiguous(), persistent=False)
            self.blocks.append((g0, g1, lo, hi))

    def frames(self, samples: int) -> int:
        """Output frames for a wave of ``samples`` samples (``frame_count``)."""
        return frame_count(samples, self.sample_rate_hz, self.frame_length_ms, self.frame_shift_ms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"wave must be (batch, samples), got shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        batch, n = x.shape
        n_frames = self.frames(n)
        out = x.new_empty((batch, n_frames, self.num_mel_bins))
        if not n_frames:
            return out
        groups = tuple((*b, getattr(self, f"mel_{k}")) for k, b in enumerate(self.blocks))
        frames_all = x.unfold(-1, self.win, self.hop)  # (B, F, win), a view
        use_np = self.backend == "auto" and x.device.type == "cpu"
        if x.device.type != "cpu":
            return _log_mel(frames_all, self.window, self.n_fft, groups, use_np)
        if n_frames >= _CHUNK_FRAMES:  # long waves: one row at a time, in chunks of frames
            for b in range(batch):
                for c in range(0, n_frames, _CHUNK_FRAMES):
                    out[b, c:c + _CHUNK_FRAMES] = _log_mel(frames_all[b, c:c + _CHUNK_FRAMES], self.window, self.n_fft,
                                                           groups, use_np)
        else:  # short waves: several rows per call
            rows = max(1, _CHUNK_FRAMES // n_frames)
            for b in range(0, batch, rows):
                out[b:b + rows] = _log_mel(frames_all[b:b + rows], self.window, self.n_fft, groups, use_np)
        return out


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
