"""Helpers the Colab / Jupyter notebooks call, so every notebook cell stays a thin API call.

Nothing here is notebook-only logic: each function is plain Python with tests.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERIFIED_CHOICES = ("yes", "no", "unsure")


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def smoke_mode() -> bool:
    """CI runs every notebook top to bottom with ``MONITOR_SMOKE=1``: tiny data, tiny model, CPU."""
    return os.environ.get("MONITOR_SMOKE", "") not in ("", "0", "false", "False")


def mount_drive(mountpoint: str = "/content/drive") -> Path | None:
    """Mount Google Drive in Colab; elsewhere do nothing and return None."""
    if not in_colab():
        return None
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mountpoint)
    return Path(mountpoint) / "MyDrive"


def summary_table(out_dir: Path, positives_only: bool = False):
    """The workbook's Summary sheet as a DataFrame (read from ``report.xlsx``)."""
    import pandas as pd

    df = pd.read_excel(Path(out_dir) / "report.xlsx", sheet_name="Summary")
    if positives_only and "Prediction" in df:
        df = df[df["Prediction"] == "Positive"]
    return df.reset_index(drop=True)


def detections(out_dir: Path):
    """``detections.csv`` as a DataFrame (empty strings for unknown values)."""
    import pandas as pd

    return pd.read_csv(Path(out_dir) / "detections.csv", keep_default_na=False)


@dataclass(frozen=True)
class Clip:
    """Audio of one detection: ``samples`` (n,) float32 mono at ``sample_rate_hz``."""

    file: str
    label: str
    start_s: float
    end_s: float
    samples: Any
    sample_rate_hz: int


def detection_clip(out_dir: Path, row: int, pad_s: float = 0.0) -> Clip:
    """Read just the audio of detection ``row`` (0-based, detections.csv order) from the card."""
    import json

    import soundfile as sf

    from monitor.audio import to_mono

    out_dir = Path(out_dir)
    det = detections(out_dir).iloc[row]
    info = json.loads((out_dir / "run.json").read_text())
    path = Path(info["input_dir"]) / det["file"]
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        a = max(0, int((float(det["start_s"]) - pad_s) * sr))
        b = min(f.frames, int((float(det["end_s"]) + pad_s) * sr))
        f.seek(a)
        x = to_mono(f.read(b - a, dtype="float32", always_2d=True))
    return Clip(det["file"], det["label"], a / sr, b / sr, x, sr)


def plot_spectrogram(clip: Clip, ax=None, max_hz: float | None = None):
    """Draw a dB spectrogram of ``clip`` with matplotlib; returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.signal import spectrogram

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3))
    nper = min(1024, max(64, len(clip.samples) // 8))
    f, t, s = spectrogram(clip.samples, fs=clip.sample_rate_hz, nperseg=nper, noverlap=nper // 2)
    ax.pcolormesh(t + clip.start_s, f, 10 * np.log10(s + 1e-12), shading="auto", cmap="magma")
    ax.set_ylim(0, max_hz or clip.sample_rate_hz / 2)
    ax.set_xlabel("time in recording (s)")
    ax.set_ylabel("Hz")
    ax.set_title(f"{clip.file}: {clip.label} {clip.start_s:.0f}-{clip.end_s:.0f} s")
    return ax


def audio_player(clip: Clip):
    """An ``IPython.display.Audio`` widget for the clip."""
    from IPython.display import Audio

    return Audio(clip.samples, rate=clip.sample_rate_hz)


def set_verified(out_dir: Path, row: int, value: str, notes: str | None = None) -> None:
    """Write ``value`` (yes/no/unsure) into row ``row`` of the Detections sheet's ``Verified`` column.

    The workbook is saved through a temp file and renamed, so a crash never corrupts it. Rebuilding
    reports (``monitor report``) regenerates the workbook: reviewed workbooks are kept by copying.
    """
    from openpyxl import load_workbook

    if value not in VERIFIED_CHOICES:
        raise ValueError(f"Verified must be one of {VERIFIED_CHOICES}, got {value!r}")
    path = Path(out_dir) / "report.xlsx"
    wb = load_workbook(path)
    ws = wb["Detections"]
    header = [c.value for c in ws[1]]
    try:
        col = header.index("Verified") + 1
    except ValueError:
        raise ValueError(f"{path} has no Verified column in its Detections sheet") from None
    ws.cell(row=row + 2, column=col, value=value)
    if notes is not None and "Notes" in header:
        ws.cell(row=row + 2, column=header.index("Notes") + 1, value=notes)
    tmp = path.with_name(f".{path.name}.tmp")
    wb.save(tmp)
    os.replace(tmp, path)
