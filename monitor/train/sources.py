"""Data sources -> one labelled-segment table (``monitor.train.table``): folder per class, the official
AST JSON manifest with ``class_labels_indices.csv``, annotation tables (``annotations``) and reviewer
verdicts (``reviews``); ``load_source`` reads the one a recipe names."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable

from monitor.config import ConfigError, SegmentConfig
from monitor.discover import discover
from monitor.errors import MonitorError
from monitor.train.annotations import from_annotations
from monitor.train.reviews import from_report
from monitor.train.table import (DUPLICATE, MIN_CLIP_S, NOT_AUDIO, LeftOut, cap_per_label, clip_windows, group_of,
                                 make_table, probe_or_skip, same_audio)

log = logging.getLogger(__name__)


# --- folder per class --------------------------------------------------------------------------------

def from_folders(root: Path, seg: SegmentConfig, labels: list[str] | None = None, negative_class: str | None = None,
                 exclude: Iterable[str] = (), group_regex: str | None = None, multiclass: bool = False,
                 min_clip_s: float = MIN_CLIP_S, left_out: LeftOut | None = None, every_label: bool = True):
    """``root/<label>/**/*.wav`` -> every file cut into inference segments labelled by its folder.

    ``negative_class``: that folder's segments carry no label (multilabel background); in a
    multiclass task it stays a class of its own. The same audio (identical bytes) in several label
    folders is one recording: one row per window carrying all its folders' labels, in one group.
    Clips shorter than a segment become one padded window (``table.clip_windows``); those shorter
    than ``min_clip_s`` and unreadable ones are counted in ``left_out``. A label folder without one
    usable recording is an error (a label never seen positive cannot be learnt; not for a test folder:
    ``every_label=False``). Returns (table, labels).
    """
    left_out = left_out if left_out is not None else LeftOut()
    root = Path(root)
    if not root.is_dir():
        raise MonitorError(f"data.root {root} is not a folder; point it at data/<label>/ folders")
    skip = set(exclude)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in skip and not d.name.startswith("."))
    if labels is None:
        labels = [f for f in folders if multiclass or f != negative_class]
    missing = [x for x in labels if x not in folders]
    if missing:
        raise MonitorError(f"no folder for label(s) {', '.join(missing)} under {root}")
    use = [f for f in folders if f in labels or f == negative_class]
    tags: dict[Path, set[str]] = {}
    for name in use:
        tag = set() if (name == negative_class and not multiclass) else {name}
        found = discover(root / name)
        for p in sorted(Path(f.path) for f in found.recordings):
            tags.setdefault(p, set()).update(tag)
        for sk in found.skipped:  # not audio monitor decodes (an .m4a, a text file): said, never silently
            if not sk.rel.split("/")[-1].startswith("."):
                left_out.add(root / name / sk.rel, NOT_AUDIO, sk.reason)
    canon = same_audio(sorted(tags))
    merged: dict[Path, set[str]] = {}
    copies: dict[Path, list[Path]] = {}
    for p in sorted(tags):
        merged.setdefault(canon[p], set()).update(tags[p])
        copies.setdefault(canon[p], []).append(p)
    for c, ps in copies.items():  # a second copy in the same label folder adds nothing: counted, not used
        folders = [q.relative_to(root).parts[0] for q in ps]
        for k, q in enumerate(ps):
            if folders[k] in folders[:k]:
                left_out.add(q, DUPLICATE, f"the same audio as {c.relative_to(root).as_posix()}")
    multi = {c: ps for c, ps in copies.items() if len(set(q.relative_to(root).parts[0] for q in ps)) > 1}
    if multi:
        c, ps = next(iter(multi.items()))
        log.warning("%d recordings are in several label folders (e.g. %s); each becomes one row per window "
                    "with all its folders' labels, in one split group", len(multi),
                    " and ".join(p.relative_to(root).as_posix() for p in ps[:3]))
    rows = []
    used: set[str] = set()
    for p in sorted(merged):
        info = probe_or_skip(p, left_out)
        if info is None:
            continue
        rel = p.relative_to(root).as_posix()
        tag = tuple(sorted(merged[p]))
        if multiclass and len(tag) > 1:
            where = " and ".join(q.relative_to(root).as_posix() for q in copies[p])
            raise MonitorError(f"{where} hold the same recording: a multiclass task (loss.kind: ce) needs one label "
                               "per recording; keep one copy, or train a multilabel model (loss.kind: bce)")
        for a, b in clip_windows(p, info, seg, min_clip_s, left_out):
            rows.append(dict(file=str(p), start_s=a, end_s=b, labels=tag, group=group_of(rel, group_regex)))
            used.update(q.relative_to(root).parts[0] for q in copies[p])
    why = f" ({left_out.text(min_clip_s)})" if left_out.rows else ""
    if not rows:
        raise MonitorError(f"no usable audio under {root}/<label>/" + (why or ": no recordings found"))
    empty = [x for x in labels if x not in used]
    if empty and every_label:
        raise MonitorError(f"label folder(s) {', '.join(empty)} under {root} hold no usable recording{why}; a label "
                           "never seen positive cannot be learnt: add recordings, or leave the label out "
                           "(data.labels, or data.exclude for the folder)")
    return make_table(rows), list(labels)  # sorted paths: folder by folder, as found


# --- official AST manifest ---------------------------------------------------------------------------

def read_label_csv(path: Path) -> dict[str, str]:
    """``class_labels_indices.csv`` (index,mid,display_name) -> {mid: display_name}, in index order."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"mid", "display_name"} <= set(rows[0]):
        raise MonitorError(f"{path}: a label CSV needs columns index,mid,display_name")
    rows.sort(key=lambda r: int(r.get("index") or 0))
    return {r["mid"]: r["display_name"] for r in rows}


def from_manifest(manifest: Path, label_csv: Path, seg: SegmentConfig, group_regex: str | None = None,
                  min_clip_s: float = MIN_CLIP_S, left_out: LeftOut | None = None):
    """Official ``{"data": [{"wav": path, "labels": "/m/a,/m/b"}]}``: one segment per clip (its first
    window, as the official loader crops to ``target_length``; clips under ``min_clip_s`` are left out,
    counted in ``left_out``). Returns (table, labels)."""
    manifest = Path(manifest)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MonitorError(f"{manifest} is not an AST manifest ({{\"data\": [{{\"wav\", \"labels\"}}]}})") from None
    mids = read_label_csv(Path(label_csv))
    labels = list(mids.values())
    rows = []
    for item in data:
        wav = Path(item["wav"])
        if not wav.is_absolute():
            wav = (manifest.parent / wav).resolve()
        info = probe_or_skip(wav, left_out)
        if info is None or not clip_windows(wav, info, seg, min_clip_s, left_out):
            continue
        unknown = [m for m in str(item.get("labels", "")).split(",") if m and m not in mids]
        if unknown:
            raise MonitorError(f"{manifest}: label {unknown[0]!r} of {wav.name} is not in {label_csv}")
        lab = tuple(mids[m] for m in str(item.get("labels", "")).split(",") if m)
        end = min(info.duration_s, seg.window_s)
        rows.append(dict(file=str(wav), start_s=0.0, end_s=end, labels=lab, group=group_of(str(item["wav"]), group_regex)))
    if not rows:
        raise MonitorError(f"{manifest}: no readable clips")
    return make_table(rows), labels


# --- dispatch ----------------------------------------------------------------------------------------

def _need(value: str | None, key: str) -> Path:
    if not value:
        raise ConfigError(f"data.{key} is required for this data.source")
    return Path(value)


def load_source(cfg, seg: SegmentConfig | None = None, left_out: LeftOut | None = None, every_label: bool = True):
    """TrainConfig -> (table, labels, fixed_val_table or None), capped by ``data.max_per_label``; recordings
    left out (too short, unreadable) are added to ``left_out``."""
    d = cfg.data
    seg = seg or cfg.segment
    multiclass = cfg.task == "multiclass"
    val = None
    left_out = left_out if left_out is not None else LeftOut()
    if d.source == "folders":
        table, labels = from_folders(_need(d.root, "root"), seg, d.labels, d.negative_class, d.exclude,
                                     d.group_regex, multiclass, d.min_clip_s, left_out, every_label)
    elif d.source == "annotations":
        table, labels = from_annotations(_need(d.annotations, "annotations"), _need(d.root, "root"), seg, d.labels,
                                         d.min_overlap_s, d.min_overlap_frac, d.unannotated_negative, d.group_regex,
                                         d.min_clip_s, left_out)
    elif d.source == "manifest":
        table, labels = from_manifest(_need(d.manifest, "manifest"), _need(d.label_csv, "label_csv"), seg,
                                      d.group_regex, d.min_clip_s, left_out)
        if d.val_manifest:
            val, _ = from_manifest(Path(d.val_manifest), Path(d.label_csv), seg, d.group_regex, d.min_clip_s, left_out)
    elif d.source == "embeddings":  # stored embeddings and verdicts (``train.embedded``; ``--plan`` reads it here)
        from monitor.train.embedded import load_embedded

        emb = load_embedded(cfg)
        return emb.table, emb.labels, None
    else:
        table, labels = from_report(_need(d.report, "report"), Path(d.root) if d.root else None, seg, d.labels,
                                    d.group_regex, left_out)
    if d.labels is not None:
        labels = list(d.labels)
    if d.max_per_label:
        table = cap_per_label(table, d.max_per_label, cfg.split.seed)
    if multiclass:
        bad = [i for i, lab in enumerate(table["labels"]) if len(lab) != 1]
        if bad:
            raise MonitorError(f"loss.kind: ce (multiclass) needs exactly one label per segment; {len(bad)} segments "
                               "have none or several (use bce, or give the background its own class)")
        table["unknown"] = [()] * len(table)  # one class present: every other one is absent
    return table, labels, val


def load_test_folder(cfg, labels: list[str], left_out: LeftOut | None = None):
    """``split.test_folder``: the same source read from another folder laid out like ``data.root``
    (folders: ``<label>/`` sub-folders; annotations: recordings with their tables beside them)."""
    folder = Path(cfg.split.test_folder)
    if not folder.is_dir():
        raise MonitorError(f"split.test_folder {folder} is not a folder")
    if cfg.data.source not in ("folders", "annotations"):
        raise MonitorError("split.test_folder works with data.source folders or annotations; "
                           "use split.test_files or split.test_fraction for this source")
    d = dataclasses.replace(cfg.data, root=str(folder), labels=list(labels), max_per_label=None,
                            annotations=str(folder) if cfg.data.source == "annotations" else cfg.data.annotations)
    test, _, _ = load_source(dataclasses.replace(cfg, data=d), left_out=left_out, every_label=False)
    return test
