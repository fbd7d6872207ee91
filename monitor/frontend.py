"""The one front end that training and inference both run, so they can never preprocess differently.

Order of operations, per segment or training clip (see ARCHITECTURE.md):

1. mix to mono (a NaN in any channel makes that mixed sample non-finite);
2. replace non-finite samples with 0 and count them, before any filter could smear one NaN over
   the whole segment;
3. resample to 16 kHz (polyphase, anti-aliased);
4. band-limit at 16 kHz with a zero-phase Butterworth (SOS, ``sosfiltfilt``). After resampling,
   because the band of interest lies below 8 kHz: filtering 16 kHz audio is 3-24x cheaper than at
   the recorder's rate (48-384 kHz; measured 4x at 48 kHz in ``benchmarks/frontend.py``), the
   low edge is far better conditioned relative to the sample rate, and an edge at or above 8 kHz is
   already enforced by the resampler's anti-aliasing filter, so it is off;
5. subtract the waveform mean (official AST), Kaldi fbank;
6. pad with zero frames or crop to ``target_frames``; normalise ``(x - mean) / (2 * std)``.

Steps 1-3 (``prepare_wave``) are numpy/scipy functions at the recorder's rate, run where the audio is
decoded. Steps 4-6 are ``FrontEnd``, a ``torch.nn.Module`` of small stage modules (``BandLimit``,
``RemoveMean``, ``features.KaldiFbank``, ``PadCrop``, ``Normalize``) built from a bundle's ``Preprocess``:
the same module runs on the CPU in the decode workers (CPU runs) and in training, and on the GPU in the
scorer (GPU runs). Each stage picks its kernel by the tensor's device (``backend="auto"``): scipy's
``sosfilt``/pocketfft and numpy on the CPU (the fastest there), torch elsewhere; ``backend="torch"``
runs the GPU's kernels on the CPU, where they give the same numbers (tested).

The band limit on the GPU is the CPU's ``sosfiltfilt`` (odd padding, steady-state initial conditions)
computed exactly rather than approximated: the filter is linear, so each of its two passes over ``m``
samples is the causal convolution of the input with the filter's impulse response (its first ``m``
samples are all that can reach the output) plus the first input sample times the response to the
initial state ``zi``. Both responses are computed once per (band, length) in float64 with scipy's
``sosfilt`` and the convolutions run as float64 FFTs: agreement with the CPU filter is float64
rounding (~1e-15 relative), far below the float32 output.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from monitor.audio import resample, sanitize, to_mono
from monitor.config import Preprocess
from monitor.features import KaldiFbank, check_backend, normalize


def prepare_wave(samples: np.ndarray, sample_rate_hz: int, pre: Preprocess) -> tuple[np.ndarray, int]:
    """(n,) or (n, channels) audio at its native rate -> ((m,) float32 at ``pre.resample.sample_rate_hz``,
    n_nonfinite): steps 1-3, mono, sanitise, resample. ``FrontEnd`` does the rest."""
    x, bad = sanitize(to_mono(samples))
    return resample(x, int(sample_rate_hz), pre.resample.sample_rate_hz, pre.resample.method), bad


def stack_waves(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Waves of any lengths -> (``(B, width)`` float32, zero-padded; lengths ``(B,)`` int64), ``FrontEnd``'s input.
    ``width`` is the longest wave (at least 1)."""
    lengths = np.array([len(w) for w in waves], np.int64)
    data = np.empty((len(waves), max(1, int(lengths.max(initial=0)))), np.float32)
    for i, w in enumerate(waves):  # one pass over the memory: np.zeros + copy costs ~1 ms more per 16 segments
        data[i, :len(w)] = w
        data[i, len(w):] = 0.0
    return data, lengths


# --- band limit: zero-phase Butterworth --------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _design(sr_hz: int, low_hz: float | None, high_hz: float | None, order: int):
    """(sos, zi) of the Butterworth band, or None when both edges are off; designed once per band
    (the design and ``sosfilt_zi`` cost a fifth of the whole front end when redone per segment)."""
    from scipy.signal import butter, sosfilt_zi

    nyq = sr_hz / 2.0
    lo = low_hz if low_hz is not None and low_hz > 0 else None
    hi = high_hz if high_hz is not None and high_hz < nyq else None
    if lo is not None and lo >= nyq:
        raise ValueError(f"band low edge {lo} Hz is at or above Nyquist ({nyq} Hz)")
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None:
        sos = butter(order, [lo, hi], btype="bandpass", fs=sr_hz, output="sos")
    elif lo is not None:
        sos = butter(order, lo, btype="highpass", fs=sr_hz, output="sos")
    else:
        sos = butter(order, hi, btype="lowpass", fs=sr_hz, output="sos")
    return sos, sosfilt_zi(sos)  # shared by every call: never modified (scipy's sosfilt needs them writable)


def _padlen(sos: np.ndarray, n: int) -> int:
    """scipy's default odd padding, ``3 * (2 * sections + 1)`` samples, at most ``n - 1``."""
    return min(3 * (2 * len(sos) + 1), max(0, n - 1))


def sosfiltfilt0(sos: np.ndarray, zi: np.ndarray, x: np.ndarray, padlen: int) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x.astype(float64), axis=0, padlen=padlen)`` (odd padding), step for
    step, with ``zi = sosfilt_zi(sos)`` given instead of recomputed: the same numbers, bit for bit (tested).
    ``x`` may be float32; it is widened while padding. Returns float64."""
    from scipy.signal import sosfilt

    if padlen > 0:
        if x.shape[0] <= padlen:
            raise ValueError(f"the input must be longer than padlen={padlen} samples")
        ends = x[[0, -1]].astype(np.float64)
        left = 2 * ends[0:1] - x[padlen:0:-1].astype(np.float64)
        right = 2 * ends[1:2] - x[-2:-(padlen + 2):-1].astype(np.float64)
        ext = np.concatenate((left, x, right), axis=0, dtype=np.float64)  # one pass, float32 -> float64
    else:
        ext = np.asarray(x, dtype=np.float64)
    zi = zi.reshape([zi.shape[0], 2] + [1] * (x.ndim - 1))
    y, _ = sosfilt(sos, ext, axis=0, zi=zi * ext[0:1])
    y, _ = sosfilt(sos, y[::-1], axis=0, zi=zi * y[-1:])
    y = y[::-1]
    return y[padlen:-padlen] if padlen > 0 else y


def bandpass(x: np.ndarray, sr_hz: int, low_hz: float | None, high_hz: float | None, order: int = 6) -> np.ndarray:
    """Zero-phase Butterworth band/low/high-pass (SOS, ``sosfiltfilt``) along axis 0: ``BandLimit``'s CPU
    kernel, float32 out.

    ``None`` (or 0 for the low edge, or >= Nyquist for the high edge) turns an edge off; both off
    returns ``x`` unchanged. Zero phase doubles the attenuation in dB (the filter runs twice).
    """
    d = _design(int(sr_hz), low_hz, high_hz, int(order))
    if d is None or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    sos, zi = d
    return sosfiltfilt0(sos, zi, np.asarray(x), _padlen(sos, len(x))).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _responses(sr_hz: int, low_hz: float | None, high_hz: float | None, order: int, length: int):
    """(impulse response, zero-input response to ``zi``), float64 numpy, ``length`` samples."""
    from scipy.signal import sosfilt

    sos, zi = _design(sr_hz, low_hz, high_hz, order)
    imp = np.zeros(length)
    imp[0] = 1.0
    h = sosfilt(sos, imp)
    g, _ = sosfilt(sos, np.zeros(length), zi=zi.copy())
    return h, g


@functools.lru_cache(maxsize=32)
def _spectra(sr_hz: int, low_hz: float | None, high_hz: float | None, order: int, length: int, device: str):
    """The impulse response's rfft (float64 complex), the zero-input response and the FFT size, on ``device``."""
    import scipy.fft

    h, g = _responses(sr_hz, low_hz, high_hz, order, length)
    nfft = scipy.fft.next_fast_len(2 * length - 1, real=True)
    hf = torch.fft.rfft(torch.from_numpy(h), n=nfft).to(device)
    return hf, torch.from_numpy(g).to(device), nfft


def _causal_pass(x: torch.Tensor, hf: torch.Tensor, g: torch.Tensor, nfft: int) -> torch.Tensor:
    """``sosfilt(sos, x, zi=zi * x[:, :1])`` for (B, m) float64 rows, as FFT convolutions."""
    m = x.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(x, n=nfft) * hf, n=nfft)[..., :m]
    return y + x[..., :1] * g


class BandLimit(torch.nn.Module):
    """Zero-phase Butterworth band limit of each row: ``(B, n)`` float32 -> ``(B, n)`` float32, same device.

    An edge of ``None`` (or 0 low, or >= Nyquist high) is off; both off: the input itself. Kernels: on
    the CPU (``backend="auto"``) ``bandpass`` row by row (scipy's ``sosfilt``); elsewhere the same filter
    as exact float64 FFT convolutions (module docstring). The filter design lives on the host (scipy).
    """

    def __init__(self, sample_rate_hz: int, low_hz: float | None, high_hz: float | None, order: int = 6,
                 backend: str = "auto"):
        super().__init__()
        self.band = (int(sample_rate_hz), low_hz, high_hz, int(order))
        self.backend = check_backend(backend)
        d = _design(*self.band)
        self.sos, self.zi = d if d is not None else (None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if self.sos is None or n == 0:
            return x
        padlen = _padlen(self.sos, n)
        if self.backend == "auto" and x.device.type == "cpu":
            rows = x.numpy()
            out = np.empty(rows.shape, np.float32)
            for i, r in enumerate(rows):
                out[i] = sosfiltfilt0(self.sos, self.zi, r, padlen)  # float64 -> float32 on assignment
            return torch.from_numpy(out)
        xd = x.to(torch.float64)
        if padlen > 0:
            left = 2 * xd[..., :1] - xd[..., 1:padlen + 1].flip(-1)  # numpy's x[padlen:0:-1]
            right = 2 * xd[..., -1:] - xd[..., -(padlen + 1):-1].flip(-1)  # x[-2:-(padlen + 2):-1]
            xd = torch.cat([left, xd, right], dim=-1)
        hf, g, nfft = _spectra(*self.band, xd.shape[-1], str(x.device))
        y = _causal_pass(xd, hf, g, nfft)
        y = _causal_pass(y.flip(-1), hf, g, nfft).flip(-1)
        if padlen > 0:
            y = y[..., padlen:-padlen]
        return y.to(torch.float32)


# --- the rest of the chain -----------------------------------------------------------------------------

class RemoveMean(torch.nn.Module):
    """Subtract each row's waveform mean (official AST, before fbank): ``(B, n)`` float32 -> same. The mean is
    taken in float64, the subtraction in float32 (numpy on the CPU with ``backend="auto"``, else torch)."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "auto" and x.device.type == "cpu":
            w = x.numpy()
            return torch.from_numpy(w - w.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32))
        return x - x.to(torch.float64).mean(-1, keepdim=True).to(torch.float32)


class PadCrop(torch.nn.Module):
    """``(B, frames, mel)`` -> ``(B, target_frames, mel)``: zero frames appended at the end, or the end cropped.
    With ``out`` (zeroed, ``(N, target_frames, mel)``) the rows go to ``out[rows]`` without another copy."""

    def __init__(self, target_frames: int):
        super().__init__()
        self.target_frames = int(target_frames)

    def forward(self, feats: torch.Tensor, out: torch.Tensor | None = None, rows=slice(None)) -> torch.Tensor:
        if out is None:
            out = feats.new_zeros((feats.shape[0], self.target_frames, feats.shape[2]))
        t = min(feats.shape[1], self.target_frames)
        out[rows, :t] = feats[:, :t]
        return out


class Normalize(torch.nn.Module):
    """AST normalisation ``(x - mean) / (2 * std)`` (``features.normalize``); ``inplace`` overwrites ``x``."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return normalize(x, self.mean, self.std, inplace=inplace)


class FrontEnd(torch.nn.Module):
    """Steps 4-6 of ``pre`` as one module: 16 kHz waves ``(B, width)`` float32 (a tensor or array; row ``i``
    is ``waves[i, :lengths[i]]``, default the whole width) -> features ``(B, target_frames, mel)`` float32
    on the waves' device.

    Band limit, mean removal (when ``pre.fbank.remove_wave_mean``), Kaldi fbank, pad/crop, and with
    ``normalize`` the AST normalisation; rows of equal length run as one batch. ``out``: a zeroed
    ``(>= B, target_frames, mel)`` tensor to write into. Move it with ``.to(device)``.
    """

    def __init__(self, pre: Preprocess, backend: str = "auto"):
        super().__init__()
        fb, band, sr = pre.fbank, pre.band, pre.resample.sample_rate_hz
        self.pre = pre
        self.band = BandLimit(sr, band.low_hz, band.high_hz, band.order, backend)
        self.remove_mean = RemoveMean(backend) if fb.remove_wave_mean else torch.nn.Identity()
        self.fbank = KaldiFbank(sr, fb.num_mel_bins, fb.frame_length_ms, fb.frame_shift_ms, backend)
        self.pad_crop = PadCrop(fb.target_frames)
        self.normalize = Normalize(fb.norm_mean, fb.norm_std)

    def forward(self, waves, lengths: Sequence[int] | None = None, normalize: bool = True,
                out: torch.Tensor | None = None) -> torch.Tensor:
        waves = torch.as_tensor(waves, dtype=torch.float32)
        b, width = waves.shape
        if out is None:
            fb = self.pre.fbank
            out = torch.zeros((b, fb.target_frames, fb.num_mel_bins), dtype=torch.float32, device=waves.device)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate([width] * b if lengths is None else lengths):
            groups.setdefault(int(n), []).append(i)
        for n, idx in groups.items():
            rows = slice(idx[0], idx[-1] + 1) if idx == list(range(idx[0], idx[-1] + 1)) else idx
            x = waves[rows, :n].contiguous()
            self.pad_crop(self.fbank(self.remove_mean(self.band(x))), out=out, rows=rows)
        if normalize:
            self.normalize(out[:b], inplace=True)
        return out


def front_end(pre: Preprocess, device: str = "cpu") -> FrontEnd:
    """``FrontEnd(pre)`` on ``device``, built once per process (filter design, window, mel bank)."""
    return _front_end(pre, str(device))


@functools.lru_cache(maxsize=8)
def _front_end(pre: Preprocess, device: str) -> FrontEnd:
    return FrontEnd(pre).to(device)
