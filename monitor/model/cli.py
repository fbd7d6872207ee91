"""``monitor models list|info|pull|import``: human-readable tables on stdout."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

from monitor.errors import BundleError

log = logging.getLogger(__name__)


def read_labels(path: Path) -> list[str]:
    """Labels, in output order, from ``class_labels_indices.csv`` (index,mid,display_name), a CSV with a
    display_name/label/name column (ordered by ``index`` if there is one), or one label per line."""
    if not path.is_file():
        raise BundleError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    header = [h.strip().lower() for h in rows[0]] if rows else []
    col = next((header.index(c) for c in ("display_name", "label", "name") if c in header), None)
    if col is None:
        if path.suffix.lower() == ".csv" and len(header) > 1:
            raise BundleError(f"{path}: CSV needs a display_name or label column (like class_labels_indices.csv)")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        body = rows[1:]
        if "index" in header:
            i = header.index("index")
            try:
                body = sorted(body, key=lambda r: int(r[i]))
            except (ValueError, IndexError):
                raise BundleError(f"{path}: the index column must hold whole numbers") from None
            if [int(r[i]) for r in body] != list(range(len(body))):
                raise BundleError(f"{path}: the index column must run 0..{len(body) - 1} without gaps")
        labels = [r[col].strip() if len(r) > col else "" for r in body]
    if not labels or not all(labels):
        raise BundleError(f"{path}: no labels, or an empty label")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise BundleError(f"{path}: label {dupes[0]!r} appears more than once")
    return labels


def _print_table(rows: list[dict[str, Any]], cols: list[str], max_width: int = 60) -> None:
    def cell(r: dict[str, Any], c: str) -> str:
        s = str(r.get(c, ""))
        return s if len(s) <= max_width else s[:max_width - 3] + "..."

    widths = {c: max([len(c)] + [len(cell(r, c)) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(cell(r, c).ljust(widths[c]) for c in cols).rstrip())


def models_command(args: argparse.Namespace) -> int:
    action = args.models_command
    if action == "list":
        return _list()
    if action == "info":
        return _info(args.name)
    if action == "pull":
        return _pull(args.name, args.url)
    if action == "import":
        return _import(args)
    raise BundleError(f"unknown models action {action!r}; use list, info, pull or import")


def _list() -> int:
    from monitor.model.bundle import list_models

    rows = list_models()
    for r in rows:
        r["name"] += " (default)" if r.get("default") else ""
    _print_table(rows, ["name", "kind", "version", "labels", "path"])
    return 0


def _info(name: str) -> int:
    from monitor.model.bundle import load_bundle
    from monitor.model.checkpoints import PRETRAINED, checkpoint_path

    if name in PRETRAINED and not Path(name).exists():
        s, p = PRETRAINED[name], checkpoint_path(name)
        print(f"name        {name} (published AudioSet checkpoint, official AST format)")
        print(f"geometry    {s.model_size}, strides {s.fstride}/{s.tstride}, {s.input_tdim} frames x 128 mel, "
              f"{s.label_dim} labels\nquality     mAP {s.map:.4f} on AudioSet eval ({s.note})")
        where = p if p.is_file() else f"(not downloaded: monitor models pull {name})"
        print(f"source      {s.url}\nfile        {where}")
        return 0
    b = load_bundle(name)
    a, p = b.architecture, b.preprocessing
    lines = [
        ("name", b.name), ("version", b.version), ("path", b.path), ("sha256", b.sha256),
        ("task", f"{b.task} ({'sigmoid' if b.task == 'multilabel' else 'softmax'})"),
        ("labels", f"{len(b.labels)}: {', '.join(b.labels)}"),
        ("thresholds", ", ".join(f"{k}={v:g}" for k, v in b.thresholds.items())),
        ("geometry", f"{a['model_size']}, depth {a['depth']}, strides {a['fstride']}/{a['tstride']}, "
                     f"input {a['input_tdim']} frames x {a['input_fdim']} mel"),
        ("weights", f"{b.weights_file} ({b.weights_dtype})"),
        ("segments", f"{p.segment.window_s:g} s every {p.segment.hop_s:g} s (min {p.segment.min_segment_s:g} s)"),
        ("band", "off" if p.band.low_hz is None and p.band.high_hz is None else
                 f"{p.band.low_hz or 0:g}-{p.band.high_hz or p.resample.sample_rate_hz / 2:g} Hz "
                 f"(order {p.band.order})"),
        ("resample", f"{p.resample.sample_rate_hz} Hz ({p.resample.method})"),
        ("normalise", f"mean {p.fbank.norm_mean:g}, std {p.fbank.norm_std:g}"),
    ]
    lines += [(k, v) for k, v in b.provenance.items() if isinstance(v, (str, int, float))]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0


def _pull(name: str, url: str | None) -> int:
    from monitor.model.checkpoints import PRETRAINED, pull

    path = pull(name, url=url)
    spec = PRETRAINED[name]
    print(f"{name}: {path}")
    print(f"fine-tune from it with `model: {{init: audioset, checkpoint: {path}, fstride: {spec.fstride}, "
          f"tstride: {spec.tstride}}}` in a training config")
    return 0


def _warn_geometry(sd: dict, fstride: int, tstride: int, input_tdim: int) -> None:
    """Warn when an official checkpoint was trained on another patch grid than the one asked for."""
    from monitor.model.ast import patch_grid

    pe = sd.get("module.v.pos_embed", sd.get("v.pos_embed"))
    f, t = patch_grid(fstride, tstride, 128, input_tdim)
    if pe is not None and pe.ndim == 3 and pe.shape[1] - 2 != f * t:
        log.warning("the checkpoint has %d patches, strides %d/%d at %d frames give %d: its positional embedding "
                    "is adapted. If it was fine-tuned, pass the --fstride/--tstride/--input-tdim it was trained with",
                    pe.shape[1] - 2, fstride, tstride, input_tdim, f * t)


def _import(args: argparse.Namespace) -> int:
    from monitor.config import BandConfig, FbankConfig, Preprocess
    from monitor.model.bundle import save_bundle
    from monitor.model.checkpoints import (from_hf_checkpoint, from_official_checkpoint, load_state_dict_file,
                                           sha256_file)

    labels = read_labels(args.labels)
    src = Path(args.checkpoint)
    if not src.exists():
        raise BundleError(f"checkpoint not found: {src}")
    sd = None if src.is_dir() else load_state_dict_file(src)
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
    c = model.config
    fb: dict[str, Any] = {"target_frames": c["input_tdim"], "num_mel_bins": c["input_fdim"]}
    if args.norm_mean is not None:
        fb["norm_mean"] = args.norm_mean
    if args.norm_std is not None:
        fb["norm_std"] = args.norm_std
    pre = Preprocess(band=BandConfig(low_hz=args.low_hz, high_hz=args.high_hz), fbank=FbankConfig(**fb))
    prov = {"imported_from": src.name, "format": fmt,
            "source_sha256": sha256_file(src) if src.is_file() else "",
            "note": "imported with `monitor models import`; thresholds are a single default, calibrate them"}
    b = save_bundle(args.out, model, name=args.name or args.out.name, version=args.bundle_version, labels=labels,
                    task=args.task, preprocessing=pre, thresholds={k: args.threshold for k in labels},
                    provenance=prov)
    print(f"bundle {b.name} {b.version} written to {b.path}: {len(labels)} labels, {c['model_size']} depth "
          f"{c['depth']}, strides {c['fstride']}/{c['tstride']}, {c['input_tdim']} frames ({fmt} format)")
    print(f"check it with `monitor models info {b.path}`; use it with `monitor run INPUT --out OUT --model {b.path}`")
    return 0
