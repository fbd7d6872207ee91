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
    """Read just the audio of detection ``row`` (0-based, detections.csv order) from its card."""
    import pandas as pd
    import soundfile as sf

    from monitor.audio import to_mono

    out_dir = Path(out_dir)
    det = detections(out_dir).iloc[row]
    rec = pd.read_csv(out_dir / "recordings.csv", keep_default_na=False, dtype=str)
    where = dict(zip(zip(rec["deployment"], rec["file"]), rec["input_dir"]))
    base = where.get((str(det["deployment"]), str(det["file"]))) or ""
    path = Path(base) / det["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not there: mount the card {det['deployment']!r} at {base or '?'} to listen")
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
    """Record ``value`` (yes / no / unsure, '' to clear) for detection ``row`` (detections.csv order).

    The verdict goes into the results store, where every rebuilt report finds it, and the workbook
    is rebuilt; verdicts typed into the workbook meanwhile are read in first, never lost.
    """
    from monitor.pipeline import record_reviews

    record_reviews(Path(out_dir), {int(row): value}, None if notes is None else {int(row): notes})


def describe_model(name_or_path: str) -> dict[str, Any]:
    """Print and return a bundle's labels, thresholds and band (fails in one line if it is not usable)."""
    from monitor.model.bundle import load_bundle

    b = load_bundle(name_or_path)
    info = {"name": b.name, "version": b.version, "labels": b.labels, "thresholds": b.thresholds,
            "band_hz": (b.preprocessing.band.low_hz, b.preprocessing.band.high_hz), "path": str(b.path)}
    print(f"{b.name} {b.version}: labels {', '.join(b.labels)}; thresholds "
          + ", ".join(f"{k}={v:.2f}" for k, v in b.thresholds.items()))
    return info


def offer_download(path: str | Path):
    """Colab: download the file; Jupyter: return a link to it."""
    path = Path(path)
    if in_colab():
        from google.colab import files  # type: ignore[import-not-found]

        files.download(str(path))
        return None
    from IPython.display import FileLink

    return FileLink(str(path))


def load_recipe(path: str | Path, overrides: list[str] | None = None):
    """A training recipe with ``section.key=value`` overrides (unknown keys fail, naming the key)."""
    from monitor.train.config import load_config

    return load_config(Path(path), list(overrides or []))


def train(cfg, out_dir: str | Path, name: str) -> dict[str, Any]:
    """Train, calibrate and export, with tqdm progress (live loss and LR)."""
    from monitor.train.cli import train as _train

    return _train(cfg, Path(out_dir), name=name)


def show_training_plots(out_dir: str | Path) -> list[Path]:
    """Display the learning curve and PR curves of a training run (those that exist)."""
    from IPython.display import Image, display

    shown = []
    for name in ("learning_curve.png", "pr_curve.png"):
        p = Path(out_dir) / name
        if p.is_file():
            display(Image(filename=str(p)))
            shown.append(p)
    return shown


def training_report(out_dir: str | Path):
    """Per-label validation metrics and the calibrated thresholds as a DataFrame."""
    import pandas as pd

    p = Path(out_dir) / "val_per_label.csv"
    return pd.read_csv(p) if p.is_file() else pd.DataFrame()


def bundle_path(out_dir: str | Path) -> Path:
    """The exported bundle of a training run."""
    p = Path(out_dir) / "bundle"
    if not (p / "bundle.json").is_file():
        raise FileNotFoundError(f"{out_dir} has no exported bundle yet")
    return p


def copy_bundle(src: str | Path, dest: str | Path) -> Path:
    """Copy a bundle folder (e.g. to Drive), replacing an older copy."""
    import shutil

    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest


def show_detection(out_dir: str | Path, row: int, pad_s: float = 1.0) -> Clip:
    """Spectrogram and audio player of detection ``row`` (displayed); returns the clip."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    clip = detection_clip(Path(out_dir), row, pad_s)
    ax = plot_spectrogram(clip)
    ax.set_title(f"row {row}: " + ax.get_title())
    plt.show()
    display(audio_player(clip))
    return clip


def record_verdicts(out_dir: str | Path, verdicts: dict[int, str], notes: dict[int, str] | None = None) -> int:
    """Record several rows' verdicts (and notes) in the results store and rebuild the reports; returns how many
    changed."""
    from monitor.pipeline import record_reviews

    return record_reviews(Path(out_dir), {int(k): v for k, v in verdicts.items()},
                          {int(k): v for k, v in (notes or {}).items()})


def reviewed(out_dir: str | Path):
    """Every verdict kept for this output folder (typed in the workbook or recorded here), one row each."""
    from monitor.results import load_reviews

    return load_reviews(Path(out_dir))
