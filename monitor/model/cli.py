"""``monitor models list|info|pull|import``."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from monitor.errors import BundleError

log = logging.getLogger(__name__)


def read_labels(path: Path) -> list[str]:
    """Labels from ``class_labels_indices.csv`` (index,mid,display_name), a CSV with a label column,
    or a plain file with one label per line."""
    if not path.is_file():
        raise BundleError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(text.splitlines()))
    if rows and len(rows[0]) > 1:
        header = [h.strip().lower() for h in rows[0]]
        for col in ("display_name", "label", "name"):
            if col in header:
                i = header.index(col)
                return [r[i].strip() for r in rows[1:] if len(r) > i and r[i].strip()]
        raise BundleError(f"{path}: CSV needs a display_name or label column")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _print_table(rows: list[dict], cols: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def models_command(args) -> int:
    from monitor.model import bundle as B

    if args.models_command == "list":
        rows = B.list_models()
        for r in rows:
            r["name"] = r["name"] + (" (default)" if r.get("default") else "")
        _print_table(rows, ["name", "kind", "version", "labels", "path"])
        return 0
    if args.models_command == "info":
        b = B.load_bundle(args.name)
        a = b.architecture
        print(f"name        {b.name}\nversion     {b.version}\npath        {b.path}\nsha256      {b.sha256}")
        print(f"task        {b.task}\nlabels      {', '.join(b.labels)}")
        print("thresholds  " + ", ".join(f"{k}={v:g}" for k, v in b.thresholds.items()))
        print(f"geometry    {a['model_size']}, depth {a['depth']}, strides {a['fstride']}/{a['tstride']}, "
              f"input {a['input_tdim']} frames x {a['input_fdim']} mel")
        p = b.preprocessing
        print(f"segments    {p.segment.window_s:g} s every {p.segment.hop_s:g} s (min {p.segment.min_segment_s:g} s)")
        print(f"band        {p.band.low_hz or 0:g}-{p.band.high_hz or p.resample.sample_rate_hz / 2:g} Hz "
              f"(order {p.band.order}); resample {p.resample.sample_rate_hz} Hz ({p.resample.method})")
        print(f"normalise   mean {p.fbank.norm_mean:g}, std {p.fbank.norm_std:g}")
        for k, v in b.provenance.items():
            if isinstance(v, (str, int, float)):
                print(f"{k:<11} {v}")
        return 0
    if args.models_command == "pull":
        from monitor.model.checkpoints import PRETRAINED, pull

        path = pull(args.name, url=args.url)
        spec = PRETRAINED[args.name]
        print(f"{args.name}: {path}")
        print(f"fine-tune from it with `init: {{source: official, path: {path}}}` in a training config "
              f"(strides {spec.fstride}/{spec.tstride}, {spec.model_size})")
        return 0
    if args.models_command == "import":
        return _import(args)
    raise BundleError(f"unknown models action {args.models_command!r}")


def _import(args) -> int:
    from monitor.config import BandConfig, FbankConfig, Preprocess
    from monitor.model.bundle import save_bundle
    from monitor.model.checkpoints import from_hf_checkpoint, from_official_checkpoint, load_state_dict_file

    labels = read_labels(args.labels)
    src = Path(args.checkpoint)
    fmt = args.format
    if fmt == "auto":
        fmt = "hf" if src.is_dir() else "official"
        if fmt == "official":
            keys = load_state_dict_file(src).keys()
            if any(k.startswith(("audio_spectrogram_transformer.", "classifier.")) for k in keys):
                fmt = "hf"
    if fmt == "hf":
        model = from_hf_checkpoint(src if src.is_dir() else load_state_dict_file(src), label_dim=len(labels),
                                   config=None if src.is_dir() else {"max_length": args.input_tdim,
                                                                     "frequency_stride": args.fstride,
                                                                     "time_stride": args.tstride})
    else:
        model = from_official_checkpoint(src, label_dim=len(labels), fstride=args.fstride, tstride=args.tstride,
                                         input_fdim=128, input_tdim=args.input_tdim, model_size=args.model_size)
    fb = {"target_frames": model.config["input_tdim"]}
    if args.norm_mean is not None:
        fb["norm_mean"] = args.norm_mean
    if args.norm_std is not None:
        fb["norm_std"] = args.norm_std
    pre = Preprocess(band=BandConfig(low_hz=args.low_hz, high_hz=args.high_hz), fbank=FbankConfig(**fb))
    b = save_bundle(args.out, model, name=args.name or args.out.name, version=args.bundle_version, labels=labels,
                    task=args.task, preprocessing=pre, thresholds={k: args.threshold for k in labels},
                    provenance={"imported_from": str(src), "format": fmt})
    print(f"bundle {b.name} {b.version} written to {b.path} ({len(labels)} labels)")
    return 0
