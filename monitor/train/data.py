"""Data sources -> one labelled-segment table: ``file, start_s, end_s, labels, group, unknown``.

``file`` is an absolute path; ``labels`` the tuple of labels present (positive); ``unknown`` the
tuple of labels nobody judged for that segment (masked out of loss and metrics); every other label
is a negative. ``group`` is the unit that splits keep together: the recording (the same audio in
several label folders is one recording), or what ``data.group_regex`` extracts from its relative
path (device, site, day). Every source cuts audio into the same ``segment`` windows as
``monitor run``, so a training segment is exactly an inference segment.

Sources: folder per class; Raven / Audacity / CSV annotation tables over long recordings; the
official AST JSON manifest with ``class_labels_indices.csv``; reviewer verdicts (the Verified column
of a reviewed ``report.xlsx``, or the results store of a ``monitor run`` output folder), per label.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from monitor.config import ConfigError, SegmentConfig
from monitor.errors import MonitorError

log = logging.getLogger(__name__)

COLUMNS = ["file", "start_s", "end_s", "labels", "group", "unknown"]


@dataclass(frozen=True)
class Annotation:
    """One labelled interval of a recording (seconds from the file start)."""

    start_s: float
    end_s: float
    label: str


def _audio_ext() -> frozenset[str]:
    from monitor.discover import AUDIO_EXTENSIONS

    return AUDIO_EXTENSIONS


def _audio_files(folder: Path) -> list[Path]:
    ext = _audio_ext()
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ext and not p.name.startswith("."))


def make_table(rows: Iterable[dict[str, Any]]):
    """A pandas DataFrame with the table columns (``labels`` and ``unknown`` as tuples; ``unknown``
    defaults to none: every label not present is a negative)."""
    import pandas as pd

    rows = [r if "unknown" in r else {**r, "unknown": ()} for r in rows]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["labels"] = [tuple(x) for x in df["labels"]]
    df["unknown"] = [tuple(x) for x in df["unknown"]]
    return df.reset_index(drop=True)


def target_matrix(table, labels: list[str]):
    """(rows, labels) float32 targets: 1 present, 0 absent, NaN unknown (masked from loss and metrics)."""
    import numpy as np

    col = {n: j for j, n in enumerate(labels)}
    y = np.zeros((len(table), len(labels)), dtype=np.float32)
    unknown = table["unknown"] if "unknown" in table else [()] * len(table)
    for i, (lab, unk) in enumerate(zip(table["labels"], unknown)):
        for x in unk:
            if x in col:
                y[i, col[x]] = np.nan
        for x in lab:
            if x in col:
                y[i, col[x]] = 1.0
    return y


def group_of(rel: str, group_regex: str | None) -> str:
    """The split group of a file: the relative path, or the first match group of ``group_regex`` on it."""
    if not group_regex:
        return rel
    m = re.search(group_regex, rel)
    if not m:
        return rel
    return m.group(1) if m.groups() else m.group(0)


def windows(duration_s: float, sample_rate_hz: int, n_frames: int, seg: SegmentConfig,
            offset_s: float = 0.0) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of the inference segments of a region (``plan_segments``, exact in frames)."""
    from monitor.audio import plan_segments

    base = int(round(offset_s * sample_rate_hz))
    return [((base + a) / sample_rate_hz, (base + b) / sample_rate_hz)
            for _, a, b in plan_segments(n_frames, sample_rate_hz, seg)]


def _probe(path: Path):
    from monitor.audio import AudioError, probe

    try:
        return probe(path)
    except AudioError as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


# --- folder per class --------------------------------------------------------------------------------

def same_audio(paths: list[Path]) -> dict[Path, Path]:
    """Map every path to the first (sorted) path holding the very same bytes. Only files that share
    a size with another one are hashed, so this costs little."""
    by_size: dict[int, list[Path]] = {}
    for p in paths:
        try:
            by_size.setdefault(os.stat(p).st_size, []).append(p)
        except OSError:
            continue
    canon = {p: p for p in paths}
    for group in by_size.values():
        if len(group) < 2:
            continue
        by_hash: dict[str, list[Path]] = {}
        for p in group:
            h = hashlib.sha1()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            by_hash.setdefault(h.hexdigest(), []).append(p)
        for same in by_hash.values():
            first = min(same)
            for p in same:
                canon[p] = first
    return canon


def from_folders(root: Path, seg: SegmentConfig, labels: list[str] | None = None, negative_class: str | None = None,
                 exclude: Iterable[str] = (), group_regex: str | None = None, multiclass: bool = False):
    """``root/<label>/**/*.wav`` -> every file cut into inference segments labelled by its folder.

    ``negative_class``: that folder's segments carry no label (multilabel background); in a
    multiclass task it stays a class of its own. The same audio (identical bytes) in several label
    folders is one recording: one row per window carrying all its folders' labels, in one group.
    Returns (table, labels).
    """
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
        for p in _audio_files(root / name):
            tags.setdefault(p, set()).update(tag)
    canon = same_audio(sorted(tags))
    merged: dict[Path, set[str]] = {}
    copies: dict[Path, list[Path]] = {}
    for p in sorted(tags):
        merged.setdefault(canon[p], set()).update(tags[p])
        copies.setdefault(canon[p], []).append(p)
    multi = {c: ps for c, ps in copies.items() if len(ps) > 1}
    if multi:
        c, ps = next(iter(multi.items()))
        log.warning("%d recordings are in several label folders (e.g. %s); each becomes one row per window "
                    "with all its folders' labels, in one split group", len(multi),
                    " and ".join(p.relative_to(root).as_posix() for p in ps[:3]))
    rows = []
    for p in sorted(merged):
        info = _probe(p)
        if info is None:
            continue
        rel = p.relative_to(root).as_posix()
        tag = tuple(sorted(merged[p]))
        if multiclass and len(tag) > 1:
            where = " and ".join(q.relative_to(root).as_posix() for q in copies[p])
            raise MonitorError(f"{where} hold the same recording: a multiclass task (loss.kind: ce) needs one label "
                               "per recording; keep one copy, or train a multilabel model (loss.kind: bce)")
        for a, b in windows(info.duration_s, info.sample_rate_hz, info.frames, seg):
            rows.append(dict(file=str(p), start_s=a, end_s=b, labels=tag, group=group_of(rel, group_regex)))
    if not rows:
        raise MonitorError(f"no readable audio found under {root}/<label>/")
    return make_table(rows), list(labels)  # sorted paths: folder by folder, as found


# --- annotation tables -------------------------------------------------------------------------------

_RAVEN_LABEL_COLS = ("species", "label", "annotation", "class", "sound type", "common name", "code")


def read_raven(path: Path) -> tuple[list[Annotation], str | None]:
    """A Raven selection table (tab-separated, header row). Returns (annotations, recording named inside)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return [], None
    cols = {c.strip().lower(): c for c in rows[0].keys() if c}
    try:
        b, e = cols["begin time (s)"], cols["end time (s)"]
    except KeyError:
        raise MonitorError(f"{path}: not a Raven selection table (no 'Begin Time (s)' / 'End Time (s)' columns)") from None
    lab = next((cols[c] for c in _RAVEN_LABEL_COLS if c in cols), None)
    if lab is None:
        raise MonitorError(f"{path}: no label column (one of {', '.join(_RAVEN_LABEL_COLS)})")
    view = cols.get("view")
    ann, rec = [], None
    for r in rows:
        if view and r.get(view) and "spectrogram" not in r[view].lower():
            continue  # Raven writes a Waveform and a Spectrogram row per selection
        ann.append(Annotation(float(r[b]), float(r[e]), r[lab].strip()))
        for key in ("begin file", "begin path"):
            if key in cols and r.get(cols[key]):
                rec = Path(r[cols[key]].replace("\\", "/")).name
    return ann, rec


def read_audacity(path: Path) -> list[Annotation]:
    """An Audacity label file: ``start<TAB>end<TAB>label`` lines (``\\`` lines hold frequencies)."""
    ann = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip() or line.startswith("\\"):
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise MonitorError(f"{path}: not an Audacity label file (line {line!r})")
        ann.append(Annotation(float(parts[0]), float(parts[1]), parts[2].strip()))
    return ann


def read_csv_annotations(path: Path) -> dict[str, list[Annotation]]:
    """CSV ``file,start_s,end_s,label`` -> {file: annotations}."""
    out: dict[str, list[Annotation]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "start_s", "end_s", "label"}
        if not need <= set(reader.fieldnames or []):
            raise MonitorError(f"{path}: an annotation CSV needs columns file,start_s,end_s,label")
        for r in reader:
            out.setdefault(r["file"], []).append(Annotation(float(r["start_s"]), float(r["end_s"]), r["label"].strip()))
    return out


def _kind(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    head = path.read_text(encoding="utf-8-sig", errors="replace").split("\n", 1)[0]
    return "raven" if "Begin Time (s)" in head else "audacity"


def _find_audio(root: Path, stem_or_name: str, index: dict[str, list[Path]]) -> Path | None:
    cand = root / stem_or_name
    if cand.is_file():
        return cand
    hits = index.get(stem_or_name) or index.get(Path(stem_or_name).stem)
    if hits and len(hits) > 1:
        log.warning("%s matches several recordings; using %s", stem_or_name, hits[0])
    return hits[0] if hits else None


def collect_annotations(annotations: Path, audio_root: Path) -> dict[Path, list[Annotation]]:
    """Read a table or a folder of tables; returns {recording path: annotations}."""
    annotations = Path(annotations)
    tables = sorted(p for p in annotations.rglob("*") if p.suffix.lower() in (".txt", ".csv")) \
        if annotations.is_dir() else [annotations]
    if not tables:
        raise MonitorError(f"no annotation tables (.txt, .csv) found at {annotations}")
    index: dict[str, list[Path]] = {}
    for p in _audio_files(audio_root):
        index.setdefault(p.name, []).append(p)
        index.setdefault(p.stem, []).append(p)
    out: dict[Path, list[Annotation]] = {}
    for t in tables:
        kind = _kind(t)
        if kind == "csv":
            pairs = list(read_csv_annotations(t).items())
        elif kind == "raven":
            ann, rec = read_raven(t)
            pairs = [(rec or t.name.split(".")[0], ann)]
        else:
            pairs = [(t.name.split(".")[0], read_audacity(t))]
        for name, ann in pairs:
            audio = _find_audio(audio_root, name, index)
            if audio is None:
                log.warning("%s: no recording %r under %s; its annotations are skipped", t.name, name, audio_root)
                continue
            out.setdefault(audio, []).extend(ann)
    return out


def label_windows(wins: list[tuple[float, float]], ann: list[Annotation], min_overlap_s: float,
                  min_overlap_frac: float, unannotated_negative: bool) -> list[tuple[float, float, tuple[str, ...]]]:
    """Labels per window from overlap. A label is positive when it overlaps the window by
    ``min_overlap_s`` or by ``min_overlap_frac`` of the annotation; a window touched by a label below
    that is ambiguous and dropped; untouched windows are negatives if ``unannotated_negative``."""
    out = []
    for a, b in wins:
        pos, ambiguous = set(), False
        for an in ann:
            ov = min(b, an.end_s) - max(a, an.start_s)
            if ov <= 0:
                continue
            dur = max(an.end_s - an.start_s, 1e-9)
            if ov >= min_overlap_s - 1e-9 or ov >= min_overlap_frac * dur - 1e-9:
                pos.add(an.label)
            else:
                ambiguous = True
        if ambiguous and not pos:
            continue
        if ambiguous:
            # some label is only grazed: keep the window only if every grazing label is also positive
            grazing = {an.label for an in ann if 0 < min(b, an.end_s) - max(a, an.start_s)}
            if not grazing <= pos:
                continue
        if not pos and not unannotated_negative:
            continue
        out.append((a, b, tuple(sorted(pos))))
    return out


def from_annotations(annotations: Path, audio_root: Path, seg: SegmentConfig, labels: list[str] | None = None,
                     min_overlap_s: float = 0.5, min_overlap_frac: float = 0.5, unannotated_negative: bool = True,
                     group_regex: str | None = None):
    """Annotated long recordings cut into ``seg`` windows labelled by overlap. Returns (table, labels)."""
    audio_root = Path(audio_root)
    by_rec = collect_annotations(Path(annotations), audio_root)
    found = sorted({a.label for anns in by_rec.values() for a in anns})
    labels = list(labels) if labels is not None else found
    rows = []
    for path in sorted(by_rec):
        info = _probe(path)
        if info is None:
            continue
        ann = [a for a in by_rec[path] if a.label in labels]
        wins = windows(info.duration_s, info.sample_rate_hz, info.frames, seg)
        rel = path.relative_to(audio_root).as_posix() if path.is_relative_to(audio_root) else path.name
        for a, b, lab in label_windows(wins, ann, min_overlap_s, min_overlap_frac, unannotated_negative):
            rows.append(dict(file=str(path), start_s=a, end_s=b, labels=lab, group=group_of(rel, group_regex)))
    if not rows:
        raise MonitorError(f"the annotation tables at {annotations} gave no segments (labels {labels})")
    return make_table(rows), labels


# --- official AST manifest ---------------------------------------------------------------------------

def read_label_csv(path: Path) -> dict[str, str]:
    """``class_labels_indices.csv`` (index,mid,display_name) -> {mid: display_name}, in index order."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"mid", "display_name"} <= set(rows[0]):
        raise MonitorError(f"{path}: a label CSV needs columns index,mid,display_name")
    rows.sort(key=lambda r: int(r.get("index") or 0))
    return {r["mid"]: r["display_name"] for r in rows}


def from_manifest(manifest: Path, label_csv: Path, seg: SegmentConfig, group_regex: str | None = None):
    """Official ``{"data": [{"wav": path, "labels": "/m/a,/m/b"}]}``: one segment per clip (its first
    window, as the official loader crops to ``target_length``). Returns (table, labels)."""
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
        info = _probe(wav)
        if info is None:
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


# --- reviewed report.xlsx ----------------------------------------------------------------------------

_REPORT_COLS = {
    "file": ("file", "recording", "path", "file name"),
    "label": ("label", "species", "class"),
    "start": ("start (s)", "start_s", "start", "begin (s)", "begin time (s)"),
    "end": ("end (s)", "end_s", "end", "end time (s)"),
    "verified": ("verified", "verified?", "review", "reviewed"),
}


def read_report(path: Path, sheet: str = "Detections") -> list[dict[str, Any]]:
    """Rows of a reviewed workbook: {file, label, start_s, end_s, verified} with verified yes/no/unsure/''.

    The header is the first row (of the first 20) holding a 'Verified' cell; columns are matched
    case-insensitively by the names in ``_REPORT_COLS``.
    """
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise MonitorError(f"cannot read {path} as a workbook ({type(exc).__name__})") from None
    names = {n.lower(): n for n in wb.sheetnames}
    if sheet.lower() not in names:
        raise MonitorError(f"{path} has no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})")
    rows = list(wb[names[sheet.lower()]].iter_rows(values_only=True))
    wb.close()
    for h, header in enumerate(rows[:20]):
        cells = [str(c).strip().lower() if c is not None else "" for c in header]
        if any(c in _REPORT_COLS["verified"] for c in cells):
            break
    else:
        raise MonitorError(f"{path}: sheet {sheet!r} has no 'Verified' column; review the detections first")
    col = {}
    for key, options in _REPORT_COLS.items():
        idx = next((cells.index(o) for o in options if o in cells), None)
        if idx is None:
            raise MonitorError(f"{path}: sheet {sheet!r} has no {key!r} column (looked for {', '.join(options)})")
        col[key] = idx
    out = []
    for r in rows[h + 1:]:
        if r is None or all(c is None for c in r):
            continue
        try:
            item = dict(file=str(r[col["file"]]), label=str(r[col["label"]]).strip(),
                        start_s=float(r[col["start"]]), end_s=float(r[col["end"]]))
        except (TypeError, ValueError, IndexError):
            continue
        v = r[col["verified"]]
        item["verified"] = "" if v is None else str(v).strip().lower()
        out.append(item)
    return out


YES = ("yes", "y", "true", "1")
NO = ("no", "n", "false", "0")
REVIEW_COLUMNS = ("file", "label", "start_s", "end_s", "verified")


def verdict(value: Any) -> str:
    """A Verified cell -> ``yes``, ``no`` or ``''`` (unsure, blank, anything else: no information)."""
    v = "" if value is None else str(value).strip().lower()
    if v in ("nan", "none"):
        return ""
    return "yes" if v in YES else ("no" if v in NO else "")


def targets_from_reviews(reviews, audio_root: Path | None, seg: SegmentConfig, labels: list[str] | None = None,
                         group_regex: str | None = None, where: str = "the reviews"):
    """Reviewer verdicts -> per-label targets.

    ``reviews``: a DataFrame with ``file`` (absolute, or relative to ``audio_root``), ``label``,
    ``start_s``, ``end_s``, ``verified`` (yes / no / unsure / blank) and optionally ``path`` (the
    absolute audio path, preferred) and ``deployment`` (the results store's shape). A detection's span
    is cut into ``seg.window_s`` windows from its start (as inference segmented it). In a window, a
    ``yes`` makes its label positive and a ``no`` makes only *its* label negative: every label that
    nobody judged there is unknown (masked from loss and metrics), never a negative. ``yes`` and
    ``no`` for one label in one window cancel to unknown. Windows with no verdict are dropped.
    Returns (table, labels).
    """
    import pandas as pd

    df = pd.DataFrame(reviews).copy()
    missing = [c for c in REVIEW_COLUMNS if c not in df.columns]
    if missing:
        raise MonitorError(f"{where}: no {missing[0]!r} column (need {', '.join(REVIEW_COLUMNS)})")
    df["v"] = [verdict(v) for v in df["verified"]]
    df = df[df["v"] != ""]
    if df.empty:
        raise MonitorError(f"{where}: no detections marked yes or no (Verified); review some first")
    df["label"] = [str(x).strip() for x in df["label"]]
    labels = list(labels) if labels is not None else sorted(set(df["label"]))
    root = Path(audio_root) if audio_root else None
    verdicts: dict[tuple[str, float, float], dict[str, set[str]]] = {}
    rel_of: dict[str, str] = {}
    probed: dict[str, Any] = {}
    for r in df.itertuples(index=False):
        if r.label not in labels:
            continue
        path = _review_path(r, root, where)
        if path is None:
            continue
        key = str(path)
        if key not in probed:
            probed[key] = _probe(path)
        info = probed[key]
        if info is None:
            continue
        if key not in rel_of:
            dep = str(getattr(r, "deployment", "") or "")
            rel_of[key] = (path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root)
                           else (f"{dep}/{r.file}" if dep else str(r.file)))
        sr = info.sample_rate_hz
        start_f = int(round(float(r.start_s) * sr))
        end_f = min(int(round(float(r.end_s) * sr)), info.frames)
        cut = SegmentConfig(seg.window_s, seg.window_s, seg.min_segment_s, seg.block_s)
        for a, b in windows(0, sr, end_f - start_f, cut, offset_s=start_f / sr):
            verdicts.setdefault((key, a, b), {}).setdefault(r.label, set()).add(r.v)
    rows, conflicts = [], 0
    for (f, a, b), per in sorted(verdicts.items()):
        pos = {lab for lab, v in per.items() if v == {"yes"}}
        neg = {lab for lab, v in per.items() if v == {"no"}}
        conflicts += sum(len(v) > 1 for v in per.values())
        if not pos and not neg:
            continue
        unknown = tuple(lab for lab in labels if lab not in pos and lab not in neg)
        rows.append(dict(file=f, start_s=a, end_s=b, labels=tuple(sorted(pos)), group=group_of(rel_of[f], group_regex),
                         unknown=unknown))
    if conflicts:
        log.warning("%s: %d label windows were marked both yes and no; they are left unknown", where, conflicts)
    if not rows:
        raise MonitorError(f"{where}: no verified rows point at readable recordings"
                           + (f" under {root}" if root else ""))
    return make_table(rows), labels


def _review_path(r, root: Path | None, where: str) -> Path | None:
    path = str(getattr(r, "path", "") or "")
    if path and path.lower() != "nan":
        return Path(path)
    f = Path(str(r.file))
    if f.is_absolute():
        return f
    if root is None:
        raise MonitorError(f"{where} name recordings relative to their card ({f}); set data.root to that folder")
    return root / f


def load_reviews(report: Path):
    """Reviewer verdicts as a DataFrame: from a reviewed ``report.xlsx`` (``read_report``), or from a
    ``monitor run`` output folder's results store (``monitor.results.load_reviews``)."""
    import pandas as pd

    report = Path(report)
    if report.is_dir():
        store_reviews = None
        if (report / "monitor.sqlite").is_file():  # a results store: its reviewer verdicts (issue 14)
            try:
                from monitor.results import load_reviews as store_reviews  # type: ignore[import-not-found]
            except ImportError:
                store_reviews = None
        if store_reviews is not None:
            return store_reviews(report)
        if (report / "report.xlsx").is_file():
            report = report / "report.xlsx"
        else:
            raise MonitorError(f"data.report {report} is a folder without report.xlsx; point it at a reviewed "
                               "report.xlsx or a monitor run output folder")
    if not report.is_file():
        raise MonitorError(f"data.report {report} does not exist; point it at a reviewed report.xlsx")
    return pd.DataFrame(read_report(report), columns=list(REVIEW_COLUMNS))


def from_report(report: Path, audio_root: Path | None, seg: SegmentConfig, labels: list[str] | None = None,
                group_regex: str | None = None):
    """A reviewed workbook (or run folder) -> per-label targets (``targets_from_reviews``). Returns (table, labels)."""
    return targets_from_reviews(load_reviews(Path(report)), audio_root, seg, labels, group_regex, where=str(report))


# --- dispatch ----------------------------------------------------------------------------------------

def _need(value: str | None, key: str) -> Path:
    if not value:
        raise ConfigError(f"data.{key} is required for this data.source")
    return Path(value)


def load_source(cfg, seg: SegmentConfig | None = None):
    """TrainConfig -> (table, labels, fixed_val_table or None), capped by ``data.max_per_label``."""
    d = cfg.data
    seg = seg or cfg.segment
    multiclass = cfg.task == "multiclass"
    val = None
    if d.source == "folders":
        table, labels = from_folders(_need(d.root, "root"), seg, d.labels, d.negative_class, d.exclude,
                                     d.group_regex, multiclass)
    elif d.source == "annotations":
        table, labels = from_annotations(_need(d.annotations, "annotations"), _need(d.root, "root"), seg, d.labels,
                                         d.min_overlap_s, d.min_overlap_frac, d.unannotated_negative, d.group_regex)
    elif d.source == "manifest":
        table, labels = from_manifest(_need(d.manifest, "manifest"), _need(d.label_csv, "label_csv"), seg,
                                      d.group_regex)
        if d.val_manifest:
            val, _ = from_manifest(Path(d.val_manifest), Path(d.label_csv), seg, d.group_regex)
    else:
        table, labels = from_report(_need(d.report, "report"), Path(d.root) if d.root else None, seg, d.labels,
                                    d.group_regex)
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


def load_test_folder(cfg, labels: list[str]):
    """``split.test_folder``: the same source read from another folder laid out like ``data.root``
    (folders: ``<label>/`` sub-folders; annotations: recordings with their tables beside them)."""
    import dataclasses

    folder = Path(cfg.split.test_folder)
    if not folder.is_dir():
        raise MonitorError(f"split.test_folder {folder} is not a folder")
    if cfg.data.source not in ("folders", "annotations"):
        raise MonitorError("split.test_folder works with data.source folders or annotations; "
                           "use split.test_files or split.test_fraction for this source")
    d = dataclasses.replace(cfg.data, root=str(folder), labels=list(labels), max_per_label=None,
                            annotations=str(folder) if cfg.data.source == "annotations" else cfg.data.annotations)
    test, _, _ = load_source(dataclasses.replace(cfg, data=d))
    return test


def cap_per_label(table, n: int, seed: int):
    """Keep at most ``n`` segments per label set, taking one segment per group in turn (seeded order),
    so a small cap still spans many recordings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for _, sub in table.groupby(table["labels"].map(lambda t: ";".join(t)), sort=True):
        groups = list(dict.fromkeys(sub["group"]))
        queues = [sub.index[sub["group"] == groups[g]].tolist() for g in rng.permutation(len(groups))]
        taken = 0
        while taken < n and any(queues):
            for q in queues:
                if q and taken < n:
                    keep.append(q.pop(0))
                    taken += 1
    return table.loc[sorted(keep)].reset_index(drop=True)


def summary(table, labels: list[str]) -> dict[str, Any]:
    """Counts for provenance and the model card (``per_label``: positives; ``unknown_per_label``:
    segments where the label was not judged)."""
    per = {lab: int(sum(lab in t for t in table["labels"])) for lab in labels}
    unk = {lab: int(sum(lab in t for t in table["unknown"])) for lab in labels} if "unknown" in table else {}
    out = dict(segments=int(len(table)), recordings=int(table["file"].nunique()), groups=int(table["group"].nunique()),
               negatives=int(sum(len(t) == 0 for t in table["labels"])), per_label=per,
               hours=round(float((table["end_s"] - table["start_s"]).sum()) / 3600.0, 4))
    if any(unk.values()):
        out["unknown_per_label"] = unk
    return out
