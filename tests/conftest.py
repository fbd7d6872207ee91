"""Shared fixtures: where ../shared lives, and a seeded synthetic-WAV writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared")).resolve()


def write_wav(
    path: Path,
    duration_s: float,
    sample_rate_hz: int = 16000,
    channels: int = 1,
    freq_hz: float | None = 1000.0,
    amplitude: float = 0.3,
    noise: float = 0.0,
    seed: int = 0,
    subtype: str = "PCM_16",
    fmt: str | None = None,
) -> Path:
    """Write a tone (+ optional seeded noise) with soundfile; returns ``path``."""
    import soundfile as sf

    n = int(round(duration_s * sample_rate_hz))
    t = np.arange(n) / sample_rate_hz
    x = np.zeros(n) if freq_hz is None else amplitude * np.sin(2 * np.pi * freq_hz * t)
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(n)
    data = np.repeat(x[:, None], channels, axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sample_rate_hz, subtype=subtype, format=fmt)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set MONITOR_SHARED")
    return SHARED


@pytest.fixture
def wav_writer():
    return write_wav


@pytest.fixture(scope="module")
def one_torch_thread():
    """fbank is many small ops: on a shared, busy 2-core machine intra-op threads only add stalls."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
