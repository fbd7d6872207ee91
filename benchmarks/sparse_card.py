"""A realistic sparse SD card for ``benchmarks/cascade.py``: hours of field-like background with labelled calls
inserted at known times in a chosen fraction of the segments.

Background: the real soundscapes in ``../shared/data/recordings`` (scikit-maad, opensoundscape), cut at
random offsets, resampled to the card's rate, at random gains, over synthetic pink noise (wind, a distant
road) at a random level per file. Calls: excerpts (at most 8 s) of the labelled clips in
``../shared/data/clips/{frog,bird}``, placed wholly inside a segment at a random offset and a random
signal-to-noise ratio (5 to 20 dB against that segment's background). Files are AudioMoth-like: 16-bit mono
WAVs named ``YYYYMMDD_HHMMSS.WAV``. ``clip_half`` 0 or 1 takes every other clip (sorted by name), so a card to
distil on and a card to measure on can hold different calls.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))
LABELS = ("bird", "frog")
SEGMENT_S = 10.0


def _resample(x: np.ndarray, sr: int, to: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    if sr == to:
        return x.astype(np.float32)
    g = gcd(sr, to)
    return resample_poly(x, to // g, sr // g).astype(np.float32)


def _read(path: Path, sr: int) -> np.ndarray:
    import soundfile as sf

    y, r = sf.read(str(path), dtype="float32", always_2d=True)
    return _resample(y.mean(axis=1), r, sr)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f) noise, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def clip_pool(half: int | None) -> dict[str, list[Path]]:
    out = {}
    for lab in LABELS:
        files = sorted(p for p in (SHARED / "data" / "clips" / lab).iterdir() if p.suffix.lower() in
                       (".mp3", ".flac", ".wav", ".ogg"))
        out[lab] = files if half is None else files[half::2]
    return out


def make_card(dst: Path, minutes: float, density: float, seed: int = 0, sr: int = 48000, file_minutes: float = 5.0,
              clip_half: int | None = None) -> list[dict]:
    """Write the card into ``dst``; returns the truth (one row per call: file, segment, label, start_s, end_s,
    clip, snr_db), also written to ``dst/../<name>.truth.csv``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True, exist_ok=True)
    backgrounds = [_read(p, sr) for p in sorted((SHARED / "data" / "recordings").rglob("*.wav"))
                   if __import__("soundfile").info(str(p)).duration >= 9.0]
    clips = clip_pool(clip_half)
    cache: dict[Path, np.ndarray] = {}
    truth = []
    n_files = max(1, int(round(minutes / file_minutes)))
    seg_n = int(SEGMENT_S * sr)
    t0 = datetime(2024, 5, 1, 19, 0, 0)
    for k in range(n_files):
        n = int(file_minutes * 60 * sr)
        x = pink(n, rng) * float(10 ** rng.uniform(-3.3, -2.0))
        pos = 0
        while pos < n:  # real soundscapes laid end to end at random offsets and gains
            b = backgrounds[int(rng.integers(len(backgrounds)))]
            a = int(rng.integers(0, max(1, len(b) - sr)))
            piece = b[a:a + int(rng.integers(5 * sr, 30 * sr))][: n - pos]
            x[pos:pos + len(piece)] += piece * float(10 ** rng.uniform(-0.6, 0.3))
            pos += len(piece)
        name = (t0 + timedelta(minutes=file_minutes * k)).strftime("%Y%m%d_%H%M%S") + ".WAV"
        for s in range(n // seg_n):
            if rng.random() >= density:
                continue
            lab = LABELS[int(rng.integers(len(LABELS)))]
            clip = clips[lab][int(rng.integers(len(clips[lab])))]
            if clip not in cache:
                cache[clip] = _read(clip, sr)
            c = cache[clip]
            length = min(len(c), int(rng.uniform(3.0, 8.0) * sr))
            a = int(rng.integers(0, max(1, len(c) - length + 1)))
            call = c[a:a + length]
            at = s * seg_n + int(rng.integers(0, seg_n - len(call) + 1))
            bg = x[s * seg_n:(s + 1) * seg_n]
            snr = float(rng.uniform(5.0, 20.0))
            gain = np.sqrt(np.mean(bg ** 2)) * 10 ** (snr / 20) / (np.sqrt(np.mean(call ** 2)) + 1e-12)
            x[at:at + len(call)] += call * gain
            truth.append({"file": name, "segment": s, "label": lab, "start_s": at / sr, "end_s": (at + len(call)) / sr,
                          "clip": clip.name, "snr_db": round(snr, 1)})
        peak = float(np.abs(x).max())
        sf.write(str(dst / name), (x / peak * 0.5 if peak > 0.99 else x).astype(np.float32), sr, subtype="PCM_16")
    with open(dst.parent / f"{dst.name}.truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "segment", "label", "start_s", "end_s", "clip", "snr_db"])
        w.writeheader()
        w.writerows(truth)
    return truth
