"""The AudioSet models: their 527 labels, the official preprocessing, default thresholds, and bundles
made from the published checkpoints (``monitor models pull``).

The label list is the official AST repository's ``egs/audioset/data/class_labels_indices.csv``, shipped
unchanged in ``monitor/model/data/`` (origin and licences in ``monitor/model/data/ATTRIBUTION.md``). The
preprocessing is the official AST AudioSet recipe (``egs/audioset/run.sh``, ``src/run.py``,
``src/dataloader.py``): 16 kHz audio with its mean removed, a 128-bin Kaldi fbank (25 ms / 10 ms, Hanning,
HTK mel), padded or cut to 1024 frames (10.24 s), normalised as ``(x + 4.2677393) / (2 * 4.5689974)``; no
band limit. Recordings are cut into 10 s windows every 10 s, the length of an AudioSet clip.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from monitor.config import (AUDIOSET_MEAN, AUDIOSET_STD, BandConfig, FbankConfig, Preprocess, ResampleConfig,
                            SegmentConfig)
from monitor.errors import BundleError, MonitorError
from monitor.fileio import sha256_file
from monitor.model.bundle import load_bundle, save_bundle
from monitor.model.checkpoints import PRETRAINED, from_official_checkpoint, load_state_dict_file, pull
from monitor.model.geometry import expected_shapes
from monitor.model.labels import read_labels
from monitor.resources import monitor_cache

log = logging.getLogger(__name__)

LABELS_FILE = Path(__file__).resolve().parent / "data" / "audioset_class_labels_indices.csv"
N_LABELS = 527
# One threshold for every label. The published models come with no per-class thresholds (the official
# repository's evaluation statistics keep precision/recall points but not the scores they were taken at),
# so this is a screening setting, not a calibrated one: the models were trained with mixup (rate 0.5,
# lambda ~ Beta(10, 10)), so a sound that shares its clip with another was trained towards a target of
# lambda or 1 - lambda; both are >= 0.3 in 93.5 % of mixtures, while at 0.5 half of them fall below.
# Screening favours recall: a reviewer confirms detections. Calibrate on reviewed results, or set
# thresholds per label with --threshold LABEL=X.
DEFAULT_THRESHOLD = 0.3
PREPROCESSING_SOURCE = ("official AST AudioSet recipe (github.com/YuanGongND/ast egs/audioset/run.sh, "
                        "src/dataloader.py): 16 kHz, wave mean removed, 128-bin Kaldi fbank, 1024 frames, "
                        f"mean {AUDIOSET_MEAN}, std {AUDIOSET_STD}, no band limit")
LABELS_SOURCE = ("class_labels_indices.csv of github.com/YuanGongND/ast (egs/audioset/data, BSD-3-Clause "
                 "repository): Google's AudioSet class list; class names from the AudioSet ontology, "
                 "CC BY-SA 4.0 (Google)")


def labels() -> list[str]:
    """The 527 AudioSet display names, in the models' output order."""
    got = read_labels(LABELS_FILE)
    if len(got) != N_LABELS:  # pragma: no cover - a damaged installation
        raise BundleError(f"{LABELS_FILE} holds {len(got)} labels, not {N_LABELS}; reinstall monitor")
    return got


def is_audioset(label_list: Sequence[str]) -> bool:
    """Whether ``label_list`` is the AudioSet label set in its official order."""
    return len(label_list) == N_LABELS and list(label_list) == labels()


def preprocessing(input_tdim: int = 1024) -> Preprocess:
    """The official AST AudioSet front end, written out (not the product defaults, which may change)."""
    return Preprocess(
        segment=SegmentConfig(window_s=10.0, hop_s=10.0, min_segment_s=1.0),
        band=BandConfig(low_hz=None, high_hz=None),
        resample=ResampleConfig(sample_rate_hz=16000, method="poly"),
        fbank=FbankConfig(num_mel_bins=128, frame_length_ms=25.0, frame_shift_ms=10.0, remove_wave_mean=True,
                          target_frames=input_tdim, norm_mean=AUDIOSET_MEAN, norm_std=AUDIOSET_STD),
    )


def bundle_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``install(name)`` puts the bundle of a published checkpoint: ``<cache>/models/<name>``."""
    return Path(cache_dir or monitor_cache()) / "models" / name


def _recorded_digest(checkpoint: Path) -> str:
    f = checkpoint.with_name(checkpoint.name + ".sha256")
    text = f.read_text().split() if f.is_file() else []
    return text[0] if text else sha256_file(checkpoint)


def _existing(out: Path, name: str, digest: str):
    """The bundle already at ``out`` if it was made from this very checkpoint; None if it must be (re)made."""
    meta = out / "bundle.json"
    if not meta.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise MonitorError(f"{out} exists and is not a model bundle; move it away and pull again")
        return None
    try:
        prov = json.loads(meta.read_text(encoding="utf-8")).get("provenance", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        prov = {}
    if not isinstance(prov, dict) or prov.get("pretrained") != name:
        raise MonitorError(f"{out} holds a bundle that was not made by `monitor models pull {name}`; "
                           "move it away (it is not replaced) and pull again")
    if prov.get("source_sha256") != digest:
        log.info("%s was made from another download of %s; making it again", out, name)
        return None
    try:
        return load_bundle(out)
    except BundleError as exc:
        log.warning("the bundle in %s is damaged (%s); making it again", out, exc)
        return None


def make_bundle(name: str, checkpoint: str | Path, out: str | Path, *, source: str | None = None,
                source_sha256: str | None = None):
    """Turn the published checkpoint ``name`` (a file at ``checkpoint``) into a runnable bundle at ``out``.

    Its labels, preprocessing, thresholds and provenance are the ones this module describes; the
    weights are the checkpoint's, unchanged (fp32). Returns the loaded ``Bundle``.
    """
    spec = PRETRAINED[name]
    g = spec.geometry
    checkpoint = Path(checkpoint)
    names = labels()
    sd = load_state_dict_file(checkpoint)
    shapes = {k.removeprefix("module."): tuple(v.shape) for k, v in sd.items()}
    for k, shape in expected_shapes(g).items():  # every tensor as published: nothing adapted or re-initialised
        if shapes.get(k) != shape:
            raise BundleError(f"{checkpoint.name}: tensor {k} is {list(shapes[k]) if k in shapes else 'missing'}, "
                              f"{name} has {list(shape)} ({g.describe()})")
    model = from_official_checkpoint(sd, label_dim=g.label_dim, fstride=g.fstride, tstride=g.tstride,
                                     input_fdim=g.input_fdim, input_tdim=g.input_tdim, model_size=g.model_size,
                                     depth=g.depth)
    del sd
    prov: dict[str, Any] = {
        "pretrained": name,
        "checkpoint": spec.filename,
        "source": source or spec.url,
        "source_sha256": source_sha256 or sha256_file(checkpoint),
        "quality": f"mAP {spec.map:.4f} on the AudioSet evaluation set (official AST README; {spec.note})",
        "paper": "Gong, Chung, Glass: AST: Audio Spectrogram Transformer, Interspeech 2021",
        "labels_source": LABELS_SOURCE,
        "preprocessing_source": PREPROCESSING_SOURCE,
        "thresholds_rule": f"{DEFAULT_THRESHOLD:g} for every label: a screening default, not calibrated "
                           "(no per-class thresholds are published); calibrate on reviewed results",
        "note": "made by `monitor models pull`; AudioSet classes are general sound classes, not species",
    }
    return save_bundle(out, model, name=name, version=Path(spec.filename).stem, labels=names, task="multilabel",
                       preprocessing=preprocessing(g.input_tdim), thresholds={k: DEFAULT_THRESHOLD for k in names},
                       provenance=prov)


def install(name: str, *, url: str | None = None, cache_dir: str | Path | None = None, sha256: str | None = None,
            progress: bool = True):
    """``monitor models pull NAME``: the checkpoint into ``<cache>/checkpoints`` (resumable, checksummed),
    then its bundle into ``<cache>/models/NAME``, made once per download. Returns (checkpoint, Bundle, made).
    """
    ckpt = pull(name, url=url, cache_dir=cache_dir, sha256=sha256, progress=progress)
    digest = _recorded_digest(ckpt)
    out = bundle_dir(name, cache_dir)
    have = _existing(out, name, digest)
    if have is not None:
        return ckpt, have, False
    log.info("making the %s bundle in %s", name, out)
    try:
        bundle = make_bundle(name, ckpt, out, source=url, source_sha256=digest)
    except BundleError as exc:  # the download is not this checkpoint: drop it so the next pull fetches again
        for p in (ckpt, ckpt.with_name(ckpt.name + ".sha256")):
            p.unlink(missing_ok=True)
        raise MonitorError(f"the file downloaded for {name} from {url or 'its published address'} is not the "
                           f"published AST checkpoint ({exc}); removed it. Check the URL and pull again") from None
    return ckpt, bundle, True
