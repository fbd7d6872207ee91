"""Annotated long recordings: Raven selection tables, Audacity label files and ``file,start_s,end_s,label``
CSVs -> ``segment`` windows labelled by overlap (``from_annotations``)."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from monitor.config import SegmentConfig
from monitor.discover import discover
from monitor.errors import MonitorError
from monitor.train.table import MIN_CLIP_S, LeftOut, clip_windows, group_of, make_table, probe_or_skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Annotation:
    """One labelled interval of a recording (seconds from the file start)."""

    start_s: float
    end_s: float
    label: str


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
    for p in sorted(Path(f.path) for f in discover(audio_root).recordings):
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
                     group_regex: str | None = None, min_clip_s: float = MIN_CLIP_S, left_out: LeftOut | None = None):
    """Annotated long recordings cut into ``seg`` windows labelled by overlap (a recording shorter than a
    segment: one padded window, see ``table.clip_windows``). Returns (table, labels)."""
    audio_root = Path(audio_root)
    by_rec = collect_annotations(Path(annotations), audio_root)
    found = sorted({a.label for anns in by_rec.values() for a in anns})
    labels = list(labels) if labels is not None else found
    rows = []
    for path in sorted(by_rec):
        info = probe_or_skip(path, left_out)
        if info is None:
            continue
        ann = [a for a in by_rec[path] if a.label in labels]
        wins = clip_windows(path, info, seg, min_clip_s, left_out)
        rel = path.relative_to(audio_root).as_posix() if path.is_relative_to(audio_root) else path.name
        for a, b, lab in label_windows(wins, ann, min_overlap_s, min_overlap_frac, unannotated_negative):
            rows.append(dict(file=str(path), start_s=a, end_s=b, labels=lab, group=group_of(rel, group_regex)))
    if not rows:
        why = f"; {left_out.text(min_clip_s)}" if left_out is not None and left_out.rows else ""
        raise MonitorError(f"the annotation tables at {annotations} gave no segments (labels {labels}){why}")
    return make_table(rows), labels
