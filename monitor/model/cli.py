"""``monitor models list|info|pull|import``: human-readable tables on stdout."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from monitor.config import AUDIOSET_MEAN, AUDIOSET_STD, DEFAULT_THRESHOLD, BandConfig
from monitor.errors import BundleError, MonitorError
from monitor.fileio import sha256_file
from monitor.model import audioset
from monitor.model.ast import patch_grid
from monitor.model.audioset import install
from monitor.model.bundle import list_models, load_bundle, resolve, save_bundle
from monitor.model.checkpoints import (PRETRAINED, checkpoint_path, from_hf_checkpoint, from_official_checkpoint,
                                       load_state_dict_file)
from monitor.model.labels import read_labels, summarise  # read_labels re-exported: ``monitor.model.cli.read_labels``
from monitor.model.screen import describe_screen

log = logging.getLogger(__name__)


def _print_table(rows: list[dict[str, Any]], cols: list[str], clip: tuple[str, ...] = ("labels",),
                 max_width: int = 60) -> None:
    """A plain table; the ``clip`` columns are cut at ``max_width`` characters (paths never are)."""
    def cell(r: dict[str, Any], c: str) -> str:
        s = str(r.get(c, ""))
        return s if len(s) <= max_width or c not in clip else s[:max_width - 3] + "..."

    widths = {c: max([len(c)] + [len(cell(r, c)) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(cell(r, c).ljust(widths[c]) for c in cols).rstrip())


def models_command(args: argparse.Namespace) -> int:
    action = args.models_command
    if action == "list":
        return _list()
    if action == "info":
        return _info(args.name, all_labels=bool(getattr(args, "all_labels", False)))
    if action == "pull":
        return _pull(args.name, args.url)
    if action == "import":
        return _import(args)
    raise BundleError(f"unknown models action {action!r}; use list, info, pull or import")


def _list() -> int:
    rows = list_models()
    for r in rows:
        r["name"] += " (default)" if r.get("default") else ""
        r["cached"] = "yes" if r.get("cached") else "no"
    _print_table(rows, ["name", "kind", "version", "cached", "labels", "path"])
    return 0


SHOWN_LABELS = 10  # `models info` lists this many labels, then "... and N more"


def _print_labels(labels: list[str], thresholds: dict[str, float] | None = None) -> None:
    print()
    rows = [{"index": i, "threshold": "" if thresholds is None else f"{thresholds[x]:g}", "label": x}
            for i, x in enumerate(labels)]
    _print_table(rows, ["index", "label"] + ([] if thresholds is None else ["threshold"]), clip=())


def _thresholds_line(labels: list[str], thr: dict[str, float]) -> str:
    values = {thr[k] for k in labels}
    if len(values) == 1 and len(labels) > 1:
        return f"{values.pop():g} for every label"
    items = [f"{k}={thr[k]:g}" for k in labels]
    more = len(items) - SHOWN_LABELS
    return ", ".join(items[:SHOWN_LABELS]) + (f" ... and {more} more (--labels lists them all)" if more > 0 else "")


def _info(name: str, all_labels: bool = False) -> int:
    if name in PRETRAINED and not Path(name).exists():
        try:
            resolve(name)  # pulled: its bundle is described below
        except BundleError:
            s, p = PRETRAINED[name], checkpoint_path(name)
            labels = audioset.labels()
            print(f"name        {name} (published AudioSet checkpoint, official AST format)")
            print(f"geometry    {s.geometry.describe()}\nquality     mAP {s.map:.4f} on AudioSet eval ({s.note})")
            hint = "" if all_labels else " (--labels lists them all)"
            print(f"labels      {summarise(labels, SHOWN_LABELS)}{hint}")
            where = p if p.is_file() else "(not downloaded)"
            print(f"source      {s.url}\nfile        {where}")
            print(f"bundle      (not made yet: monitor models pull {name})")
            if all_labels:
                _print_labels(labels)
            return 0
    b = load_bundle(name)
    p = b.preprocessing
    more = len(b.labels) > SHOWN_LABELS and not all_labels
    lines = [
        ("name", b.name), ("version", b.version), ("path", b.path), ("sha256", b.sha256),
        ("task", f"{b.task} ({'sigmoid' if b.task == 'multilabel' else 'softmax'})"),
        ("labels", summarise(b.labels, SHOWN_LABELS) + (" (--labels lists them all)" if more else "")),
        ("thresholds", _thresholds_line(b.labels, b.thresholds)),
    ]
    if b.is_ensemble:
        ens = b.ensemble or {}
        lines += [("ensemble", f"{len(b.members)} members, their probabilities averaged; thresholds: "
                               f"{ens.get('thresholds_note') or ens.get('thresholds')}")]
        lines += [(f"member {i + 1}", f"{m.name} {m.version} ({ref['path']}, sha256 {m.sha256[:12]}...)")
                  for i, (m, ref) in enumerate(zip(b.members, ens.get("members", [])))]
        lines += [("geometry", " | ".join(dict.fromkeys(m.architecture.describe() for m in b.members)))]
    else:
        lines += [("geometry", b.architecture.describe()), ("weights", f"{b.weights_file} ({b.weights_dtype})")]
    lines += [
        ("segments", f"{p.segment.window_s:g} s every {p.segment.hop_s:g} s (min {p.segment.min_segment_s:g} s)"),
        ("band", "off" if p.band.low_hz is None and p.band.high_hz is None else
                 f"{p.band.low_hz or 0:g}-{p.band.high_hz or p.resample.sample_rate_hz / 2:g} Hz "
                 f"(order {p.band.order})"),
        ("resample", f"{p.resample.sample_rate_hz} Hz ({p.resample.method})"),
        ("fbank", f"{p.fbank.num_mel_bins} mel, {p.fbank.frame_length_ms:g} ms / {p.fbank.frame_shift_ms:g} ms, "
                  f"{p.fbank.target_frames} frames, wave mean {'removed' if p.fbank.remove_wave_mean else 'kept'}"),
        ("normalise", f"mean {p.fbank.norm_mean:g}, std {p.fbank.norm_std:g}"),
    ]
    if b.screen is not None:
        lines += [("screen", line) for line in describe_screen(b.screen)]
    lines += [(k, v) for k, v in b.provenance.items() if isinstance(v, (str, int, float))]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    if all_labels:
        _print_labels(b.labels, b.thresholds)
    return 0


def _pull(name: str, url: str | None) -> int:
    if name not in PRETRAINED:
        raise MonitorError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    ckpt, b, made = install(name, url=url)
    spec = PRETRAINED[name]
    print(f"{name}: checkpoint {ckpt}")
    print(f"{name}: bundle {b.path} ({'made now' if made else 'up to date'}): {len(b.labels)} AudioSet labels, "
          f"thresholds {_thresholds_line(b.labels, b.thresholds)} (a screening default, not calibrated)")
    print(f"run it with `monitor run INPUT_DIR --out OUT_DIR --model {name}`; "
          f"describe it with `monitor models info {name}`")
    print(f"fine-tune from it with `model: {{init: audioset, checkpoint: {name}, fstride: {spec.fstride}, "
          f"tstride: {spec.tstride}}}` in a training config")
    return 0


def _warn_geometry(sd: dict, fstride: int, tstride: int, input_tdim: int) -> None:
    """Warn when an official checkpoint was trained on another patch grid than the one asked for."""

    pe = sd.get("module.v.pos_embed", sd.get("v.pos_embed"))
    f, t = patch_grid(fstride, tstride, 128, input_tdim)
    if pe is not None and pe.ndim == 3 and pe.shape[1] - 2 != f * t:
        log.warning("the checkpoint has %d patches, strides %d/%d at %d frames give %d: its positional embedding "
                    "is adapted. If it was fine-tuned, pass the --fstride/--tstride/--input-tdim it was trained with",
                    pe.shape[1] - 2, fstride, tstride, input_tdim, f * t)


def _head_rows(src: Path, sd: dict | None) -> int | None:
    """How many outputs a checkpoint's head has (official or Hugging Face), or None if it cannot tell."""
    import json

    if sd is not None:
        for k in ("module.mlp_head.1.weight", "mlp_head.1.weight", "classifier.dense.weight",
                  "audio_spectrogram_transformer.classifier.dense.weight"):
            if k in sd and sd[k].ndim == 2:
                return int(sd[k].shape[0])
        return None
    try:
        cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
        return int(cfg.get("num_labels") or len(cfg.get("id2label") or {})) or None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _import(args: argparse.Namespace) -> int:
    import dataclasses

    src = Path(args.checkpoint)
    if not src.exists():
        raise BundleError(f"checkpoint not found: {src}")
    sd = None if src.is_dir() else load_state_dict_file(src)
    if args.labels is None:
        rows = _head_rows(src, sd)
        if rows != audioset.N_LABELS:
            raise BundleError(f"pass --labels LABELS_FILE: the checkpoint's head has {rows or 'an unknown number of'} "
                              f"outputs, so it is not an AudioSet model ({audioset.N_LABELS}) whose labels ship with "
                              "monitor")
        labels = audioset.labels()
        print(f"labels      the {len(labels)} AudioSet classes shipped with monitor (class_labels_indices.csv of "
              "the official AST; pass --labels to use others)")
    else:
        labels = read_labels(args.labels)
    is_as = audioset.is_audioset(labels)
    fmt = args.format
    if fmt == "auto":
        hf_keys = ("audio_spectrogram_transformer.", "classifier.")
        fmt = "hf" if sd is None or any(k.startswith(hf_keys) for k in sd) else "official"
    if fmt == "hf":
        cfg = None if sd is None else {"max_length": args.input_tdim, "frequency_stride": args.fstride,
                                       "time_stride": args.tstride}
        model = from_hf_checkpoint(src if sd is None else sd, label_dim=len(labels), config=cfg)
    else:
        if sd is None:
            raise BundleError(f"{src} is a folder; an official checkpoint is one .pth file (or use --format hf)")
        _warn_geometry(sd, args.fstride, args.tstride, args.input_tdim)
        model = from_official_checkpoint(sd, label_dim=len(labels), fstride=args.fstride, tstride=args.tstride,
                                         input_fdim=128, input_tdim=args.input_tdim, model_size=args.model_size)
    g = model.geometry
    # The official AST front end (16 kHz, wave mean removed, Kaldi fbank, AudioSet mean/std, no band limit, 10 s
    # windows), with what the user gave on top of it.
    pre = audioset.preprocessing(g.input_tdim)
    fb = dataclasses.replace(pre.fbank, num_mel_bins=g.input_fdim,
                             norm_mean=AUDIOSET_MEAN if args.norm_mean is None else args.norm_mean,
                             norm_std=AUDIOSET_STD if args.norm_std is None else args.norm_std)
    pre = dataclasses.replace(pre, band=BandConfig(low_hz=args.low_hz, high_hz=args.high_hz), fbank=fb)
    official = args.norm_mean is None and args.norm_std is None and args.low_hz is None and args.high_hz is None
    if args.norm_mean is None or args.norm_std is None:
        stats = f"mean {fb.norm_mean:g}, std {fb.norm_std:g}"
        if is_as:
            print(f"normalise   {stats}: AudioSet's, as the official AST AudioSet recipe")
        else:
            print(f"normalise   {stats}: AudioSet's (the official AST default; not given). If the checkpoint was "
                  "fine-tuned with other stats pass --norm-mean/--norm-std (official ESC-50 recipe: -6.6268077 "
                  "5.358466; Speech Commands: -6.845978 5.5654526)")
    if is_as and official:
        print(f"preprocess  {audioset.PREPROCESSING_SOURCE}; 10 s windows")
    threshold = args.threshold
    if threshold is None:
        threshold = audioset.DEFAULT_THRESHOLD if is_as else DEFAULT_THRESHOLD
        print(f"thresholds  {threshold:g} for every label (a default, not calibrated; --threshold X to set another)")
    prov: dict[str, Any] = {"imported_from": src.name, "format": fmt,
                            "source_sha256": sha256_file(src) if src.is_file() else "",
                            "note": "imported with `monitor models import`; thresholds are a single default, "
                                    "calibrate them"}
    if is_as:
        prov["labels_source"] = audioset.LABELS_SOURCE
    if is_as and official:
        prov["preprocessing_source"] = audioset.PREPROCESSING_SOURCE
    b = save_bundle(args.out, model, name=args.name or args.out.name, version=args.bundle_version, labels=labels,
                    task=args.task, preprocessing=pre, thresholds={k: threshold for k in labels}, provenance=prov)
    print(f"bundle {b.name} {b.version} written to {b.path}: {len(labels)} labels, {g.model_size} depth "
          f"{g.depth}, strides {g.fstride}/{g.tstride}, {g.input_tdim} frames ({fmt} format)")
    print(f"check it with `monitor models info {b.path}`; use it with `monitor run INPUT --out OUT --model {b.path}`")
    return 0
