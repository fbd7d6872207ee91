"""The front end's later stages batched in torch on the scoring device (a GPU; the CPU in tests).

With a GPU, worker processes decode, mix to mono, sanitise and resample to 16 kHz
(``frontend.prepare_wave(..., band=False)``); this module runs the rest on the GPU, a whole batch at
a time: band-limiting, waveform mean removal, Kaldi fbank, pad/crop and normalisation. Why the split
falls there (measured in ``benchmarks/frontend.py``): resampling reduces a 48-384 kHz segment to 16 kHz
before it crosses a process boundary and the PCIe bus (0.64 MB per 10 s segment instead of 1.9-15 MB),
while the band filter and fbank, most of the front end's remaining CPU time, are a few large FFTs on
a GPU.

Band-limiting is the CPU's zero-phase Butterworth (``audio.bandpass``: ``sosfiltfilt`` with odd
padding and steady-state initial conditions) computed exactly rather than approximated: the filter
is linear, so each of its two passes over ``m`` samples is the causal convolution of the input with
the filter's impulse response (its first ``m`` samples are all that can reach the output) plus the
first input sample times the response to the initial state ``zi``. Both responses are computed once
per (band, length) in float64 with scipy's ``sosfilt`` and the convolutions run as float64 FFTs.
Agreement with the CPU filter is float64 rounding (~1e-15 relative), far below the float32 output.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from monitor.config import Preprocess


@functools.lru_cache(maxsize=32)
def _responses(sr_hz: int, low_hz: float | None, high_hz: float | None, order: int, length: int):
    """(impulse response, zero-input response to ``zi``, padlen), float64 numpy, ``length`` samples of
    the padded signal; None when the band is off."""
    from scipy.signal import sosfilt

    from monitor.audio import _design

    d = _design(int(sr_hz), low_hz, high_hz, int(order))
    if d is None:
        return None
    sos, zi = d
    imp = np.zeros(length)
    imp[0] = 1.0
    h = sosfilt(sos, imp)
    g, _ = sosfilt(sos, np.zeros(length), zi=zi.copy())
    return h, g


@functools.lru_cache(maxsize=32)
def _spectra(sr_hz: int, low_hz: float | None, high_hz: float | None, order: int, length: int, device: str):
    """The impulse response's rfft (float64 complex) and the zero-input response on ``device``."""
    import scipy.fft

    r = _responses(sr_hz, low_hz, high_hz, order, length)
    if r is None:
        return None
    h, g = r
    nfft = scipy.fft.next_fast_len(2 * length - 1, real=True)
    hf = torch.fft.rfft(torch.from_numpy(h), n=nfft).to(device)
    return hf, torch.from_numpy(g).to(device), nfft


def _causal_pass(x: torch.Tensor, hf: torch.Tensor, g: torch.Tensor, nfft: int) -> torch.Tensor:
    """``sosfilt(sos, x, zi=zi * x[:, :1])`` for (B, m) float64 rows, as FFT convolutions."""
    m = x.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(x, n=nfft) * hf, n=nfft)[..., :m]
    return y + x[..., :1] * g


def band_limit(x: torch.Tensor, sr_hz: int, low_hz: float | None, high_hz: float | None,
               order: int = 6) -> torch.Tensor:
    """``audio.bandpass`` of each row of ``x`` (B, n) float32, on ``x``'s device: float32 (B, n) out.

    Zero-phase Butterworth with scipy's odd padding of ``3 * (2 * sections + 1)`` samples, computed as
    exact FFT convolutions in float64 (see the module docstring).
    """
    from monitor.audio import _design

    d = _design(int(sr_hz), low_hz, high_hz, int(order))
    n = x.shape[-1]
    if d is None or n == 0:
        return x
    sos, _ = d
    padlen = min(3 * (2 * len(sos) + 1), max(0, n - 1))
    xd = x.to(torch.float64)
    if padlen > 0:
        left = 2 * xd[..., :1] - xd[..., 1:padlen + 1].flip(-1)  # numpy's x[padlen:0:-1]
        right = 2 * xd[..., -1:] - xd[..., -(padlen + 1):-1].flip(-1)  # x[-2:-(padlen + 2):-1]
        xd = torch.cat([left, xd, right], dim=-1)
    m = xd.shape[-1]
    hf, g, nfft = _spectra(int(sr_hz), low_hz, high_hz, int(order), m, str(x.device))
    y = _causal_pass(xd, hf, g, nfft)
    y = _causal_pass(y.flip(-1), hf, g, nfft).flip(-1)
    if padlen > 0:
        y = y[..., padlen:-padlen]
    return y.to(torch.float32)


def remove_mean(x: torch.Tensor) -> torch.Tensor:
    """``features.remove_mean`` on a tensor exactly as the CPU does it: float64 mean, float32 subtraction."""
    return x - x.to(torch.float64).mean(-1, keepdim=True).to(torch.float32)


def device_features(waves: torch.Tensor, lengths: Sequence[int], pre: Preprocess, out: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
    """16 kHz waves, not yet band-limited, ``(B, width)`` float32 on the device (row ``i`` is
    ``waves[i, :lengths[i]]``) -> features ``(B, target_frames, mel)`` float32 on the same device.

    The same chain as ``frontend.prepare_wave``'s band stage + ``frontend.features``; rows of equal
    length are computed together. ``out``: a zeroed ``(>= B, T, M)`` tensor to write into.
    """
    from monitor.features import fbank, normalize as norm

    fb, band = pre.fbank, pre.band
    sr = pre.resample.sample_rate_hz
    b = waves.shape[0]
    if out is None:
        out = torch.zeros((b, fb.target_frames, fb.num_mel_bins), dtype=torch.float32, device=waves.device)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    for n, idx in groups.items():
        rows = waves[idx[0]:idx[-1] + 1, :n] if idx == list(range(idx[0], idx[-1] + 1)) else waves[idx, :n]
        x = band_limit(rows, sr, band.low_hz, band.high_hz, band.order)
        if fb.remove_wave_mean:
            x = remove_mean(x)
        f = fbank(x, sr, fb.num_mel_bins, fb.frame_length_ms, fb.frame_shift_ms, backend="torch")
        t = min(f.shape[1], fb.target_frames)
        if idx == list(range(idx[0], idx[-1] + 1)):
            out[idx[0]:idx[-1] + 1, :t] = f[:, :t]
        else:
            out[idx, :t] = f[:, :t]
    if normalize:
        norm(out[:b], fb.norm_mean, fb.norm_std, inplace=True)
    return out
