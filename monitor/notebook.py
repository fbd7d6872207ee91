"""Helpers the Colab / Jupyter notebooks call, so every notebook cell stays a thin API call.

Nothing here is notebook-only logic: each function is plain Python with tests. The notebooks keep
everything in one work folder (:func:`work_folder`): on Google Drive when it is mounted, so reports,
training runs and their checkpoints survive a Colab disconnect; on this machine's disk otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.audio import resample, to_mono
from monitor.errors import MonitorError
from monitor.logs import add_log_file, notebook_logging as _notebook_logging, remove_handler
from monitor.model.bundle import load_bundle
from monitor.model.checkpoints import PRETRAINED, checkpoint_path, pull
from monitor.outdir import load_reviews, record_reviews
from monitor.resources import example_card
from monitor.train.cli import train as _train
from monitor.train.config import config_yaml
from monitor.train.recipes import load_recipe as _load_recipe

log = logging.getLogger(__name__)


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def mount_drive(mountpoint: str = "/content/drive") -> Path | None:
    """Mount Google Drive in Colab; elsewhere do nothing and return None."""
    if not in_colab():
        return None
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mountpoint)
    return Path(mountpoint) / "MyDrive"


WORK_NAME = "monitor-work"


def notebook_logging() -> None:
    """Run summaries and per-epoch training metrics in the cell output (see ``monitor.logs``)."""
    _notebook_logging()


def work_folder(use_drive: bool = True, local_root: str | Path | None = None) -> Path:
    """The notebooks' one work folder: ``MyDrive/monitor-work`` when Drive is mounted (Colab and
    ``use_drive``), else ``monitor-work`` in ``local_root`` (default: the current folder). Created; printed."""
    drive = mount_drive() if use_drive else None
    work = (drive if drive is not None else Path(local_root or Path.cwd())) / WORK_NAME
    work.mkdir(parents=True, exist_ok=True)
    where = "on Google Drive" if drive is not None else (
        "on this Colab VM's disk: lost when the VM is recycled; mount Drive to keep it" if in_colab()
        else "on this machine")
    print(f"work folder: {work} ({where})")
    return work


def input_folder(input_dir: str | Path, work: str | Path) -> Path:
    """``input_dir``, or (when empty) the bundled example SD card, written once to ``WORK/example-card``."""
    if str(input_dir).strip():
        p = Path(input_dir).expanduser()
        if not p.is_dir():
            raise MonitorError(f"input folder not found: {p}")
        return p
    card = example_card(Path(work) / "example-card")
    print(f"recordings: the bundled example SD card, in {card}")
    return card


def report_folder(work: str | Path, name: str | Path) -> Path:
    """``WORK/reports/<name>`` (``name`` may be the input folder: its last part is used)."""
    base = Path(str(name).rstrip("/\\")).name or "report"
    return Path(work) / "reports" / base


def report_to_review(work: str | Path, name: str = "") -> Path:
    """``WORK/reports/<name>``, or (``name`` empty) the report written most recently in the work folder."""
    reports = Path(work) / "reports"
    if str(name).strip():
        out = reports / str(name).strip()
        if not (out / "run.json").is_file():
            raise MonitorError(f"{out} holds no report; run notebook 01 first or check RUN_NAME")
    else:
        runs = sorted(reports.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise MonitorError(f"no reports in {reports} yet; run notebook 01 first")
        out = runs[-1].parent
    print(f"report: {out}")
    return out


def run_summary(info) -> str:
    """The summary ``monitor run`` prints, from ``monitor.run``'s ``RunInfo``."""
    return "\n".join(info.summary_lines())


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


def plot_spectrogram(clip: Clip, ax=None, max_hz: float | None = None, figsize: tuple[float, float] = (9, 2.6)):
    """Draw a dB spectrogram of ``clip`` with matplotlib; returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.signal import spectrogram

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=72)
    nper = min(1024, max(64, len(clip.samples) // 8))
    f, t, s = spectrogram(clip.samples, fs=clip.sample_rate_hz, nperseg=nper, noverlap=nper // 2)
    ax.pcolormesh(t + clip.start_s, f, 10 * np.log10(s + 1e-12), shading="auto", cmap="magma", rasterized=True)
    ax.set_ylim(0, max_hz or clip.sample_rate_hz / 2)
    ax.set_xlabel("time in recording (s)")
    ax.set_ylabel("Hz")
    ax.set_title(f"{clip.file}: {clip.label} {clip.start_s:.0f}-{clip.end_s:.0f} s")
    return ax


LISTEN_RATE_HZ = 16000  # what the model hears (every bundle resamples to 16 kHz)
LISTEN_MAX_S = 20.0


def listening_file(clip: Clip, folder: str | Path, name: str, max_rate_hz: int = LISTEN_RATE_HZ,
                   max_s: float = LISTEN_MAX_S) -> Path:
    """Write a small, compressed copy of ``clip`` for listening: its first ``max_s`` seconds, resampled
    to at most ``max_rate_hz``, peak-normalised to -1 dBFS, as MP3 (OGG Vorbis, then FLAC, where
    libsndfile cannot write MP3). About 3 kB per second: a player in the notebook embeds tens of kB."""
    import numpy as np
    import soundfile as sf

    x = np.asarray(clip.samples, dtype=np.float32)[: int(max_s * clip.sample_rate_hz)]
    rate = clip.sample_rate_hz
    if rate > max_rate_hz:
        x, rate = resample(x, rate, max_rate_hz), max_rate_hz
    x = 0.89 * x / max(float(np.abs(x).max()) if len(x) else 0.0, 1e-6)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tries = [(".mp3", "MP3", "MPEG_LAYER_III", {"compression_level": 0.8}), (".mp3", "MP3", "MPEG_LAYER_III", {}),
             (".ogg", "OGG", "VORBIS", {}), (".flac", "FLAC", "PCM_16", {})]
    for ext, fmt, subtype, extra in tries:
        if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
            continue
        path = folder / f"{name}{ext}"
        try:
            sf.write(str(path), x, rate, format=fmt, subtype=subtype, **extra)
            return path
        except (sf.LibsndfileError, RuntimeError, TypeError):
            path.unlink(missing_ok=True)
    raise RuntimeError("libsndfile can write neither MP3, OGG nor FLAC here")


def audio_player(path: str | Path):
    """An ``IPython.display.Audio`` player for a (small, compressed) audio file."""
    from IPython.display import Audio

    return Audio(filename=str(path))


def set_verified(out_dir: Path, row: int, value: str, notes: str | None = None) -> None:
    """Record ``value`` (yes / no / unsure, '' to clear) for detection ``row`` (detections.csv order).

    The verdict goes into the results store, where every rebuilt report finds it, and the workbook
    is rebuilt; verdicts typed into the workbook meanwhile are read in first, never lost.
    """
    record_reviews(Path(out_dir), {int(row): value}, None if notes is None else {int(row): notes})


def describe_model(name_or_path: str) -> dict[str, Any]:
    """Print and return a bundle's labels, thresholds and band (fails in one line if it is not usable)."""
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


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None):
    """A training recipe (a packaged recipe's name or a YAML file) with ``section.key=value`` overrides."""
    return _load_recipe(name_or_path, list(overrides or []))


DATA_SOURCES = ("folders", "annotations", "manifest", "report", "embeddings")


def _yaml_str(value: str | Path) -> str:
    import json

    return json.dumps(str(value))  # a YAML double-quoted string: any path survives --set parsing


def _existing(path: str | Path, what: str, hint: str) -> Path:
    p = Path(path).expanduser()
    if not str(path).strip() or not p.exists():
        raise MonitorError(f"{what} not found: {str(path) or '(empty)'}; {hint}")
    return p.resolve()


def training_data(source: str, work: str | Path, *, root: str = "", annotations: str = "", manifest: str = "",
                  label_csv: str = "", report: str = "") -> list[str]:
    """Recipe overrides (``data.*``) for one data source; checks that its inputs exist and says what it uses.

    - ``folders``: one folder per label under ``root`` (default ``WORK/training-data``);
    - ``annotations``: Raven / Audacity selection tables (a file or a folder of them) over recordings in ``root``;
    - ``manifest``: the official AST json manifest with its label csv (``index,mid,display_name``);
    - ``report``: a report reviewed in notebook 03 (``report``: its folder or report.xlsx; default: the latest
      report in the work folder); the recordings are found through its run.json unless ``root`` is given;
    - ``embeddings``: a head on the stored embeddings and verdicts of such a report folder (run with embeddings).
    """
    import json

    work = Path(work)
    if source not in DATA_SOURCES:
        raise MonitorError(f"DATA_SOURCE must be one of {', '.join(DATA_SOURCES)}, got {source!r}")
    out = [f"data.source={source}"]
    if source == "folders":
        if not str(root).strip():
            (work / "training-data").mkdir(exist_ok=True)  # where to put the clips: made for the user to fill
        r = _existing(root or work / "training-data", "training-data folder", "check DATA_ROOT")
        labels = sorted(p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not labels:
            raise MonitorError(f"no label folders in {r}: put one folder of recordings per label there (e.g. "
                               f"{r.name}/frog/*.wav, {r.name}/background/*.wav) or set DATA_ROOT, then run this "
                               "cell again")
        print(f"class folders in {r}: {', '.join(labels)}")
        out.append(f"data.root={_yaml_str(r)}")
    elif source == "annotations":
        a = _existing(annotations, "selection tables", "set ANNOTATIONS to a Raven/Audacity table or a folder of them")
        r = _existing(root, "recordings folder", "set DATA_ROOT to the folder of the annotated recordings")
        print(f"selection tables {a} over the recordings in {r}")
        out += [f"data.annotations={_yaml_str(a)}", f"data.root={_yaml_str(r)}"]
    elif source == "embeddings":
        rep = Path(report).expanduser() if str(report).strip() else report_to_review(work)
        rep = _existing(rep.parent if rep.is_file() else rep, "report folder", "set REPORT to a report folder")
        print(f"stored embeddings and verdicts of {rep}: a new head on its model's backbone (seconds on a CPU)")
        out.append(f"data.out={_yaml_str(rep)}")
    elif source == "manifest":
        m = _existing(manifest, "AST json manifest", 'set MANIFEST to a {"data": [{"wav", "labels"}]} json file')
        c = _existing(label_csv, "label csv", "set LABEL_CSV to its index,mid,display_name csv")
        print(f"AST manifest {m} with labels from {c}")
        out += [f"data.manifest={_yaml_str(m)}", f"data.label_csv={_yaml_str(c)}"]
    else:
        rep = Path(report).expanduser() if str(report).strip() else report_to_review(work)
        if rep.is_dir():
            rep = rep / "report.xlsx"
        rep = _existing(rep, "reviewed report", "review detections in notebook 03 first, or set REPORT")
        if str(root).strip():
            r = _existing(root, "recordings folder", "set DATA_ROOT to the recordings the report was made from")
        else:
            info = rep.parent / "run.json"
            if not info.is_file():
                raise MonitorError(f"{rep.parent} has no run.json to find the recordings; set DATA_ROOT")
            r = _existing(json.loads(info.read_text())["input_dir"], "recordings folder of the report",
                          "set DATA_ROOT to where the recordings are now")
        print(f"reviewed report {rep} (Verified yes/no) over the recordings in {r}")
        out += [f"data.report={_yaml_str(rep)}", f"data.root={_yaml_str(r)}"]
    return out


def has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def training_recipe(recipe: str, data: list[str], work: str | Path, *, cpu_recipe: str = "clips_cpu",
                    epochs: int = 0, extra: str = "", gpu: bool | None = None):
    """The recipe for this machine, with the data overrides, ``EPOCHS`` and ``EXTRA`` applied.

    Without a GPU, a recipe that fine-tunes the AudioSet AST (base384, 1024 frames: hours per epoch on
    a CPU) is swapped for ``cpu_recipe`` (a tiny AST trained from scratch), and the cell says so;
    ``cpu_recipe="same"`` keeps the recipe. The fbank cache lives in ``WORK/fbank-cache``.
    ``extra``: ``section.key=value`` settings separated by ``;``.
    """
    import torch

    gpu = has_gpu() if gpu is None else gpu
    overrides = list(data) + [f"data.cache_dir={_yaml_str(Path(work) / 'fbank-cache')}"]
    if epochs:
        overrides.append(f"optim.epochs={int(epochs)}")
    overrides += [x.strip() for x in str(extra).split(";") if x.strip()]
    if "data.source=embeddings" in data and recipe != "head_from_embeddings":
        print(f"stored embeddings: the recipe head_from_embeddings trains their head (not {recipe})")
        recipe = "head_from_embeddings"
    cfg = load_recipe(recipe, overrides)
    heavy = cfg.data.source != "embeddings" and (cfg.model.init == "audioset" or cfg.model.size.startswith("base"))
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '(none found)'}; recipe {recipe}")
    elif heavy and cpu_recipe and cpu_recipe != "same":
        print(f"No GPU here: fine-tuning the AudioSet AST ({recipe}) would take hours per epoch on this CPU, so this "
              f"run uses the small CPU recipe {cpu_recipe!r} instead (a tiny AST trained from scratch: a quick "
              "first model, much weaker than a fine-tuned AudioSet AST). For the real thing: Runtime > Change "
              "runtime type > GPU, then run the notebook again (or set CPU_RECIPE = \"same\" to fine-tune on the "
              "CPU anyway).")
        recipe = cpu_recipe
        cfg = load_recipe(recipe, overrides)
    else:
        print(f"No GPU: training on the CPU; recipe {recipe}")
    m = cfg.model
    print(f"model: {m.size}{f' depth {m.depth}' if m.depth else ''}, strides {m.fstride}/{m.tstride}, start: {m.init}"
          f"{f' ({m.checkpoint})' if m.init == 'audioset' else ''}; {cfg.segment.window_s:g} s windows, "
          f"{cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, lr {cfg.optim.lr:g}")
    return cfg


def pretrained_checkpoint(cfg) -> Path | None:
    """Download (once, into the cache) the published checkpoint the recipe starts from; None when it
    starts from scratch or from a local file. Same as ``monitor models pull NAME``."""
    m = cfg.model
    name = m.checkpoint or "audioset-10-10"
    if cfg.data.source == "embeddings":
        print(f"nothing to download: the head trains on the stored embeddings of {cfg.data.out}")
        return None
    if m.init != "audioset" or Path(name).expanduser().is_file() or name not in PRETRAINED:
        print("nothing to download: the recipe starts", "from scratch" if m.init == "scratch" else f"from {name}")
        return None
    cached = checkpoint_path(name).is_file()
    path = pull(name)
    print(f"AudioSet checkpoint {name}: {path}" + (" (cached)" if cached else " (downloaded)"))
    return path


def train(cfg, out_dir: str | Path, name: str) -> dict[str, Any]:
    """Train, calibrate and export into ``out_dir``, resuming automatically.

    Run the cell again after a disconnect and it continues the run in ``out_dir`` from its last
    checkpoint; a finished run (its bundle exported) is not trained again. A run folder that holds a
    run of another recipe is refused (choose a new NAME).
    """
    out_dir = Path(out_dir)
    saved = out_dir / "config.yaml"
    if saved.is_file() and saved.read_text(encoding="utf-8") != config_yaml(cfg):
        raise MonitorError(f"{out_dir} holds a run of other settings (see its config.yaml); choose a new NAME, or "
                           "restore the settings to continue that run")
    bundle = out_dir / "bundle" / "bundle.json"
    if bundle.is_file():
        import json

        print(f"{out_dir} already holds a finished run: its bundle is {bundle.parent} (choose a new NAME to train "
              "again)")
        prov = json.loads(bundle.read_text()).get("provenance", {})
        return {"bundle": bundle.parent, "metrics": (prov.get("metrics") or {}).get("summary"), "resumed": False}
    resume = out_dir.is_dir() and any(out_dir.iterdir())
    print(("resuming the run in " if resume else "new run in ") + str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = add_log_file(out_dir / "train.log")  # as `monitor train` keeps it, beside the checkpoints
    try:
        res = _train(cfg, out_dir, name=name, resume=resume)
    finally:
        remove_handler(handler)
    res["resumed"] = resume
    print(f"bundle: {res['bundle']}")
    return res


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


def show_detection(out_dir: str | Path, row: int, pad_s: float = 1.0, clips_dir: str | Path | None = None) -> Clip:
    """Spectrogram (a JPEG, ~40 kB) and a player for detection ``row`` (displayed); returns the clip.

    The player embeds a short compressed copy (:func:`listening_file`, written to ``clips_dir``, default
    ``OUT_DIR/listen``), so a notebook that shows many detections stays small.
    """
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    out_dir = Path(out_dir)
    clip = detection_clip(out_dir, row, pad_s)
    fig, ax = plt.subplots(figsize=(9, 2.6), dpi=80)
    plot_spectrogram(clip, ax=ax)
    ax.set_title(f"row {row}: " + ax.get_title())
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=80, bbox_inches="tight", pil_kwargs={"quality": 80})
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="jpeg"))
    folder = Path(clips_dir) / out_dir.name if clips_dir is not None else out_dir / "listen"
    display(audio_player(listening_file(clip, folder, f"row{row:04d}_{clip.label}")))
    return clip


def record_verdicts(out_dir: str | Path, verdicts: dict[int, str], notes: dict[int, str] | None = None) -> int:
    """Record several rows' verdicts (and notes) in the results store and rebuild the reports; returns how many
    changed."""
    return record_reviews(Path(out_dir), {int(k): v for k, v in verdicts.items()},
                          {int(k): v for k, v in (notes or {}).items()})


def reviewed(out_dir: str | Path):
    """Every verdict kept for this output folder (typed in the workbook or recorded here), one row each."""
    return load_reviews(Path(out_dir))
