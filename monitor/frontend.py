"""The one front end that training and inference both call, so they can never preprocess differently.

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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from monitor.config import Preprocess


def prepare_wave(samples: np.ndarray, sample_rate_hz: int, pre: Preprocess, band: bool = True) -> tuple[np.ndarray, int]:
    """(n,) or (n, channels) audio at its native rate -> ((m,) float32 16 kHz band-limited, n_nonfinite).

    ``band=False`` stops before the band limit (steps 1-3), which ``devfront`` then runs on the GPU.
    """
    from monitor.audio import bandpass, resample, sanitize, to_mono

    x, bad = sanitize(to_mono(samples))
    x = resample(x, int(sample_rate_hz), pre.resample.sample_rate_hz, pre.resample.method)
    if band:
        x = bandpass(x, pre.resample.sample_rate_hz, pre.band.low_hz, pre.band.high_hz, pre.band.order)
    return x, bad


def features(waves: Sequence[np.ndarray], pre: Preprocess, normalize: bool = True):
    """16 kHz waves -> ``(batch, target_frames, num_mel_bins)`` float32 features.

    Equal-length waves share one batched fbank call; others are computed one by one.
    """
    import torch

    from monitor.features import fbank, normalize as norm, remove_mean

    fb = pre.fbank
    sr = pre.resample.sample_rate_hz
    out = torch.zeros((len(waves), fb.target_frames, fb.num_mel_bins), dtype=torch.float32)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        groups.setdefault(len(w), []).append(i)
    for _, idx in groups.items():
        batch = np.stack([np.asarray(waves[i], dtype=np.float32) for i in idx])
        if fb.remove_wave_mean:
            batch = remove_mean(batch)
        f = fbank(torch.from_numpy(batch), sr, fb.num_mel_bins, fb.frame_length_ms, fb.frame_shift_ms)
        t = min(f.shape[1], fb.target_frames)  # pad_or_crop into the zeroed output, without a padded copy
        out[idx, :t] = f[:, :t]
    return norm(out, fb.norm_mean, fb.norm_std, inplace=True) if normalize else out  # out is ours: no copy


def segment_features(samples: np.ndarray, sample_rate_hz: int, pre: Preprocess, normalize: bool = True):
    """One clip at its native rate -> ``(target_frames, num_mel_bins)`` features."""
    wave, _ = prepare_wave(samples, sample_rate_hz, pre)
    return features([wave], pre, normalize)[0]
